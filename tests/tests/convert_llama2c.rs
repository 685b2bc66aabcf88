//! llama2.c import: v0 (shared and unshared classifier), v1 and v2 files
//! written here from known random weights, checked against an independent
//! f64 forward pass; the tokenizer decodes as run.c does.

mod convert_common;

use std::path::Path;

use convert_common::*;
use edgelm_convert::llama2c::import_llama2c;
use edgelm_convert::{Error, ImportOptions, StoreDType};
use edgelm_runtime::format::Config;
use edgelm_runtime::{AlignedBytes, Model};

const VOCAB: u32 = 320;

fn f32s(out: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn layer_concat(w: &Weights, c: &Config, suffix: &str) -> Vec<f32> {
    (0..c.n_layers).flat_map(|l| w[&format!("layers.{l}.{suffix}")].1.clone()).collect()
}

fn config_ints(c: &Config, vocab: i32) -> Vec<i32> {
    vec![
        c.dim as i32,
        c.ffn_dim as i32,
        c.n_layers as i32,
        c.n_heads as i32,
        c.n_kv_heads as i32,
        vocab,
        c.max_seq_len as i32,
    ]
}

/// run.c's legacy layout.
fn write_v0(c: &Config, w: &Weights) -> Vec<u8> {
    let mut out = Vec::new();
    let vocab = if c.tied_head { c.vocab_size as i32 } else { -(c.vocab_size as i32) };
    for i in config_ints(c, vocab) {
        out.extend_from_slice(&i.to_le_bytes());
    }
    f32s(&mut out, &w["tok_embeddings"].1);
    f32s(&mut out, &layer_concat(w, c, "attention_norm"));
    for s in ["attention.wq", "attention.wk", "attention.wv", "attention.wo"] {
        f32s(&mut out, &layer_concat(w, c, s));
    }
    f32s(&mut out, &layer_concat(w, c, "ffn_norm"));
    for s in ["feed_forward.w1", "feed_forward.w2", "feed_forward.w3"] {
        f32s(&mut out, &layer_concat(w, c, s));
    }
    f32s(&mut out, &w["norm"].1);
    // obsolete freq_cis_real / freq_cis_imag tables
    f32s(&mut out, &vec![0.5; c.max_seq_len as usize * c.head_dim()]);
    if !c.tied_head {
        f32s(&mut out, &w["output"].1);
    }
    out
}

fn header(c: &Config, version: i32, group: Option<i32>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x616b_3432u32.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    for i in config_ints(c, c.vocab_size as i32) {
        out.extend_from_slice(&i.to_le_bytes());
    }
    out.push(c.tied_head as u8);
    if let Some(g) = group {
        out.extend_from_slice(&g.to_le_bytes());
    }
    out.resize(256, 0);
    out
}

fn matrices_v1(c: &Config) -> Vec<String> {
    let mut names = vec!["tok_embeddings".to_string()];
    for s in [
        "attention.wq",
        "attention.wk",
        "attention.wv",
        "attention.wo",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
    ] {
        names.extend((0..c.n_layers).map(|l| format!("layers.{l}.{s}")));
    }
    if !c.tied_head {
        names.push("output".into());
    }
    names
}

fn norms_v1(c: &Config, w: &Weights, out: &mut Vec<u8>) {
    f32s(out, &layer_concat(w, c, "attention_norm"));
    f32s(out, &layer_concat(w, c, "ffn_norm"));
    f32s(out, &w["norm"].1);
}

/// export.py version 1.
fn write_v1(c: &Config, w: &Weights) -> Vec<u8> {
    let mut out = header(c, 1, None);
    norms_v1(c, w, &mut out);
    for n in matrices_v1(c) {
        f32s(&mut out, &w[&n].1);
    }
    out
}

/// export.py version 2 (Q8_0 with f32 scales over the flattened tensor).
/// Returns the file and the weights as the file holds them (dequantized).
fn write_v2(c: &Config, w: &Weights, group: usize) -> (Vec<u8>, Weights) {
    let mut out = header(c, 2, Some(group as i32));
    norms_v1(c, w, &mut out);
    let mut held = w.clone();
    for n in matrices_v1(c) {
        let v = &w[&n].1;
        let mut qs = Vec::new();
        let mut scales = Vec::new();
        let mut deq = Vec::new();
        for g in v.chunks(group) {
            let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            let s = amax / 127.0;
            scales.push(s);
            for &x in g {
                let q = if s != 0.0 { (x / s).round() as i8 } else { 0 };
                qs.push(q as u8);
                deq.push(q as f32 * s);
            }
        }
        out.extend_from_slice(&qs);
        f32s(&mut out, &scales);
        held.get_mut(&n).unwrap().1 = deq;
    }
    (out, held)
}

/// A llama2.c tokenizer.bin: `<unk>`, `<s>`, `</s>`, 256 byte pieces, then words.
pub fn tokenizer_bin(vocab: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    for b in 0..=255u8 {
        pieces.push(format!("<0x{b:02X}>").into_bytes());
    }
    let words = [
        " ",
        "e",
        "t",
        "O",
        "n",
        "c",
        "u",
        "p",
        "o",
        "a",
        "i",
        "m",
        " t",
        " O",
        " On",
        " Onc",
        " Once",
        " u",
        " up",
        " upo",
        " upon",
        " a",
        " ti",
        " tim",
        " time",
        "he",
        " the",
        "Once",
        "\u{e9}t\u{e9}",
    ];
    for w in words {
        pieces.push(w.as_bytes().to_vec());
    }
    let mut i = 0;
    while pieces.len() < vocab {
        pieces.push(format!(" w{i}").into_bytes());
        i += 1;
    }
    let max = pieces.iter().map(Vec::len).max().unwrap() as i32;
    let mut out = max.to_le_bytes().to_vec();
    for (id, p) in pieces.iter().enumerate() {
        out.extend_from_slice(&(-(id as f32)).to_le_bytes());
        out.extend_from_slice(&(p.len() as i32).to_le_bytes());
        out.extend_from_slice(p);
    }
    (out, pieces)
}

fn import(model: &[u8], dtype: StoreDType) -> Result<Vec<u8>, Error> {
    let (tok, _) = tokenizer_bin(VOCAB as usize);
    import_llama2c(model, &tok, Path::new("model.bin"), &ImportOptions::new(dtype)).map(|c| c.bytes)
}

#[test]
fn v0_shared_and_unshared_match_reference() {
    for tied in [true, false] {
        let c = tiny_config(VOCAB, tied);
        let w = random_weights(&c, 11 + tied as u64);
        let file = write_v0(&c, &w);
        let tokens = test_tokens(24, VOCAB);
        for dtype in [StoreDType::F32, StoreDType::F16] {
            let bytes = import(&file, dtype).unwrap();
            let held = if dtype == StoreDType::F16 { round_f16(&w) } else { w.clone() };
            let worst = worst_error(&bytes, &mut Reference::new(c, &held, Rope::Interleaved), &tokens);
            assert!(worst < 1e-4, "v0 tied={tied} {dtype}: worst relative error {worst}");
        }
        let q8 = import(&file, StoreDType::Q8).unwrap();
        let agree = greedy_agreement(&q8, &mut Reference::new(c, &w, Rope::Interleaved), 1, 64);
        assert!(agree * 100 >= 95 * 64, "v0 tied={tied} q8 agreed on {agree}/64");
    }
}

#[test]
fn v1_matches_reference() {
    for tied in [true, false] {
        let c = tiny_config(VOCAB, tied);
        let w = random_weights(&c, 21 + tied as u64);
        let bytes = import(&write_v1(&c, &w), StoreDType::F32).unwrap();
        let worst = worst_error(&bytes, &mut Reference::new(c, &w, Rope::Interleaved), &test_tokens(24, VOCAB));
        assert!(worst < 1e-4, "v1 tied={tied}: worst relative error {worst}");
        let q8 = import(&write_v1(&c, &w), StoreDType::Q8).unwrap();
        let agree = greedy_agreement(&q8, &mut Reference::new(c, &w, Rope::Interleaved), 1, 64);
        assert!(agree * 100 >= 95 * 64, "v1 q8 agreed on {agree}/64");
    }
}

#[test]
fn v2_q8_0_with_header_group_size_matches_reference() {
    // 64: groups cross rows of the 96-column w2, as export.py allows.
    for (group, tied) in [(32, true), (64, false)] {
        let c = tiny_config(VOCAB, tied);
        let w = random_weights(&c, 31);
        let (file, held) = write_v2(&c, &w, group);
        let bytes = import(&file, StoreDType::F32).unwrap();
        let worst = worst_error(&bytes, &mut Reference::new(c, &held, Rope::Interleaved), &test_tokens(24, VOCAB));
        assert!(worst < 1e-4, "v2 group {group}: worst relative error {worst}");
        let q8 = import(&file, StoreDType::Q8).unwrap();
        let agree = greedy_agreement(&q8, &mut Reference::new(c, &held, Rope::Interleaved), 1, 64);
        assert!(agree * 100 >= 95 * 64, "v2 group {group} q8 agreed on {agree}/64");
    }
}

#[test]
fn tokenizer_decodes_like_run_c() {
    let c = tiny_config(VOCAB, true);
    let w = random_weights(&c, 5);
    let bytes = import(&write_v1(&c, &w), StoreDType::Q8).unwrap();
    let aligned = AlignedBytes::from_slice(&bytes);
    let model = Model::from_bytes(&aligned).unwrap();
    let tok = model.default_domain().tokenizer;
    let (_, pieces) = tokenizer_bin(VOCAB as usize);
    let id = |s: &str| pieces.iter().position(|p| p == s.as_bytes()).unwrap() as u32;
    assert_eq!(tok.info().bos, Some(1));
    assert_eq!(tok.info().eos, Some(2));
    // run.c: after BOS a piece's leading space is dropped ...
    assert_eq!(tok.decode_piece(Some(1), id(" Once")), b"Once");
    assert_eq!(tok.decode_piece(Some(id(" Once")), id(" upon")), b" upon");
    // ... but not a byte token's: <0x20> after BOS is a space.
    assert_eq!(tok.decode_piece(Some(1), 0x20 + 3), b" ");
    // <0xXX> pieces decode to the raw byte.
    assert_eq!(tok.decode_piece(Some(5), 0x0A + 3), b"\n");
    assert_eq!(tok.decode_piece(Some(5), 0xC3 + 3), &[0xC3]);
    // Encoding uses the dummy prefix and the best-scoring merges.
    let mut out = [0u32; 16];
    let n = tok.encode("Once upon a time", &mut out).unwrap();
    assert_eq!(&out[..n], &[id(" Once"), id(" upon"), id(" a"), id(" time")]);
}

#[test]
fn bad_llama2c_inputs_are_clear_errors() {
    let c = tiny_config(VOCAB, true);
    let w = random_weights(&c, 3);
    let v1 = write_v1(&c, &w);
    // truncated
    let e = import(&v1[..v1.len() - 100], StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    // trailing bytes
    let mut long = v1.clone();
    long.extend_from_slice(&[0; 4]);
    let e = import(&long, StoreDType::F32).unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");
    // unknown version
    let mut v9 = v1.clone();
    v9[4] = 9;
    let e = import(&v9, StoreDType::F32).unwrap_err();
    assert!(e.to_string().contains("version 9"), "{e}");
    // header too short
    let e = import(&v1[..10], StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    // nonsense shape (n_heads does not divide dim)
    let mut bad = v1.clone();
    bad[8 + 12..8 + 16].copy_from_slice(&7i32.to_le_bytes());
    let e = import(&bad, StoreDType::F32).unwrap_err();
    assert!(e.to_string().contains("n_heads"), "{e}");
    // tokenizer.bin truncated
    let (tok, _) = tokenizer_bin(VOCAB as usize);
    let e = import_llama2c(&v1, &tok[..tok.len() / 2], Path::new("m.bin"), &ImportOptions::new(StoreDType::F32))
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // every prefix of a small file errors without panicking
    for cut in (0..v1.len()).step_by(997) {
        assert!(import(&v1[..cut], StoreDType::F32).is_err());
    }
}

#[test]
fn non_finite_weights_are_refused() {
    let c = tiny_config(VOCAB, true);
    let mut w = random_weights(&c, 8);
    w.get_mut("layers.1.feed_forward.w3").unwrap().1[17] = f32::NAN;
    let e = import(&write_v1(&c, &w), StoreDType::Q8).unwrap_err();
    assert!(matches!(e, Error::BadValues { index: 17, .. }), "{e}");
    assert!(e.to_string().contains("layers.1.feed_forward.w3"), "{e}");
}
