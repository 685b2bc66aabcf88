//! Bits per byte with candle: the protocol of docs/CHECKPOINT.md is the
//! runtime's ([`edgelm_runtime::bpb`]: the document splitter, the scoring
//! windows, the totals), so `edgelm-train eval` and `edgelm eval` agree; here
//! the windows are scored in padded batches by a [`Scorer`].

use crate::corpus::split_documents;
use edgelm_runtime::bpb::{self, Totals};
use crate::model::Llama;
use crate::tokenizer::EdgeTokenizer;
use crate::Result;
use candle_core::Tensor;
use serde::Serialize;

/// Result of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalResult {
    pub documents: usize,
    pub bytes: u64,
    pub scored_tokens: u64,
    pub total_nats: f64,
    pub loss: f64,
    pub ppl: f64,
    pub bpb: f64,
}

impl EvalResult {
    pub fn from_totals(documents: usize, bytes: u64, scored: u64, nats: f64) -> Self {
        let t = Totals { nats, scored_tokens: scored, bytes, documents: documents as u64 };
        EvalResult {
            documents,
            bytes,
            scored_tokens: scored,
            total_nats: nats,
            loss: t.loss(),
            ppl: t.perplexity(),
            bpb: t.bpb(),
        }
    }
}

/// One window to score: `tokens` (len <= max_seq) and from which target index on
/// predictions count (target `i` is `tokens[i + 1]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub tokens: Vec<u32>,
    pub first_scored: usize,
}

/// Cuts a document's token sequence into the protocol's windows
/// ([`edgelm_runtime::bpb::windows`]). `unscored` leading targets (1 when a
/// tag follows BOS) are not scored.
pub fn windows(tokens: &[u32], max_seq: usize, unscored: usize) -> Vec<Window> {
    bpb::windows(tokens.len(), max_seq, unscored)
        .map(|w| Window { tokens: tokens[w.start..w.end].to_vec(), first_scored: w.first_scored - w.start })
        .collect()
}

/// Something that returns `-ln p` of each next token of a batch of windows.
pub trait Scorer {
    fn max_seq(&self) -> usize;
    /// For each window, the nats of targets `tokens[1..]` (len - 1 values).
    fn score(&self, windows: &[&[u32]]) -> Result<Vec<Vec<f64>>>;
}

/// A model as a scorer: windows padded to equal length and batched.
pub struct ModelScorer<'a> {
    pub model: &'a Llama,
    pub batch: usize,
}

impl Scorer for ModelScorer<'_> {
    fn max_seq(&self) -> usize {
        self.model.cfg.max_seq
    }
    fn score(&self, ws: &[&[u32]]) -> Result<Vec<Vec<f64>>> {
        score_windows(ws, self.batch, self.model.device(), &|x, y| self.model.token_losses(x, y))
    }
}

/// Per-token losses of windows, in batches of `batch` padded to the longest
/// window; `losses(inputs, targets)` returns `[rows·t]` per-position losses.
pub fn score_windows(
    ws: &[&[u32]],
    batch: usize,
    device: &candle_core::Device,
    losses: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(ws.len());
    for chunk in ws.chunks(batch.max(1)) {
        let t = chunk.iter().map(|w| w.len() - 1).max().unwrap_or(1).max(1);
        let mut x = vec![0u32; chunk.len() * t];
        let mut y = vec![0u32; chunk.len() * t];
        for (r, w) in chunk.iter().enumerate() {
            let n = w.len() - 1;
            x[r * t..r * t + n].copy_from_slice(&w[..n]);
            y[r * t..r * t + n].copy_from_slice(&w[1..]);
        }
        let xt = Tensor::from_vec(x, (chunk.len(), t), device)?;
        let yt = Tensor::from_vec(y, (chunk.len(), t), device)?;
        let l = losses(&xt, &yt)?.to_vec1::<f32>()?;
        for (r, w) in chunk.iter().enumerate() {
            out.push(l[r * t..r * t + w.len() - 1].iter().map(|&v| v as f64).collect());
        }
    }
    Ok(out)
}

/// Evaluates `text` (a corpus file's contents) per the protocol.
pub fn evaluate(scorer: &dyn Scorer, tok: &EdgeTokenizer, text: &str, tag: Option<u32>) -> Result<EvalResult> {
    let docs: Vec<&str> = split_documents(text).into_iter().map(|(_, d)| d).collect();
    let enc = tok.encode_batch(&docs)?;
    let mut all = Vec::new();
    for ids in enc {
        let mut t = Vec::with_capacity(ids.len() + 3);
        t.push(tok.eot_id());
        if let Some(tag) = tag {
            t.push(tag);
        }
        t.extend(ids);
        t.push(tok.eot_id());
        all.extend(windows(&t, scorer.max_seq(), tag.is_some() as usize));
    }
    // Sort by length so batches pad little; the sum does not depend on order
    // beyond float rounding, which is done in f64.
    all.sort_by_key(|w| std::cmp::Reverse(w.tokens.len()));
    let refs: Vec<&[u32]> = all.iter().map(|w| w.tokens.as_slice()).collect();
    let scores = scorer.score(&refs)?;
    let mut nats = 0f64;
    let mut scored = 0u64;
    for (w, s) in all.iter().zip(scores) {
        for v in &s[w.first_scored.min(s.len())..] {
            nats += v;
            scored += 1;
        }
    }
    let bytes = docs.iter().map(|d| d.len() as u64).sum();
    Ok(EvalResult::from_totals(docs.len(), bytes, scored, nats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_protocol() {
        let t: Vec<u32> = (0..7).collect();
        let w = windows(&t, 4, 0);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].tokens, vec![0, 1, 2, 3]);
        assert_eq!(w[1].tokens, vec![3, 4, 5, 6]);
        // 6 targets scored in total = len - 1.
        let scored: usize = w.iter().map(|w| w.tokens.len() - 1 - w.first_scored).sum();
        assert_eq!(scored, 6);
        let w = windows(&t, 3, 1);
        assert_eq!(
            w.iter().map(|w| w.tokens.clone()).collect::<Vec<_>>(),
            vec![vec![0, 1, 2], vec![2, 3, 4], vec![4, 5, 6]]
        );
        assert_eq!(w[0].first_scored, 1);
        assert_eq!(w[1].first_scored, 0);
        assert!(windows(&[0], 4, 0).is_empty());
    }
}
