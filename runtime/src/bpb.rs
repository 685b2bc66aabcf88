//! Bits per byte, the protocol of `docs/CHECKPOINT.md`, in one place: the
//! document splitter, the scoring windows and the totals. `edgelm eval`
//! scores with a [`Session`]; the trainer scores the same windows with candle
//! and adds its nats to the same [`Totals`], so the numbers compare across tools.
//!
//! 1. documents = text between lines that are exactly `<|endoftext|>` (a
//!    `\r` before the line's `\n` is allowed), each without its final `\n`,
//!    empty ones skipped;
//! 2. tokens = `[bos] (+ tag) + encode(doc) + [eos]`; the tag is context, not scored;
//! 3. every token after the first is scored with `-ln p(token | previous)`; a
//!    document longer than the context is scored in consecutive windows of
//!    `max_seq` tokens, each window after the first starting with the last token
//!    of the previous one as its only context;
//! 4. `bpb = nats / ln 2 / document bytes` (0 for no bytes), `loss = nats /
//!    scored tokens`, `ppl = exp(loss)`.
//!
//! No allocation and no `std`: a firmware can score text too.

use crate::error::{Error, Result};
use crate::kernels::{Kernels, REFERENCE};
use crate::session::Session;

/// The document separator line.
pub const SEPARATOR: &str = "<|endoftext|>";

/// Documents of a corpus text with the (1-based) line each starts on.
pub fn documents_with_lines(text: &str) -> Documents<'_> {
    Documents { text, pos: 0, line: 1 }
}

/// Documents of a corpus text (see the module's step 1).
pub fn documents(text: &str) -> impl Iterator<Item = &str> {
    documents_with_lines(text).map(|(_, d)| d)
}

/// Iterator of [`documents_with_lines`].
#[derive(Debug, Clone)]
pub struct Documents<'t> {
    text: &'t str,
    /// Byte offset where the next document starts.
    pos: usize,
    /// Line number at `pos`.
    line: usize,
}

impl<'t> Iterator for Documents<'t> {
    type Item = (usize, &'t str);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(rest) = self.text.get(self.pos..).filter(|r| !r.is_empty()) {
            let start_line = self.line;
            // Walk lines until a separator line or the end of the text: the
            // document is `rest[..doc_len]`, the next one starts `used` bytes on.
            let (mut doc_len, mut used) = (rest.len(), rest.len());
            let mut at = 0;
            for line in rest.split_inclusive('\n') {
                self.line += 1;
                let text = line.strip_suffix('\n').unwrap_or(line);
                if text.strip_suffix('\r').unwrap_or(text) == SEPARATOR {
                    (doc_len, used) = (at, at + line.len());
                    break;
                }
                at += line.len();
            }
            self.pos += used;
            let doc = rest.get(..doc_len).unwrap_or_default();
            let doc = doc.strip_suffix('\n').unwrap_or(doc);
            if !doc.is_empty() {
                return Some((start_line, doc));
            }
        }
        None
    }
}

/// One scoring window over a document's token sequence: tokens
/// `start..end`; the prediction of token `i + 1` counts for `i >= first_scored`
/// (indices into the whole sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub first_scored: usize,
}

/// The windows of a sequence of `len` tokens for a context of `max_seq`
/// tokens, the first `unscored` predictions (a tag after BOS) not scored.
pub fn windows(len: usize, max_seq: usize, unscored: usize) -> impl Iterator<Item = Window> {
    let max_seq = max_seq.max(2);
    let mut start = 0usize;
    core::iter::from_fn(move || {
        if start + 1 >= len {
            return None;
        }
        let end = (start + max_seq).min(len);
        let w = Window { start, end, first_scored: unscored.max(start) };
        start = end - 1;
        Some(w)
    })
}

/// Sums over scored documents.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// `Σ -ln p` over scored tokens.
    pub nats: f64,
    pub scored_tokens: u64,
    /// UTF-8 bytes of the documents.
    pub bytes: u64,
    pub documents: u64,
}

impl Totals {
    /// Bits per byte; 0 when no bytes were scored.
    pub fn bpb(&self) -> f64 {
        if self.bytes == 0 {
            return 0.0;
        }
        self.nats / core::f64::consts::LN_2 / self.bytes as f64
    }

    /// Mean nats per scored token (0 for none).
    pub fn loss(&self) -> f64 {
        self.nats / self.scored_tokens.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        libm::exp(self.loss())
    }
}

