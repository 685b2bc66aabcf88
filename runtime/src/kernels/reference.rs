//! Scalar reference kernels: simple, obviously correct, and the definition
//! of the results that SIMD kernels must reproduce.
//!
//! The matrix and attention kernels check their slice contract once per
//! call, with the same checks the SIMD tables make (`check_q8` and friends;
//! a violation is the caller's bug and panics with the shapes); the
//! elementwise ones work on the common length, as the SIMD wrappers do. All
//! walk their slices with iterators: no indexing in the loops.

use super::{check_q4, check_q4_tile, check_q8, check_q8_tile, f16_to_f32, round_half_away, TileOut};
use crate::format::{Q4_GROUP, Q8_GROUP};

/// See [`super::Kernels::matvec_q8`].
pub fn matvec_q8(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8(out, wq, ws, xq, xs);
    let cols = xq.len();
    let groups = cols / Q8_GROUP;
    let (xg, _) = xq.as_chunks::<Q8_GROUP>();
    for (r, o) in out.iter_mut().enumerate() {
        // in range (checked above); `zip` stops at the `groups` of `xg`
        let (row, _) = wq.get(r * cols..).unwrap_or_default().as_chunks::<Q8_GROUP>();
        let row_scales = ws.get(r * groups..).unwrap_or_default();
        let mut acc = 0f32;
        for ((wg, xg), (&s, &x_s)) in row.iter().zip(xg).zip(row_scales.iter().zip(xs)) {
            let isum: i32 = wg.iter().zip(xg).map(|(&w, &x)| w as i32 * x as i32).sum();
            acc += isum as f32 * (f16_to_f32(s) * x_s);
        }
        *o = acc;
    }
}

/// See [`super::Kernels::matmul_q8`]: [`matvec_q8`] for each token.
pub fn matmul_q8(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = check_q8_tile(out, wq, ws, xq, xs);
    let groups = cols / Q8_GROUP;
    for b in 0..out.tokens() {
        // in range (checked above)
        let xq_b = xq.get(b * cols..(b + 1) * cols).unwrap_or_default();
        let xs_b = xs.get(b * groups..(b + 1) * groups).unwrap_or_default();
        matvec_q8(out.token(b), wq, ws, xq_b, xs_b);
    }
}

/// See [`super::Kernels::matvec_q4`]: the q8 reference with each weight
/// unpacked from its nibble (`(nibble) - 8`); same f32 operation order.
pub fn matvec_q4(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4(out, wq, ws, xq, xs);
    let cols = xq.len();
    let groups = cols / Q4_GROUP;
    const HALF: usize = Q4_GROUP / 2;
    // a group's activations as its low and high halves (the nibbles' elements)
    let (xg, _) = xq.as_chunks::<HALF>().0.as_chunks::<2>();
    for (r, o) in out.iter_mut().enumerate() {
        // in range (checked above); `zip` stops at the `groups` of `xg`
        let (row, _) = wq.get(r * cols / 2..).unwrap_or_default().as_chunks::<HALF>();
        let row_scales = ws.get(r * groups..).unwrap_or_default();
        let mut acc = 0f32;
        for ((wg, [lo, hi]), (&s, &x_s)) in row.iter().zip(xg).zip(row_scales.iter().zip(xs)) {
            let mut isum = 0i32;
            for ((&b, &l), &h) in wg.iter().zip(lo).zip(hi) {
                isum += ((b & 0x0f) as i32 - 8) * l as i32;
                isum += ((b >> 4) as i32 - 8) * h as i32;
            }
            acc += isum as f32 * (f16_to_f32(s) * x_s);
        }
        *o = acc;
    }
}

/// See [`super::Kernels::matmul_q4`]: [`matvec_q4`] for each token.
pub fn matmul_q4(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = check_q4_tile(out, wq, ws, xq, xs);
    let groups = cols / Q4_GROUP;
    for b in 0..out.tokens() {
        // in range (checked above)
        let xq_b = xq.get(b * cols..(b + 1) * cols).unwrap_or_default();
        let xs_b = xs.get(b * groups..(b + 1) * groups).unwrap_or_default();
        matvec_q4(out.token(b), wq, ws, xq_b, xs_b);
    }
}

