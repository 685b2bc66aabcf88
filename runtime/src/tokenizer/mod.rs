//! Tokenizers: byte-level BPE (GPT-2 / Hugging Face `tokenizers` ByteLevel)
//! and SentencePiece-style BPE (llama2.c `tokenizer.bin`), encoding and
//! decoding in place over tables borrowed from the `.edgelm` file.
//!
//! Nothing here allocates: [`Tokenizer::encode`] works inside its output
//! slice. The table layout and the exact behaviour (including where it can
//! differ from Hugging Face `tokenizers` and llama2.c) are specified in
//! `docs/TOKENIZER.md`.

mod bpe;
pub mod pretokenize;
mod sentencepiece;
mod stream;
#[cfg(test)]
mod tests;
mod unicode;

pub use stream::Utf8Stream;

use core::cell::Cell;
use core::cmp::Ordering;

use crate::error::{Error, Result};
use crate::format::{ModelFile, TensorView, TokenizerInfo, TokenizerKind, MAX_VOCAB};

/// A tokenizer whose tables live in a model file.
#[derive(Clone, Copy, Debug)]
pub struct Tokenizer<'a> {
    info: TokenizerInfo,
    vocab_size: usize,
    /// Concatenated raw bytes of all tokens.
    bytes: &'a [u8],
    /// `vocab_size + 1` offsets into `bytes`.
    offsets: &'a [u32],
    /// Token of each single byte.
    byte_tokens: &'a [u32; 256],
    /// Tokens matched literally in input text.
    special: &'a [u32],
    /// BPE: `(left, right, result)` in rank order, `[n_merges, 3]`.
    merges: &'a [[u32; 3]],
    /// BPE: ranks sorted by `(left, right)`.
    merge_index: &'a [u32],
    /// SentencePiece: one score per token.
    scores: &'a [f32],
    /// SentencePiece: non-byte-fallback tokens sorted by their bytes.
    sorted_vocab: &'a [u32],
    /// Longest token (SentencePiece: of `sorted_vocab`), at least 1.
    max_token_len: usize,
    /// Longest special token, 0 if none.
    max_special_len: usize,
    /// SentencePiece: the token of the dummy prefix `" "`.
    space_token: u32,
}

/// `{prefix}tokenizer.{suffix}` in a stack buffer.
struct TensorName {
    buf: [u8; 192],
    len: usize,
}

impl TensorName {
    fn new(prefix: &str, suffix: &str) -> Result<Self> {
        const MID: &[u8] = b"tokenizer.";
        let len = prefix.len() + MID.len() + suffix.len();
        let mut buf = [0u8; 192];
        if len > buf.len() {
            return Err(Error::BadTokenizer("tensor name prefix is too long"));
        }
        let parts = prefix.as_bytes().iter().chain(MID).chain(suffix.as_bytes());
        for (slot, &b) in buf.iter_mut().zip(parts) {
            *slot = b;
        }
        Ok(TensorName { buf, len })
    }

    fn as_str(&self) -> &str {
        // Built from two `&str`s and ASCII, so always valid; `len` fits (checked in `new`).
        self.buf.get(..self.len).and_then(|b| core::str::from_utf8(b).ok()).unwrap_or("")
    }
}

fn get<'a>(file: &ModelFile<'a>, prefix: &str, suffix: &str) -> Result<Option<TensorView<'a>>> {
    let name = TensorName::new(prefix, suffix)?;
    Ok(file.get(name.as_str()))
}

fn require<'a>(file: &ModelFile<'a>, prefix: &str, suffix: &str) -> Result<TensorView<'a>> {
    let name = TensorName::new(prefix, suffix)?;
    file.tensor(name.as_str())
}

fn one_dim(t: &TensorView<'_>, what: &'static str) -> Result<()> {
    if t.ndim != 1 {
        return Err(Error::BadTokenizer(what));
    }
    Ok(())
}

/// Lexicographic comparison of `token` with the concatenation `a ++ b`.
fn cmp_concat(token: &[u8], a: &[u8], b: &[u8]) -> Ordering {
    match token.split_at_checked(a.len()) {
        Some((head, tail)) => head.cmp(a).then_with(|| tail.cmp(b)),
        // Shorter than `a`: `a ++ b` differs within `token`, or `token` is a
        // proper prefix of it; either way `token.cmp(a)` says which (never Equal).
        None => token.cmp(a),
    }
}

