//! Building `.edgelm` files (needs `alloc`). The converter and the tests use
//! this; nothing else writes the format.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::checksum::xxh64;
use super::*;
use crate::error::{Error, Name, Result};

/// A domain to declare in the header (owned form of [`DomainInfo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainSpec {
    pub name: String,
    pub prefix: String,
    pub own_tokenizer: bool,
    pub own_head: bool,
    pub vocab_size: u32,
    pub tokenizer: TokenizerInfo,
    pub tag_token: Option<u32>,
    pub expansion_positions: Vec<u16>,
}

struct PendingTensor {
    name: String,
    dtype: DType,
    shape: Vec<u32>,
    bytes: Vec<u8>,
}

/// Collects a header and tensors, then serialises them in one go.
pub struct FileWriter {
    pub kind: FileKind,
    pub model_id: String,
    pub base_model_id: String,
    pub config: Config,
    pub domains: Vec<DomainSpec>,
    tensors: Vec<PendingTensor>,
}

/// Quantizes rows of `x` (length a multiple of 32) to int8 with one f16
/// scale per group of 32, rounding to nearest. The scale is rounded to f16
/// *before* quantizing so that stored values reproduce exactly what the
/// scale can express (and GGUF Q8_0 round-trips bit for bit).
pub fn quantize_q8(x: &[f32]) -> (Vec<i8>, Vec<u16>) {
    let mut qs = vec![0i8; x.len()];
    let mut scales = vec![0u16; x.len() / Q8_GROUP];
    for ((group, q), s) in x.chunks_exact(Q8_GROUP).zip(qs.chunks_exact_mut(Q8_GROUP)).zip(scales.iter_mut()) {
        let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
        // clamp: a scale beyond f16's range would become inf (and dequantize to NaN)
        let d = half::f16::from_f32((amax / 127.0).min(half::f16::MAX.to_f32()));
        *s = d.to_bits();
        let d = d.to_f32();
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (qi, &v) in q.iter_mut().zip(group) {
            *qi = crate::kernels::round_half_away(v * id).clamp(-127.0, 127.0) as i8;
        }
    }
    (qs, scales)
}

/// Quantizes rows of `x` (length a multiple of 32) to 4 bits, GGUF Q4_0
/// style: per group of 32 the value of largest magnitude `m` maps to -8, so
/// the scale is `d = m / -8` (rounded to f16 first, as for q8) and
/// `q = clamp(round(x / d), -8, 7)`. Returns the packed nibbles (layout in
/// [`DType::Q4`]) and the f16 scales.
pub fn quantize_q4(x: &[f32]) -> (Vec<u8>, Vec<u16>) {
    let mut qs = vec![0u8; x.len() / 2];
    let mut scales = vec![0u16; x.len() / Q4_GROUP];
    for ((group, q), s) in x.chunks_exact(Q4_GROUP).zip(qs.chunks_exact_mut(Q4_GROUP / 2)).zip(scales.iter_mut()) {
        let m = group.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        // clamp: a scale beyond f16's range would become inf (and dequantize to NaN)
        let lim = half::f16::MAX.to_f32();
        let d = half::f16::from_f32((m / -8.0).clamp(-lim, lim));
        *s = d.to_bits();
        let d = d.to_f32();
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let nib = |v: f32| (crate::kernels::round_half_away(v * id).clamp(-8.0, 7.0) as i8 + 8) as u8;
        let (lo, hi) = group.split_at(Q4_GROUP / 2);
        for ((b, &l), &h) in q.iter_mut().zip(lo).zip(hi) {
            *b = nib(l) | (nib(h) << 4);
        }
    }
    (qs, scales)
}

impl FileWriter {
    pub fn new(kind: FileKind, model_id: &str, config: Config) -> Self {
        FileWriter {
            kind,
            model_id: model_id.into(),
            base_model_id: String::new(),
            config,
            domains: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Adds a tensor from raw little-endian bytes.
    pub fn add_raw(&mut self, name: &str, dtype: DType, shape: &[u32], bytes: Vec<u8>) -> Result<()> {
        // The same rules the reader enforces, so a written file always parses.
        let bad = |what| Err(Error::BadTensor { name: Name::new(name), what });
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return bad("name is empty or longer than 128 bytes");
        }
        if shape.is_empty() || shape.len() > MAX_DIMS || shape.contains(&0) {
            return bad("shape needs 1 to 4 non-zero dimensions");
        }
        if !(shape.last().copied().unwrap_or(0) as usize).is_multiple_of(dtype.group()) {
            return bad("quantized tensor's last dimension is not a multiple of 32");
        }
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        if dtype.byte_len(n) != Some(bytes.len() as u64) {
            return bad("bytes do not match dtype and shape");
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::BadTensor { name: Name::new(name), what: "added twice" });
        }
        self.tensors.push(PendingTensor { name: name.into(), dtype, shape: shape.to_vec(), bytes });
        Ok(())
    }