/// See [`super::Kernels::matvec_f32`].
pub fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    let cols = x.len();
    assert!(w.len() >= out.len() * cols, "matvec_f32: weights too short for {} rows × {cols} cols", out.len());
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get(r * cols..).unwrap_or_default();
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

/// See [`super::Kernels::matvec_f16`].
pub fn matvec_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
    let cols = x.len();
    assert!(w.len() >= out.len() * cols, "matvec_f16: weights too short for {} rows × {cols} cols", out.len());
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get(r * cols..).unwrap_or_default();
        *o = row.iter().zip(x).map(|(&a, b)| f16_to_f32(a) * b).sum();
    }
}

/// See [`super::Kernels::quantize_q8`]: symmetric, scale = max|x| / 127 per group.
pub fn quantize_q8(x: &[f32], q: &mut [i8], s: &mut [f32]) {
    for ((group, qg), sg) in x.chunks_exact(Q8_GROUP).zip(q.chunks_exact_mut(Q8_GROUP)).zip(s.iter_mut()) {
        *sg = quantize_symmetric(group, qg);
    }
}

/// `x` (any length) to `q` with one scale `d = max|x| / 127`, returned:
/// `q[i] = round_half_away(x[i] / d)`, so `x[i] ≈ q[i]·d` (all zeros when
/// `x` is). The quantizer of [`quantize_q8`]'s groups and of a q8 KV cache's
/// rows (`crate::kv`).
pub fn quantize_symmetric(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = round_half_away(v * id) as i8;
    }
    d
}

/// See [`super::Kernels::rmsnorm`].
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

/// See [`super::Kernels::softmax`].
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// See [`super::Kernels::rope`].
pub fn rope(x: &mut [f32], rope: &[f32], head_dim: usize) {
    if head_dim == 0 {
        return;
    }
    let (rope, _) = rope.as_chunks::<2>();
    for head in x.chunks_exact_mut(head_dim) {
        for ([a, b], [c, s]) in head.as_chunks_mut::<2>().0.iter_mut().zip(rope) {
            (*a, *b) = (*a * c - *b * s, *a * s + *b * c);
        }
    }
}

/// See [`super::Kernels::swiglu`].
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let silu = *g / (1.0 + libm::expf(-*g));
        *g = silu * u;
    }
}

/// Key or value `t` of a cache walked at `stride` (`hd` elements each): the
/// rows the attention kernels read, after the one check the SIMD tables make
/// (`len ≥ (rows − 1)·stride + hd`).
fn cache_rows<'c, T>(
    cache: &'c [T],
    rows: usize,
    stride: usize,
    hd: usize,
    what: &str,
) -> impl Iterator<Item = &'c [T]> {
    if let Some(last) = rows.checked_sub(1) {
        assert!(cache.len() >= last * stride + hd, "{what}: cache too short");
    }
    (0..rows).map(move |t| cache.get(t * stride..).and_then(|c| c.get(..hd)).unwrap_or_default())
}

/// `att[t] = (q · widen(key_t)) · scale` over a cache of any element type
/// (the one body of [`attn_scores`], [`attn_scores_f16`], [`attn_scores_q8`]).
fn scores_of<T: Copy>(
    att: &mut [f32],
    q: &[f32],
    keys: &[T],
    stride: usize,
    scale: f32,
    widen: fn(T) -> f32,
    what: &str,
) {
    let rows = att.len();
    for (a, key) in att.iter_mut().zip(cache_rows(keys, rows, stride, q.len(), what)) {
        *a = q.iter().zip(key).map(|(x, &y)| x * widen(y)).sum::<f32>() * scale;
    }
}

/// `out = Σ_t att[t] · widen(value_t)`, in `t` order per element (the one
/// body of [`attn_values`], [`attn_values_f16`], [`attn_values_q8`]).
fn values_of<T: Copy>(out: &mut [f32], att: &[f32], values: &[T], stride: usize, widen: fn(T) -> f32, what: &str) {
    out.fill(0.0);
    for (&a, v) in att.iter().zip(cache_rows(values, att.len(), stride, out.len(), what)) {
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += a * widen(vi);
        }
    }
}