/// One left-to-right sweep of a merge loop over `live`, starting at `first`
/// (the leftmost best pair): every adjacent pair `(x, y)` for which
/// `merge(x, y)` gives a token becomes that token, until a merge creates a
/// pair for which `rival` holds (one the caller must rank again before going
/// on); from there the tokens are only compacted. Returns the shortened prefix.
///
/// Works through cells so that reads run ahead of writes in one buffer
/// without indexing: the write position never passes the read position.
fn merge_sweep(
    live: &[Cell<u32>],
    first: usize,
    merge: impl Fn(u32, u32) -> Option<u32>,
    mut rival: impl FnMut(u32, u32) -> bool,
) -> &[Cell<u32>] {
    // Before `first` nothing merges, so sweeping from 0 would give the same.
    let (head, tail) = live.split_at_checked(first).unwrap_or((&[], live));
    let mut input = tail.iter().map(Cell::get).peekable();
    let mut output = tail.iter();
    let mut prev = head.last().map(Cell::get);
    let mut len = head.len();
    let mut stop = false;
    while let Some(x) = input.next() {
        let mut token = x;
        if !stop {
            if let Some(m) = input.peek().and_then(|&y| merge(x, y)) {
                input.next();
                token = m;
                stop = prev.is_some_and(|p| rival(p, m)) || input.peek().is_some_and(|&z| rival(m, z));
            }
        }
        if let Some(slot) = output.next() {
            slot.set(token);
            len += 1;
        }
        prev = Some(token);
    }
    // `len` counts writes into `live`, so it is at most `live.len()`.
    live.get(..len).unwrap_or(live)
}

impl<'a> Tokenizer<'a> {
    /// Loads and validates the tables `{prefix}tokenizer.*` from the file.
    ///
    /// All checks are O(vocab + merges · token length) and allocation-free;
    /// any inconsistency is an [`Error::BadTokenizer`] (or the file's own
    /// missing-tensor / dtype errors), never a panic.
    pub fn from_file(file: &ModelFile<'a>, prefix: &str, info: TokenizerInfo, vocab_size: usize) -> Result<Self> {
        if vocab_size == 0 || vocab_size > MAX_VOCAB as usize {
            return Err(Error::BadTokenizer("vocab_size must be in 1..=1048576"));
        }
        let bytes_t = require(file, prefix, "vocab_bytes")?;
        one_dim(&bytes_t, "vocab_bytes must be one-dimensional")?;
        let bytes = bytes_t.u8s()?;
        let offsets_t = require(file, prefix, "vocab_offsets")?;
        one_dim(&offsets_t, "vocab_offsets must be one-dimensional")?;
        let offsets = offsets_t.u32s()?;
        if offsets.len() != vocab_size + 1 {
            return Err(Error::BadTokenizer("vocab_offsets must have vocab_size + 1 entries"));
        }
        if offsets.first() != Some(&0) {
            return Err(Error::BadTokenizer("vocab_offsets must start at 0"));
        }
        if !offsets.is_sorted() {
            return Err(Error::BadTokenizer("vocab_offsets must be non-decreasing"));
        }
        if offsets.last().map(|&end| end as usize) != Some(bytes.len()) {
            return Err(Error::BadTokenizer("vocab_offsets must end at the length of vocab_bytes"));
        }
        let in_vocab = |id: u32| (id as usize) < vocab_size;
        if !info.bos.is_none_or(in_vocab) || !info.eos.is_none_or(in_vocab) {
            return Err(Error::BadTokenizer("bos/eos token id is outside the vocabulary"));
        }

        let byte_t = require(file, prefix, "byte_tokens")?;
        one_dim(&byte_t, "byte_tokens must be one-dimensional")?;
        let byte_tokens: &[u32; 256] =
            byte_t.u32s()?.try_into().map_err(|_| Error::BadTokenizer("byte_tokens must have 256 entries"))?;

        let special = match get(file, prefix, "special")? {
            Some(t) => {
                one_dim(&t, "special must be one-dimensional")?;
                t.u32s()?
            }
            None => &[],
        };

        let mut tok = Tokenizer {
            info,
            vocab_size,
            bytes,
            offsets,
            byte_tokens,
            special,
            merges: &[],
            merge_index: &[],
            scores: &[],
            sorted_vocab: &[],
            max_token_len: 1,
            max_special_len: 0,
            space_token: 0,
        };

        for (b, &id) in byte_tokens.iter().enumerate() {
            if !in_vocab(id) || tok.token_bytes(id) != [b as u8] {
                return Err(Error::BadTokenizer("byte_tokens[b] must be a token whose bytes are exactly b"));
            }
        }
        for &id in special {
            if !in_vocab(id) || tok.token_bytes(id).is_empty() {
                return Err(Error::BadTokenizer("special tokens must be non-empty tokens of the vocabulary"));
            }
            tok.max_special_len = tok.max_special_len.max(tok.token_bytes(id).len());
        }

        match info.kind {
            TokenizerKind::ByteLevelBpe => tok.load_bpe(file, prefix)?,
            TokenizerKind::SentencePieceBpe => tok.load_sentencepiece(file, prefix)?,
        }
        Ok(tok)
    }

