//! `import-llama2c`: Andrej Karpathy's llama2.c checkpoints and `tokenizer.bin`.
//!
//! * **v0 (legacy, `run.c`)**: 7 × i32 config (dim, hidden_dim, n_layers,
//!   n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means
//!   an unshared classifier), then f32 weights: token embedding, attention
//!   norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, the two
//!   obsolete RoPE tables (`seq_len × head_size/2` each), then the
//!   classifier when unshared.
//! * **v1** (`export.py --version 1`): 256-byte header — magic `ak42`
//!   (u32 0x616b3432), version i32 = 1, the 7 config i32, a `shared_classifier`
//!   byte, zero padding — then f32 weights: attention norms, ffn norms,
//!   final norm, embedding, wq, wk, wv, wo, w1, w2, w3, classifier if unshared.
//! * **v2** (`export.py --version 2`, `runq.c`): the same header plus an i32
//!   group size at byte 37; f32 norms (attention, ffn, final), then each of
//!   embedding, wq…, w3 (and the classifier if unshared) as `numel` int8
//!   values followed by `numel / group` f32 scales (groups run over the
//!   flattened row-major tensor).
//!
//! All matrices are `[out, in]` row-major and already use interleaved RoPE
//! pairs (no permutation). The runtime's forward pass is run.c's, with
//! rope_theta 10000 and norm eps 1e-5.

use std::path::Path;

use edgelm_runtime::format::Config;

use crate::store::{ModelBuilder, Role, Source};
use crate::tokenizer_import::{from_llama2c_tokenizer_bin, write_tables};
use crate::{Converted, Error, ImportOptions, Result};

pub const MAGIC: u32 = 0x616b_3432;
pub const HEADER_LEN: usize = 256;

/// Which llama2.c layout a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy run.c layout.
    V0,
    /// f32 with the 256-byte header.
    V1,
    /// Q8_0 with the 256-byte header and this group size.
    V2 { group: usize },
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub version: Version,
    pub config: Config,
    pub shared_classifier: bool,
    /// Byte offset where the weights start.
    pub data_start: usize,
}

/// The little-endian i32 at byte `at` (`None` past the end).
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(*b.get(at..)?.first_chunk::<4>()?))
}

/// The seven config i32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size, seq_len) from byte `at`.
fn config_words(b: &[u8], at: usize) -> Option<[i32; 7]> {
    let mut p = [0i32; 7];
    for (i, v) in p.iter_mut().enumerate() {
        *v = i32_at(b, at + 4 * i)?;
    }
    Some(p)
}

fn positive(v: i32, what: &str) -> Result<u32> {
    if v <= 0 {
        return Err(Error::Config(format!("llama2.c header: {what} = {v} must be positive")));
    }
    Ok(v as u32)
}

/// Parses the header of a llama2.c model file.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let too_short = |what: String| Error::Truncated { path: path.into(), what };
    let p0 = config_words(bytes, 0)
        .ok_or_else(|| too_short(format!("{} bytes, too short for a llama2.c header", bytes.len())))?;
    let (version, p, shared, data_start) = if p0[0] as u32 == MAGIC {
        let header = bytes.first_chunk::<HEADER_LEN>();
        let header = header.ok_or_else(|| too_short("shorter than the 256-byte llama2.c header".into()))?;
        // (all in range: the header is 256 bytes)
        let v = i32_at(header, 4).unwrap_or_default();
        let p = config_words(header, 8).unwrap_or_default();
        let shared = match header[36] {
            0 => false,
            1 => true,
            x => {
                return Err(Error::BadInput {
                    path: path.into(),
                    what: format!("shared_classifier flag is {x}, not 0 or 1"),
                })
            }
        };
        let version = match v {
            1 => Version::V1,
            2 => {
                let g = i32_at(header, 37).unwrap_or_default();
                if g <= 0 || g > 1 << 20 {
                    return Err(Error::BadInput { path: path.into(), what: format!("v2 group size {g} is invalid") });
                }
                Version::V2 { group: g as usize }
            }
            other => {
                return Err(Error::BadInput {
                    path: path.into(),
                    what: format!("llama2.c format version {other} is not supported (only 0, 1 and 2)"),
                })
            }
        };
        (version, p, shared, HEADER_LEN)
    } else {
        let [dim, hidden, layers, heads, kv_heads, vocab, seq] = p0;
        if vocab == 0 {
            return Err(Error::Config("llama2.c header: vocab_size = 0".into()));
        }
        let shared = vocab > 0;
        let vocab =
            vocab.checked_abs().ok_or_else(|| Error::Config("llama2.c header: vocab_size out of range".into()))?;
        (Version::V0, [dim, hidden, layers, heads, kv_heads, vocab, seq], shared, 28)
    };
    let [dim, hidden, layers, heads, kv_heads, vocab, seq] = p;
    let config = Config {
        dim: positive(dim, "dim")?,
        ffn_dim: positive(hidden, "hidden_dim")?,
        n_layers: positive(layers, "n_layers")?,
        n_heads: positive(heads, "n_heads")?,
        n_kv_heads: positive(kv_heads, "n_kv_heads")?,
        vocab_size: positive(vocab, "vocab_size")?,
        max_seq_len: positive(seq, "seq_len")?,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_head: shared,
    };
    config.validate().map_err(|e| Error::BadInput {
        path: path.into(),
        what: format!("not a llama2.c model or unsupported shape: {e}"),
    })?;
    Ok(Header { version, config, shared_classifier: shared, data_start })
}

