//! The KV cache: keys and values of every cached position, per block, in
//! f32, f16 or q8. f16 halves the largest arena buffer at long contexts (on a
//! microcontroller or a 512 MB board it dominates); keys and values are
//! rounded to nearest-even once when stored, and the attention kernels widen
//! them exactly (`Kernels::attn_scores_f16` / `attn_values_f16`).
//!
//! q8 stores each head of each cached key and value as `i8` with one f32
//! scale (`max|x| / 127`, the activations' quantizer, [`quantize_symmetric`]):
//! `1 + 4/head_dim` bytes per value, about a quarter of f32. The kernels
//! widen the integers exactly (`Kernels::attn_scores_q8` / `attn_values_q8`);
//! the scales are applied here, per key after its dot product and per value
//! folded into its attention weight, so the kernels' inner loops stay those
//! of the f16 cache.

use crate::error::{Error, Result};
use crate::kernels::reference::quantize_symmetric;
use crate::kernels::{f16_to_f32, Kernels, ScoresByDim, KEYS_BY_DIM_PAD};

/// An offset past the cache: positions and layers are bounded by the session
/// that carved it (`max_seq`, the model's blocks), so only a mismatched
/// caller gets this.
const PAST_END: Error = Error::BadSetting("KV cache offset past the cache");

/// Element type of a session's KV cache ([`crate::SessionOptions::kv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// 4 bytes per value: the forward pass as trained.
    #[default]
    F32,
    /// 2 bytes per value (IEEE half, round to nearest even on store).
    F16,
    /// 1 byte per value plus one f32 scale per head of each cached key and
    /// value (symmetric, `max|x| / 127`, round half away from zero on store).
    Q8,
}

impl KvType {
    /// Bytes per cached value (a q8 cache adds `4 / head_dim` for its scales).
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
            KvType::Q8 => 1,
        }
    }

    /// `"f32"` / `"f16"` / `"q8"`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }

    /// The type called `name` (`f32` / `f16` / `q8`, case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [KvType::F32, KvType::F16, KvType::Q8].into_iter().find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

/// Keys and values, `[blocks, max_seq, kv_dim]` each.
pub enum KvCache<'s> {
    F32 {
        keys: &'s mut [f32],
        values: &'s mut [f32],
    },
    F16 {
        keys: &'s mut [u16],
        values: &'s mut [u16],
    },
    /// `key_scales`, `value_scales`: `[blocks, max_seq, kv_heads]`, the scale
    /// of the `head_dim` integers at element `h·head_dim` of the cache.
    Q8 {
        keys: &'s mut [i8],
        values: &'s mut [i8],
        key_scales: &'s mut [f32],
        value_scales: &'s mut [f32],
        head_dim: usize,
    },
}

