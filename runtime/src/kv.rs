//! The KV cache: keys and values of every cached position, per block, in
//! f32 or f16. f16 halves the largest arena buffer at long contexts (on a
//! microcontroller or a 512 MB board it dominates); keys and values are
//! rounded to nearest-even once when stored, and the attention kernels widen
//! them exactly (`Kernels::attn_scores_f16` / `attn_values_f16`).

use crate::kernels::Kernels;

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
    /// Stores one position's key and value at element offset `at`.
    pub fn store(&mut self, at: usize, key: &[f32], value: &[f32]) {
        let n = key.len();
        match self {
            KvCache::F32 { keys, values } => {
                keys[at..at + n].copy_from_slice(key);
                values[at..at + n].copy_from_slice(value);
            }
            KvCache::F16 { keys, values } => {
                for (d, &s) in keys[at..at + n].iter_mut().zip(key) {
                    *d = half::f16::from_f32(s).to_bits();
                }
                for (d, &s) in values[at..at + n].iter_mut().zip(value) {
                    *d = half::f16::from_f32(s).to_bits();
                }
            }
        }
    }

    /// `att[t] = q · key[base + t·stride] · scale` for `t < att.len()`.
    pub fn scores(&self, k: &Kernels, att: &mut [f32], q: &[f32], base: usize, stride: usize, scale: f32) {
        match self {
            KvCache::F32 { keys, .. } => (k.attn_scores)(att, q, &keys[base..], stride, scale),
            KvCache::F16 { keys, .. } => (k.attn_scores_f16)(att, q, &keys[base..], stride, scale),
        }
    }

    /// `out = Σ_t att[t] · value[base + t·stride]`.
    pub fn mix(&self, k: &Kernels, out: &mut [f32], att: &[f32], base: usize, stride: usize) {
        match self {
            KvCache::F32 { values, .. } => (k.attn_values)(out, att, &values[base..], stride),
            KvCache::F16 { values, .. } => (k.attn_values_f16)(out, att, &values[base..], stride),
        }
    }
}
