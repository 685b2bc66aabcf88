//! One bits-per-byte protocol (issue 10): `edgelm eval` on a converted model
//! and `edgelm-train eval` on its checkpoint give the same numbers on the same
//! text — an LF file, the same documents with CRLF line ends, and an empty file
//! (refused by both) — and the same JSON fields and domain label.
//!
//! The two binaries are run from the target folder this test was built in;
//! `cargo test --workspace` builds them (their own CLI tests need them).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use edgelm_convert::checkpoint::import_checkpoint;
use edgelm_convert::gguf::{export_gguf, import_gguf, ExportOptions};
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_trainer::checkpoint;
use edgelm_trainer::config::ModelConfig;
use edgelm_trainer::model::Llama;
use edgelm_trainer::tokenizer::EdgeTokenizer;
use serde_json::Value;

fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/this-test → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is not built: run `cargo test --workspace` (or `cargo build --bins`)", path.display());
    path
}

/// `(success, stdout, stderr)`.
fn run(bin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary(bin)).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn json_line(out: &str) -> Value {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one object per line: {out}");
    serde_json::from_str(lines[0]).unwrap()
}

const DOCS: [&str; 4] = [
    "Once upon a time a little fox lived in the wood.\nShe liked to sing.",
    "The end.",
    // longer than the context of 32 tokens: scored in windows
    "A very long story about a cat and a dog who walked to the sea and back again, and then they walked \
     to the hills, and the cat sang a song about the sea while the dog listened and wagged its tail.",
    "Title: Cake\nIngredients:\n- 2 cups flour",
];

fn corpus(newline: &str) -> String {
    let mut t = String::new();
    for d in DOCS {
        t.push_str(&d.replace('\n', newline));
        t.push_str(newline);
        t.push_str("<|endoftext|>");
        t.push_str(newline);
    }
    t
}

/// The model both tests convert: small enough to score in well under a second.
fn small_config(vocab_size: usize) -> ModelConfig {
    ModelConfig {
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 96,
        vocab_size,
        max_seq: 32,
        ..Default::default()
    }
}

#[test]
fn edgelm_and_edgelm_train_agree_on_bits_per_byte() {
    let dir = tempfile::tempdir().unwrap();
    // A folder whose name is not a domain: both tools label the text "story".
    let texts = dir.path().join("tmp");
    std::fs::create_dir_all(&texts).unwrap();
    let docs: Vec<String> = (0..40).map(|i| format!("{} {i}", DOCS[i % DOCS.len()])).collect();
    let tok = EdgeTokenizer::train(docs.iter(), 300, &["story".into()]).unwrap();
    let cfg = small_config(tok.vocab_size());
    let ck = dir.path().join("ck");
    let model = Llama::new(&cfg, 5, &Device::Cpu).unwrap();
    checkpoint::save_model(&ck, &model, &tok, &["story".into()], DType::F32).unwrap();
    let edgelm = dir.path().join("story.edgelm");
    std::fs::write(&edgelm, import_checkpoint(&ck, &ImportOptions::new(StoreDType::F32)).unwrap().bytes).unwrap();
    let (ck, edgelm) = (ck.to_str().unwrap(), edgelm.to_str().unwrap());

    let mut by_ending = Vec::new();
    for (name, newline) in [("lf.txt", "\n"), ("crlf.txt", "\r\n")] {
        let file = texts.join(name);
        std::fs::write(&file, corpus(newline)).unwrap();
        let f = file.to_str().unwrap();
        let (ok, out, err) = run("edgelm", &["eval", "--model", edgelm, "--json", f]);
        assert!(ok, "{err}");
        let rt = json_line(&out);
        let (ok, out, err) = run("edgelm-train", &["eval", "--checkpoint", ck, "--valid", f, "--json"]);
        assert!(ok, "{err}");
        let tr = json_line(&out);
        for key in ["file", "domain", "documents", "bytes", "scored_tokens"] {
            assert_eq!(rt[key], tr[key], "{name}: {key} differs\nedgelm:       {rt}\nedgelm-train: {tr}");
        }
        assert_eq!(rt["domain"], "story", "{name}");
        assert_eq!(rt["documents"], DOCS.len(), "{name}: the separators split the file");
        for key in ["bpb", "loss", "total_nats"] {
            let (a, b) = (rt[key].as_f64().unwrap(), tr[key].as_f64().unwrap());
            assert!(a > 0.0 && (a - b).abs() <= 1e-4 * a, "{name}: {key} {a} (edgelm) vs {b} (edgelm-train)");
        }
        by_ending.push(rt);
    }
    // CRLF documents keep their `\r`s: more bytes than LF, same documents.
    assert!(by_ending[1]["bytes"].as_u64() > by_ending[0]["bytes"].as_u64());

    let empty = texts.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = empty.to_str().unwrap();
    let (ok, _, rt_err) = run("edgelm", &["eval", "--model", edgelm, "--json", e]);
    assert!(!ok && rt_err.contains("no documents"), "{rt_err}");
    let (ok, _, tr_err) = run("edgelm-train", &["eval", "--checkpoint", ck, "--valid", e, "--json"]);
    assert!(!ok && tr_err.contains("no documents"), "{tr_err}");
}

