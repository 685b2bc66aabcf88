//! The `edgelm-train` binary end to end on a fixture: tokenizer -> base -> resume ->
//! eval --json -> sample.

mod common;

use common::ok;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm-train"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

#[test]
fn cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = common::write(d, "stories/train.txt", &common::story_text(80, 1));
    let valid = common::write(d, "stories/valid.txt", &common::story_text(5, 2));
    let tok = d.join("tok.json");
    let out = ok(bin().args(["tokenizer", "--corpus"]).arg(&train).args(["--vocab-size", "300", "--output"]).arg(&tok));
    assert!(out.contains("bytes/token"), "{out}");
    let run = d.join("run");
    let base = |extra: &[&str]| {
        let mut c = bin();
        c.args(["base", "--corpus"])
            .arg(&train)
            .arg("--valid")
            .arg(&valid)
            .arg("--tokenizer")
            .arg(&tok)
            .arg("--out")
            .arg(&run);
        c.args(["--dim", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--ffn", "48", "--seq-len", "16"]);
        c.args(["--batch", "4", "--steps", "6", "--checkpoint-every", "2", "--eval-every", "3", "--no-progress"]);
        c.args(extra);
        c
    };
    ok(&mut base(&["--stop-after", "3"]));
    ok(&mut base(&["--resume"]));
    let log = std::fs::read_to_string(run.join("train_log.csv")).unwrap();
    assert_eq!(log.lines().count(), 7, "{log}");
    let j = ok(bin().args(["eval", "--checkpoint"]).arg(&run).arg("--valid").arg(&valid).arg("--json"));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert!(v["bpb"].as_f64().unwrap() > 0.0, "{j}");
    let s = ok(bin().args(["sample", "--checkpoint"]).arg(&run).args(["--prompt", "Once", "--max-tokens", "8"]));
    assert!(s.starts_with("Once"), "{s}");
    // Errors are messages, not panics.
    let o = bin().args(["eval", "--checkpoint"]).arg(d.join("nope")).arg("--valid").arg(&valid).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a directory") && !err.contains("panicked"), "{err}");
}
