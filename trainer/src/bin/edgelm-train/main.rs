//! `edgelm-train`: tokenizers, base-model training, evaluation in bits per byte and
//! sampling for edgelm models. Run `edgelm-train <command> --help` for details.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use edgelm_trainer::checkpoint;
use edgelm_trainer::config::{FileConfig, ModelConfig};
use edgelm_trainer::corpus::{Corpus, Limits, TokenStream};
use edgelm_trainer::eval::{evaluate, ModelScorer};
use edgelm_trainer::sample::{generate, SampleOptions};
use edgelm_trainer::tokenizer::EdgeTokenizer;
use edgelm_trainer::train::{self, TrainJob};
use std::io::Write;
use std::path::{Path, PathBuf};

mod expand_cmd;

// Training allocates and frees tensors of tens of MB every step (the logits of a
// 16×256 batch over 4096 tokens are 64 MiB). glibc's malloc hands such blocks
// back to the kernel on free and faults them in again page by page: a third of a
// step went to page faults. So the trainer brings jemalloc, told (jemalloc's
// documented compile-time `malloc_conf`) to keep freed pages for the next step
// instead of purging them (`*_decay_ms:-1`; the footprint stays at the step's
// peak), to serve big blocks from the normal arenas (`oversize_threshold:0`),
// and to back its heap with transparent huge pages (`thp:always`: fewer faults
// and TLB misses). Measured in docs/TRAINING.md.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(not(target_env = "msvc"))]
#[used]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: Option<&u8> = Some(&b"oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always\0"[0]);

#[derive(Parser)]
#[command(
    name = "edgelm-train",
    version,
    about = "Train, evaluate and sample small Llama-style edgelm models (candle, CPU or CUDA)",
    long_about = "Train, evaluate and sample small Llama-style edgelm models.\n\n\
Corpora are UTF-8 files whose documents are separated by lines that are exactly `<|endoftext|>`.\n\
Typical flow:\n  \
edgelm-train tokenizer --corpus stories/train.txt --vocab-size 4096 --output tok.json\n  \
edgelm-train base --corpus stories/train.txt --valid stories/valid.txt --tokenizer tok.json --out runs/story\n  \
edgelm-train eval --checkpoint runs/story --valid stories/valid.txt\n  \
edgelm-train sample --checkpoint runs/story --prompt 'Once upon a time'\n\n\
Threads: set RAYON_NUM_THREADS (or --threads) to limit the cores used."
)]
struct Cli {
    /// Worker threads for tensor maths and tokenization (default: all cores, or
    /// RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add a domain to a frozen base: new blocks (+ the domain's tokenizer, embedding,
    /// norm, head); writes a domain checkpoint bound to the base's model_id.
    Expand(expand_cmd::ExpandArgs),
    /// Base + expansion + baselines (finetune, lora, separate, joint) + tokenizer
    /// comparison on stories and recipes; writes report.md and PNG charts.
    Experiment(expand_cmd::ExperimentArgs),
    /// A baseline of the experiment as a standalone run: finetune, lora or joint.
    Baseline(expand_cmd::BaselineArgs),
    /// Train a byte-level BPE tokenizer (tokenizer.json) and print bytes/token on held-out text.
    Tokenizer(TokArgs),
    /// Train a base model from scratch (or --resume) and write a checkpoint directory.
    Base(BaseArgs),
    /// Loss, perplexity and bits per byte of a checkpoint on held-out files.
    Eval(EvalArgs),
    /// Generate text from a checkpoint.
    Sample(SampleArgs),
    /// Training throughput (tokens/s) of a config on random tokens; prints JSON.
    Bench(BenchArgs),
    /// Copy a checkpoint's model (optionally as f16/bf16), config, tokenizer, log and
    /// plot into a new directory, without the optimizer state (for committing).
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Stored weight type: f32, f16 or bf16.
    #[arg(long, default_value = "f16")]
    dtype: String,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value_t = 256)]
    dim: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 704)]
    ffn: usize,
    #[arg(long, default_value_t = 4096)]
    vocab: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup_steps: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// One JSON line instead of the table (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TokArgs {
    /// Training corpus file(s); several files (domains) give a shared tokenizer.
    #[arg(long, num_args = 1.., required = true)]
    corpus: Vec<PathBuf>,
    /// Vocabulary size including `<|endoftext|>`, the domain tags and the 256 bytes.
    #[arg(long)]
    vocab_size: usize,
    /// Where to write tokenizer.json.
    #[arg(long)]
    output: PathBuf,
    /// Domain tag names (`story` -> `<|story|>`), one per corpus; default: from the
    /// corpus directory name (`stories/` -> story, `recipes/` -> recipe).
    #[arg(long, num_args = 1..)]
    domain: Vec<String>,
    /// Held-out file(s) for the bytes/token report; default: `valid.txt` next to each corpus.
    #[arg(long, num_args = 1..)]
    valid: Vec<PathBuf>,
    #[arg(long, default_value_t = 1 << 20)]
    max_doc_bytes: usize,
}

