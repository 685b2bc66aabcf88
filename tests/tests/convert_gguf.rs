//! GGUF import (F32, F16, Q8_0 tensors; gpt2 and llama vocabularies) from
//! files written by a GGUF writer of this test's own, checked against an
//! independent f64 forward pass; `.edgelm → GGUF → .edgelm` round trips;
//! bad GGUF inputs give clear errors.

mod convert_common;

use std::collections::HashMap;
use std::path::Path;

use convert_common::*;
use edgelm_convert::gguf::{export_gguf, import_gguf, ExportOptions};
use edgelm_convert::tokenizer_import::byte_to_char;
use edgelm_convert::{Error, ImportOptions, StoreDType};
use edgelm_runtime::format::{Config, DType, ModelFile, VerifyChecksum};
use edgelm_runtime::{AlignedBytes, Model};
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

enum V {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn put_str(o: &mut Vec<u8>, s: &str) {
    o.extend_from_slice(&(s.len() as u64).to_le_bytes());
    o.extend_from_slice(s.as_bytes());
}

fn put_value(o: &mut Vec<u8>, v: &V) {
    let (ty, body): (u32, Vec<u8>) = match v {
        V::U32(x) => (4, x.to_le_bytes().to_vec()),
        V::F32(x) => (6, x.to_le_bytes().to_vec()),
        V::Bool(x) => (7, vec![*x as u8]),
        V::Str(s) => {
            let mut b = Vec::new();
            put_str(&mut b, s);
            (8, b)
        }
        V::Strs(a) => {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for s in a {
                put_str(&mut b, s);
            }
            (9, b)
        }
        V::F32s(a) => {
            let mut b = 6u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            (9, b)
        }
        V::I32s(a) => {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            (9, b)
        }
    };
    o.extend_from_slice(&ty.to_le_bytes());
    o.extend_from_slice(&body);
}

/// A tensor to write: name, ggml type (0 F32, 1 F16, 8 Q8_0, …), row-major shape, bytes.
struct T(String, u32, Vec<usize>, Vec<u8>);

/// GGUF v3 writer (independent of the converter's): dims innermost first.
fn write_gguf(md: &[(&str, V)], tensors: &[T]) -> Vec<u8> {
    let mut o = b"GGUF".to_vec();
    o.extend_from_slice(&3u32.to_le_bytes());
    o.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    o.extend_from_slice(&(md.len() as u64).to_le_bytes());
    for (k, v) in md {
        put_str(&mut o, k);
        put_value(&mut o, v);
    }
    let mut offset = 0u64;
    for T(name, ty, shape, bytes) in tensors {
        put_str(&mut o, name);
        o.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            o.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        o.extend_from_slice(&ty.to_le_bytes());
        o.extend_from_slice(&offset.to_le_bytes());
        offset += (bytes.len() as u64).div_ceil(32) * 32;
    }
    o.resize(o.len().div_ceil(32) * 32, 0);
    for T(_, _, _, bytes) in tensors {
        o.extend_from_slice(bytes);
        o.resize(o.len().div_ceil(32) * 32, 0);
    }
    o
}

const GG: [(&str, &str); 9] = [
    ("attention_norm", "attn_norm"),
    ("attention.wq", "attn_q"),
    ("attention.wk", "attn_k"),
    ("attention.wv", "attn_v"),
    ("attention.wo", "attn_output"),
    ("ffn_norm", "ffn_norm"),
    ("feed_forward.w1", "ffn_gate"),
    ("feed_forward.w2", "ffn_down"),
    ("feed_forward.w3", "ffn_up"),
];

fn gguf_name(rt: &str) -> String {
    match rt {
        "tok_embeddings" => "token_embd.weight".into(),
        "norm" => "output_norm.weight".into(),
        "output" => "output.weight".into(),
        _ => {
            let rest = rt.strip_prefix("layers.").unwrap();
            let (l, suffix) = rest.split_once('.').unwrap();
            let g = GG.iter().find(|(r, _)| *r == suffix).unwrap().1;
            format!("blk.{l}.{g}.weight")
        }
    }
}

/// A byte-level (gpt2) vocabulary: `<|endoftext|>`, 256 byte symbols, merges.
fn gpt2_vocab(n: usize) -> Vec<(&'static str, V)> {
    let chars = byte_to_char();
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(chars.iter().map(|c| c.to_string()));
    let mut merges = Vec::new();
    let letters = "etaoinshrdlu";
    'outer: for a in " etaoinshrdlu".chars() {
        for b in letters.chars() {
            if tokens.len() >= n {
                break 'outer;
            }
            let (ca, cb) = (chars[a as usize], chars[b as usize]);
            merges.push(format!("{ca} {cb}"));
            tokens.push(format!("{ca}{cb}"));
        }
    }
    assert_eq!(tokens.len(), n);
    let mut types = vec![1i32; n];
    types[0] = 3;
    vec![
        ("tokenizer.ggml.model", V::Str("gpt2".into())),
        ("tokenizer.ggml.pre", V::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.merges", V::Strs(merges)),
        ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ("tokenizer.ggml.eos_token_id", V::U32(0)),
    ]
}

/// A SentencePiece (llama) vocabulary with byte fallback.
fn llama_vocab(n: usize) -> Vec<(&'static str, V)> {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for w in ["▁", "e", "t", "▁t", "h", "▁th", "▁the"] {
        tokens.push(w.into());
        types.push(1);
    }
    let mut i = 0;
    while tokens.len() < n {
        tokens.push(format!("▁w{i}"));
        types.push(1);
        i += 1;
    }
    let scores = (0..n).map(|i| -(i as f32)).collect();
    vec![
        ("tokenizer.ggml.model", V::Str("llama".into())),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.scores", V::F32s(scores)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.add_space_prefix", V::Bool(true)),
    ]
}

