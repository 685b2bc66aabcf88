//! The batched q4 product on AVX-512 VNNI at 512-bit width: the 256-bit
//! `q4_avx512vnni::matmul` scheme with two tokens side by side in each
//! register.
//!
//! Per (row, quad of groups) the 256-bit kernel multiplies the row's four
//! transposed nibble vectors by one token's four transposed activation
//! vectors (four `vpdpbusd` from the `−8·Σx` correction), converts, and adds
//! the product with `ws·xs` into that token's accumulator. Here a weight
//! vector is broadcast into both 256-bit halves of a register and a token
//! pair's activations sit in the halves (token `2p` low, `2p + 1` high), so
//! one 512-bit instruction does the work of two 256-bit ones. Every
//! operation is lane-local (`vpdpbusd`, convert, multiply, FMA), so each half
//! performs exactly the 256-bit kernel's integer and f32 operations on its
//! token: the accumulators, and everything after them (the single groups, the
//! reduction), are bit-identical to the 256-bit kernel's, hence to `matvec`
//! per token. Two rows share each activation load (the loads, not the
//! multiplies, bound the 256-bit loop).

use core::arch::x86_64::*;

use super::super::{chunk_rows, dup128, f16_scalar, pass_tokens, reduce_rows, transpose4, WT_BYTES, XT_BYTES};
use super::q4_avx512vnni::{corr, qcorr, row, unpack};
use crate::kernels::TileOut;

/// The stack scratch of a pass (uninitialised; only what was written is
/// read): `x` token pair `p`, quad `q`, vector `k` at `4(p·quads + q) + k`
/// (the 256-bit kernel's transposed vectors of tokens `2p` and `2p + 1` as
/// the low and high halves), `c` their corrections and `s` their four
/// groups' activation scales (each token's in both of its 128-bit lanes) per
/// (pair, quad), `w` a chunk of rows' transposed nibbles (as the 256-bit
/// kernel's: row `i`, quad `q` at `4(i·quads + q)`); `x1`, `c1`, `s1` the
/// same for the single groups after the quads (pair `p`, single `j` at
/// `3p + j`; a token's activations in element order, the scale in all eight
/// of its lanes).
#[repr(C, align(64))]
struct Wide {
    x: [__m512i; XT_BYTES / 64],
    c: [__m512i; XT_BYTES / 256],
    s: [__m512; XT_BYTES / 256],
    w: [__m256i; WT_BYTES / 32],
    x1: [__m512i; 3 * MAX_PAIRS],
    c1: [__m512i; 3 * MAX_PAIRS],
    s1: [__m512; 3 * MAX_PAIRS],
}

/// Token pairs per pass (bounds the single groups' scratch).
const MAX_PAIRS: usize = 32;

