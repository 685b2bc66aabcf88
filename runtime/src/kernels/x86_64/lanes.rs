//! The batched q8 and q4 products on AVX-512 VNNI with the tokens in the
//! lanes: each 32-bit lane of a register is one token, so a group's dot
//! product is eight `vpdpbusd` into one register per (row, 16 tokens), with
//! no horizontal sums.
//!
//! The activations of a pass of up to 64 tokens are transposed once per tile
//! (stack scratch, `Scratch::x`; 16 × 16 dwords at a time in registers):
//! dword `d` of 16 tokens side by side in one register. A row's weight dword
//! is broadcast to every lane as the unsigned operand: q8 bytes offset into
//! u8 (`w ^ 0x80 = w + 128`, as the matvec does), q4 nibbles as they are
//! stored (`q + 8`; one dword of a group's bytes holds four low nibbles, for
//! activation dword `k`, and four high ones, for dword `k + 4`). The i32
//! accumulator starts at the tokens' correction `−128 · Σx` (q4: `−8 · Σx`)
//! of the group, so after eight `vpdpbusd` each lane holds the group's exact
//! sum `Σ w·x` for its token (|sum| ≤ 32·128·127 < 2²⁴, converted to f32
//! exactly). Per group and (row, token) the f32 operations are
//! `acc = fma(sum, ws·xs, acc)`, the groups in order: the arithmetic of
//! `groups_in_order` in `runtime/tests/kernels.rs`, bit for bit.
//!
//! That order is not the matvec's (which adds eight lanes of partial sums per
//! group and then folds its lanes), so this table's batched products differ
//! from its decode products in the last bits of f32
//! (`MatmulOrder::GroupsInOrder` states the bound). Per 512 multiply-adds
//! the q8 loop issues 8 `vpdpbusd`, a broadcast and an `xor` per row and
//! dword (shared by the pass's token vectors) and one convert, multiply and
//! FMA per group; the matvec issues 8 loads, 8 `xor`, 8 `vpdpbusd`, 8
//! converts, 8 permutes and 8 FMA for the same work, and a horizontal
//! reduction per row. Rows wider than the scratch (over 2 048 columns) go in
//! spans, one token vector at a time, each span's sums carried through the
//! output into the next (the order unchanged).
//!
//! Rows go two at a time (two rows × up to four token vectors of
//! accumulators; four rows when a pass has one or two vectors), sixteen
//! rows' results are transposed in registers and stored token by token.

use core::arch::x86_64::*;

use super::f16_scalar;
use crate::kernels::TileOut;

/// Tokens per register.
const LANES: usize = 16;
/// Token vectors per pass (64 tokens: the default prompt block).
const MAX_VECS: usize = 4;
/// Bytes of transposed activations per pass: with a tile's rows they stay in
/// L1 and L2 (every pass reads them once per row pair).
const XT_BYTES: usize = 32 * 1024;

/// The stack scratch of a pass (uninitialised; only what was written is
/// read): `x` dword `d` of token vector `v` at `d·V + v` (V: the pass's
/// vectors), `c` the correction and `s` the activation scales of group `g`,
/// token vector `v` at `g·V + v`, `t` the results of a chunk of sixteen rows
/// (row `i`, token vector `v` at `i·MAX_VECS + v`).
#[repr(C, align(64))]
struct Scratch {
    x: [__m512i; XT_BYTES / 64],
    c: [__m512i; XT_BYTES / 64 / 8],
    s: [__m512; XT_BYTES / 64 / 8],
    t: [__m512; LANES * MAX_VECS],
}

/// Token vectors per pass and columns per span for rows of `cols` columns,
/// for a token-lane kernel of `lanes` tokens per register, at most
/// `max_vecs` token vectors and `xt_bytes` of transposed activations: as
/// many vectors (up to `max_vecs`) as whole rows fit the scratch, else one
/// vector over spans of `xt_bytes / lanes` columns, each span's sums carried
/// into the next through the output (the groups stay in order).
fn pass_shape(cols: usize, lanes: usize, max_vecs: usize, xt_bytes: usize) -> (usize, usize) {
    match (xt_bytes / (lanes * cols.max(1))).min(max_vecs) {
        0 => (1, xt_bytes / lanes),
        v => (v, cols),
    }
}