/// See [`super::Kernels::attn_scores`].
pub fn attn_scores(att: &mut [f32], q: &[f32], keys: &[f32], stride: usize, scale: f32) {
    scores_of(att, q, keys, stride, scale, |v| v, "attn_scores")
}

/// See [`super::Kernels::attn_values`].
pub fn attn_values(out: &mut [f32], att: &[f32], values: &[f32], stride: usize) {
    values_of(out, att, values, stride, |v| v, "attn_values")
}

/// See [`super::Kernels::attn_scores_f16`].
pub fn attn_scores_f16(att: &mut [f32], q: &[f32], keys: &[u16], stride: usize, scale: f32) {
    scores_of(att, q, keys, stride, scale, f16_to_f32, "attn_scores_f16")
}

/// See [`super::Kernels::attn_values_f16`].
pub fn attn_values_f16(out: &mut [f32], att: &[f32], values: &[u16], stride: usize) {
    values_of(out, att, values, stride, f16_to_f32, "attn_values_f16")
}

/// See [`super::Kernels::attn_scores_q8`].
pub fn attn_scores_q8(att: &mut [f32], q: &[f32], keys: &[i8], stride: usize, scale: f32) {
    scores_of(att, q, keys, stride, scale, f32::from, "attn_scores_q8")
}

/// See [`super::Kernels::attn_values_q8`].
pub fn attn_values_q8(out: &mut [f32], att: &[f32], values: &[i8], stride: usize) {
    values_of(out, att, values, stride, f32::from, "attn_values_q8")
}

super::attn_pairs_of_singles!(pub attn_values2 = attn_values, f32);
super::attn_pairs_of_singles!(pub attn_values2_f16 = attn_values_f16, u16);
super::attn_pairs_of_singles!(pub attn_values2_q8 = attn_values_q8, i8);

/// Lanes of the [`max`] loop: two vectors of the baseline target in flight.
const MAX_LANES: usize = 8;

/// See [`super::Kernels::max`]: lane-parallel, so it vectorises on the
/// baseline target (SSE2, NEON).
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; MAX_LANES];
    let chunks = xs.chunks_exact(MAX_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    tail.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Lanes of [`sum_exp`]: two vectors of the baseline target in flight.
pub const SUM_EXP_LANES: usize = 8;

/// See [`super::Kernels::sum_exp`].
pub fn sum_exp(xs: &[f32], max: f32) -> f64 {
    let mut acc = [0f64; SUM_EXP_LANES];
    let chunks = xs.chunks_exact(SUM_EXP_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - max) as f64;
        }
    }
    tail.iter().map(|&v| exp(v - max) as f64).sum::<f64>() + acc.iter().sum::<f64>()
}

/// Inputs are clamped to `[EXP_MIN, EXP_MAX]`: `e^EXP_MIN` is the smallest
/// normal f32's order, and `EXP_MAX·log2 e` rounds to n = 127, the largest
/// exponent `2ⁿ` can hold.
pub const EXP_MIN: f32 = -87.336_54;
pub const EXP_MAX: f32 = 88.0;
/// `1.5·2²³`: adding it rounds an f32 of magnitude < 2²² to an integer.
pub const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` without branches or calls (so loops over it vectorise): Cephes'
/// `expf` (x = n·ln2 + r, a degree-6 polynomial for `e^r`, `2ⁿ` from exponent
/// bits), with plain multiplies and adds (the baseline target has no FMA).
/// Within 2 ulp of `libm::expf` on `[EXP_MIN, EXP_MAX]` (tested below); outside,
/// the clamp's value (nll only asks for `x ≤ 0`, where a clamped term is
/// under 1.2e-38 of a sum ≥ 1).
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let t = x * core::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    // n as an integer, two's complement, from the low bits of t
    let n_int = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    // r = x − n·ln2, ln2 split in two so n·LN2_HI is exact
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(n_int.wrapping_add(127) << 23)
}
