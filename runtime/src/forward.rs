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
//! own block's earlier keys included. With a pool, a block's tokens are split
//! across its threads (`block_tokens`: two hand-offs per block layer) when
//! each thread gets four tokens or more; otherwise each product's rows and
//! attention's heads are (`block_rows`). Both paths call the same kernels on
//! the same row blocks in the same order, so their results are bit-identical
//! (tested in `runtime/tests/batch.rs`), unless the table's batched quantized
//! products keep their own f32 order (`Kernels::matmul_order`: AVX-512),
//! where the block's results are within that test's tolerance.

use crate::arena::RunState;
use crate::error::{Error, Result};
use crate::format::Config;
use crate::kernels::{
    attention_heads, keys_by_dim_ld, matmul_tiles_many, matvec_f16_par, matvec_f32_par, matvec_q4_par, matvec_q8_par,
    par_rows_many, par_token_rows, Kernels, Parallel, RowSplit, ScoresByDim, TileMatrix, TILE_BYTES,
};
use crate::kv::KvCache;
use crate::model::{Block, Domain, Matrix, Model, Weights};

/// In-place softmax (scalar; the forward pass uses `Kernels::softmax`).
pub fn softmax(x: &mut [f32]) {
    crate::kernels::reference::softmax(x)
}

/// RoPE frequency `i` of a head of `head_dim` (`i < head_dim/2`).
fn rope_freq(i: usize, head_dim: usize, theta: f32) -> f32 {
    1.0 / libm::powf(theta, (2 * i) as f32 / head_dim as f32)
}

/// `(cos, sin)` of a RoPE angle, in one call: `libm::sincosf` reduces the
/// angle once for both (the bits of `cosf` and `sinf` apart, tested below;
/// the two calls were 1.2 % of `edgelm eval`).
fn cos_sin(angle: f32) -> (f32, f32) {
    let (s, c) = libm::sincosf(angle);
    (c, s)
}

/// Fills `rope` with `(cos, sin)` of each frequency at `pos`.
fn rope_table(rope: &mut [f32], pos: usize, head_dim: usize, theta: f32) {
    for (i, [c, s]) in rope.as_chunks_mut::<2>().0.iter_mut().enumerate() {
        let angle = pos as f32 * rope_freq(i, head_dim, theta);
        (*c, *s) = cos_sin(angle);
    }
}

/// [`rope_table`] for the `rows.len() / head_dim` positions `pos..` of a
/// block, rows of `head_dim`: the same values, with each frequency computed
/// once per block (parked in the first row's sine slots until its turn:
/// `powf` per token was 1–2 % of a prompt).
fn rope_block(rows: &mut [f32], pos: usize, head_dim: usize, theta: f32) {
    let (first, rest) = rows.split_at_mut(head_dim.min(rows.len()));
    let first = first.as_chunks_mut::<2>().0;
    for (i, [_, f]) in first.iter_mut().enumerate() {
        *f = rope_freq(i, head_dim, theta);
    }
    for (t, row) in rest.chunks_exact_mut(head_dim.max(1)).enumerate() {
        for ([c, s], [_, f]) in row.as_chunks_mut::<2>().0.iter_mut().zip(first.iter()) {
            let angle = (pos + 1 + t) as f32 * *f;
            (*c, *s) = cos_sin(angle);
        }
    }
    for [c, s] in first.iter_mut() {
        let angle = pos as f32 * *s;
        (*c, *s) = cos_sin(angle);
    }
}

/// A buffer or weight shorter than the shapes the forward pass walks: the
/// session carves every buffer from the model's config and the loader checks
/// every tensor's shape, so this means a model or arena that skipped them.
const SHORT: Error = Error::BadConfig("a buffer or weight is shorter than the model's shapes");

/// The first `n` rows of `width` elements of `buf`, one by one.
fn rows(buf: &[f32], n: usize, width: usize) -> Result<core::slice::ChunksExact<'_, f32>> {
    Ok(buf.get(..n * width).ok_or(SHORT)?.chunks_exact(width.max(1)))
}

/// [`rows`], mutable.
fn rows_mut(buf: &mut [f32], n: usize, width: usize) -> Result<core::slice::ChunksExactMut<'_, f32>> {
    Ok(buf.get_mut(..n * width).ok_or(SHORT)?.chunks_exact_mut(width.max(1)))
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

fn matvec(
    e: Exec<'_>,
    m: &Matrix<'_>,
    input: &mut Input<'_>,
    xq: &mut [i8],
    xs: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    let (k, par) = (e.kernels, e.par);
    let out = out.get_mut(..m.rows).ok_or(SHORT)?;
    match m.weights {
        Weights::F32(w) => matvec_f32_par(k, par, out, w, input.x),
        Weights::F16(w) => matvec_f16_par(k, par, out, w, input.x),
        Weights::Q8 { qs, scales } => {
            let (xq, xs) = input.quantized(k, xq, xs)?;
            matvec_q8_par(k, par, out, qs, scales, xq, xs)
        }
        // q4 weights read the same q8 activations (groups of 32 both)
        Weights::Q4 { qs, scales } => {
            let (xq, xs) = input.quantized(k, xq, xs)?;
            matvec_q4_par(k, par, out, qs, scales, xq, xs)
        }
    }
    Ok(())
}

