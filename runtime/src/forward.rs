//! The Llama forward pass: RMSNorm, RoPE (interleaved pairs), grouped-query
//! attention over the KV cache, SwiGLU, output head. Reads weights in place
//! and writes only into the arena.
//!
//! Two paths: [`forward`] runs one token (matrix × vector; decode), and
//! [`forward_block`] runs a block of consecutive tokens (matrix × matrix;
//! prompts and evaluation): each weight tile is read from memory once per
//! block instead of once per token (`kernels::matmul_tiles`), and q8 tiles go
//! through the table's batched kernels (`Kernels::matmul_q8`, `matmul_q4`),
//! which load (and unpack) each weight vector once per four tokens. Attention in a
//! block is causal: token `i` attends to cache positions `≤ pos + i`, its
//! own block's earlier keys included; its heads split across threads
//! (`kernels::attention_heads`). Both paths call the same kernels on
//! the same row blocks in the same order, so their results are bit-identical
//! (tested in `runtime/tests/batch.rs`).

use crate::arena::RunState;
use crate::format::Config;
use crate::kernels::{
    attention_heads, matmul_q4, matmul_q8, matmul_rows, matvec_f16_par, matvec_f32_par, matvec_q4_par, matvec_q8_par,
    Kernels, Parallel,
};
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
            let (xq, xs) = input.quantized(k, xq, xs);
            matvec_q8_par(k, par, out, qs, scales, xq, xs)
        }
        // q4 weights read the same q8 activations (groups of 32 both)
        Weights::Q4 { qs, scales } => {
            let (xq, xs) = input.quantized(k, xq, xs);
            matvec_q4_par(k, par, out, qs, scales, xq, xs)
        }
    }
}

impl Input<'_> {
    /// The vector quantized to q8 (on first use; shared by every q8 and q4
    /// matrix that reads it): `xq: [n]`, `xs: [n/32]`.
    fn quantized<'q>(&mut self, k: &Kernels, xq: &'q mut [i8], xs: &'q mut [f32]) -> (&'q [i8], &'q [f32]) {
        let n = self.x.len();
        let (xq, xs) = (&mut xq[..n], &mut xs[..n / crate::format::Q8_GROUP]);
        if !self.quantized {
            (k.quantize_q8)(self.x, xq, xs);
            self.quantized = true;
        }
        (xq, xs)
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
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &b.wq, &mut input, s.xq, s.xs, s.q);
        matvec(e, &b.wk, &mut input, s.xq, s.xs, s.k);
        matvec(e, &b.wv, &mut input, s.xq, s.xs, s.v);
    }
    (k.rope)(s.q, s.rope, hd);
    (k.rope)(s.k, s.rope, hd);
    s.cache.store((layer * max_seq + pos) * kv_dim, s.k, s.v);

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let layer_base = layer * max_seq * kv_dim;
    for h in 0..heads {
        let q = &s.q[h * hd..(h + 1) * hd];
        let kvh = (h / group) * hd;
        let att = &mut s.att[h * max_seq..h * max_seq + pos + 1];
        // att[t] = q·key_t · scale; out = Σ_t att[t]·value_t (keys/values at stride kv_dim)
        s.cache.scores(k, att, q, layer_base + kvh, kv_dim, scale);
        (k.softmax)(att);
        let out = &mut s.xb[h * hd..(h + 1) * hd];
        s.cache.mix(k, out, att, layer_base + kvh, kv_dim);
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

/// Inputs of one projection for every token of a block: `x: [n, cols]`,
/// quantized row by row on first q8 use into `xq: [n, cols]`,
/// `xs: [n, cols/32]` and reused by every q8 matrix that reads the same rows.
struct BlockInput<'x> {
    x: &'x [f32],
    cols: usize,
    n: usize,
    quantized: bool,
}

