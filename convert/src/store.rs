//! Storage choices and the model builder every importer writes through:
//! it checks shapes, converts or quantizes each tensor, measures the
//! quantization error, and hands the result to the runtime's `FileWriter`.

use std::fmt;
use std::str::FromStr;

use edgelm_runtime::format::{Config, DType, FileKind, FileWriter, Q4_GROUP, Q8_GROUP};
use edgelm_runtime::kernels::f16_to_f32;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Storage type of the weight matrices (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDType {
    F32,
    F16,
    Q8,
    /// 4-bit, GGUF Q4_0 semantics (one f16 scale per 32 values).
    Q4,
    /// As the input stores it (GGUF F32 / F16 / Q8_0 / Q4_0; other inputs:
    /// f32, or f16 for f16 inputs): a lossless import.
    Keep,
}

impl StoreDType {
    pub fn dtype(self) -> DType {
        match self {
            StoreDType::F32 | StoreDType::Keep => DType::F32,
            StoreDType::F16 => DType::F16,
            StoreDType::Q8 => DType::Q8,
            StoreDType::Q4 => DType::Q4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            StoreDType::Keep => "keep",
            other => other.dtype().name(),
        }
    }
}

impl FromStr for StoreDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(StoreDType::F32),
            "f16" => Ok(StoreDType::F16),
            "q8" | "q8_0" | "int8" => Ok(StoreDType::Q8),
            "q4" | "q4_0" | "int4" => Ok(StoreDType::Q4),
            "keep" => Ok(StoreDType::Keep),
            other => Err(format!("unknown dtype {other:?}: use f32, f16, q8, q4 or keep")),
        }
    }
}

impl fmt::Display for StoreDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How each kind of tensor is stored. Norms are always f32 (the runtime
/// reads them as f32 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Feed-forward matrices (and attention ones unless `attention` is set).
    pub matrices: StoreDType,
    /// The token embedding and the output head (tied or not).
    pub embedding: StoreDType,
    /// Attention projections (wq, wk, wv, wo); `None`: as `matrices`.
    pub attention: Option<StoreDType>,
    /// Experiment only (hidden `--q4-simulate`): q4 matrices are quantized
    /// with this layout, dequantized and stored as f32, so that q4 layouts
    /// the runtime does not run can be compared by BPB (docs/CONVERT.md).
    pub q4_simulate: Option<Q4Layout>,
}

impl Policy {
    /// The default for `--dtype d`: every matrix, the embedding included, in
    /// `d`. (Measured on the story model: a q8 embedding costs no measurable
    /// BPB against an f16 one; see docs/CONVERT.md.)
    pub fn uniform(d: StoreDType) -> Self {
        Policy { matrices: d, embedding: d, attention: None, q4_simulate: None }
    }

    /// What a matrix of `role` called `name` is stored as.
    fn target(&self, name: &str, role: Role) -> StoreDType {
        match role {
            Role::Embedding => self.embedding,
            Role::Matrix if name.contains("attention.") => self.attention.unwrap_or(self.matrices),
            Role::Matrix => self.matrices,
        }
    }
}

/// A 4-bit group layout (groups of 32), for the `--q4-simulate` experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Layout {
    /// GGUF Q4_0: f16 scale, `q` in [-8, 7] (what `q4` files store).
    Symmetric,
    /// GGUF Q4_1: f16 scale and f16 minimum, `q` in [0, 15] (value = q·d + m).
    Offset,
}

impl FromStr for Q4Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "symmetric" | "q4_0" => Ok(Q4Layout::Symmetric),
            "offset" | "q4_1" => Ok(Q4Layout::Offset),
            other => Err(format!("unknown q4 layout {other:?}: use symmetric (q4_0) or offset (q4_1)")),
        }
    }
}

