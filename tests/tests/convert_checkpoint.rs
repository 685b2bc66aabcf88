//! Trainer (Hugging Face Llama) checkpoint import: safetensors (f32, f16,
//! bf16) written here by hand, config.json and a byte-level tokenizer.json;
//! the runtime on the imported file must match a Hugging Face convention
//! (rotate-half RoPE) reference forward pass on the original weights.

mod convert_common;

use std::path::Path;

use convert_common::*;
use edgelm_convert::checkpoint::import_checkpoint;
use edgelm_convert::tokenizer_import::byte_to_char;
use edgelm_convert::{Error, ImportOptions, StoreDType};
use edgelm_runtime::format::Config;
use edgelm_runtime::{AlignedBytes, Model};

/// Runtime name → Hugging Face name.
fn hf_name(rt: &str) -> String {
    match rt {
        "tok_embeddings" => "model.embed_tokens.weight".into(),
        "norm" => "model.norm.weight".into(),
        "output" => "lm_head.weight".into(),
        _ => {
            let rest = rt.strip_prefix("layers.").unwrap();
            let (l, s) = rest.split_once('.').unwrap();
            let hf = match s {
                "attention_norm" => "input_layernorm",
                "attention.wq" => "self_attn.q_proj",
                "attention.wk" => "self_attn.k_proj",
                "attention.wv" => "self_attn.v_proj",
                "attention.wo" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "feed_forward.w1" => "mlp.gate_proj",
                "feed_forward.w2" => "mlp.down_proj",
                "feed_forward.w3" => "mlp.up_proj",
                other => panic!("{other}"),
            };
            format!("model.layers.{l}.{hf}.weight")
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum St {
    F32,
    F16,
    Bf16,
}

/// safetensors writer (independent of candle): 8-byte header length, JSON
/// header, data. Returns the weights as stored (rounded).
fn write_safetensors(path: &Path, w: &Weights, st: St) -> Weights {
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut held = w.clone();
    for n in names {
        let (shape, v) = &w[n];
        let start = data.len();
        let (dt, stored): (&str, Vec<f32>) = match st {
            St::F32 => {
                v.iter().for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                ("F32", v.clone())
            }
            St::F16 => {
                let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                h.iter().for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                ("F16", h.iter().map(|x| x.to_f32()).collect())
            }
            St::Bf16 => {
                let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                h.iter().for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                ("BF16", h.iter().map(|x| x.to_f32()).collect())
            }
        };
        held.get_mut(n.as_str()).unwrap().1 = stored;
        header
            .insert(hf_name(n), serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
    held
}

fn config_json(c: &Config, model_id: Option<&str>) -> String {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c.dim, "intermediate_size": c.ffn_dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len, "rope_theta": c.rope_theta, "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tied_head, "hidden_act": "silu", "torch_dtype": "float32",
        "bos_token_id": 0, "eos_token_id": 0,
        "edgelm": {"format": 1, "kind": "base", "domains": ["story"], "model_id": model_id,
                   "base_model_id": null, "expansion": null}
    })
    .to_string()
}

/// A byte-level BPE tokenizer.json with `n` tokens.
fn tokenizer_json(n: usize) -> String {
    let chars = byte_to_char();
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), (b + 1).into());
    }
    let mut merges = Vec::new();
    'outer: for a in " etaoin".chars() {
        for b in "etaoinshrdlu".chars() {
            if vocab.len() >= n {
                break 'outer;
            }
            let (ca, cb) = (chars[a as usize], chars[b as usize]);
            merges.push(format!("{ca} {cb}"));
            let id = vocab.len();
            vocab.insert(format!("{ca}{cb}"), id.into());
        }
    }
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

/// Writes a checkpoint directory; returns the weights as stored.
fn write_checkpoint(dir: &Path, c: &Config, w: &Weights, st: St, model_id: Option<&str>) -> Weights {
    std::fs::write(dir.join("config.json"), config_json(c, model_id)).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(c.vocab_size as usize)).unwrap();
    write_safetensors(&dir.join("model.safetensors"), w, st)
}

