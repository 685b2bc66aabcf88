//! Byte-level BPE: GPT-2 pre-tokens, then rank-ordered merges per piece.

use core::cell::Cell;

use super::pretokenize::Pieces;
use super::{merge_sweep, Tokenizer};
use crate::error::Result;

impl<'a> Tokenizer<'a> {
    /// Rank and result of the merge `(left, right)`, if any (binary search in
    /// `merge_index`).
    pub(super) fn merge_rank(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let merges = self.merges;
        let key = Some((left, right));
        // Every rank is below `merges.len()` (checked at load); a `None` here
        // could only sort first, never match.
        let pos = self
            .merge_index
            .binary_search_by(|&rank| merges.get(rank as usize).map(|&[l, r, _]| (l, r)).cmp(&key))
            .ok()?;
        let rank = *self.merge_index.get(pos)?;
        let &[_, _, result] = merges.get(rank as usize)?;
        Some((rank, result))
    }

    /// Encodes text without special tokens, appending to `out[written..]`.
    pub(super) fn encode_bpe(&self, text: &str, out: &mut [u32], mut written: usize) -> Result<usize> {
        let mut remaining = text.len();
        for piece in Pieces::new(text) {
            let n = piece.len();
            let Some(buf) = out.get_mut(written..).and_then(|free| free.get_mut(..n)) else {
                // The piece's initial byte tokens do not fit in the scratch
                // space left; its tokens are at least n / max_token_len.
                let lower = written + remaining.div_ceil(self.max_token_len);
                return Err(self.too_long(out.len(), lower));
            };
            for (slot, &b) in buf.iter_mut().zip(piece.as_bytes()) {
                *slot = self.byte_token(b);
            }
            written += self.bpe_merge(buf);
            remaining -= n;
        }
        Ok(written)
    }

    /// Applies merges to the tokens in `buf` in place, with Hugging Face
    /// semantics: repeatedly merge the adjacent pair of lowest rank (leftmost
    /// on ties). Returns the new length.
    ///
    /// All occurrences of the lowest-ranked pair are merged in one left-to-right
    /// sweep, which is the order HF's priority queue pops them in; the sweep
    /// stops (and the lowest rank is searched again) as soon as a merge creates
    /// a pair of lower or equal rank, which HF would pop next.
    pub(super) fn bpe_merge(&self, buf: &mut [u32]) -> usize {
        if self.merge_index.is_empty() {
            return buf.len();
        }
        let mut live = Cell::from_mut(buf).as_slice_of_cells();
        loop {
            // (rank, result, left, right, position) of the leftmost lowest-ranked pair.
            let mut best: Option<(u32, u32, u32, u32, usize)> = None;
            for (i, (x, y)) in live.iter().zip(live.iter().skip(1)).enumerate() {
                let (x, y) = (x.get(), y.get());
                if let Some((rank, result)) = self.merge_rank(x, y) {
                    if best.is_none_or(|b| rank < b.0) {
                        best = Some((rank, result, x, y, i));
                    }
                }
            }
            let Some((rank, result, l, r, first)) = best else { return live.len() };
            live = merge_sweep(
                live,
                first,
                |x, y| (x == l && y == r).then_some(result),
                |x, y| self.merge_rank(x, y).is_some_and(|(k, _)| k <= rank),
            );
        }
    }
}