/// Several matrices × the same input (q, k, v; gate and up) in one
/// hand-off to the pool ([`par_rows_many`]): each row computed by the same
/// kernel call as [`matvec`] makes, so the results are the same bits.
fn matvecs<const N: usize>(
    e: Exec<'_>,
    ms: [&Matrix<'_>; N],
    input: &mut Input<'_>,
    xq: &mut [i8],
    xs: &mut [f32],
    outs: [&mut [f32]; N],
) -> Result<()> {
    let k = e.kernels;
    let x = input.x;
    let cols = x.len();
    let quantized = ms.iter().any(|m| matches!(m.weights, Weights::Q8 { .. } | Weights::Q4 { .. }));
    let (xq, xs) = if quantized { input.quantized(k, xq, xs)? } else { (&[][..], &[][..]) };
    let mut outs = outs;
    for (o, m) in outs.iter_mut().zip(ms) {
        *o = core::mem::take(o).get_mut(..m.rows).ok_or(SHORT)?;
    }
    // the units of `matvec_*_par`'s thresholds: bytes for f32/f16, elements quantized
    let work = ms
        .iter()
        .map(|m| match m.weights {
            Weights::F32(_) => 4 * m.rows * cols,
            Weights::F16(_) => 2 * m.rows * cols,
            Weights::Q8 { .. } | Weights::Q4 { .. } => m.rows * cols,
        })
        .sum();
    let g = cols / crate::format::Q8_GROUP;
    par_rows_many(e.par, outs, work, &|j, r0, o| {
        let r1 = r0 + o.len();
        // too short: empty slices, which the kernels refuse as the unsplit call would
        match ms.get(j).map(|m| &m.weights) {
            Some(Weights::F32(w)) => (k.matvec_f32)(o, w.get(r0 * cols..).unwrap_or_default(), x),
            Some(Weights::F16(w)) => (k.matvec_f16)(o, w.get(r0 * cols..).unwrap_or_default(), x),
            Some(Weights::Q8 { qs, scales }) => {
                let (wq, ws) = (qs.get(r0 * cols..r1 * cols), scales.get(r0 * g..r1 * g));
                (k.matvec_q8)(o, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
            }
            Some(Weights::Q4 { qs, scales }) => {
                let (wq, ws) = (qs.get(r0 * cols / 2..r1 * cols / 2), scales.get(r0 * g..r1 * g));
                (k.matvec_q4)(o, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
            }
            None => {}
        }
    });
    Ok(())
}

impl Input<'_> {
    /// The vector quantized to q8 (on first use; shared by every q8 and q4
    /// matrix that reads it): `xq: [n]`, `xs: [n/32]`.
    fn quantized<'q>(&mut self, k: &Kernels, xq: &'q mut [i8], xs: &'q mut [f32]) -> Result<(&'q [i8], &'q [f32])> {
        let n = self.x.len();
        let (xq, xs) = (xq.get_mut(..n).ok_or(SHORT)?, xs.get_mut(..n / crate::format::Q8_GROUP).ok_or(SHORT)?);
        if !self.quantized {
            (k.quantize_q8)(self.x, xq, xs);
            self.quantized = true;
        }
        Ok((xq, xs))
    }
}

/// Runs one block at `pos`, caching K/V in cache slot `layer`.
fn block(e: Exec<'_>, cfg: &Config, b: &Block<'_>, s: &mut RunState<'_>, layer: usize, pos: usize) -> Result<()> {
    let max_seq = s.max_seq;
    let (dim, hd) = (cfg.dim as usize, cfg.head_dim());
    let (kv_dim, heads) = (cfg.kv_dim(), cfg.n_heads as usize);
    let group = heads / cfg.n_kv_heads as usize;

    let k = e.kernels;
    // attention
    (k.rmsnorm)(s.xb, s.x, b.attn_norm, cfg.norm_eps);
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvecs(e, [&b.wq, &b.wk, &b.wv], &mut input, s.xq, s.xs, [&mut *s.q, &mut *s.k, &mut *s.v])?;
    }
    (k.rope)(s.q, s.rope, hd);
    (k.rope)(s.k, s.rope, hd);
    s.cache.store((layer * max_seq + pos) * kv_dim, s.k, s.v)?;

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let layer_base = layer * max_seq * kv_dim;
    // head h: q[h·hd..][..hd], att[h·max_seq..][..pos + 1], out xb[h·hd..][..hd];
    // att[t] = q·key_t · scale; out = Σ_t att[t]·value_t (keys/values at stride kv_dim),
    // the two heads of a KV group together
    let mut h = 0;
    while h < heads {
        let m = heads_at(h, heads, group);
        let (q, out) = (s.q.get(h * hd..(h + m) * hd).ok_or(SHORT)?, s.xb.get_mut(h * hd..(h + m) * hd).ok_or(SHORT)?);
        let att = s.att.get_mut(h * max_seq..(h + m) * max_seq).ok_or(SHORT)?;
        let base = layer_base + (h / group) * hd;
        attend_heads(k, &s.cache, None, att, max_seq, pos + 1, q, out, hd, base, kv_dim, scale)?;
        h += m;
    }
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &b.wo, &mut input, s.xq, s.xs, s.xb2)?;
    }
    for (x, d) in s.x.iter_mut().zip(s.xb2.iter()) {
        *x += d;
    }

    // feed-forward (SwiGLU)
    (k.rmsnorm)(s.xb, s.x, b.ffn_norm, cfg.norm_eps);
    {
        let mut input = Input { x: s.xb, quantized: false };
        matvecs(e, [&b.w1, &b.w3], &mut input, s.xq, s.xs, [&mut *s.hb, &mut *s.hb2])?;
    }
    (k.swiglu)(s.hb, s.hb2);
    {
        let mut input = Input { x: s.hb, quantized: false };
        matvec(e, &b.w2, &mut input, s.xq, s.xs, s.xb)?;
    }
    debug_assert_eq!(s.xb.len(), dim);
    for (x, d) in s.x.iter_mut().zip(s.xb.iter()) {
        *x += d;
    }
    Ok(())
}

