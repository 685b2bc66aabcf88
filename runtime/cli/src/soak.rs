//! `edgelm soak`: a kiosk's life in minutes. Many short sessions over every
//! loaded domain, the base and packs dropped and mapped again every few
//! sessions, one arena reused throughout (as the kiosk's pool does), resident
//! memory and speed sampled as it goes, and a set of fixed-seed probes run at
//! the start and again at the end, which must give the same text.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use edgelm_runtime::{Engine, Model, SamplerConfig, SessionOptions};

use crate::{open, proc_status_bytes, session_options, ModelArgs};

#[derive(Args)]
pub struct SoakArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Generated tokens in total (the probes not counted).
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    /// Most tokens one session generates (it also stops at end-of-text or a
    /// full context).
    #[arg(long, default_value_t = 200)]
    session_tokens: usize,
    /// Sessions between two reloads of the base and packs (0 = never reload).
    #[arg(long, default_value_t = 25)]
    reload_every: u64,
    /// Tokens between two samples of resident memory and speed (default: a
    /// fiftieth of --tokens, at least 1000).
    #[arg(long)]
    window: Option<u64>,
    /// Fail when resident memory after the first window grows by more than
    /// this many MiB over its smallest sample.
    #[arg(long, default_value_t = 8.0)]
    max_rss_growth_mib: f64,
    /// Machine-readable summary (with every sample) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Prompts a session of `domain` starts from, in turn (any other domain
/// starts from the beginning-of-text token).
fn prompts(domain: &str) -> &'static [&'static str] {
    match domain {
        "story" => &["Once upon a time", "The old king", "In a little village by the sea", "One morning the fox"],
        "recipe" => {
            &["Title:", "Title: Apple Pie\nSteps:\n1.", "Title: Potato Soup", "Title: Rice Pudding\nSteps:\n1."]
        }
        _ => &[""],
    }
}

/// The sampler a kiosk would use, seeded per session.
fn sampler(seed: u64) -> SamplerConfig {
    SamplerConfig { temperature: 0.8, top_p: 0.9, repeat_penalty: 1.1, seed, ..Default::default() }
}

/// One memory and speed sample, taken at the end of a window.
struct Sample {
    tokens: u64,
    seconds: f64,
    rss_bytes: u64,
    /// Tokens per second of wall time over the window.
    window_tokens_per_s: f64,
    /// Tokens per second of this process's CPU time over the window: what a
    /// slowdown of the runtime itself would change, little moved by other
    /// programs sharing the CPU (which change the wall-time figure).
    window_tokens_per_cpu_s: f64,
}

/// Resident memory of this process now (Linux `/proc`; 0 elsewhere).
fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:").unwrap_or(0)
}

/// What one session runs: a domain, a prompt and a sampler seed.
struct Job<'j> {
    domain: &'j str,
    prompt: &'j str,
    seed: u64,
}

/// CPU time (user + system) this process has used, in seconds (Linux
/// `/proc`, in ticks of 1/100 s; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        // the fields after the command name, which is in parentheses and may hold spaces
        let rest = s.get(s.rfind(')')? + 1..)?.to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    });
    ticks.unwrap_or(0) as f64 / 100.0
}

/// Runs `job` in `arena` for at most `max_tokens`, appending the generated
/// text to `text` when given (the probes; the loop keeps none, so it
/// allocates nothing per session); the number of tokens generated.
fn run_session(
    engine: &Engine,
    model: &Model<'_>,
    arena: &mut [u8],
    base: SessionOptions,
    job: &Job<'_>,
    max_tokens: usize,
    mut text: Option<&mut String>,
) -> Result<u64> {
    let opts = SessionOptions { sampler: sampler(job.seed), ..base };
    let mut session = engine.session(model, Some(job.domain), arena, opts)?;
    let prompt_len = session.feed_prompt(job.prompt)?;
    let room = opts.max_seq.saturating_sub(prompt_len);
    session.generate(max_tokens.min(room), &mut |t| {
        if let Some(text) = text.as_deref_mut() {
            text.push_str(t)
        }
    })?;
    Ok(session.tokens().len().saturating_sub(prompt_len) as u64)
}

