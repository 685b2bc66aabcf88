//! The `edgelm` binary end to end on a synthetic model: the subcommand and
//! flag names scripts rely on, JSON keys, and clear errors.

use std::path::PathBuf;
use std::process::Command;

use edgelm_runtime::format::DType;
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgelm-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn edgelm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelm")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn subcommands_work_on_a_synthetic_model() {
    let dir = workdir("ok");
    let spec = SyntheticSpec::tiny(DType::Q8);
    let model = dir.join("base.edgelm");
    std::fs::write(&model, synthetic_model(&spec).unwrap()).unwrap();
    let pack_spec = SyntheticPackSpec::recipe(DType::Q8);
    let pack = dir.join("recipe.edgelm");
    std::fs::write(&pack, synthetic_pack(&spec, &pack_spec).unwrap()).unwrap();
    let m = model.to_str().unwrap();
    let p = pack.to_str().unwrap();

    let (ok, out, err) = edgelm(&["inspect", m]);
    assert!(ok, "{err}");
    assert!(out.contains("layers.0.attention.wq") && out.contains("arena") && out.contains("kernels"), "{out}");

    let (ok, out, err) = edgelm(&["generate", "--model", m, "--prompt", "Once", "--max-tokens", "12", "--seed", "3"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("Once"));
    let (_, again, _) = edgelm(&["generate", "--model", m, "--prompt", "Once", "--max-tokens", "12", "--seed", "3"]);
    assert_eq!(out, again, "same seed, same text");

    let (ok, _, err) =
        edgelm(&["generate", "--model", m, "--pack", p, "--domain", "recipe", "--temperature", "0", "-n", "8"]);
    assert!(ok, "{err}");

    let (ok, out, err) =
        edgelm(&["bench", "--model", m, "--prompt-tokens", "4", "--gen-tokens", "8", "--runs", "2", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"decode_tokens_per_s\":") && out.contains("\"arena_bytes\":"), "{out}");
    let (ok, out, err) =
        edgelm(&["bench", "--model", m, "--prompt-tokens", "16", "--gen-tokens", "0", "--runs", "2", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"decode_tokens_per_s\":null,\"ms_per_token\":null"), "prompt only: {out}");

    let text = dir.join("valid.txt");
    std::fs::write(&text, "Once upon a time.\n<|endoftext|>\nThe end of it all.\n<|endoftext|>\n").unwrap();
    let (ok, out, err) = edgelm(&["eval", "--model", m, "--json", text.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("\"bpb\":") && out.contains("\"documents\":2"), "{out}");

    let (ok, out, err) = edgelm(&["demo", "--models", dir.to_str().unwrap(), "-n", "5"]);
    assert!(ok, "{err}");
    assert!(out.contains("=== story ===") && out.contains("=== recipe ==="), "{out}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = workdir("bad");
    let junk = dir.join("junk.edgelm");
    std::fs::write(&junk, b"definitely not a model, just some bytes to read").unwrap();
    let (ok, _, err) = edgelm(&["inspect", junk.to_str().unwrap()]);
    assert!(!ok && err.contains("not an .edgelm file"), "{err}");
    let (ok, _, err) = edgelm(&["generate", "--model", "/nonexistent/model.edgelm"]);
    assert!(!ok && err.contains("cannot open"), "{err}");

    let model = dir.join("m.edgelm");
    std::fs::write(&model, synthetic_model(&SyntheticSpec::tiny(DType::F32)).unwrap()).unwrap();
    let m = model.to_str().unwrap();
    let (ok, _, err) = edgelm(&["generate", "--model", m, "--domain", "poetry"]);
    assert!(!ok && err.contains("unknown domain"), "{err}");
    let long = "word ".repeat(400);
    let (ok, _, err) = edgelm(&["generate", "--model", m, "--prompt", &long]);
    assert!(!ok && err.contains("prompt is"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn soak_reloads_packs_and_checks_its_probes() {
    let dir = workdir("soak");
    let spec = SyntheticSpec::tiny(DType::Q8);
    let model = dir.join("base.edgelm");
    std::fs::write(&model, synthetic_model(&spec).unwrap()).unwrap();
    let pack = dir.join("recipe.edgelm");
    std::fs::write(&pack, synthetic_pack(&spec, &SyntheticPackSpec::recipe(DType::Q8)).unwrap()).unwrap();
    let (m, p) = (model.to_str().unwrap(), pack.to_str().unwrap());

    let args = ["soak", "--model", m, "--pack", p, "--tokens", "3000", "--session-tokens", "40", "--reload-every", "3"];
    let (ok, out, err) = edgelm(&[&args[..], &["--json", "--window", "500"]].concat());
    assert!(ok, "{err}");
    let field = |k: &str| -> u64 {
        let i = out.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("no {k} in {out}")) + k.len() + 3;
        out[i..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    assert_eq!(field("tokens"), 3000, "{out}");
    assert!(field("sessions") >= 3000 / 40, "{out}");
    // one reload per three sessions after the first load
    assert_eq!(field("reloads"), (field("sessions") - 1) / 3, "{out}");
    assert!(out.contains("\"domains\":[\"story\", \"recipe\"]"), "{out}");
    assert!(out.contains("\"probes\":4,\"probes_identical\":true"), "{out}");
    assert!(out.contains("\"rss_flat\":true") && field("rss_max_bytes") > 0, "{out}");
    assert!(out.matches("\"tokens_per_cpu_s\":").count() >= 6, "one sample per 500 tokens: {out}");

    // the table form, and a clear error for nonsense
    let (ok, out, err) = edgelm(&args);
    assert!(ok, "{err}");
    assert!(out.contains("identical at start and end") && out.contains("reloads"), "{out}");
    let (ok, _, err) = edgelm(&["soak", "--model", m, "--tokens", "0"]);
    assert!(!ok && err.contains("--tokens"), "{err}");
}

/// `eval --threads N` shares the documents among N sessions; the sums are
/// added in file order, so every N gives the same figures to the last digit.
#[test]
fn eval_gives_the_same_sums_for_every_thread_count() {
    let dir = workdir("eval-threads");
    let model = dir.join("base.edgelm");
    std::fs::write(&model, synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap()).unwrap();
    let text = dir.join("valid.txt");
    let docs: Vec<String> =
        (0..9).map(|i| format!("Document {i}: {}", "the cat sat on a mat. ".repeat(1 + i * 3))).collect();
    std::fs::write(&text, docs.join("\n<|endoftext|>\n")).unwrap();
    let sums = |threads: &str| {
        let (ok, out, err) = edgelm(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--threads",
            threads,
            text.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(out.contains(&format!("\"threads\":{threads}")), "{out}");
        // everything but the timing and the thread count
        let start = out.find("\"documents\"").unwrap();
        let end = out.find(",\"seconds\"").unwrap();
        out[start..end].to_string()
    };
    let one = sums("1");
    assert!(one.contains("\"documents\":9"), "{one}");
    assert_eq!(one, sums("2"));
    assert_eq!(one, sums("4"));
    // more threads than documents: one session, its products split
    assert_eq!(one, sums("12"));
}