/// `out[b·m.rows ..][..m.rows] = m · x_b` for every token `b` of the block.
fn matmul(e: Exec<'_>, m: &Matrix<'_>, input: &mut BlockInput<'_>, xq: &mut [i8], xs: &mut [f32], out: &mut [f32]) {
    let (k, par) = (e.kernels, e.par);
    let (rows, cols, n) = (m.rows, input.cols, input.n);
    let x = input.x;
    match m.weights {
        Weights::F32(w) => matmul_rows(par, out, rows, rows, n, 4 * cols, &|o, r0, b| {
            (k.matvec_f32)(o, &w[r0 * cols..(r0 + o.len()) * cols], &x[b * cols..(b + 1) * cols])
        }),
        Weights::F16(w) => matmul_rows(par, out, rows, rows, n, 2 * cols, &|o, r0, b| {
            (k.matvec_f16)(o, &w[r0 * cols..(r0 + o.len()) * cols], &x[b * cols..(b + 1) * cols])
        }),
        Weights::Q8 { qs, scales } => {
            // the table's batched kernel: each weight vector loaded once per
            // four tokens, bit-identical to `matvec_q8` per token (q4 alike)
            let g = cols / crate::format::Q8_GROUP;
            let (xq, xs) = input.quantized_rows(k, xq, xs);
            matmul_q8(k, par, out, rows, rows, n, qs, scales, &xq[..n * cols], &xs[..n * g])
        }
        Weights::Q4 { qs, scales } => {
            let g = cols / crate::format::Q8_GROUP;
            let (xq, xs) = input.quantized_rows(k, xq, xs);
            matmul_q4(k, par, out, rows, rows, n, qs, scales, &xq[..n * cols], &xs[..n * g])
        }
    }
}

impl BlockInput<'_> {
    /// The rows quantized to q8 (once per input, shared by the q8 and q4
    /// matrices that read it): `xq: [n, cols]`, `xs: [n, cols/32]`.
    fn quantized_rows<'q>(&mut self, k: &Kernels, xq: &'q mut [i8], xs: &'q mut [f32]) -> (&'q [i8], &'q [f32]) {
        let (cols, g) = (self.cols, self.cols / crate::format::Q8_GROUP);
        if !self.quantized {
            for b in 0..self.n {
                let row = b * cols..(b + 1) * cols;
                (k.quantize_q8)(&self.x[row.clone()], &mut xq[row], &mut xs[b * g..(b + 1) * g]);
            }
            self.quantized = true;
        }
        (xq, xs)
    }
}

/// Runs block `b` for the `n` tokens at positions `pos..pos + n`, caching
/// their K/V in cache slot `layer`.
#[allow(clippy::too_many_arguments)]
fn block_rows(e: Exec<'_>, cfg: &Config, b: &Block<'_>, s: &mut RunState<'_>, layer: usize, pos: usize, n: usize) {
    let max_seq = s.max_seq;
    let (dim, ffn, hd) = (cfg.dim as usize, cfg.ffn_dim as usize, cfg.head_dim());
    let (kv_dim, heads) = (cfg.kv_dim(), cfg.n_heads as usize);
    let group = heads / cfg.n_kv_heads as usize;
    let k = e.kernels;
    let bs = &mut s.block;

    // attention
    for t in 0..n {
        let row = t * dim..(t + 1) * dim;
        (k.rmsnorm)(&mut bs.xb[row.clone()], &bs.x[row], b.attn_norm, cfg.norm_eps);
    }
    {
        let mut input = BlockInput { x: &bs.xb[..n * dim], cols: dim, n, quantized: false };
        matmul(e, &b.wq, &mut input, bs.xq, bs.xs, bs.q);
        matmul(e, &b.wk, &mut input, bs.xq, bs.xs, bs.k);
        matmul(e, &b.wv, &mut input, bs.xq, bs.xs, bs.v);
    }
    for t in 0..n {
        let rope = &bs.rope[t * hd..(t + 1) * hd];
        (k.rope)(&mut bs.q[t * dim..(t + 1) * dim], rope, hd);
        let kv = t * kv_dim..(t + 1) * kv_dim;
        (k.rope)(&mut bs.k[kv.clone()], rope, hd);
        s.cache.store((layer * max_seq + pos + t) * kv_dim, &bs.k[kv.clone()], &bs.v[kv]);
    }

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let layer_base = layer * max_seq * kv_dim;
    let (q_all, cache) = (&bs.q[..n * dim], &s.cache);
    // heads split across threads; each (token, head) as the one-token path does it
    let work = n * (pos + n) * heads * hd;
    attention_heads(e.par, work, heads, hd, &mut bs.xb[..n * dim], dim, n, s.att, max_seq, &|h0, h1, out, att| {
        for t in 0..n {
            // causal: token t sees the cache up to its own position
            let p = pos + t;
            let o = out.token(t);
            for h in h0..h1 {
                let q = &q_all[t * dim + h * hd..t * dim + (h + 1) * hd];
                let kvh = (h / group) * hd;
                let att = &mut att[(h - h0) * max_seq..(h - h0) * max_seq + p + 1];
                cache.scores(k, att, q, layer_base + kvh, kv_dim, scale);
                (k.softmax)(att);
                cache.mix(k, &mut o[(h - h0) * hd..(h - h0 + 1) * hd], att, layer_base + kvh, kv_dim);
            }
        }
    });
    {
        // the output projection lands in `q` (no longer needed)
        let mut input = BlockInput { x: &bs.xb[..n * dim], cols: dim, n, quantized: false };
        matmul(e, &b.wo, &mut input, bs.xq, bs.xs, bs.q);
    }
    for (x, d) in bs.x[..n * dim].iter_mut().zip(bs.q.iter()) {
        *x += d;
    }

    // feed-forward (SwiGLU)
    for t in 0..n {
        let row = t * dim..(t + 1) * dim;
        (k.rmsnorm)(&mut bs.xb[row.clone()], &bs.x[row], b.ffn_norm, cfg.norm_eps);
    }
    {
        let mut input = BlockInput { x: &bs.xb[..n * dim], cols: dim, n, quantized: false };
        matmul(e, &b.w1, &mut input, bs.xq, bs.xs, bs.hb);
        matmul(e, &b.w3, &mut input, bs.xq, bs.xs, bs.hb2);
    }
    for t in 0..n {
        // row by row: the SIMD swiglu's tail differs from its vector lanes,
        // so one call per token keeps the per-token path's exact results
        let row = t * ffn..(t + 1) * ffn;
        (k.swiglu)(&mut bs.hb[row.clone()], &bs.hb2[row]);
    }
    {
        let mut input = BlockInput { x: &bs.hb[..n * ffn], cols: ffn, n, quantized: false };
        matmul(e, &b.w2, &mut input, bs.xq, bs.xs, bs.xb);
    }
    for (x, d) in bs.x[..n * dim].iter_mut().zip(bs.xb.iter()) {
        *x += d;
    }
}

