//! The `.edgelm` on-device file: one owner for reading and writing, so the
//! two cannot drift. The byte-level specification is `docs/FORMAT.md`.
//!
//! ```text
//! offset 0   preamble (32 bytes)
//!            magic "EDGELM\0\x01" | version u32 | endian mark u32 0x01020304
//!            | header_len u64 | data_len u64
//! 32         header (postcard): HeaderMeta, then u32 tensor count, then that many TensorInfo
//! align 64   tensor data; each tensor starts at a multiple of 64 from the data start
//! end - 8    checksum: XXH64 (seed 0) of every byte before it
//! ```

pub mod checksum;
mod reader;
#[cfg(feature = "alloc")]
mod tokenizer_tables;
#[cfg(feature = "alloc")]
mod writer;

pub use reader::{ModelFile, TensorView, VerifyChecksum};
#[cfg(feature = "alloc")]
pub use tokenizer_tables::TokenizerTables;
#[cfg(feature = "alloc")]
pub use writer::{quantize_q4, quantize_q8, DomainSpec, FileWriter};

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"EDGELM\x00\x01";
/// The newest format version: files holding q4 tensors are written as 2,
/// every other file as [`FORMAT_VERSION_MIN`] (so files without q4 stay
/// byte-identical and load in older readers). The reader accepts both.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version the reader accepts (and what files without q4 are written as).
pub const FORMAT_VERSION_MIN: u32 = 1;
pub const ENDIAN_MARK: u32 = 0x0102_0304;
pub const PREAMBLE_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 8;
/// Alignment of the data section and of every tensor in it (a cache line;
/// enough for any SIMD load).
pub const ALIGN: usize = 64;
/// Elements per q8 group: one f16 scale per 32 int8 weights.
pub const Q8_GROUP: usize = 32;
/// Elements per q4 group: one f16 scale per 32 4-bit weights (16 bytes).
pub const Q4_GROUP: usize = 32;

/// Hard limits, checked before anything is sized from the file.
pub const MAX_HEADER_LEN: u64 = 64 << 20;
pub const MAX_TENSORS: usize = 4096;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_DIMS: usize = 4;
/// Domains one file can declare, and that one loaded model can hold.
pub const MAX_DOMAINS: usize = 8;
/// Expansion blocks one domain may insert into the base.
pub const MAX_EXPANSION_BLOCKS: usize = 8;
/// Base transformer blocks.
pub const MAX_LAYERS: usize = 32;
pub const MAX_DIM: u32 = 16384;
pub const MAX_FFN: u32 = 65536;
pub const MAX_VOCAB: u32 = 1 << 20;
pub const MAX_SEQ: u32 = 1 << 16;

/// Element types of stored tensors.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    /// int8 weights in groups of [`Q8_GROUP`] along the last axis: first all
    /// `n` int8 values, then `n / 32` f16 scales (value = q * scale).
    Q8,
    U8,
    U32,
    /// 4-bit weights in groups of [`Q4_GROUP`] along the last axis (GGUF
    /// Q4_0 semantics; format version 2): first `n / 2` bytes of nibbles —
    /// group `g` is bytes `16g..16g+16`, byte `j` holding element `j` in its
    /// low nibble and element `j + 16` in its high nibble, each as `q + 8`
    /// with `q` in [-8, 7] — then `n / 32` f16 scales (value = q * scale).
    /// (Declared last: postcard encodes the variant index, so the earlier
    /// variants keep their v1 encoding.)
    Q4,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::Q4 => "q4",
        }
    }

    /// Bytes taken by `n` elements, or `None` on overflow or (for q8, q4)
    /// when `n` is not a whole number of groups.
    pub fn byte_len(self, n: u64) -> Option<u64> {
        match self {
            DType::F32 | DType::U32 => n.checked_mul(4),
            DType::F16 => n.checked_mul(2),
            DType::U8 => Some(n),
            DType::Q8 => {
                if !n.is_multiple_of(Q8_GROUP as u64) {
                    return None;
                }
                n.checked_add((n / Q8_GROUP as u64).checked_mul(2)?)
            }
            DType::Q4 => {
                if !n.is_multiple_of(Q4_GROUP as u64) {
                    return None;
                }
                (n / 2).checked_add((n / Q4_GROUP as u64).checked_mul(2)?)
            }
        }
    }

    /// Elements per group along the last axis (quantized types), else 1.
    pub fn group(self) -> usize {
        match self {
            DType::Q8 => Q8_GROUP,
            DType::Q4 => Q4_GROUP,
            _ => 1,
        }
    }

    /// The first format version that can hold this dtype.
    pub fn min_version(self) -> u32 {
        match self {
            DType::Q4 => 2,
            _ => FORMAT_VERSION_MIN,
        }
    }
}