/// One pass of a token-lane product ([`passes`]): tokens `b0..b0 + live` in
/// `vecs` token vectors, against columns `c0..c0 + 32·span_groups` of every
/// row (`c0 > 0`: add to the sums of the spans before).
#[derive(Clone, Copy)]
pub(super) struct Step {
    pub b0: usize,
    pub vecs: usize,
    pub live: usize,
    pub c0: usize,
    pub span_groups: usize,
}

/// The passes of a token-lane product of `n` tokens of `cols` columns, in
/// order (shapes from [`pass_shape`]): the tokens in passes of up to
/// `max_vecs` vectors of `lanes`, each pass over the columns span by span.
/// Both token-lane kernels (this file's and `lanes_avx2.rs`) follow it.
pub(super) fn passes(
    n: usize,
    cols: usize,
    lanes: usize,
    max_vecs: usize,
    xt_bytes: usize,
) -> impl Iterator<Item = Step> {
    let (most, span) = pass_shape(cols, lanes, max_vecs, xt_bytes);
    let (mut b0, mut c0) = (0, 0);
    core::iter::from_fn(move || {
        let span_groups = span.min(cols - c0) / 32;
        if b0 >= n || span_groups == 0 {
            return None;
        }
        let vecs = (n - b0).div_ceil(lanes).min(most);
        let live = (n - b0).min(vecs * lanes);
        let step = Step { b0, vecs, live, c0, span_groups };
        c0 += step.span_groups * 32;
        if c0 >= cols {
            (b0, c0) = (b0 + live, 0);
        }
        Some(step)
    })
}

/// `Kernels::matmul_q8` of the `avx512vnni` table. Caller guarantees the CPU
/// features and the slice lengths (`check_q8_tile`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn matmul_q8(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    matmul::<false>(out, wq.as_ptr() as *const u8, ws, xq, xs)
}

/// `Kernels::matmul_q4` of the `avx512vnni` table. Caller guarantees the CPU
/// features and the slice lengths (`check_q4_tile`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn matmul_q4(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    matmul::<true>(out, wq.as_ptr(), ws, xq, xs)
}

/// `Kernels::head_nll` of the `avx512vnni` table, q8 heads: see [`head_nll`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn head_nll_q8(
    nats: &mut [f64],
    wq: &[i8],
    ws: &[u16],
    rows: usize,
    xq: &[i8],
    xs: &[f32],
    targets: &[u32],
) {
    head_nll::<false>(nats, wq.as_ptr() as *const u8, ws, rows, xq, xs, targets)
}

/// `Kernels::head_nll` of the `avx512vnni` table, q4 heads: see [`head_nll`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn head_nll_q4(
    nats: &mut [f64],
    wq: &[u8],
    ws: &[u16],
    rows: usize,
    xq: &[i8],
    xs: &[f32],
    targets: &[u32],
) {
    head_nll::<true>(nats, wq.as_ptr(), ws, rows, xq, xs, targets)
}