#[test]
fn hf_checkpoint_matches_rotate_half_reference() {
    for (st, tied) in [(St::F32, false), (St::F32, true), (St::F16, true), (St::Bf16, false)] {
        let c = tiny_config(300, tied);
        // Weights in Hugging Face convention (q/k rows for rotate-half RoPE).
        let w = random_weights(&c, 100 + st as u64);
        let dir = tempdir();
        let held = write_checkpoint(dir.path(), &c, &w, st, Some("sha256:test"));
        let conv = import_checkpoint(dir.path(), &ImportOptions::new(StoreDType::F32)).unwrap();
        let tokens = test_tokens(24, 300);
        let worst = worst_error(&conv.bytes, &mut Reference::new(c, &held, Rope::RotateHalf), &tokens);
        assert!(worst < 1e-4, "{st:?} tied={tied}: worst relative error {worst}");
        let aligned = AlignedBytes::from_slice(&conv.bytes);
        let m = Model::from_bytes(&aligned).unwrap();
        assert_eq!(m.model_id(), "sha256:test");
        assert_eq!(m.default_domain().name, "story");
        // q8: greedy agreement with the f64 reference
        let q8 = import_checkpoint(dir.path(), &ImportOptions::new(StoreDType::Q8)).unwrap();
        let agree = greedy_agreement(&q8.bytes, &mut Reference::new(c, &held, Rope::RotateHalf), 0, 64);
        assert!(agree * 100 >= 95 * 64, "{st:?} q8 agreed on {agree}/64");
        // Every q8 tensor's error is reported and small.
        let rel = q8.report.summary().1;
        assert!(rel > 0.0 && rel < 0.02, "relative RMS error {rel}");
        // The interleaved reference on the same weights does NOT match: the
        // permutation is what makes the file right.
        let wrong = worst_error(&conv.bytes, &mut Reference::new(c, &held, Rope::Interleaved), &tokens);
        assert!(wrong > 1e-3, "the RoPE permutation had no effect ({wrong})");
    }
}

#[test]
fn model_id_is_computed_when_absent() {
    let c = tiny_config(300, true);
    let w = random_weights(&c, 5);
    let dir = tempdir();
    write_checkpoint(dir.path(), &c, &w, St::F32, None);
    let a = import_checkpoint(dir.path(), &ImportOptions::new(StoreDType::Q8)).unwrap();
    let aligned = AlignedBytes::from_slice(&a.bytes);
    let id = Model::from_bytes(&aligned).unwrap().model_id().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
    // the id depends on the weights, not on the storage dtype
    let b = import_checkpoint(dir.path(), &ImportOptions::new(StoreDType::F32)).unwrap();
    let aligned = AlignedBytes::from_slice(&b.bytes);
    assert_eq!(Model::from_bytes(&aligned).unwrap().model_id(), id);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let c = tiny_config(300, true);
    let w = random_weights(&c, 6);
    let opts = ImportOptions::new(StoreDType::F32);
    // not a directory
    let e = import_checkpoint(Path::new("/nonexistent/ckpt"), &opts).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    // unsupported architecture
    let dir = tempdir();
    write_checkpoint(dir.path(), &c, &w, St::F32, None);
    let cfg =
        config_json(&c, None).replace("\"llama\"", "\"mistral\"").replace("LlamaForCausalLM", "MistralForCausalLM");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArchitecture(ref a) if a == "mistral"), "{e}");
    // shape mismatch: config says a bigger ffn than the weights have
    let mut big = c;
    big.ffn_dim = 128;
    std::fs::write(dir.path().join("config.json"), config_json(&big, None)).unwrap();
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("gate_proj"), "{e}");
    // truncated safetensors
    std::fs::write(dir.path().join("config.json"), config_json(&c, None)).unwrap();
    let st = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    std::fs::write(dir.path().join("model.safetensors"), &st).unwrap();
    // missing tokenizer
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // missing weights file
    let dir = tempdir();
    write_checkpoint(dir.path(), &c, &w, St::F32, None);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(e.to_string().contains("no model.safetensors"), "{e}");
    // a missing tensor is named
    let dir = tempdir();
    let mut fewer = w.clone();
    fewer.remove("layers.1.ffn_norm");
    std::fs::write(dir.path().join("config.json"), config_json(&c, None)).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json(300)).unwrap();
    write_safetensors(&dir.path().join("model.safetensors"), &fewer, St::F32);
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(matches!(e, Error::MissingTensor(ref n) if n == "model.layers.1.post_attention_layernorm.weight"), "{e}");
    // an untied checkpoint without lm_head
    let mut untied = c;
    untied.tied_head = false;
    std::fs::write(dir.path().join("config.json"), config_json(&untied, None)).unwrap();
    write_safetensors(&dir.path().join("model.safetensors"), &w, St::F32);
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(matches!(e, Error::MissingTensor(ref n) if n == "lm_head.weight"), "{e}");
    // a domain checkpoint is refused with a pointer to what is supported
    let dir = tempdir();
    write_checkpoint(dir.path(), &c, &w, St::F32, None);
    let cfg = config_json(&c, None).replace("\"kind\":\"base\"", "\"kind\":\"domain\"");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = import_checkpoint(dir.path(), &opts).unwrap_err();
    assert!(matches!(e, Error::NotYet(_)), "{e}");
}
