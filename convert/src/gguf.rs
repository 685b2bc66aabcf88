//! GGUF `llama` models in and out, through candle-core's
//! `quantized::gguf_file` (reader: `Content::read`; writer: `write`).
//!
//! Tensor names: `token_embd.weight`, `blk.N.{attn_norm, attn_q, attn_k,
//! attn_v, attn_output, ffn_norm, ffn_gate (w1), ffn_down (w2), ffn_up (w3)}.weight`,
//! `output_norm.weight`, `output.weight` (absent when tied). GGUF lists
//! dimensions innermost first (`ne[0]` = columns); candle reverses them, so
//! shapes here are row-major `[rows, cols]` like the runtime's. Q/K rows of
//! a GGUF `llama` model are already in the interleaved RoPE layout.
//! Q8_0 blocks (f16 scale + 32 int8) are the runtime's q8 groups and Q4_0
//! blocks (f16 scale + 16 bytes of nibbles, in the same order) its q4 groups,
//! so q8 and q4 tensors pass through both ways bit for bit (only the scales
//! move: GGUF interleaves them with the blocks, `.edgelm` keeps them apart).

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;
use edgelm_runtime::format::{Config, FileKind, ModelFile, VerifyChecksum, Q4_GROUP, Q8_GROUP};
use edgelm_runtime::model::{Block, Matrix, Weights};
use edgelm_runtime::{AlignedBytes, Model};

use crate::store::{check_shape, ModelBuilder, Role, Source};
use crate::tokenizer_import::{write_tables, TokenizerTables};
use crate::vocab::{from_gguf, tables_from_file, to_gguf};
use crate::{Converted, Error, ImportOptions, Result};

const Q8_BLOCK_BYTES: usize = 2 + Q8_GROUP;
const Q4_BLOCK_BYTES: usize = 2 + Q4_GROUP / 2;

/// candle's message without the backtrace it appends when RUST_BACKTRACE is set.
pub(crate) fn candle_msg(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_msg(inner),
        other => other.to_string(),
    }
}

fn gerr(e: candle_core::Error) -> Error {
    Error::Gguf(candle_msg(&e))
}

/// Reads the header of a GGUF file with candle, after checking the magic
/// so a wrong file gets a clear message.
fn read_content<R: Read + Seek>(r: &mut R, path: &Path) -> Result<Content> {
    let mut magic = [0u8; 8];
    let got = r.read(&mut magic).map_err(|e| Error::io("read", path, e))?;
    if got < 8 {
        return Err(Error::Truncated { path: path.into(), what: format!("only {got} bytes, a GGUF header needs 24+") });
    }
    if &magic[..4] != b"GGUF" {
        return Err(Error::BadMagic {
            path: path.into(),
            expected: "GGUF",
            what: format!("starts with {:?}", String::from_utf8_lossy(&magic[..4])),
        });
    }
    r.rewind().map_err(|e| Error::io("read", path, e))?;
    refuse_zero_alignment(r, path)?;
    r.rewind().map_err(|e| Error::io("read", path, e))?;
    Content::read(r).map_err(|e| Error::BadInput {
        path: path.into(),
        what: format!("not a readable GGUF file (truncated or corrupt header?): {}", candle_msg(&e)),
    })
}