fn llama_md(c: &Config) -> Vec<(&'static str, V)> {
    vec![
        ("general.architecture", V::Str("llama".into())),
        ("llama.context_length", V::U32(c.max_seq_len)),
        ("llama.embedding_length", V::U32(c.dim)),
        ("llama.block_count", V::U32(c.n_layers)),
        ("llama.feed_forward_length", V::U32(c.ffn_dim)),
        ("llama.attention.head_count", V::U32(c.n_heads)),
        ("llama.attention.head_count_kv", V::U32(c.n_kv_heads)),
        ("llama.rope.dimension_count", V::U32(c.head_dim() as u32)),
        ("llama.rope.freq_base", V::F32(c.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(c.norm_eps)),
    ]
}

/// GGUF file of `w` with matrices stored as `ty` (0 F32, 1 F16, 8 Q8_0);
/// returns the file and the weights as stored (rounded / dequantized).
fn gguf_of(c: &Config, w: &Weights, ty: u32, vocab: Vec<(&'static str, V)>) -> (Vec<u8>, Weights) {
    let mut held = w.clone();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for n in names {
        let (shape, v) = &w[n];
        let (t, bytes, stored) = if shape.len() == 1 || ty == 0 {
            (0, v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.clone())
        } else if ty == 1 {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            (1, h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
        } else {
            let (b, d) = q8_0(v);
            (8, b, d)
        };
        held.get_mut(n).unwrap().1 = stored;
        tensors.push(T(gguf_name(n), t, shape.clone(), bytes));
    }
    let mut md = llama_md(c);
    md.extend(vocab);
    (write_gguf(&md, &tensors), held)
}

fn import_bytes(bytes: &[u8], dtype: StoreDType) -> Result<Vec<u8>, Error> {
    let dir = tempdir();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    import_gguf(&p, &ImportOptions::new(dtype)).map(|c| c.bytes)
}

#[test]
fn f32_f16_q8_0_gguf_match_reference() {
    for (vocab, tied) in [(320usize, false), (300, true)] {
        let c = tiny_config(vocab as u32, tied);
        let w = random_weights(&c, 40 + vocab as u64);
        let voc = || if tied { llama_vocab(vocab) } else { gpt2_vocab(vocab) };
        let tokens = test_tokens(24, vocab as u32);
        for ty in [0u32, 1, 8] {
            let (file, held) = gguf_of(&c, &w, ty, voc());
            // f32 and keep: exact values of the file
            for dtype in [StoreDType::F32, StoreDType::Keep] {
                let bytes = import_bytes(&file, dtype).unwrap();
                if ty == 8 && dtype == StoreDType::Keep {
                    let agree = greedy_agreement(&bytes, &mut Reference::new(c, &held, Rope::Interleaved), 1, 64);
                    assert!(agree * 100 >= 95 * 64, "Q8_0 kept as q8 agreed on {agree}/64");
                } else {
                    let worst = worst_error(&bytes, &mut Reference::new(c, &held, Rope::Interleaved), &tokens);
                    assert!(worst < 1e-4, "type {ty} as {dtype}: worst relative error {worst}");
                }
            }
            // q8 against the values the file holds (Q8_0 blocks are kept as they are)
            let q8 = import_bytes(&file, StoreDType::Q8).unwrap();
            let agree = greedy_agreement(&q8, &mut Reference::new(c, &held, Rope::Interleaved), 1, 64);
            assert!(agree * 100 >= 95 * 64, "type {ty} as q8 agreed on {agree}/64");
        }
    }
}

#[test]
fn q8_0_imports_bit_for_bit() {
    let c = tiny_config(300, true);
    let w = random_weights(&c, 9);
    let (file, _) = gguf_of(&c, &w, 8, gpt2_vocab(300));
    let bytes = import_bytes(&file, StoreDType::Q8).unwrap();
    let aligned = AlignedBytes::from_slice(&bytes);
    let f = ModelFile::parse(&aligned, VerifyChecksum::Yes).unwrap();
    let t = f.tensor("layers.1.feed_forward.w2").unwrap();
    let (qs, scales) = t.q8().unwrap();
    let (blocks, _) = q8_0(&w["layers.1.feed_forward.w2"].1);
    for (i, b) in blocks.chunks(34).enumerate() {
        assert_eq!(scales[i].to_le_bytes(), [b[0], b[1]]);
        assert_eq!(qs[i * 32..(i + 1) * 32].iter().map(|&q| q as u8).collect::<Vec<_>>(), &b[2..]);
    }
}

fn tensors_of(bytes: &[u8]) -> HashMap<String, (DType, Vec<u32>, Vec<u8>)> {
    let aligned = AlignedBytes::from_slice(bytes);
    let f = ModelFile::parse(&aligned, VerifyChecksum::Yes).unwrap();
    f.tensors().map(|t| (t.name.to_string(), (t.dtype, t.shape().to_vec(), t.bytes.to_vec()))).collect()
}

fn round_trip(edgelm: &[u8]) -> Vec<u8> {
    let g = export_gguf(edgelm, None, &ExportOptions::default()).unwrap();
    import_bytes(&g.bytes, StoreDType::Keep).unwrap()
}

#[test]
fn edgelm_to_gguf_to_edgelm_is_identical() {
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        for tied in [false, true] {
            let mut spec = SyntheticSpec::tiny(dtype);
            spec.config.tied_head = tied;
            let original = synthetic_model(&spec).unwrap();
            let back = round_trip(&original);
            assert_eq!(tensors_of(&original), tensors_of(&back), "{dtype:?} tied={tied}: tensors differ");
            // model_id and domain travel in edgelm.* metadata: the whole file is identical.
            assert!(original == back, "{dtype:?} tied={tied}: files differ");
        }
    }
}

#[test]
fn sentencepiece_and_gpt2_vocab_round_trip() {
    for vocab in [gpt2_vocab(300), llama_vocab(300)] {
        let c = tiny_config(300, true);
        let w = random_weights(&c, 77);
        let (file, _) = gguf_of(&c, &w, 8, vocab);
        let first = import_bytes(&file, StoreDType::Keep).unwrap();
        let second = round_trip(&first);
        assert!(first == second, "files differ after a GGUF round trip");
    }
}

#[test]
fn exported_gguf_has_llama_cpp_metadata_and_dims() {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let g = export_gguf(&synthetic_model(&spec).unwrap(), None, &ExportOptions::default()).unwrap();
    let dir = tempdir();
    let p = dir.path().join("x.gguf");
    std::fs::write(&p, &g.bytes).unwrap();
    let mut r = std::fs::File::open(&p).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut r).unwrap();
    for key in [
        "general.architecture",
        "general.file_type",
        "general.alignment",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.dimension_count",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        assert!(content.metadata.contains_key(key), "missing {key}");
    }
    assert_eq!(content.metadata["general.file_type"].to_u32().unwrap(), 7);
    // ne[0] is the row length: read the raw dims of ffn_down ([dim, ffn] row-major).
    let t = &content.tensor_infos["blk.0.ffn_down.weight"];
    assert_eq!(t.shape.dims(), &[64, 96]);
    let raw = &g.bytes;
    let name = b"blk.0.ffn_down.weight";
    let at = raw.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
    let ne0 = u64::from_le_bytes(raw[at + 4..at + 12].try_into().unwrap());
    let ne1 = u64::from_le_bytes(raw[at + 12..at + 20].try_into().unwrap());
    assert_eq!((n_dims, ne0, ne1), (2, 96, 64));
    let model = AlignedBytes::from_slice(&import_bytes(&g.bytes, StoreDType::Keep).unwrap());
    Model::from_bytes(&model).unwrap();
}

#[test]
fn bad_gguf_inputs_are_clear_errors() {
    let c = tiny_config(300, true);
    let w = random_weights(&c, 1);
    let (good, _) = gguf_of(&c, &w, 0, gpt2_vocab(300));
    // wrong magic
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    let e = import_bytes(&bad, StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    // truncated: header, tensor data
    for cut in [6, 100, good.len() / 2, good.len() - 10] {
        let e = import_bytes(&good[..cut], StoreDType::F32).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("truncated") || msg.contains("remaining") || msg.contains("bytes"), "cut {cut}: {msg}");
    }
    // general.alignment 0 (candle divides by it: a panic the gguf_import fuzzer found)
    let mut md = llama_md(&c);
    md.push(("general.alignment", V::U32(0)));
    md.extend(gpt2_vocab(300));
    let e = import_bytes(&write_gguf(&md, &[]), StoreDType::F32).unwrap_err();
    assert!(e.to_string().contains("general.alignment is 0"), "{e}");
    // unsupported architecture
    let mut md = llama_md(&c);
    md[0] = ("general.architecture", V::Str("gpt2".into()));
    md.extend(gpt2_vocab(300));
    let e = import_bytes(&write_gguf(&md, &[]), StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArchitecture(ref a) if a == "gpt2"), "{e}");
    // unsupported tensor type
    // every weight as an F32 GGUF tensor, by sorted name, except `skip`
    let f32_tensors = |skip: &str| -> Vec<T> {
        let mut names: Vec<&String> = w.keys().filter(|n| *n != skip).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let (s, v) = &w[n];
                T(gguf_name(n), 0, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
            })
            .collect()
    };
    let mut tensors = f32_tensors("");
    let q = tensors.iter_mut().find(|t| t.0 == "blk.0.attn_q.weight").unwrap();
    // Q4_1 (type 3: f16 scale, f16 min, 16 bytes per 32): not imported (Q4_0 is)
    q.1 = 3;
    q.3 = vec![0u8; 64 * 64 / 32 * 20];
    let mut md = llama_md(&c);
    md.extend(gpt2_vocab(300));
    let e = import_bytes(&write_gguf(&md, &tensors), StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::UnsupportedTensorType { .. }), "{e}");
    assert!(e.to_string().contains("blk.0.attn_q.weight"), "{e}");
    // shape mismatch (ffn_up transposed)
    let mut tensors = f32_tensors("");
    let up = tensors.iter_mut().find(|t| t.0 == "blk.1.ffn_up.weight").unwrap();
    up.2 = vec![64, 96];
    let mut md = llama_md(&c);
    md.extend(gpt2_vocab(300));
    let e = import_bytes(&write_gguf(&md, &tensors), StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("blk.1.ffn_up.weight"), "{e}");
    // missing tensor
    let tensors = f32_tensors("layers.1.attention.wv");
    let mut md = llama_md(&c);
    md.extend(gpt2_vocab(300));
    let e = import_bytes(&write_gguf(&md, &tensors), StoreDType::F32).unwrap_err();
    assert!(matches!(e, Error::MissingTensor(ref n) if n == "blk.1.attn_v.weight"), "{e}");
    // a domain tag outside the vocabulary
    let mut md = llama_md(&c);
    md.push(("edgelm.tag_token", V::U32(300)));
    md.extend(gpt2_vocab(300));
    let e = import_bytes(&write_gguf(&md, &f32_tensors("")), StoreDType::F32).unwrap_err();
    assert!(e.to_string().contains("edgelm.tag_token 300"), "{e}");
    // no vocabulary
    let (file, _) = gguf_of(&c, &w, 0, vec![]);
    let e = import_bytes(&file, StoreDType::F32).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}

