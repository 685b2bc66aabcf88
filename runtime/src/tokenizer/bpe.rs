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
        let mut memo = RankMemo::new();
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
            written += self.bpe_merge(buf, &mut memo);
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
    pub(super) fn bpe_merge(&self, buf: &mut [u32], memo: &mut RankMemo) -> usize {
        if self.merge_index.is_empty() {
            return buf.len();
        }
        let mut live = Cell::from_mut(buf).as_slice_of_cells();
        loop {
            // (rank, result, left, right, position) of the leftmost lowest-ranked pair.
            let mut best: Option<(u32, u32, u32, u32, usize)> = None;
            for (i, (x, y)) in live.iter().zip(live.iter().skip(1)).enumerate() {
                let (x, y) = (x.get(), y.get());
                if let Some((rank, result)) = memo.rank(self, x, y) {
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
                |x, y| memo.rank(self, x, y).is_some_and(|(k, _)| k <= rank),
            );
        }
    }
}

/// The last merge ranks looked up, by pair, for one text: a word's pairs are
/// ranked again after each of its merges, and common pairs recur from word
/// to word, where each [`Tokenizer::merge_rank`] is a binary search through
/// two tables (about a dozen dependent loads). Direct-mapped, 1 KiB of
/// stack; a miss looks the pair up and replaces the slot's entry.
pub(super) struct RankMemo {
    /// `left << 32 | right` of each slot's pair (`u64::MAX`: empty; token
    /// ids are below 2²⁰).
    pairs: [u64; MEMO_SLOTS],
    /// `rank << 32 | result`, or `u64::MAX` for no merge.
    found: [u64; MEMO_SLOTS],
}

const MEMO_SLOTS: usize = 64;

impl RankMemo {
    pub(super) fn new() -> Self {
        RankMemo { pairs: [u64::MAX; MEMO_SLOTS], found: [0; MEMO_SLOTS] }
    }

    /// [`Tokenizer::merge_rank`] of `(left, right)` through the memo.
    fn rank(&mut self, tok: &Tokenizer<'_>, left: u32, right: u32) -> Option<(u32, u32)> {
        let key = (left as u64) << 32 | right as u64;
        let slot = (left.wrapping_mul(0x9E37_79B1) ^ right.wrapping_mul(0x85EB_CA77)) as usize >> 3 & (MEMO_SLOTS - 1);
        let (Some(pair), Some(found)) = (self.pairs.get_mut(slot), self.found.get_mut(slot)) else {
            return tok.merge_rank(left, right);
        };
        if *pair != key {
            *pair = key;
            *found = tok.merge_rank(left, right).map_or(u64::MAX, |(rank, result)| (rank as u64) << 32 | result as u64);
        }
        (*found != u64::MAX).then_some(((*found >> 32) as u32, *found as u32))
    }
}
