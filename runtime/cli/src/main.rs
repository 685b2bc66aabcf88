//! `edgelm`: generate text, inspect a model, benchmark and evaluate it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use edgelm_runtime::format::{FileKind, ModelFile, VerifyChecksum};
use edgelm_runtime::{Engine, EngineOptions, ErrorKind, KvType, Model, SamplerConfig, SessionOptions};

mod eval;
mod soak;

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
        edgelm eval --model models/base.edgelm valid.txt\n  \
        edgelm soak --model models/base.edgelm --pack models/recipe.edgelm --tokens 1000000"
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
    Eval(eval::EvalArgs),
    /// Generate a story and a recipe from the models shipped in the repo.
    Demo(DemoArgs),
    /// A kiosk's life in minutes: many sessions over every domain, files
    /// reloaded, memory and speed sampled, fixed seeds checked at both ends.
    Soak(soak::SoakArgs),
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
    /// Threads: generate and bench split each token's products among them;
    /// eval gives each its own documents.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// KV cache element type: f32; f16 (half the cache's memory); or q8
    /// (about a quarter: one byte per value and a scale per head).
    #[arg(long, default_value = "f32", value_parser = parse_kv)]
    kv: KvType,
    /// Tokens per block when a prompt (or `eval`) runs through the model
    /// batched; 1 runs them one at a time (the smallest arena).
    #[arg(long, default_value_t = edgelm_runtime::session::DEFAULT_BLOCK)]
    block: usize,
}

fn parse_kv(s: &str) -> std::result::Result<KvType, String> {
    KvType::from_name(s).ok_or_else(|| format!("unknown KV type {s:?}: use f32, f16 or q8"))
}

/// The session options `a` asks for (context, KV type, block size).
fn session_options(engine: &Engine, a: &ModelArgs) -> SessionOptions {
    SessionOptions { kv: a.kv, block: a.block, ..SessionOptions::new(max_seq(engine, a)) }
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
    /// Tokens to decode (greedy, end-of-text ignored); 0 times the prompt alone.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs first, for at least this many milliseconds (0: none):
    /// the worker threads get placed on their cores and the caches fill, as
    /// in an app that keeps its engine open. A 64-token prompt takes a few
    /// milliseconds, less than the kernel takes to move a new thread to an
    /// idle core.
    #[arg(long, default_value_t = 200)]
    warmup_ms: u64,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Opens the base and packs of `a` with the kernels and threads it asks for.
fn open(a: &ModelArgs) -> Result<Engine> {
    open_with_threads(a, check_threads(a.threads)?)
}

/// [`open`] with `threads` for the products instead of `--threads`.
fn open_with_threads(a: &ModelArgs, threads: usize) -> Result<Engine> {
    let verify = if a.no_verify { VerifyChecksum::Skip } else { VerifyChecksum::Yes };
    let opts = EngineOptions { verify, threads, kernels: None };
    let mut engine = Engine::open(&a.model, opts).with_context(|| format!("loading {}", a.model.display()))?;
    for p in &a.pack {
        engine.add_pack_with(p, verify).with_context(|| format!("loading pack {}", p.display()))?;
    }
    Ok(engine)
}

/// The domain `a` names (checked, with the loaded ones listed), or the base's first.
fn domain_name(model: &Model<'_>, a: &ModelArgs) -> Result<String> {
    match a.domain.as_deref() {
        None => Ok(model.default_domain().name.to_string()),
        Some(d) if model.domain(d).is_ok() => Ok(d.to_string()),
        Some(d) => {
            let names: Vec<&str> = model.domains().iter().map(|d| d.name).collect();
            bail!("unknown domain {d:?}: the model and its packs provide {names:?} (add a domain with --pack)")
        }
    }
}

fn max_seq(engine: &Engine, a: &ModelArgs) -> usize {
    a.max_seq.unwrap_or(engine.max_seq())
}

/// Validates `--threads` (warning when it exceeds the CPUs).
fn check_threads(n: usize) -> Result<usize> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > cpus {
        eprintln!(
            "note: --threads {n} exceeds the {cpus} CPU(s) available; expect it to be slower than --threads {cpus}"
        );
    }
    Ok(n)
}

