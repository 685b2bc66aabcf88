//! Kill safety of `edgelm-convert`: SIGKILLed at random moments while replacing an
//! existing output, the output path always holds the old file or the complete new
//! one, never a torn file (the writer goes through a temporary name, fsync, rename).
#![cfg(unix)]

use edgelm_runtime::format::DType;
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIN_KILLS: usize = 20;
/// Kills that must land inside the write (leaving its temporary file).
const MIN_MID_WRITE: usize = 3;
const MAX_ATTEMPTS: usize = 300;

fn convert(d: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm-convert"));
    c.args(["import-gguf", "m.gguf", "--output", "out.edgelm", "--dtype", "q8"]).current_dir(d);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// The converter's temporary files (`.edgelm-convert-*.tmp`) in `d`.
fn temporaries(d: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".edgelm-convert-"))
        .map(|e| e.path())
        .collect()
}

#[test]
fn sigkill_mid_write_leaves_the_old_or_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // big enough (≈ 17 MB of f32) that writing takes a while
    let spec = SyntheticSpec::stories15m(DType::F32);
    std::fs::write(d.join("m.edgelm"), synthetic_model(&spec).unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_edgelm-convert"))
        .args(["export-gguf", "m.edgelm", "--output", "m.gguf"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = Instant::now();
    assert!(convert(d).status().unwrap().success());
    let span = t0.elapsed();
    let new = std::fs::read(d.join("out.edgelm")).unwrap();
    let old = b"an older file at the output path".to_vec();

    let (mut kills, mut attempts, mut saw_new, mut saw_tmp) = (0, 0, 0, 0);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while kills < MIN_KILLS || saw_tmp < MIN_MID_WRITE {
        attempts += 1;
        assert!(attempts <= MAX_ATTEMPTS, "{kills} kills ({saw_tmp} mid-write) in {MAX_ATTEMPTS} attempts");
        std::fs::write(d.join("out.edgelm"), &old).unwrap();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // odd attempts: a random moment; even ones: just after the temporary file
        // appears (the write has begun: it is a small part of a conversion), plus 0-2 ms
        let deadline = span.mul_f64((state % 1000) as f64 / 1000.0);
        let jitter = Duration::from_micros(state % 2000);
        let aim_at_write = attempts % 2 == 0;
        let mut child = convert(d).spawn().unwrap();
        let (start, mut seen) = (Instant::now(), None::<Instant>);
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if aim_at_write && seen.is_none() && !temporaries(d).is_empty() {
                seen = Some(Instant::now());
            }
            let due = match seen {
                Some(t) => t.elapsed() >= jitter,
                None => !aim_at_write && start.elapsed() >= deadline,
            };
            if due {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break false;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let now = std::fs::read(d.join("out.edgelm")).unwrap();
        assert!(now == old || now == new, "a torn output after a kill ({} bytes)", now.len());
        if !finished {
            kills += 1;
            saw_new += usize::from(now == new);
            // a kill inside the write leaves the (hidden, uniquely named) temporary
            // file behind, never a torn output; clear it for the next round
            let tmp = temporaries(d);
            saw_tmp += usize::from(!tmp.is_empty());
            for t in tmp {
                std::fs::remove_file(t).unwrap();
            }
        }
    }
    eprintln!("{kills} kills: {saw_tmp} inside the write, {saw_new} just after the rename, {attempts} attempts");
}
