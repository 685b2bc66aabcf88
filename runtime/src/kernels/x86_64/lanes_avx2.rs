//! The batched q8 and q4 products of the AVX2 table with the tokens in the
//! lanes (`lanes.rs` is the AVX-512 VNNI form): each 32-bit lane of a
//! register is one token, so a group's sum needs no fold and a row's no
//! horizontal reduction. The matvec-order kernel this replaces spent a third
//! of its time folding lanes, reducing each (row, token) and on the single
//! group left after the quads of a 288- or 352-column row.
//!
//! The activations of a pass of up to 64 tokens are transposed once per call
//! (stack scratch, `Scratch::x`, 8 × 8 dwords at a time in registers): dword
//! `d` of eight tokens side by side in one register. A row's weight dword is
//! broadcast to every lane (`vpbroadcastd` from memory, no ALU work):
//! - q8: `vpmaddubsw` multiplies u8 × i8, so the signs move onto the
//!   activations as in the matvec, `|w| · (x · sign w)` (exact: `|w| ≤ 128`,
//!   `|x| ≤ 127`, a pair's sum ≤ 32 512 never saturates); `|w|` once per row
//!   and dword, shared by the pass's token vectors; then `vpmaddwd` by ones
//!   into the group's i32 sum. Per 32 multiply-adds: a sign, a `vpmaddubsw`,
//!   a `vpmaddwd` and an add.
//! - q4: the nibbles as stored (`q + 8`, unsigned; one dword of a group's
//!   bytes holds four low nibbles, for activation dword `k`, and four high
//!   ones, for dword `k + 4`), so no sign is needed; a pair's sum is at most
//!   2·15·127 = 3 810, so a group's eight `vpmaddubsw` add up in i16 (≤ 30 480)
//!   before one `vpmaddwd` by ones, and the correction `−8 · Σx` (per token and
//!   group, from the pass's preparation) makes it the exact `Σ q·x`.
//!
//! Each lane then holds the group's exact sum (|sum| ≤ 32·128·127 < 2²⁴,
//! converted to f32 exactly), and per (row, token) the f32 operations are
//! `acc = fma(sum, ws·xs, acc)`, the groups in order: the arithmetic of
//! `groups_in_order` in `runtime/tests/kernels.rs` and of `lanes.rs`, bit for
//! bit (`MatmulOrder::GroupsInOrder`). The accumulators live in the scratch
//! (`Scratch::t`, read and written once per group): the registers hold the
//! i32 sums of one row × up to eight token vectors (two rows × two where a
//! pass has two or fewer), each row operand shared by all of them.
//!
//! Rows wider than the scratch (over 3 072 columns) go in spans, one token
//! vector at a time, each span's sums carried through the output into the
//! next (the order unchanged). Eight rows' results are transposed in
//! registers and stored token by token.

use core::arch::x86_64::*;

use super::f16_scalar;
use super::lanes::passes;
use crate::kernels::TileOut;

/// Tokens per register.
const LANES: usize = 8;
/// Token vectors per pass (64 tokens, the default block: each weight read
/// once per block where the rows are narrow enough, see `XT_BYTES`).
const MAX_VECS: usize = 8;
/// Bytes of transposed activations per pass, read once per row: 64 tokens
/// of 288 columns (18 KiB) or 32 of 768 (24 KiB), within a 32 KiB L1 beside
/// the streaming rows. (16 KiB with at most four token vectors prefilled
/// the 15M shape 4–9 % slower.)
const XT_BYTES: usize = 24 * 1024;

/// The stack scratch of a pass (only what was written is read): `x` dword
/// `d` of token vector `v` at `d·V + v` (V: the pass's vectors), `c` the q4
/// correction and `s` the activation scales of group `g`, token vector `v` at
/// `g·V + v`, `t` the accumulators of a chunk of eight rows (row `i`, token
/// vector `v` at `i·MAX_VECS + v`).
#[repr(C, align(32))]
struct Scratch {
    x: [__m256i; XT_BYTES / 32],
    c: [__m256i; XT_BYTES / 32 / 8],
    s: [__m256; XT_BYTES / 32 / 8],
    t: [__m256; LANES * MAX_VECS],
}

/// `Kernels::matmul_q8` of the `avx2` table. Caller guarantees the CPU
/// features and the slice lengths (`check_q8_tile`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_q8(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    matmul::<false>(out, wq.as_ptr() as *const u8, ws, xq, xs)
}

/// `Kernels::matmul_q4` of the `avx2` table. Caller guarantees the CPU
/// features and the slice lengths (`check_q4_tile`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_q4(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    matmul::<true>(out, wq.as_ptr(), ws, xq, xs)
}