/// `-ln softmax(logits)[target]`, in f64: one lane-parallel pass for the
/// max ([`crate::kernels::reference::max`]), one for `Σ e^(v − max)` with a branch-free f32 `exp` ([`crate::kernels::reference::exp`]) summed
/// in f64 lanes; both loops vectorise on the baseline target (SSE2, NEON).
/// Against the all-f64 form (`max + ln Σ exp_f64(v − max)`, used before) a
/// token's nats differ by ≤ 1e-6·max(nats, 1) (tested here), and bits per
/// byte by < 1e-6 relative (tested over synthetic models in `runtime/tests/nll.rs`).
/// A `target` past the logits is [`Error::BadToken`].
pub fn nll(logits: &[f32], target: u32) -> Result<f64> {
    nll_with(&REFERENCE, logits, target)
}

/// [`nll`] with the max and the sum of exponentials on `k`'s kernels
/// ([`Kernels::max`]: the same value on every path; [`Kernels::sum_exp`]:
/// the same or within 1e-6 relative).
pub fn nll_with(k: &Kernels, logits: &[f32], target: u32) -> Result<f64> {
    let &logit = logits.get(target as usize).ok_or(Error::BadToken(target))?;
    let max = (k.max)(logits);
    let lse = max as f64 + libm::log((k.sum_exp)(logits, max));
    Ok(lse - logit as f64)
}

/// Scores one document with `session` (its domain and context length) and
/// adds it to `totals`. `buf` holds the token sequence: `doc.len() + 8`
/// entries are always enough (a token covers at least one byte).
pub fn score_document(session: &mut Session<'_, '_>, doc: &str, buf: &mut [u32], totals: &mut Totals) -> Result<()> {
    let domain = session.domain();
    let tok = domain.tokenizer;
    let info = *tok.info();
    let (bos, eos) = match (info.bos, info.eos) {
        (Some(b), Some(e)) => (b, e),
        _ => return Err(Error::BadTokenizer("evaluation needs BOS and EOS tokens")),
    };
    let prefix: &[u32] = match domain.tag_token {
        Some(tag) => &[bos, tag],
        None => &[bos],
    };
    let too_small = Error::BadSetting("score_document: token buffer too small");
    let (head, rest) = buf.split_at_mut_checked(prefix.len()).ok_or(too_small.clone())?;
    head.copy_from_slice(prefix);
    // the text's tokens, with one slot kept for EOS
    let room = rest.len().checked_sub(1).ok_or(too_small.clone())?;
    let n = tok.encode(doc, rest.get_mut(..room).ok_or(too_small.clone())?)?;
    *rest.get_mut(n).ok_or(too_small.clone())? = eos;
    let seq = buf.get(..prefix.len() + n + 1).ok_or(too_small)?;

    for w in windows(seq.len(), session.max_seq(), prefix.len() - 1) {
        session.reset();
        // window tokens `start..end - 1` predict `start + 1..end`
        let inputs = seq
            .get(w.start..w.end.saturating_sub(1))
            .ok_or(Error::BadSetting("score_document: window past the tokens"))?;
        let targets = seq.get(w.start + 1..w.end).unwrap_or_default();
        // in blocks when the session has block buffers and a fused head, or keeps
        // block logits (`Session::extend_nll`), within the batched path's tolerance
        // of the token-by-token one; the sums below in token order either way
        session.extend_nll(inputs, targets, &mut |i, nats| {
            if w.start + i >= w.first_scored {
                totals.nats += nats;
                totals.scored_tokens += 1;
            }
        })?;
    }
    totals.bytes += doc.len() as u64;
    totals.documents += 1;
    Ok(())
}

