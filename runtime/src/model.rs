//! A loaded model: the base's blocks plus every domain (the base's own and
//! those of added packs), all borrowed zero-copy from the file bytes.

use core::fmt::Write;

use crate::error::{Error, Name, Result};
use crate::format::{
    Config, DType, DomainInfo, FileKind, ModelFile, TensorView, VerifyChecksum, MAX_DOMAINS, MAX_EXPANSION_BLOCKS,
    MAX_LAYERS, Q4_GROUP, Q8_GROUP,
};
use crate::kernels::f16_to_f32;
use crate::session::SessionOptions;
use crate::tokenizer::Tokenizer;

/// Stored weights of one matrix.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    /// IEEE half bits.
    F16(&'a [u16]),
    /// int8 values and one f16 scale (bits) per group of 32 along a row.
    Q8 {
        qs: &'a [i8],
        scales: &'a [u16],
    },
    /// 4-bit weights: 16 bytes of nibbles and one f16 scale (bits) per group
    /// of 32 along a row (layout in [`DType::Q4`]).
    Q4 {
        qs: &'a [u8],
        scales: &'a [u16],
    },
}

/// A row-major `[rows, cols]` matrix (`nn.Linear` layout: `y = W x`).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub weights: Weights<'a>,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Matrix<'a> {
    fn load(t: TensorView<'a>, rows: usize, cols: usize) -> Result<Self> {
        let expected = [rows as u32, cols as u32, 1, 1];
        if t.ndim != 2 || t.shape != expected {
            return Err(Error::ShapeMismatch { name: Name::new(t.name), got: t.shape, expected });
        }
        let weights = match t.dtype {
            DType::F32 => Weights::F32(t.f32s()?),
            DType::F16 => Weights::F16(t.f16_bits()?),
            DType::Q8 => {
                let (qs, scales) = t.q8()?;
                Weights::Q8 { qs, scales }
            }
            DType::Q4 => {
                let (qs, scales) = t.q4()?;
                Weights::Q4 { qs, scales }
            }
            other => {
                return Err(Error::WrongDType {
                    name: Name::new(t.name),
                    got: other.name(),
                    expected: "f32, f16, q8 or q4",
                })
            }
        };
        Ok(Matrix { weights, rows, cols })
    }

    pub fn dtype(&self) -> DType {
        match self.weights {
            Weights::F32(_) => DType::F32,
            Weights::F16(_) => DType::F16,
            Weights::Q8 { .. } => DType::Q8,
            Weights::Q4 { .. } => DType::Q4,
        }
    }

    /// Dequantizes row `r` into `out: [cols]` (embedding lookup). A row past
    /// the matrix is [`Error::BadToken`] (the row is a token id); an `out`
    /// shorter than a row is [`Error::BadSetting`].
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let c = self.cols;
        let bad_row = || Error::BadToken(u32::try_from(r).unwrap_or(u32::MAX));
        if r >= self.rows {
            return Err(bad_row());
        }
        let out = out.get_mut(..c).ok_or(Error::BadSetting("row_into: output shorter than a row"))?;
        match self.weights {
            Weights::F32(w) => out.copy_from_slice(w.get(r * c..(r + 1) * c).ok_or_else(bad_row)?),
            Weights::F16(w) => {
                for (o, &b) in out.iter_mut().zip(w.get(r * c..(r + 1) * c).ok_or_else(bad_row)?) {
                    *o = f16_to_f32(b);
                }
            }
            Weights::Q8 { qs, scales } => {
                let row = qs.get(r * c..(r + 1) * c).ok_or_else(bad_row)?;
                let sc = scales.get(r * c / Q8_GROUP..(r + 1) * c / Q8_GROUP).ok_or_else(bad_row)?;
                for ((o, q), g) in out.chunks_exact_mut(Q8_GROUP).zip(row.chunks_exact(Q8_GROUP)).zip(sc) {
                    let d = f16_to_f32(*g);
                    for (oi, &qi) in o.iter_mut().zip(q) {
                        *oi = qi as f32 * d;
                    }
                }
            }
            Weights::Q4 { qs, scales } => {
                let g = c / Q4_GROUP;
                let row = qs.get(r * c / 2..(r + 1) * c / 2).ok_or_else(bad_row)?;
                let sc = scales.get(r * g..(r + 1) * g).ok_or_else(bad_row)?;
                for ((o, q), s) in out.chunks_exact_mut(Q4_GROUP).zip(row.chunks_exact(Q4_GROUP / 2)).zip(sc) {
                    let d = f16_to_f32(*s);
                    let (lo, hi) = o.split_at_mut(Q4_GROUP / 2);
                    for ((l, h), &b) in lo.iter_mut().zip(hi).zip(q) {
                        *l = ((b & 0x0f) as i32 - 8) as f32 * d;
                        *h = ((b >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One transformer block.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    pub attn_norm: &'a [f32], // [dim]
    pub wq: Matrix<'a>,       // [n_heads·head_dim, dim]
    pub wk: Matrix<'a>,       // [n_kv_heads·head_dim, dim]
    pub wv: Matrix<'a>,       // [n_kv_heads·head_dim, dim]
    pub wo: Matrix<'a>,       // [dim, n_heads·head_dim]
    pub ffn_norm: &'a [f32],  // [dim]
    pub w1: Matrix<'a>,       // gate [ffn, dim]
    pub w2: Matrix<'a>,       // down [dim, ffn]
    pub w3: Matrix<'a>,       // up   [ffn, dim]
}

/// A domain: its tokenizer, embedding, head and expansion blocks.
#[derive(Clone, Debug)]
pub struct Domain<'a> {
    pub name: &'a str,
    /// `model_id` of the file that provided this domain.
    pub source: &'a str,
    pub tokenizer: Tokenizer<'a>,
    pub vocab_size: usize,
    pub embedding: Matrix<'a>, // [vocab, dim]
    pub norm: &'a [f32],       // [dim]
    pub head: Matrix<'a>,      // [vocab, dim]
    pub tag_token: Option<u32>,
    /// `(position, block)`: the block runs after the first `position` base blocks.
    pub expansion: heapless::Vec<(u16, Block<'a>), MAX_EXPANSION_BLOCKS>,
}

impl Domain<'_> {
    /// Blocks this domain runs per token (base + expansion).
    pub fn n_blocks(&self, n_base: usize) -> usize {
        n_base + self.expansion.len()
    }
}

/// A base model with any number of domain packs. Read-only from outside:
/// the invariants the forward pass relies on (at least one domain, blocks
/// matching the config) are established at load.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    config: Config,
    model_id: &'a str,
    blocks: heapless::Vec<Block<'a>, MAX_LAYERS>,
    domains: heapless::Vec<Domain<'a>, MAX_DOMAINS>,
}

type NameBuf = heapless::String<192>;

fn name(prefix: &str, rest: core::fmt::Arguments<'_>) -> NameBuf {
    let mut s = NameBuf::new();
    // Names longer than the buffer cannot exist in a valid file (128-byte
    // limit), so a truncated name simply reports as missing.
    let _ = s.push_str(prefix);
    let _ = s.write_fmt(rest);
    s
}

fn vector<'a>(file: &ModelFile<'a>, n: &str, len: usize) -> Result<&'a [f32]> {
    let t = file.tensor(n)?;
    let expected = [len as u32, 1, 1, 1];
    if t.ndim != 1 || t.shape != expected {
        return Err(Error::ShapeMismatch { name: Name::new(n), got: t.shape, expected });
    }
    t.f32s()
}

fn load_block<'a>(file: &ModelFile<'a>, cfg: &Config, prefix: &str, i: usize) -> Result<Block<'a>> {
    let (dim, ffn, kv) = (cfg.dim as usize, cfg.ffn_dim as usize, cfg.kv_dim());
    let m =
        |suffix: &str, rows, cols| Matrix::load(file.tensor(&name(prefix, format_args!("{i}.{suffix}")))?, rows, cols);
    Ok(Block {
        attn_norm: vector(file, &name(prefix, format_args!("{i}.attention_norm")), dim)?,
        wq: m("attention.wq", dim, dim)?,
        wk: m("attention.wk", kv, dim)?,
        wv: m("attention.wv", kv, dim)?,
        wo: m("attention.wo", dim, dim)?,
        ffn_norm: vector(file, &name(prefix, format_args!("{i}.ffn_norm")), dim)?,
        w1: m("feed_forward.w1", ffn, dim)?,
        w2: m("feed_forward.w2", dim, ffn)?,
        w3: m("feed_forward.w3", ffn, dim)?,
    })
}

