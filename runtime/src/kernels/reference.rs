//! Scalar reference kernels: simple, obviously correct, and the definition
//! of the results that SIMD kernels must reproduce.

use super::{f16_to_f32, round_half_away, TileOut};
use crate::format::{Q4_GROUP, Q8_GROUP};

/// See [`super::Kernels::matvec_q8`].
pub fn matvec_q8(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    let groups = cols / Q8_GROUP;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &wq[r * cols..(r + 1) * cols];
        let row_scales = &ws[r * groups..(r + 1) * groups];
        let mut acc = 0f32;
        for g in 0..groups {
            let mut isum = 0i32;
            for i in g * Q8_GROUP..(g + 1) * Q8_GROUP {
                isum += row[i] as i32 * xq[i] as i32;
            }
            acc += isum as f32 * (f16_to_f32(row_scales[g]) * xs[g]);
        }
        *o = acc;
    }
}

/// See [`super::Kernels::matmul_q8`]: [`matvec_q8`] for each token.
pub fn matmul_q8(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let n = out.tokens();
    let cols = xq.len() / n.max(1);
    let groups = cols / Q8_GROUP;
    for b in 0..n {
        matvec_q8(out.token(b), wq, ws, &xq[b * cols..(b + 1) * cols], &xs[b * groups..(b + 1) * groups]);
    }
}

/// See [`super::Kernels::matvec_q4`]: the q8 reference with each weight
/// unpacked from its nibble (`(nibble) - 8`); same f32 operation order.
pub fn matvec_q4(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    let groups = cols / Q4_GROUP;
    const HALF: usize = Q4_GROUP / 2;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &wq[r * cols / 2..(r + 1) * cols / 2];
        let row_scales = &ws[r * groups..(r + 1) * groups];
        let mut acc = 0f32;
        for g in 0..groups {
            let mut isum = 0i32;
            for j in 0..HALF {
                let b = row[g * HALF + j];
                isum += ((b & 0x0f) as i32 - 8) * xq[g * Q4_GROUP + j] as i32;
                isum += ((b >> 4) as i32 - 8) * xq[g * Q4_GROUP + HALF + j] as i32;
            }
            acc += isum as f32 * (f16_to_f32(row_scales[g]) * xs[g]);
        }
        *o = acc;
    }
}

/// See [`super::Kernels::matmul_q4`]: [`matvec_q4`] for each token.
pub fn matmul_q4(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let n = out.tokens();
    let cols = xq.len() / n.max(1);
    let groups = cols / Q4_GROUP;
    for b in 0..n {
        matvec_q4(out.token(b), wq, ws, &xq[b * cols..(b + 1) * cols], &xs[b * groups..(b + 1) * groups]);
    }
}

/// See [`super::Kernels::matvec_f32`].
pub fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    let cols = x.len();
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * cols..(r + 1) * cols];
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

/// See [`super::Kernels::matvec_f16`].
pub fn matvec_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
    let cols = x.len();
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * cols..(r + 1) * cols];
        *o = row.iter().zip(x).map(|(&a, b)| f16_to_f32(a) * b).sum();
    }
}

/// See [`super::Kernels::quantize_q8`]: symmetric, scale = max|x| / 127 per group.
pub fn quantize_q8(x: &[f32], q: &mut [i8], s: &mut [f32]) {
    for ((group, qg), sg) in x.chunks_exact(Q8_GROUP).zip(q.chunks_exact_mut(Q8_GROUP)).zip(s.iter_mut()) {
        let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (qi, &v) in qg.iter_mut().zip(group) {
            *qi = round_half_away(v * id) as i8;
        }
        *sg = d;
    }
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
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, cs) in head.chunks_exact_mut(2).zip(rope.chunks_exact(2)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cs[0] - b * cs[1];
            pair[1] = a * cs[1] + b * cs[0];
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

/// See [`super::Kernels::attn_scores`].
pub fn attn_scores(att: &mut [f32], q: &[f32], keys: &[f32], stride: usize, scale: f32) {
    for (t, a) in att.iter_mut().enumerate() {
        let key = &keys[t * stride..][..q.len()];
        *a = q.iter().zip(key).map(|(x, y)| x * y).sum::<f32>() * scale;
    }
}

/// See [`super::Kernels::attn_values`].
pub fn attn_values(out: &mut [f32], att: &[f32], values: &[f32], stride: usize) {
    out.fill(0.0);
    for (t, &a) in att.iter().enumerate() {
        let v = &values[t * stride..][..out.len()];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += a * vi;
        }
    }
}

/// See [`super::Kernels::attn_scores_f16`].
pub fn attn_scores_f16(att: &mut [f32], q: &[f32], keys: &[u16], stride: usize, scale: f32) {
    for (t, a) in att.iter_mut().enumerate() {
        let key = &keys[t * stride..][..q.len()];
        *a = q.iter().zip(key).map(|(x, &y)| x * f16_to_f32(y)).sum::<f32>() * scale;
    }
}

/// See [`super::Kernels::attn_values_f16`].
pub fn attn_values_f16(out: &mut [f32], att: &[f32], values: &[u16], stride: usize) {
    out.fill(0.0);
    for (t, &a) in att.iter().enumerate() {
        let v = &values[t * stride..][..out.len()];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += a * f16_to_f32(vi);
        }
    }
}