/// [`score_document`] with a buffer of its own.
#[cfg(feature = "alloc")]
pub fn eval_document(session: &mut Session<'_, '_>, doc: &str, totals: &mut Totals) -> Result<()> {
    let mut buf = alloc::vec![0u32; doc.len() + 8];
    score_document(session, doc, &mut buf, totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;

    fn docs(t: &str) -> alloc::vec::Vec<(usize, &str)> {
        documents_with_lines(t).collect()
    }

    extern crate alloc;

    #[test]
    fn splits_per_protocol() {
        let t = "a\nb\n<|endoftext|>\n\n<|endoftext|>\nc\n<|endoftext|>\n";
        assert_eq!(docs(t), [(1, "a\nb"), (6, "c")]);
        // A separator-like line inside text is not a separator.
        assert_eq!(docs("x <|endoftext|>\ny"), [(1, "x <|endoftext|>\ny")]);
        assert_eq!(docs("<|endoftext|>\nz\n<|endoftext|>"), [(2, "z")]);
        // CRLF separators split too; the text keeps its own bytes.
        assert_eq!(docs("a\r\n<|endoftext|>\r\nb\r\n"), [(1, "a\r"), (3, "b\r")]);
        assert!(docs("").is_empty());
        assert!(docs("<|endoftext|>\n<|endoftext|>\n").is_empty());
    }

    #[test]
    fn windows_follow_protocol() {
        let w: alloc::vec::Vec<Window> = windows(7, 4, 0).collect();
        assert_eq!(w, [Window { start: 0, end: 4, first_scored: 0 }, Window { start: 3, end: 7, first_scored: 3 }]);
        let scored: usize = w.iter().map(|w| w.end - 1 - w.first_scored).sum();
        assert_eq!(scored, 6, "every token after the first, once");
        let w: alloc::vec::Vec<(usize, usize)> = windows(7, 3, 1).map(|w| (w.start, w.end)).collect();
        assert_eq!(w, [(0, 3), (2, 5), (4, 7)]);
        assert_eq!(windows(7, 3, 1).next().unwrap().first_scored, 1);
        assert_eq!(windows(1, 4, 0).count(), 0);
    }

    /// The all-f64 form `nll` replaced.
    fn nll_f64(logits: &[f32], target: u32) -> f64 {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max + libm::log(logits.iter().map(|&v| libm::exp(v as f64 - max)).sum::<f64>());
        lse - logits[target as usize] as f64
    }

    /// Units in the last place between two positive finite f32s.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_within_2_ulp_of_libm() {
        let mut worst = (0u32, 0f32);
        // a dense grid over the whole clamped range, and the region nll uses most
        let grid = (0..=1_754_000).map(|i| reference::EXP_MIN + i as f32 * 1e-4);
        let near0 = (0..=200_000).map(|i| -(i as f32) * 1e-4);
        for x in grid.chain(near0).filter(|&x| x <= reference::EXP_MAX) {
            let (got, want) = (reference::exp(x), libm::expf(x));
            let u = ulps(got, want);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "exp is {} ulp from expf at {}", worst.0, worst.1);
        assert_eq!(reference::exp(0.0), 1.0);
        // clamped: finite, tiny, never NaN
        assert!(reference::exp(-1e30) > 0.0 && reference::exp(-1e30) < 1.2e-38);
        assert!(reference::exp(f32::NEG_INFINITY) < 1.2e-38);
        assert!(reference::exp(1e30).is_finite());
    }

    #[test]
    fn nll_close_to_the_f64_form() {
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as f32 / u32::MAX as f32
        };
        for &n in &[1usize, 2, 7, 8, 9, 63, 320, 4096, 32000] {
            for spread in [0.1f32, 3.0, 30.0, 200.0] {
                let logits: alloc::vec::Vec<f32> = (0..n).map(|_| (next() - 0.5) * spread).collect();
                for target in [0, n / 2, n - 1] {
                    let (got, want) = (nll(&logits, target as u32).unwrap(), nll_f64(&logits, target as u32));
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "n {n} spread {spread} target {target}: {got} vs {want}"
                    );
                }
            }
        }
        // one dominant logit: nll of it is ~0, of the others ~the gap
        let mut l = alloc::vec![0f32; 100];
        l[3] = 40.0;
        assert!(nll(&l, 3).unwrap() < 1e-15 && (nll(&l, 0).unwrap() - 40.0).abs() < 1e-5);
    }

    #[test]
    fn nll_target_past_the_logits_is_an_error() {
        let l = [0.0f32, 1.0, 2.0];
        assert!(nll(&l, 2).is_ok());
        assert_eq!(nll(&l, 3), Err(Error::BadToken(3)));
        assert_eq!(nll(&l, u32::MAX), Err(Error::BadToken(u32::MAX)));
        assert_eq!(nll(&[], 0), Err(Error::BadToken(0)));
    }

    #[test]
    fn totals() {
        assert_eq!(Totals::default().bpb(), 0.0);
        let t = Totals { nats: 10.0, scored_tokens: 10, bytes: 8, documents: 2 };
        assert!((t.bpb() - 10.0 / core::f64::consts::LN_2 / 8.0).abs() < 1e-12);
        assert!((t.loss() - 1.0).abs() < 1e-12);
        assert!((nll(&[0.0, 0.0], 1).unwrap() - core::f64::consts::LN_2).abs() < 1e-12);
    }
}
