//! The training loop of `edgelm-train expand`: the new parameters of an
//! [`Expanded`] model trained by [`resumable::run`], with periodic domain
//! checkpoints and an exact `--resume`.

use super::Expanded;
use crate::baselines::FitConfig;
use crate::config::HfConfig;
use crate::corpus::TokenStream;
use crate::resumable::{self, RunJob, RunReport, Sampler, Trainee};
use crate::tokenizer::EdgeTokenizer;
use crate::Result;
use candle_core::{Device, Tensor, Var};
use std::path::{Path, PathBuf};

pub use crate::resumable::{read_log, LOG_FILE};

/// Everything an expansion run needs besides the model.
pub struct ExpandJob<'a> {
    /// The base's config.json (the domain checkpoint copies its fields).
    pub base_config: &'a HfConfig,
    /// The domain's tokenizer (saved with the checkpoint).
    pub tokenizer: &'a EdgeTokenizer,
    pub stream: &'a TokenStream,
    pub fit: FitConfig,
    pub out: PathBuf,
    /// Steps between checkpoints (the last step always writes one).
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Stop (as if killed) after this many steps of this invocation. For tests.
    pub stop_after: Option<usize>,
}

/// What [`run`] did.
pub type ExpandReport = RunReport;

/// An expansion as a [`Trainee`]: its checkpoint is a domain checkpoint.
struct ExpandTrainee<'a> {
    e: &'a Expanded,
    base_config: &'a HfConfig,
    tokenizer: &'a EdgeTokenizer,
}

impl Trainee for ExpandTrainee<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.e.vars()
    }
    fn device(&self) -> &Device {
        self.e.device()
    }
    fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.e.loss(ids, targets)
    }
    fn save(&self, dir: &Path) -> Result<String> {
        self.e.save(dir, self.base_config, self.tokenizer)
    }
}

/// Trains (or resumes training of) `e`'s new parameters and writes the domain
/// checkpoint to `job.out` every `job.checkpoint_every` steps and at the end.
/// `progress(step, loss)` is called after every step.
pub fn run(e: &Expanded, job: &ExpandJob, progress: &mut dyn FnMut(usize, f64)) -> Result<ExpandReport> {
    let t = ExpandTrainee { e, base_config: job.base_config, tokenizer: job.tokenizer };
    let mut sampler = Sampler::new(vec![job.stream], &job.fit)?;
    let run_job = RunJob {
        fit: job.fit.clone(),
        out: job.out.clone(),
        checkpoint_every: job.checkpoint_every,
        resume: job.resume,
        stop_after: job.stop_after,
        base_model_id: job.base_config.edgelm.model_id.clone(),
    };
    resumable::run(&t, &mut sampler, &run_job, progress)
}