/// candle 0.11 divides by `general.alignment` (an integer value of 0 panics
/// with a division by zero, found by the `gguf_import` fuzzer). The header is
/// not parsed yet, so the key is looked for as GGUF writes it: its length
/// (u64 in v2/v3, u32 in v1) and name, then the value type and value. A 0 of
/// an integer type candle reads (u8/i8/u16/i16/u32/i32) is refused. Only the
/// first 16 MiB are scanned: metadata precedes the tensor data.
fn refuse_zero_alignment<R: Read + Seek>(r: &mut R, path: &Path) -> Result<()> {
    const KEY: &[u8] = b"general.alignment";
    let mut head = Vec::new();
    r.by_ref().take(16 << 20).read_to_end(&mut head).map_err(|e| Error::io("read", path, e))?;
    let mut from = 0;
    while let Some(at) = head.get(from..).and_then(|h| h.windows(KEY.len()).position(|w| w == KEY)) {
        let end = from + at + KEY.len();
        let len_before = |n: usize| head.get(from + at - n.min(from + at)..from + at);
        let keyed = len_before(8) == Some(&(KEY.len() as u64).to_le_bytes()[..])
            || len_before(4) == Some(&(KEY.len() as u32).to_le_bytes()[..]);
        let ty = head.get(end..end + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let width = match ty {
            Some(0 | 1) => 1,
            Some(2 | 3) => 2,
            Some(4 | 5) => 4,
            _ => 0,
        };
        let zero = width > 0 && head.get(end + 4..end + 4 + width).is_some_and(|v| v.iter().all(|&b| b == 0));
        if keyed && zero {
            return Err(Error::BadInput {
                path: path.into(),
                what: "general.alignment is 0 (a GGUF alignment must be a positive power of two)".into(),
            });
        }
        from = end;
    }
    Ok(())
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => match v {
            Value::U8(x) => Ok(Some(*x as u32)),
            Value::U16(x) => Ok(Some(*x as u32)),
            Value::U32(x) => Ok(Some(*x)),
            Value::I32(x) if *x >= 0 => Ok(Some(*x as u32)),
            Value::U64(x) if *x <= u32::MAX as u64 => Ok(Some(*x as u32)),
            Value::I64(x) if *x >= 0 && *x <= u32::MAX as i64 => Ok(Some(*x as u32)),
            _ => Err(Error::Gguf(format!("metadata {key} must be an unsigned 32-bit integer"))),
        },
    }
}

fn md_req(md: &HashMap<String, Value>, key: &str) -> Result<u32> {
    md_u32(md, key)?.ok_or_else(|| Error::Gguf(format!("metadata {key} is missing")))
}

fn md_f32(md: &HashMap<String, Value>, key: &str, default: f32) -> Result<f32> {
    match md.get(key) {
        None => Ok(default),
        Some(Value::F32(x)) => Ok(*x),
        Some(Value::F64(x)) => Ok(*x as f32),
        Some(_) => Err(Error::Gguf(format!("metadata {key} must be a float"))),
    }
}

