//! The Llama forward pass for one token: RMSNorm, RoPE (interleaved pairs),
//! grouped-query attention over the KV cache, SwiGLU, output head.
//! Reads weights in place and writes only into the arena.

use crate::arena::RunState;
use crate::format::Config;
use crate::kernels::{matvec_f16_par, matvec_f32_par, matvec_q4_par, matvec_q8_par, Kernels, Parallel};
use crate::model::{Block, Domain, Matrix, Model, Weights};

/// In-place softmax (scalar; the forward pass uses `Kernels::softmax`).
pub fn softmax(x: &mut [f32]) {
    crate::kernels::reference::softmax(x)
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

/// Activation input to a projection, quantized on first q8/q4 use and
/// reused by every quantized matrix that reads the same vector.
struct Input<'x> {
    x: &'x [f32],
    quantized: bool,
}

/// Kernels plus an optional row splitter, passed down the forward pass.
#[derive(Clone, Copy)]
pub struct Exec<'k> {
    pub kernels: &'k Kernels,
    pub par: Option<&'k dyn Parallel>,
}

fn matvec(e: Exec<'_>, m: &Matrix<'_>, input: &mut Input<'_>, xq: &mut [i8], xs: &mut [f32], out: &mut [f32]) {
    let (k, par) = (e.kernels, e.par);
    let out = &mut out[..m.rows];
    match m.weights {
        Weights::F32(w) => matvec_f32_par(k, par, out, w, input.x),
        Weights::F16(w) => matvec_f16_par(k, par, out, w, input.x),
        Weights::Q8 { qs, scales } => {
            let n = input.x.len();
            let (xq, xs) = (&mut xq[..n], &mut xs[..n / crate::format::Q8_GROUP]);
            if !input.quantized {
                (k.quantize_q8)(input.x, xq, xs);
                input.quantized = true;
            }
            matvec_q8_par(k, par, out, qs, scales, xq, xs)
        }
        // q4 weights read the same q8 activations (groups of 32 both)
        Weights::Q4 { qs, scales } => {
            let n = input.x.len();
            let (xq, xs) = (&mut xq[..n], &mut xs[..n / crate::format::Q8_GROUP]);
            if !input.quantized {
                (k.quantize_q8)(input.x, xq, xs);
                input.quantized = true;
            }
            matvec_q4_par(k, par, out, qs, scales, xq, xs)
        }
    }
}

/// Runs one block at `pos`, caching K/V in cache slot `layer`.
fn block(e: Exec<'_>, cfg: &Config, b: &Block<'_>, s: &mut RunState<'_>, layer: usize, pos: usize) {
    let max_seq = s.max_seq;
    let (dim, hd) = (cfg.dim as usize, cfg.head_dim());
    let (kv_dim, heads) = (cfg.kv_dim(), cfg.n_heads as usize);
    let group = heads / cfg.n_kv_heads as usize;

    let k = e.kernels;
    // attention
    (k.rmsnorm)(s.xb, s.x, b.attn_norm, cfg.norm_eps);
    let cache_at = (layer * max_seq + pos) * kv_dim;
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &b.wq, &mut input, s.xq, s.xs, s.q);
        matvec(e, &b.wk, &mut input, s.xq, s.xs, &mut s.key_cache[cache_at..cache_at + kv_dim]);
        matvec(e, &b.wv, &mut input, s.xq, s.xs, &mut s.value_cache[cache_at..cache_at + kv_dim]);
    }
    (k.rope)(s.q, s.rope, hd);
    (k.rope)(&mut s.key_cache[cache_at..cache_at + kv_dim], s.rope, hd);

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let layer_base = layer * max_seq * kv_dim;
    for h in 0..heads {
        let q = &s.q[h * hd..(h + 1) * hd];
        let kvh = (h / group) * hd;
        let att = &mut s.att[h * max_seq..h * max_seq + pos + 1];
        // att[t] = q·key_t · scale; out = Σ_t att[t]·value_t (keys/values at stride kv_dim)
        (k.attn_scores)(att, q, &s.key_cache[layer_base + kvh..], kv_dim, scale);
        (k.softmax)(att);
        let out = &mut s.xb[h * hd..(h + 1) * hd];
        (k.attn_values)(out, att, &s.value_cache[layer_base + kvh..], kv_dim);
    }
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &b.wo, &mut input, s.xq, s.xs, s.xb2);
    }
    for (x, d) in s.x.iter_mut().zip(s.xb2.iter()) {
        *x += d;
    }

    // feed-forward (SwiGLU)
    (k.rmsnorm)(s.xb, s.x, b.ffn_norm, cfg.norm_eps);
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &b.w1, &mut input, s.xq, s.xs, s.hb);
        matvec(e, &b.w3, &mut input, s.xq, s.xs, s.hb2);
    }
    (k.swiglu)(s.hb, s.hb2);
    {
        let mut input = Input { x: s.hb, quantized: false };
        matvec(e, &b.w2, &mut input, s.xq, s.xs, s.xb);
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
    e: Exec<'_>,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    token: u32,
    pos: usize,
    logits: bool,
) {
    let cfg = model.config();
    domain.embedding.row_into(token as usize, s.x);
    rope_table(s.rope, pos, cfg.head_dim(), cfg.rope_theta);

    let mut layer = 0;
    let mut expansion = domain.expansion.iter().peekable();
    for (i, b) in model.blocks().iter().enumerate() {
        while let Some((_, eb)) = expansion.next_if(|(p, _)| *p as usize == i) {
            block(e, cfg, eb, s, layer, pos);
            layer += 1;
        }
        block(e, cfg, b, s, layer, pos);
        layer += 1;
    }
    for (_, eb) in expansion {
        block(e, cfg, eb, s, layer, pos);
        layer += 1;
    }

    if logits {
        (e.kernels.rmsnorm)(s.xb, s.x, domain.norm, cfg.norm_eps);
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &domain.head, &mut input, s.xq, s.xs, s.logits);
    }
}
