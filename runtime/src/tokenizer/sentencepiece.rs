//! SentencePiece-style BPE, exactly as llama2.c `run.c` `encode()`: UTF-8
//! characters looked up in the vocabulary (else one byte-fallback token per
//! byte), then repeatedly merge the adjacent pair whose concatenation is in
//! the vocabulary with the highest score (leftmost on ties).

use core::cmp::Ordering;

use super::{cmp_concat, Tokenizer};
use crate::error::Result;

/// run.c starts its search at this score with a strict `>`: pairs scoring
/// at or below it (or NaN) are never merged.
const MIN_SCORE: f32 = -1e10;

impl<'a> Tokenizer<'a> {
    /// The token whose bytes are `a ++ b` in `sorted_vocab` (run.c's `str_lookup`).
    pub(super) fn sp_lookup(&self, a: &[u8], b: &[u8]) -> Option<u32> {
        let pos = self.sorted_vocab.binary_search_by(|&id| cmp_concat(self.token_bytes(id), a, b)).ok()?;
        Some(self.sorted_vocab[pos])
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
    /// byte-fallback token per byte. Writes them to `out` if it is long enough.
    fn sp_char(&self, c: &[u8], out: &mut [u32]) -> usize {
        match self.sp_lookup(c, b"") {
            Some(id) => {
                if let Some(slot) = out.first_mut() {
                    *slot = id;
                }
                1
            }
            None => {
                for (slot, &b) in out.iter_mut().zip(c) {
                    *slot = self.byte_tokens[b as usize];
                }
                c.len()
            }
        }
    }

    /// Whether no vocabulary token spans byte position `q` of `t` (starting
    /// at or after `lo`): then no merge can cross `q`, and the text on either
    /// side encodes independently.
    fn sp_hard_cut(&self, t: &[u8], lo: usize, q: usize) -> bool {
        let max = self.max_token_len;
        let a_min = core::cmp::max(lo, q.saturating_sub(max.saturating_sub(1)));
        for a in a_min..q {
            let b_max = core::cmp::min(t.len(), a + max);
            for b in q + 1..=b_max {
                let (exact, prefix) = self.sp_probe(&t[a..b]);
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
        let t = text.as_bytes();
        let mut pos = 0;
        while pos < t.len() || lead {
            let free = out.len() - written;
            let estimate = written + (t.len() - pos + lead as usize).div_ceil(self.max_token_len);
            let buf = &mut out[written..];
            let mut s = 0;
            if lead {
                if free == 0 {
                    return Err(self.too_long(out.len(), estimate));
                }
                buf[0] = self.space_token;
                s = 1;
            }
            let mut p = pos;
            let mut full = false;
            for c in text[pos..].chars() {
                let cb = &t[p..p + c.len_utf8()];
                // Writes what fits; a partial write past `free` is ignored.
                let need = self.sp_char(cb, &mut buf[s..]);
                if s + need > free {
                    full = true;
                    break;
                }
                s += need;
                p += cb.len();
            }
            let end = if full {
                let min_cut = if lead { self.max_token_len } else { 0 };
                let mut q = p;
                loop {
                    if q <= pos {
                        // No independent prefix fits in the space left.
                        return Err(self.too_long(out.len(), estimate));
                    }
                    if text.is_char_boundary(q) && q >= min_cut && self.sp_hard_cut(t, pos, q) {
                        break q;
                    }
                    q -= 1;
                }
            } else {
                p
            };
            // Drop the initial tokens past the cut.
            let mut q = end;
            while q < p {
                let Some(c) = text[q..].chars().next() else { break };
                let cb = &t[q..q + c.len_utf8()];
                s -= self.sp_char(cb, &mut []);
                q += cb.len();
            }
            written += self.sp_merge(&mut buf[..s]);
            pos = end;
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
        let mut n = buf.len();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..n.saturating_sub(1) {
                if let Some((_, sc)) = self.sp_pair(buf[i], buf[i + 1]) {
                    if best.is_none_or(|(b, _)| sc.partial_cmp(&b) == Some(Ordering::Greater)) {
                        best = Some((sc, i));
                    }
                }
            }
            let Some((top, first)) = best else { return n };
            let mut w = first;
            let mut i = first;
            let mut stop = false;
            while i < n {
                if !stop && i + 1 < n {
                    if let Some((id, sc)) = self.sp_pair(buf[i], buf[i + 1]) {
                        if sc >= top {
                            buf[w] = id;
                            if w > 0 && self.sp_pair(buf[w - 1], id).is_some_and(|(_, x)| x >= top) {
                                stop = true;
                            }
                            if i + 2 < n && self.sp_pair(id, buf[i + 2]).is_some_and(|(_, x)| x >= top) {
                                stop = true;
                            }
                            w += 1;
                            i += 2;
                            continue;
                        }
                    }
                }
                buf[w] = buf[i];
                w += 1;
                i += 1;
            }
            n = w;
        }
    }
}