/// The blocks of `domain`'s stack in order, each one's index its KV cache
/// slot: the base's blocks, an expansion block at position `p` just before
/// base block `p`, the rest after the last.
fn stack<'s, 'm>(model: &'s Model<'m>, domain: &'s Domain<'m>) -> impl Iterator<Item = &'s Block<'m>> + 's {
    let (base, expansion) = (model.blocks(), &domain.expansion[..]);
    let (mut i, mut j) = (0, 0);
    core::iter::from_fn(move || {
        let at_i = expansion.get(j).is_some_and(|(p, _)| *p as usize == i) && i < base.len();
        let next = match (at_i, base.get(i)) {
            (false, Some(b)) => {
                i += 1;
                b
            }
            _ => {
                j += 1;
                &expansion.get(j - 1)?.1
            }
        };
        Some(next)
    })
}

/// Runs `token` at position `pos` through `domain`'s stack. With
/// `logits = true` the head's output for the domain's vocabulary is left in
/// `s.logits[..vocab]` (skipped for prompt tokens whose logits nobody reads).
/// The caller checks `token < vocab` and `pos < s.max_seq` (a token past the
/// embedding is [`Error::BadToken`], a position past the buffers an error too).
pub fn forward(
    e: Exec<'_>,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    token: u32,
    pos: usize,
    logits: bool,
) -> Result<()> {
    let cfg = model.config();
    domain.embedding.row_into(token as usize, s.x)?;
    rope_table(s.rope, pos, cfg.head_dim(), cfg.rope_theta);

    for (layer, b) in stack(model, domain).enumerate() {
        block(e, cfg, b, s, layer, pos)?;
    }

    if logits {
        (e.kernels.rmsnorm)(s.xb, s.x, domain.norm, cfg.norm_eps);
        let mut input = Input { x: s.xb, quantized: false };
        matvec(e, &domain.head, &mut input, s.xq, s.xs, s.logits)?;
    }
    Ok(())
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

impl<'x> BlockInput<'x> {
    /// The first `n` rows of `cols` of `x`.
    fn new(x: &'x [f32], cols: usize, n: usize) -> Result<Self> {
        Ok(BlockInput { x: x.get(..n * cols).ok_or(SHORT)?, cols, n, quantized: false })
    }
}

/// `out[b·m.rows ..][..m.rows] = m · x_b` for every token `b` of the block.
fn matmul(
    e: Exec<'_>,
    m: &Matrix<'_>,
    input: &mut BlockInput<'_>,
    xq: &mut [i8],
    xs: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    matmuls(e, [m], input, xq, xs, [out])
}

/// [`matmul`] for several matrices that read the same block input (q, k, v;
/// gate and up), in one hand-off to the pool ([`matmul_tiles_many`]): each
/// tile computed by the same kernel call as a separate [`matmul`] makes, so
/// the results are the same bits.
fn matmuls<const N: usize>(
    e: Exec<'_>,
    ms: [&Matrix<'_>; N],
    input: &mut BlockInput<'_>,
    xq: &mut [i8],
    xs: &mut [f32],
    outs: [&mut [f32]; N],
) -> Result<()> {
    let k = e.kernels;
    let (cols, n, x) = (input.cols, input.n, input.x);
    let g = cols / crate::format::Q8_GROUP;
    let quantized = ms.iter().any(|m| matches!(m.weights, Weights::Q8 { .. } | Weights::Q4 { .. }));
    // q8 and q4 tiles: the table's batched kernels, each weight vector loaded
    // (and unpacked) once per several tokens, in `Kernels::matmul_order`'s order
    let (xq, xs) = if quantized { input.quantized_rows(k, xq, xs)? } else { (&[][..], &[][..]) };
    let mut tiles = outs.map(|out| TileMatrix { out, ld: 0, rows: 0, row_bytes: 0, tile_bytes: TILE_BYTES });
    for (t, m) in tiles.iter_mut().zip(ms) {
        t.out = core::mem::take(&mut t.out).get_mut(..n * m.rows).ok_or(SHORT)?;
        (t.ld, t.rows) = (m.rows, m.rows);
        (t.row_bytes, t.tile_bytes) = match m.weights {
            // f32 and f16: the matvec per token over L1-resident tiles
            Weights::F32(_) => (4 * cols, TILE_BYTES),
            Weights::F16(_) => (2 * cols, TILE_BYTES),
            Weights::Q8 { .. } => (cols + 2 * g, k.matmul_tile_bytes),
            Weights::Q4 { .. } => (cols / 2 + 2 * g, k.matmul_tile_bytes),
        };
    }
    // in the tile kernel, `b < n` and `x` holds `n` rows (`BlockInput::new`);
    // weights from row `r0` on (the kernel reads `tile.rows()` rows of them);
    // too short: empty slices, which the kernels refuse with the shapes
    matmul_tiles_many(e.par, tiles, n, &|j, tile, r0| {
        let r1 = r0 + tile.rows();
        match ms.get(j).map(|m| &m.weights) {
            Some(Weights::F32(w)) => {
                for b in 0..tile.tokens() {
                    let x_b = x.get(b * cols..(b + 1) * cols).unwrap_or_default();
                    (k.matvec_f32)(tile.token(b), w.get(r0 * cols..).unwrap_or_default(), x_b)
                }
            }
            Some(Weights::F16(w)) => {
                for b in 0..tile.tokens() {
                    let x_b = x.get(b * cols..(b + 1) * cols).unwrap_or_default();
                    (k.matvec_f16)(tile.token(b), w.get(r0 * cols..).unwrap_or_default(), x_b)
                }
            }
            Some(Weights::Q8 { qs, scales }) => {
                let (wq, ws) = (qs.get(r0 * cols..r1 * cols), scales.get(r0 * g..r1 * g));
                (k.matmul_q8)(tile, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
            }
            Some(Weights::Q4 { qs, scales }) => {
                let (wq, ws) = (qs.get(r0 * cols / 2..r1 * cols / 2), scales.get(r0 * g..r1 * g));
                (k.matmul_q4)(tile, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
            }
            None => {}
        }
    });
    Ok(())
}

impl BlockInput<'_> {
    /// The rows quantized to q8 (once per input, shared by the q8 and q4
    /// matrices that read it): `xq: [n, cols]`, `xs: [n, cols/32]`.
    fn quantized_rows<'q>(
        &mut self,
        k: &Kernels,
        xq: &'q mut [i8],
        xs: &'q mut [f32],
    ) -> Result<(&'q [i8], &'q [f32])> {
        let (cols, g, n) = (self.cols, self.cols / crate::format::Q8_GROUP, self.n);
        let (xq, xs) = (xq.get_mut(..n * cols).ok_or(SHORT)?, xs.get_mut(..n * g).ok_or(SHORT)?);
        if !self.quantized {
            if cols.is_multiple_of(crate::format::Q8_GROUP) {
                // the rows are contiguous and no group crosses a row: the
                // whole block in one call (the groups' bits are the same)
                (k.quantize_q8)(self.x, xq, xs);
            } else {
                let (x_rows, q_rows) = (self.x.chunks_exact(cols.max(1)), xq.chunks_exact_mut(cols.max(1)));
                for ((x, q), s) in x_rows.zip(q_rows).zip(xs.chunks_exact_mut(g.max(1))) {
                    (k.quantize_q8)(x, q, s);
                }
            }
            self.quantized = true;
        }
        Ok((xq, xs))
    }
}

/// One KV head's cached keys stored by dimension for a block's attention
/// (`kt`: `hd` rows of `ld`, [`LayerKeys`]) and the table's kernels that
/// score from them.
#[derive(Clone, Copy)]
struct KeysByDim<'k> {
    kt: &'k [f32],
    ld: usize,
    by: ScoresByDim,
}

/// A layer's cached keys (positions below `seen`) stored by dimension, KV
/// head `g` in rows `g·hd..(g + 1)·hd` of `ld` (the arena's `keys_t`), for
/// every query of a block's attention when the table scores from them
/// (`Kernels::scores_by_dim`): transposed once per block and layer, then
/// read by every query of the block with no horizontal sums, both heads of
/// a KV group sharing each load. Every (token, head) of the block scores
/// from them, alone or in a pair, so the bits do not depend on how the
/// block is split.
#[derive(Clone, Copy)]
struct LayerKeys<'k> {
    all: &'k [f32],
    ld: usize,
    hd: usize,
    by: ScoresByDim,
}

