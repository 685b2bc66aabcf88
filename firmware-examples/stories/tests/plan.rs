//! The build-time plan: settings from variables, and an arena sized by the
//! runtime for the longest run.
#![cfg(feature = "plan")]

use std::collections::HashMap;
use std::path::PathBuf;

use edgelm_runtime::format::DType;
use edgelm_runtime::{AlignedBytes, KvType, Model, Session, SessionOptions};
use edgelm_stories::plan::{prompt_var, Defaults, Plan, Settings};
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

const DEFAULTS: Defaults = Defaults {
    board: "test",
    model: "tiny.edgelm",
    packs: &[],
    runs: &[("story", "Once upon a time")],
    max_tokens: 20,
};

fn settings(vars: &[(&str, &str)]) -> Result<Settings, String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Settings::new(&DEFAULTS, &mut |k| vars.get(k).cloned())
}

/// A folder holding the tiny synthetic model as `tiny.edgelm`.
fn model_dir(name: &str) -> (PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("edgelm-stories-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap();
    std::fs::write(dir.join("tiny.edgelm"), &bytes).unwrap();
    (dir, bytes)
}

#[test]
fn variables_override_defaults() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.runs, vec![("story".to_string(), "Once upon a time".to_string())]);
    assert_eq!((s.max_tokens, s.seed, s.max_seq, s.kv), (20, 42, None, KvType::F32));

    let s = settings(&[
        ("EDGELM_FW_DOMAINS", "story, recipe"),
        ("EDGELM_FW_PROMPT_RECIPE", "Title: Soup"),
        ("EDGELM_FW_SEED", "7"),
        ("EDGELM_FW_MAX_SEQ", "80"),
        ("EDGELM_FW_PACKS", "a.edgelm,b.edgelm"),
        ("EDGELM_FW_KV", "Q8"),
    ])
    .unwrap();
    assert_eq!(s.kv, KvType::Q8);
    assert_eq!(s.runs[1], ("recipe".to_string(), "Title: Soup".to_string()));
    assert_eq!((s.seed, s.max_seq), (7, Some(80)));
    assert_eq!(s.packs, ["a.edgelm", "b.edgelm"]);
    assert_eq!(prompt_var("my-domain"), "EDGELM_FW_PROMPT_MY_DOMAIN");
}

#[test]
fn bad_settings_name_the_variable() {
    let e = settings(&[("EDGELM_FW_SEED", "forty")]).unwrap_err();
    assert!(e.contains("EDGELM_FW_SEED"), "{e}");
    let e = settings(&[("EDGELM_FW_PROMPT_STORY", "two\nlines")]).unwrap_err();
    assert!(e.contains("EDGELM_FW_PROMPT_STORY") && e.contains("one line"), "{e}");
    let e = settings(&[("EDGELM_FW_KV", "q4")]).unwrap_err();
    assert!(e.contains("EDGELM_FW_KV") && e.contains("q8"), "{e}");
    let e = settings(&[("EDGELM_FW_DOMAINS", " , ")]).unwrap_err();
    assert!(e.contains("EDGELM_FW_DOMAINS"), "{e}");
}

#[test]
fn arena_fits_the_longest_prompt_plus_its_tokens_exactly() {
    let (dir, bytes) = model_dir("fit");
    let plan = Plan::new(&settings(&[]).unwrap(), &dir).unwrap();
    let aligned = AlignedBytes::from(bytes);
    let model = Model::from_bytes(&aligned).unwrap();
    // the prompt's tokens as a session counts them
    let mut arena = vec![0u8; model.arena_bytes(96)];
    let prompt_tokens = Session::new(&model, "story", &mut arena, SessionOptions::new(96))
        .unwrap()
        .feed_prompt("Once upon a time")
        .unwrap();
    assert_eq!(plan.max_seq, prompt_tokens + 20);
    let options = |kv| edgelm_stories::plan::image_options(plan.max_seq, kv);
    assert_eq!(plan.arena_bytes, model.arena_bytes_for(&options(KvType::F32)));
    let rs = plan.render();
    assert!(rs.contains(&format!("pub const ARENA_BYTES: usize = {};", plan.arena_bytes)), "{rs}");
    assert!(rs.contains("edgelm_runtime::include_model!(") && rs.contains("kv: edgelm_runtime::KvType::F32,"), "{rs}");

    // a q8 cache: the same context in a smaller arena, and the image says so
    let q8 = Plan::new(&settings(&[("EDGELM_FW_KV", "q8")]).unwrap(), &dir).unwrap();
    assert_eq!((q8.max_seq, q8.kv), (plan.max_seq, KvType::Q8));
    assert_eq!(q8.arena_bytes, model.arena_bytes_for(&options(KvType::Q8)));
    assert!(q8.arena_bytes < plan.arena_bytes);
    assert!(q8.render().contains("kv: edgelm_runtime::KvType::Q8,"));

    // more tokens than the model's context: capped at its limit (96)
    let plan = Plan::new(&settings(&[("EDGELM_FW_MAX_TOKENS", "500")]).unwrap(), &dir).unwrap();
    assert_eq!(plan.max_seq, 96);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn what_the_runtime_refuses_fails_the_build() {
    let (dir, _) = model_dir("refuse");
    let e = Plan::new(&settings(&[("EDGELM_FW_DOMAINS", "poems")]).unwrap(), &dir).unwrap_err();
    assert!(e.contains("poems") && e.contains("EDGELM_FW_DOMAINS"), "{e}");
    let e = Plan::new(&settings(&[("EDGELM_FW_MAX_SEQ", "4096")]).unwrap(), &dir).unwrap_err();
    assert!(e.contains("EDGELM_FW_MAX_SEQ"), "{e}");
    let e = Plan::new(&settings(&[("EDGELM_FW_TOP_P", "0")]).unwrap(), &dir).unwrap_err();
    assert!(e.contains("top-p"), "{e}");
    let e = Plan::new(&settings(&[("EDGELM_FW_MODEL", "missing.edgelm")]).unwrap(), &dir).unwrap_err();
    assert!(e.contains("cannot read") && e.contains("missing.edgelm"), "{e}");
    std::fs::write(dir.join("bad.edgelm"), b"not a model").unwrap();
    let e = Plan::new(&settings(&[("EDGELM_FW_MODEL", "bad.edgelm")]).unwrap(), &dir).unwrap_err();
    assert!(e.contains("EDGELM_FW_MODEL"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
