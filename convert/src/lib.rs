//! edgelm-convert: imports trainer checkpoints, llama2.c checkpoints and
//! GGUF `llama` models into `.edgelm` files (f32, f16, q8 or q4), exports
//! `.edgelm` models to GGUF for llama.cpp, and inspects / verifies files.
//!
//! The `.edgelm` format itself belongs to `edgelm-runtime`
//! (`edgelm_runtime::format`); this crate only builds files through its
//! `FileWriter` and checks every result by loading it with the runtime
//! before it is written. See docs/CONVERT.md.

// Bad input is an error, never a panic: no unwrap/expect and no unchecked
// indexing outside tests (the importers read hostile files; enforced by CI's
// clippy -D warnings).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod checkpoint;
mod error;
pub mod gguf;
pub mod inspect;
pub mod llama2c;
pub mod output;
pub mod pack;
pub mod store;
pub mod tokenizer_import;
pub mod vocab;
pub mod weights;

pub use error::{Error, Result};
pub use store::{Policy, Report, StoreDType};

use indicatif::{ProgressBar, ProgressStyle};

/// Settings shared by the importers.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub policy: Policy,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Name of the base domain (default: from the input, else `story`).
    pub domain: Option<String>,
}

impl ImportOptions {
    pub fn new(dtype: StoreDType) -> Self {
        ImportOptions { policy: Policy::uniform(dtype), progress: false, domain: None }
    }

    pub(crate) fn progress(&self, len: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} tensors ({elapsed})") {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    }
}

/// A finished conversion: the `.edgelm` bytes (already loaded once by the
/// runtime) and the per-tensor quantization report.
#[derive(Debug, Clone)]
pub struct Converted {
    pub bytes: Vec<u8>,
    pub report: Report,
}