impl<'k> LayerKeys<'k> {
    /// Stores the layer's keys below `seen` in `buf`; `None` (nothing
    /// stored) when the table has no kernel for them or the arena no buffer.
    #[allow(clippy::too_many_arguments)]
    fn store(
        k: &Kernels,
        cache: &KvCache<'_>,
        buf: &'k mut [f32],
        max_seq: usize,
        layer_base: usize,
        seen: usize,
        kv_dim: usize,
        hd: usize,
    ) -> Result<Option<Self>> {
        let (Some(by), true) = (k.scores_by_dim, !buf.is_empty() && hd > 0) else {
            return Ok(None);
        };
        let ld = keys_by_dim_ld(max_seq);
        let rows = buf.get_mut(..kv_dim * ld).ok_or(SHORT)?;
        for (g, head) in rows.chunks_mut(hd * ld).enumerate() {
            cache.keys_by_dim(by, head, ld, layer_base + g * hd, seen, kv_dim, hd)?;
        }
        Ok(Some(LayerKeys { all: rows, ld, hd, by }))
    }

    /// KV head `g`'s keys.
    fn head(&self, g: usize) -> Result<KeysByDim<'k>> {
        let kt = self.all.get(g * self.hd * self.ld..(g + 1) * self.hd * self.ld).ok_or(SHORT)?;
        Ok(KeysByDim { kt, ld: self.ld, by: self.by })
    }
}

