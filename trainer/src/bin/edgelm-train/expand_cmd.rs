//! `edgelm-train expand` and `edgelm-train experiment` (issue #5).

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use edgelm_trainer::baselines::{FitConfig, FnScorer};
use edgelm_trainer::checkpoint;
use edgelm_trainer::corpus::{Corpus, Limits, TokenStream};
use edgelm_trainer::eval::evaluate;
use edgelm_trainer::expand::train::ExpandJob;
use edgelm_trainer::expand::{default_positions, Expanded, TokenizerMode};
use edgelm_trainer::experiment::{self, ExperimentConfig, ALL_METHODS};
use edgelm_trainer::tokenizer::EdgeTokenizer;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExpandArgs {
    /// Frozen base checkpoint directory.
    #[arg(long)]
    pub base: PathBuf,
    /// The domain's training corpus.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Held-out corpus: BPB reported at the end.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Domain name (recipe, ...).
    #[arg(long)]
    pub domain: String,
    /// per-domain: the domain's own tokenizer, embedding, norm and head; shared: the
    /// base's tokenizer and the domain's tag token (must be in the base vocabulary).
    #[arg(long, default_value = "per-domain")]
    pub tokenizer: TokenizerMode,
    /// tokenizer.json of the domain (per-domain mode), from `edgelm-train tokenizer`.
    #[arg(long)]
    pub domain_tokenizer: Option<PathBuf>,
    /// Number of new blocks, placed after every ceil(L/k) base blocks.
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Explicit positions (block j runs after the first positions[j] base blocks).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub positions: Vec<usize>,
    /// Output domain checkpoint directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Training window (default: the base's context).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 2e-4)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Use only the first N bytes of documents of the corpus (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_bytes: usize,
    /// Write the domain checkpoint (with optimiser state) every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from the checkpoint in --out (exactly: weights,
    /// optimiser, batch sampler); give the same settings as the first run. A larger
    /// --steps extends a run, even a finished one: the cosine is stretched from the
    /// resumed step to the new end.
    #[arg(long)]
    pub resume: bool,
}

