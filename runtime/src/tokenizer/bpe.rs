//! Byte-level BPE: GPT-2 pre-tokens, then rank-ordered merges per piece.

use super::pretokenize::Pieces;
use super::Tokenizer;
use crate::error::Result;

impl<'a> Tokenizer<'a> {
    /// Rank of the merge `(left, right)`, if any (binary search in `merge_index`).
    pub(super) fn merge_rank(&self, left: u32, right: u32) -> Option<u32> {
        let merges = self.merges;
        let key = (left, right);
        let pos = self
            .merge_index
            .binary_search_by(|&rank| {
                let k = rank as usize * 3;
                (merges[k], merges[k + 1]).cmp(&key)
            })
            .ok()?;
        Some(self.merge_index[pos])
    }

    /// Encodes text without special tokens, appending to `out[written..]`.
    pub(super) fn encode_bpe(&self, text: &str, out: &mut [u32], mut written: usize) -> Result<usize> {
        let mut remaining = text.len();
        for piece in Pieces::new(text) {
            let n = piece.len();
            let free = out.len() - written;
            if n > free {
                // The piece's initial byte tokens do not fit in the scratch
                // space left; its tokens are at least n / max_token_len.
                let lower = written + remaining.div_ceil(self.max_token_len);
                return Err(self.too_long(out.len(), lower));
            }
            let buf = &mut out[written..written + n];
            for (slot, &b) in buf.iter_mut().zip(piece.as_bytes()) {
                *slot = self.byte_tokens[b as usize];
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
        let mut n = buf.len();
        if self.merge_index.is_empty() {
            return n;
        }
        loop {
            let mut best = u32::MAX;
            let mut first = 0;
            for i in 0..n.saturating_sub(1) {
                if let Some(r) = self.merge_rank(buf[i], buf[i + 1]) {
                    if r < best {
                        best = r;
                        first = i;
                    }
                }
            }
            if best == u32::MAX {
                return n;
            }
            let k = best as usize * 3;
            let (l, r, res) = (self.merges[k], self.merges[k + 1], self.merges[k + 2]);
            let mut w = first;
            let mut i = first;
            let mut stop = false;
            while i < n {
                if !stop && i + 1 < n && buf[i] == l && buf[i + 1] == r {
                    buf[w] = res;
                    if w > 0 && self.merge_rank(buf[w - 1], res).is_some_and(|x| x <= best) {
                        stop = true;
                    }
                    if i + 2 < n && self.merge_rank(res, buf[i + 2]).is_some_and(|x| x <= best) {
                        stop = true;
                    }
                    w += 1;
                    i += 2;
                } else {
                    buf[w] = buf[i];
                    w += 1;
                    i += 1;
                }
            }
            n = w;
        }
    }
}