    fn load_bpe(&mut self, file: &ModelFile<'a>, prefix: &str) -> Result<()> {
        let merges_t = get(file, prefix, "merges")?;
        let index_t = get(file, prefix, "merge_index")?;
        let (merges, index) = match (merges_t, index_t) {
            (None, None) => (&[][..], &[][..]),
            (Some(m), Some(i)) => {
                if m.ndim != 2 || m.shape[1] != 3 {
                    return Err(Error::BadTokenizer("merges must have shape [n_merges, 3]"));
                }
                one_dim(&i, "merge_index must be one-dimensional")?;
                (m.u32s()?, i.u32s()?)
            }
            _ => return Err(Error::BadTokenizer("merges and merge_index must be both present or both absent")),
        };
        let (merges, odd) = merges.as_chunks::<3>();
        if !odd.is_empty() {
            return Err(Error::BadTokenizer("merges must have shape [n_merges, 3]"));
        }
        let n = merges.len();
        if index.len() != n {
            return Err(Error::BadTokenizer("merge_index must have one entry per merge"));
        }
        for &[l, r, res] in merges {
            if [l, r, res].iter().any(|&id| id as usize >= self.vocab_size) {
                return Err(Error::BadTokenizer("merge refers to a token outside the vocabulary"));
            }
            let (lb, rb, resb) = (self.token_bytes(l), self.token_bytes(r), self.token_bytes(res));
            if lb.is_empty() || rb.is_empty() {
                return Err(Error::BadTokenizer("merge operand is an empty token"));
            }
            if cmp_concat(resb, lb, rb) != Ordering::Equal {
                return Err(Error::BadTokenizer("merge result's bytes are not the concatenation of its operands"));
            }
        }
        let pair = |rank: u32| merges.get(rank as usize).map(|&[l, r, _]| (l, r));
        let mut prev: Option<(u32, u32)> = None;
        for &rank in index {
            let p = pair(rank).ok_or(Error::BadTokenizer("merge_index entry out of range"))?;
            if prev.is_some_and(|q| q >= p) {
                return Err(Error::BadTokenizer(
                    "merge_index must list merges by strictly increasing (left, right) (duplicate pair?)",
                ));
            }
            prev = Some(p);
        }
        self.merges = merges;
        self.merge_index = index;
        self.max_token_len = (0..self.vocab_size as u32).map(|id| self.token_bytes(id).len()).max().unwrap_or(1).max(1);
        Ok(())
    }

    fn load_sentencepiece(&mut self, file: &ModelFile<'a>, prefix: &str) -> Result<()> {
        let scores_t = require(file, prefix, "scores")?;
        one_dim(&scores_t, "scores must be one-dimensional")?;
        let scores = scores_t.f32s()?;
        if scores.len() != self.vocab_size {
            return Err(Error::BadTokenizer("scores must have one entry per token"));
        }
        let sorted = match get(file, prefix, "sorted_vocab")? {
            Some(t) => {
                one_dim(&t, "sorted_vocab must be one-dimensional")?;
                t.u32s()?
            }
            None => &[],
        };
        let mut max_len = 1;
        let mut prev: Option<&[u8]> = None;
        for &id in sorted {
            if id as usize >= self.vocab_size {
                return Err(Error::BadTokenizer("sorted_vocab refers to a token outside the vocabulary"));
            }
            if self.is_byte_token(id) {
                return Err(Error::BadTokenizer("sorted_vocab must not contain byte-fallback tokens"));
            }
            let b = self.token_bytes(id);
            if b.is_empty() {
                return Err(Error::BadTokenizer("sorted_vocab must not contain empty tokens"));
            }
            if prev.is_some_and(|p| p >= b) {
                return Err(Error::BadTokenizer("sorted_vocab must be strictly increasing by token bytes"));
            }
            prev = Some(b);
            max_len = max_len.max(b.len());
        }
        self.scores = scores;
        self.sorted_vocab = sorted;
        self.max_token_len = max_len;
        self.space_token = self.sp_lookup(b" ", b"").unwrap_or(self.byte_token(b' '));
        Ok(())
    }

    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Raw bytes of token `id` (empty for out-of-range ids).
    pub fn token_bytes(&self, id: u32) -> &'a [u8] {
        let i = id as usize;
        if i >= self.vocab_size {
            return &[];
        }
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => self.bytes.get(start as usize..end as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The token of the single byte `b`.
    fn byte_token(&self, b: u8) -> u32 {
        // 256 entries: the index is always in range and the fallback dead code.
        self.byte_tokens.get(usize::from(b)).copied().unwrap_or(0)
    }

    /// Whether `id` is a special token (listed in the special table, or the
    /// BOS/EOS token).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id) || self.info.bos == Some(id) || self.info.eos == Some(id)
    }