/// A base trained on a tokenizer shared by several domains (a generic
/// tokenizer, or a joint model) starts every document with `[BOS, <|domain|>]`
/// in the trainer; the converted file must carry each trained domain with its
/// tag, so both tools score the same tokens in the same context.
#[test]
fn shared_tokenizer_domains_keep_their_tags() {
    use edgelm_runtime::{AlignedBytes, Model};
    let dir = tempfile::tempdir().unwrap();
    let domains: Vec<String> = vec!["story".into(), "recipe".into()];
    let docs: Vec<String> = (0..40).map(|i| format!("{} {i}", DOCS[i % DOCS.len()])).collect();
    let tok = EdgeTokenizer::train(docs.iter(), 300, &domains).unwrap();
    let cfg = small_config(tok.vocab_size());
    let ck = dir.path().join("joint");
    let model = Llama::new(&cfg, 7, &Device::Cpu).unwrap();
    checkpoint::save_model(&ck, &model, &tok, &domains, DType::F32).unwrap();
    let bytes = AlignedBytes::from_slice(&import_checkpoint(&ck, &ImportOptions::new(StoreDType::F32)).unwrap().bytes);
    let m = Model::from_bytes(&bytes).unwrap();
    let names: Vec<&str> = m.domains().iter().map(|d| d.name).collect();
    assert_eq!(names, ["story", "recipe"]);
    for d in m.domains() {
        assert_eq!(d.tag_token, tok.tag_id(d.name), "{}: the trainer's tag", d.name);
        assert!(d.tag_token.is_some());
    }
    let edgelm = dir.path().join("joint.edgelm");
    std::fs::write(&edgelm, &bytes[..]).unwrap();
    let text = dir.path().join("valid.txt");
    std::fs::write(&text, corpus("\n")).unwrap();
    let (ck, edgelm, f) = (ck.to_str().unwrap(), edgelm.to_str().unwrap(), text.to_str().unwrap());
    for d in ["story", "recipe"] {
        let (ok, out, err) = run("edgelm", &["eval", "--model", edgelm, "--domain", d, "--json", f]);
        assert!(ok, "{err}");
        let rt = json_line(&out);
        let (ok, out, err) = run("edgelm-train", &["eval", "--checkpoint", ck, "--valid", f, "--domain", d, "--json"]);
        assert!(ok, "{err}");
        let tr = json_line(&out);
        assert_eq!((&rt["domain"], &rt["scored_tokens"]), (&tr["domain"], &tr["scored_tokens"]), "{d}");
        let (a, b) = (rt["total_nats"].as_f64().unwrap(), tr["total_nats"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * a, "{d}: total_nats {a} (edgelm) vs {b} (edgelm-train)");

        // One domain through GGUF and back keeps its tag, so it scores the same.
        let gguf = export_gguf(&bytes, None, &ExportOptions { domain: Some(d.into()) }).unwrap();
        let g = dir.path().join(format!("{d}.gguf"));
        std::fs::write(&g, &gguf.bytes).unwrap();
        let back = AlignedBytes::from_slice(&import_gguf(&g, &ImportOptions::new(StoreDType::F32)).unwrap().bytes);
        let m = Model::from_bytes(&back).unwrap();
        let only: Vec<_> = m.domains().iter().map(|x| (x.name, x.tag_token)).collect();
        assert_eq!(only, [(d, tok.tag_id(d))], "{d}: the domain and its tag after export-gguf and import-gguf");
        let re = dir.path().join(format!("{d}.edgelm"));
        std::fs::write(&re, &back[..]).unwrap();
        let (ok, out, err) = run("edgelm", &["eval", "--model", re.to_str().unwrap(), "--json", f]);
        assert!(ok, "{err}");
        let c = json_line(&out)["total_nats"].as_f64().unwrap();
        assert_eq!(c, a, "{d}: total_nats after the GGUF round trip");
    }
}
