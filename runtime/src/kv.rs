//! The KV cache: keys and values of every cached position, per block, in
//! f32 or f16. f16 halves the largest arena buffer at long contexts (on a
//! microcontroller or a 512 MB board it dominates); keys and values are
//! rounded to nearest-even once when stored, and the attention kernels widen
//! them exactly (`Kernels::attn_scores_f16` / `attn_values_f16`).

use crate::error::{Error, Result};
use crate::kernels::Kernels;

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
}

impl KvType {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// `"f32"` / `"f16"`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// The type called `name` (`f32` / `f16`, case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [KvType::F32, KvType::F16].into_iter().find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

/// Keys and values, `[blocks, max_seq, kv_dim]` each.
pub enum KvCache<'s> {
    F32 { keys: &'s mut [f32], values: &'s mut [f32] },
    F16 { keys: &'s mut [u16], values: &'s mut [u16] },
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
        }
        Ok(())
    }

    /// `out = Σ_t att[t] · value[base + t·stride]`; values past the cache
    /// are an error.
    pub fn mix(&self, k: &Kernels, out: &mut [f32], att: &[f32], base: usize, stride: usize) -> Result<()> {
        let span = span(base, att.len(), stride, out.len())?;
        match self {
            KvCache::F32 { values, .. } => (k.attn_values)(out, att, values.get(span).ok_or(PAST_END)?, stride),
            KvCache::F16 { values, .. } => (k.attn_values_f16)(out, att, values.get(span).ok_or(PAST_END)?, stride),
        }
        Ok(())
    }
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