/// Bits per byte's nats of each token straight from the head's product:
/// each sixteen rows' logits (for up to 64 tokens, in registers, the bits
/// [`matmul`] stores) go into the tokens' `Σ e^(l − c)` and pick out the
/// targets' logits, instead of being transposed and stored as a
/// `[tokens, vocab]` block that a max pass and a sum pass read back (with
/// the shipped head, 1 MiB per block through L2: the stores and transposes
/// alone were 5 % of `edgelm eval`). `c`, the shift, is a token's largest
/// logit of the first sixteen rows, raised when a later row is more than
/// [`RESHIFT`] above it (the sums so far scaled by `e^(c − c')`), so every
/// term is at most `e^RESHIFT` and the largest at least 1: no overflow,
/// and the sum keeps f32's precision per term. Terms
/// are [`super::wide::exp16_core`]'s (≤ 2 ulp), added sixteen rows at a
/// time in f32 and then in f64; `nats = c + ln Σ − l_target`, within
/// 4e-6·max(nats, 1) of the f64 form over the same logits (2 ulp per term,
/// the exponent's rounding, up to fifteen f32 additions per chunk). Rows of up to
/// [`HEAD_NLL_MAX_COLS`] (one pass's scratch).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn head_nll<const Q4: bool>(
    nats: &mut [f64],
    w: *const u8,
    ws: &[u16],
    rows: usize,
    xq: &[i8],
    xs: &[f32],
    targets: &[u32],
) {
    let n = targets.len().min(nats.len());
    if n == 0 || rows == 0 {
        return;
    }
    let cols = xq.len() / n;
    let groups = cols / 32;
    let (most, span) = pass_shape(cols, LANES, MAX_VECS, XT_BYTES);
    if span < cols || groups == 0 {
        return;
    }
    let mut sc = core::mem::MaybeUninit::<Scratch>::uninit();
    let sc = sc.as_mut_ptr();
    let p = Pass::over(sc, cols, Q4, groups);
    let mut b0 = 0;
    while b0 < n {
        let vecs = (n - b0).div_ceil(LANES).min(most);
        let live = (n - b0).min(vecs * LANES);
        p.prepare::<Q4>(xq.as_ptr().add(b0 * cols), xs.as_ptr().add(b0 * groups), live, vecs);
        let (t, out) = (targets.as_ptr().add(b0), nats.as_mut_ptr().add(b0));
        match vecs {
            1 => p.run_nll::<1, Q4>(w, ws.as_ptr(), rows, live, t, out),
            2 => p.run_nll::<2, Q4>(w, ws.as_ptr(), rows, live, t, out),
            3 => p.run_nll::<3, Q4>(w, ws.as_ptr(), rows, live, t, out),
            _ => p.run_nll::<4, Q4>(w, ws.as_ptr(), rows, live, t, out),
        }
        b0 += live;
    }
}

/// The widest rows [`head_nll`] takes: one pass's transposed activations
/// hold whole rows of sixteen tokens.
pub const HEAD_NLL_MAX_COLS: usize = XT_BYTES / LANES;

/// How far (in nats) a logit may rise above a token's shift before the
/// shift follows it (the sums so far scaled by `e^(c − c')` in f64). The
/// exponent `l − c` of a dominant term is rounded to f32 when it is not
/// exact, by at most half an ulp of `RESHIFT` (4.8e-7 here), its relative
/// error; a larger value would rescale less often (a trained model's
/// logits rarely rise this far above the first sixteen rows') and round
/// more.
const RESHIFT: f32 = 16.0;

/// Both products; `Q4`: the weights are packed nibbles (`w: [rows·cols/2]`),
/// else q8 bytes (`w: [rows·cols]`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn matmul<const Q4: bool>(out: &mut TileOut<'_>, w: *const u8, ws: &[u16], xq: &[i8], xs: &[f32]) {
    let (rows, n) = (out.rows(), out.tokens());
    if n == 0 || rows == 0 {
        return;
    }
    let cols = xq.len() / n;
    let groups = cols / 32;
    if groups == 0 {
        return;
    }
    let mut sc = core::mem::MaybeUninit::<Scratch>::uninit();
    let sc = sc.as_mut_ptr();
    let whole = Pass::over(sc, cols, Q4, 0); // each span's copy sets its own groups
    for st in passes(n, cols, LANES, MAX_VECS, XT_BYTES) {
        let (b0, c0, live) = (st.b0, st.c0, st.live);
        let p = Pass { span_groups: st.span_groups, ..whole };
        p.prepare::<Q4>(xq.as_ptr().add(b0 * cols + c0), xs.as_ptr().add(b0 * groups + c0 / 32), live, st.vecs);
        let (w, ws) = (w.add(if Q4 { c0 / 2 } else { c0 }), ws.as_ptr().add(c0 / 32));
        let carry = c0 > 0;
        match st.vecs {
            1 => p.run::<1, Q4>(out, w, ws, b0, live, carry),
            2 => p.run::<2, Q4>(out, w, ws, b0, live, carry),
            3 => p.run::<3, Q4>(out, w, ws, b0, live, carry),
            _ => p.run::<4, Q4>(out, w, ws, b0, live, carry),
        }
    }
}

