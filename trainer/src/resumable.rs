//! A [`fit_from`] run that writes checkpoints and resumes exactly, for any model
//! whose trainable parameters are a list of vars: the loop of `edgelm-train expand`
//! and of `edgelm-train baseline` (finetune, lora, joint).
//!
//! A checkpoint is committed by the resume record ([`checkpoint::commit_resume`]:
//! the trainable parameters, their optimiser moments and [`RunState`] in one file,
//! written atomically), then the checkpoint the other tools read ([`Trainee::save`])
//! and the loss log. A kill at any moment leaves a record that resumes exactly.

use crate::baselines::{fit_from, FitConfig, FitFrom, FitResume, FitStats};
use crate::checkpoint::{self, STATE_TENSORS_FILE};
use crate::corpus::{Batcher, TokenStream};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The loss log beside a checkpoint (`step,loss`).
pub const LOG_FILE: &str = "train_log.csv";

/// What a resumable run trains, and how its checkpoint is written.
pub trait Trainee {
    /// The trainable parameters, named as in the resume record.
    fn vars(&self) -> Vec<(String, Var)>;
    fn device(&self) -> &Device;
    /// Mean cross-entropy of `targets` given `ids` (both `[batch, seq]`).
    fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor>;
    /// Writes the checkpoint the other tools read (model, config, tokenizer) into
    /// `dir` and returns its model_id.
    fn save(&self, dir: &Path) -> Result<String>;
}

/// Sets `vars` from `tensors` (`dir` names the source in errors): every var
/// present with its shape, nothing else.
pub fn set_vars(vars: &[(String, Var)], mut tensors: HashMap<String, Tensor>, dir: &Path) -> Result<()> {
    for (name, v) in vars {
        let t = tensors.remove(name).ok_or_else(|| Error::ckpt(dir, format!("missing tensor {name}")))?;
        if t.dims() != v.dims() {
            return Err(Error::ckpt(dir, format!("tensor {name} has shape {:?}, expected {:?}", t.dims(), v.dims())));
        }
        v.set(&t)?;
    }
    match tensors.keys().next() {
        Some(extra) => Err(Error::ckpt(dir, format!("unexpected tensor {extra}"))),
        None => Ok(()),
    }
}

/// The batches of a run over one or more token streams: each step draws one
/// stream in proportion to its weight (by default its tokens; a single stream is
/// always drawn), then a batch of random windows from it.
pub struct Sampler<'a> {
    streams: Vec<&'a TokenStream>,
    batchers: Vec<Batcher>,
    /// The weights of the stream picker: tokens per stream unless set by [`Sampler::with_weights`].
    sizes: Vec<f64>,
    /// Whether `sizes` were set by the caller (recorded in the resume record).
    weighted: bool,
    pick: Rng,
}

impl<'a> Sampler<'a> {
    /// Stream `i` draws its windows with seed `seed + i`.
    pub fn new(streams: Vec<&'a TokenStream>, fc: &FitConfig) -> Result<Self> {
        if streams.is_empty() {
            return Err(Error::Config("a run needs at least one corpus".into()));
        }
        let batchers = (0..streams.len()).map(|i| Batcher::new(fc.seed + i as u64, fc.batch, fc.seq)).collect();
        let sizes = streams.iter().map(|s| s.tokens.len() as f64).collect();
        Ok(Sampler { streams, batchers, sizes, weighted: false, pick: Rng::new(fc.seed, 0x701) })
    }

    /// Draws stream `i` with probability `weights[i] / sum(weights)` instead of in
    /// proportion to its tokens: e.g. a joint run that reads each domain's share of
    /// another run's budget.
    pub fn with_weights(mut self, weights: &[f64]) -> Result<Self> {
        if weights.len() != self.streams.len() {
            return Err(Error::Config(format!(
                "{} stream weights for {} corpora; give one per corpus",
                weights.len(),
                self.streams.len()
            )));
        }
        if weights.iter().any(|w| !w.is_finite() || *w <= 0.0) {
            return Err(Error::Config(format!("stream weights must be positive numbers, not {weights:?}")));
        }
        self.sizes = weights.to_vec();
        self.weighted = true;
        Ok(self)
    }

    /// The caller's stream weights, if any (empty: in proportion to tokens).
    fn weights(&self) -> Vec<f64> {
        if self.weighted {
            self.sizes.clone()
        } else {
            Vec::new()
        }
    }

