//! What expansion is compared with (issue #5), and the small training loop they
//! all share so that every method sees the same batches, schedule and budget:
//!
//! * `finetune`: all weights of the base, trained on the domain;
//! * `lora --rank r`: the base frozen, low-rank adapters `W + (α/r)·B·A` on the
//!   attention (q, k, v, o) and MLP (gate, up, down) projections of every block;
//! * `separate`: a model trained from scratch on the domain alone;
//! * `joint`: one model trained from scratch on both corpora with domain tags.
//!
//! [`fit`] trains any list of vars against any loss with AdamW, warm-up + cosine,
//! gradient clipping; [`FnScorer`] evaluates any model with the bits-per-byte
//! protocol of [`crate::eval`].

use crate::config::ModelConfig;
use crate::eval::Scorer;
use crate::expand::Frozen;
use crate::model::Llama;
use crate::model::{block_forward, BlockW};
use crate::ops;
use crate::optim::{AdamW, AdamWParams, GradAccumulator};
use crate::resumable::Trainee;
use crate::rng::Rng;
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Optimisation settings shared by every method of the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    pub steps: usize,
    pub batch: usize,
    pub seq: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            steps: 100,
            batch: 16,
            seq: 128,
            lr: 2e-3,
            min_lr: 2e-4,
            warmup: 20,
            weight_decay: 0.1,
            grad_clip: 1.0,
            seed: 1234,
        }
    }
}

/// What a [`fit`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FitStats {
    /// `(step, training loss)` per step.
    pub losses: Vec<(usize, f64)>,
    pub tokens: u64,
    pub wall_s: f64,
}

/// Trains `vars` for `fc.steps` steps. `batch(step)` returns `(inputs, targets)`
/// of `fc.batch * fc.seq` ids; `loss(x, y)` the mean cross-entropy.
pub fn fit(
    vars: Vec<(String, Var)>,
    fc: &FitConfig,
    device: &Device,
    batch: &mut dyn FnMut(usize) -> Result<(Vec<u32>, Vec<u32>)>,
    loss: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<FitStats> {
    fit_from(vars, fc, device, FitFrom::start(), batch, loss, progress)
}

/// The state a [`fit_from`] resumes from. The vars must already hold that
/// step's values, and the batch source its sampler state.
pub struct FitResume {
    /// Completed optimiser steps.
    pub step: usize,
    /// The optimiser moments ([`AdamW::state_tensors`]).
    pub moments: HashMap<String, Tensor>,
    /// `(step, loss)` logged so far (rows past `step` are dropped).
    pub losses: Vec<(usize, f64)>,
}

/// Persists a checkpoint: the completed steps, the optimiser and the stats so far.
pub type OnCheckpoint<'a> = dyn FnMut(usize, &AdamW, &FitStats) -> Result<()> + 'a;

/// Where a [`fit_from`] starts and when it checkpoints (a resumable run).
pub struct FitFrom<'a> {
    pub resume: Option<FitResume>,
    /// Call `on_checkpoint` after every N-th step and after the last (0 = never).
    pub checkpoint_every: usize,
    pub on_checkpoint: Option<&'a mut OnCheckpoint<'a>>,
    /// Stop (as if killed) after this many steps of this call. For tests.
    pub stop_after: Option<usize>,
}

impl FitFrom<'_> {
    /// A fresh run that never checkpoints.
    pub fn start() -> Self {
        FitFrom { resume: None, checkpoint_every: 0, on_checkpoint: None, stop_after: None }
    }
}