/// Attention of one (token, head), or of two heads of one KV group (`q`,
/// `out`: `hd` or `2·hd` floats, those heads' columns; `att`: one or two rows
/// of `att_stride`, of which the first `seen` positions are used):
/// `att` = softmax(q · key · scale), then `out` = Σ att · value, keys and
/// values from `base` at stride `kv_dim`. Two heads share their value loads
/// (`KvCache::mix2`, the bits of two `mix` calls). Every path calls this, so
/// a (token, head) gives the same bits however the work is split: decode
/// scores from the cache; a block whose table scores from keys stored by
/// dimension (`keys`) scores every query from them ([`head_scores`]).
#[allow(clippy::too_many_arguments)]
fn attend_heads(
    k: &Kernels,
    cache: &KvCache<'_>,
    keys: Option<KeysByDim<'_>>,
    att: &mut [f32],
    att_stride: usize,
    seen: usize,
    q: &[f32],
    out: &mut [f32],
    hd: usize,
    base: usize,
    kv_dim: usize,
    scale: f32,
) -> Result<()> {
    if q.len() != 2 * hd {
        let (att, out) = (att.get_mut(..seen).ok_or(SHORT)?, out.get_mut(..hd).ok_or(SHORT)?);
        head_scores(k, cache, keys, &mut [&mut *att], &[q], base, kv_dim, scale)?;
        (k.softmax)(att);
        return cache.mix(k, out, att, base, kv_dim);
    }
    let (a0, a1) = att.split_at_mut_checked(att_stride).ok_or(SHORT)?;
    let (a0, a1) = (a0.get_mut(..seen).ok_or(SHORT)?, a1.get_mut(..seen).ok_or(SHORT)?);
    let (q0, q1) = q.split_at(hd);
    let (o0, o1) = out.get_mut(..2 * hd).ok_or(SHORT)?.split_at_mut(hd);
    head_scores(k, cache, keys, &mut [&mut *a0, &mut *a1], &[q0, q1], base, kv_dim, scale)?;
    (k.softmax)(a0);
    (k.softmax)(a1);
    cache.mix2(k, [o0, o1], [a0, a1], base, kv_dim)
}

/// The scores of one or two heads of a KV group (`att`, `q`: a row each):
/// from a block's keys stored by dimension when there are some (their
/// kernels' order, the same for a head alone or in a pair), else from the
/// cache (`attn_scores`, a call per head).
#[allow(clippy::too_many_arguments)]
fn head_scores(
    k: &Kernels,
    cache: &KvCache<'_>,
    keys: Option<KeysByDim<'_>>,
    att: &mut [&mut [f32]],
    q: &[&[f32]],
    base: usize,
    kv_dim: usize,
    scale: f32,
) -> Result<()> {
    if let Some(kb) = keys {
        return cache.scores_by_dim(kb.by, att, q, kb.kt, kb.ld, base, kv_dim, scale);
    }
    for (a, q) in att.iter_mut().zip(q) {
        cache.scores(k, a, q, base, kv_dim, scale)?;
    }
    Ok(())
}

/// Heads `h..` taken together by [`attend_heads`]: two when `h + 1 < end`
/// shares `h`'s KV head (`group` query heads per KV head), else one.
fn heads_at(h: usize, end: usize, group: usize) -> usize {
    if h + 1 < end && (h + 1) / group == h / group {
        2
    } else {
        1
    }
}

/// The attention inputs of `n` tokens (rows of `x`): RMSNorm into `xb`, the
/// q/k/v products (rows split as `e` says), RoPE on q and k.
#[allow(clippy::too_many_arguments)]
fn qkv_rows(
    e: Exec<'_>,
    cfg: &Config,
    b: &Block<'_>,
    [x, xb, q, key, value, rope, xs]: [&mut [f32]; 7],
    xq: &mut [i8],
    n: usize,
) -> Result<()> {
    let (k, dim, hd, kv_dim) = (e.kernels, cfg.dim as usize, cfg.head_dim(), cfg.kv_dim());
    for (xb, x) in rows_mut(xb, n, dim)?.zip(rows(x, n, dim)?) {
        (k.rmsnorm)(xb, x, b.attn_norm, cfg.norm_eps);
    }
    matmuls(e, [&b.wq, &b.wk, &b.wv], &mut BlockInput::new(xb, dim, n)?, xq, xs, [q, &mut *key, value])?;
    for ((rope, q), key) in rows(rope, n, hd)?.zip(rows_mut(q, n, dim)?).zip(rows_mut(key, n, kv_dim)?) {
        (k.rope)(q, rope, hd);
        (k.rope)(key, rope, hd);
    }
    Ok(())
}

/// The rest of a block for `n` tokens whose attention output is in `xb`: the
/// output projection (into `q`, no longer needed) and residual, then RMSNorm,
/// the SwiGLU feed-forward and its residual, all into `x`.
#[allow(clippy::too_many_arguments)]
fn out_ffn_rows(
    e: Exec<'_>,
    cfg: &Config,
    b: &Block<'_>,
    [x, xb, q, hb, hb2, xs]: [&mut [f32]; 6],
    xq: &mut [i8],
    n: usize,
) -> Result<()> {
    let (k, dim, ffn) = (e.kernels, cfg.dim as usize, cfg.ffn_dim as usize);
    matmul(e, &b.wo, &mut BlockInput::new(xb, dim, n)?, xq, xs, q)?;
    for (x, d) in x.get_mut(..n * dim).ok_or(SHORT)?.iter_mut().zip(q.iter()) {
        *x += d;
    }
    for (xb, x) in rows_mut(xb, n, dim)?.zip(rows(x, n, dim)?) {
        (k.rmsnorm)(xb, x, b.ffn_norm, cfg.norm_eps);
    }
    matmuls(e, [&b.w1, &b.w3], &mut BlockInput::new(xb, dim, n)?, xq, xs, [&mut *hb, &mut *hb2])?;
    // row by row: the SIMD swiglu's tail differs from its vector lanes,
    // so one call per token keeps the per-token path's exact results
    for (g, u) in rows_mut(hb, n, ffn)?.zip(rows(hb2, n, ffn)?) {
        (k.swiglu)(g, u);
    }
    matmul(e, &b.w2, &mut BlockInput::new(hb, ffn, n)?, xq, xs, xb)?;
    for (x, d) in x.get_mut(..n * dim).ok_or(SHORT)?.iter_mut().zip(xb.iter()) {
        *x += d;
    }
    Ok(())
}