/// `[lo | hi]` as one register.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The batched q4 product (`Kernels::matmul_q4` of the `avx512vnni` table);
/// bit-identical to the 256-bit `q4_avx512vnni::matmul` and so to its
/// `matvec` per token. Caller guarantees the CPU features and slice lengths
/// (`check_q4_tile`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn matmul(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let (rows, n) = (out.rows(), out.tokens());
    if n == 0 {
        return;
    }
    let cols = xq.len() / n;
    let groups = cols / 32;
    let quads = groups / 4;
    let (per, chunk) = (pass_tokens(quads, n).min(2 * MAX_PAIRS), chunk_rows(quads, 4));
    if quads == 0 || per == 0 || chunk == 0 {
        // too narrow for a quad, too wide for the scratch, or under four tokens
        return super::q4_avx512vnni::matmul(out, wq, ws, xq, xs);
    }
    let rows4 = rows / 4 * 4;
    let w = wq.as_ptr();
    let mut sc = core::mem::MaybeUninit::<Wide>::uninit();
    let sc = sc.as_mut_ptr();
    let xp = core::ptr::addr_of_mut!((*sc).x) as *mut __m512i;
    let cp = core::ptr::addr_of_mut!((*sc).c) as *mut __m512i;
    let sp = core::ptr::addr_of_mut!((*sc).s) as *mut __m512;
    let wt = core::ptr::addr_of_mut!((*sc).w) as *mut __m256i;
    let x1 = core::ptr::addr_of_mut!((*sc).x1) as *mut __m512i;
    let c1 = core::ptr::addr_of_mut!((*sc).c1) as *mut __m512i;
    let s1 = core::ptr::addr_of_mut!((*sc).s1) as *mut __m512;
    let sp1 = Singles { x: x1, c: c1, s: s1 };
    let mut b = 0;
    while n - b >= 4 {
        let m = per.min((n - b) / 4 * 4);
        // the pass's tokens, paired: transposed, corrected, scales spread
        for p in 0..m / 2 {
            let (ta, tb) = (b + 2 * p, b + 2 * p + 1);
            for q in 0..quads {
                let load = |t: usize| {
                    let x = xq.as_ptr().add(t * cols + q * 128);
                    transpose4([0, 1, 2, 3].map(|k| _mm256_loadu_si256(x.add(32 * k) as *const __m256i)))
                };
                let (xa, xb) = (load(ta), load(tb));
                let i = p * quads + q;
                for k in 0..4 {
                    _mm512_store_si512(xp.add(4 * i + k) as *mut _, join(xa[k], xb[k]));
                }
                _mm512_store_si512(cp.add(i) as *mut _, join(qcorr(xa), qcorr(xb)));
                let s = |t: usize| _mm256_castps_si256(dup128(_mm_loadu_ps(xs.as_ptr().add(t * groups + 4 * q))));
                _mm512_store_ps(sp.add(i) as *mut f32, _mm512_castsi512_ps(join(s(ta), s(tb))));
            }
            for (j, g) in (4 * quads..groups).enumerate() {
                let x = |t: usize| _mm256_loadu_si256(xq.as_ptr().add(t * cols + g * 32) as *const __m256i);
                let (xa, xb) = (x(ta), x(tb));
                _mm512_store_si512(x1.add(3 * p + j) as *mut _, join(xa, xb));
                _mm512_store_si512(c1.add(3 * p + j) as *mut _, join(corr(xa), corr(xb)));
                let s = |t: usize| _mm256_castps_si256(_mm256_set1_ps(*xs.as_ptr().add(t * groups + g)));
                _mm512_store_ps(s1.add(3 * p + j) as *mut f32, _mm512_castsi512_ps(join(s(ta), s(tb))));
            }
        }
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + chunk).min(rows);
            // rows r0..r1 unpacked and transposed once for the pass
            for i in 0..r1 - r0 {
                let wr = w.add((r0 + i) * cols / 2);
                for q in 0..quads {
                    let t = transpose4([0, 1, 2, 3].map(|k| unpack(wr.add((4 * q + k) * 16))));
                    for (k, t) in t.into_iter().enumerate() {
                        _mm256_store_si256(wt.add((i * quads + q) * 4 + k), t);
                    }
                }
            }
            // eight tokens per row block (each weight vector loaded once
            // for four registers), then a last four if `m` is not a multiple of 8
            let mut t0 = 0;
            while t0 < m {
                let wide = m - t0 >= 8;
                let mut r = r0;
                while r < r1 {
                    let two = r + 2 <= r1;
                    macro_rules! block {
                        ($r:literal, $p:literal) => {
                            rows_against::<$r, $p>(out, wt, xp, cp, sp, &sp1, wq, ws, xq, b, t0, r, r0, rows4)
                        };
                    }
                    match (two, wide) {
                        (true, true) => block!(2, 4),
                        (true, false) => block!(2, 2),
                        (false, true) => block!(1, 4),
                        (false, false) => block!(1, 2),
                    }
                    r += if two { 2 } else { 1 };
                }
                t0 += if wide { 8 } else { 4 };
            }
            r0 = r1;
        }
        b += m;
    }
    // the tokens left over (under four), row by row as the 256-bit kernel does them
    while b < n {
        let (x, xsb) = (xq.as_ptr().add(b * cols), xs.as_ptr().add(b * groups));
        let o = out.token(b);
        for (r, o) in o.iter_mut().enumerate() {
            *o = row::<1>(w.add(r * cols / 2), ws.as_ptr().add(r * groups), x, xsb, groups, r < rows4)[0];
        }
        b += 1;
    }
}