/// One pass's scratch pointers and the shapes.
#[derive(Clone, Copy)]
struct Pass {
    x: *mut __m512i,
    c: *mut __m512i,
    s: *mut __m512,
    t: *mut __m512,
    /// Columns and groups of a whole row (the tokens' strides).
    cols: usize,
    groups: usize,
    /// Groups of the span of columns this pass prepared.
    span_groups: usize,
    /// Bytes of weights per row.
    row_bytes: usize,
}

/// Lanes below `live` set (`wide.rs` uses it too).
#[inline]
pub(super) fn lane_mask(live: usize) -> __mmask16 {
    if live >= LANES {
        0xffff
    } else {
        ((1u32 << live) - 1) as __mmask16
    }
}

impl Pass {
    /// A pass over the buffers of `sc` (a live, possibly uninitialised
    /// `Scratch`: only addresses are taken) for rows of `cols` columns
    /// (`q4`: packed nibbles), `span_groups` of them prepared.
    unsafe fn over(sc: *mut Scratch, cols: usize, q4: bool, span_groups: usize) -> Pass {
        Pass {
            x: core::ptr::addr_of_mut!((*sc).x) as *mut __m512i,
            c: core::ptr::addr_of_mut!((*sc).c) as *mut __m512i,
            s: core::ptr::addr_of_mut!((*sc).s) as *mut __m512,
            t: core::ptr::addr_of_mut!((*sc).t) as *mut __m512,
            cols,
            groups: cols / 32,
            span_groups,
            row_bytes: if q4 { cols / 2 } else { cols },
        }
    }