impl KvCache<'_> {
    /// Stores one position's key and value (of `key.len()` each) at element
    /// offset `at`; an offset past the cache is an error.
    pub fn store(&mut self, at: usize, key: &[f32], value: &[f32]) -> Result<()> {
        let n = key.len();
        let value = value.get(..n).ok_or(Error::BadSetting("KV store: value shorter than key"))?;
        let span = at..at.checked_add(n).ok_or(PAST_END)?;
        match self {
            KvCache::F32 { keys, values } => {
                keys.get_mut(span.clone()).ok_or(PAST_END)?.copy_from_slice(key);
                values.get_mut(span).ok_or(PAST_END)?.copy_from_slice(value);
            }
            KvCache::F16 { keys, values } => {
                for (d, &s) in keys.get_mut(span.clone()).ok_or(PAST_END)?.iter_mut().zip(key) {
                    *d = half::f16::from_f32(s).to_bits();
                }
                for (d, &s) in values.get_mut(span).ok_or(PAST_END)?.iter_mut().zip(value) {
                    *d = half::f16::from_f32(s).to_bits();
                }
            }
            KvCache::Q8 { keys, values, key_scales, value_scales, head_dim } => {
                let hd = *head_dim;
                if hd == 0 || !n.is_multiple_of(hd) {
                    return Err(MISALIGNED);
                }
                // the `n / hd` heads from `at`, one after another
                let heads = scale_span(at, n / hd, hd, hd)?;
                let (qk, qv) = (keys.get_mut(span.clone()).ok_or(PAST_END)?, values.get_mut(span).ok_or(PAST_END)?);
                let (sk, sv) =
                    (key_scales.get_mut(heads.clone()).ok_or(PAST_END)?, value_scales.get_mut(heads).ok_or(PAST_END)?);
                for ((x, q), s) in key.chunks_exact(hd).zip(qk.chunks_exact_mut(hd)).zip(sk) {
                    *s = quantize_symmetric(x, q);
                }
                for ((x, q), s) in value.chunks_exact(hd).zip(qv.chunks_exact_mut(hd)).zip(sv) {
                    *s = quantize_symmetric(x, q);
                }
            }
        }
        Ok(())
    }

    /// `att[t] = q · key[base + t·stride] · scale` for `t < att.len()`; keys
    /// past the cache are an error.
    pub fn scores(
        &self,
        k: &Kernels,
        att: &mut [f32],
        q: &[f32],
        base: usize,
        stride: usize,
        scale: f32,
    ) -> Result<()> {
        let span = span(base, att.len(), stride, q.len())?;
        match self {
            KvCache::F32 { keys, .. } => (k.attn_scores)(att, q, keys.get(span).ok_or(PAST_END)?, stride, scale),
            KvCache::F16 { keys, .. } => (k.attn_scores_f16)(att, q, keys.get(span).ok_or(PAST_END)?, stride, scale),
            KvCache::Q8 { keys, key_scales, head_dim, .. } => {
                let scales = head_scales(key_scales, base, att.len(), stride, *head_dim, q.len())?;
                (k.attn_scores_q8)(att, q, keys.get(span).ok_or(PAST_END)?, stride, scale);
                for (a, &s) in att.iter_mut().zip(scales) {
                    *a *= s;
                }
            }
        }
        Ok(())
    }

    /// Copies the `n` keys at `base + t·stride` (one KV head's `hd`
    /// elements each) into `kt` by dimension: `kt[d·ld + t]` = element `d`
    /// of key `t`, widened exactly to f32 from f16 or i8 (a q8 cache's scales
    /// stay here, applied by [`KvCache::scores_by_dim`]); f32 keys through
    /// the table's kernel (`by.store_f32`, which may zero each row up to `n`
    /// rounded up to `KEYS_BY_DIM_PAD`).
    #[allow(clippy::too_many_arguments)]
    pub fn keys_by_dim(
        &self,
        by: ScoresByDim,
        kt: &mut [f32],
        ld: usize,
        base: usize,
        n: usize,
        stride: usize,
        hd: usize,
    ) -> Result<()> {
        if n == 0 || hd == 0 {
            return Ok(());
        }
        check_by_dim(n, hd, kt.len(), ld)?;
        if stride < hd {
            return Err(Error::BadSetting("keys by dimension: keys overlap (stride below the head size)"));
        }
        let span = span(base, n, stride, hd)?;
        match self {
            KvCache::F32 { keys, .. } => (by.store_f32)(kt, ld, keys.get(span).ok_or(PAST_END)?, n, stride, hd),
            KvCache::F16 { keys, .. } => by_dim(kt, ld, keys.get(span).ok_or(PAST_END)?, n, stride, hd, f16_to_f32),
            KvCache::Q8 { keys, .. } => by_dim(kt, ld, keys.get(span).ok_or(PAST_END)?, n, stride, hd, f32::from),
        }
        Ok(())
    }

    /// Scores of one head, or the two heads of a KV group (`att` and `q`:
    /// one or two rows of the same lengths), from the keys
    /// [`KvCache::keys_by_dim`] left in `kt` (`ld` apart), through the
    /// table's kernels (`by.one`, `by.two`: two heads share each load of a
    /// key) in their order (`ScoresByDim`), so a head gets the same bits
    /// alone or in a pair; a q8 cache's key scales applied after, as
    /// [`KvCache::scores`] applies them. `base` and `stride` locate those keys
    /// in the cache (the scales).
    #[allow(clippy::too_many_arguments)]
    pub fn scores_by_dim(
        &self,
        by: ScoresByDim,
        att: &mut [&mut [f32]],
        q: &[&[f32]],
        kt: &[f32],
        ld: usize,
        base: usize,
        stride: usize,
        scale: f32,
    ) -> Result<()> {
        let (n, hd) = match (att.first(), q.first()) {
            (Some(a), Some(q)) => (a.len(), q.len()),
            _ => return Err(Error::BadSetting("KV scores: no heads")),
        };
        if att.len() != q.len() || att.iter().any(|a| a.len() != n) || q.iter().any(|q| q.len() != hd) {
            return Err(Error::BadSetting("KV scores: the heads' shapes differ"));
        }
        let scales = self.key_scales_by_dim(n, hd, kt, ld, base, stride)?;
        match (&mut *att, q) {
            ([a], [q]) => (by.one)(a, q, kt, ld, scale),
            ([a0, a1], [q0, q1]) => (by.two)([a0, a1], [q0, q1], kt, ld, scale),
            _ => return Err(Error::BadSetting("KV scores: one or two heads at a time")),
        }
        if let Some(scales) = scales {
            for a in att.iter_mut() {
                for (a, &s) in a.iter_mut().zip(scales.clone()) {
                    *a *= s;
                }
            }
        }
        Ok(())
    }

    /// Checks keys by dimension for `n` scores of a head of `hd`; a q8
    /// cache's scales of those keys, `None` for the others.
    fn key_scales_by_dim(
        &self,
        n: usize,
        hd: usize,
        kt: &[f32],
        ld: usize,
        base: usize,
        stride: usize,
    ) -> Result<Option<impl Iterator<Item = &f32> + Clone>> {
        if n > 0 {
            check_by_dim(n, hd, kt.len(), ld)?;
        }
        match self {
            KvCache::Q8 { key_scales, head_dim, .. } => {
                Ok(Some(head_scales(key_scales, base, n, stride, *head_dim, hd)?))
            }
            _ => Ok(None),
        }
    }

    /// `out = Σ_t att[t] · value[base + t·stride]`; values past the cache
    /// are an error. A q8 cache scales `att` in place by each value's scale
    /// first (the caller's attention weights are spent by then).
    pub fn mix(&self, k: &Kernels, out: &mut [f32], att: &mut [f32], base: usize, stride: usize) -> Result<()> {
        let span = span(base, att.len(), stride, out.len())?;
        match self {
            KvCache::F32 { values, .. } => (k.attn_values)(out, att, values.get(span).ok_or(PAST_END)?, stride),
            KvCache::F16 { values, .. } => (k.attn_values_f16)(out, att, values.get(span).ok_or(PAST_END)?, stride),
            KvCache::Q8 { values, value_scales, head_dim, .. } => {
                // every check before `att` changes
                let scales = head_scales(value_scales, base, att.len(), stride, *head_dim, out.len())?;
                let values = values.get(span).ok_or(PAST_END)?;
                for (a, &s) in att.iter_mut().zip(scales) {
                    *a *= s;
                }
                (k.attn_values_q8)(out, att, values, stride);
            }
        }
        Ok(())
    }

    /// [`KvCache::mix`] for two heads of one KV group (`att[0]`, `att[1]` the
    /// same length, `out[0]`, `out[1]` too): the same bits as two `mix` calls,
    /// through the table's pair kernel (`Kernels::attn_values2`), which loads
    /// each value once for both where it can.
    pub fn mix2(
        &self,
        k: &Kernels,
        out: [&mut [f32]; 2],
        att: [&mut [f32]; 2],
        base: usize,
        stride: usize,
    ) -> Result<()> {
        let ([o0, o1], [a0, a1]) = (out, att);
        if a0.len() != a1.len() || o0.len() != o1.len() {
            return Err(Error::BadSetting("KV mix2: the two heads' shapes differ"));
        }
        let span = span(base, a0.len(), stride, o0.len())?;
        match self {
            KvCache::F32 { values, .. } => {
                (k.attn_values2)([o0, o1], [a0, a1], values.get(span).ok_or(PAST_END)?, stride)
            }
            KvCache::F16 { values, .. } => {
                (k.attn_values2_f16)([o0, o1], [a0, a1], values.get(span).ok_or(PAST_END)?, stride)
            }
            KvCache::Q8 { values, value_scales, head_dim, .. } => {
                // every check before `att` changes
                let scales = head_scales(value_scales, base, a0.len(), stride, *head_dim, o0.len())?;
                let values = values.get(span).ok_or(PAST_END)?;
                for a in [&mut *a0, &mut *a1] {
                    for (a, &s) in a.iter_mut().zip(scales.clone()) {
                        *a *= s;
                    }
                }
                (k.attn_values2_q8)([o0, o1], [a0, a1], values, stride);
            }
        }
        Ok(())
    }
}