/// The probes: two fixed seeds per domain, run at the start and at the end.
fn probes(engine: &Engine, arena: &mut [u8], base: SessionOptions, n: usize) -> Result<Vec<String>> {
    let model = engine.model()?;
    let mut out = Vec::new();
    for d in model.domains() {
        for seed in [1, 2] {
            let job = Job { domain: d.name, prompt: prompts(d.name)[0], seed };
            let mut text = String::new();
            run_session(engine, &model, arena, base, &job, n, Some(&mut text))?;
            out.push(text);
        }
    }
    Ok(out)
}

pub fn soak(a: SoakArgs) -> Result<()> {
    if a.tokens == 0 || a.session_tokens == 0 {
        bail!("--tokens and --session-tokens must be at least 1");
    }
    let window = a.window.unwrap_or((a.tokens / 50).max(1000)).max(1);
    let mut engine = open(&a.model)?;
    let opts = session_options(&engine, &a.model);
    // one arena for the whole soak, sized once like the kiosk's pool
    let arena_bytes = engine.model()?.arena_bytes_for(&opts);
    let mut arena = vec![0u8; arena_bytes];
    let domains: Vec<String> = engine.model()?.domains().iter().map(|d| d.name.to_string()).collect();
    let first = probes(&engine, &mut arena, opts, a.session_tokens)?;

    let start = Instant::now();
    let (mut generated, mut sessions, mut reloads, mut idle) = (0u64, 0u64, 0u64, 0u32);
    let (mut window_start_tokens, mut window_start, mut window_cpu) = (0u64, Instant::now(), cpu_seconds());
    let mut samples: Vec<Sample> = Vec::new();
    let mut err = std::io::stderr().lock();
    while generated < a.tokens {
        if sessions > 0 {
            // unmap the base and packs, then map them again from the files
            drop(engine);
            engine = open(&a.model)?;
            reloads += 1;
            if engine.model()?.arena_bytes_for(&opts) > arena.len() {
                bail!("the model files changed during the soak (their arena no longer fits)");
            }
        }
        let model = engine.model()?;
        let mut loaded = 0;
        while generated < a.tokens && (a.reload_every == 0 || loaded < a.reload_every) {
            let domain = &domains[(sessions % domains.len() as u64) as usize];
            let ps = prompts(domain);
            let prompt = ps[(sessions / domains.len() as u64 % ps.len() as u64) as usize];
            let job = Job { domain, prompt, seed: 1000 + sessions };
            let left = (a.tokens - generated).min(a.session_tokens as u64) as usize;
            let n = run_session(&engine, &model, &mut arena, opts, &job, left, None)?;
            idle = if n == 0 { idle + 1 } else { 0 };
            if idle >= 100 {
                bail!("100 sessions in a row generated no token (the model ends every text at once)");
            }
            generated += n;
            sessions += 1;
            loaded += 1;
            if generated - window_start_tokens >= window || generated >= a.tokens {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let cpu = cpu_seconds();
                let n = (generated - window_start_tokens) as f64;
                let s = Sample {
                    tokens: generated,
                    seconds: start.elapsed().as_secs_f64(),
                    rss_bytes: rss_bytes(),
                    window_tokens_per_s: n / secs,
                    window_tokens_per_cpu_s: n / (cpu - window_cpu).max(0.01),
                };
                if !a.json {
                    writeln!(
                        err,
                        "{:>10} tokens  {:>7.1} s  {:>8.1} tok/s  {:>8.1} tok/CPU-s  RSS {:>7.2} MiB  ({sessions} sessions, {reloads} reloads)",
                        s.tokens,
                        s.seconds,
                        s.window_tokens_per_s,
                        s.window_tokens_per_cpu_s,
                        mib(s.rss_bytes)
                    )?;
                }
                samples.push(s);
                window_start_tokens = generated;
                window_start = Instant::now();
                window_cpu = cpu;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let last = probes(&engine, &mut arena, opts, a.session_tokens)?;
    let identical = first == last;

    // memory after the first window (page-ins and allocator warm-up are done by then)
    let steady: Vec<u64> = samples.iter().skip(1).map(|s| s.rss_bytes).collect();
    let steady = if steady.is_empty() { vec![samples.first().map_or(0, |s| s.rss_bytes)] } else { steady };
    let rss_min = steady.iter().copied().min().unwrap_or(0);
    let rss_max = steady.iter().copied().max().unwrap_or(0);
    // speed per CPU-second: the first three windows against the last three
    let speed = |s: &[Sample]| s.iter().map(|x| x.window_tokens_per_cpu_s).sum::<f64>() / s.len().max(1) as f64;
    let k = samples.len().min(3);
    let (early, late) = (speed(&samples[..k]), speed(&samples[samples.len() - k..]));
    let rss_growth = mib(rss_max.saturating_sub(rss_min));
    let rss_flat = rss_growth <= a.max_rss_growth_mib;

    let mut out = std::io::stdout().lock();
    if a.json {
        let list: Vec<String> = samples
            .iter()
            .map(|s| {
                format!(
                    "{{\"tokens\":{},\"seconds\":{:.2},\"rss_bytes\":{},\"tokens_per_s\":{:.1},\"tokens_per_cpu_s\":{:.1}}}",
                    s.tokens, s.seconds, s.rss_bytes, s.window_tokens_per_s, s.window_tokens_per_cpu_s
                )
            })
            .collect();
        writeln!(
            out,
            "{{\"model\":{:?},\"domains\":{:?},\"kernels\":{:?},\"threads\":{},\"tokens\":{},\"sessions\":{},\"reloads\":{},\"seconds\":{:.2},\"tokens_per_s\":{:.1},\"arena_bytes\":{},\"rss_min_bytes\":{},\"rss_max_bytes\":{},\"rss_flat\":{},\"early_tokens_per_cpu_s\":{:.1},\"late_tokens_per_cpu_s\":{:.1},\"probes\":{},\"probes_identical\":{},\"samples\":[{}]}}",
            a.model.model.display().to_string(), domains, engine.kernels().name, engine.threads(), generated, sessions, reloads, seconds, generated as f64 / seconds.max(1e-9), arena_bytes, rss_min, rss_max, rss_flat, early, late, first.len(), identical, list.join(",")
        )?;
    } else {
        writeln!(out, "model         {} (domains {})", a.model.model.display(), domains.join(", "))?;
        writeln!(out, "kernels       {}, {} thread(s)", engine.kernels().name, engine.threads())?;
        writeln!(out, "generated     {generated} tokens in {sessions} sessions, {reloads} reloads, {seconds:.1} s")?;
        writeln!(out, "speed         {:.1} tok/s of wall time overall", generated as f64 / seconds.max(1e-9))?;
        writeln!(
            out,
            "per CPU-s     first 3 windows {early:.1} tok/s, last 3 {late:.1} tok/s ({:.3}×)",
            late / early.max(1e-9)
        )?;
        writeln!(
            out,
            "RSS           {:.2}–{:.2} MiB after the first window (growth {rss_growth:.2} MiB; limit {} MiB)",
            mib(rss_min),
            mib(rss_max),
            a.max_rss_growth_mib
        )?;
        writeln!(out, "arena         {arena_bytes} bytes, one for the whole soak")?;
        writeln!(
            out,
            "probes        {} fixed-seed samples: {}",
            first.len(),
            if identical { "identical at start and end" } else { "DIFFER" }
        )?;
    }
    if !identical {
        for (i, (f, l)) in first.iter().zip(&last).enumerate().filter(|(_, (f, l))| f != l) {
            writeln!(err, "probe {i} at the start:\n{f}\nand at the end:\n{l}")?;
        }
        bail!("the same seeds gave different text at the end of the soak than at its start");
    }
    if !rss_flat {
        bail!("resident memory grew by {rss_growth:.2} MiB during the soak (more than --max-rss-growth-mib)");
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
