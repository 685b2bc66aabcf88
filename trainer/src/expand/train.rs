//! The training loop of `edgelm-train expand`: the new parameters of an
//! [`Expanded`] model trained by [`fit_from`], with periodic domain checkpoints and
//! an exact `--resume`.
//!
//! A checkpoint is committed by the resume record ([`checkpoint::commit_resume`]:
//! the new parameters, their optimiser moments and [`ExpandState`] in one file,
//! written atomically), then the domain checkpoint itself (model, config,
//! tokenizer) and the loss log are written for the other tools. A kill at any
//! moment leaves a record that resumes exactly.

use super::Expanded;
use crate::baselines::{fit_from, FitConfig, FitFrom, FitResume, FitStats};
use crate::checkpoint::{self, STATE_TENSORS_FILE};
use crate::config::HfConfig;
use crate::corpus::{Batcher, TokenStream};
use crate::rng::Rng;
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The loss log of a domain checkpoint (`step,loss`).
pub const LOG_FILE: &str = "train_log.csv";

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

/// `train_state.json` of a domain checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpandState {
    /// Completed optimiser steps.
    pub step: usize,
    /// model_id of the new parameters in the resume record (an integrity check).
    pub model_id: String,
    /// model_id of the frozen base.
    pub base_model_id: Option<String>,
    /// Batch sampler RNG state.
    pub batch_rng: Rng,
    /// Seconds of training so far, over all invocations.
    pub elapsed_s: f64,
    /// The settings the run was started with (a resume must use the same).
    pub fit: FitConfig,
    /// `(step, loss)` up to `step` (the CSV beside it may be a checkpoint behind).
    #[serde(default)]
    pub losses: Vec<(usize, f64)>,
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub struct ExpandReport {
    pub stats: FitStats,
    /// Completed steps (less than `fit.steps` only when stopped early).
    pub final_step: usize,
    /// The domain checkpoint's model_id after the last checkpoint written.
    pub model_id: Option<String>,
    /// Seconds of training over all invocations.
    pub elapsed_s: f64,
}

/// Trains (or resumes training of) `e`'s new parameters and writes the domain
/// checkpoint to `job.out` every `job.checkpoint_every` steps and at the end.
/// `progress(step, loss)` is called after every step.
pub fn run(e: &Expanded, job: &ExpandJob, progress: &mut dyn FnMut(usize, f64)) -> Result<ExpandReport> {
    let fc = &job.fit;
    let batcher = RefCell::new(Batcher::new(fc.seed, fc.batch, fc.seq));
    let mut resume = None;
    let mut elapsed0 = 0.0;
    if job.resume {
        let (state, r) = load_state(e, job)?;
        batcher.borrow_mut().rng = state.batch_rng.clone();
        elapsed0 = state.elapsed_s;
        resume = Some(r);
    }
    let first = resume.as_ref().map_or(0, |r| r.step);
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io("cannot create directory", &job.out, e))?;

    let mut model_id = None;
    let mut save = |step: usize, opt: &crate::optim::AdamW, stats: &FitStats| -> Result<()> {
        let params: std::collections::HashMap<_, _> =
            e.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let state = ExpandState {
            step,
            model_id: checkpoint::model_id(&params)?,
            base_model_id: job.base_config.edgelm.model_id.clone(),
            batch_rng: batcher.borrow().rng.clone(),
            elapsed_s: elapsed0 + stats.wall_s,
            fit: fc.clone(),
            losses: stats.losses.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|source| Error::Json { path: job.out.join(STATE_TENSORS_FILE), source })?;
        checkpoint::commit_resume(&job.out, &json, &params, &opt.state_tensors())?;
        model_id = Some(e.save(&job.out, job.base_config, job.tokenizer)?);
        write_log(&job.out.join(LOG_FILE), &stats.losses)?;
        Ok(())
    };
    let from = FitFrom {
        resume,
        checkpoint_every: job.checkpoint_every.max(1),
        on_checkpoint: Some(&mut save),
        stop_after: job.stop_after,
    };
    let mut next = |_s: usize| batcher.borrow_mut().next_batch(job.stream);
    let loss = |x: &candle_core::Tensor, y: &candle_core::Tensor| e.loss(x, y);
    let stats = fit_from(e.vars(), fc, e.device(), from, &mut next, &loss, progress)?;
    let final_step = stats.losses.last().map_or(first, |&(s, _)| s);
    let elapsed_s = elapsed0 + stats.wall_s;
    Ok(ExpandReport { stats, final_step, model_id, elapsed_s })
}

/// Reads the state of an interrupted run in `job.out` into `e` and checks that it
/// belongs to this base, these settings and the weights beside it.
fn load_state(e: &Expanded, job: &ExpandJob) -> Result<(ExpandState, FitResume)> {
    let dir = &job.out;
    let rec = checkpoint::read_resume(dir, e.device())?;
    let state: ExpandState = serde_json::from_slice(&rec.state_json)
        .map_err(|source| Error::Json { path: dir.join(STATE_TENSORS_FILE), source })?;
    if state.base_model_id != job.base_config.edgelm.model_id {
        return Err(Error::ckpt(
            dir,
            format!(
                "the interrupted run was over base {}, not {}",
                state.base_model_id.as_deref().unwrap_or("?"),
                job.base_config.edgelm.model_id.as_deref().unwrap_or("?")
            ),
        ));
    }
    // Only the step count may change, and only upwards: a longer run stretches
    // the cosine from the resumed step on (a warm restart when the old run had ended).
    let extended = FitConfig { steps: job.fit.steps, ..state.fit.clone() };
    if extended != job.fit || job.fit.steps < state.step {
        return Err(Error::Config(format!(
            "the interrupted run in {} used other settings ({:?}); resume with the same ones (only the step count \
             may grow, up from step {}) or use another output",
            dir.display(),
            state.fit,
            state.step
        )));
    }
    if checkpoint::model_id(&rec.params)? != state.model_id {
        return Err(Error::ckpt(
            dir,
            "train_state.safetensors is damaged (its weights are not the ones its state names); start again \
             without resuming",
        ));
    }
    e.set_vars(rec.params, dir)?;
    // a kill between the record and the domain checkpoint left the latter a
    // checkpoint behind (or unwritten after the last step): rewrite it from the record
    e.save(dir, job.base_config, job.tokenizer)?;
    let losses = state.losses.iter().copied().filter(|&(s, _)| s <= state.step).collect();
    let resume = FitResume { step: state.step, moments: rec.moments, losses };
    Ok((state, resume))
}

fn write_log(path: &Path, losses: &[(usize, f64)]) -> Result<()> {
    let csv: String =
        std::iter::once("step,loss\n".to_string()).chain(losses.iter().map(|(s, l)| format!("{s},{l:.6}\n"))).collect();
    crate::fsio::write_atomic(path, csv.as_bytes())
}

/// The `step,loss` rows of a domain checkpoint's log (unparseable lines skipped).
pub fn read_log(path: &Path) -> Vec<(usize, f64)> {
    std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .skip(1)
                .filter_map(|l| {
                    let (a, b) = l.split_once(',')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}