/// Keys by dimension (`hd` rows of `ld`) for `n` keys: the kernels read and
/// write whole registers, so `ld` and the last row reach `n` rounded up to
/// `KEYS_BY_DIM_PAD`.
fn check_by_dim(n: usize, hd: usize, kt: usize, ld: usize) -> Result<()> {
    let padded = n.next_multiple_of(KEYS_BY_DIM_PAD);
    if ld < padded || kt < hd.saturating_sub(1) * ld + padded {
        return Err(Error::BadSetting("keys by dimension: buffer shorter than the keys"));
    }
    Ok(())
}

/// `kt[d·ld + t] = widen(keys[t·stride + d])` for `t < n`, `d < hd`
/// (lengths checked by the caller).
fn by_dim<T: Copy>(
    kt: &mut [f32],
    ld: usize,
    keys: &[T],
    n: usize,
    stride: usize,
    hd: usize,
    widen: impl Fn(T) -> f32,
) {
    // key by key: contiguous reads, and the `hd` rows' lines written stay in L1
    for (t, key) in keys.chunks(stride).take(n).enumerate() {
        for (d, &x) in key.iter().take(hd).enumerate() {
            if let Some(o) = kt.get_mut(d * ld + t) {
                *o = widen(x);
            }
        }
    }
}