/// Which logits [`forward_block`] leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLogits {
    /// None (a prompt block followed by more prompt).
    None,
    /// The last token's, in `s.logits[..vocab]` (the end of a prompt).
    Last,
    /// Every token's, in `s.block.logits[t·vocab ..][..vocab]` (scoring).
    All,
}

/// Runs the `n` tokens `s.tokens[pos..pos + n]` (`1 ≤ n ≤ s.block.len`) at
/// positions `pos..pos + n` through `domain`'s stack, leaving the logits
/// `want` asks for. The caller guarantees every token `< vocab`,
/// `pos + n ≤ s.max_seq`, and for [`BlockLogits::All`] that the block logits
/// buffer exists.
pub fn forward_block(
    e: Exec<'_>,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    pos: usize,
    n: usize,
    want: BlockLogits,
) {
    let cfg = model.config();
    let (dim, hd) = (cfg.dim as usize, cfg.head_dim());
    for t in 0..n {
        let token = s.tokens[pos + t];
        domain.embedding.row_into(token as usize, &mut s.block.x[t * dim..(t + 1) * dim]);
        rope_table(&mut s.block.rope[t * hd..(t + 1) * hd], pos + t, hd, cfg.rope_theta);
    }

    let mut layer = 0;
    let mut expansion = domain.expansion.iter().peekable();
    for (i, b) in model.blocks().iter().enumerate() {
        while let Some((_, eb)) = expansion.next_if(|(p, _)| *p as usize == i) {
            block_rows(e, cfg, eb, s, layer, pos, n);
            layer += 1;
        }
        block_rows(e, cfg, b, s, layer, pos, n);
        layer += 1;
    }
    for (_, eb) in expansion {
        block_rows(e, cfg, eb, s, layer, pos, n);
        layer += 1;
    }

    match want {
        BlockLogits::None => {}
        BlockLogits::Last => {
            // exactly the one-token path's head
            let last = (n - 1) * dim..n * dim;
            (e.kernels.rmsnorm)(s.xb, &s.block.x[last], domain.norm, cfg.norm_eps);
            let mut input = Input { x: s.xb, quantized: false };
            matvec(e, &domain.head, &mut input, s.xq, s.xs, s.logits);
        }
        BlockLogits::All => {
            let bs = &mut s.block;
            for t in 0..n {
                let row = t * dim..(t + 1) * dim;
                (e.kernels.rmsnorm)(&mut bs.xb[row.clone()], &bs.x[row], domain.norm, cfg.norm_eps);
            }
            let mut input = BlockInput { x: &bs.xb[..n * dim], cols: dim, n, quantized: false };
            let vocab = domain.head.rows;
            matmul(e, &domain.head, &mut input, bs.xq, bs.xs, &mut bs.logits[..n * vocab]);
        }
    }
}