fn md_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    match md.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The runtime config a GGUF `llama` model declares.
pub fn config_from_metadata(content: &Content) -> Result<Config> {
    let md = &content.metadata;
    let arch = md_str(md, "general.architecture").unwrap_or("<missing general.architecture>");
    if arch != "llama" {
        return Err(Error::UnsupportedArchitecture(arch.into()));
    }
    let dim = md_req(md, "llama.embedding_length")?;
    let n_heads = md_req(md, "llama.attention.head_count")?;
    if n_heads == 0 || dim % n_heads != 0 {
        return Err(Error::Config(format!("head_count {n_heads} does not divide embedding_length {dim}")));
    }
    if let Some(rd) = md_u32(md, "llama.rope.dimension_count")? {
        if rd != dim / n_heads {
            return Err(Error::Config(format!(
                "rope.dimension_count {rd} ≠ head dim {} (partial RoPE is not supported)",
                dim / n_heads
            )));
        }
    }
    if md.contains_key("llama.rope.scaling.type") && md_str(md, "llama.rope.scaling.type") != Some("none") {
        return Err(Error::Config("RoPE scaling is not supported by the runtime".into()));
    }
    let emb_rows = content.tensor_infos.get("token_embd.weight").map(|t| t.shape.dims().first().copied());
    let vocab = match md_u32(md, "llama.vocab_size")? {
        Some(v) => v,
        None => match emb_rows {
            Some(Some(r)) => r as u32,
            _ => return Err(Error::MissingTensor("token_embd.weight".into())),
        },
    };
    let config = Config {
        dim,
        n_layers: md_req(md, "llama.block_count")?,
        n_heads,
        n_kv_heads: md_u32(md, "llama.attention.head_count_kv")?.unwrap_or(n_heads),
        ffn_dim: md_req(md, "llama.feed_forward_length")?,
        vocab_size: vocab,
        max_seq_len: md_u32(md, "llama.context_length")?.unwrap_or(2048).min(edgelm_runtime::format::MAX_SEQ),
        rope_theta: md_f32(md, "llama.rope.freq_base", 10000.0)?,
        norm_eps: md_f32(md, "llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        tied_head: !content.tensor_infos.contains_key("output.weight"),
    };
    config.validate()?;
    Ok(config)
}

/// One GGUF tensor as a converter source, checked against `shape`.
fn read_tensor<R: Read + Seek>(
    content: &Content,
    r: &mut R,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Source> {
    let info = content.tensor_infos.get(name).ok_or_else(|| Error::MissingTensor(name.into()))?;
    check_shape(name, info.shape.dims(), shape)?;
    match info.ggml_dtype {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_0 | GgmlDType::Q4_0 => {}
        other => return Err(Error::UnsupportedTensorType { name: name.into(), dtype: format!("{other:?}") }),
    }
    let dt = info.ggml_dtype;
    let bytes = (info.shape.elem_count() / dt.block_size()) as u64 * dt.type_size() as u64;
    let end = content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
    let file_len = r.seek(std::io::SeekFrom::End(0)).map_err(|e| Error::io("read", path, e))?;
    if end > file_len {
        return Err(Error::Truncated {
            path: path.into(),
            what: format!("tensor {name} ends at byte {end} but the file has {file_len}"),
        });
    }
    let qt =
        content.tensor(r, name, &Device::Cpu).map_err(|e| Error::Gguf(format!("tensor {name}: {}", candle_msg(&e))))?;
    let data = qt.data().map_err(gerr)?;
    Ok(match info.ggml_dtype {
        GgmlDType::F32 => Source::F32(data.as_chunks::<4>().0.iter().map(|&c| f32::from_le_bytes(c)).collect()),
        GgmlDType::F16 => Source::F16(data.as_chunks::<2>().0.iter().map(|&c| u16::from_le_bytes(c)).collect()),
        GgmlDType::BF16 => Source::F32(
            data.as_chunks::<2>().0.iter().map(|&c| half::bf16::from_bits(u16::from_le_bytes(c)).to_f32()).collect(),
        ),
        // blocks: an f16 scale, then the group's weights
        GgmlDType::Q4_0 => {
            let n_blocks = data.len() / Q4_BLOCK_BYTES;
            let mut qs = Vec::with_capacity(n_blocks * Q4_GROUP / 2);
            let mut scales = Vec::with_capacity(n_blocks);
            for (d, q) in data.chunks_exact(Q4_BLOCK_BYTES).filter_map(<[u8]>::split_first_chunk::<2>) {
                scales.push(u16::from_le_bytes(*d));
                qs.extend_from_slice(q);
            }
            Source::Q4 { qs, scales }
        }
        _ => {
            let n_blocks = data.len() / Q8_BLOCK_BYTES;
            let mut qs = Vec::with_capacity(n_blocks * Q8_GROUP);
            let mut scales = Vec::with_capacity(n_blocks);
            for (d, q) in data.chunks_exact(Q8_BLOCK_BYTES).filter_map(<[u8]>::split_first_chunk::<2>) {
                scales.push(u16::from_le_bytes(*d));
                qs.extend(q.iter().map(|&x| x as i8));
            }
            Source::Q8 { qs, scales }
        }
    })
}

fn to_norm(name: &str, s: Source) -> Result<Vec<f32>> {
    match s {
        Source::Q8 { .. } => Err(Error::UnsupportedTensorType { name: name.into(), dtype: "Q8_0 (for a norm)".into() }),
        Source::Q4 { .. } => Err(Error::UnsupportedTensorType { name: name.into(), dtype: "Q4_0 (for a norm)".into() }),
        other => Ok(other.to_f32()),
    }
}

/// GGUF name of a base block tensor (runtime suffix → GGUF suffix).
const BLOCK_NAMES: [(&str, &str); 9] = [
    ("attention_norm", "attn_norm"),
    ("attention.wq", "attn_q"),
    ("attention.wk", "attn_k"),
    ("attention.wv", "attn_v"),
    ("attention.wo", "attn_output"),
    ("ffn_norm", "ffn_norm"),
    ("feed_forward.w1", "ffn_gate"),
    ("feed_forward.w2", "ffn_down"),
    ("feed_forward.w3", "ffn_up"),
];

/// Imports a GGUF `llama` model.
pub fn import_gguf(path: &Path, opts: &ImportOptions) -> Result<Converted> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    import_gguf_from(&mut std::io::BufReader::new(file), path, opts)
}

/// Imports a GGUF `llama` model from any seekable reader (`path` names it in
/// errors); the fuzzer feeds it in-memory bytes.
pub fn import_gguf_from<R: Read + Seek>(r: &mut R, path: &Path, opts: &ImportOptions) -> Result<Converted> {
    let content = read_content(r, path)?;
    let c = config_from_metadata(&content)?;
    let mut tables = from_gguf(&content.metadata)?;
    crate::checkpoint::fit_vocab(&mut tables, c.vocab_size as usize)?;

    let (dim, vocab) = (c.dim as usize, c.vocab_size as usize);
    let mut known: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into(), "output.weight".into()];
    let mut b = ModelBuilder::new(c, opts.policy)?;
    let pb = opts.progress(2 + 9 * c.n_layers as u64);
    let emb = read_tensor(&content, r, path, "token_embd.weight", &[vocab, dim])?;
    b.matrix("tok_embeddings", Role::Embedding, vocab, dim, emb)?;
    pb.inc(1);
    for l in 0..c.n_layers as usize {
        for ((rt, gg), shape) in BLOCK_NAMES.iter().zip(crate::store::block_tensors(&c, l)) {
            let gname = format!("blk.{l}.{gg}.weight");
            let rname = format!("layers.{l}.{rt}");
            debug_assert_eq!(rname, shape.0);
            match shape.1 {
                None => {
                    let s = read_tensor(&content, r, path, &gname, &[dim])?;
                    b.norm(&rname, to_norm(&gname, s)?)?;
                }
                Some((rows, cols)) => {
                    let s = read_tensor(&content, r, path, &gname, &[rows, cols])?;
                    b.matrix(&rname, Role::Matrix, rows, cols, s)?;
                }
            }
            known.push(gname);
            pb.inc(1);
        }
    }
    let s = read_tensor(&content, r, path, "output_norm.weight", &[dim])?;
    b.norm("norm", to_norm("output_norm.weight", s)?)?;
    if !c.tied_head {
        let s = read_tensor(&content, r, path, "output.weight", &[vocab, dim])?;
        b.matrix("output", Role::Embedding, vocab, dim, s)?;
    }
    pb.inc(1);
    if let Some(extra) = content.tensor_infos.keys().filter(|k| !known.contains(k)).min() {
        return Err(Error::UnexpectedTensor(extra.clone()));
    }
    let domain =
        opts.domain.clone().unwrap_or_else(|| md_str(&content.metadata, "edgelm.domain").unwrap_or("story").into());
    let mut spec = crate::checkpoint::base_domain(&domain, c.vocab_size, &tables);
    // A domain of a shared tokenizer (exported by `export_gguf`) is selected by its
    // tag after BOS; without it the runtime would score from an unseen context.
    spec.tag_token = match md_u32(&content.metadata, "edgelm.tag_token")? {
        Some(t) if t >= c.vocab_size => {
            return Err(Error::Gguf(format!(
                "metadata edgelm.tag_token {t} is not below the vocabulary size {}",
                c.vocab_size
            )))
        }
        t => t,
    };
    write_tables(&tables, &mut b.writer, "").map_err(|e| Error::Tokenizer(e.to_string()))?;
    b.writer.domains.push(spec);
    b.writer.model_id = match md_str(&content.metadata, "edgelm.model_id") {
        Some(id) => id.to_string(),
        None => b.content_id(),
    };
    pb.finish_and_clear();
    let (bytes, report) = b.finish()?;
    Ok(Converted { bytes, report })
}