/// Both products; `Q4`: the weights are packed nibbles (`w: [rows·cols/2]`),
/// else q8 bytes (`w: [rows·cols]`).
#[target_feature(enable = "avx2,fma,f16c")]
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
            4 => p.run::<4, Q4>(out, w, ws, b0, live, carry),
            5 => p.run::<5, Q4>(out, w, ws, b0, live, carry),
            6 => p.run::<6, Q4>(out, w, ws, b0, live, carry),
            7 => p.run::<7, Q4>(out, w, ws, b0, live, carry),
            _ => p.run::<8, Q4>(out, w, ws, b0, live, carry),
        }
    }
}

/// One pass's scratch pointers and the shapes.
#[derive(Clone, Copy)]
struct Pass {
    x: *mut __m256i,
    c: *mut __m256i,
    s: *mut __m256,
    t: *mut __m256,
    /// Columns and groups of a whole row (the tokens' strides).
    cols: usize,
    groups: usize,
    /// Groups of the span of columns this pass prepared.
    span_groups: usize,
    /// Bytes of weights per row.
    row_bytes: usize,
}

/// The lanes below `live` all ones (a `vmaskmovps` mask).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn lane_mask(live: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(live.min(LANES) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

impl Pass {
    /// A pass over the buffers of `sc` (a live, possibly uninitialised
    /// `Scratch`: only addresses are taken) for rows of `cols` columns
    /// (`q4`: packed nibbles), `span_groups` of them prepared.
    unsafe fn over(sc: *mut Scratch, cols: usize, q4: bool, span_groups: usize) -> Pass {
        Pass {
            x: core::ptr::addr_of_mut!((*sc).x) as *mut __m256i,
            c: core::ptr::addr_of_mut!((*sc).c) as *mut __m256i,
            s: core::ptr::addr_of_mut!((*sc).s) as *mut __m256,
            t: core::ptr::addr_of_mut!((*sc).t) as *mut __m256,
            cols,
            groups: cols / 32,
            span_groups,
            row_bytes: if q4 { cols / 2 } else { cols },
        }
    }

