//! The tokenizer tables in owned form and their writer (needs `alloc`): the
//! one place that lays out the `{prefix}tokenizer.*` tensors of
//! docs/TOKENIZER.md. The converter's importers, the synthetic test models
//! and the tokenizer tests all build a [`TokenizerTables`] and write it here;
//! the reader is [`crate::tokenizer::Tokenizer::from_file`].

use alloc::format;
use alloc::vec::Vec;

use super::{FileWriter, TokenizerInfo, TokenizerKind};
use crate::error::Result;

/// A tokenizer in the runtime's terms (token ids index `vocab`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerTables {
    pub info: TokenizerInfo,
    /// Raw bytes of every token (byte-level characters mapped back to bytes;
    /// llama2.c `<0xXX>` pieces as the single byte).
    pub vocab: Vec<Vec<u8>>,
    /// BPE: `(left, right, result)` in rank order. Empty for SentencePiece.
    pub merges: Vec<(u32, u32, u32)>,
    /// SentencePiece: one score per token. Empty for BPE.
    pub scores: Vec<f32>,
    /// Tokens matched literally in input text (e.g. `<|endoftext|>`).
    pub special: Vec<u32>,
    /// The token of each single byte (BPE base tokens / SentencePiece byte fallback).
    pub byte_tokens: [u32; 256],
}

impl TokenizerTables {
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Whether `id` is the token `byte_tokens` names for its single byte.
    pub fn is_byte_token(&self, id: u32) -> bool {
        matches!(self.vocab.get(id as usize).map(Vec::as_slice), Some([b]) if self.byte_tokens.get(*b as usize) == Some(&id))
    }

    /// Ranks sorted by `(left, right)` (the `merge_index` tensor).
    pub fn merge_index(&self) -> Vec<u32> {
        // (left, right, rank): equal pairs stay in rank order, as a stable sort by pair would keep them
        let mut index: Vec<(u32, u32, u32)> =
            self.merges.iter().enumerate().map(|(r, &(a, b, _))| (a, b, r as u32)).collect();
        index.sort_unstable();
        index.into_iter().map(|(_, _, r)| r).collect()
    }

    /// Non-byte-fallback, non-empty tokens sorted by bytes; of tokens with
    /// equal bytes only the lowest id is kept (the `sorted_vocab` tensor).
    pub fn sorted_vocab(&self) -> Vec<u32> {
        let mut ids: Vec<(&[u8], u32)> = (self.vocab.iter().zip(0u32..))
            .filter(|&(t, id)| !t.is_empty() && !self.is_byte_token(id))
            .map(|(t, id)| (t.as_slice(), id))
            .collect();
        // by bytes, then id: the first of equal tokens is the lowest id
        ids.sort_unstable();
        ids.dedup_by(|later, earlier| later.0 == earlier.0);
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Adds the `{prefix}tokenizer.*` tensors to `w`, as they are (the
    /// runtime validates them when it loads the file).
    pub fn write(&self, w: &mut FileWriter, prefix: &str) -> Result<()> {
        let name = |s: &str| format!("{prefix}tokenizer.{s}");
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(self.vocab.len() + 1);
        offsets.push(0u32);
        for t in &self.vocab {
            bytes.extend_from_slice(t);
            offsets.push(bytes.len() as u32);
        }
        let v = self.vocab.len() as u32;
        w.add_u8(&name("vocab_bytes"), &bytes)?;
        w.add_u32(&name("vocab_offsets"), &[v + 1], &offsets)?;
        w.add_u32(&name("byte_tokens"), &[256], &self.byte_tokens)?;
        if !self.special.is_empty() {
            w.add_u32(&name("special"), &[self.special.len() as u32], &self.special)?;
        }
        if !self.merges.is_empty() {
            let flat: Vec<u32> = self.merges.iter().flat_map(|&(a, b, c)| [a, b, c]).collect();
            let n = self.merges.len() as u32;
            w.add_u32(&name("merges"), &[n, 3], &flat)?;
            w.add_u32(&name("merge_index"), &[n], &self.merge_index())?;
        }
        if self.info.kind == TokenizerKind::SentencePieceBpe {
            w.add_f32(&name("scores"), &[v], &self.scores)?;
            let sorted = self.sorted_vocab();
            if !sorted.is_empty() {
                w.add_u32(&name("sorted_vocab"), &[sorted.len() as u32], &sorted)?;
            }
        }
        Ok(())
    }
}