/// `x` quantized with `layout` and dequantized again (groups of 32).
pub fn fake_quantize_q4(x: &[f32], layout: Q4Layout) -> Vec<f32> {
    match layout {
        Q4Layout::Symmetric => {
            let (qs, scales) = edgelm_runtime::format::quantize_q4(x);
            dequantize_q4(&qs, &scales)
        }
        Q4Layout::Offset => {
            let mut out = Vec::with_capacity(x.len());
            for g in x.chunks_exact(Q4_GROUP) {
                let (lo, hi) = g.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let d = half::f16::from_f32((hi - lo) / 15.0).to_f32();
                let m = half::f16::from_f32(lo).to_f32();
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(
                    g.iter().map(|&v| edgelm_runtime::kernels::round_half_away((v - m) * id).clamp(0.0, 15.0) * d + m),
                );
            }
            out
        }
    }
}

/// What a matrix is, for the storage policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    Matrix,
}

/// Weights as read from the input.
pub enum Source {
    F32(Vec<f32>),
    /// IEEE half bits.
    F16(Vec<u16>),
    /// Already int8 with one f16 scale per 32 values along rows (GGUF Q8_0):
    /// stored as is when the target is q8, so the conversion is lossless.
    Q8 {
        qs: Vec<i8>,
        scales: Vec<u16>,
    },
    /// Already 4-bit (GGUF Q4_0), repacked into the runtime's q4 layout:
    /// stored as is when the target is q4.
    Q4 {
        qs: Vec<u8>,
        scales: Vec<u16>,
    },
}

impl Source {
    pub fn len(&self) -> usize {
        match self {
            Source::F32(v) => v.len(),
            Source::F16(v) => v.len(),
            Source::Q8 { qs, .. } => qs.len(),
            Source::Q4 { qs, .. } => qs.len() * 2,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as f32 (dequantized if needed).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Source::F32(v) => v.clone(),
            Source::F16(v) => v.iter().map(|&b| f16_to_f32(b)).collect(),
            Source::Q8 { qs, scales } => dequantize_q8(qs, scales),
            Source::Q4 { qs, scales } => dequantize_q4(qs, scales),
        }
    }
}

/// `(nibble − 8) * scale` for each group of 32 (layout in `DType::Q4`).
pub fn dequantize_q4(qs: &[u8], scales: &[u16]) -> Vec<f32> {
    let mut out = Vec::with_capacity(qs.len() * 2);
    for (g, &s) in qs.chunks(Q4_GROUP / 2).zip(scales) {
        let d = f16_to_f32(s);
        out.extend(g.iter().map(|&b| ((b & 0x0f) as i32 - 8) as f32 * d));
        out.extend(g.iter().map(|&b| ((b >> 4) as i32 - 8) as f32 * d));
    }
    out
}

/// `q * scale` for each group of 32.
pub fn dequantize_q8(qs: &[i8], scales: &[u16]) -> Vec<f32> {
    let mut out = Vec::with_capacity(qs.len());
    for (g, &s) in qs.chunks(Q8_GROUP).zip(scales) {
        let d = f16_to_f32(s);
        out.extend(g.iter().map(|&q| q as f32 * d));
    }
    out
}

/// Quantization error of one stored tensor against its input values.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u32>,
    /// Largest absolute error of one value.
    pub max_err: f32,
    /// Root mean square error.
    pub rms_err: f32,
    /// Root mean square of the values themselves (for the relative error).
    pub rms: f32,
    /// Why the tensor is not in the requested dtype, if it is not.
    pub note: Option<&'static str>,
}

impl TensorReport {
    pub fn rel_rms_err(&self) -> f32 {
        if self.rms > 0.0 {
            self.rms_err / self.rms
        } else {
            0.0
        }
    }
}

/// Everything a conversion reports.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub tensors: Vec<TensorReport>,
}

