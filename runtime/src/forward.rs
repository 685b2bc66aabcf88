//! The Llama forward pass for one token: RMSNorm, RoPE (interleaved pairs),
//! grouped-query attention over the KV cache, SwiGLU, output head.
//! Reads weights in place and writes only into the arena.

use crate::arena::RunState;
use crate::format::Config;
use crate::kernels::Kernels;
use crate::model::{Block, Domain, Matrix, Model, Weights};

/// `out = x / sqrt(mean(x²) + eps) * w`
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

/// In-place softmax.
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

/// Fills `rope` with `(cos, sin)` of each frequency at `pos`.
fn rope_table(rope: &mut [f32], pos: usize, head_dim: usize, theta: f32) {
    for (i, cs) in rope.chunks_exact_mut(2).enumerate() {
        let freq = 1.0 / libm::powf(theta, (2 * i) as f32 / head_dim as f32);
        let angle = pos as f32 * freq;
        cs[0] = libm::cosf(angle);
        cs[1] = libm::sinf(angle);
    }
}

/// Rotates each head of `x` (pairs `2i, 2i+1`).
fn apply_rope(x: &mut [f32], rope: &[f32], head_dim: usize) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, cs) in head.chunks_exact_mut(2).zip(rope.chunks_exact(2)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cs[0] - b * cs[1];
            pair[1] = a * cs[1] + b * cs[0];
        }
    }
}

/// Activation input to a projection, quantized on first q8 use and reused
/// by every q8 matrix that reads the same vector.
struct Input<'x> {
    x: &'x [f32],
    quantized: bool,
}

fn matvec(k: &Kernels, m: &Matrix<'_>, input: &mut Input<'_>, xq: &mut [i8], xs: &mut [f32], out: &mut [f32]) {
    let out = &mut out[..m.rows];
    match m.weights {
        Weights::F32(w) => (k.matvec_f32)(out, w, input.x),
        Weights::F16(w) => (k.matvec_f16)(out, w, input.x),
        Weights::Q8 { qs, scales } => {
            let n = input.x.len();
            let (xq, xs) = (&mut xq[..n], &mut xs[..n / crate::format::Q8_GROUP]);
            if !input.quantized {
                (k.quantize_q8)(input.x, xq, xs);
                input.quantized = true;
            }
            (k.matvec_q8)(out, qs, scales, xq, xs)
        }
    }
}

/// Runs one block at `pos`, caching K/V in cache slot `layer`.
fn block(k: &Kernels, cfg: &Config, b: &Block<'_>, s: &mut RunState<'_>, layer: usize, pos: usize) {
    let max_seq = s.max_seq;
    let (dim, hd) = (cfg.dim as usize, cfg.head_dim());
    let (kv_dim, heads) = (cfg.kv_dim(), cfg.n_heads as usize);
    let group = heads / cfg.n_kv_heads as usize;

    // attention
    rmsnorm(s.xb, s.x, b.attn_norm, cfg.norm_eps);
    let cache_at = (layer * max_seq + pos) * kv_dim;
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(k, &b.wq, &mut input, s.xq, s.xs, s.q);
        matvec(k, &b.wk, &mut input, s.xq, s.xs, &mut s.key_cache[cache_at..cache_at + kv_dim]);
        matvec(k, &b.wv, &mut input, s.xq, s.xs, &mut s.value_cache[cache_at..cache_at + kv_dim]);
    }
    apply_rope(s.q, s.rope, hd);
    apply_rope(&mut s.key_cache[cache_at..cache_at + kv_dim], s.rope, hd);

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let layer_base = layer * max_seq * kv_dim;
    for h in 0..heads {
        let q = &s.q[h * hd..(h + 1) * hd];
        let kvh = (h / group) * hd;
        let att = &mut s.att[h * max_seq..h * max_seq + pos + 1];
        for (t, a) in att.iter_mut().enumerate() {
            let key = &s.key_cache[layer_base + t * kv_dim + kvh..][..hd];
            *a = q.iter().zip(key).map(|(x, y)| x * y).sum::<f32>() * scale;
        }
        softmax(att);
        let out = &mut s.xb[h * hd..(h + 1) * hd];
        out.fill(0.0);
        for (t, &a) in att.iter().enumerate() {
            let v = &s.value_cache[layer_base + t * kv_dim + kvh..][..hd];
            for (o, &vi) in out.iter_mut().zip(v) {
                *o += a * vi;
            }
        }
    }
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(k, &b.wo, &mut input, s.xq, s.xs, s.xb2);
    }
    for (x, d) in s.x.iter_mut().zip(s.xb2.iter()) {
        *x += d;
    }

    // feed-forward (SwiGLU)
    rmsnorm(s.xb, s.x, b.ffn_norm, cfg.norm_eps);
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(k, &b.w1, &mut input, s.xq, s.xs, s.hb);
        matvec(k, &b.w3, &mut input, s.xq, s.xs, s.hb2);
    }
    for (g, &u) in s.hb.iter_mut().zip(s.hb2.iter()) {
        let silu = *g / (1.0 + libm::expf(-*g));
        *g = silu * u;
    }
    {
        let mut input = Input { x: s.hb, quantized: false };
        matvec(k, &b.w2, &mut input, s.xq, s.xs, s.xb);
    }
    debug_assert_eq!(s.xb.len(), dim);
    for (x, d) in s.x.iter_mut().zip(s.xb.iter()) {
        *x += d;
    }
}

/// Runs `token` at position `pos` through `domain`'s stack. With
/// `logits = true` the head's output for the domain's vocabulary is left in
/// `s.logits[..vocab]` (skipped for prompt tokens whose logits nobody reads).
/// The caller guarantees `token < vocab` and `pos < s.max_seq`.
pub fn forward(
    k: &Kernels,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    token: u32,
    pos: usize,
    logits: bool,
) {
    let cfg = &model.config;
    domain.embedding.row_into(token as usize, s.x);
    rope_table(s.rope, pos, cfg.head_dim(), cfg.rope_theta);

    let mut layer = 0;
    let mut expansion = domain.expansion.iter().peekable();
    for (i, b) in model.blocks.iter().enumerate() {
        while let Some((_, eb)) = expansion.next_if(|(p, _)| *p as usize == i) {
            block(k, cfg, eb, s, layer, pos);
            layer += 1;
        }
        block(k, cfg, b, s, layer, pos);
        layer += 1;
    }
    for (_, eb) in expansion {
        block(k, cfg, eb, s, layer, pos);
        layer += 1;
    }

    if logits {
        rmsnorm(s.xb, s.x, domain.norm, cfg.norm_eps);
        let mut input = Input { x: s.xb, quantized: false };
        matvec(k, &domain.head, &mut input, s.xq, s.xs, s.logits);
    }
}
