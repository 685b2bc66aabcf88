//! `edgelm`: generate text, inspect a model, benchmark and evaluate it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use edgelm_runtime::eval::{documents, eval_document, EvalTotals};
use edgelm_runtime::format::{FileKind, ModelFile, VerifyChecksum};
use edgelm_runtime::{Model, SamplerConfig, Session, SessionOptions};
use memmap2::Mmap;

#[derive(Parser)]
#[command(
    name = "edgelm",
    version,
    about = "Run small int8 language models on edge devices",
    long_about = "Run small int8 language models on edge devices.\n\n\
        A model is a base `.edgelm` file plus optional domain packs (`--pack`), \
        each adding a domain such as `recipe`. Pick the domain with `--domain`.\n\n\
        Examples:\n  \
        edgelm generate --model models/base.edgelm --prompt \"Once upon a time\"\n  \
        edgelm generate --model models/base.edgelm --pack models/recipe.edgelm --domain recipe --prompt \"Title:\"\n  \
        edgelm inspect models/base.edgelm\n  \
        edgelm bench --model models/base.edgelm --json\n  \
        edgelm eval --model models/base.edgelm valid.txt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text, streamed to stdout as it is produced.
    Generate(GenerateArgs),
    /// Show a file's header, tensors, sizes, kernel path and checksum status.
    Inspect {
        /// An .edgelm base model or domain pack.
        file: PathBuf,
    },
    /// Measure prompt and decode speed, memory and arena size.
    Bench(BenchArgs),
    /// Bits per byte of a text file (documents split on <|endoftext|> lines).
    Eval(EvalArgs),
    /// Generate a story and a recipe from the models shipped in the repo.
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Folder with base.edgelm (and recipe.edgelm, the recipe domain pack).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Tokens per sample.
    #[arg(long, short = 'n', default_value_t = 200)]
    max_tokens: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Args)]
struct ModelArgs {
    /// Base model (.edgelm).
    #[arg(long, short)]
    model: PathBuf,
    /// Domain pack(s) to load over the base (repeatable).
    #[arg(long)]
    pack: Vec<PathBuf>,
    /// Domain to use (default: the base's first domain).
    #[arg(long)]
    domain: Option<String>,
    /// Skip checksum verification (structure is still validated).
    #[arg(long)]
    no_verify: bool,
    /// Context length of the session (default: the model's).
    #[arg(long)]
    max_seq: Option<usize>,
    /// Worker threads for matrix-vector products.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to continue; empty starts from the beginning-of-text token.
    #[arg(long, short, default_value = "")]
    prompt: String,
    /// Most tokens to generate (stops earlier at end-of-text).
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, short, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Penalty on recently generated tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// RNG seed; the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the end of a prompt longer than the context instead of failing.
    #[arg(long)]
    truncate_prompt: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 8)]
    prompt_tokens: usize,
    /// Tokens to decode (greedy, end-of-text ignored).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    textfile: PathBuf,
    /// Stop after this many documents.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn map(path: &Path) -> Result<Mmap> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the mapping is read-only; the file must not be truncated while
    // mapped (as with any mmap'd model file); all access is bounds-checked.
    unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))
}

struct Loaded {
    base: Mmap,
    packs: Vec<Mmap>,
}

impl Loaded {
    fn open(a: &ModelArgs) -> Result<Self> {
        let base = map(&a.model)?;
        let packs = a.pack.iter().map(|p| map(p)).collect::<Result<_>>()?;
        Ok(Loaded { base, packs })
    }

    fn model(&self, a: &ModelArgs) -> Result<Model<'_>> {
        let verify = if a.no_verify { VerifyChecksum::Skip } else { VerifyChecksum::Yes };
        let file = ModelFile::parse(&self.base, verify).with_context(|| format!("loading {}", a.model.display()))?;
        let mut model = Model::from_file(&file).with_context(|| format!("loading {}", a.model.display()))?;
        for (bytes, path) in self.packs.iter().zip(&a.pack) {
            let file = ModelFile::parse(bytes, verify).with_context(|| format!("loading pack {}", path.display()))?;
            model.add_pack(&file).with_context(|| format!("loading pack {}", path.display()))?;
        }
        Ok(model)
    }
}

