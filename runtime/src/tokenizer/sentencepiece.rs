//! SentencePiece-style BPE, exactly as llama2.c `run.c` `encode()`: UTF-8
//! characters looked up in the vocabulary (else one byte-fallback token per
//! byte), then repeatedly merge the adjacent pair whose concatenation is in
//! the vocabulary with the highest score (leftmost on ties).

use core::cell::Cell;
use core::cmp::Ordering;

use super::{cmp_concat, merge_sweep, Tokenizer};
use crate::error::Result;

/// run.c starts its search at this score with a strict `>`: pairs scoring
/// at or below it (or NaN) are never merged.
const MIN_SCORE: f32 = -1e10;

impl<'a> Tokenizer<'a> {
    /// The token whose bytes are `a ++ b` in `sorted_vocab` (run.c's `str_lookup`).
    pub(super) fn sp_lookup(&self, a: &[u8], b: &[u8]) -> Option<u32> {
        let pos = self.sorted_vocab.binary_search_by(|&id| cmp_concat(self.token_bytes(id), a, b)).ok()?;
        self.sorted_vocab.get(pos).copied()
    }

    /// `(exact match, some token starts with s)` for `s` in `sorted_vocab`.
    fn sp_probe(&self, s: &[u8]) -> (bool, bool) {
        let pos = self.sorted_vocab.partition_point(|&id| self.token_bytes(id) < s);
        match self.sorted_vocab.get(pos) {
            Some(&id) => {
                let t = self.token_bytes(id);
                (t == s, t.starts_with(s))
            }
            None => (false, false),
        }
    }

    /// The merge of `x` and `y` and its score, if their concatenation is a
    /// token. Byte-fallback tokens never merge (in run.c their text is
    /// `<0xXX>`, which no real piece extends).
    fn sp_pair(&self, x: u32, y: u32) -> Option<(u32, f32)> {
        if self.is_byte_token(x) || self.is_byte_token(y) {
            return None;
        }
        let id = self.sp_lookup(self.token_bytes(x), self.token_bytes(y))?;
        let score = *self.scores.get(id as usize)?;
        if score > MIN_SCORE {
            Some((id, score))
        } else {
            None
        }
    }

    /// Initial tokens of one character: `1` vocabulary token, or one
    /// byte-fallback token per byte. Writes them to `out` as far as it is long enough.
    fn sp_char(&self, c: char, out: &mut [u32]) -> usize {
        let mut utf8 = [0u8; 4];
        let c = c.encode_utf8(&mut utf8).as_bytes();
        match self.sp_lookup(c, b"") {
            Some(id) => {
                if let Some(slot) = out.first_mut() {
                    *slot = id;
                }
                1
            }
            None => {
                for (slot, &b) in out.iter_mut().zip(c) {
                    *slot = self.byte_token(b);
                }
                c.len()
            }
        }
    }

    /// Whether no vocabulary token spans byte position `q` of `t`: then no
    /// merge can cross `q`, and the text on either side encodes independently.
    fn sp_hard_cut(&self, t: &[u8], q: usize) -> bool {
        let max = self.max_token_len;
        let a_min = q.saturating_sub(max.saturating_sub(1));
        for a in a_min..q {
            let b_max = core::cmp::min(t.len(), a + max);
            for b in q + 1..=b_max {
                // `a < q < b <= t.len()`: always `Some`; "not a cut" is the safe answer.
                let Some(s) = t.get(a..b) else { return false };
                let (exact, prefix) = self.sp_probe(s);
                if exact {
                    return false;
                }
                if !prefix {
                    break;
                }
            }
        }
        true
    }

    /// Encodes text without special tokens (with the dummy prefix `" "` in
    /// front if `lead`), appending to `out[written..]`.
    ///
    /// run.c merges over the whole text at once. Here the text is processed
    /// in chunks that fit in the free part of `out`, cut only where no token
    /// of the vocabulary spans the cut, so that merges on either side are
    /// independent and the result is identical.
    pub(super) fn encode_sp(&self, mut lead: bool, text: &str, out: &mut [u32], mut written: usize) -> Result<usize> {
        let mut rest = text;
        while !rest.is_empty() || lead {
            let estimate = written + (rest.len() + lead as usize).div_ceil(self.max_token_len);
            let limit = out.len();
            let too_long = || self.too_long(limit, estimate);
            let Some(buf) = out.get_mut(written..) else { return Err(too_long()) };
            let free = buf.len();
            let mut s = 0;
            if lead {
                let Some(slot) = buf.first_mut() else { return Err(too_long()) };
                *slot = self.space_token;
                s = 1;
            }
            // The initial tokens of `rest[..p]` fit in `buf`.
            let mut p = rest.len();
            let mut full = false;
            for (i, c) in rest.char_indices() {
                // Writes what fits; a partial write past `free` is ignored.
                let need = self.sp_char(c, buf.get_mut(s..).unwrap_or_default());
                if s + need > free {
                    p = i;
                    full = true;
                    break;
                }
                s += need;
            }
            let (chunk, next) = if full {
                let min_cut = if lead { self.max_token_len } else { 0 };
                let mut q = p;
                loop {
                    if q == 0 {
                        // No independent prefix fits in the space left.
                        return Err(too_long());
                    }
                    if q >= min_cut {
                        // `None` unless `q` is a character boundary.
                        if let Some(split) = rest.split_at_checked(q) {
                            if self.sp_hard_cut(rest.as_bytes(), q) {
                                break split;
                            }
                        }
                    }
                    q -= 1;
                }
            } else {
                (rest, "")
            };
            // Drop the initial tokens of the characters between the cut and `p`.
            for (i, c) in next.char_indices() {
                if chunk.len() + i >= p {
                    break;
                }
                s -= self.sp_char(c, &mut []);
            }
            let Some(tokens) = buf.get_mut(..s) else { return Err(too_long()) };
            written += self.sp_merge(tokens);
            rest = next;
            lead = false;
        }
        Ok(written)
    }

    /// run.c's merge loop on `buf` in place; returns the new length.
    ///
    /// All pairs with the best score are merged in one left-to-right sweep
    /// (the order run.c picks them in); the sweep stops, and the best score is
    /// searched again, when a merge creates a pair scoring at least as high.
    pub(super) fn sp_merge(&self, buf: &mut [u32]) -> usize {
        let mut live = Cell::from_mut(buf).as_slice_of_cells();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for (i, (x, y)) in live.iter().zip(live.iter().skip(1)).enumerate() {
                if let Some((_, sc)) = self.sp_pair(x.get(), y.get()) {
                    if best.is_none_or(|(b, _)| sc.partial_cmp(&b) == Some(Ordering::Greater)) {
                        best = Some((sc, i));
                    }
                }
            }
            let Some((top, first)) = best else { return live.len() };
            live = merge_sweep(
                live,
                first,
                |x, y| self.sp_pair(x, y).and_then(|(id, sc)| (sc >= top).then_some(id)),
                |x, y| self.sp_pair(x, y).is_some_and(|(_, sc)| sc >= top),
            );
        }
    }
}