/// Warns once when `EDGELM_KERNELS` names a path this CPU cannot run (the
/// runtime then uses the detected one).
fn warn_kernel_override() {
    if let Err(e) = edgelm_runtime::kernels::from_env() {
        eprintln!(
            "warning: {}: {e}; using {}",
            edgelm_runtime::kernels::ENV_VAR,
            edgelm_runtime::kernels::detected().name
        );
    }
}

fn generate(g: GenerateArgs) -> Result<()> {
    let engine = open(&g.model)?;
    let domain = domain_name(&engine.model()?, &g.model)?;
    let opts = SessionOptions {
        sampler: SamplerConfig {
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repeat_penalty: g.repeat_penalty,
            repeat_window: 64,
            seed: g.seed,
        },
        truncate_prompt: g.truncate_prompt,
        ..session_options(&engine, &g.model)
    };
    let mut out = std::io::stdout().lock();
    let reason = engine.with_session(Some(&domain), opts, |session| -> Result<_> {
        session.feed_prompt(&g.prompt)?;
        write!(out, "{}", g.prompt)?;
        let mut io_err = None;
        let reason = session.generate(g.max_tokens, &mut |s| {
            if io_err.is_none() {
                io_err = write!(out, "{s}").and_then(|_| out.flush()).err();
            }
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        Ok(reason)
    })?;
    writeln!(out)?;
    eprintln!("[{domain}: stopped by {reason:?}]");
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let engine_err = |e| anyhow::Error::from(e).context(format!("reading {}", path.display()));
    let bytes = std::fs::read(path).with_context(|| format!("cannot open {}", path.display()))?;
    let bytes = edgelm_runtime::AlignedBytes::from(bytes);
    let file = ModelFile::parse(&bytes, VerifyChecksum::Yes).map_err(engine_err)?;
    let m = &file.meta;
    let c = &m.config;
    let mut out = std::io::stdout().lock();
    writeln!(out, "file        {} ({} bytes)", path.display(), file.file_len)?;
    writeln!(out, "kind        {:?}", m.kind)?;
    writeln!(out, "model id    {}", m.model_id)?;
    if m.kind == FileKind::Pack {
        writeln!(out, "base id     {}", m.base_model_id)?;
    }
    writeln!(out, "checksum    {:#018x} (verified)", file.checksum)?;
    writeln!(
        out,
        "config      dim {} layers {} heads {} kv-heads {} ffn {} vocab {} max-seq {} rope-theta {} eps {} tied-head {}",
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.max_seq_len, c.rope_theta, c.norm_eps, c.tied_head
    )?;
    writeln!(out, "kernels     {}", edgelm_runtime::kernels::best().name)?;
    for d in &m.domains {
        writeln!(
            out,
            "domain      {:<10} vocab {:>6} tokenizer {:?}{} head {} tag {:?} expansion blocks at {:?}",
            d.name,
            d.vocab_size,
            d.tokenizer.kind,
            if d.own_tokenizer { " (own)" } else { " (base's)" },
            if d.own_head { "own" } else { "base's" },
            d.tag_token,
            d.expansion_positions.as_slice()
        )?;
    }
    writeln!(out, "tensors     {}", file.n_tensors())?;
    let mut params = 0usize;
    for t in file.tensors() {
        if !t.name.contains("tokenizer.") {
            params += t.numel();
        }
        writeln!(
            out,
            "  {:<48} {:<4} {:>16} {:>10} B",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape()),
            t.bytes.len()
        )?;
    }
    writeln!(out, "parameters  {params}")?;
    if m.kind == FileKind::Base {
        let model = Model::from_file(&file)?;
        let seq = c.max_seq_len as usize;
        writeln!(out, "arena       {} bytes for max-seq {seq}", model.arena_bytes(seq))?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A memory figure of this process from Linux `/proc/self/status` (`field`
/// is e.g. `"VmHWM:"`, peak resident, or `"VmRSS:"`, resident now), in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

fn bench(b: BenchArgs) -> Result<()> {
    let engine = open(&b.model)?;
    let model = engine.model()?;
    let domain = domain_name(&model, &b.model)?;
    let seq = max_seq(&engine, &b.model);
    if b.prompt_tokens + b.gen_tokens > seq {
        bail!(
            "--prompt-tokens + --gen-tokens = {} exceeds the context ({seq}); lower them or raise --max-seq",
            b.prompt_tokens + b.gen_tokens
        );
    }
    if b.runs == 0 || b.prompt_tokens == 0 {
        bail!("--runs and --prompt-tokens must be at least 1");
    }
    let opts = session_options(&engine, &b.model);
    let arena_bytes = model.arena_bytes_for(&opts);
    let mut arena = vec![0u8; arena_bytes];
    let mut session = engine.session(&model, Some(&domain), &mut arena, opts)?;
    let vocab = session.domain().vocab_size as u32;
    let kernels = session.kernels().name;
    // a fixed, valid token sequence; content does not change the cost
    let prompt: Vec<u32> = (0..b.prompt_tokens).map(|i| (1 + i as u32 * 7919) % vocab).collect();
    // one prompt, then `--gen-tokens` greedy steps: (prompt s, decode s)
    let mut run = || -> Result<(f64, f64)> {
        session.reset();
        let t0 = Instant::now();
        // the prompt path: blocks of `--block` tokens, logits of the last only
        let mut last = edgelm_runtime::sampler::argmax(session.extend(&prompt)?);
        let prompt_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..b.gen_tokens {
            last = edgelm_runtime::sampler::argmax(session.step(last)?);
        }
        Ok((prompt_s, t1.elapsed().as_secs_f64()))
    };
    if b.warmup_ms > 0 {
        let start = Instant::now();
        while start.elapsed().as_millis() < u128::from(b.warmup_ms) {
            run()?;
        }
    }
    let (mut prompt_tps, mut decode_tps) = (Vec::new(), Vec::new());
    for _ in 0..b.runs {
        let (prompt_s, decode_s) = run()?;
        prompt_tps.push(b.prompt_tokens as f64 / prompt_s);
        decode_tps.push(b.gen_tokens as f64 / decode_s);
    }
    let p = median(&mut prompt_tps);
    let d = median(&mut decode_tps);
    let rss = peak_rss_bytes().unwrap_or(0);
    let threads = engine.threads();
    let mut out = std::io::stdout().lock();
    if b.json {
        writeln!(
            out,
            "{{\"model\":{:?},\"domain\":{:?},\"kernels\":{:?},\"threads\":{},\"kv\":{:?},\"block\":{},\"prompt_tokens\":{},\"gen_tokens\":{},\"runs\":{},\"warmup_ms\":{},\"prompt_tokens_per_s\":{:.2},\"decode_tokens_per_s\":{},\"ms_per_token\":{},\"peak_rss_bytes\":{},\"arena_bytes\":{}}}",
            b.model.model.display().to_string(), domain, kernels, threads, opts.kv.name(), opts.block_len().max(1), b.prompt_tokens, b.gen_tokens, b.runs, b.warmup_ms, p, json_or_null(d, 2), json_or_null(1000.0 / d, 4), rss, arena_bytes
        )?;
    } else {
        writeln!(out, "model         {}", b.model.model.display())?;
        writeln!(out, "domain        {domain}")?;
        writeln!(out, "kernels       {kernels}, {threads} thread(s)")?;
        writeln!(out, "kv cache      {}, prompt blocks of {} token(s)", opts.kv.name(), opts.block_len().max(1))?;
        writeln!(out, "prompt        {:.1} tok/s ({} tokens, median of {})", p, b.prompt_tokens, b.runs)?;
        if b.gen_tokens > 0 {
            writeln!(
                out,
                "decode        {:.1} tok/s, {:.3} ms/token ({} tokens, median of {})",
                d,
                1000.0 / d,
                b.gen_tokens,
                b.runs
            )?;
        }
        writeln!(out, "peak RSS      {:.1} MiB", rss as f64 / (1 << 20) as f64)?;
        writeln!(out, "arena         {:.2} MiB ({arena_bytes} bytes)", arena_bytes as f64 / (1 << 20) as f64)?;
    }
    Ok(())
}

/// `x` with `decimals` for JSON, or `null` where it is not a number (no
/// decode tokens: `--gen-tokens 0`).
fn json_or_null(x: f64, decimals: usize) -> String {
    if x.is_finite() && x > 0.0 {
        format!("{x:.decimals$}")
    } else {
        "null".into()
    }
}

fn demo(d: DemoArgs) -> Result<()> {
    let base_path = d.models.join("base.edgelm");
    if !base_path.exists() {
        bail!("{} not found: run the demo from the repository root, or pass --models DIR", base_path.display());
    }
    let pack_path = d.models.join("recipe.edgelm");
    let mut engine = Engine::open(&base_path, EngineOptions::default())
        .with_context(|| format!("loading {}", base_path.display()))?;
    if pack_path.exists() {
        engine.add_pack(&pack_path).with_context(|| format!("loading {}", pack_path.display()))?;
    } else {
        eprintln!("note: {} is not there; only the base's domains are shown", pack_path.display());
    }
    let names: Vec<String> = engine.model()?.domains().iter().map(|d| d.name.to_string()).collect();
    let prompts = [("story", "Once upon a time"), ("recipe", "Title:")];
    let mut out = std::io::stdout().lock();
    for domain in &names {
        let prompt = prompts.iter().find(|(n, _)| n == domain).map_or("", |(_, p)| *p);
        let opts = SessionOptions {
            max_seq: engine.max_seq(),
            sampler: SamplerConfig {
                temperature: 0.8,
                top_p: 0.9,
                repeat_penalty: 1.1,
                seed: d.seed,
                ..Default::default()
            },
            ..SessionOptions::new(engine.max_seq())
        };
        writeln!(out, "=== {domain} ===")?;
        write!(out, "{prompt}")?;
        let start = Instant::now();
        let (tokens, io_err) = engine.with_session(Some(domain), opts, |session| -> Result<_> {
            session.feed_prompt(prompt)?;
            let mut io_err = None;
            session.generate(d.max_tokens, &mut |t| {
                if io_err.is_none() {
                    io_err = write!(out, "{t}").and_then(|_| out.flush()).err();
                }
            })?;
            Ok((session.tokens().len(), io_err))
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        let secs = start.elapsed().as_secs_f64();
        writeln!(out, "\n")?;
        eprintln!("[{domain}: {tokens} tokens in {secs:.2} s]");
    }
    Ok(())
}

/// What a user can do about a runtime error (the library's messages are neutral).
fn advice(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::PromptTooLong => "shorten the prompt, raise --max-seq, or use --truncate-prompt",
        ErrorKind::ContextFull => "raise --max-seq or generate fewer tokens",
        ErrorKind::CorruptFile => "convert models with `edgelm-convert`; re-copy or re-convert a damaged file",
        ErrorKind::Unsupported => "re-convert the model with this version's `edgelm-convert`, or upgrade edgelm",
        ErrorKind::WrongFile => "pass the base model with --model and its domain packs with --pack",
        ErrorKind::UnknownDomain => "`edgelm inspect` lists the domains a model and its packs provide",
        _ => return None,
    })
}

fn run(cli: Cli) -> Result<()> {
    warn_kernel_override();
    match cli.command {
        Command::Generate(g) => generate(g),
        Command::Inspect { file } => inspect(&file),
        Command::Bench(b) => bench(b),
        Command::Eval(e) => eval::eval(e),
        Command::Demo(d) => demo(d),
        Command::Soak(s) => soak::soak(s),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // a reader that stopped early (`| head`) is not a failure
        Err(e) if edgelm_runtime::is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            let kind = e.chain().find_map(|c| c.downcast_ref::<edgelm_runtime::Error>()).map(|r| r.kind());
            if let Some(hint) = kind.and_then(advice) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