    /// Transposes the span's columns of `live` tokens (`xq`: token `b` at
    /// `b·cols`) into `vecs` token vectors (lanes past `live` zero), with
    /// each group's correction (the weights' offset times `−Σx`: 128 for q8
    /// bytes flipped into u8, 8 for q4 nibbles) and scales.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prepare<const Q4: bool>(&self, xq: *const i8, xs: *const f32, live: usize, vecs: usize) {
        let (cols, groups, span) = (self.cols, self.groups, self.span_groups);
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        // token `i`'s scales start `i·groups` floats in
        let sidx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(groups as i32));
        let offset = _mm512_set1_epi8(if Q4 { 8 } else { -128 });
        let zero = _mm512_setzero_si512();
        for v in 0..vecs {
            let here = live.saturating_sub(v * LANES);
            let m = lane_mask(here);
            let xb = xq.add(v * LANES * cols);
            // sixteen dwords of sixteen tokens at a time, transposed in
            // registers (tokens past `live` read as zeros); an odd group's
            // eight dwords with the upper half masked off
            let mut d0 = 0;
            while d0 < span * 8 {
                let count = (span * 8 - d0).min(16);
                let dm = lane_mask(count);
                let rows: [__m512; LANES] = core::array::from_fn(|i| {
                    if i < here {
                        _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(dm, xb.add(i * cols + 4 * d0) as *const i32))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (j, t) in transpose16(rows).iter().enumerate().take(count) {
                    *self.x.add((d0 + j) * vecs + v) = _mm512_castps_si512(*t);
                }
                d0 += count;
            }
            let sb = xs.add(v * LANES * groups);
            for g in 0..span {
                let mut c = zero;
                for k in 0..8 {
                    c = _mm512_dpbusd_epi32(c, offset, *self.x.add((g * 8 + k) * vecs + v));
                }
                *self.c.add(g * vecs + v) = _mm512_sub_epi32(zero, c);
                *self.s.add(g * vecs + v) = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, sidx, sb.add(g));
            }
        }
    }

    /// Every row of the tile (`wq`, `ws`: the span's first column of row 0)
    /// against the prepared `V` token vectors (`live` tokens, the tile's
    /// tokens `b0..b0 + live`); `carry`: add to the sums of the spans before,
    /// which `out` holds.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run<const V: usize, const Q4: bool>(
        &self,
        out: &mut TileOut<'_>,
        wq: *const u8,
        ws: *const u16,
        b0: usize,
        live: usize,
        carry: bool,
    ) {
        let rows = out.rows();
        let (rb, groups) = (self.row_bytes, self.groups);
        let mut r0 = 0;
        while r0 < rows {
            let chunk = (rows - r0).min(LANES);
            let m = lane_mask(chunk);
            if carry {
                // the chunk's sums so far, back into rows of token vectors
                for v in 0..V {
                    let tokens: [__m512; LANES] = core::array::from_fn(|j| match b0 + v * LANES + j {
                        b if v * LANES + j < live => _mm512_maskz_loadu_ps(m, out.token(b).as_ptr().add(r0)),
                        _ => _mm512_setzero_ps(),
                    });
                    for (i, r) in transpose16(tokens).iter().enumerate() {
                        *self.t.add(i * MAX_VECS + v) = *r;
                    }
                }
            }
            self.chunk::<V, Q4>(wq.add(r0 * rb), ws.add(r0 * groups), chunk, carry);
            for i in chunk..LANES {
                for v in 0..V {
                    *self.t.add(i * MAX_VECS + v) = _mm512_setzero_ps();
                }
            }
            for v in 0..V {
                let tokens = transpose16(core::array::from_fn(|i| *self.t.add(i * MAX_VECS + v)));
                for (j, t) in tokens.iter().enumerate().take(live.saturating_sub(v * LANES)) {
                    let o = out.token(b0 + v * LANES + j).as_mut_ptr().add(r0);
                    // lanes below `chunk` are rows `r0..r0 + chunk ≤ rows` of this token
                    if chunk == LANES {
                        _mm512_storeu_ps(o, *t);
                    } else {
                        _mm512_mask_storeu_ps(o, m, *t);
                    }
                }
            }
            r0 += chunk;
        }
    }

    /// [`head_nll`] over the prepared `V` token vectors (`live` tokens,
    /// their targets at `targets`, their nats to `nats`): every row of the
    /// head, sixteen at a time, as [`Pass::run`] computes them.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run_nll<const V: usize, const Q4: bool>(
        &self,
        wq: *const u8,
        ws: *const u16,
        rows: usize,
        live: usize,
        targets: *const u32,
        nats: *mut f64,
    ) {
        let (rb, groups) = (self.row_bytes, self.groups);
        let c = _mm512_set1_ps;
        // the reference's lower clamp (a hostile model's logits far below the
        // shift stay finite); no upper one: the shift keeps every exponent
        // at most `RESHIFT`
        let lo = c(crate::kernels::reference::EXP_MIN);
        // per token vector: the targets, the shift, the sums (f64, lanes 0..8
        // and 8..16) and the targets' logits
        let want: [__m512i; V] = core::array::from_fn(|v| {
            _mm512_maskz_loadu_epi32(lane_mask(live.saturating_sub(v * LANES)), targets.add(v * LANES) as *const i32)
        });
        let mut shift = [c(0.0); V];
        let (mut sum_lo, mut sum_hi) = ([_mm512_setzero_pd(); V], [_mm512_setzero_pd(); V]);
        let mut picked = [c(0.0); V];
        let mut r0 = 0;
        while r0 < rows {
            let chunk = (rows - r0).min(LANES);
            self.chunk::<V, Q4>(wq.add(r0 * rb), ws.add(r0 * groups), chunk, false);
            for v in 0..V {
                let row = |i: usize| *self.t.add(i * MAX_VECS + v);
                let mut top = row(0);
                for i in 1..chunk {
                    top = _mm512_max_ps(top, row(i));
                }
                if r0 == 0 {
                    shift[v] = top;
                } else {
                    let far = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(top, _mm512_add_ps(shift[v], c(RESHIFT)));
                    if far != 0 {
                        // rare: the sums so far scaled to the new shift, in f64
                        let raised = _mm512_mask_mov_ps(shift[v], far, top);
                        let (mut was, mut now, mut f) = ([0f32; LANES], [0f32; LANES], [1f64; LANES]);
                        _mm512_storeu_ps(was.as_mut_ptr(), shift[v]);
                        _mm512_storeu_ps(now.as_mut_ptr(), raised);
                        for j in (0..LANES).filter(|j| far & (1 << j) != 0) {
                            f[j] = libm::exp(was[j] as f64 - now[j] as f64);
                        }
                        sum_lo[v] = _mm512_mul_pd(sum_lo[v], _mm512_loadu_pd(f.as_ptr()));
                        sum_hi[v] = _mm512_mul_pd(sum_hi[v], _mm512_loadu_pd(f.as_ptr().add(8)));
                        shift[v] = raised;
                    }
                }
                let mut terms = _mm512_setzero_ps();
                for i in 0..chunk {
                    let x = _mm512_max_ps(lo, _mm512_sub_ps(row(i), shift[v]));
                    terms = _mm512_add_ps(terms, super::wide::exp16_core(x));
                }
                sum_lo[v] = _mm512_add_pd(sum_lo[v], _mm512_cvtps_pd(_mm512_castps512_ps256(terms)));
                sum_hi[v] = _mm512_add_pd(sum_hi[v], _mm512_cvtps_pd(high_half(terms)));
                // targets among these rows (for sixteen tokens, one chunk in sixteen on average)
                let first = _mm512_set1_epi32(r0 as i32);
                let here = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(want[v], first), _mm512_set1_epi32(chunk as i32));
                if here != 0 {
                    for i in 0..chunk {
                        let hit = _mm512_mask_cmpeq_epi32_mask(here, want[v], _mm512_set1_epi32((r0 + i) as i32));
                        picked[v] = _mm512_mask_mov_ps(picked[v], hit, row(i));
                    }
                }
            }
            r0 += chunk;
        }
        for v in 0..V {
            let (mut sh, mut pk, mut s) = ([0f32; LANES], [0f32; LANES], [0f64; LANES]);
            _mm512_storeu_ps(sh.as_mut_ptr(), shift[v]);
            _mm512_storeu_ps(pk.as_mut_ptr(), picked[v]);
            _mm512_storeu_pd(s.as_mut_ptr(), sum_lo[v]);
            _mm512_storeu_pd(s.as_mut_ptr().add(8), sum_hi[v]);
            for j in 0..live.saturating_sub(v * LANES).min(LANES) {
                *nats.add(v * LANES + j) = sh[j] as f64 + libm::log(s[j]) - pk[j] as f64;
            }
        }
    }

    /// The `chunk ≤ 16` rows at `wq`, `ws` (rows `row_bytes` and `groups`
    /// apart) against the `V` token vectors, into rows `0..chunk` of `t`
    /// (`carry`: starting from what `t` holds), four rows at a time where the
    /// accumulators fit the registers (2 · R · V ≤ 16), else two, then one.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn chunk<const V: usize, const Q4: bool>(&self, wq: *const u8, ws: *const u16, chunk: usize, carry: bool) {
        let (rb, groups) = (self.row_bytes, self.groups);
        let mut i = 0;
        while V <= 2 && i + 4 <= chunk {
            self.rows::<4, V, Q4>(wq.add(i * rb), ws.add(i * groups), i, carry);
            i += 4;
        }
        while i + 2 <= chunk {
            self.rows::<2, V, Q4>(wq.add(i * rb), ws.add(i * groups), i, carry);
            i += 2;
        }
        if i < chunk {
            self.rows::<1, V, Q4>(wq.add(i * rb), ws.add(i * groups), i, carry);
        }
    }

    /// `R` rows (`w`, `ws`: the span's first column of each row, rows
    /// `row_bytes` and `groups` apart) against the `V` token vectors, into
    /// `t` at rows `i..i + R` of the chunk (`carry`: starting from what `t`
    /// holds there).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn rows<const R: usize, const V: usize, const Q4: bool>(
        &self,
        w: *const u8,
        ws: *const u16,
        i: usize,
        carry: bool,
    ) {
        let (rb, groups) = (self.row_bytes, self.groups);
        let flip = _mm512_set1_epi8(-128);
        let low = _mm512_set1_epi8(0x0f);
        let mut acc: [[__m512; V]; R] = core::array::from_fn(|r| {
            core::array::from_fn(|v| if carry { *self.t.add((i + r) * MAX_VECS + v) } else { _mm512_setzero_ps() })
        });
        for g in 0..self.span_groups {
            let mut sum = [[_mm512_setzero_si512(); V]; R];
            for row in sum.iter_mut() {
                for (v, s) in row.iter_mut().enumerate() {
                    *s = *self.c.add(g * V + v);
                }
            }
            if Q4 {
                // byte `j` of the group: element `j` low (dword `j/4`), `j + 16` high (dword `4 + j/4`)
                for k in 0..4 {
                    let (dl, dh) = (g * 8 + k, g * 8 + 4 + k);
                    for (r, row) in sum.iter_mut().enumerate() {
                        let b = broadcast(w.add(r * rb + g * 16 + 4 * k));
                        let (lo, hi) = (_mm512_and_si512(b, low), _mm512_and_si512(_mm512_srli_epi16::<4>(b), low));
                        for (v, s) in row.iter_mut().enumerate() {
                            *s = _mm512_dpbusd_epi32(*s, lo, *self.x.add(dl * V + v));
                            *s = _mm512_dpbusd_epi32(*s, hi, *self.x.add(dh * V + v));
                        }
                    }
                }
            } else {
                for k in 0..8 {
                    let d = g * 8 + k;
                    for (r, row) in sum.iter_mut().enumerate() {
                        let wv = _mm512_xor_si512(broadcast(w.add(r * rb + g * 32 + 4 * k)), flip);
                        for (v, s) in row.iter_mut().enumerate() {
                            *s = _mm512_dpbusd_epi32(*s, wv, *self.x.add(d * V + v));
                        }
                    }
                }
            }
            for (r, (acc, sum)) in acc.iter_mut().zip(&sum).enumerate() {
                let wsv = _mm512_set1_ps(f16_scalar(*ws.add(r * groups + g)));
                for (v, (a, s)) in acc.iter_mut().zip(sum).enumerate() {
                    let scale = _mm512_mul_ps(wsv, *self.s.add(g * V + v));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*s), scale, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                *self.t.add((i + r) * MAX_VECS + v) = *a;
            }
        }
    }
}