    pub fn next_batch(&mut self) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut k = 0;
        if self.streams.len() > 1 {
            let mut u = self.pick.next_f64() * self.sizes.iter().sum::<f64>();
            while k + 1 < self.sizes.len() && u >= self.sizes[k] {
                u -= self.sizes[k];
                k += 1;
            }
        }
        self.batchers[k].next_batch(self.streams[k])
    }

    /// The random state: the first stream's window RNG, then (several streams)
    /// the others' and the stream picker's.
    fn state(&self) -> (Rng, Vec<Rng>) {
        let more = if self.streams.len() > 1 {
            self.batchers[1..].iter().map(|b| b.rng.clone()).chain([self.pick.clone()]).collect()
        } else {
            Vec::new()
        };
        (self.batchers[0].rng.clone(), more)
    }

    fn restore(&mut self, first: Rng, more: &[Rng], dir: &Path) -> Result<()> {
        let expected = if self.streams.len() > 1 { self.streams.len() } else { 0 };
        if more.len() != expected {
            return Err(Error::Config(format!(
                "the interrupted run in {} drew from {} corpora, this one from {}; resume with the same corpora",
                dir.display(),
                more.len().max(1),
                self.streams.len()
            )));
        }
        self.batchers[0].rng = first;
        if let Some((pick, rest)) = more.split_last() {
            for (b, r) in self.batchers[1..].iter_mut().zip(rest) {
                b.rng = r.clone();
            }
            self.pick = pick.clone();
        }
        Ok(())
    }
}

/// Everything a resumable run needs besides the model and its batches.
pub struct RunJob {
    pub fit: FitConfig,
    /// The checkpoint directory.
    pub out: PathBuf,
    /// Steps between checkpoints (the last step always writes one).
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Stop (as if killed) after this many steps of this invocation. For tests.
    pub stop_after: Option<usize>,
    /// model_id of the frozen or starting base, if any: a resume must be over the same.
    pub base_model_id: Option<String>,
}

/// `train_state.json` of a resumable run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Completed optimiser steps.
    pub step: usize,
    /// model_id of the trainable parameters in the resume record (an integrity check).
    pub model_id: String,
    /// model_id of the base the run is over.
    pub base_model_id: Option<String>,
    /// The first stream's window RNG.
    pub batch_rng: Rng,
    /// With several streams: the other streams' window RNGs, then the stream picker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_rngs: Vec<Rng>,
    /// Seconds of training so far, over all invocations.
    pub elapsed_s: f64,
    /// The settings the run was started with (a resume must use the same).
    pub fit: FitConfig,
    /// The stream weights set by [`Sampler::with_weights`] (empty: in proportion to
    /// tokens); a resume must use the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_weights: Vec<f64>,
    /// `(step, loss)` up to `step` (the CSV beside it may be a checkpoint behind).
    #[serde(default)]
    pub losses: Vec<(usize, f64)>,
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stats: FitStats,
    /// Completed steps (less than `fit.steps` only when stopped early).
    pub final_step: usize,
    /// The saved checkpoint's model_id after the last checkpoint written.
    pub model_id: Option<String>,
    /// Seconds of training over all invocations.
    pub elapsed_s: f64,
}

/// Trains (or resumes training of) `t` on `sampler`'s batches and writes its
/// checkpoint to `job.out` every `job.checkpoint_every` steps and at the end.
/// `progress(step, loss)` is called after every step.
pub fn run(
    t: &dyn Trainee,
    sampler: &mut Sampler,
    job: &RunJob,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<RunReport> {
    let fc = &job.fit;
    let mut resume = None;
    let mut elapsed0 = 0.0;
    let weights = sampler.weights();
    if job.resume {
        let (state, r) = load_state(t, job)?;
        if state.stream_weights != weights {
            return Err(Error::Config(format!(
                "the interrupted run in {} drew its corpora with weights {:?}, this one with {:?} (empty: in \
                 proportion to their tokens); resume with the same ones",
                job.out.display(),
                state.stream_weights,
                weights
            )));
        }
        sampler.restore(state.batch_rng, &state.more_rngs, &job.out)?;
        elapsed0 = state.elapsed_s;
        resume = Some(r);
    }
    let first = resume.as_ref().map_or(0, |r| r.step);
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io("cannot create directory", &job.out, e))?;

    // The sampler is lent to the batch closure; the checkpoint reads its state
    // through this cell, updated after every batch.
    let sampler_state = std::cell::RefCell::new(sampler.state());
    let mut model_id = None;
    let mut save = |step: usize, opt: &crate::optim::AdamW, stats: &FitStats| -> Result<()> {
        let params: HashMap<_, _> = t.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let (batch_rng, more_rngs) = sampler_state.borrow().clone();
        let state = RunState {
            step,
            model_id: checkpoint::model_id(&params)?,
            base_model_id: job.base_model_id.clone(),
            batch_rng,
            more_rngs,
            elapsed_s: elapsed0 + stats.wall_s,
            fit: fc.clone(),
            stream_weights: weights.clone(),
            losses: stats.losses.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|source| Error::Json { path: job.out.join(STATE_TENSORS_FILE), source })?;
        checkpoint::commit_resume(&job.out, &json, &params, &opt.state_tensors())?;
        model_id = Some(t.save(&job.out)?);
        write_log(&job.out.join(LOG_FILE), &stats.losses)?;
        Ok(())
    };
    let from = FitFrom {
        resume,
        checkpoint_every: job.checkpoint_every.max(1),
        on_checkpoint: Some(&mut save),
        stop_after: job.stop_after,
    };
    let mut next = |_s: usize| {
        let b = sampler.next_batch();
        *sampler_state.borrow_mut() = sampler.state();
        b
    };
    let loss = |x: &Tensor, y: &Tensor| t.loss(x, y);
    let stats = fit_from(t.vars(), fc, t.device(), from, &mut next, &loss, progress)?;
    let final_step = stats.losses.last().map_or(first, |&(s, _)| s);
    let elapsed_s = elapsed0 + stats.wall_s;
    Ok(RunReport { stats, final_step, model_id, elapsed_s })
}

