//! Byte-level BPE tokenizers (Hugging Face `tokenizers`), with the conventions of
//! docs/CHECKPOINT.md: `<|endoftext|>` is id 0 (BOS = EOS), one tag per domain after
//! it (`<|story|>`, ...), the 256-symbol byte alphabet, ByteLevel pre-tokenizer
//! (GPT-2 regex, no prefix space) and decoder, no normalizer, no post-processor.

use crate::{Error, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerBuilder};

/// The end-of-text token (also BOS), id 0.
pub const EOT: &str = "<|endoftext|>";

/// The tag token of a domain: `story` -> `<|story|>`.
pub fn domain_tag(domain: &str) -> String {
    format!("<|{domain}|>")
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// A loaded tokenizer plus its JSON text (hashed into corpus cache keys, copied into
/// checkpoints).
#[derive(Clone)]
pub struct EdgeTokenizer {
    inner: Tokenizer,
    json: String,
}

impl std::fmt::Debug for EdgeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EdgeTokenizer(vocab {})", self.vocab_size())
    }
}

impl EdgeTokenizer {
    /// Trains a byte-level BPE on documents. `domains` gives the tag tokens
    /// (ids 1..=domains.len()). `vocab_size` includes the specials and the 256 bytes.
    pub fn train<I, S>(docs: I, vocab_size: usize, domains: &[String]) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let n_special = 1 + domains.len();
        if vocab_size < 256 + n_special {
            return Err(Error::Tokenizer(format!(
                "--vocab-size {vocab_size} is too small: it needs at least 256 byte tokens + {n_special} special tokens"
            )));
        }
        if vocab_size > 65536 {
            return Err(Error::Tokenizer(format!(
                "--vocab-size {vocab_size} is too large: token ids are stored as u16 (max 65536)"
            )));
        }
        let mut specials = vec![AddedToken::from(EOT, true)];
        specials.extend(domains.iter().map(|d| AddedToken::from(domain_tag(d), true)));
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(None)
            .with_decoder(Some(ByteLevel::new(false, true, true)))
            .build()
            .map_err(tk_err)?;
        tk.train(&mut trainer, docs).map_err(tk_err)?;
        let json = tk.to_string(true).map_err(tk_err)?;
        Self::from_json(json)
    }

    /// Parses a tokenizer.json text and checks the conventions.
    pub fn from_json(json: String) -> Result<Self> {
        let inner: Tokenizer = json.parse().map_err(tk_err)?;
        if inner.token_to_id(EOT) != Some(0) {
            return Err(Error::Tokenizer(format!(
                "{EOT} must be token id 0 (train the tokenizer with `edgelm-train tokenizer`)"
            )));
        }
        Ok(EdgeTokenizer { inner, json })
    }

    /// Loads a tokenizer.json file.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer(format!(
                "{} not found (create one with `edgelm-train tokenizer --corpus FILE --vocab-size N --output {}`)",
                path.display(),
                path.display()
            )));
        }
        let json = String::from_utf8(crate::fsio::read(path)?)
            .map_err(|_| Error::Tokenizer(format!("{} is not UTF-8", path.display())))?;
        Self::from_json(json).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Writes tokenizer.json atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsio::write_atomic(path, self.json.as_bytes())
    }

    pub fn json(&self) -> &str {
        &self.json
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eot_id(&self) -> u32 {
        0
    }

    /// Id of a domain's tag token, if the tokenizer has it.
    pub fn tag_id(&self, domain: &str) -> Option<u32> {
        self.inner.token_to_id(&domain_tag(domain))
    }

    /// The domains whose tags this tokenizer holds (special tokens `<|name|>` other
    /// than `<|endoftext|>`), in id order.
    pub fn domains(&self) -> Vec<String> {
        let mut v: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && t.content != EOT)
            .filter_map(|(id, t)| {
                let c = t.content.strip_prefix("<|")?.strip_suffix("|>")?;
                Some((id, c.to_string()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    }

    /// Encodes text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode_fast(text, false).map_err(tk_err)?.get_ids().to_vec())
    }

    /// Encodes many documents (in parallel).
    pub fn encode_batch(&self, docs: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self.inner.encode_batch_fast(docs.to_vec(), false).map_err(tk_err)?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Decodes ids to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// UTF-8 bytes per token over documents (no specials counted).
    pub fn bytes_per_token(&self, docs: &[&str]) -> Result<f64> {
        let enc = self.encode_batch(docs)?;
        let toks: usize = enc.iter().map(|e| e.len()).sum();
        let bytes: usize = docs.iter().map(|d| d.len()).sum();
        Ok(bytes as f64 / toks.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_conventions() {
        let docs = ["the cat sat on the mat. ", "the dog ate the cat's food, é ½!"];
        let tok = EdgeTokenizer::train(docs.iter().cycle().take(50), 300, &["story".into()]).unwrap();
        assert_eq!(tok.inner().token_to_id(EOT), Some(0));
        assert_eq!(tok.tag_id("story"), Some(1));
        assert_eq!(tok.domains(), vec!["story".to_string()]);
        for d in docs.iter().chain(["unseen ✓ text\n\twith tabs"].iter()) {
            let ids = tok.encode(d).unwrap();
            assert_eq!(&tok.decode(&ids).unwrap(), d);
        }
        // Training merged frequent pairs: fewer tokens than bytes.
        assert!(tok.bytes_per_token(&docs).unwrap() > 1.5);
        let again = EdgeTokenizer::from_json(tok.json().to_string()).unwrap();
        assert_eq!(again.encode(docs[0]).unwrap(), tok.encode(docs[0]).unwrap());
    }
}