    /// Transposes the span's columns of `live` tokens (`xq`: token `b` at
    /// `b·cols`) into `vecs` token vectors (lanes past `live` zero), with
    /// each group's scales and (q4) correction `−8 · Σx`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare<const Q4: bool>(&self, xq: *const i8, xs: *const f32, live: usize, vecs: usize) {
        let (cols, groups, span) = (self.cols, self.groups, self.span_groups);
        let eight = _mm256_set1_epi8(8);
        let minus_one = _mm256_set1_epi16(-1);
        for v in 0..vecs {
            let here = live.saturating_sub(v * LANES).min(LANES);
            let xb = xq.add(v * LANES * cols);
            let sb = xs.add(v * LANES * groups);
            for g in 0..span {
                // the group's eight dwords of eight tokens (past `live`: zeros)
                let rows: [__m256; LANES] = core::array::from_fn(|i| {
                    if i < here {
                        _mm256_castsi256_ps(_mm256_loadu_si256(xb.add(i * cols + 32 * g) as *const __m256i))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                let d = transpose8(rows).map(|t| _mm256_castps_si256(t));
                for (k, t) in d.iter().enumerate() {
                    *self.x.add((g * 8 + k) * vecs + v) = *t;
                }
                if Q4 {
                    // 8 · Σx per lane: i16 pairs (≤ 8 · 2 032), then i32, negated
                    let mut s16 = _mm256_setzero_si256();
                    for t in d {
                        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(eight, t));
                    }
                    *self.c.add(g * vecs + v) = _mm256_madd_epi16(s16, minus_one);
                }
                let mut s = [0f32; LANES];
                for (j, s) in s.iter_mut().enumerate().take(here) {
                    *s = *sb.add(j * groups + g);
                }
                *self.s.add(g * vecs + v) = _mm256_loadu_ps(s.as_ptr());
            }
        }
    }

    /// Every row of the tile (`wq`, `ws`: the span's first column of row 0)
    /// against the prepared `V` token vectors (`live` tokens, the tile's
    /// tokens `b0..b0 + live`); `carry`: add to the sums of the spans before,
    /// which `out` holds.
    #[target_feature(enable = "avx2,fma,f16c")]
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
            for v in 0..V {
                // the chunk's sums so far (spans before), else zeros
                let tokens: [__m256; LANES] = core::array::from_fn(|j| match b0 + v * LANES + j {
                    b if carry && v * LANES + j < live => _mm256_maskload_ps(out.token(b).as_ptr().add(r0), m),
                    _ => _mm256_setzero_ps(),
                });
                let rows = if carry { transpose8(tokens) } else { tokens };
                for (i, r) in rows.iter().enumerate() {
                    *self.t.add(i * MAX_VECS + v) = *r;
                }
            }
            let (w, s) = (wq.add(r0 * rb), ws.add(r0 * groups));
            // two rows at a time where their sums fit the registers beside
            // the operands (2 · V ≤ 4), else one: a row's operands are
            // shared by V token vectors either way
            let mut i = 0;
            while V <= 2 && i + 2 <= chunk {
                self.rows::<2, V, Q4>(w.add(i * rb), s.add(i * groups), i);
                i += 2;
            }
            while i < chunk {
                self.rows::<1, V, Q4>(w.add(i * rb), s.add(i * groups), i);
                i += 1;
            }
            for v in 0..V {
                let tokens = transpose8(core::array::from_fn(|i| *self.t.add(i * MAX_VECS + v)));
                for (j, t) in tokens.iter().enumerate().take(live.saturating_sub(v * LANES)) {
                    let o = out.token(b0 + v * LANES + j).as_mut_ptr().add(r0);
                    // lanes below `chunk` are rows `r0..r0 + chunk ≤ rows` of this token
                    if chunk == LANES {
                        _mm256_storeu_ps(o, *t);
                    } else {
                        _mm256_maskstore_ps(o, m, *t);
                    }
                }
            }
            r0 += chunk;
        }
    }

    /// `R` rows (`w`, `ws`: the span's first column of each row, rows
    /// `row_bytes` and `groups` apart) against the `V` token vectors, added
    /// into `t` at rows `i..i + R` of the chunk, group by group.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn rows<const R: usize, const V: usize, const Q4: bool>(&self, w: *const u8, ws: *const u16, i: usize) {
        let (rb, groups) = (self.row_bytes, self.groups);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        for g in 0..self.span_groups {
            let mut sum = [[_mm256_setzero_si256(); V]; R];
            if Q4 {
                // byte `j` of the group: element `j` low (dword `j/4`), `j + 16` high (dword `4 + j/4`)
                for k in 0..4 {
                    let (dl, dh) = (g * 8 + k, g * 8 + 4 + k);
                    for (r, row) in sum.iter_mut().enumerate() {
                        let b = broadcast(w.add(r * rb + g * 16 + 4 * k));
                        let (lo, hi) = (_mm256_and_si256(b, low), _mm256_and_si256(_mm256_srli_epi16::<4>(b), low));
                        for (v, s) in row.iter_mut().enumerate() {
                            let pl = _mm256_maddubs_epi16(lo, *self.x.add(dl * V + v));
                            let ph = _mm256_maddubs_epi16(hi, *self.x.add(dh * V + v));
                            *s = _mm256_add_epi16(*s, _mm256_add_epi16(pl, ph));
                        }
                    }
                }
                for row in sum.iter_mut() {
                    for (v, s) in row.iter_mut().enumerate() {
                        *s = _mm256_add_epi32(_mm256_madd_epi16(*s, ones), *self.c.add(g * V + v));
                    }
                }
            } else {
                for k in 0..8 {
                    let d = g * 8 + k;
                    let wv: [__m256i; R] = core::array::from_fn(|r| broadcast(w.add(r * rb + g * 32 + 4 * k)));
                    let aw = wv.map(|w| _mm256_sign_epi8(w, w));
                    for v in 0..V {
                        let x = *self.x.add(d * V + v);
                        for (r, row) in sum.iter_mut().enumerate() {
                            let p = _mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(x, wv[r]));
                            row[v] = _mm256_add_epi32(row[v], _mm256_madd_epi16(p, ones));
                        }
                    }
                }
            }
            for (r, sum) in sum.iter().enumerate() {
                let wsv = _mm256_set1_ps(f16_scalar(*ws.add(r * groups + g)));
                for (v, s) in sum.iter().enumerate() {
                    let scale = _mm256_mul_ps(wsv, *self.s.add(g * V + v));
                    let a = self.t.add((i + r) * MAX_VECS + v);
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), scale, *a);
                }
            }
        }
    }
}

/// The four bytes at `p` in every 32-bit lane: one `vpbroadcastd ymm, m32`,
/// a load with no ALU work.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn broadcast(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Transposes eight rows of eight 32-bit elements into eight columns.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // pairs of rows interleaved: per 128-bit lane [a0 b0 a1 b1], [a2 b2 a3 b3]
    let t: [__m256; 8] = core::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // quads: u[4q + j] holds, per 128-bit lane L, rows 4q..4q+3 of element 4L + j
    let u: [__m256; 8] = core::array::from_fn(|i| {
        let (q, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * q + j / 2], t[4 * q + 2 + j / 2]);
        if j % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xee>(a, b)
        }
    });
    // element 4L + j: lane L of u[j] (rows 0..4) and of u[4 + j] (rows 4..8)
    core::array::from_fn(|i| {
        let j = i % 4;
        if i < 4 {
            _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j])
        } else {
            _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j])
        }
    })
}