/// [`fit`] from a resumed state, with periodic checkpoints. Continuing a run
/// stopped at a checkpoint gives exactly the weights of an uninterrupted run
/// (same batches, schedule and moments), provided the caller restored the vars
/// and the batch sampler.
pub fn fit_from(
    vars: Vec<(String, Var)>,
    fc: &FitConfig,
    device: &Device,
    mut from: FitFrom,
    batch: &mut dyn FnMut(usize) -> Result<(Vec<u32>, Vec<u32>)>,
    loss: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<FitStats> {
    let hp = AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: fc.weight_decay };
    let mut opt = AdamW::new(vars, hp)?;
    let vars = opt.params.clone();
    let mut stats = FitStats::default();
    let mut first = 0;
    if let Some(r) = from.resume.take() {
        opt.load_state(r.moments, r.step)?;
        first = r.step;
        stats.losses = r.losses.into_iter().filter(|&(s, _)| s <= r.step).collect();
        stats.tokens = (r.step * fc.batch * fc.seq) as u64;
    }
    let start = Instant::now();
    for step in first..fc.steps {
        let lr = crate::schedule::lr_at(step, fc.steps, fc.warmup, fc.lr, fc.min_lr);
        let (x, y) = batch(step)?;
        let x = Tensor::from_vec(x, (fc.batch, fc.seq), device)?;
        let y = Tensor::from_vec(y, (fc.batch, fc.seq), device)?;
        let l = loss(&x, &y)?;
        let lv = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !lv.is_finite() {
            return Err(Error::Config(format!("loss became {lv} at step {step}; lower the learning rate")));
        }
        let grads = l.backward()?;
        let mut acc = GradAccumulator::new(vars.len());
        acc.add(&vars, &grads, 1.0)?;
        let (g, _) = acc.finish(&vars, fc.grad_clip)?;
        opt.step(&g, lr)?;
        stats.losses.push((step + 1, lv));
        stats.tokens += (fc.batch * fc.seq) as u64;
        stats.wall_s = start.elapsed().as_secs_f64();
        progress(step + 1, lv);
        let done = step + 1;
        if let Some(save) = from.on_checkpoint.as_mut() {
            if from.checkpoint_every > 0 && (done % from.checkpoint_every == 0 || done == fc.steps) {
                save(done, &opt, &stats)?;
            }
        }
        if from.stop_after == Some(done - first) {
            break;
        }
    }
    stats.wall_s = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// Any model as a [`Scorer`]: `f(x, y)` returns per-token nats `[B*T]`.
pub struct FnScorer<'a> {
    pub max_seq: usize,
    pub batch: usize,
    pub device: Device,
    pub f: &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
}

impl Scorer for FnScorer<'_> {
    fn max_seq(&self) -> usize {
        self.max_seq
    }
    fn score(&self, ws: &[&[u32]]) -> Result<Vec<Vec<f64>>> {
        crate::eval::score_windows(ws, self.batch, &self.device, &|x, y| (self.f)(x, y))
    }
}

/// Which projections of a block LoRA adapts (all seven).
pub const LORA_TARGETS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// One adapter: `ΔW = scale · B · A`, `A: [r, in]` ~ N(0, 1/in), `B: [out, r]` = 0.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub a: Var,
    pub b: Var,
}

/// A frozen base with LoRA adapters on every projection of every block.
pub struct Lora {
    pub base: Llama,
    pub frozen: Frozen,
    pub rank: usize,
    pub scale: f64,
    /// `adapters[layer][target]`, targets in [`LORA_TARGETS`] order.
    pub adapters: Vec<Vec<Adapter>>,
}

