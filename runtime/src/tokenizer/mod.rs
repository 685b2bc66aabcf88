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
    /// Token of each single byte (256 entries).
    byte_tokens: &'a [u32],
    /// Tokens matched literally in input text.
    special: &'a [u32],
    /// BPE: `(left, right, result)` triples in rank order.
    merges: &'a [u32],
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
        buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
        buf[prefix.len()..prefix.len() + MID.len()].copy_from_slice(MID);
        buf[prefix.len() + MID.len()..len].copy_from_slice(suffix.as_bytes());
        Ok(TensorName { buf, len })
    }

    fn as_str(&self) -> &str {
        // Built from two `&str`s and ASCII, so always valid.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
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
    let n = core::cmp::min(token.len(), a.len());
    match token[..n].cmp(&a[..n]) {
        Ordering::Equal => {}
        o => return o,
    }
    if token.len() <= a.len() {
        // token is a prefix of a (or equal to it).
        return if token.len() == a.len() && b.is_empty() { Ordering::Equal } else { Ordering::Less };
    }
    token[a.len()..].cmp(b)
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
        if offsets[0] != 0 {
            return Err(Error::BadTokenizer("vocab_offsets must start at 0"));
        }
        if offsets.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::BadTokenizer("vocab_offsets must be non-decreasing"));
        }
        if offsets[vocab_size] as usize != bytes.len() {
            return Err(Error::BadTokenizer("vocab_offsets must end at the length of vocab_bytes"));
        }
        let in_vocab = |id: u32| (id as usize) < vocab_size;
        if !info.bos.is_none_or(in_vocab) || !info.eos.is_none_or(in_vocab) {
            return Err(Error::BadTokenizer("bos/eos token id is outside the vocabulary"));
        }

        let byte_t = require(file, prefix, "byte_tokens")?;
        one_dim(&byte_t, "byte_tokens must be one-dimensional")?;
        let byte_tokens = byte_t.u32s()?;
        if byte_tokens.len() != 256 {
            return Err(Error::BadTokenizer("byte_tokens must have 256 entries"));
        }

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
        let n = merges.len() / 3;
        if index.len() != n {
            return Err(Error::BadTokenizer("merge_index must have one entry per merge"));
        }
        for m in merges.chunks_exact(3) {
            let (l, r, res) = (m[0], m[1], m[2]);
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
        let pair = |rank: u32| -> Option<(u32, u32)> {
            let k = rank as usize;
            if k >= n {
                return None;
            }
            Some((merges[3 * k], merges[3 * k + 1]))
        };
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
        self.space_token = self.sp_lookup(b" ", b"").unwrap_or(self.byte_tokens[b' ' as usize]);
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
        let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        self.bytes.get(start..end).unwrap_or(&[])
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
            [b] => self.byte_tokens[*b as usize] == id,
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
        if self.info.strip_space_after_bos && after_bos && !exempt && b.first() == Some(&b' ') {
            &b[1..]
        } else {
            b
        }
    }

    /// Leftmost-longest special token in `text`: `(start, end, id)`.
    fn find_special(&self, text: &str) -> Option<(usize, usize, u32)> {
        if self.special.is_empty() {
            return None;
        }
        let t = text.as_bytes();
        for start in 0..t.len() {
            if !text.is_char_boundary(start) {
                continue;
            }
            let mut best: Option<(usize, u32)> = None;
            for &id in self.special {
                let s = self.token_bytes(id);
                if t[start..].starts_with(s) && best.is_none_or(|(len, _)| s.len() > len) {
                    let end = start + s.len();
                    if text.is_char_boundary(end) {
                        best = Some((s.len(), id));
                    }
                }
            }
            if let Some((len, id)) = best {
                return Some((start, start + len, id));
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
                Some((s, _, _)) => &rest[..s],
                None => rest,
            };
            written = match self.info.kind {
                TokenizerKind::ByteLevelBpe => self.encode_bpe(plain, out, written)?,
                TokenizerKind::SentencePieceBpe => self.encode_sp(lead, plain, out, written)?,
            };
            lead = false;
            match found {
                Some((_, e, id)) => {
                    if written >= out.len() {
                        return Err(
                            self.too_long(out.len(), written + 1 + rest.len().saturating_sub(e) / self.max_token_len)
                        );
                    }
                    out[written] = id;
                    written += 1;
                    rest = &rest[e..];
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
