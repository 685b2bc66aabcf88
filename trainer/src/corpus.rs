//! Corpora: UTF-8 files whose documents are separated by lines that are exactly
//! `<|endoftext|>`. Tokenised once into a cached binary of u16 ids (keyed by the
//! sha256 of corpus + tokenizer), then sampled as seeded random windows.

use crate::rng::Rng;
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The document separator line.
pub use edgelm_runtime::bpb::SEPARATOR;

/// Limits applied when reading a corpus.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest document accepted, in UTF-8 bytes.
    pub max_doc_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_doc_bytes: 1 << 20 }
    }
}

/// Splits `text` into documents per the evaluation protocol (the runtime's
/// splitter, [`edgelm_runtime::bpb::documents_with_lines`]): on lines that are
/// exactly `<|endoftext|>`; each document loses its final newline; empty
/// documents are skipped. Returns `(first line number, document)` pairs.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    edgelm_runtime::bpb::documents_with_lines(text).collect()
}

/// A corpus file read into memory.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub path: PathBuf,
    pub text: String,
}

impl Corpus {
    /// Reads a corpus; a missing, non-UTF-8 or empty file, or a document over the
    /// limit, is an error that names the file (and line).
    pub fn load(path: &Path, limits: Limits) -> Result<Self> {
        let err = |msg: String| Error::Corpus { path: path.to_path_buf(), msg };
        if !path.exists() {
            return Err(err(
                "file not found (pass a UTF-8 text file whose documents are separated by `<|endoftext|>` lines)".into(),
            ));
        }
        let bytes = crate::fsio::read(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|e| err(format!("not valid UTF-8 at byte {}", e.utf8_error().valid_up_to())))?;
        let corpus = Corpus { path: path.to_path_buf(), text };
        let docs = corpus.documents();
        if docs.is_empty() {
            return Err(err("no documents: the file is empty or holds only `<|endoftext|>` lines".into()));
        }
        if let Some((line, d)) = docs.iter().find(|(_, d)| d.len() > limits.max_doc_bytes) {
            return Err(err(format!(
                "the document starting at line {line} is {} bytes, over the limit of {} bytes \
                 (is a `<|endoftext|>` separator line missing? or raise --max-doc-bytes)",
                d.len(),
                limits.max_doc_bytes
            )));
        }
        Ok(corpus)
    }

    /// The documents, with the line each starts on.
    pub fn documents(&self) -> Vec<(usize, &str)> {
        split_documents(&self.text)
    }

    /// The first documents, until at least `max_bytes` of text are taken
    /// (0: the whole corpus).
    pub fn head(self, max_bytes: usize) -> Corpus {
        if max_bytes == 0 {
            return self;
        }
        let mut text = String::new();
        for (_, d) in self.documents() {
            if text.len() >= max_bytes {
                break;
            }
            text.push_str(d);
            text.push('\n');
            text.push_str(SEPARATOR);
            text.push('\n');
        }
        Corpus { path: self.path, text }
    }
}

/// A tokenised corpus: `[bos, (tag,) doc0..., eos, (tag,) doc1..., eos, ...]` where
/// `<|endoftext|>` is both BOS and EOS, so documents share their boundary token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStream {
    pub tokens: Vec<u16>,
    pub n_docs: usize,
    pub n_bytes: u64,
}

const MAGIC: &[u8; 8] = b"EDGTOK01";

impl TokenStream {
    /// Tokenises a corpus (documents in parallel on the tokenizer's threads).
    pub fn build(corpus: &Corpus, tok: &EdgeTokenizer, tag: Option<u32>) -> Result<Self> {
        let docs: Vec<&str> = corpus.documents().into_iter().map(|(_, d)| d).collect();
        let encoded = tok.encode_batch(&docs)?;
        let mut tokens = Vec::with_capacity(encoded.iter().map(|e| e.len() + 2).sum());
        tokens.push(tok.eot_id() as u16);
        for ids in &encoded {
            if let Some(t) = tag {
                tokens.push(t as u16);
            }
            tokens.extend(ids.iter().map(|&i| i as u16));
            tokens.push(tok.eot_id() as u16);
        }
        Ok(TokenStream { tokens, n_docs: docs.len(), n_bytes: docs.iter().map(|d| d.len() as u64).sum() })
    }