impl Lora {
    /// Adapters of rank `rank` with `alpha = 2·rank` (scale 2).
    pub fn new(base: Llama, rank: usize, seed: u64) -> Result<Self> {
        if rank == 0 {
            return Err(Error::Config("--rank must be positive".into()));
        }
        let frozen = Frozen::of(&base)?;
        let dev = base.device().clone();
        let mut rng = Rng::new(seed, 0x104A);
        let mut adapters = Vec::new();
        for fb in &frozen.blocks {
            let mut row = Vec::new();
            for w in [&fb.wq, &fb.wk, &fb.wv, &fb.wo, &fb.w_gate, &fb.w_up, &fb.w_down] {
                let (out, inp) = w.dims2()?;
                let std = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..rank * inp).map(|_| (rng.normal() * std) as f32).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (rank, inp), &dev)?)?;
                let b = Var::from_tensor(&Tensor::zeros((out, rank), DType::F32, &dev)?)?;
                row.push(Adapter { a, b });
            }
            adapters.push(row);
        }
        Ok(Lora { base, frozen, rank, scale: 2.0, adapters })
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (l, row) in self.adapters.iter().enumerate() {
            for (t, ad) in LORA_TARGETS.iter().zip(row) {
                v.push((format!("lora.layers.{l}.{t}.A"), ad.a.clone()));
                v.push((format!("lora.layers.{l}.{t}.B"), ad.b.clone()));
            }
        }
        v
    }

    pub fn n_trainable(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn merged_block(&self, l: usize) -> Result<BlockW> {
        let fb = &self.frozen.blocks[l];
        let ad = &self.adapters[l];
        let m = |w: &Tensor, a: &Adapter| -> Result<Tensor> {
            Ok((w + (a.b.as_tensor().matmul(a.a.as_tensor())? * self.scale)?)?)
        };
        Ok(BlockW {
            attn_norm: fb.attn_norm.clone(),
            wq: m(&fb.wq, &ad[0])?,
            wk: m(&fb.wk, &ad[1])?,
            wv: m(&fb.wv, &ad[2])?,
            wo: m(&fb.wo, &ad[3])?,
            mlp_norm: fb.mlp_norm.clone(),
            w_gate: m(&fb.w_gate, &ad[4])?,
            w_up: m(&fb.w_up, &ad[5])?,
            w_down: m(&fb.w_down, &ad[6])?,
        })
    }

    /// Final hidden states after the last norm, `[B*T, dim]`.
    fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let f = &self.frozen;
        let mut x = f.embed.index_select(&ids.flatten_all()?, 0)?;
        for l in 0..f.blocks.len() {
            x = block_forward(&f.cfg, &f.rope, &self.merged_block(l)?, &x, b, t)?;
        }
        Ok(ops::rms_norm(&x, &f.norm, f.cfg.norm_eps)?)
    }

    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let f = &self.frozen;
        Ok(ops::head_cross_entropy(&self.hidden(ids)?, f.head.as_ref().unwrap_or(&f.embed), targets)?)
    }

    /// The adapted model as a plain [`Llama`] (adapters merged into the weights).
    pub fn merge(&self) -> Result<Llama> {
        let mut t: HashMap<String, Tensor> = self.base.tensors();
        for l in 0..self.adapters.len() {
            let mb = self.merged_block(l)?;
            let ws = [&mb.wq, &mb.wk, &mb.wv, &mb.wo, &mb.w_gate, &mb.w_up, &mb.w_down];
            for (name, w) in LORA_TARGETS.iter().zip(ws) {
                t.insert(crate::model::layer_name(l, &format!("{name}.weight")), w.detach());
            }
        }
        Llama::from_tensors(&self.base.cfg, t, self.base.device())
    }
}

/// A copy of `base` whose every weight is a fresh trainable var (full fine-tuning
/// must not write through to the base's own vars).
pub fn finetune_copy(base: &Llama) -> Result<Llama> {
    let t = base.tensors().into_iter().map(|(k, v)| Ok((k, v.copy()?))).collect::<Result<HashMap<_, _>>>()?;
    Llama::from_tensors(&base.cfg, t, base.device())
}

/// A baseline's model, as trained by `edgelm-train baseline`.
pub enum BaselineModel {
    /// Every weight trainable (`finetune`, `joint`).
    Full(Llama),
    /// A frozen base with adapters (`lora`).
    Lora(Box<Lora>),
}

/// A baseline as a resumable run's [`Trainee`]: its checkpoint is a plain model
/// directory, LoRA's with the adapters merged into the weights.
pub struct BaselineTrainee<'a> {
    pub model: BaselineModel,
    pub tokenizer: &'a EdgeTokenizer,
    /// Recorded in config.json.
    pub domains: &'a [String],
}

impl Trainee for BaselineTrainee<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        match &self.model {
            BaselineModel::Full(m) => m.vars(),
            BaselineModel::Lora(l) => l.vars(),
        }
    }
    fn device(&self) -> &Device {
        match &self.model {
            BaselineModel::Full(m) => m.device(),
            BaselineModel::Lora(l) => l.base.device(),
        }
    }
    fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        match &self.model {
            BaselineModel::Full(m) => m.loss(ids, targets),
            BaselineModel::Lora(l) => l.loss(ids, targets),
        }
    }
    fn save(&self, dir: &Path) -> Result<String> {
        let merged;
        let m = match &self.model {
            BaselineModel::Full(m) => m,
            BaselineModel::Lora(l) => {
                merged = l.merge()?;
                &merged
            }
        };
        crate::checkpoint::save_model(dir, m, self.tokenizer, self.domains, DType::F32)
    }
}

/// Non-embedding parameters of a config (blocks + final norm).
pub fn non_embedding_params(cfg: &ModelConfig) -> usize {
    let emb = cfg.vocab_size * cfg.dim;
    cfg.n_params() - emb - if cfg.tie_embeddings { 0 } else { emb }
}