fn domain_name<'m>(model: &'m Model<'_>, a: &'m ModelArgs) -> &'m str {
    a.domain.as_deref().unwrap_or(model.default_domain().name)
}

fn max_seq(model: &Model<'_>, a: &ModelArgs) -> usize {
    a.max_seq.unwrap_or(model.config.max_seq_len as usize)
}

/// Validates `--threads` and builds the worker pool (`None` for one thread).
fn check_threads(n: usize) -> Result<Option<edgelm_runtime::threads::Pool>> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > cpus {
        eprintln!(
            "note: --threads {n} exceeds the {cpus} CPU(s) available; expect it to be slower than --threads {cpus}"
        );
    }
    if n == 1 {
        return Ok(None);
    }
    let pool = edgelm_runtime::threads::Pool::try_new(n).context("cannot start worker threads; try fewer --threads")?;
    Ok(Some(pool))
}

fn generate(g: GenerateArgs) -> Result<()> {
    let loaded = Loaded::open(&g.model)?;
    let model = loaded.model(&g.model)?;
    let pool = check_threads(g.model.threads)?;
    let domain = domain_name(&model, &g.model);
    let seq = max_seq(&model, &g.model);
    let mut arena = vec![0u8; model.arena_bytes(seq)];
    let opts = SessionOptions {
        max_seq: seq,
        sampler: SamplerConfig {
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repeat_penalty: g.repeat_penalty,
            repeat_window: 64,
            seed: g.seed,
        },
        truncate_prompt: g.truncate_prompt,
    };
    let mut session = Session::new(&model, domain, &mut arena, opts)?;
    if let Some(p) = &pool {
        session.set_pool(p);
    }
    let mut out = std::io::stdout().lock();
    session.feed_prompt(&g.prompt)?;
    write!(out, "{}", g.prompt)?;
    let mut io_err = None;
    let reason = session.generate(g.max_tokens, &mut |s| {
        if io_err.is_none() {
            io_err = write!(out, "{s}").and_then(|_| out.flush()).err();
        }
    })?;
    if let Some(e) = io_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    writeln!(out)?;
    eprintln!("[{domain}: stopped by {reason:?}]");
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let bytes = map(path)?;
    let file = ModelFile::parse(&bytes, VerifyChecksum::Yes).with_context(|| format!("reading {}", path.display()))?;
    let m = &file.meta;
    let c = &m.config;
    println!("file        {} ({} bytes)", path.display(), file.file_len);
    println!("kind        {:?}", m.kind);
    println!("model id    {}", m.model_id);
    if m.kind == FileKind::Pack {
        println!("base id     {}", m.base_model_id);
    }
    println!("checksum    {:#018x} (verified)", file.checksum);
    println!(
        "config      dim {} layers {} heads {} kv-heads {} ffn {} vocab {} max-seq {} rope-theta {} eps {} tied-head {}",
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.max_seq_len, c.rope_theta, c.norm_eps, c.tied_head
    );
    println!("kernels     {}", edgelm_runtime::kernels::best().name);
    for d in &m.domains {
        println!(
            "domain      {:<10} vocab {:>6} tokenizer {:?}{} head {} tag {:?} expansion blocks at {:?}",
            d.name,
            d.vocab_size,
            d.tokenizer.kind,
            if d.own_tokenizer { " (own)" } else { " (base's)" },
            if d.own_head { "own" } else { "base's" },
            d.tag_token,
            d.expansion_positions.as_slice()
        );
    }
    println!("tensors     {}", file.n_tensors());
    let mut params = 0usize;
    for t in file.tensors() {
        if !t.name.contains("tokenizer.") {
            params += t.numel();
        }
        println!("  {:<48} {:<4} {:>16} {:>10} B", t.name, t.dtype.name(), format!("{:?}", t.shape()), t.bytes.len());
    }
    println!("parameters  {params}");
    if m.kind == FileKind::Base {
        let model = Model::from_file(&file)?;
        let seq = c.max_seq_len as usize;
        println!("arena       {} bytes for max-seq {seq}", model.arena_bytes(seq));
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench(b: BenchArgs) -> Result<()> {
    let loaded = Loaded::open(&b.model)?;
    let model = loaded.model(&b.model)?;
    let pool = check_threads(b.model.threads)?;
    let domain = domain_name(&model, &b.model);
    let seq = max_seq(&model, &b.model);
    if b.prompt_tokens + b.gen_tokens > seq {
        bail!(
            "--prompt-tokens + --gen-tokens = {} exceeds the context ({seq}); lower them or raise --max-seq",
            b.prompt_tokens + b.gen_tokens
        );
    }
    if b.runs == 0 || b.prompt_tokens == 0 {
        bail!("--runs and --prompt-tokens must be at least 1");
    }
    let arena_bytes = model.arena_bytes(seq);
    let mut arena = vec![0u8; arena_bytes];
    let mut session = Session::new(&model, domain, &mut arena, SessionOptions::new(seq))?;
    if let Some(p) = &pool {
        session.set_pool(p);
    }
    let vocab = session.domain().vocab_size as u32;
    let kernels = session.kernels().name;
    let (mut prompt_tps, mut decode_tps) = (Vec::new(), Vec::new());
    for _ in 0..b.runs {
        session.reset();
        let t0 = Instant::now();
        let mut last = 0;
        for i in 0..b.prompt_tokens {
            // a fixed, valid token sequence; content does not change the cost
            let t = (1 + i as u32 * 7919) % vocab;
            last = edgelm_runtime::sampler::argmax(session.step(t)?);
        }
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..b.gen_tokens {
            last = edgelm_runtime::sampler::argmax(session.step(last)?);
        }
        let decode_s = t1.elapsed().as_secs_f64();
        prompt_tps.push(b.prompt_tokens as f64 / prompt_s);
        decode_tps.push(b.gen_tokens as f64 / decode_s);
    }
    let p = median(&mut prompt_tps);
    let d = median(&mut decode_tps);
    let rss = peak_rss_bytes().unwrap_or(0);
    if b.json {
        println!(
            "{{\"model\":{:?},\"domain\":{:?},\"kernels\":{:?},\"threads\":{},\"prompt_tokens\":{},\"gen_tokens\":{},\"runs\":{},\"prompt_tokens_per_s\":{:.2},\"decode_tokens_per_s\":{:.2},\"ms_per_token\":{:.4},\"peak_rss_bytes\":{},\"arena_bytes\":{}}}",
            b.model.model.display().to_string(), domain, kernels, b.model.threads, b.prompt_tokens, b.gen_tokens, b.runs, p, d, 1000.0 / d, rss, arena_bytes
        );
    } else {
        println!("model         {}", b.model.model.display());
        println!("domain        {domain}");
        println!("kernels       {kernels}, {} thread(s)", b.model.threads);
        println!("prompt        {:.1} tok/s ({} tokens, median of {})", p, b.prompt_tokens, b.runs);
        println!(
            "decode        {:.1} tok/s, {:.3} ms/token ({} tokens, median of {})",
            d,
            1000.0 / d,
            b.gen_tokens,
            b.runs
        );
        println!("peak RSS      {:.1} MiB", rss as f64 / (1 << 20) as f64);
        println!("arena         {:.2} MiB ({arena_bytes} bytes)", arena_bytes as f64 / (1 << 20) as f64);
    }
    Ok(())
}

fn eval(e: EvalArgs) -> Result<()> {
    let text = std::fs::read_to_string(&e.textfile)
        .with_context(|| format!("cannot read {} (is it UTF-8 text?)", e.textfile.display()))?;
    let loaded = Loaded::open(&e.model)?;
    let model = loaded.model(&e.model)?;
    let pool = check_threads(e.model.threads)?;
    let domain = domain_name(&model, &e.model);
    let seq = max_seq(&model, &e.model);
    let mut arena = vec![0u8; model.arena_bytes(seq)];
    let mut session = Session::new(&model, domain, &mut arena, SessionOptions::new(seq))?;
    if let Some(p) = &pool {
        session.set_pool(p);
    }
    let mut totals = EvalTotals::default();
    let t0 = Instant::now();
    for doc in documents(&text).take(e.limit.unwrap_or(usize::MAX)) {
        eval_document(&mut session, doc, &mut totals)?;
    }
    if totals.documents == 0 {
        bail!("{} holds no documents", e.textfile.display());
    }
    let secs = t0.elapsed().as_secs_f64();
    if e.json {
        println!(
            "{{\"file\":{:?},\"domain\":{:?},\"documents\":{},\"bytes\":{},\"tokens\":{},\"loss\":{:.6},\"ppl\":{:.4},\"bpb\":{:.6},\"seconds\":{:.2}}}",
            e.textfile.display().to_string(), domain, totals.documents, totals.bytes, totals.scored_tokens, totals.loss(), totals.perplexity(), totals.bpb(), secs
        );
    } else {
        println!("domain      {domain}");
        println!("documents   {} ({} bytes, {} tokens)", totals.documents, totals.bytes, totals.scored_tokens);
        println!("loss        {:.4} nats/token (ppl {:.2})", totals.loss(), totals.perplexity());
        println!("bpb         {:.4} bits/byte", totals.bpb());
    }
    Ok(())
}

fn demo(d: DemoArgs) -> Result<()> {
    let base_path = d.models.join("base.edgelm");
    if !base_path.exists() {
        bail!("{} not found: run the demo from the repository root, or pass --models DIR", base_path.display());
    }
    let pack_path = d.models.join("recipe.edgelm");
    let base = map(&base_path)?;
    let pack = if pack_path.exists() { Some(map(&pack_path)?) } else { None };
    let mut model = Model::from_bytes(&base).with_context(|| format!("loading {}", base_path.display()))?;
    if let Some(p) = &pack {
        model.add_pack_bytes(p).with_context(|| format!("loading {}", pack_path.display()))?;
    } else {
        eprintln!("note: {} is not there; only the base's domains are shown", pack_path.display());
    }
    let seq = model.config.max_seq_len as usize;
    let mut arena = vec![0u8; model.arena_bytes(seq)];
    let prompts = [("story", "Once upon a time"), ("recipe", "Title:")];
    let mut out = std::io::stdout().lock();
    for domain in &model.domains {
        let prompt = prompts.iter().find(|(n, _)| *n == domain.name).map_or("", |(_, p)| *p);
        let opts = SessionOptions {
            max_seq: seq,
            sampler: SamplerConfig {
                temperature: 0.8,
                top_p: 0.9,
                repeat_penalty: 1.1,
                seed: d.seed,
                ..Default::default()
            },
            truncate_prompt: false,
        };
        let mut session = Session::with_domain(&model, domain, &mut arena, opts)?;
        writeln!(out, "=== {} ===", domain.name)?;
        write!(out, "{prompt}")?;
        session.feed_prompt(prompt)?;
        let start = Instant::now();
        session.generate(d.max_tokens, &mut |t| {
            let _ = write!(out, "{t}").and_then(|_| out.flush());
        })?;
        let secs = start.elapsed().as_secs_f64();
        writeln!(out, "\n")?;
        eprintln!("[{}: {} tokens in {:.2} s]", domain.name, session.tokens().len(), secs);
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(g) => generate(g),
        Command::Inspect { file } => inspect(&file),
        Command::Bench(b) => bench(b),
        Command::Eval(e) => eval(e),
        Command::Demo(d) => demo(d),
    }
}