    /// Whether `id` is the token `byte_tokens` gives for its single byte
    /// (SentencePiece: a byte-fallback token `<0xXX>`).
    pub fn is_byte_token(&self, id: u32) -> bool {
        match self.token_bytes(id) {
            &[b] => self.byte_token(b) == id,
            _ => false,
        }
    }

    /// Bytes to print for `id` following `prev`. With
    /// `info.strip_space_after_bos`, the leading space of the piece after BOS
    /// is dropped (llama2.c; byte-fallback tokens are exempt, as in run.c).
    /// Special tokens return their text; the caller decides whether to print.
    pub fn decode_piece(&self, prev: Option<u32>, id: u32) -> &'a [u8] {
        let b = self.token_bytes(id);
        let after_bos = prev.is_some() && prev == self.info.bos;
        let exempt = self.info.kind == TokenizerKind::SentencePieceBpe && self.is_byte_token(id);
        match b.strip_prefix(b" ") {
            Some(rest) if self.info.strip_space_after_bos && after_bos && !exempt => rest,
            _ => b,
        }
    }

    /// Leftmost-longest special token in `text`: `(text before, id, text after)`.
    fn find_special<'t>(&self, text: &'t str) -> Option<(&'t str, u32, &'t str)> {
        if self.special.is_empty() {
            return None;
        }
        for (start, _) in text.char_indices() {
            let (before, from) = text.split_at_checked(start)?;
            let mut best: Option<(usize, u32, &'t str)> = None;
            for &id in self.special {
                let s = self.token_bytes(id);
                if from.as_bytes().starts_with(s) && best.is_none_or(|(len, ..)| s.len() > len) {
                    // `get` is `None` unless the special token ends on a character boundary.
                    if let Some(after) = from.get(s.len()..) {
                        best = Some((s.len(), id, after));
                    }
                }
            }
            if let Some((_, id, after)) = best {
                return Some((before, id, after));
            }
        }
        None
    }

    /// Encodes `text` (no BOS/EOS added) into `out`; returns the number of
    /// ids written. No allocation: `out` is also the scratch space. If the
    /// result does not fit, returns [`Error::PromptTooLong`] with `tokens` at
    /// least `out.len() + 1` (a lower bound of the real count when known).
    pub fn encode(&self, text: &str, out: &mut [u32]) -> Result<usize> {
        let mut written = 0;
        let mut rest = text;
        // SentencePiece: the dummy prefix " " goes in front of the whole text.
        let mut lead =
            self.info.kind == TokenizerKind::SentencePieceBpe && self.info.add_dummy_prefix && !text.is_empty();
        loop {
            let found = self.find_special(rest);
            let plain = match found {
                Some((before, _, _)) => before,
                None => rest,
            };
            written = match self.info.kind {
                TokenizerKind::ByteLevelBpe => self.encode_bpe(plain, out, written)?,
                TokenizerKind::SentencePieceBpe => self.encode_sp(lead, plain, out, written)?,
            };
            lead = false;
            match found {
                Some((_, id, after)) => {
                    let Some(slot) = out.get_mut(written) else {
                        return Err(self.too_long(out.len(), written + 1 + after.len() / self.max_token_len));
                    };
                    *slot = id;
                    written += 1;
                    rest = after;
                }
                None => return Ok(written),
            }
        }
    }

    fn too_long(&self, limit: usize, estimate: usize) -> Error {
        Error::PromptTooLong { tokens: core::cmp::max(estimate, limit + 1), limit }
    }

    /// Decodes a whole sequence with [`Self::decode_piece`] into `emit`
    /// (the raw bytes; feed them through a [`Utf8Stream`] to print text).
    pub fn decode_into(&self, ids: &[u32], emit: &mut dyn FnMut(&'a [u8])) {
        let mut prev = None;
        for &id in ids {
            emit(self.decode_piece(prev, id));
            prev = Some(id);
        }
    }
}