// ------------------------------------------------------------------ export

/// A `QTensor` holding exactly `bytes` (GGML layout of `dtype`).
fn qtensor(dtype: GgmlDType, bytes: &[u8], dims: Vec<usize>) -> Result<QTensor> {
    // Copy into 8-byte aligned storage: candle reads the blocks in place.
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    let word_bytes = bytemuck::cast_slice_mut::<u64, u8>(&mut words);
    // `word_bytes` is `bytes.len()` rounded up to 8
    let too_short = || Error::Gguf("internal: aligned copy shorter than the tensor".into());
    word_bytes.get_mut(..bytes.len()).ok_or_else(too_short)?.copy_from_slice(bytes);
    let aligned = bytemuck::cast_slice::<u64, u8>(&words).get(..bytes.len()).ok_or_else(too_short)?;
    qtensor_from_ggml(dtype, aligned, dims, &Device::Cpu).map_err(gerr)
}

fn matrix_tensor(m: &Matrix<'_>) -> Result<QTensor> {
    let dims = vec![m.rows, m.cols];
    match m.weights {
        Weights::F32(w) => qtensor(GgmlDType::F32, bytemuck::cast_slice(w), dims),
        Weights::F16(w) => qtensor(GgmlDType::F16, bytemuck::cast_slice(w), dims),
        Weights::Q8 { qs, scales } => {
            let mut bytes = Vec::with_capacity(scales.len() * Q8_BLOCK_BYTES);
            for (g, s) in qs.chunks_exact(Q8_GROUP).zip(scales) {
                bytes.extend_from_slice(&s.to_le_bytes());
                bytes.extend(g.iter().map(|&q| q as u8));
            }
            qtensor(GgmlDType::Q8_0, &bytes, dims)
        }
        Weights::Q4 { qs, scales } => {
            let mut bytes = Vec::with_capacity(scales.len() * Q4_BLOCK_BYTES);
            for (g, s) in qs.chunks_exact(Q4_GROUP / 2).zip(scales) {
                bytes.extend_from_slice(&s.to_le_bytes());
                bytes.extend_from_slice(g);
            }
            qtensor(GgmlDType::Q4_0, &bytes, dims)
        }
    }
}