/// Rows `r..r + R` (their nibbles transposed in `wt` from row `r0`) against
/// the pass's tokens `t0..t0 + 2P` (pairs `t0/2..t0/2 + P` in `xp`, `cp`,
/// `sp`; the pass starts at token `b`): the quads two tokens per register,
/// then the single groups and the reduction as the 256-bit kernel's `gemm`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)] // `p` also places the pair in the scratch
unsafe fn rows_against<const R: usize, const P: usize>(
    out: &mut TileOut<'_>,
    wt: *const __m256i,
    xp: *const __m512i,
    cp: *const __m512i,
    sp: *const __m512,
    sp1: &Singles,
    wq: &[u8],
    ws: &[u16],
    xq: &[i8],
    b: usize,
    t0: usize,
    r: usize,
    r0: usize,
    rows4: usize,
) {
    let n = out.tokens();
    let cols = xq.len() / n;
    let groups = cols / 32;
    let quads = groups / 4;
    let (w, s) = (wq.as_ptr(), ws.as_ptr());
    // acc[i][p]: row r + i, tokens t0 + 2p (low half) and t0 + 2p + 1 (high)
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for q in 0..quads {
        let u: [[__m512i; 4]; R] = core::array::from_fn(|i| {
            let v = wt.add(((r + i - r0) * quads + q) * 4);
            [0, 1, 2, 3].map(|k| _mm512_broadcast_i64x4(_mm256_load_si256(v.add(k))))
        });
        // f32 weight scales of the four groups, in every 128-bit lane
        let wsc: [__m512; R] = core::array::from_fn(|i| {
            _mm512_cvtph_ps(_mm256_set1_epi64x((s.add((r + i) * groups + 4 * q) as *const i64).read_unaligned()))
        });
        for p in 0..P {
            let pi = (t0 / 2 + p) * quads + q;
            let x = [0, 1, 2, 3].map(|k| _mm512_load_si512(xp.add(4 * pi + k) as *const _));
            let (c, xs4) = (_mm512_load_si512(cp.add(pi) as *const _), _mm512_load_ps(sp.add(pi) as *const f32));
            for i in 0..R {
                let sum = _mm512_dpbusd_epi32(c, u[i][0], x[0]);
                let sum = _mm512_dpbusd_epi32(sum, u[i][1], x[1]);
                let sum = _mm512_dpbusd_epi32(sum, u[i][2], x[2]);
                let sum = _mm512_dpbusd_epi32(sum, u[i][3], x[3]);
                // ws·xs per group, the 256-bit kernel's products in each half
                acc[i][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(wsc[i], xs4), acc[i][p]);
            }
        }
    }
    // the single groups after the quads, two tokens per register as well
    // (the 256-bit kernel's `dot`, correction and `ws·xs` product in each half)
    for (j, g) in (4 * quads..groups).enumerate() {
        let u: [__m512i; R] =
            core::array::from_fn(|i| _mm512_broadcast_i64x4(unpack(w.add((r + i) * cols / 2 + g * 16))));
        let wsc: [__m512; R] = core::array::from_fn(|i| _mm512_set1_ps(f16_scalar(*s.add((r + i) * groups + g))));
        for p in 0..P {
            let k = 3 * (t0 / 2 + p) + j;
            let (x, c, xs1) = (
                _mm512_load_si512(sp1.x.add(k) as *const _),
                _mm512_load_si512(sp1.c.add(k) as *const _),
                _mm512_load_ps(sp1.s.add(k) as *const f32),
            );
            for i in 0..R {
                let d = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, u[i], x));
                acc[i][p] = _mm512_fmadd_ps(d, _mm512_mul_ps(wsc[i], xs1), acc[i][p]);
            }
        }
    }
    let high = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    // four tokens (two pairs) at a time
    for h in 0..P / 2 {
        let mut o = out.tokens_at::<4>(b + t0 + 4 * h);
        if R == 2 && r + 1 < rows4 {
            // both rows in a four-row block: `store4`'s additions, two rows at once
            let sums = store4_two_rows([acc[0][2 * h], acc[0][2 * h + 1]], [acc[R - 1][2 * h], acc[R - 1][2 * h + 1]]);
            // token t's two rows are neighbours in its output: one 8-byte store each
            let (lo, hi) = (_mm512_castps512_ps128(sums), _mm512_extractf32x4_ps::<1>(sums));
            let mut at = |t: usize| o[t][r..r + 2].as_mut_ptr() as *mut f64;
            _mm_store_sd(at(0), _mm_castps_pd(lo));
            _mm_storeh_pd(at(1), _mm_castps_pd(lo));
            _mm_store_sd(at(2), _mm_castps_pd(hi));
            _mm_storeh_pd(at(3), _mm_castps_pd(hi));
            continue;
        }
        for (i, acc) in acc.iter().enumerate() {
            let (p0, p1) = (acc[2 * h], acc[2 * h + 1]);
            let a = [_mm512_castps512_ps256(p0), high(p0), _mm512_castps512_ps256(p1), high(p1)];
            let sums = reduce_rows(&a, r + i < rows4);
            for (o, v) in o.iter_mut().zip(sums) {
                o[r + i] = v;
            }
        }
    }
}

/// Where a pass's single groups are (see [`Wide`]).
struct Singles {
    x: *const __m512i,
    c: *const __m512i,
    s: *const __m512,
}

/// `store4` (the 256-bit matvec's reduction of a four-row block, here one row
/// against four tokens) of two rows: `a[p]`, `b[p]` hold tokens `2p`, `2p + 1`
/// of rows `i` and `j` in their halves. Returns token `t`'s two sums (row
/// `i`, row `j`) in elements `2t`, `2t + 1`, from the same additions `store4`
/// makes (`vhaddps` as two shuffles and an add, per 128-bit lane).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn store4_two_rows(a: [__m512; 2], b: [__m512; 2]) -> __m512 {
    let hadd = |x: __m512, y: __m512| {
        _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(x, y), _mm512_shuffle_ps::<0b11_01_11_01>(x, y))
    };
    // [row i, token t | row j, token t] for t = 0..4
    let t0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(a[0], b[0]);
    let t1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(a[0], b[0]);
    let t2 = _mm512_shuffle_f32x4::<0b01_00_01_00>(a[1], b[1]);
    let t3 = _mm512_shuffle_f32x4::<0b11_10_11_10>(a[1], b[1]);
    let s = hadd(hadd(t0, t1), hadd(t2, t3));
    // low + high 128-bit lane of each row's half
    let r = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b10_11_00_01>(s, s));
    // row i's sums are elements 0–3, row j's 8–11: interleave them by token
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0), r)
}
