//! The training loop of `edgelm-train base`: seeded init, random-window batches,
//! AdamW with warm-up + cosine, gradient accumulation and clipping, periodic
//! evaluation, atomic checkpoints with exact `--resume`, a progress bar, a CSV log
//! (`train_log.csv`) and a loss-curve PNG (`loss.png`).

use crate::checkpoint::{self, TrainState};
use crate::config::{ModelConfig, TrainConfig};
use crate::corpus::{Batcher, TokenStream};
use crate::model::Llama;
use crate::optim::{AdamW, AdamWParams, GradAccumulator};
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const LOG_FILE: &str = "train_log.csv";
pub const PLOT_FILE: &str = "loss.png";
const LOG_HEADER: &str = "step,loss,valid_loss,lr,grad_norm,tokens_seen,tokens_per_s,elapsed_s";

/// Everything a training run needs besides the token streams.
pub struct TrainJob<'a> {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub out: PathBuf,
    pub tokenizer: &'a EdgeTokenizer,
    /// Domains written into config.json.
    pub domains: Vec<String>,
    pub train_stream: &'a TokenStream,
    pub valid_stream: Option<&'a TokenStream>,
    pub device: Device,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Show an indicatif progress bar.
    pub progress: bool,
    /// Stop (as if killed) after this many steps of this invocation, right after any
    /// checkpoint of that step. For tests.
    pub stop_after: Option<usize>,
}

/// One logged step.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub step: usize,
    pub loss: f64,
    pub valid_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_seen: u64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