    pub fn add_f32(&mut self, name: &str, shape: &[u32], data: &[f32]) -> Result<()> {
        self.add_raw(name, DType::F32, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn add_f16(&mut self, name: &str, shape: &[u32], data: &[f32]) -> Result<()> {
        let bytes = data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        self.add_raw(name, DType::F16, shape, bytes)
    }

    /// Quantizes `data` (groups of 32 along the last axis) and adds it as q8.
    pub fn add_q8(&mut self, name: &str, shape: &[u32], data: &[f32]) -> Result<()> {
        if !data.len().is_multiple_of(Q8_GROUP) {
            return Err(Error::BadTensor { name: Name::new(name), what: "q8 needs a multiple of 32 elements" });
        }
        let (qs, scales) = quantize_q8(data);
        self.add_q8_parts(name, shape, &qs, &scales)
    }

    /// Adds already-quantized q8 data (e.g. imported GGUF Q8_0 blocks).
    pub fn add_q8_parts(&mut self, name: &str, shape: &[u32], qs: &[i8], scales: &[u16]) -> Result<()> {
        if scales.len() * Q8_GROUP != qs.len() {
            return Err(Error::BadTensor { name: Name::new(name), what: "q8 needs one scale per 32 values" });
        }
        let mut bytes = Vec::with_capacity(qs.len() + scales.len() * 2);
        bytes.extend(qs.iter().map(|&q| q as u8));
        bytes.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
        self.add_raw(name, DType::Q8, shape, bytes)
    }

    /// Quantizes `data` (groups of 32 along the last axis) and adds it as q4.
    pub fn add_q4(&mut self, name: &str, shape: &[u32], data: &[f32]) -> Result<()> {
        if !data.len().is_multiple_of(Q4_GROUP) {
            return Err(Error::BadTensor { name: Name::new(name), what: "q4 needs a multiple of 32 elements" });
        }
        let (qs, scales) = quantize_q4(data);
        self.add_q4_parts(name, shape, &qs, &scales)
    }

    /// Adds already-quantized q4 data (packed nibbles, layout in [`DType::Q4`]).
    pub fn add_q4_parts(&mut self, name: &str, shape: &[u32], qs: &[u8], scales: &[u16]) -> Result<()> {
        if scales.len() * Q4_GROUP != qs.len() * 2 {
            return Err(Error::BadTensor { name: Name::new(name), what: "q4 needs one scale per 16 bytes" });
        }
        let mut bytes = Vec::with_capacity(qs.len() + scales.len() * 2);
        bytes.extend_from_slice(qs);
        bytes.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
        self.add_raw(name, DType::Q4, shape, bytes)
    }

    pub fn add_u32(&mut self, name: &str, shape: &[u32], data: &[u32]) -> Result<()> {
        self.add_raw(name, DType::U32, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn add_u8(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.add_raw(name, DType::U8, &[data.len() as u32], data.to_vec())
    }

    /// Serialises the file: preamble, header, aligned data, checksum.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.config.validate()?;
        let mut domains = heapless::Vec::<DomainInfo<'_>, MAX_DOMAINS>::new();
        for d in &self.domains {
            let positions = heapless::Vec::from_slice(&d.expansion_positions)
                .map_err(|_| Error::BadDomain("too many expansion blocks"))?;
            domains
                .push(DomainInfo {
                    name: &d.name,
                    prefix: &d.prefix,
                    own_tokenizer: d.own_tokenizer,
                    own_head: d.own_head,
                    vocab_size: d.vocab_size,
                    tokenizer: d.tokenizer,
                    tag_token: d.tag_token,
                    expansion_positions: positions,
                })
                .map_err(|_| Error::TooManyDomains(MAX_DOMAINS))?;
        }
        let meta = HeaderMeta {
            kind: self.kind,
            model_id: &self.model_id,
            base_model_id: &self.base_model_id,
            config: self.config,
            domains,
        };
        if self.tensors.len() > MAX_TENSORS {
            return Err(Error::TooManyTensors(self.tensors.len() as u64, MAX_TENSORS));
        }
        let mut order: Vec<&PendingTensor> = self.tensors.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));

        let encode_err = |_| Error::HeaderDecode("header could not be encoded");
        let mut header = postcard::to_allocvec(&meta).map_err(encode_err)?;
        header.extend(postcard::to_allocvec(&(order.len() as u32)).map_err(encode_err)?);
        let mut offset = 0u64;
        let mut data_len = 0u64;
        for t in &order {
            let info = TensorInfo {
                name: &t.name,
                dtype: t.dtype,
                shape: heapless::Vec::from_slice(&t.shape)
                    .map_err(|_| Error::BadTensor { name: Name::new(&t.name), what: "more than 4 dimensions" })?,
                offset,
                len: t.bytes.len() as u64,
            };
            header.extend(postcard::to_allocvec(&info).map_err(encode_err)?);
            data_len = offset + t.bytes.len() as u64;
            offset = align_up(data_len as usize) as u64;
        }

        let data_start = align_up(PREAMBLE_LEN + header.len());
        let mut out = Vec::with_capacity(data_start + data_len as usize + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        // the oldest version that holds every tensor: files without q4 stay v1
        let version = order.iter().map(|t| t.dtype.min_version()).max().unwrap_or(FORMAT_VERSION_MIN);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&ENDIAN_MARK.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&header);
        out.resize(data_start, 0);
        for t in &order {
            out.resize(align_up(out.len()), 0);
            out.extend_from_slice(&t.bytes);
        }
        debug_assert_eq!(out.len(), data_start + data_len as usize);
        let sum = xxh64(&out, 0);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }
}