impl Report {
    /// Largest `max_err` and the relative RMS error over all matrix values
    /// (norms, always f32 and exact, are left out of both).
    pub fn summary(&self) -> (f32, f32) {
        let max = self.tensors.iter().map(|t| t.max_err).fold(0f32, f32::max);
        let (mut num, mut den) = (0f64, 0f64);
        for t in self.tensors.iter().filter(|t| t.shape.len() == 2) {
            let n: f64 = t.shape.iter().map(|&d| d as f64).product();
            num += (t.rms_err as f64).powi(2) * n;
            den += (t.rms as f64).powi(2) * n;
        }
        (max, if den > 0.0 { (num / den).sqrt() as f32 } else { 0.0 })
    }

    pub fn to_json(&self) -> serde_json::Value {
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "dtype": t.dtype.name(), "shape": t.shape,
                    "max_err": t.max_err, "rms_err": t.rms_err, "rms": t.rms,
                    "rel_rms_err": t.rel_rms_err(), "note": t.note,
                })
            })
            .collect();
        let (max, rel) = self.summary();
        serde_json::json!({ "tensors": tensors, "max_err": max, "rel_rms_err": rel })
    }
}

fn error_stats(orig: &[f32], stored: &[f32]) -> (f32, f32, f32) {
    let (mut max, mut se, mut ss) = (0f32, 0f64, 0f64);
    for (&a, &b) in orig.iter().zip(stored) {
        let e = (a - b).abs();
        max = max.max(e);
        se += (e as f64) * (e as f64);
        ss += (a as f64) * (a as f64);
    }
    let n = orig.len().max(1) as f64;
    (max, (se / n).sqrt() as f32, (ss / n).sqrt() as f32)
}

/// Collects a base model's tensors into a `FileWriter`.
pub struct ModelBuilder {
    pub writer: FileWriter,
    pub policy: Policy,
    pub report: Report,
    /// sha256 over name-sorted `(name, 0, f32 LE values)` of the input
    /// weights, for a `model_id` when the input does not carry one.
    hashes: Vec<(String, [u8; 32])>,
}

