//! Attention scores from keys stored by dimension (`kt[d·ld + t]`: a block's
//! keys transposed once per layer, then read by every query of the block),
//! for one head or the two heads of a KV group, on the AVX-512 table
//! (`Kernels::scores_by_dim`).
//!
//! A register holds sixteen keys side by side, so a score is one
//! multiply-add per key and dimension with no horizontal sum. The order is
//! this path's own (`ScoresByDim` states it): per key, the even dimensions
//! in one FMA chain and the odd ones in another, each in increasing order
//! from zero, then `(even + odd)·scale`. Every query of a block, one head or
//! two, gets these bits, whichever way the block is split over threads; a
//! decoded token's scores (`attn_scores`, a dot product per key) differ from
//! them in the last bits. Why not that order, as before: keeping the
//! one-key kernel's two chains of eight lanes and its horizontal tree took
//! fifteen additions per head and sixteen keys beside the thirty-two
//! multiply-adds, and its eight short chains per lane; the pair of heads
//! over 128 keys of 32 ran in 233 ns that way and in 170 ns this way
//! (`cargo bench -p edgelm-benches --bench eval_kernels`, Zen 4 VM).
//! Thirty-two keys go at a time (each broadcast query element feeds two
//! registers of keys, four chains per head), then a last sixteen. Two heads
//! share each load of the keys; a head alone still reads no more than
//! `attn_scores` does.
//!
//! Loads are whole registers: rows are padded to [`KEYS_BY_DIM_PAD`] and
//! lanes past the keys are computed and dropped (masked stores).

use core::arch::x86_64::*;

use super::lanes::{lane_mask, transpose16};
use crate::kernels::KEYS_BY_DIM_PAD;

/// Keys per register.
const LANES: usize = 16;

/// `att[h][t] = (q[h] · key t)·scale` for `t < n`: `H` queries of `hd`
/// against the same keys, in the order of the module's header.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn scores<const H: usize>(
    att: [*mut f32; H],
    n: usize,
    q: [*const f32; H],
    hd: usize,
    kt: *const f32,
    ld: usize,
    scale: f32,
) {
    let sc = _mm512_set1_ps(scale);
    // the keys `t..` read: `n` rounded up to whole registers
    let padded = n.next_multiple_of(LANES);
    let mut t = 0;
    while t + 2 * LANES <= padded {
        let (e, o) = chains::<H, 2>(q, hd, kt.add(t), ld);
        store(att, t, n, finish(e[0], o[0], sc));
        if t + LANES < n {
            store(att, t + LANES, n, finish(e[1], o[1], sc));
        }
        t += 2 * LANES;
    }
    if t < n {
        let (e, o) = chains::<H, 1>(q, hd, kt.add(t), ld);
        store(att, t, n, finish(e[0], o[0], sc));
    }
}

/// The even- and odd-dimension chains of `H` queries against `R` registers
/// of keys at `k` (register `r`: keys `16r..16r + 16`, dimension `d` at
/// `k + d·ld`); each broadcast query element feeds all `R` registers.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn chains<const H: usize, const R: usize>(
    q: [*const f32; H],
    hd: usize,
    k: *const f32,
    ld: usize,
) -> ([[__m512; H]; R], [[__m512; H]; R]) {
    let (mut even, mut odd) = ([[_mm512_setzero_ps(); H]; R], [[_mm512_setzero_ps(); H]; R]);
    let keys = |d: usize| -> [__m512; R] { core::array::from_fn(|r| _mm512_loadu_ps(k.add(d * ld + r * LANES))) };
    let mut d = 0;
    while d + 2 <= hd {
        let (ke, ko) = (keys(d), keys(d + 1));
        for h in 0..H {
            let (qe, qo) = (_mm512_set1_ps(*q[h].add(d)), _mm512_set1_ps(*q[h].add(d + 1)));
            for r in 0..R {
                even[r][h] = _mm512_fmadd_ps(qe, ke[r], even[r][h]);
                odd[r][h] = _mm512_fmadd_ps(qo, ko[r], odd[r][h]);
            }
        }
        d += 2;
    }
    if d < hd {
        let ke = keys(d);
        for h in 0..H {
            let qe = _mm512_set1_ps(*q[h].add(d));
            for r in 0..R {
                even[r][h] = _mm512_fmadd_ps(qe, ke[r], even[r][h]);
            }
        }
    }
    (even, odd)
}

