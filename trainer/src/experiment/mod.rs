//! `edgelm-train experiment` (issue #5): a story base, then every way of adding
//! the recipe domain with the same recipe data and token budget, plus the
//! tokenizer comparison; writes `report.md`, PNG charts and one `result.json` per
//! method into the output directory. A method whose `result.json` exists is
//! skipped (loaded), so a crashed or stopped run resumes where it was; the report
//! is rewritten after every method.
//!
//! Methods (every recipe method gets `domain.steps` steps of `batch × seq` tokens):
//! * `base`: a story model from scratch with its own story tokenizer (`base.steps`);
//! * `expand`: `k` new blocks + the recipe tokenizer's embedding/norm over the frozen base;
//! * `finetune`: all base weights on recipes (base tokenizer);
//! * `lora`: rank-r adapters on every projection, base frozen (base tokenizer);
//! * `separate`: a recipe model from scratch with its own recipe tokenizer;
//! * `separate-deep`: the same with `k` more layers, so that it has the blocks of
//!   base + expansion (the parameters that serve recipes in `expand`);
//! * `joint`: a model from scratch on both corpora (`base.steps + domain.steps`
//!   steps, each step one domain in proportion), generic tokenizer with tags;
//! * `story-generic`, `recipe-generic`: the base and separate recipe models again,
//!   same architecture and steps, with one generic tokenizer trained on both corpora
//!   at a larger vocabulary (the tokenizer claim);
//! * `story-generic-eq`, `recipe-generic-eq`: the same with the FFN narrowed so the
//!   total parameter count matches the custom-tokenizer model (same parameter budget).
//!
//! With `equal_bytes`, the generic-tokenizer models train for as many steps as
//! make them read the same bytes of text as the custom-tokenizer model they are
//! compared with (the tokenizers spend different bytes per token).

//!
//! Layout: this file holds the settings and result types; [`run`] trains and
//! scores the methods (`run.rs`), [`write_report`] writes `report.md`
//! (`report.rs`) and `plots.rs` draws the charts.

mod plots;
mod report;
mod run;

pub use report::write_report;
pub use run::{run, samples_of};

use crate::baselines::FitConfig;
use crate::config::ModelConfig;
use crate::eval::EvalResult;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of an experiment run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Directory with `stories/` and `recipes/` (each `train.txt`, `valid.txt`).
    pub data: PathBuf,
    pub out: PathBuf,
    /// Architecture of every model (vocab_size is set per tokenizer).
    pub model: ModelConfig,
    /// Vocabulary of the per-domain tokenizers.
    pub vocab: usize,
    /// Vocabulary of the generic tokenizer (both corpora).
    pub generic_vocab: usize,
    pub base: FitConfig,
    pub domain: FitConfig,
    pub lora_rank: usize,
    /// New blocks of `expand`.
    pub blocks: usize,
    /// Text used to train each tokenizer (first documents of train.txt).
    pub tokenizer_bytes: usize,
    /// Text of each train.txt used for training (first documents).
    pub train_bytes: usize,
    /// Text of each valid.txt evaluated (first documents).
    pub valid_bytes: usize,
    /// Samples per domain in the report.
    pub samples: usize,
    pub methods: Vec<String>,
    /// Generic-tokenizer models see the same bytes of text (not tokens) as the
    /// custom-tokenizer models they are compared with.
    #[serde(default)]
    pub equal_bytes: bool,
}

pub const ALL_METHODS: [&str; 11] = [
    "base",
    "expand",
    "finetune",
    "lora",
    "separate",
    "separate-deep",
    "joint",
    "story-generic",
    "recipe-generic",
    "story-generic-eq",
    "recipe-generic-eq",
];

impl ExperimentConfig {
    /// The small, bounded default for a CPU-starved machine.
    pub fn small(data: PathBuf, out: PathBuf) -> Self {
        let model = ModelConfig {
            dim: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 352,
            vocab_size: 2048,
            max_seq: 128,
            ..ModelConfig::default()
        };
        let fc =
            FitConfig { steps: 300, batch: 16, seq: 128, lr: 3e-3, min_lr: 3e-4, warmup: 30, ..FitConfig::default() };
        ExperimentConfig {
            data,
            out,
            model,
            vocab: 2048,
            generic_vocab: 4096,
            base: fc.clone(),
            domain: fc,
            lora_rank: 8,
            blocks: 2,
            tokenizer_bytes: 6 << 20,
            train_bytes: 12 << 20,
            valid_bytes: 300 << 10,
            samples: 2,
            methods: ALL_METHODS.iter().map(|s| s.to_string()).collect(),
            equal_bytes: false,
        }
    }
}

/// BPB of one domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainScore {
    pub bpb: f64,
    pub loss: f64,
    pub tokenizer: String,
    pub vocab: usize,
    pub bytes_per_token: f64,
}

impl DomainScore {
    pub(crate) fn of(r: &EvalResult, tokenizer: &str, vocab: usize) -> Self {
        DomainScore {
            bpb: r.bpb,
            loss: r.loss,
            tokenizer: tokenizer.into(),
            vocab,
            bytes_per_token: r.bytes as f64 / (r.scored_tokens.saturating_sub(r.documents as u64)).max(1) as f64,
        }
    }
}

/// What one method produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: String,
    pub story: Option<DomainScore>,
    pub recipe: Option<DomainScore>,
    pub trainable_params: usize,
    pub total_params: usize,
    pub train_tokens: u64,
    pub wall_s: f64,
    pub losses: Vec<(usize, f64)>,
    pub samples: Vec<(String, String)>,
    pub notes: Vec<String>,
}
