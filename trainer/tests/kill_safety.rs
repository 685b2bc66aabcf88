//! Kill safety of `edgelm-train base`: the process is SIGKILLed at random moments
//! and, every other time, just after a checkpoint write has begun (a checkpoint is
//! written every step; a temporary file in the run directory shows a write). After
//! every kill the resume record loads, and the run finished with `--resume` ends
//! with exactly the weights of an uninterrupted run.
#![cfg(unix)]

mod common;

use candle_core::Device;
use common::*;
use edgelm_trainer::checkpoint;
use edgelm_trainer::rng::Rng;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: &str = "20";
const MIN_KILLS: usize = 20;
/// Kills that must leave a temporary file behind (killed inside a write).
const MIN_MID_WRITE: usize = 3;
const MAX_ATTEMPTS: usize = 300;

fn base(train: &Path, tok: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm-train"));
    c.env("RAYON_NUM_THREADS", "1").args(["base", "--corpus"]).arg(train).arg("--tokenizer").arg(tok).arg("--out");
    // wide enough (0.7 M parameters: 2.9 MB of weights, a 8.6 MB resume record) that
    // writing a checkpoint takes a good share of each step, so kills land inside writes
    c.arg(out).args(["--dim", "192", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--ffn", "384"]);
    c.args(["--seq-len", "16", "--batch", "4", "--steps", STEPS, "--checkpoint-every", "1"]);
    c.arg("--no-progress");
    if resume {
        c.arg("--resume");
    }
    c
}

/// The trainer's temporary files (`NAME.edgelm.tmp[.EXT]`) in `dir`.
fn temporaries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten().filter(|e| e.file_name().to_string_lossy().contains(".edgelm.tmp")).map(|e| e.path()).collect()
        })
        .unwrap_or_default()
}

fn has_tmp(dir: &Path) -> bool {
    !temporaries(dir).is_empty()
}

#[test]
fn sigkill_at_random_moments_never_breaks_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = write(d, "train.txt", &story_text(60, 3));
    let tok = d.join("tok.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelm-train"));
    ok(c.args(["tokenizer", "--corpus"]).arg(&train).args(["--vocab-size", "300", "--output"]).arg(&tok));

    // the uninterrupted run, and how long it takes (kills are spread over that span)
    let t0 = Instant::now();
    ok(base(&train, &tok, &d.join("whole"), false).stdout(Stdio::null()));
    let span_ms = (t0.elapsed().as_millis() as u64).max(50);
    let want = checkpoint::load(&d.join("whole"), &Device::Cpu).unwrap();
    let want = checkpoint::model_id(&want.model.tensors()).unwrap();

    let run = d.join("killed");
    let mut rng = Rng::new(11, 5);
    let (mut kills, mut mid_write, mut attempts, mut completed) = (0, 0, 0, 0);
    while kills < MIN_KILLS || mid_write < MIN_MID_WRITE {
        attempts += 1;
        assert!(attempts <= MAX_ATTEMPTS, "{kills} kills ({mid_write} mid-write) after {MAX_ATTEMPTS} attempts");
        let resume = run.join(checkpoint::STATE_TENSORS_FILE).exists();
        let mut child = base(&train, &tok, &run, resume).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // odd attempts: a random moment of the run; even ones: just after a
        // temporary file appears (inside a checkpoint write), plus 0-3 ms
        let deadline = Duration::from_millis(rng.below(span_ms));
        let aim_at_write = attempts % 2 == 0;
        let (start, mut seen) = (Instant::now(), None::<Instant>);
        let jitter = Duration::from_micros(rng.below(3000));
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if aim_at_write && seen.is_none() && has_tmp(&run) {
                seen = Some(Instant::now());
            }
            let due = match seen {
                Some(t) => t.elapsed() >= jitter,
                None => !aim_at_write && start.elapsed() >= deadline,
            };
            if due {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        match status {
            Some(s) => {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                assert!(s.success(), "a run after a kill failed: {err}");
                // it finished before the kill: same weights as the uninterrupted run, then start over
                let got = checkpoint::load(&run, &Device::Cpu).unwrap();
                assert_eq!(checkpoint::model_id(&got.model.tensors()).unwrap(), want);
                completed += 1;
                std::fs::remove_dir_all(&run).unwrap();
            }
            None => {
                kills += 1;
                // a kill inside a write leaves its temporary file (the next write of
                // that file would replace it); cleared so that the next round sees
                // only its own
                let tmp = temporaries(&run);
                mid_write += usize::from(!tmp.is_empty());
                for t in tmp {
                    std::fs::remove_file(t).unwrap();
                }
                // whatever the moment, the record (if one was committed) loads and is whole
                if run.join(checkpoint::STATE_TENSORS_FILE).exists() {
                    let (state, rec) = checkpoint::load_state(&run, &Device::Cpu)
                        .unwrap_or_else(|e| panic!("kill {kills} left an unusable record: {e}"));
                    assert_eq!(checkpoint::model_id(&rec.params).unwrap(), state.model_id);
                }
            }
        }
    }
    let resume = run.join(checkpoint::STATE_TENSORS_FILE).exists();
    ok(base(&train, &tok, &run, resume).stdout(Stdio::null()));
    let got = checkpoint::load(&run, &Device::Cpu).unwrap();
    assert_eq!(checkpoint::model_id(&got.model.tensors()).unwrap(), want, "resumed weights differ");
    assert!(!has_tmp(&run), "a finished run left a temporary file");
    eprintln!("{kills} kills ({mid_write} inside a write), {completed} runs completed, {attempts} attempts");
}