#[derive(Args)]
struct BaseArgs {
    /// Training corpus.
    #[arg(long)]
    corpus: PathBuf,
    /// Held-out corpus for the periodic valid loss.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// tokenizer.json from `edgelm-train tokenizer`.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output checkpoint directory (also holds train_log.csv and loss.png).
    #[arg(long)]
    out: PathBuf,
    /// TOML file with [model] and [train] tables; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Domain of this corpus (default: the tokenizer's only domain).
    #[arg(long)]
    domain: Option<String>,
    #[arg(long)]
    dim: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    /// SwiGLU hidden size.
    #[arg(long)]
    ffn: Option<usize>,
    /// Context length.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Untie the output head from the embedding.
    #[arg(long)]
    untied: bool,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long)]
    accum: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Valid loss every N steps (0 = off).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Continue from the checkpoint in --out (exactly: weights, optimizer, RNG).
    #[arg(long)]
    resume: bool,
    /// Where tokenized corpora are cached (default: OUT/../.token-cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// cpu or cuda (cuda needs the `cuda` cargo feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar (logs still go to train_log.csv).
    #[arg(long)]
    no_progress: bool,
    /// Stop after this many steps of this invocation (the checkpoint schedule is unchanged).
    #[arg(long)]
    stop_after: Option<usize>,
    #[arg(long, default_value_t = 1 << 20)]
    max_doc_bytes: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Held-out file(s), one per domain.
    #[arg(long, num_args = 1.., required = true)]
    valid: Vec<PathBuf>,
    /// Domain of each --valid file (default: the checkpoint's domain; a checkpoint serving
    /// several takes the one the file's folder names, e.g. recipes/valid.txt -> recipe).
    #[arg(long, num_args = 1..)]
    domain: Vec<String>,
    /// Print JSON, one object per --valid file and line (the keys of `edgelm eval --json`:
    /// file, domain, documents, bytes, scored_tokens, total_nats, loss, ppl, bpb).
    #[arg(long)]
    json: bool,
    /// Windows per forward batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct SampleArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of samples.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Domain tag to condition on (shared tokenizers).
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(0).context("cannot open CUDA device 0")?)
            } else {
                bail!("this binary was built without CUDA; rebuild with `cargo build --release -p edgelm-trainer --features cuda`")
            }
        }
        other => bail!("unknown --device {other:?}: use cpu or cuda"),
    }
}

/// `.../stories/train.txt` -> `story`.
fn domain_from_path(p: &Path) -> String {
    let dir = p
        .canonicalize()
        .ok()
        .and_then(|c| c.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "text".into());
    if let Some(s) = dir.strip_suffix("ies") {
        format!("{s}y")
    } else if let Some(s) = dir.strip_suffix('s') {
        s.to_string()
    } else {
        dir
    }
}