/// Sequential reader over the weight section, with sizes checked up front
/// (`expected_len`); a read past the end is still an error, not a panic.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        let Some(out) = end.and_then(|end| self.bytes.get(self.pos..end)) else {
            let what = format!("a read of {n} bytes at byte {} is past the end ({} bytes)", self.pos, self.bytes.len());
            return Err(Error::Truncated { path: self.path.into(), what });
        };
        self.pos += n;
        Ok(out)
    }
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        let bytes = self.take(n.saturating_mul(4))?;
        Ok(bytes.as_chunks::<4>().0.iter().map(|&c| f32::from_le_bytes(c)).collect())
    }
    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }
    /// `n` int8 values then `n / group` f32 scales, dequantized.
    fn q80(&mut self, n: usize, group: usize) -> Result<Vec<f32>> {
        let qs = self.take(n)?;
        let scales = self.f32s(n / group.max(1))?;
        let groups = qs.chunks_exact(group.max(1)).zip(scales);
        Ok(groups.flat_map(|(g, s)| g.iter().map(move |&q| q as i8 as f32 * s)).collect())
    }
}

/// Exact size the file must have.
fn expected_len(h: &Header) -> Result<usize> {
    let c = &h.config;
    let (dim, ffn, l, vocab, seq) =
        (c.dim as usize, c.ffn_dim as usize, c.n_layers as usize, c.vocab_size as usize, c.max_seq_len as usize);
    let kv = c.kv_dim();
    let matrices: Vec<usize> = {
        let mut m = vec![vocab * dim];
        m.extend(std::iter::repeat_n(dim * dim, l)); // wq
        m.extend(std::iter::repeat_n(kv * dim, 2 * l)); // wk, wv
        m.extend(std::iter::repeat_n(dim * dim, l)); // wo
        m.extend(std::iter::repeat_n(ffn * dim, 3 * l)); // w1, w2, w3
        if !h.shared_classifier {
            m.push(vocab * dim);
        }
        m
    };
    let norms = (2 * l + 1) * dim;
    let body = match h.version {
        Version::V0 => (norms + matrices.iter().sum::<usize>() + seq * c.head_dim()) * 4,
        Version::V1 => (norms + matrices.iter().sum::<usize>()) * 4,
        Version::V2 { group } => {
            if let Some(n) = matrices.iter().find(|&&n| n % group != 0) {
                return Err(Error::Config(format!("a {n}-element weight is not a whole number of {group}-groups")));
            }
            norms * 4 + matrices.iter().map(|&n| n + n / group * 4).sum::<usize>()
        }
    };
    Ok(h.data_start + body)
}