/// Loads domain `info` of `file`. `base` provides what a domain shares
/// (tokenizer, embedding, head) when it does not bring its own.
fn load_domain<'a>(
    file: &ModelFile<'a>,
    cfg: &Config,
    info: &DomainInfo<'a>,
    base: Option<&Domain<'a>>,
    is_base_file: bool,
) -> Result<Domain<'a>> {
    let dim = cfg.dim as usize;
    let p = info.prefix;
    let (tokenizer, vocab_size, embedding) = if info.own_tokenizer {
        let vocab = info.vocab_size as usize;
        if vocab == 0 || vocab > crate::format::MAX_VOCAB as usize {
            return Err(Error::BadDomain("vocab_size out of range"));
        }
        let tok = Tokenizer::from_file(file, p, info.tokenizer, vocab)?;
        let emb = Matrix::load(file.tensor(&name(p, format_args!("tok_embeddings")))?, vocab, dim)?;
        (tok, vocab, emb)
    } else {
        let b = base.ok_or(Error::BadDomain("a shared-tokenizer domain needs a base domain"))?;
        (b.tokenizer, b.vocab_size, b.embedding)
    };
    let (norm, head) = if info.own_head {
        let norm = vector(file, &name(p, format_args!("norm")), dim)?;
        let head = if is_base_file && p.is_empty() && cfg.tied_head {
            embedding
        } else {
            match file.get(&name(p, format_args!("output"))) {
                Some(t) => Matrix::load(t, vocab_size, dim)?,
                None if is_base_file && p.is_empty() => return Err(Error::MissingTensor(Name::new("output"))),
                None => embedding,
            }
        };
        (norm, head)
    } else {
        let b = base.ok_or(Error::BadDomain("a domain without its own head needs a base domain"))?;
        (b.norm, b.head)
    };
    if let Some(t) = info.tag_token {
        if t as usize >= vocab_size {
            return Err(Error::BadDomain("tag token is outside the vocabulary"));
        }
    }
    let mut expansion = heapless::Vec::new();
    let mut last = 0u16;
    for (j, &pos) in info.expansion_positions.iter().enumerate() {
        if pos < last || pos as u32 > cfg.n_layers {
            return Err(Error::BadDomain("expansion positions must be non-decreasing and ≤ n_layers"));
        }
        last = pos;
        let block = load_block(file, cfg, &name(p, format_args!("blocks.")), j)?;
        // capacity equals the header's own limit, so this cannot fail
        let _ = expansion.push((pos, block));
    }
    Ok(Domain {
        name: info.name,
        source: file.meta.model_id,
        tokenizer,
        vocab_size,
        embedding,
        norm,
        head,
        tag_token: info.tag_token,
        expansion,
    })
}