impl LogRow {
    fn csv(&self) -> String {
        format!(
            "{},{},{},{:.6e},{:.4},{},{:.1},{:.1}",
            self.step,
            self.loss,
            self.valid_loss.map(|v| v.to_string()).unwrap_or_default(),
            self.lr,
            self.grad_norm,
            self.tokens_seen,
            self.tokens_per_s,
            self.elapsed_s
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 8 {
            return None;
        }
        Some(LogRow {
            step: f[0].parse().ok()?,
            loss: f[1].parse().ok()?,
            valid_loss: f[2].parse().ok(),
            lr: f[3].parse().ok()?,
            grad_norm: f[4].parse().ok()?,
            tokens_seen: f[5].parse().ok()?,
            tokens_per_s: f[6].parse().ok()?,
            elapsed_s: f[7].parse().ok()?,
        })
    }
}

/// Reads `train_log.csv` rows (unparseable lines skipped).
pub fn read_log(path: &Path) -> Vec<LogRow> {
    std::fs::read_to_string(path).map(|s| s.lines().skip(1).filter_map(LogRow::parse).collect()).unwrap_or_default()
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Rows logged by this invocation.
    pub rows: Vec<LogRow>,
    pub final_step: usize,
    pub model_id: Option<String>,
}

/// Mean loss over `n` fixed windows of a stream (seeded, so comparable across steps).
pub fn window_loss(model: &Llama, stream: &TokenStream, n: usize, seq: usize, batch: usize) -> Result<f64> {
    let mut b = Batcher::new(0x0005_EED0_FEA1, batch.max(1), seq);
    let mut sum = 0.0;
    let mut count = 0usize;
    while count < n {
        let (x, y) = b.next_batch(stream)?;
        let rows = batch.min(n - count);
        let x = Tensor::from_vec(x, (batch, seq), model.device())?.narrow(0, 0, rows)?;
        let y = Tensor::from_vec(y, (batch, seq), model.device())?.narrow(0, 0, rows)?;
        let l = model.loss(&x, &y)?.to_scalar::<f32>()? as f64;
        sum += l * rows as f64;
        count += rows;
    }
    Ok(sum / n.max(1) as f64)
}

/// Runs (or resumes) training; writes checkpoints, the CSV log and the plot in `out`.
pub fn run(job: &TrainJob) -> Result<TrainReport> {
    let tc = &job.train;
    let seq = job.model.max_seq;
    job.model.validate()?;
    if tc.batch == 0 || tc.accum == 0 || tc.steps == 0 {
        return Err(Error::Config("--batch, --accum and --steps must be positive".into()));
    }
    if job.tokenizer.vocab_size() > job.model.vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer has {} tokens but the model's vocabulary is {}",
            job.tokenizer.vocab_size(),
            job.model.vocab_size
        )));
    }
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io("cannot create directory", &job.out, e))?;
    let hp = AdamWParams { beta1: tc.beta1, beta2: tc.beta2, eps: tc.eps, weight_decay: tc.weight_decay };

    let (model, mut opt, mut batcher, mut step, mut tokens_seen, elapsed0, resumed_id) = if job.resume {
        let (state, rec) = checkpoint::load_state(&job.out, &job.device)?;
        if state.model != job.model {
            return Err(Error::Config(format!(
                "--resume: the checkpoint in {} has a different model config ({:?}); drop the architecture flags or use another --out",
                job.out.display(),
                state.model
            )));
        }
        let model = Llama::from_tensors(&state.model, rec.params, &job.device)
            .map_err(|e| Error::ckpt(&job.out, format!("resume record: {e}")))?;
        let mut opt = AdamW::new(model.vars(), hp)?;
        opt.load_state(rec.moments, state.step)?;
        // a kill between the record and the model files left those a checkpoint
        // behind (or unwritten, when it came after the last step): rewrite them
        // from the record, so that they always match it once a resume has begun
        let id = checkpoint::save_model(&job.out, &model, job.tokenizer, &job.domains, DType::F32)?;
        let mut b = Batcher::new(tc.seed, tc.batch, seq);
        b.rng = state.batch_rng.clone();
        (model, opt, b, state.step, state.tokens_seen, state.elapsed_s, Some(id))
    } else {
        let model = Llama::new(&job.model, tc.seed, &job.device)?;
        let opt = AdamW::new(model.vars(), hp)?;
        (model, opt, Batcher::new(tc.seed, tc.batch, seq), 0usize, 0u64, 0.0, None)
    };

    // The CSV keeps the rows up to the resumed step (a killed run may have logged more).
    let log_path = job.out.join(LOG_FILE);
    let mut history: Vec<LogRow> =
        if job.resume { read_log(&log_path).into_iter().filter(|r| r.step <= step).collect() } else { Vec::new() };
    let mut text = String::from(LOG_HEADER);
    text.push('\n');
    for r in &history {
        text.push_str(&r.csv());
        text.push('\n');
    }
    crate::fsio::write_atomic(&log_path, text.as_bytes())?;
    let mut log =
        std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| Error::io("cannot open", &log_path, e))?;

    let pb = if job.progress {
        let pb = ProgressBar::new(tc.steps as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} ETA {eta_precise}]")
                // A constant template: the fallback only guards a future typo.
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(step as u64);
        pb.reset_eta();
        pb
    } else {
        ProgressBar::hidden()
    };

    let start = Instant::now();
    let tokens_per_step = (tc.batch * tc.accum * seq) as u64;
    let mut rows = Vec::new();
    let mut model_id = resumed_id;
    let mut done_here = 0usize;
    while step < tc.steps {
        let lr = crate::schedule::lr_at(step, tc.steps, tc.warmup, tc.lr, tc.min_lr);
        let (loss, grad_norm) = train_step(&model, &mut opt, &mut batcher, job.train_stream, tc, lr)?;
        if !loss.is_finite() {
            return Err(Error::Config(format!("loss became {loss} at step {step}; lower --lr or raise --warmup")));
        }
        step += 1;
        done_here += 1;
        tokens_seen += tokens_per_step;
        let el = start.elapsed().as_secs_f64();
        let valid_loss = match job.valid_stream {
            Some(v) if tc.eval_every > 0 && (step % tc.eval_every == 0 || step == tc.steps) => {
                Some(window_loss(&model, v, tc.eval_windows, seq, tc.batch)?)
            }
            _ => None,
        };
        let row = LogRow {
            step,
            loss,
            valid_loss,
            lr,
            grad_norm,
            tokens_seen,
            tokens_per_s: (done_here as u64 * tokens_per_step) as f64 / el.max(1e-9),
            elapsed_s: elapsed0 + el,
        };
        writeln!(log, "{}", row.csv()).map_err(|e| Error::io("cannot append to", &log_path, e))?;
        pb.set_position(step as u64);
        pb.set_message(format!(
            "loss {:.4}{}  {:.0} tok/s",
            loss,
            valid_loss.map(|v| format!(" valid {v:.4}")).unwrap_or_default(),
            row.tokens_per_s
        ));
        history.push(row.clone());
        rows.push(row);

        if step % tc.checkpoint_every.max(1) == 0 || step == tc.steps {
            // the resume record first (it commits the checkpoint), then the model
            // files the other tools read
            let params = model.tensors();
            let state = TrainState {
                step,
                model_id: checkpoint::model_id(&params)?,
                batch_rng: batcher.rng.clone(),
                tokens_seen,
                elapsed_s: elapsed0 + start.elapsed().as_secs_f64(),
                train: tc.clone(),
                model: job.model.clone(),
            };
            checkpoint::save_state(&job.out, &state, &params, &opt.state_tensors())?;
            let id = checkpoint::save_model(&job.out, &model, job.tokenizer, &job.domains, DType::F32)?;
            model_id = Some(id);
            if let Err(e) = crate::plot::loss_curve(&job.out.join(PLOT_FILE), &history) {
                pb.println(format!("warning: {e}"));
            }
        }
        if job.stop_after == Some(done_here) {
            break;
        }
    }
    pb.finish();
    Ok(TrainReport { rows, final_step: step, model_id })
}

