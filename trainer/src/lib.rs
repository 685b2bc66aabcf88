//! edgelm-trainer: tokenizers, base-model training, evaluation (bits per byte) and
//! sampling for small Llama-style language models, on candle.
//!
//! The library is the reusable part (the `edgelm-train` binary is a thin CLI on top):
//!
//! * [`corpus`]: documents split on `<|endoftext|>` lines, cached u16 token streams,
//!   seeded random-window batches.
//! * [`tokenizer`]: byte-level BPE training and the checkpoint tokenizer conventions.
//! * [`model`]: [`model::Llama`], the decoder (same maths as the runtime), parameters
//!   held as named candle `Var`s so later work can insert blocks and freeze the base.
//! * [`optim`], [`schedule`]: AdamW over an explicit list of vars, warm-up + cosine.
//! * [`checkpoint`]: Hugging Face-style checkpoint directories, written atomically.
//! * [`train`], [`eval`], [`sample`], [`plot`]: the training loop, the bits-per-byte
//!   protocol of `docs/CHECKPOINT.md`, generation, the loss-curve PNG.

// Bad corpora, checkpoints and settings are errors, never panics: no unwrap/expect
// outside tests (enforced by CI's clippy -D warnings). Indexing is reviewed, not
// linted: the fused ops index candle storage whose lengths the layouts state.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod baselines;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod error;
pub mod eval;
pub mod expand;
pub mod experiment;
pub mod fsio;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod resumable;
pub mod rng;
pub mod sample;
pub mod schedule;
pub mod tokenizer;
pub mod train;
pub mod vecmath;

pub use error::{Error, Result};
