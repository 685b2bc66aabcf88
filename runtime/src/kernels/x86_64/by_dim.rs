//! Attention scores from keys stored by dimension (`kt[d·ld + t]`: a block's
//! keys transposed once per layer, then read by every query of the block),
//! for the two heads of a KV group, on the AVX-512 table
//! (`Kernels::scores_by_dim`).
//!
//! A register holds sixteen keys side by side, and each lane does what the
//! table's one-key kernels (`dot`, `attn_scores4`) do for its key, in their
//! order: lane `l` of their two chains of eight (dimensions `i + l` and
//! `i + 8 + l` of each sixteen, then `i + l` of a last eight), `hsum`'s tree
//! `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))`, the scalar tail, the
//! scale: the bits of the table's `attn_scores`, with every multiply-add at
//! full width and no horizontal sums. What is left is one multiply-add per
//! key and dimension and the loads, which the two heads share: each load of
//! the keys feeds both. (One head alone still needs a load per multiply-add,
//! as `attn_scores` does, so heads alone, as in the 15M shape's MHA, score
//! from the cache and skip the transposing.) On the Zen 4 VM a pair of heads
//! over 128 keys of 32 took 209 ns this way against 2 × 180 ns through
//! `attn_scores` (`cargo bench -p edgelm-benches --bench eval_kernels`,
//! docs/BENCHMARKS.md). The AVX2 tables keep `attn_scores`: with eight lanes
//! and sixteen registers the pair measured 1.13× at best before the
//! transposing, which would take it back.
//!
//! Loads are whole registers: rows are padded to [`KEYS_BY_DIM_PAD`] and
//! lanes past the keys are computed and dropped (masked stores).

use core::arch::x86_64::*;

use super::lanes::{lane_mask, transpose16};
use crate::kernels::KEYS_BY_DIM_PAD;

/// Keys per register.
const LANES: usize = 16;

/// Lane `l` of the two chains of `H` queries against sixteen keys at `k`
/// (key `t` of the register at `k + t`, dimension `d` at `k + d·ld`), added:
/// `v_l` of the tree. `whole` sixteens per head (`hd / 16`), `half`: a last
/// eight.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn chains<const H: usize>(
    q: [*const f32; H],
    k: *const f32,
    ld: usize,
    l: usize,
    whole: usize,
    half: bool,
) -> [__m512; H] {
    let (mut s0, mut s1) = ([_mm512_setzero_ps(); H], [_mm512_setzero_ps(); H]);
    for w in 0..whole {
        let i = 16 * w;
        let (ka, kb) = (_mm512_loadu_ps(k.add((i + l) * ld)), _mm512_loadu_ps(k.add((i + 8 + l) * ld)));
        for h in 0..H {
            s0[h] = _mm512_fmadd_ps(_mm512_set1_ps(*q[h].add(i + l)), ka, s0[h]);
            s1[h] = _mm512_fmadd_ps(_mm512_set1_ps(*q[h].add(i + 8 + l)), kb, s1[h]);
        }
    }
    if half {
        let i = 16 * whole;
        let ka = _mm512_loadu_ps(k.add((i + l) * ld));
        for h in 0..H {
            s0[h] = _mm512_fmadd_ps(_mm512_set1_ps(*q[h].add(i + l)), ka, s0[h]);
        }
    }
    add(s0, s1)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn add<const H: usize>(a: [__m512; H], b: [__m512; H]) -> [__m512; H] {
    core::array::from_fn(|h| _mm512_add_ps(a[h], b[h]))
}

/// `att[h][t] = (q[h] · key t)·scale` for `t < n`: `H` queries of `hd`
/// against the same keys.
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
    // the common head sizes with their sixteens as constants, so the chains
    // unroll into registers
    match hd / 16 {
        0 => scores_of::<H, 0>(att, n, q, hd, 0, kt, ld, scale),
        1 => scores_of::<H, 1>(att, n, q, hd, 1, kt, ld, scale),
        2 => scores_of::<H, 2>(att, n, q, hd, 2, kt, ld, scale),
        3 => scores_of::<H, 3>(att, n, q, hd, 3, kt, ld, scale),
        4 => scores_of::<H, 4>(att, n, q, hd, 4, kt, ld, scale),
        whole => scores_of::<H, { usize::MAX }>(att, n, q, hd, whole, kt, ld, scale),
    }
}

/// [`scores`] with `whole = hd / 16`, a constant `W` where it is one
/// (`usize::MAX`: read `whole`), so each head size's chains unroll into
/// registers (with `whole` at run time the lanes looped over it and the
/// tree spilled).
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_of<const H: usize, const W: usize>(
    att: [*mut f32; H],
    n: usize,
    q: [*const f32; H],
    hd: usize,
    whole: usize,
    kt: *const f32,
    ld: usize,
    scale: f32,
) {
    let whole = if W == usize::MAX { whole } else { W };
    let half = hd % 16 >= 8;
    let tail = 16 * whole + if half { 8 } else { 0 };
    let mut t = 0;
    while t < n {
        let k = kt.add(t);
        let lane = |l| chains::<H>(q, k, ld, l, whole, half);
        let even = add(add(lane(0), lane(4)), add(lane(2), lane(6)));
        let odd = add(add(lane(1), lane(5)), add(lane(3), lane(7)));
        store(att, t, n, finish(add(even, odd), q, k, ld, tail, hd, scale));
        t += LANES;
    }
}

/// The tree's sums `s` with the scalar tail (dimensions `tail..hd`, each
/// `s + key·q`) and the scale.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn finish<const H: usize>(
    mut s: [__m512; H],
    q: [*const f32; H],
    k: *const f32,
    ld: usize,
    tail: usize,
    hd: usize,
    scale: f32,
) -> [__m512; H] {
    for d in tail..hd {
        let kd = _mm512_loadu_ps(k.add(d * ld));
        for h in 0..H {
            s[h] = _mm512_add_ps(s[h], _mm512_mul_ps(kd, _mm512_set1_ps(*q[h].add(d))));
        }
    }
    core::array::from_fn(|h| _mm512_mul_ps(s[h], _mm512_set1_ps(scale)))
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

// SAFETY (the two wrappers): only reachable via the AVX-512 table, returned
// after detecting avx2+fma+f16c+avx512f/bw/vl/vnni; rows `d < hd` of `kt`
// are read or written at `d·ld + t` for `t` below `n` rounded up to
// `KEYS_BY_DIM_PAD` ≤ `ld`, inside `kt` (`check`); `att` rows and queries
// are accessed within their lengths; keys `t < n` are read at
// `t·stride + d`, `d < hd`, inside `keys` (checked).

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