fn vector_tensor(v: &[f32]) -> Result<QTensor> {
    qtensor(GgmlDType::F32, bytemuck::cast_slice(v), vec![v.len()])
}

fn same_matrix(a: &Matrix<'_>, b: &Matrix<'_>) -> bool {
    let ptr = |m: &Matrix<'_>| match m.weights {
        Weights::F32(w) => w.as_ptr() as usize,
        Weights::F16(w) => w.as_ptr() as usize,
        Weights::Q8 { qs, .. } => qs.as_ptr() as usize,
        Weights::Q4 { qs, .. } => qs.as_ptr() as usize,
    };
    ptr(a) == ptr(b) && a.rows == b.rows && a.cols == b.cols
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Domain to export (default: the base's first domain, or the pack's
    /// first domain when a pack is given).
    pub domain: Option<String>,
}

/// A finished export: the GGUF bytes and a short description.
#[derive(Debug)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub n_blocks: usize,
    pub domain: String,
}

/// Exports one domain of `base` (plus an optional domain `pack`) as a plain
/// GGUF `llama` model: expansion blocks of a pack domain are flattened into
/// the block stack in the order the runtime runs them.
pub fn export_gguf(base: &[u8], pack: Option<&[u8]>, opts: &ExportOptions) -> Result<Exported> {
    let base = AlignedBytes::from_slice(base);
    let pack = pack.map(AlignedBytes::from_slice);
    let base_file = ModelFile::parse(&base, VerifyChecksum::Yes)?;
    if base_file.meta.kind != FileKind::Base {
        return Err(Error::Format(edgelm_runtime::Error::NotABase));
    }
    let mut model = Model::from_file(&base_file)?;
    let pack_file = match &pack {
        Some(p) => {
            let f = ModelFile::parse(p, VerifyChecksum::Yes)?;
            model.add_pack(&f)?;
            Some(f)
        }
        None => None,
    };
    let name = match (&opts.domain, &pack_file) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => match p.meta.domains.first() {
            Some(d) => d.name.to_string(),
            None => return Err(Error::Verify("the pack declares no domain".into())),
        },
        (None, None) => model.default_domain().name.to_string(),
    };
    let domain = model.domain(&name)?;
    // The file and prefix holding this domain's tokenizer tables.
    let info = base_file
        .meta
        .domains
        .iter()
        .map(|d| (&base_file, d))
        .chain(pack_file.iter().flat_map(|f| f.meta.domains.iter().map(move |d| (f, d))))
        .find(|(_, d)| d.name == name)
        .ok_or_else(|| Error::Verify(format!("domain {name} not found")))?;
    let tables: TokenizerTables = if info.1.own_tokenizer {
        tables_from_file(info.0, info.1.prefix, info.1.tokenizer)?
    } else {
        let b = base_file.meta.domains.first().ok_or_else(|| Error::Verify("the base declares no domain".into()))?;
        tables_from_file(&base_file, b.prefix, b.tokenizer)?
    };

    // Block order, as forward() runs them.
    let mut blocks: Vec<&Block<'_>> = Vec::new();
    let mut exp = domain.expansion.iter().peekable();
    for (i, b) in model.blocks().iter().enumerate() {
        while let Some((_, eb)) = exp.next_if(|(p, _)| *p as usize == i) {
            blocks.push(eb);
        }
        blocks.push(b);
    }
    for (_, eb) in exp {
        blocks.push(eb);
    }

    let c = *model.config();
    let tied = same_matrix(&domain.head, &domain.embedding);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push(("token_embd.weight".into(), matrix_tensor(&domain.embedding)?));
    for (l, b) in blocks.iter().enumerate() {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        tensors.push((p("attn_norm"), vector_tensor(b.attn_norm)?));
        tensors.push((p("attn_q"), matrix_tensor(&b.wq)?));
        tensors.push((p("attn_k"), matrix_tensor(&b.wk)?));
        tensors.push((p("attn_v"), matrix_tensor(&b.wv)?));
        tensors.push((p("attn_output"), matrix_tensor(&b.wo)?));
        tensors.push((p("ffn_norm"), vector_tensor(b.ffn_norm)?));
        tensors.push((p("ffn_gate"), matrix_tensor(&b.w1)?));
        tensors.push((p("ffn_down"), matrix_tensor(&b.w2)?));
        tensors.push((p("ffn_up"), matrix_tensor(&b.w3)?));
    }
    tensors.push(("output_norm.weight".into(), vector_tensor(domain.norm)?));
    if !tied {
        tensors.push(("output.weight".into(), matrix_tensor(&domain.head)?));
    }

    // general.file_type: the type most matrix weights have.
    let mut counts = [0usize; 4];
    for (_, t) in &tensors {
        if t.shape().dims().len() == 2 {
            let count = match t.dtype() {
                GgmlDType::F16 => &mut counts[1],
                GgmlDType::Q8_0 => &mut counts[2],
                GgmlDType::Q4_0 => &mut counts[3],
                _ => &mut counts[0],
            };
            *count += t.shape().elem_count();
        }
    }
    let file_type = match counts.iter().enumerate().max_by_key(|(_, n)| **n).map(|(i, _)| i) {
        Some(1) => 1u32, // MOSTLY_F16
        Some(2) => 7u32, // MOSTLY_Q8_0
        Some(3) => 2u32, // MOSTLY_Q4_0
        _ => 0u32,       // ALL_F32
    };
    let vocab = domain.vocab_size as u32;
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(format!("edgelm {name}"))),
        ("general.file_type".into(), Value::U32(file_type)),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(gguf_file::DEFAULT_ALIGNMENT as u32)),
        ("llama.context_length".into(), Value::U32(c.max_seq_len)),
        ("llama.embedding_length".into(), Value::U32(c.dim)),
        ("llama.block_count".into(), Value::U32(blocks.len() as u32)),
        ("llama.feed_forward_length".into(), Value::U32(c.ffn_dim)),
        ("llama.attention.head_count".into(), Value::U32(c.n_heads)),
        ("llama.attention.head_count_kv".into(), Value::U32(c.n_kv_heads)),
        ("llama.rope.dimension_count".into(), Value::U32(c.head_dim() as u32)),
        ("llama.rope.freq_base".into(), Value::F32(c.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(c.norm_eps)),
        ("llama.vocab_size".into(), Value::U32(vocab)),
        (
            "edgelm.model_id".into(),
            Value::String(if pack_file.is_some() { domain.source } else { model.model_id() }.into()),
        ),
        ("edgelm.domain".into(), Value::String(name.clone())),
    ];
    if let Some(t) = domain.tag_token {
        // A shared-tokenizer domain is selected by feeding its tag after BOS.
        md.push(("edgelm.tag_token".into(), Value::U32(t)));
    }
    md.extend(to_gguf(&tables)?);

    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).map_err(gerr)?;
    Ok(Exported { bytes: out.into_inner(), n_blocks: blocks.len(), domain: name })
}