#[test]
fn export_refuses_a_pack_as_base_and_unknown_domains() {
    let base = synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap();
    let e = export_gguf(&base, None, &ExportOptions { domain: Some("recipes".into()) }).unwrap_err();
    assert!(e.to_string().contains("recipes"), "{e}");
    let _ = Path::new("");
}

fn step_logits(model: &Model<'_>, domain: &str, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut arena = vec![0u8; model.arena_bytes(tokens.len())];
    let d = model.domain(domain).unwrap();
    let mut s =
        edgelm_runtime::Session::with_domain(model, d, &mut arena, edgelm_runtime::SessionOptions::new(tokens.len()))
            .unwrap();
    tokens.iter().map(|&t| s.step(t).unwrap().to_vec()).collect()
}

#[test]
fn pack_domain_flattens_to_a_plain_llama() {
    use edgelm_testkit::synthetic::{synthetic_pack, SyntheticPackSpec};
    let base_spec = SyntheticSpec::tiny(DType::F32);
    let base = synthetic_model(&base_spec).unwrap();
    let packs = [
        // own tokenizer / embedding / head; blocks before block 0, in the middle and at the end
        SyntheticPackSpec {
            domain: "recipes".into(),
            own_vocab: Some(300),
            tag_token: None,
            positions: vec![0, 1, 2],
            identity_init: false,
            dtype: DType::Q8,
            seed: 3,
        },
        // shared tokenizer with a tag token, two blocks at the same position
        SyntheticPackSpec {
            domain: "code".into(),
            own_vocab: None,
            tag_token: Some(5),
            positions: vec![1, 1],
            identity_init: false,
            dtype: DType::F16,
            seed: 4,
        },
    ];
    for ps in &packs {
        let pack = synthetic_pack(&base_spec, ps).unwrap();
        let g = export_gguf(&base, Some(&pack), &ExportOptions::default()).unwrap();
        assert_eq!(g.domain, ps.domain);
        assert_eq!(g.n_blocks, 2 + ps.positions.len());
        let flat = AlignedBytes::from_slice(&import_bytes(&g.bytes, StoreDType::Keep).unwrap());
        let flat = Model::from_bytes(&flat).unwrap();
        let (b, p) = (AlignedBytes::from_slice(&base), AlignedBytes::from_slice(&pack));
        let mut m = Model::from_bytes(&b).unwrap();
        m.add_pack_bytes(&p).unwrap();
        let tokens = test_tokens(12, 300);
        let want = step_logits(&m, &ps.domain, &tokens);
        let got = step_logits(&flat, flat.default_domain().name, &tokens);
        assert_eq!(flat.default_domain().name, ps.domain);
        for (a, b) in want.iter().zip(&got) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{}: {x} vs {y}", ps.domain);
            }
        }
    }
}