    /// Loads the stream from `cache_dir` if a file for this corpus + tokenizer + tag
    /// exists, else builds and stores it (atomically).
    pub fn cached(corpus: &Corpus, tok: &EdgeTokenizer, tag: Option<u32>, cache_dir: &Path) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(corpus.text.as_bytes());
        h.update(tok.json().as_bytes());
        h.update(format!("{tag:?}").as_bytes());
        let key: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
        let stem = corpus.path.file_stem().and_then(|s| s.to_str()).unwrap_or("corpus");
        let file = cache_dir.join(format!("{stem}.{key}.tok"));
        if let Ok(bytes) = std::fs::read(&file) {
            if let Some(s) = Self::decode(&bytes) {
                return Ok(s);
            }
        }
        let s = Self::build(corpus, tok, tag)?;
        std::fs::create_dir_all(cache_dir).map_err(|e| Error::io("cannot create cache dir", cache_dir, e))?;
        crate::fsio::write_atomic(&file, &s.encode())?;
        Ok(s)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.tokens.len() * 2);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.n_docs as u64).to_le_bytes());
        out.extend_from_slice(&self.n_bytes.to_le_bytes());
        out.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        for t in &self.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 32 || &b[..8] != MAGIC {
            return None;
        }
        let u = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        let (n_docs, n_bytes, n) = (u(8)? as usize, u(16)?, u(24)? as usize);
        if Some(b.len()) != n.checked_mul(2).and_then(|x| x.checked_add(32)) {
            return None;
        }
        let tokens = b[32..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Some(TokenStream { tokens, n_docs, n_bytes })
    }
}

/// Samples random windows of `seq_len + 1` tokens (inputs and shifted targets).
#[derive(Debug, Clone)]
pub struct Batcher {
    pub rng: Rng,
    pub batch: usize,
    pub seq_len: usize,
}

impl Batcher {
    pub fn new(seed: u64, batch: usize, seq_len: usize) -> Self {
        Batcher { rng: Rng::new(seed, 0xBA7C), batch, seq_len }
    }

    /// One batch: `(inputs, targets)`, each `batch * seq_len` ids, row-major.
    pub fn next_batch(&mut self, s: &TokenStream) -> Result<(Vec<u32>, Vec<u32>)> {
        let n = s.tokens.len();
        if n < self.seq_len + 1 {
            return Err(Error::Config(format!(
                "the corpus has {n} tokens, fewer than --seq-len + 1 = {}; use a shorter --seq-len or a bigger corpus",
                self.seq_len + 1
            )));
        }
        let mut x = Vec::with_capacity(self.batch * self.seq_len);
        let mut y = Vec::with_capacity(self.batch * self.seq_len);
        for _ in 0..self.batch {
            let start = self.rng.below((n - self.seq_len) as u64) as usize;
            let w = &s.tokens[start..start + self.seq_len + 1];
            x.extend(w[..self.seq_len].iter().map(|&t| t as u32));
            y.extend(w[1..].iter().map(|&t| t as u32));
        }
        Ok((x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_roundtrip() {
        let s = TokenStream { tokens: vec![0, 5, 65535, 0], n_docs: 1, n_bytes: 3 };
        assert_eq!(TokenStream::decode(&s.encode()), Some(s));
    }

    /// A damaged cache is rebuilt, never trusted: short, truncated, or a token
    /// count whose byte size overflows `usize` all decode to `None`.
    #[test]
    fn damaged_cache_is_rejected() {
        let good = TokenStream { tokens: vec![1, 2, 3], n_docs: 1, n_bytes: 3 }.encode();
        assert!(TokenStream::decode(&good[..good.len() - 1]).is_none());
        assert!(TokenStream::decode(&good[..31]).is_none());
        let mut huge = good.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(TokenStream::decode(&huge).is_none());
        let mut wrapping = good;
        // 2·n + 32 ≡ len (mod 2⁶⁴) if the sum were allowed to wrap.
        let n = (u64::MAX / 2) + 1 + (wrapping.len() as u64 - 32) / 2;
        wrapping[24..32].copy_from_slice(&n.to_le_bytes());
        assert!(TokenStream::decode(&wrapping).is_none());
    }
}