/// Imports a llama2.c model and its `tokenizer.bin`.
pub fn import_llama2c(
    model_bytes: &[u8],
    tokenizer_bin: &[u8],
    path: &Path,
    opts: &ImportOptions,
) -> Result<Converted> {
    let h = parse_header(model_bytes, path)?;
    let want = expected_len(&h)?;
    if model_bytes.len() != want {
        let what = format!(
            "{} bytes, but a llama2.c {:?} model of this shape (dim {}, layers {}, vocab {}, {} classifier) has {want}",
            model_bytes.len(),
            h.version,
            h.config.dim,
            h.config.n_layers,
            h.config.vocab_size,
            if h.shared_classifier { "shared" } else { "unshared" },
        );
        return Err(if model_bytes.len() < want {
            Error::Truncated { path: path.into(), what }
        } else {
            Error::BadInput { path: path.into(), what: format!("{what}; wrong version or trailing bytes") }
        });
    }
    let c = h.config;
    let tables = from_llama2c_tokenizer_bin(tokenizer_bin, c.vocab_size as usize)
        .map_err(|e| Error::Tokenizer(format!("tokenizer.bin: {e}")))?;
    let (dim, ffn, l, vocab, kv) =
        (c.dim as usize, c.ffn_dim as usize, c.n_layers as usize, c.vocab_size as usize, c.kv_dim());
    let mut cur = Cursor { bytes: model_bytes, pos: h.data_start, path };
    let mut b = ModelBuilder::new(c, opts.policy)?;
    let pb = opts.progress((9 * l + 3) as u64);
    let attn_mats =
        [("attention.wq", dim, dim), ("attention.wk", kv, dim), ("attention.wv", kv, dim), ("attention.wo", dim, dim)];
    let ffn_mats = [("feed_forward.w1", ffn, dim), ("feed_forward.w2", dim, ffn), ("feed_forward.w3", ffn, dim)];
    let add_norms = |b: &mut ModelBuilder, cur: &mut Cursor<'_>, which: &str| -> Result<()> {
        for i in 0..l {
            b.norm(&format!("layers.{i}.{which}"), cur.f32s(dim)?)?;
            pb.inc(1);
        }
        Ok(())
    };
    match h.version {
        Version::V0 => {
            b.matrix("tok_embeddings", Role::Embedding, vocab, dim, Source::F32(cur.f32s(vocab * dim)?))?;
            add_norms(&mut b, &mut cur, "attention_norm")?;
            for &(n, r, co) in &attn_mats {
                for i in 0..l {
                    b.matrix(&format!("layers.{i}.{n}"), Role::Matrix, r, co, Source::F32(cur.f32s(r * co)?))?;
                    pb.inc(1);
                }
            }
            add_norms(&mut b, &mut cur, "ffn_norm")?;
            for &(n, r, co) in &ffn_mats {
                for i in 0..l {
                    b.matrix(&format!("layers.{i}.{n}"), Role::Matrix, r, co, Source::F32(cur.f32s(r * co)?))?;
                    pb.inc(1);
                }
            }
            b.norm("norm", cur.f32s(dim)?)?;
            cur.skip(c.max_seq_len as usize * c.head_dim() * 4)?; // freq_cis_real + freq_cis_imag
            if !h.shared_classifier {
                b.matrix("output", Role::Embedding, vocab, dim, Source::F32(cur.f32s(vocab * dim)?))?;
            }
        }
        Version::V1 | Version::V2 { .. } => {
            add_norms(&mut b, &mut cur, "attention_norm")?;
            add_norms(&mut b, &mut cur, "ffn_norm")?;
            b.norm("norm", cur.f32s(dim)?)?;
            let read = |cur: &mut Cursor<'_>, n: usize| match h.version {
                Version::V2 { group } => cur.q80(n, group),
                _ => cur.f32s(n),
            };
            b.matrix("tok_embeddings", Role::Embedding, vocab, dim, Source::F32(read(&mut cur, vocab * dim)?))?;
            for &(n, r, co) in attn_mats.iter().chain(&ffn_mats) {
                for i in 0..l {
                    b.matrix(&format!("layers.{i}.{n}"), Role::Matrix, r, co, Source::F32(read(&mut cur, r * co)?))?;
                    pb.inc(1);
                }
            }
            if !h.shared_classifier {
                b.matrix("output", Role::Embedding, vocab, dim, Source::F32(read(&mut cur, vocab * dim)?))?;
            }
        }
    }
    pb.inc(3);
    debug_assert_eq!(cur.pos, model_bytes.len());
    write_tables(&tables, &mut b.writer, "").map_err(|e| Error::Tokenizer(e.to_string()))?;
    b.writer.domains.push(crate::checkpoint::base_domain(
        opts.domain.as_deref().unwrap_or("story"),
        c.vocab_size,
        &tables,
    ));
    b.writer.model_id = b.content_id();
    pb.finish_and_clear();
    let (bytes, report) = b.finish()?;
    Ok(Converted { bytes, report })
}