fn values_hash(name: &str, v: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    let mut buf = Vec::with_capacity(v.len() * 4);
    for x in v {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    h.update(&buf);
    h.finalize().into()
}

impl ModelBuilder {
    pub fn new(config: Config, policy: Policy) -> Result<Self> {
        config.validate()?;
        Ok(ModelBuilder {
            writer: FileWriter::new(FileKind::Base, "", config),
            policy,
            report: Report::default(),
            hashes: Vec::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.writer.config
    }

    /// `sha256:<hex>` over the imported weights (name-sorted).
    pub fn content_id(&self) -> String {
        let mut v: Vec<&(String, [u8; 32])> = self.hashes.iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (n, d) in v {
            h.update(n.as_bytes());
            h.update(d);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// A norm vector (always f32).
    pub fn norm(&mut self, name: &str, data: Vec<f32>) -> Result<()> {
        let dim = self.config().dim as usize;
        check_shape(name, &[data.len()], &[dim])?;
        check_finite(name, &data)?;
        self.hashes.push((name.to_string(), values_hash(name, &data)));
        self.writer.add_f32(name, &[dim as u32], &data)?;
        self.report.tensors.push(TensorReport {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![dim as u32],
            max_err: 0.0,
            rms_err: 0.0,
            rms: error_stats(&data, &data).2,
            note: None,
        });
        Ok(())
    }

    /// A `[rows, cols]` matrix, stored as the policy says for `role`.
    pub fn matrix(&mut self, name: &str, role: Role, rows: usize, cols: usize, src: Source) -> Result<()> {
        if src.len() != rows * cols {
            return Err(Error::ShapeMismatch { name: name.into(), got: vec![src.len()], expected: vec![rows, cols] });
        }
        let want = self.policy.target(name, role);
        let shape = [rows as u32, cols as u32];
        let mut note = None;
        let want = match (want, &src) {
            (StoreDType::Keep, Source::F32(_)) => StoreDType::F32,
            (StoreDType::Keep, Source::F16(_)) => StoreDType::F16,
            (StoreDType::Keep, Source::Q8 { .. }) => StoreDType::Q8,
            (StoreDType::Keep, Source::Q4 { .. }) => StoreDType::Q4,
            (w, _) => w,
        };
        let target = if want == StoreDType::Q8 && !cols.is_multiple_of(Q8_GROUP) {
            note = Some("row length is not a multiple of 32: stored as f16 instead of q8");
            StoreDType::F16
        } else if want == StoreDType::Q4 && !cols.is_multiple_of(Q4_GROUP) {
            note = Some("row length is not a multiple of 32: stored as f16 instead of q4");
            StoreDType::F16
        } else {
            want
        };
        let orig = src.to_f32();
        check_finite(name, &orig)?;
        self.hashes.push((name.to_string(), values_hash(name, &orig)));
        let stored: Vec<f32> = match (target, src) {
            (StoreDType::Q8, Source::Q8 { qs, scales }) => {
                // Lossless: the blocks are stored exactly as read.
                self.writer.add_q8_parts(name, &shape, &qs, &scales)?;
                orig.clone()
            }
            (StoreDType::Q8, _) => {
                let (qs, scales) = edgelm_runtime::format::quantize_q8(&orig);
                self.writer.add_q8_parts(name, &shape, &qs, &scales)?;
                dequantize_q8(&qs, &scales)
            }
            (StoreDType::Q4, src) if self.policy.q4_simulate.is_some() => {
                let layout = self.policy.q4_simulate.unwrap_or(Q4Layout::Symmetric);
                let fake = match src {
                    Source::Q4 { .. } => orig.clone(),
                    _ => fake_quantize_q4(&orig, layout),
                };
                note = Some("q4 simulated: quantized, dequantized and stored as f32 (experiment)");
                self.writer.add_f32(name, &shape, &fake)?;
                fake
            }
            (StoreDType::Q4, Source::Q4 { qs, scales }) => {
                // Lossless: the blocks are stored exactly as read.
                self.writer.add_q4_parts(name, &shape, &qs, &scales)?;
                orig.clone()
            }
            (StoreDType::Q4, _) => {
                let (qs, scales) = edgelm_runtime::format::quantize_q4(&orig);
                self.writer.add_q4_parts(name, &shape, &qs, &scales)?;
                dequantize_q4(&qs, &scales)
            }
            (StoreDType::F16, Source::F16(bits)) => {
                let bytes = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
                self.writer.add_raw(name, DType::F16, &shape, bytes)?;
                orig.clone()
            }
            (StoreDType::F16, _) => {
                self.writer.add_f16(name, &shape, &orig)?;
                orig.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
            }
            (StoreDType::F32 | StoreDType::Keep, _) => {
                self.writer.add_f32(name, &shape, &orig)?;
                orig.clone()
            }
        };
        let (max_err, rms_err, rms) = error_stats(&orig, &stored);
        let simulated = target == StoreDType::Q4 && self.policy.q4_simulate.is_some();
        self.report.tensors.push(TensorReport {
            name: name.into(),
            dtype: if simulated { DType::F32 } else { target.dtype() },
            shape: shape.to_vec(),
            max_err,
            rms_err,
            rms,
            note,
        });
        Ok(())
    }

    /// Serialises the file and checks that the runtime loads it (structure,
    /// shapes, tokenizer tables) before anything is written to disk.
    pub fn finish(self) -> Result<(Vec<u8>, Report)> {
        let bytes = self.writer.to_bytes()?;
        let aligned = edgelm_runtime::AlignedBytes::from_slice(&bytes);
        edgelm_runtime::Model::from_bytes(&aligned)?;
        Ok((bytes, self.report))
    }
}

/// Errors on NaN or infinite weights (a broken checkpoint; q8 would also
/// turn them into garbage scales), and on values too large for an f16 q8
/// scale (`|x| > 65504 · 127`).
fn check_finite(name: &str, v: &[f32]) -> Result<()> {
    if let Some((i, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite() || x.abs() > 65504.0 * 127.0) {
        return Err(Error::BadValues { name: name.into(), index: i, value });
    }
    Ok(())
}

/// Errors unless `got == expected`.
pub fn check_shape(name: &str, got: &[usize], expected: &[usize]) -> Result<()> {
    if got != expected {
        return Err(Error::ShapeMismatch { name: name.into(), got: got.to_vec(), expected: expected.to_vec() });
    }
    Ok(())
}

/// Runtime names of the tensors of base block `l`, with their role and
/// `[rows, cols]` (`None` for norms).
pub fn block_tensors(cfg: &Config, l: usize) -> Vec<(String, Option<(usize, usize)>)> {
    let (dim, ffn, kv) = (cfg.dim as usize, cfg.ffn_dim as usize, cfg.kv_dim());
    let p = format!("layers.{l}.");
    vec![
        (format!("{p}attention_norm"), None),
        (format!("{p}attention.wq"), Some((dim, dim))),
        (format!("{p}attention.wk"), Some((kv, dim))),
        (format!("{p}attention.wv"), Some((kv, dim))),
        (format!("{p}attention.wo"), Some((dim, dim))),
        (format!("{p}ffn_norm"), None),
        (format!("{p}feed_forward.w1"), Some((ffn, dim))),
        (format!("{p}feed_forward.w2"), Some((dim, ffn))),
        (format!("{p}feed_forward.w3"), Some((ffn, dim))),
    ]
}

/// Reorders the rows of a `[n_head * head_dim, cols]` projection from the
/// Hugging Face rotate-half RoPE layout to interleaved pairs, exactly as
/// llama.cpp's `convert_hf_to_gguf.py` `permute`:
/// `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(n_head*hd, cols)`.
/// `w` must hold `n_head · head_dim · cols` values (else a shape error).
pub fn permute_rope_rows(w: &[f32], n_head: usize, head_dim: usize, cols: usize) -> Result<Vec<f32>> {
    let (half, head) = (head_dim / 2, head_dim * cols);
    if w.len() != n_head * head {
        let (got, expected) = (vec![w.len()], vec![n_head, head_dim, cols]);
        return Err(Error::ShapeMismatch { name: "a q/k projection (to permute for RoPE)".into(), got, expected });
    }
    let mut out = vec![0f32; w.len()];
    if head == 0 {
        return Ok(out);
    }
    // within a head, row 2i is row i of the first half and row 2i + 1 row i of the second
    for (o, w) in out.chunks_exact_mut(head).zip(w.chunks_exact(head)) {
        let (first, second) = w.split_at(half * cols);
        let rows = first.chunks_exact(cols).zip(second.chunks_exact(cols));
        for (pair, (a, b)) in o.chunks_exact_mut(2 * cols).zip(rows) {
            let (lo, hi) = pair.split_at_mut(cols);
            lo.copy_from_slice(a);
            hi.copy_from_slice(b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permutation as written in `convert_hf_to_gguf.py`'s terms: head
    /// `h`, destination row `2i + j` takes source row `j·hd/2 + i`.
    #[test]
    fn permute_rope_rows_interleaves_each_heads_halves() {
        let (n_head, hd, cols) = (3, 6, 5);
        let w: Vec<f32> = (0..n_head * hd * cols).map(|v| v as f32).collect();
        let got = permute_rope_rows(&w, n_head, hd, cols).unwrap();
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    let (dst, src) = (h * hd + 2 * i + j, h * hd + j * hd / 2 + i);
                    assert_eq!(
                        got[dst * cols..(dst + 1) * cols],
                        w[src * cols..(src + 1) * cols],
                        "head {h} row {dst}"
                    );
                }
            }
        }
        assert!(matches!(permute_rope_rows(&w[1..], n_head, hd, cols), Err(Error::ShapeMismatch { .. })));
        assert_eq!(permute_rope_rows(&[], 0, hd, cols).unwrap(), Vec::<f32>::new());
    }
}