/// Whether a file is a standalone base model or a domain pack for one.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Base,
    Pack,
}

/// Model hyper-parameters. A pack repeats its base's config; loading checks
/// that they agree.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub dim: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub ffn_dim: u32,
    /// Vocabulary of the base domain (other domains declare their own).
    pub vocab_size: u32,
    pub max_seq_len: u32,
    pub rope_theta: f32,
    pub norm_eps: f32,
    /// Output head shares the embedding table.
    pub tied_head: bool,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        (self.dim / self.n_heads) as usize
    }
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_kv_heads as usize
    }

    /// Bounds every field before any buffer is sized from it.
    pub fn validate(&self) -> crate::Result<()> {
        use crate::Error::BadConfig;
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(BadConfig("dim must be in 1..=16384"));
        }
        if self.n_layers == 0 || self.n_layers as usize > MAX_LAYERS {
            return Err(BadConfig("n_layers must be in 1..=32"));
        }
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            return Err(BadConfig("n_heads must divide dim"));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(BadConfig("head_dim (dim / n_heads) must be even for RoPE"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(BadConfig("n_kv_heads must divide n_heads"));
        }
        if self.ffn_dim == 0 || self.ffn_dim > MAX_FFN {
            return Err(BadConfig("ffn_dim must be in 1..=65536"));
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_VOCAB {
            return Err(BadConfig("vocab_size must be in 1..=1048576"));
        }
        if self.max_seq_len == 0 || self.max_seq_len > MAX_SEQ {
            return Err(BadConfig("max_seq_len must be in 1..=65536"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(BadConfig("rope_theta must be a positive number"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(BadConfig("norm_eps must be a non-negative number"));
        }
        Ok(())
    }
}

/// How a domain's tokenizer splits text into tokens.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2 style byte-level BPE (Hugging Face `tokenizers` ByteLevel):
    /// regex pre-split, then merges applied by rank.
    ByteLevelBpe,
    /// llama2.c / SentencePiece style: UTF-8 characters (byte fallback),
    /// then greedy merges of the best-scoring adjacent pair in the vocabulary.
    SentencePieceBpe,
}

/// Tokenizer settings; its tables are tensors named `{prefix}tokenizer.*`
/// (see `docs/FORMAT.md`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct TokenizerInfo {
    pub kind: TokenizerKind,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// SentencePiece: prepend a space to non-empty text before encoding.
    pub add_dummy_prefix: bool,
    /// llama2.c decoding: drop the leading space of the first piece after BOS.
    pub strip_space_after_bos: bool,
}

/// One domain a file provides.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DomainInfo<'a> {
    pub name: &'a str,
    /// Prefix of this domain's tensor names: `""` for the base domain,
    /// `"domains.<name>."` in packs.
    pub prefix: &'a str,
    /// `false`: the domain uses the base's tokenizer, embedding and vocabulary.
    pub own_tokenizer: bool,
    /// `false`: final norm and output head are the base's.
    pub own_head: bool,
    pub vocab_size: u32,
    pub tokenizer: TokenizerInfo,
    /// Token fed after BOS to select this domain (shared-tokenizer domains).
    pub tag_token: Option<u32>,
    /// Expansion block `j` runs after the first `positions[j]` base blocks
    /// (non-decreasing, each ≤ n_layers); its tensors are `{prefix}blocks.j.*`.
    pub expansion_positions: heapless::Vec<u16, MAX_EXPANSION_BLOCKS>,
}

/// The fixed part of the header.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HeaderMeta<'a> {
    pub kind: FileKind,
    /// Identity of the model's frozen weights (e.g. `sha256:…` of the base checkpoint).
    pub model_id: &'a str,
    /// Packs: the `model_id` of the base they were trained on. Empty for a base.
    pub base_model_id: &'a str,
    pub config: Config,
    pub domains: heapless::Vec<DomainInfo<'a>, MAX_DOMAINS>,
}

/// One entry of the tensor table.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: heapless::Vec<u32, MAX_DIMS>,
    /// Byte offset from the start of the data section (multiple of 64).
    pub offset: u64,
    pub len: u64,
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}
