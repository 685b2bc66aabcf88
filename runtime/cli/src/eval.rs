//! `edgelm eval`: bits per byte of a text file.
//!
//! Documents are independent, so with `--threads N` and at least N documents
//! they are shared among N workers, each with a session of its own whose
//! products run on one thread: that scales with cores, where splitting one
//! token's products among threads does not (a product of the shipped models
//! is too small to pay for the hand-over). Each document's sums are kept and
//! added in file order, so the result is the same for every N.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use edgelm_runtime::bpb::{documents, score_document, Totals};
use edgelm_runtime::{Engine, SessionOptions};

use crate::{check_threads, domain_name, open_with_threads, session_options, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
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

pub fn eval(e: EvalArgs) -> Result<()> {
    let text = std::fs::read_to_string(&e.textfile)
        .with_context(|| format!("cannot read {} (is it UTF-8 text?)", e.textfile.display()))?;
    let docs: Vec<&str> = documents(&text).take(e.limit.unwrap_or(usize::MAX)).collect();
    if docs.is_empty() {
        bail!("{}: no documents (the file is empty or holds only <|endoftext|> lines)", e.textfile.display());
    }
    let threads = check_threads(e.model.threads)?;
    // one worker per thread when there are documents enough; else the
    // products of one session are split among the threads
    let workers = if docs.len() >= threads { threads } else { 1 };
    let engine = open_with_threads(&e.model, if workers > 1 { 1 } else { threads })?;
    let domain = domain_name(&engine.model()?, &e.model)?;
    // every token's logits are scored: keep a block's worth (`block_logits`)
    let opts = SessionOptions { block_logits: true, ..session_options(&engine, &e.model) };
    let t0 = Instant::now();
    let per_doc = score_all(&engine, &domain, opts, &docs, workers)?;
    let mut totals = Totals::default();
    for t in &per_doc {
        totals.nats += t.nats;
        totals.scored_tokens += t.scored_tokens;
        totals.bytes += t.bytes;
        totals.documents += t.documents;
    }
    let secs = t0.elapsed().as_secs_f64();
    let tps = totals.scored_tokens as f64 / secs.max(1e-9);
    let mut out = std::io::stdout().lock();
    if e.json {
        // the field names of `edgelm-train eval --json`
        writeln!(
            out,
            "{{\"file\":{:?},\"domain\":{:?},\"documents\":{},\"bytes\":{},\"scored_tokens\":{},\"total_nats\":{},\"loss\":{},\"ppl\":{},\"bpb\":{},\"seconds\":{:.2},\"tokens_per_s\":{:.1},\"kv\":{:?},\"threads\":{}}}",
            e.textfile.display().to_string(), domain, totals.documents, totals.bytes, totals.scored_tokens, totals.nats, totals.loss(), totals.perplexity(), totals.bpb(), secs, tps, opts.kv.name(), threads
        )?;
    } else {
        writeln!(out, "domain      {domain}")?;
        writeln!(out, "documents   {} ({} bytes, {} tokens)", totals.documents, totals.bytes, totals.scored_tokens)?;
        writeln!(out, "loss        {:.4} nats/token (ppl {:.2})", totals.loss(), totals.perplexity())?;
        writeln!(out, "bpb         {:.4} bits/byte", totals.bpb())?;
        let how = if workers > 1 { format!("{workers} workers") } else { format!("{threads} thread(s)") };
        writeln!(out, "speed       {tps:.1} scored tokens/s ({secs:.2} s, {how}, kv {})", opts.kv.name())?;
    }
    Ok(())
}

/// Each document's sums, in `docs` order, scored by `workers` sessions that
/// take the next unscored document as they finish one, the longest first:
/// the last documents taken are the shortest, so the workers finish
/// together (in file order a long story taken last kept one core busy
/// alone for up to its whole length).
fn score_all(
    engine: &Engine,
    domain: &str,
    opts: SessionOptions,
    docs: &[&str],
    workers: usize,
) -> Result<Vec<Totals>> {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(docs[i].len()));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Totals>>> = Mutex::new(vec![None; docs.len()]);
    let worker = || -> Result<()> {
        engine.with_session(Some(domain), opts, |session| -> Result<()> {
            // a token covers at least one byte: the longest document + 8 is enough
            let mut buf = vec![0u32; docs.iter().map(|d| d.len()).max().unwrap_or(0) + 8];
            loop {
                let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(()) };
                let Some(doc) = docs.get(i) else { return Ok(()) };
                let mut t = Totals::default();
                if let Err(err) = score_document(session, doc, &mut buf, &mut t) {
                    next.store(docs.len(), Ordering::Relaxed); // the other workers stop too
                    return Err(err).with_context(|| format!("document {}", i + 1));
                }
                let mut r = results.lock().map_err(|_| anyhow::anyhow!("a worker failed"))?;
                if let Some(slot) = r.get_mut(i) {
                    *slot = Some(t);
                }
            }
        })
    };
    if workers == 1 {
        worker()?;
    } else {
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("an eval worker panicked"))??;
            }
            Ok(())
        })?;
    }
    let r = results.into_inner().map_err(|_| anyhow::anyhow!("a worker failed"))?;
    r.into_iter().enumerate().map(|(i, t)| t.with_context(|| format!("document {} was not scored", i + 1))).collect()
}