/// Lanes 8..16 of `v` as a 256-bit register.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn high_half(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// The four bytes at `p` in every 32-bit lane: one `vpbroadcastd zmm, m32`,
/// a load with no ALU work. (Not `_mm512_set1_epi32`: with that form
/// feeding `vpdpbusd`, LLVM's instruction selection for `-C target-cpu=native`
/// on Zen 4 ran for over ten minutes on this file; this one builds in
/// seconds. A `vmovd` + register broadcast, as before, cost two ALU
/// operations per broadcast: the head's product ran 7 % slower.)
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn broadcast(p: *const u8) -> __m512i {
    _mm512_broadcastd_epi32(_mm_loadu_si32(p))
}

/// Transposes sixteen rows of sixteen tokens into sixteen tokens of sixteen rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(super) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // pairs of rows, 32-bit interleave: per 128-bit lane [a0 b0 a1 b1], [a2 b2 a3 b3]
    let t: [__m512; 16] = core::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // quads of rows: u[4q + j] holds, per 128-bit lane L, rows 4q..4q+3 of token 4L + j
    let u: [__m512; 16] = core::array::from_fn(|i| {
        let (q, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * q + j / 2], t[4 * q + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xee>(a, b)
        }
    });
    // across quads: token 4L + j = lane L of u[j], u[4 + j], u[8 + j], u[12 + j]
    let mut o = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let w1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
        o[j] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        o[4 + j] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        o[8 + j] = _mm512_shuffle_f32x4::<0xdd>(v0, w0);
        o[12 + j] = _mm512_shuffle_f32x4::<0xdd>(v1, w1);
    }
    o
}
