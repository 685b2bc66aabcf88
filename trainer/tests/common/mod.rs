//! Fixtures shared by the integration tests: small synthetic corpora written into
//! temporary directories, tiny model and training configs.
#![allow(dead_code)]

use edgelm_trainer::config::{ModelConfig, TrainConfig};
use edgelm_trainer::rng::Rng;
use std::path::{Path, PathBuf};

/// A corpus of templated children's-story sentences (strong, learnable structure).
pub fn story_text(n_docs: usize, seed: u64) -> String {
    let subj = ["the cat", "a little dog", "the old owl", "my friend", "the brave mouse"];
    let verb = ["sat on", "ran to", "looked at", "jumped over", "sang near"];
    let obj = ["the mat", "the green hill", "a tall tree", "the red house", "the river"];
    let mut r = Rng::new(seed, 42);
    let mut out = String::new();
    for d in 0..n_docs {
        out.push_str(&format!("Story {d}\n\n"));
        let n = 3 + r.below(4) as usize;
        for _ in 0..n {
            let s = subj[r.below(5) as usize];
            let v = verb[r.below(5) as usize];
            let o = obj[r.below(5) as usize];
            out.push_str(&format!("Once {s} {v} {o}. "));
        }
        out.push_str("The end.\n<|endoftext|>\n");
    }
    out
}

/// Runs `c`; panics with its stdout and stderr unless it succeeds; returns its stdout.
pub fn ok(c: &mut std::process::Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

pub fn tiny_model(vocab: usize) -> ModelConfig {
    ModelConfig {
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 64,
        vocab_size: vocab,
        max_seq: 32,
        ..ModelConfig::default()
    }
}

pub fn tiny_train(steps: usize) -> TrainConfig {
    TrainConfig {
        batch: 8,
        accum: 1,
        steps,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 10,
        seed: 7,
        checkpoint_every: 5,
        eval_every: 0,
        eval_windows: 16,
        ..TrainConfig::default()
    }
}