pub fn cmd_expand(a: ExpandArgs) -> Result<()> {
    let dev = Device::Cpu;
    let base = checkpoint::load(&a.base, &dev).with_context(|| format!("loading base {}", a.base.display()))?;
    let base_cfg = base.config.clone();
    let positions =
        if a.positions.is_empty() { default_positions(base.model.cfg.n_layers, a.blocks) } else { a.positions.clone() };
    let (tok, tag) = match a.tokenizer {
        TokenizerMode::PerDomain => {
            let p = a.domain_tokenizer.as_ref().context("--tokenizer per-domain needs --domain-tokenizer FILE")?;
            (EdgeTokenizer::load(p)?, None)
        }
        TokenizerMode::Shared => {
            let t = base.tokenizer.tag_id(&a.domain);
            if t.is_none() {
                bail!(
                    "the base tokenizer has no <|{}|> tag token; train the base tokenizer with the domain's tag, or use --tokenizer per-domain",
                    a.domain
                );
            }
            (base.tokenizer.clone(), t)
        }
    };
    let id0 = checkpoint::model_id(&base.model.tensors())?;
    let e = Expanded::new(base.model, &a.domain, a.tokenizer, positions, Some(&base.tokenizer), Some(&tok), tag)?;
    let seq = a.seq_len.unwrap_or(e.cfg().max_seq).min(e.cfg().max_seq);
    let corpus = Corpus::load(&a.corpus, Limits::default())?.head(a.max_bytes);
    let cache = a.out.parent().unwrap_or(std::path::Path::new(".")).join(".token-cache");
    let stream = TokenStream::cached(&corpus, &tok, tag, &cache)?;
    eprintln!(
        "expand: {} new blocks at {:?}, {} trainable of {} parameters; corpus {} tokens",
        e.blocks.len(),
        e.positions,
        e.n_trainable(),
        e.n_total(),
        stream.tokens.len()
    );
    let fc = FitConfig {
        steps: a.steps,
        batch: a.batch,
        seq,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        seed: a.seed,
        ..FitConfig::default()
    };
    let job = ExpandJob {
        base_config: &base_cfg,
        tokenizer: &tok,
        stream: &stream,
        fit: fc,
        out: a.out.clone(),
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        stop_after: None,
    };
    let t0 = std::time::Instant::now();
    let mut prog = |s: usize, l: f64| {
        if s.is_multiple_of(10) || s == a.steps {
            eprintln!("step {s}/{}: loss {l:.4} ({:.0}s)", a.steps, t0.elapsed().as_secs_f64());
        }
    };
    let r = edgelm_trainer::expand::train::run(&e, &job, &mut prog).with_context(|| {
        if a.resume {
            format!("resuming the expansion in {}", a.out.display())
        } else {
            format!("training the expansion into {}", a.out.display())
        }
    })?;
    let id1 = checkpoint::model_id(&e.base.tensors())?;
    if id0 != id1 {
        bail!("internal error: the base changed during expansion ({id0} -> {id1})");
    }
    let id = r.model_id.unwrap_or_default();
    writeln!(std::io::stdout(), "wrote {} ({id}, base {id0}) in {:.0}s", a.out.display(), r.elapsed_s)?;
    if let Some(v) = &a.valid {
        let c = Corpus::load(v, Limits::default())?;
        let f = |x: &Tensor, y: &Tensor| e.token_losses(x, y);
        let sc = FnScorer { max_seq: e.cfg().max_seq, batch: 16, device: dev.clone(), f: &f };
        let r = evaluate(&sc, &tok, &c.text, tag)?;
        writeln!(
            std::io::stdout(),
            "{} [{}]: bpb {:.4} loss {:.4} ({} docs)",
            v.display(),
            a.domain,
            r.bpb,
            r.loss,
            r.documents
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ExperimentArgs {
    /// Directory with stories/{train,valid}.txt and recipes/{train,valid}.txt.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (report.md, charts, one directory per method; resumable).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub base_steps: Option<usize>,
    #[arg(long)]
    pub domain_steps: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long)]
    pub dim: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub ffn: Option<usize>,
    #[arg(long)]
    pub vocab: Option<usize>,
    #[arg(long)]
    pub generic_vocab: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub rank: Option<usize>,
    #[arg(long)]
    pub blocks: Option<usize>,
    /// Bytes of each train.txt used (first documents).
    #[arg(long)]
    pub train_bytes: Option<usize>,
    /// Bytes of each valid.txt evaluated (first documents).
    #[arg(long)]
    pub valid_bytes: Option<usize>,
    /// Bytes of text each tokenizer is trained on.
    #[arg(long)]
    pub tokenizer_bytes: Option<usize>,
    /// Seed of every model's initialisation and batch sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generic-tokenizer models read the same bytes of text as the custom-tokenizer
    /// models they are compared with (more steps), instead of the same tokens.
    #[arg(long)]
    pub equal_bytes: bool,
    /// Only these methods (base is always trained or loaded).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub methods: Vec<String>,
}

pub fn cmd_experiment(a: ExperimentArgs) -> Result<()> {
    let mut c = ExperimentConfig::small(a.data.clone(), a.out.clone());
    macro_rules! set {
        ($dst:expr, $src:expr) => {
            if let Some(v) = $src {
                $dst = v;
            }
        };
    }
    set!(c.base.steps, a.base_steps);
    set!(c.domain.steps, a.domain_steps);
    if let Some(b) = a.batch {
        c.base.batch = b;
        c.domain.batch = b;
    }
    if let Some(s) = a.seq_len {
        c.base.seq = s;
        c.domain.seq = s;
        c.model.max_seq = s;
    }
    if let Some(lr) = a.lr {
        c.base.lr = lr;
        c.domain.lr = lr;
        c.base.min_lr = lr / 10.0;
        c.domain.min_lr = lr / 10.0;
    }
    if let Some(sd) = a.seed {
        c.base.seed = sd;
        c.domain.seed = sd;
    }
    set!(c.model.dim, a.dim);
    set!(c.model.n_layers, a.layers);
    set!(c.model.ffn_dim, a.ffn);
    set!(c.vocab, a.vocab);
    set!(c.generic_vocab, a.generic_vocab);
    set!(c.lora_rank, a.rank);
    set!(c.blocks, a.blocks);
    set!(c.train_bytes, a.train_bytes);
    set!(c.valid_bytes, a.valid_bytes);
    set!(c.tokenizer_bytes, a.tokenizer_bytes);
    c.equal_bytes = a.equal_bytes;
    c.base.warmup = c.base.warmup.min(c.base.steps / 5).max(1);
    c.domain.warmup = c.domain.warmup.min(c.domain.steps / 5).max(1);
    if !a.methods.is_empty() {
        for m in &a.methods {
            if !ALL_METHODS.contains(&m.as_str()) {
                bail!("unknown method {m:?}; known: {ALL_METHODS:?}");
            }
        }
        c.methods = a.methods.clone();
    }
    let rs = experiment::run(&c, &|m| eprintln!("[experiment] {m}"))?;
    writeln!(std::io::stdout(), "wrote {} ({} methods)", c.out.join("report.md").display(), rs.len())?;
    Ok(())
}

/// The baselines of the experiment as standalone runs (`separate` is `edgelm-train base`
/// on the domain's corpus with its own tokenizer).
#[derive(Args)]
pub struct BaselineArgs {
    /// finetune (all base weights), lora (adapters, merged into the saved model) or
    /// joint (from scratch on several corpora with domain tags).
    #[arg(long)]
    pub method: String,
    /// Base checkpoint (finetune, lora).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Training corpus; joint: one per domain, in the order of --domain.
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Domain of each corpus (joint: tags of the --tokenizer; finetune/lora: recorded in config.json).
    #[arg(long, num_args = 1.., required = true)]
    pub domain: Vec<String>,
    /// joint: a tokenizer shared by the domains (with their tags).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// joint: how often each domain is drawn, one weight per --domain (e.g. the steps
    /// each domain had in the runs compared with; default: in proportion to the
    /// corpora's tokens).
    #[arg(long, num_args = 1..)]
    pub domain_weights: Vec<f64>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Learning rate at the end of the cosine (default: --lr / 10).
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Write the checkpoint (with optimiser state) every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from the checkpoint in --out (exactly: weights,
    /// optimiser, batch sampler); give the same settings as the first run. A larger
    /// --steps extends a run: the cosine is stretched from the resumed step to the new end.
    #[arg(long)]
    pub resume: bool,
    /// joint: architecture (defaults as `edgelm-train base`).
    #[arg(long)]
    pub dim: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub kv_heads: Option<usize>,
    #[arg(long)]
    pub ffn: Option<usize>,
    /// Use only the first N bytes of documents of each corpus (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_bytes: usize,
}

pub fn cmd_baseline(a: BaselineArgs) -> Result<()> {
    use edgelm_trainer::baselines::{finetune_copy, BaselineModel, BaselineTrainee, Lora};
    use edgelm_trainer::model::Llama;
    use edgelm_trainer::resumable::{self, RunJob, Sampler};
    let dev = Device::Cpu;
    let mut fc = FitConfig {
        steps: a.steps,
        batch: a.batch,
        seq: a.seq_len,
        lr: a.lr,
        min_lr: a.min_lr.unwrap_or(a.lr / 10.0),
        warmup: a.warmup.min(a.steps / 5).max(1),
        seed: a.seed,
        ..FitConfig::default()
    };
    let cache = a.out.parent().unwrap_or(std::path::Path::new(".")).join(".token-cache");
    let corpora: Vec<Corpus> = a
        .corpus
        .iter()
        .map(|p| Ok(Corpus::load(p, Limits::default())?.head(a.max_bytes)))
        .collect::<edgelm_trainer::Result<_>>()?;
    // The model to train, its tokenizer, the base it starts from and one token stream per corpus.
    let (model, tok, base_model_id, streams) = match a.method.as_str() {
        "finetune" | "lora" => {
            let b = a.base.as_ref().context("--method finetune/lora needs --base DIR")?;
            if corpora.len() != 1 {
                bail!("--method {} trains on one --corpus", a.method);
            }
            let ck = checkpoint::load(b, &dev).with_context(|| format!("loading base {}", b.display()))?;
            fc.seq = fc.seq.min(ck.model.cfg.max_seq);
            let stream = TokenStream::cached(&corpora[0], &ck.tokenizer, None, &cache)?;
            let m = if a.method == "finetune" {
                BaselineModel::Full(finetune_copy(&ck.model)?)
            } else {
                BaselineModel::Lora(Box::new(Lora::new(ck.model, a.rank, fc.seed)?))
            };
            (m, ck.tokenizer, ck.config.edgelm.model_id.clone(), vec![stream])
        }
        "joint" => {
            let tok = EdgeTokenizer::load(a.tokenizer.as_ref().context("--method joint needs --tokenizer FILE")?)?;
            if a.domain.len() != corpora.len() {
                bail!("--method joint needs one --domain per --corpus");
            }
            let streams = corpora
                .iter()
                .zip(&a.domain)
                .map(|(c, d)| {
                    let tag = tok.tag_id(d).with_context(|| format!("the tokenizer has no <|{d}|> tag"))?;
                    Ok(TokenStream::cached(c, &tok, Some(tag), &cache)?)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut cfg = edgelm_trainer::config::ModelConfig {
                vocab_size: tok.vocab_size(),
                max_seq: fc.seq,
                ..Default::default()
            };
            if let Some(d) = a.dim {
                cfg.dim = d;
            }
            if let Some(l) = a.layers {
                cfg.n_layers = l;
            }
            if let Some(h) = a.heads {
                cfg.n_heads = h;
            }
            if let Some(k) = a.kv_heads {
                cfg.n_kv_heads = k;
            }
            if let Some(f) = a.ffn {
                cfg.ffn_dim = f;
            }
            (BaselineModel::Full(Llama::new(&cfg, fc.seed, &dev)?), tok, None, streams)
        }
        other => bail!("unknown --method {other:?}: finetune, lora or joint (separate = `edgelm-train base`)"),
    };
    let trainee = BaselineTrainee { model, tokenizer: &tok, domains: &a.domain };
    // Joint: each step one domain, in proportion to the domains' token counts
    // unless --domain-weights says otherwise.
    let mut sampler = Sampler::new(streams.iter().collect(), &fc)?;
    if !a.domain_weights.is_empty() {
        if a.method != "joint" {
            bail!("--domain-weights is for --method joint (one corpus otherwise)");
        }
        sampler = sampler.with_weights(&a.domain_weights).context("--domain-weights: one weight per --domain")?;
    }
    let job = RunJob {
        fit: fc,
        out: a.out.clone(),
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        stop_after: None,
        base_model_id,
    };
    let t0 = std::time::Instant::now();
    let mut prog = |s: usize, l: f64| {
        if s.is_multiple_of(10) || s == a.steps {
            eprintln!("step {s}/{}: loss {l:.4} ({:.0}s)", a.steps, t0.elapsed().as_secs_f64());
        }
    };
    let r = resumable::run(&trainee, &mut sampler, &job, &mut prog).with_context(|| {
        let verb = if a.resume { "resuming" } else { "training" };
        format!("{verb} the {} baseline in {}", a.method, a.out.display())
    })?;
    let id = r.model_id.unwrap_or_default();
    writeln!(std::io::stdout(), "wrote {} ({id}) in {:.0}s", a.out.display(), r.elapsed_s)?;
    Ok(())
}