/// Runs candle's element-wise CPU ops on the calling thread unless the user set
/// `CANDLE_NUM_THREADS`. Call once at start-up, before any tensor maths.
///
/// candle 0.11 splits element-wise ops over a thread pool of its own, beside
/// rayon's (which runs its matmuls and our fused ops): with 2 threads that is
/// the main thread, one candle worker and two rayon workers on 2 cores. Its
/// threads busy-wait, the main thread until the worker's half is done and the
/// worker for a while after each op, while rayon's workers need the cores for
/// the next matmul, which gemm splits statically (every half must finish).
/// At 2 threads on one core, 23–29 % of a step's CPU samples were this spinning
/// (docs/TRAINING.md, issue 13), and the backward pass, where candle's gradient
/// store adds every gradient, gained nothing from the second core.
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// One optimiser step: `accum` micro-batches of forward + backward, gradient
/// accumulation, global-norm clipping, AdamW at learning rate `lr`.
/// Returns the mean loss and the gradient norm before clipping.
pub fn train_step(
    model: &Llama,
    opt: &mut AdamW,
    batcher: &mut Batcher,
    stream: &TokenStream,
    tc: &TrainConfig,
    lr: f64,
) -> Result<(f64, f64)> {
    train_step_timed(model, opt, batcher, stream, tc, lr, &mut StepTimes::default())
}

/// Seconds spent in each phase of training steps, summed over steps.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StepTimes {
    /// Batching, the forward pass and the loss.
    pub forward: f64,
    /// Backpropagation and summing micro-batch gradients.
    pub backward: f64,
    /// The gradient norm, clipping and the AdamW update.
    pub optimizer: f64,
}

impl StepTimes {
    pub fn total(&self) -> f64 {
        self.forward + self.backward + self.optimizer
    }
}

/// [`train_step`], adding the time of each phase to `times` (candle's CPU
/// backend is eager, so each phase has finished when its call returns).
pub fn train_step_timed(
    model: &Llama,
    opt: &mut AdamW,
    batcher: &mut Batcher,
    stream: &TokenStream,
    tc: &TrainConfig,
    lr: f64,
    times: &mut StepTimes,
) -> Result<(f64, f64)> {
    let (b, seq) = (batcher.batch, batcher.seq_len);
    let vars = opt.params.clone();
    let mut acc = GradAccumulator::new(vars.len());
    let mut loss_sum = 0.0;
    for _ in 0..tc.accum {
        let t0 = Instant::now();
        let (x, y) = batcher.next_batch(stream)?;
        let x = Tensor::from_vec(x, (b, seq), model.device())?;
        let y = Tensor::from_vec(y, (b, seq), model.device())?;
        let loss = model.loss(&x, &y)?;
        loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        acc.add(&vars, &grads, 1.0 / tc.accum as f64)?;
        drop(grads);
        times.forward += (t1 - t0).as_secs_f64();
        times.backward += t1.elapsed().as_secs_f64();
    }
    let t2 = Instant::now();
    let (grads, grad_norm) = acc.finish(&vars, tc.grad_clip)?;
    opt.step(&grads, lr)?;
    times.optimizer += t2.elapsed().as_secs_f64();
    Ok((loss_sum / tc.accum as f64, grad_norm))
}

/// What `edgelm-train bench` measures.
#[derive(Debug, Clone, Copy)]
pub struct BenchReport {
    pub tokens_per_s: f64,
    /// Timed steps.
    pub steps: usize,
    /// Summed over the timed steps.
    pub times: StepTimes,
}

/// Training throughput on random tokens: `steps` timed optimiser steps after
/// `warmup` untimed ones.
pub fn bench(
    model_cfg: &ModelConfig,
    tc: &TrainConfig,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<BenchReport> {
    let mut rng = crate::rng::Rng::new(tc.seed, 0xBE4C);
    let n = 1 << 20;
    let stream = TokenStream {
        tokens: (0..n).map(|_| rng.below(model_cfg.vocab_size as u64) as u16).collect(),
        n_docs: 1,
        n_bytes: n as u64,
    };
    let model = Llama::new(model_cfg, tc.seed, device)?;
    let hp = AdamWParams { beta1: tc.beta1, beta2: tc.beta2, eps: tc.eps, weight_decay: tc.weight_decay };
    let mut opt = AdamW::new(model.vars(), hp)?;
    let mut batcher = Batcher::new(tc.seed, tc.batch, model_cfg.max_seq);
    for _ in 0..warmup {
        train_step(&model, &mut opt, &mut batcher, &stream, tc, tc.lr)?;
    }
    let mut times = StepTimes::default();
    let t0 = Instant::now();
    for _ in 0..steps {
        train_step_timed(&model, &mut opt, &mut batcher, &stream, tc, tc.lr, &mut times)?;
    }
    let tokens = (steps * tc.batch * tc.accum * model_cfg.max_seq) as f64;
    Ok(BenchReport { tokens_per_s: tokens / t0.elapsed().as_secs_f64(), steps, times })
}
