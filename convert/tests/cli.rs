//! The `edgelm-convert` binary end to end: export / import / inspect /
//! verify, refusal to overwrite an input, and no output (not even a
//! temporary file) after a failed conversion.

use std::path::Path;
use std::process::{Command, Output};

use edgelm_runtime::format::DType;
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgelm-convert")).args(args).current_dir(dir).output().expect("runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn export_import_inspect_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("m.edgelm"), synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap()).unwrap();
    let o = run(&["export-gguf", "m.edgelm", "--output", "m.gguf"], d);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["import-gguf", "m.gguf", "--output", "back.edgelm", "--dtype", "keep"], d);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(d.join("m.edgelm")).unwrap(), std::fs::read(d.join("back.edgelm")).unwrap());
    let o = run(&["import-gguf", "m.gguf", "-o", "f32.edgelm", "--dtype", "f32", "--report", "r.json"], d);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    assert!(report["tensors"].as_array().unwrap().len() > 10);
    let o = run(&["verify", "back.edgelm"], d);
    assert!(o.status.success() && text(&o).contains("checksum"), "{}", text(&o));
    let o = run(&["inspect", "back.edgelm"], d);
    assert!(o.status.success() && text(&o).contains("layers.1.feed_forward.w2"), "{}", text(&o));
    let o = run(&["inspect", "m.gguf"], d);
    assert!(o.status.success() && text(&o).contains("blk.1.ffn_down.weight"), "{}", text(&o));
}

#[test]
fn refuses_to_overwrite_an_input_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = synthetic_model(&SyntheticSpec::tiny(DType::F32)).unwrap();
    std::fs::write(d.join("m.edgelm"), &model).unwrap();
    let o = run(&["export-gguf", "m.edgelm", "--output", "m.edgelm"], d);
    assert!(!o.status.success());
    assert!(text(&o).contains("one of the inputs"), "{}", text(&o));
    assert_eq!(std::fs::read(d.join("m.edgelm")).unwrap(), model);
    // a truncated GGUF: error naming the problem, no output, no temporary file
    let o = run(&["export-gguf", "m.edgelm", "--output", "m.gguf"], d);
    assert!(o.status.success(), "{}", text(&o));
    let g = std::fs::read(d.join("m.gguf")).unwrap();
    std::fs::write(d.join("cut.gguf"), &g[..g.len() / 3]).unwrap();
    let before = names(d);
    let o = run(&["import-gguf", "cut.gguf", "--output", "out.edgelm"], d);
    assert!(!o.status.success());
    assert!(text(&o).contains("cut.gguf"), "{}", text(&o));
    assert_eq!(names(d), before, "a failed conversion left files behind");
    // not a model at all
    std::fs::write(d.join("junk.bin"), b"this is not a model, just some text that is long enough").unwrap();
    std::fs::write(d.join("tok.bin"), b"").unwrap();
    let o = run(&["import-llama2c", "junk.bin", "--tokenizer", "tok.bin", "--output", "out.edgelm"], d);
    assert!(!o.status.success());
    assert!(!d.join("out.edgelm").exists());
    let o = run(&["verify", "junk.bin"], d);
    assert!(!o.status.success() && text(&o).contains("magic"), "{}", text(&o));
}