/// Reads the state of an interrupted run in `job.out` into `t` and checks that it
/// belongs to this base, these settings and the weights beside it.
fn load_state(t: &dyn Trainee, job: &RunJob) -> Result<(RunState, FitResume)> {
    let dir = &job.out;
    let rec = checkpoint::read_resume(dir, t.device())?;
    let state: RunState = serde_json::from_slice(&rec.state_json)
        .map_err(|source| Error::Json { path: dir.join(STATE_TENSORS_FILE), source })?;
    if state.base_model_id != job.base_model_id {
        return Err(Error::ckpt(
            dir,
            format!(
                "the interrupted run was over base {}, not {}",
                state.base_model_id.as_deref().unwrap_or("(none)"),
                job.base_model_id.as_deref().unwrap_or("(none)")
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
    set_vars(&t.vars(), rec.params, dir)?;
    // a kill between the record and the checkpoint left the latter a checkpoint
    // behind (or unwritten after the last step): rewrite it from the record
    t.save(dir)?;
    let losses = state.losses.iter().copied().filter(|&(s, _)| s <= state.step).collect();
    let resume = FitResume { step: state.step, moments: rec.moments, losses };
    Ok((state, resume))
}

fn write_log(path: &Path, losses: &[(usize, f64)]) -> Result<()> {
    let csv: String =
        std::iter::once("step,loss\n".to_string()).chain(losses.iter().map(|(s, l)| format!("{s},{l:.6}\n"))).collect();
    crate::fsio::write_atomic(path, csv.as_bytes())
}

/// The `step,loss` rows of a run's log (unparseable lines skipped).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(token: u16, len: usize) -> TokenStream {
        TokenStream { tokens: vec![token; len], n_docs: 1, n_bytes: len as u64 }
    }

    /// Share of 4000 batches drawn from stream `b` (whose windows hold only token 2).
    fn share_of_b(s: &mut Sampler) -> f64 {
        let n = 4000;
        let hits = (0..n).filter(|_| s.next_batch().unwrap().0[0] == 2).count();
        hits as f64 / n as f64
    }

    #[test]
    fn streams_are_drawn_by_tokens_or_by_weight() {
        let (a, b) = (stream(1, 3000), stream(2, 1000));
        let fc = FitConfig { batch: 2, seq: 8, seed: 3, ..FitConfig::default() };
        let by_tokens = share_of_b(&mut Sampler::new(vec![&a, &b], &fc).unwrap());
        assert!((by_tokens - 0.25).abs() < 0.03, "by tokens: {by_tokens}");
        let mut weighted = Sampler::new(vec![&a, &b], &fc).unwrap().with_weights(&[1.0, 3.0]).unwrap();
        let by_weight = share_of_b(&mut weighted);
        assert!((by_weight - 0.75).abs() < 0.03, "by weight: {by_weight}");
        assert_eq!(weighted.weights(), vec![1.0, 3.0]);
        assert!(Sampler::new(vec![&a, &b], &fc).unwrap().weights().is_empty());
    }

    #[test]
    fn bad_weights_are_refused() {
        let (a, b) = (stream(1, 100), stream(2, 100));
        let fc = FitConfig { batch: 2, seq: 8, ..FitConfig::default() };
        for w in [&[1.0][..], &[1.0, 0.0], &[1.0, -2.0], &[1.0, f64::NAN], &[1.0, 2.0, 3.0]] {
            let err = Sampler::new(vec![&a, &b], &fc).unwrap().with_weights(w).err();
            assert!(matches!(err, Some(Error::Config(_))), "{w:?}: {err:?}");
        }
    }
}
