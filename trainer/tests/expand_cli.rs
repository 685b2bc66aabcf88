//! `edgelm-train expand` and `edgelm-train experiment` end to end on fixture corpora.

mod common;

use common::{ok, write};
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm-train"));
    c.env("RAYON_NUM_THREADS", "1").env("CANDLE_NUM_THREADS", "1");
    c
}

fn stories(n: usize) -> String {
    let who = ["the cat", "a little dog", "the old owl", "my friend"];
    (0..n).map(|d| format!("Once {} sat on the mat. The end.\n<|endoftext|>\n", who[d % 4])).collect()
}

fn recipes(n: usize) -> String {
    let f = ["flour", "butter", "sugar", "eggs", "milk"];
    (0..n)
        .map(|d| {
            format!("Title: Cake {d}\nIngredients:\n- 2 cups {}\nSteps:\n1. Mix and bake.\n<|endoftext|>\n", f[d % 5])
        })
        .collect()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn expand_writes_a_domain_checkpoint_bound_to_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = write(d, "stories/train.txt", &stories(60));
    let rt = write(d, "recipes/train.txt", &recipes(60));
    let rv = write(d, "recipes/valid.txt", &recipes(4));
    let (stok, rtok) = (d.join("s.json"), d.join("r.json"));
    ok(bin().args(["tokenizer", "--corpus"]).arg(&st).args(["--vocab-size", "300", "--output"]).arg(&stok));
    ok(bin().args(["tokenizer", "--corpus"]).arg(&rt).args(["--vocab-size", "290", "--output"]).arg(&rtok));
    let base = d.join("base");
    ok(bin()
        .args(["base", "--corpus"])
        .arg(&st)
        .arg("--tokenizer")
        .arg(&stok)
        .arg("--out")
        .arg(&base)
        .args(["--dim", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "48", "--seq-len", "16"])
        .args(["--batch", "4", "--steps", "3", "--warmup", "1", "--no-progress"]));
    let out = d.join("recipe");
    let o = ok(bin()
        .args(["expand", "--base"])
        .arg(&base)
        .arg("--corpus")
        .arg(&rt)
        .arg("--valid")
        .arg(&rv)
        .args(["--domain", "recipe", "--domain-tokenizer"])
        .arg(&rtok)
        .arg("--out")
        .arg(&out)
        .args(["--blocks", "1", "--steps", "3", "--batch", "4", "--warmup", "1"]));
    assert!(o.contains("bpb"), "{o}");
    let bc = json(&base.join("config.json"));
    let dc = json(&out.join("config.json"));
    assert_eq!(dc["edgelm"]["kind"], "domain");
    assert_eq!(dc["edgelm"]["base_model_id"], bc["edgelm"]["model_id"]);
    assert_eq!(dc["edgelm"]["expansion"]["positions"], serde_json::json!([2]));
    assert_eq!(dc["edgelm"]["expansion"]["tokenizer"], "per-domain");
    // The baselines as standalone runs write ordinary base-kind checkpoints.
    for m in ["finetune", "lora"] {
        let o = d.join(m);
        ok(bin()
            .args(["baseline", "--method", m, "--base"])
            .arg(&base)
            .arg("--corpus")
            .arg(&rt)
            .args(["--domain", "recipe", "--out"])
            .arg(&o)
            .args(["--steps", "2", "--batch", "2", "--seq-len", "16", "--rank", "2"]));
        assert_eq!(json(&o.join("config.json"))["edgelm"]["kind"], "base");
    }
    let jt = d.join("joint.json");
    ok(bin()
        .args(["tokenizer", "--corpus"])
        .arg(&st)
        .arg(&rt)
        .args(["--domain", "story", "recipe", "--vocab-size", "320", "--output"])
        .arg(&jt));
    let jo = d.join("joint");
    // a small joint run into `out`, with `extra` flags
    let joint = |out: &Path, extra: &[&str]| {
        let mut c = bin();
        c.args(["baseline", "--method", "joint", "--corpus"])
            .arg(&st)
            .arg(&rt)
            .args(["--domain", "story", "recipe", "--tokenizer"])
            .arg(&jt)
            .arg("--out")
            .arg(out)
            .args(["--steps", "2", "--batch", "2", "--seq-len", "16", "--dim", "32", "--layers", "1", "--ffn", "32"])
            .args(extra);
        c
    };
    ok(&mut joint(&jo, &["--heads", "2", "--kv-heads", "1", "--domain-weights", "1", "3"]));
    let state = json(&jo.join("train_state.json"));
    assert_eq!(state["stream_weights"], serde_json::json!([1.0, 3.0]), "the weights are in the resume record");
    // One weight per domain, or a clear refusal.
    let o = joint(&d.join("joint-bad"), &["--domain-weights", "1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--domain-weights"), "{}", String::from_utf8_lossy(&o.stderr));
    let jc = json(&jo.join("config.json"));
    assert_eq!(jc["edgelm"]["domains"], serde_json::json!(["story", "recipe"]));
    // the shape flags reach the model (not the `base` defaults of 8 and 4 heads)
    assert_eq!((jc["num_attention_heads"].as_u64(), jc["num_key_value_heads"].as_u64()), (Some(2), Some(1)));
    // Shared mode needs the domain's tag in the base vocabulary: a clear refusal.
    let o = bin()
        .args(["expand", "--base"])
        .arg(&base)
        .arg("--corpus")
        .arg(&rt)
        .args(["--domain", "recipe", "--tokenizer", "shared", "--out"])
        .arg(d.join("shared"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("tag token"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn experiment_writes_a_report_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "data/stories/train.txt", &stories(80));
    write(d, "data/stories/valid.txt", &stories(4));
    write(d, "data/recipes/train.txt", &recipes(80));
    write(d, "data/recipes/valid.txt", &recipes(4));
    let out = d.join("exp");
    let args = |c: &mut Command, out: &Path| {
        c.args(["experiment", "--data"]).arg(d.join("data")).arg("--out").arg(out).args([
            "--base-steps",
            "2",
            "--domain-steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--dim",
            "32",
            "--layers",
            "2",
            "--ffn",
            "48",
            "--vocab",
            "300",
            "--generic-vocab",
            "340",
            "--rank",
            "2",
            "--blocks",
            "1",
        ]);
    };
    let mut c = bin();
    args(&mut c, &out);
    ok(&mut c);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for m in [
        "| base |",
        "| expand |",
        "| finetune |",
        "| lora |",
        "| separate |",
        "| separate-deep |",
        "| joint |",
        "story-generic-eq",
        "Equal tokens",
    ] {
        assert!(report.contains(m), "report lacks {m}:\n{report}");
    }
    assert!(out.join("bpb.png").exists() && out.join("tokenizers.png").exists());
    // Expansion does not change the story BPB.
    let b = json(&out.join("base/result.json"));
    let e = json(&out.join("expand/result.json"));
    assert_eq!(b["story"]["bpb"], e["story"]["bpb"]);
    // A second run loads every finished method instead of training it again.
    let mtime = std::fs::metadata(out.join("joint/result.json")).unwrap().modified().unwrap();
    let mut c = bin();
    args(&mut c, &out);
    ok(&mut c);
    assert_eq!(std::fs::metadata(out.join("joint/result.json")).unwrap().modified().unwrap(), mtime);
    // separate-deep has the expansion's blocks on top of the base's layers.
    let sd = json(&out.join("separate-deep/result.json"));
    assert!(sd["notes"][0].as_str().unwrap().starts_with("3 layers"), "{sd}");

    // Equal bytes: the generic model's steps follow the two tokenizers' bytes per token.
    let out2 = d.join("exp-bytes");
    let mut c = bin();
    args(&mut c, &out2);
    c.args(["--equal-bytes", "--methods", "recipe-generic"]);
    ok(&mut c);
    let rg = json(&out2.join("recipe-generic/result.json"));
    let notes: Vec<&str> = rg["notes"].as_array().unwrap().iter().filter_map(|n| n.as_str()).collect();
    let steps: u64 = notes[0].split(", ").nth(1).and_then(|s| s.strip_suffix(" steps")).unwrap().parse().unwrap();
    assert_eq!(rg["train_tokens"].as_u64(), Some(steps * 2 * 16), "{rg}");
    let bpt: Vec<f64> =
        notes[1].split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|x| x.parse().ok()).collect();
    assert_eq!(steps, ((2.0 * bpt[1] / bpt[0]).round() as u64).max(1), "{notes:?}");
    assert!(std::fs::read_to_string(out2.join("report.md")).unwrap().contains("Equal bytes"));
}