/// Runs block `b` for the `n` tokens at positions `pos..pos + n`, caching
/// their K/V in cache slot `layer`: split over the pool by tokens when it has
/// several threads and every thread gets a pass of four tokens or more
/// ([`block_tokens`]), else by rows, product by product ([`block_rows`]).
#[allow(clippy::too_many_arguments)]
fn block_run(
    e: Exec<'_>,
    cfg: &Config,
    b: &Block<'_>,
    s: &mut RunState<'_>,
    layer: usize,
    pos: usize,
    n: usize,
) -> Result<()> {
    match e.par {
        Some(p) if p.threads() > 1 && n >= 4 * p.threads() && p.threads() <= cfg.n_heads as usize => {
            block_tokens(e.kernels, p, cfg, b, s, layer, pos, n)
        }
        _ => block_rows(e, cfg, b, s, layer, pos, n),
    }
}

/// [`block_rows`] with the block's tokens split over `par` instead of each
/// product's rows: each thread runs its tokens through the norms, products
/// (one thread's batched kernels), RoPE, attention and SwiGLU on its own rows
/// of the block buffers, so a block costs two hand-offs (before and after the
/// keys and values of every token are cached, which the causal attention of
/// the later tokens reads) instead of five, the elementwise work is split too,
/// and no activations move between threads. Every (token, row) and (token,
/// head) is computed by the same kernel calls as on one thread: the same bits.
#[allow(clippy::too_many_arguments)]
fn block_tokens(
    k: &Kernels,
    par: &dyn Parallel,
    cfg: &Config,
    b: &Block<'_>,
    s: &mut RunState<'_>,
    layer: usize,
    pos: usize,
    n: usize,
) -> Result<()> {
    let max_seq = s.max_seq;
    let (dim, ffn, hd) = (cfg.dim as usize, cfg.ffn_dim as usize, cfg.head_dim());
    let (kv_dim, heads) = (cfg.kv_dim(), cfg.n_heads as usize);
    let group = heads / cfg.n_kv_heads as usize;
    let one = Exec { kernels: k, par: None };
    let bs = &mut s.block;
    // a token's quantized-activation rows, as the arena sized them (`n ≤ bs.len`)
    let (qw, sw) = (RowSplit::Tokens(bs.xq.len() / bs.len), RowSplit::Tokens(bs.xs.len() / bs.len));

    // q, k, v of each thread's tokens, roped
    let f32s = [
        (&mut *bs.x, RowSplit::Tokens(dim)),
        (&mut *bs.xb, RowSplit::Tokens(dim)),
        (&mut *bs.q, RowSplit::Tokens(dim)),
        (&mut *bs.k, RowSplit::Tokens(kv_dim)),
        (&mut *bs.v, RowSplit::Tokens(kv_dim)),
        (&mut *bs.rope, RowSplit::Tokens(hd)),
        (&mut *bs.xs, sw),
    ];
    par_token_rows(par, n, f32s, [(&mut *bs.xq, qw)], &|t0, t1, f, i| {
        qkv_rows(one, cfg, b, f.each_mut().map(|r| &mut **r), &mut *i[0], t1 - t0)
    })?;
    for (t, (key, value)) in rows(bs.k, n, kv_dim)?.zip(rows(bs.v, n, kv_dim)?).enumerate() {
        s.cache.store((layer * max_seq + pos + t) * kv_dim, key, value)?;
    }
    // attention, the output projection and the feed-forward of each thread's tokens;
    // a thread's attention rows: two (a KV group's two heads together) where the
    // buffer (`[heads, max_seq]`) holds two per thread
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let att_rows = if 2 * par.threads() <= heads { 2 } else { 1 };
    let layer_base = layer * max_seq * kv_dim;
    let keys = LayerKeys::store(k, &s.cache, bs.keys_t, max_seq, layer_base, pos + n, kv_dim, hd)?;
    let cache = &s.cache;
    let f32s = [
        (&mut *bs.x, RowSplit::Tokens(dim)),
        (&mut *bs.xb, RowSplit::Tokens(dim)),
        (&mut *bs.q, RowSplit::Tokens(dim)),
        (&mut *bs.hb, RowSplit::Tokens(ffn)),
        (&mut *bs.hb2, RowSplit::Tokens(ffn)),
        (&mut *s.att, RowSplit::Thread(att_rows * max_seq)),
        (&mut *bs.xs, sw),
    ];
    par_token_rows(par, n, f32s, [(&mut *bs.xq, qw)], &|t0, t1, f, i| {
        let m = t1 - t0;
        let [x, xb, q, hb, hb2, att, xs] = f;
        let xq = &mut *i[0];
        // head by head (a KV group's two together, `attend_heads`), then
        // token by token, as `block_rows` (a head's keys and values stay in
        // cache while the tokens pass)
        let mut h = 0;
        while h < heads {
            let g = heads_at(h, heads, group).min(att_rows);
            let base = layer_base + (h / group) * hd;
            let kb = keys.map(|l| l.head(h / group)).transpose()?;
            for (t, (q, o)) in rows(q, m, dim)?.zip(rows_mut(xb, m, dim)?).enumerate() {
                // causal: token t0 + t sees the cache up to its own position
                let seen = pos + t0 + t + 1;
                let q = q.get(h * hd..(h + g) * hd).ok_or(SHORT)?;
                let o = o.get_mut(h * hd..(h + g) * hd).ok_or(SHORT)?;
                attend_heads(k, cache, kb, att, max_seq, seen, q, o, hd, base, kv_dim, scale)?;
            }
            h += g;
        }
        out_ffn_rows(one, cfg, b, [x, xb, q, hb, hb2, xs], xq, m)
    })
}

