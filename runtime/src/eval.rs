//! Bits per byte of a text, by the protocol in `docs/CHECKPOINT.md` (the
//! trainer implements the same one, so numbers compare across tools).

use std::vec;
use std::vec::Vec;

use crate::error::{Error, Result};
use crate::session::Session;

/// Totals over evaluated documents.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalTotals {
    pub nats: f64,
    pub scored_tokens: u64,
    pub bytes: u64,
    pub documents: u64,
}

impl EvalTotals {
    pub fn bpb(&self) -> f64 {
        if self.bytes == 0 {
            return f64::NAN;
        }
        self.nats / core::f64::consts::LN_2 / self.bytes as f64
    }
    pub fn loss(&self) -> f64 {
        self.nats / self.scored_tokens.max(1) as f64
    }
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }
}

/// Documents of a corpus file: text between lines that are exactly
/// `<|endoftext|>`, final newline removed, empty ones skipped.
pub fn documents(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    core::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (doc, tail) = match find_separator(rest) {
            Some((start, end)) => (&rest[..start], &rest[end..]),
            None => (rest, ""),
        };
        rest = tail;
        let doc = doc.strip_suffix('\n').unwrap_or(doc);
        if !doc.is_empty() {
            return Some(doc);
        }
    })
}

/// `(start, end)` of the first separator line (`<|endoftext|>` + newline).
fn find_separator(s: &str) -> Option<(usize, usize)> {
    const SEP: &str = "<|endoftext|>";
    let mut from = 0;
    while let Some(i) = s[from..].find(SEP) {
        let at = from + i;
        let line_start = at == 0 || s.as_bytes()[at - 1] == b'\n';
        let after = at + SEP.len();
        let line_end = after == s.len() || s.as_bytes()[after] == b'\n';
        if line_start && line_end {
            return Some((at, (after + 1).min(s.len())));
        }
        from = after;
    }
    None
}

fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    lse - logits[target as usize] as f64
}

/// Scores one document with `session` (its domain and context length).
pub fn eval_document(session: &mut Session<'_, '_>, doc: &str, totals: &mut EvalTotals) -> Result<()> {
    let domain = session.domain();
    let tok = domain.tokenizer;
    let info = *tok.info();
    let (bos, eos) = match (info.bos, info.eos) {
        (Some(b), Some(e)) => (b, e),
        _ => return Err(Error::BadTokenizer("evaluation needs BOS and EOS tokens")),
    };
    // encode into a buffer that grows until the document fits
    let mut buf = vec![0u32; doc.len() + 8];
    let n = tok.encode(doc, &mut buf)?;
    let mut seq: Vec<u32> = Vec::with_capacity(n + 3);
    seq.push(bos);
    let context_only = if let Some(tag) = domain.tag_token {
        seq.push(tag);
        2
    } else {
        1
    };
    seq.extend_from_slice(&buf[..n]);
    seq.push(eos);

    let window = session.max_seq();
    let mut start = 0;
    // the first window's context prefix (BOS, tag) is not scored
    let mut first_scored = context_only;
    while start + 1 < seq.len() {
        let end = (start + window).min(seq.len());
        session.reset();
        for (i, &t) in seq[start..end].iter().enumerate() {
            let pos = start + i;
            if pos + 1 >= end {
                break;
            }
            let logits = session.step(t)?;
            if pos + 1 >= first_scored {
                totals.nats += nll(logits, seq[pos + 1]);
                totals.scored_tokens += 1;
            }
        }
        first_scored = 0;
        start = end - 1;
    }
    totals.bytes += doc.len() as u64;
    totals.documents += 1;
    Ok(())
}