/// Each head's `(even + odd)·scale`.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn finish<const H: usize>(even: [__m512; H], odd: [__m512; H], scale: __m512) -> [__m512; H] {
    core::array::from_fn(|h| _mm512_mul_ps(_mm512_add_ps(even[h], odd[h]), scale))
}

/// Scores `t..` of each row (those below `n`).
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn store<const H: usize>(att: [*mut f32; H], t: usize, n: usize, s: [__m512; H]) {
    for h in 0..H {
        if n - t >= LANES {
            _mm512_storeu_ps(att[h].add(t), s[h]);
        } else {
            _mm512_mask_storeu_ps(att[h].add(t), lane_mask(n - t), s[h]);
        }
    }
}

/// `kt[d·ld + t] = keys[t·stride + d]` for `d < hd` and `t` below `n`
/// rounded up to sixteen (the keys past `n` as zeros): sixteen keys ×
/// sixteen dimensions at a time, transposed in registers.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn store_keys(kt: *mut f32, ld: usize, keys: *const f32, n: usize, stride: usize, hd: usize) {
    let mut t0 = 0;
    while t0 < n {
        let live = (n - t0).min(LANES);
        let mut d0 = 0;
        while d0 < hd {
            let count = (hd - d0).min(LANES);
            let m = lane_mask(count);
            let rows: [__m512; LANES] = core::array::from_fn(|i| {
                if i < live {
                    _mm512_maskz_loadu_ps(m, keys.add((t0 + i) * stride + d0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            for (j, r) in transpose16(rows).iter().enumerate().take(count) {
                _mm512_storeu_ps(kt.add((d0 + j) * ld + t0), *r);
            }
            d0 += count;
        }
        t0 += LANES;
    }
}

/// Panics unless `kt` holds `hd` rows of `ld` reaching `n` rounded up to
/// [`KEYS_BY_DIM_PAD`] (what the kernels read and write).
fn check(n: usize, hd: usize, kt: usize, ld: usize) {
    let padded = n.next_multiple_of(KEYS_BY_DIM_PAD);
    assert!(ld >= padded && (hd == 0 || kt >= (hd - 1) * ld + padded), "keys by dimension: buffer too short");
}

// SAFETY (the three wrappers): only reachable via the AVX-512 table, returned
// after detecting avx2+fma+f16c+avx512f/bw/vl/vnni; rows `d < hd` of `kt`
// are read or written at `d·ld + t` for `t` below `n` rounded up to
// `KEYS_BY_DIM_PAD` ≤ `ld`, inside `kt` (`check`); `att` rows and queries
// are accessed within their lengths; keys `t < n` are read at
// `t·stride + d`, `d < hd`, inside `keys` (checked).

/// `ScoresByDim::one` of the AVX-512 table.
pub(super) fn attn_scores1_t(att: &mut [f32], q: &[f32], kt: &[f32], ld: usize, scale: f32) {
    let (n, hd) = (att.len(), q.len());
    if n == 0 {
        return;
    }
    check(n, hd, kt.len(), ld);
    // SAFETY: see above; `att` holds `n`, the query `hd`.
    unsafe { scores::<1>([att.as_mut_ptr()], n, [q.as_ptr()], hd, kt.as_ptr(), ld, scale) }
}

/// `ScoresByDim::two` of the AVX-512 table.
pub(super) fn attn_scores2_t(att: [&mut [f32]; 2], q: [&[f32]; 2], kt: &[f32], ld: usize, scale: f32) {
    let [a0, a1] = att;
    let (n, hd) = (a0.len(), q[0].len());
    assert!(a1.len() == n && q[1].len() == hd, "attn_scores2_t: the two heads' shapes differ");
    if n == 0 {
        return;
    }
    check(n, hd, kt.len(), ld);
    // SAFETY: see above; both rows of `att` hold `n`, both queries `hd`.
    unsafe {
        scores::<2>([a0.as_mut_ptr(), a1.as_mut_ptr()], n, [q[0].as_ptr(), q[1].as_ptr()], hd, kt.as_ptr(), ld, scale)
    }
}

/// `ScoresByDim::store_f32` of the AVX-512 table.
pub(super) fn keys_by_dim_f32(kt: &mut [f32], ld: usize, keys: &[f32], n: usize, stride: usize, hd: usize) {
    if n == 0 || hd == 0 {
        return;
    }
    check(n, hd, kt.len(), ld);
    assert!(stride >= hd && keys.len() >= (n - 1) * stride + hd, "keys by dimension: keys too short");
    // SAFETY: see above.
    unsafe { store_keys(kt.as_mut_ptr(), ld, keys.as_ptr(), n, stride, hd) }
}