/// Runs block `b` for the `n` tokens at positions `pos..pos + n`, caching
/// their K/V in cache slot `layer`, each product's rows split over the pool.
#[allow(clippy::too_many_arguments)]
fn block_rows(
    e: Exec<'_>,
    cfg: &Config,
    b: &Block<'_>,
    s: &mut RunState<'_>,
    layer: usize,
    pos: usize,
    n: usize,
) -> Result<()> {
    let max_seq = s.max_seq;
    let (dim, hd) = (cfg.dim as usize, cfg.head_dim());
    let (kv_dim, heads) = (cfg.kv_dim(), cfg.n_heads as usize);
    let group = heads / cfg.n_kv_heads as usize;
    let k = e.kernels;
    let bs = &mut s.block;

    // attention
    let inputs = [&mut *bs.x, &mut *bs.xb, &mut *bs.q, &mut *bs.k, &mut *bs.v, &mut *bs.rope, &mut *bs.xs];
    qkv_rows(e, cfg, b, inputs, bs.xq, n)?;
    for (t, (key, value)) in rows(bs.k, n, kv_dim)?.zip(rows(bs.v, n, kv_dim)?).enumerate() {
        s.cache.store((layer * max_seq + pos + t) * kv_dim, key, value)?;
    }

    let scale = 1.0 / libm::sqrtf(hd as f32);
    let layer_base = layer * max_seq * kv_dim;
    let keys = LayerKeys::store(k, &s.cache, bs.keys_t, max_seq, layer_base, pos + n, kv_dim, hd)?;
    let (q_all, cache) = (bs.q.get(..n * dim).ok_or(SHORT)?, &s.cache);
    // heads split across threads; each (token, head) as the one-token path does it
    let work = n * (pos + n) * heads * hd;
    let out_all = bs.xb.get_mut(..n * dim).ok_or(SHORT)?;
    attention_heads(e.par, work, heads, hd, out_all, dim, n, s.att, max_seq, &|h0, h1, out, att| {
        // head by head, then token by token: a head's keys and values (every
        // position, at stride kv_dim) stay in L2 while the block's tokens pass;
        // token by token over all heads swept the layer's whole cache per
        // token (590 KB at 256 positions of the 15M shape: more than L2)
        // (the two heads of a KV group together, `attend_heads`)
        let mut h = h0;
        while h < h1 {
            let m = heads_at(h, h1, group);
            let i = h - h0;
            let att = att.get_mut(i * max_seq..(i + m) * max_seq).ok_or(SHORT)?;
            let kb = keys.map(|l| l.head(h / group)).transpose()?;
            for (t, q) in rows(q_all, n, dim)?.enumerate() {
                // causal: token t sees the cache up to its own position
                let q = q.get(h * hd..(h + m) * hd).ok_or(SHORT)?;
                let o = out.token(t).get_mut(i * hd..(i + m) * hd).ok_or(SHORT)?;
                attend_heads(
                    k,
                    cache,
                    kb,
                    att,
                    max_seq,
                    pos + t + 1,
                    q,
                    o,
                    hd,
                    layer_base + (h / group) * hd,
                    kv_dim,
                    scale,
                )?;
            }
            h += m;
        }
        Ok(())
    })?;
    let rest = [&mut *bs.x, &mut *bs.xb, &mut *bs.q, &mut *bs.hb, &mut *bs.hb2, &mut *bs.xs];
    out_ffn_rows(e, cfg, b, rest, bs.xq, n)
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

/// The embeddings and every block of `domain`'s stack for the `n` tokens
/// `s.tokens[pos..pos + n]`, leaving their residual streams in `s.block.x`.
fn block_layers(
    e: Exec<'_>,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    pos: usize,
    n: usize,
) -> Result<()> {
    let cfg = model.config();
    let (dim, hd) = (cfg.dim as usize, cfg.head_dim());
    let tokens = s.tokens.get(pos..pos + n).ok_or(SHORT)?;
    for (&token, x) in tokens.iter().zip(rows_mut(s.block.x, n, dim)?) {
        domain.embedding.row_into(token as usize, x)?;
    }
    rope_block(s.block.rope.get_mut(..n * hd).ok_or(SHORT)?, pos, hd, cfg.rope_theta);

    for (layer, b) in stack(model, domain).enumerate() {
        block_run(e, cfg, b, s, layer, pos, n)?;
    }
    Ok(())
}

/// Runs the `n` tokens `s.tokens[pos..pos + n]` (`1 ≤ n ≤ s.block.len`) at
/// positions `pos..pos + n` through `domain`'s stack, leaving the logits
/// `want` asks for. The caller checks every token `< vocab`,
/// `pos + n ≤ s.max_seq`, and for [`BlockLogits::All`] that the block logits
/// buffer exists (what slips through is an error, as in [`forward`]).
pub fn forward_block(
    e: Exec<'_>,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    pos: usize,
    n: usize,
    want: BlockLogits,
) -> Result<()> {
    block_layers(e, model, domain, s, pos, n)?;
    let cfg = model.config();
    let dim = cfg.dim as usize;
    match want {
        BlockLogits::None => {}
        BlockLogits::Last => {
            // exactly the one-token path's head
            let last = rows(s.block.x, n, dim)?.next_back().ok_or(SHORT)?;
            (e.kernels.rmsnorm)(s.xb, last, domain.norm, cfg.norm_eps);
            let mut input = Input { x: s.xb, quantized: false };
            matvec(e, &domain.head, &mut input, s.xq, s.xs, s.logits)?;
        }
        BlockLogits::All => {
            let bs = &mut s.block;
            for (xb, x) in rows_mut(bs.xb, n, dim)?.zip(rows(bs.x, n, dim)?) {
                (e.kernels.rmsnorm)(xb, x, domain.norm, cfg.norm_eps);
            }
            // (`matmul` writes the first `n·vocab` logits, `vocab` = the head's rows)
            let mut input = BlockInput::new(bs.xb, dim, n)?;
            matmul(e, &domain.head, &mut input, bs.xq, bs.xs, bs.logits)?;
        }
    }
    Ok(())
}

/// Whether [`forward_block_nll`] can score `domain` on table `k`: the table
/// has a fused head ([`Kernels::head_nll`]), the head is q8 or q4 and its
/// rows are no wider than the kernel takes.
pub fn head_nll_applies(k: &Kernels, domain: &Domain<'_>) -> bool {
    k.head_nll.is_some_and(|h| {
        matches!(domain.head.weights, Weights::Q8 { .. } | Weights::Q4 { .. }) && domain.head.cols <= h.max_cols
    })
}

/// [`forward_block`] for scoring: the same layers, then each token's nats
/// against `targets[t]` (`-ln softmax(logits)[target]`) from the table's
/// [`Kernels::head_nll`], without storing the logits; `on_nll(t, nats)`
/// for `t < n` in order. The caller checks [`head_nll_applies`], the
/// targets (below the vocabulary) and what [`forward_block`] needs.
#[allow(clippy::too_many_arguments)]
pub fn forward_block_nll(
    e: Exec<'_>,
    model: &Model<'_>,
    domain: &Domain<'_>,
    s: &mut RunState<'_>,
    pos: usize,
    n: usize,
    targets: &[u32],
    on_nll: &mut dyn FnMut(usize, f64),
) -> Result<()> {
    let fused = e.kernels.head_nll.ok_or(Error::BadSetting("forward_block_nll: the kernels have no fused head"))?;
    let targets = targets.get(..n).ok_or(Error::BadSetting("forward_block_nll: fewer targets than tokens"))?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= domain.vocab_size) {
        return Err(Error::BadToken(t));
    }
    block_layers(e, model, domain, s, pos, n)?;
    let dim = model.config().dim as usize;
    let g = dim / crate::format::Q8_GROUP;
    let bs = &mut s.block;
    for (xb, x) in rows_mut(bs.xb, n, dim)?.zip(rows(bs.x, n, dim)?) {
        (e.kernels.rmsnorm)(xb, x, domain.norm, model.config().norm_eps);
    }
    let mut input = BlockInput::new(bs.xb, dim, n)?;
    let (xq, xs) = input.quantized_rows(e.kernels, bs.xq, bs.xs)?;
    // a pass of the kernel at a time (64 tokens), its nats on the stack
    let mut nats = [0f64; NLL_PASS];
    for (c, want) in targets.chunks(NLL_PASS).enumerate() {
        let (b0, m) = (c * NLL_PASS, want.len());
        let (xq, xs) = (xq.get(b0 * dim..(b0 + m) * dim).ok_or(SHORT)?, xs.get(b0 * g..(b0 + m) * g).ok_or(SHORT)?);
        let out = nats.get_mut(..m).ok_or(SHORT)?;
        let vocab = domain.vocab_size;
        match domain.head.weights {
            Weights::Q8 { qs, scales } => (fused.q8)(out, qs, scales, vocab, xq, xs, want),
            Weights::Q4 { qs, scales } => (fused.q4)(out, qs, scales, vocab, xq, xs, want),
            _ => return Err(Error::BadSetting("forward_block_nll: the head is not quantized")),
        }
        for (t, &v) in out.iter().enumerate() {
            on_nll(b0 + t, v);
        }
    }
    Ok(())
}

/// Tokens per call of the fused head (its pass: four registers of sixteen).
const NLL_PASS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    /// `cos_sin` has the bits of `cosf` and `sinf`: at every angle RoPE makes
    /// below 8 192 positions for heads of 32 to 256 and the usual thetas, and
    /// at every 997th f32 of either sign (every branch of both functions).
    #[test]
    fn cos_sin_is_cosf_and_sinf() {
        let same = |a: f32| {
            let (c, s) = cos_sin(a);
            let want = (libm::cosf(a), libm::sinf(a));
            assert_eq!((c.to_bits(), s.to_bits()), (want.0.to_bits(), want.1.to_bits()), "angle {a:e}");
        };
        for theta in [10_000.0, 500_000.0] {
            for hd in [32, 48, 64, 128, 256] {
                for i in 0..hd / 2 {
                    let f = rope_freq(i, hd, theta);
                    for pos in 0..8192 {
                        same(pos as f32 * f);
                    }
                }
            }
        }
        for bits in (0..0x7f80_0000u32).step_by(997) {
            same(f32::from_bits(bits));
            same(-f32::from_bits(bits));
        }
        for x in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let (c, s) = cos_sin(x);
            assert!(c.is_nan() && s.is_nan());
        }
    }
}