/// The tag to put after BOS: only for tokenizers shared by several domains.
fn tag_for(tok: &EdgeTokenizer, domain: &str) -> Result<Option<u32>> {
    let domains = tok.domains();
    if domains.len() <= 1 {
        return Ok(None);
    }
    match tok.tag_id(domain) {
        Some(t) => Ok(Some(t)),
        None => bail!("the tokenizer is shared by {domains:?} and has no tag for domain {domain:?}; pass --domain"),
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        // a reader that stopped early (`| head`) is not a failure
        Err(e) if !edgelm_runtime::is_broken_pipe(e.as_ref()) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    edgelm_trainer::train::init_cpu_threads();
    match cli.cmd {
        Cmd::Tokenizer(a) => cmd_tokenizer(a),
        Cmd::Expand(a) => expand_cmd::cmd_expand(a),
        Cmd::Experiment(a) => expand_cmd::cmd_experiment(a),
        Cmd::Baseline(a) => expand_cmd::cmd_baseline(a),
        Cmd::Base(a) => cmd_base(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Sample(a) => cmd_sample(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Export(a) => cmd_export(a),
    }
}

fn cmd_tokenizer(a: TokArgs) -> Result<()> {
    let limits = Limits { max_doc_bytes: a.max_doc_bytes };
    let corpora = a.corpus.iter().map(|p| Corpus::load(p, limits)).collect::<edgelm_trainer::Result<Vec<_>>>()?;
    let domains: Vec<String> = if a.domain.is_empty() {
        let mut d: Vec<String> = a.corpus.iter().map(|p| domain_from_path(p)).collect();
        d.dedup();
        d
    } else {
        a.domain.clone()
    };
    let t0 = std::time::Instant::now();
    let docs = corpora.iter().flat_map(|c| c.documents().into_iter().map(|(_, d)| d));
    let tok = EdgeTokenizer::train(docs, a.vocab_size, &domains)?;
    tok.save(&a.output)?;
    writeln!(
        std::io::stdout(),
        "wrote {} (vocab {}, domains {:?}) in {:.1}s",
        a.output.display(),
        tok.vocab_size(),
        domains,
        t0.elapsed().as_secs_f64()
    )?;
    let valid: Vec<PathBuf> = if a.valid.is_empty() {
        a.corpus.iter().map(|p| p.with_file_name("valid.txt")).filter(|p| p.exists() && !a.corpus.contains(p)).collect()
    } else {
        a.valid
    };
    for v in valid {
        let c = Corpus::load(&v, limits)?;
        let docs: Vec<&str> = c.documents().into_iter().map(|(_, d)| d).collect();
        writeln!(std::io::stdout(), "{}: {:.3} bytes/token", v.display(), tok.bytes_per_token(&docs)?)?;
    }
    Ok(())
}

fn cmd_base(a: BaseArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let fc = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let tok = EdgeTokenizer::load(&a.tokenizer)?;
    let mut m: ModelConfig = fc.model;
    m.vocab_size = tok.vocab_size();
    macro_rules! set {
        ($dst:expr, $src:expr) => {
            if let Some(v) = $src {
                $dst = v;
            }
        };
    }
    set!(m.dim, a.dim);
    set!(m.n_layers, a.layers);
    set!(m.n_heads, a.heads);
    set!(m.n_kv_heads, a.kv_heads);
    set!(m.ffn_dim, a.ffn);
    set!(m.max_seq, a.seq_len);
    if a.untied {
        m.tie_embeddings = false;
    }
    let mut t = fc.train;
    set!(t.batch, a.batch);
    set!(t.accum, a.accum);
    set!(t.steps, a.steps);
    set!(t.lr, a.lr);
    set!(t.min_lr, a.min_lr);
    set!(t.warmup, a.warmup);
    set!(t.weight_decay, a.weight_decay);
    set!(t.grad_clip, a.grad_clip);
    set!(t.seed, a.seed);
    set!(t.checkpoint_every, a.checkpoint_every);
    set!(t.eval_every, a.eval_every);
    if a.resume {
        // The architecture and schedule come from the checkpoint unless overridden.
        let (s, _) = checkpoint::load_state(&a.out, &Device::Cpu).context("--resume")?;
        if a.dim.is_none() && a.layers.is_none() && a.config.is_none() {
            m = s.model;
        }
        if a.config.is_none() {
            let mut t2 = s.train;
            set!(t2.steps, a.steps);
            t = t2;
        }
    }
    m.validate()?;
    let domain = match &a.domain {
        Some(d) => d.clone(),
        None => match tok.domains().as_slice() {
            [d] => d.clone(),
            [] => domain_from_path(&a.corpus),
            many => bail!("the tokenizer serves {many:?}: pass --domain"),
        },
    };
    let tag = tag_for(&tok, &domain)?;
    let limits = Limits { max_doc_bytes: a.max_doc_bytes };
    let cache = a.cache_dir.clone().unwrap_or_else(|| a.out.parent().unwrap_or(Path::new(".")).join(".token-cache"));
    let t0 = std::time::Instant::now();
    let train_stream = TokenStream::cached(&Corpus::load(&a.corpus, limits)?, &tok, tag, &cache)?;
    let valid_stream = match &a.valid {
        Some(v) => Some(TokenStream::cached(&Corpus::load(v, limits)?, &tok, tag, &cache)?),
        None => None,
    };
    eprintln!(
        "corpus: {} documents, {} tokens ({:.2} bytes/token), tokenized in {:.1}s; model: {} parameters; \
         {} tokens/step; device {:?}",
        train_stream.n_docs,
        train_stream.tokens.len(),
        train_stream.n_bytes as f64 / train_stream.tokens.len() as f64,
        t0.elapsed().as_secs_f64(),
        m.n_params(),
        t.batch * t.accum * m.max_seq,
        dev
    );
    let job = TrainJob {
        model: m,
        train: t,
        out: a.out.clone(),
        tokenizer: &tok,
        domains: vec![domain],
        train_stream: &train_stream,
        valid_stream: valid_stream.as_ref(),
        device: dev,
        resume: a.resume,
        progress: !a.no_progress,
        stop_after: a.stop_after,
    };
    let r = train::run(&job)?;
    if let Some(last) = r.rows.last() {
        eprintln!(
            "step {}: loss {:.4}, {:.0} tokens/s; checkpoint in {}",
            r.final_step,
            last.loss,
            last.tokens_per_s,
            a.out.display()
        );
    }
    Ok(())
}

/// The domain a `--valid` file is scored as: the one named by `--domain`,
/// else the checkpoint's only domain; a checkpoint serving several takes the
/// one its folder names (`recipes/valid.txt` -> `recipe`), as `edgelm eval`
/// takes a model's first domain unless told.
fn eval_domain(ck: &checkpoint::Checkpoint, given: Option<&String>, file: &Path) -> Result<String> {
    if let Some(d) = given {
        return Ok(d.clone());
    }
    let known = &ck.config.edgelm.domains;
    match known.as_slice() {
        [] => Ok(domain_from_path(file)),
        [only] => Ok(only.clone()),
        many => {
            let guess = domain_from_path(file);
            if many.contains(&guess) {
                Ok(guess)
            } else {
                bail!("the checkpoint serves {many:?}: pass --domain for {}", file.display())
            }
        }
    }
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let ck = checkpoint::load(&a.checkpoint, &dev)?;
    let scorer = ModelScorer { model: &ck.model, batch: a.batch };
    let mut out = std::io::stdout().lock();
    for (i, v) in a.valid.iter().enumerate() {
        let domain = eval_domain(&ck, a.domain.get(i), v)?;
        let tag = tag_for(&ck.tokenizer, &domain)?;
        let c = Corpus::load(v, Limits::default())?;
        let r = evaluate(&scorer, &ck.tokenizer, &c.text, tag)?;
        if a.json {
            // one object per line, the field names of `edgelm eval --json`
            let mut j = serde_json::to_value(&r)?;
            j["file"] = v.display().to_string().into();
            j["domain"] = domain.into();
            writeln!(out, "{}", serde_json::to_string(&j)?)?;
        } else {
            writeln!(
                out,
                "{} [{}]: bpb {:.4}  loss {:.4}  ppl {:.2}  ({} docs, {} bytes, {} tokens scored)",
                v.display(),
                domain,
                r.bpb,
                r.loss,
                r.ppl,
                r.documents,
                r.bytes,
                r.scored_tokens
            )?;
        }
    }
    Ok(())
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let ck = checkpoint::load(&a.checkpoint, &dev)?;
    let domain = a.domain.clone().or_else(|| ck.config.edgelm.domains.first().cloned()).unwrap_or_default();
    let tag = tag_for(&ck.tokenizer, &domain)?;
    for i in 0..a.n {
        let o = SampleOptions {
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            seed: a.seed + i as u64,
            tag,
        };
        let (text, _) = generate(&ck.model, &ck.tokenizer, &a.prompt, &o)?;
        if a.n > 1 {
            writeln!(std::io::stdout(), "--- sample {} (seed {}) ---", i + 1, o.seed)?;
        }
        writeln!(std::io::stdout(), "{}{}", a.prompt, text)?;
    }
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let m = ModelConfig {
        dim: a.dim,
        n_layers: a.layers,
        n_heads: a.heads,
        n_kv_heads: a.kv_heads,
        ffn_dim: a.ffn,
        vocab_size: a.vocab,
        max_seq: a.seq_len,
        ..ModelConfig::default()
    };
    m.validate()?;
    let t = edgelm_trainer::config::TrainConfig { batch: a.batch, ..Default::default() };
    let r = train::bench(&m, &t, a.warmup_steps, a.steps, &dev)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let per_step_ms = |secs: f64| 1000.0 * secs / r.steps.max(1) as f64;
    let (f, b, o) = (per_step_ms(r.times.forward), per_step_ms(r.times.backward), per_step_ms(r.times.optimizer));
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"tokens_per_s": r.tokens_per_s, "params": m.n_params(), "batch": a.batch,
                "seq_len": a.seq_len, "threads": threads, "steps": r.steps,
                "forward_ms": f, "backward_ms": b, "optimizer_ms": o})
        )?;
    } else {
        let total = (f + b + o).max(f64::MIN_POSITIVE);
        writeln!(out, "model       {} parameters, batch {} × {} tokens", m.n_params(), a.batch, a.seq_len)?;
        writeln!(out, "threads     {threads}")?;
        writeln!(
            out,
            "throughput  {:.0} tokens/s ({} timed steps after {} warm-up)",
            r.tokens_per_s, r.steps, a.warmup_steps
        )?;
        for (name, ms) in [("forward", f), ("backward", b), ("optimizer", o)] {
            writeln!(out, "{name:<11} {ms:>8.1} ms/step  {:>5.1} %", 100.0 * ms / total)?;
        }
    }
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f32" => candle_core::DType::F32,
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        o => bail!("unknown --dtype {o:?}: use f32, f16 or bf16"),
    };
    let ck = checkpoint::load(&a.checkpoint, &Device::Cpu)?;
    let id = checkpoint::save_model(&a.out, &ck.model, &ck.tokenizer, &ck.config.edgelm.domains, dtype)?;
    for f in [train::LOG_FILE, train::PLOT_FILE] {
        let src = a.checkpoint.join(f);
        if src.exists() {
            std::fs::copy(&src, a.out.join(f)).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    writeln!(std::io::stdout(), "exported {} as {} ({id})", a.out.display(), a.dtype)?;
    Ok(())
}