impl<'a> Model<'a> {
    /// Validates `bytes` (checksum included) and borrows the model from them.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_file(&ModelFile::parse(bytes, VerifyChecksum::Yes)?)
    }

    /// Builds the model from a parsed base file.
    pub fn from_file(file: &ModelFile<'a>) -> Result<Self> {
        if file.meta.kind != FileKind::Base {
            return Err(Error::NotABase);
        }
        let cfg = file.meta.config;
        let mut blocks = heapless::Vec::new();
        for i in 0..cfg.n_layers as usize {
            let b = load_block(file, &cfg, "layers.", i)?;
            blocks.push(b).map_err(|_| Error::BadConfig("too many layers"))?;
        }
        let mut model = Model { config: cfg, model_id: file.meta.model_id, blocks, domains: heapless::Vec::new() };
        let first = file.meta.domains.first().ok_or(Error::BadDomain("a base must declare at least one domain"))?;
        if !first.prefix.is_empty() || !first.own_tokenizer || !first.own_head || first.vocab_size != cfg.vocab_size {
            return Err(Error::BadDomain(
                "the base's first domain must own the unprefixed tokenizer and head, with the config's vocab_size",
            ));
        }
        for info in file.meta.domains.iter() {
            let d = load_domain(file, &cfg, info, model.domains.first(), true)?;
            model.push_domain(d)?;
        }
        Ok(model)
    }

    /// Adds a domain pack (validated, checksum included) made for this base.
    pub fn add_pack_bytes(&mut self, bytes: &'a [u8]) -> Result<()> {
        self.add_pack(&ModelFile::parse(bytes, VerifyChecksum::Yes)?)
    }

    /// Adds the domains of a parsed pack; refuses a pack made for another base.
    pub fn add_pack(&mut self, file: &ModelFile<'a>) -> Result<()> {
        if file.meta.kind != FileKind::Pack {
            return Err(Error::NotAPack);
        }
        if file.meta.base_model_id != self.model_id {
            return Err(Error::PackBaseMismatch {
                expected: Name::new(file.meta.base_model_id),
                found: Name::new(self.model_id),
            });
        }
        let mut pc = file.meta.config;
        pc.vocab_size = self.config.vocab_size;
        pc.tied_head = self.config.tied_head;
        if pc != self.config {
            return Err(Error::BadConfig("the pack's config differs from the base's"));
        }
        // Load everything first, so a refused pack leaves the model unchanged.
        let mut loaded: heapless::Vec<Domain<'a>, MAX_DOMAINS> = heapless::Vec::new();
        for info in file.meta.domains.iter() {
            if info.prefix.is_empty() {
                return Err(Error::BadDomain("pack domains must use a tensor prefix"));
            }
            let d = load_domain(file, &self.config, info, self.domains.first(), false)?;
            if self.domains.iter().chain(loaded.iter()).any(|e| e.name == d.name) {
                return Err(Error::DuplicateDomain(Name::new(d.name)));
            }
            loaded.push(d).map_err(|_| Error::TooManyDomains(MAX_DOMAINS))?;
        }
        if self.domains.len() + loaded.len() > MAX_DOMAINS {
            return Err(Error::TooManyDomains(MAX_DOMAINS));
        }
        for d in loaded {
            self.push_domain(d)?;
        }
        Ok(())
    }

    fn push_domain(&mut self, d: Domain<'a>) -> Result<()> {
        if self.domains.iter().any(|e| e.name == d.name) {
            return Err(Error::DuplicateDomain(Name::new(d.name)));
        }
        self.domains.push(d).map_err(|_| Error::TooManyDomains(MAX_DOMAINS))
    }

    /// The model's shape (from the base file).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `model_id` of the base file (packs name it as their base).
    pub fn model_id(&self) -> &'a str {
        self.model_id
    }

    /// The base's transformer blocks.
    pub fn blocks(&self) -> &[Block<'a>] {
        &self.blocks
    }

    /// Every loaded domain: the base's first, then those of added packs.
    pub fn domains(&self) -> &[Domain<'a>] {
        &self.domains
    }

    /// The domain called `name`.
    pub fn domain(&self, name: &str) -> Result<&Domain<'a>> {
        self.domains.iter().find(|d| d.name == name).ok_or_else(|| Error::UnknownDomain(Name::new(name)))
    }

    /// The base's first domain.
    // why: a Model always has at least one domain: `from_file` refuses a base
    // without one and domains are never removed.
    #[allow(clippy::indexing_slicing)]
    pub fn default_domain(&self) -> &Domain<'a> {
        &self.domains[0]
    }

    /// Exact arena size for sessions of up to `max_seq` tokens over any
    /// loaded domain with the default options ([`SessionOptions::new`]).
    pub fn arena_bytes(&self, max_seq: usize) -> usize {
        self.arena_bytes_for(&SessionOptions::new(max_seq))
    }

    /// Exact arena size for sessions with `opts` (its `max_seq`, KV type and
    /// block buffers; the sampler does not matter) over any loaded domain.
    pub fn arena_bytes_for(&self, opts: &SessionOptions) -> usize {
        crate::arena::Layout::new(self, opts).total
    }

    /// Largest number of blocks any domain runs (sizes the KV cache).
    pub fn max_blocks(&self) -> usize {
        let n = self.blocks.len();
        self.domains.iter().map(|d| d.n_blocks(n)).max().unwrap_or(n)
    }

    /// Largest vocabulary over loaded domains (sizes logits and sampler scratch).
    pub fn max_vocab(&self) -> usize {
        self.domains.iter().map(|d| d.vocab_size).max().unwrap_or(0)
    }
}