/// A q8 access that does not cover whole heads (an offset, stride or length
/// off the head boundaries): only a mismatched caller gets this.
const MISALIGNED: Error = Error::BadSetting("q8 KV cache access not aligned to whole heads");

/// The scales of `rows` cached heads at `stride` elements from element
/// `base` (`len` = the head's size, which must be the cache's `hd`).
fn head_scales(
    scales: &[f32],
    base: usize,
    rows: usize,
    stride: usize,
    hd: usize,
    len: usize,
) -> Result<impl Iterator<Item = &f32> + Clone> {
    if len != hd || stride == 0 {
        return Err(MISALIGNED);
    }
    let span = scale_span(base, rows, stride, hd)?;
    let step = (stride / hd).max(1);
    Ok(scales.get(span).ok_or(PAST_END)?.iter().step_by(step))
}

/// The scale indices `rows` heads at `stride` from element `base` cover
/// (`base` and `stride` multiples of `hd`).
fn scale_span(base: usize, rows: usize, stride: usize, hd: usize) -> Result<core::ops::Range<usize>> {
    if hd == 0 || !base.is_multiple_of(hd) || !stride.is_multiple_of(hd) {
        return Err(MISALIGNED);
    }
    span(base / hd, rows, stride / hd, 1)
}

/// The elements `rows` cached vectors of `len` at `stride` from `base` cover
/// (what the attention kernels check before reading).
fn span(base: usize, rows: usize, stride: usize, len: usize) -> Result<core::ops::Range<usize>> {
    let extent = match rows.checked_sub(1) {
        Some(last) => last.checked_mul(stride).and_then(|e| e.checked_add(len)).ok_or(PAST_END)?,
        None => 0,
    };
    Ok(base..base.checked_add(extent).ok_or(PAST_END)?)
}
