//! q8 matvec on AVX-512 VNNI at 512-bit width: two groups of 32 per instruction.
//!
//! Per 64 weight bytes (groups `g`, `g+1` of one row):
//! - `vpdpbusd` multiplies u8 × i8, so the weights are offset into u8 with one
//!   `vpxorq` (`w ^ 0x80 = w + 128`), and the accumulator starts at the
//!   correction `−128 · Σx` of each lane's four activations (computed once per
//!   pair of groups for all the rows of a block). Each of the 16 i32 lanes then
//!   holds an exact partial sum `Σ w·x` of four products; lanes 0–7 belong to
//!   group `g`, lanes 8–15 to group `g+1`. No sign juggling, no shuffles.
//! - The lanes are converted to f32 (exact: |lane| ≤ 4·128·127 < 2²⁴) and
//!   multiplied into a per-row f32 accumulator with one FMA by the combined
//!   scales `ws·xs` of the two groups, each broadcast over its eight lanes
//!   (one `vpermps` from the eight scales computed per row and block).
//!
//! So the integer part equals the reference exactly, and the f32 result differs
//! from it only in the order of f32 additions (bound: `runtime/tests/kernels.rs`).
//! Rows go eight (then four, then one) at a time, each activation pair loaded
//! and corrected once per block; an odd last group is loaded with the upper
//! half masked to zero, which adds nothing. Every weight load is paired with a
//! prefetch of the same spot two blocks ahead: decode streams the weights from
//! L3 or DRAM, and there it gains ~25 %; a separate prefetch loop per block (as
//! the 256-bit paths have) cost 20 % when the weights are already cached.
//! Measured against folding lanes in the integer domain (unpack + add, as the
//! 256-bit paths do) and against the sign trick (`|w|`, `x·sign(w)`): this form
//! is 1.3–1.6× faster on Zen 4 (docs/BENCHMARKS.md).

use core::arch::x86_64::*;

/// Caller guarantees the CPU features (AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI)
/// and slice lengths (`check_q8`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn matvec(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    let groups = cols / 32;
    let rows = out.len();
    let (o, w, s, x, xs) = (out.as_mut_ptr(), wq.as_ptr(), ws.as_ptr(), xq.as_ptr(), xs.as_ptr());
    let mut r = 0;
    while r + 8 <= rows {
        block::<8>(o.add(r), w.add(r * cols), s.add(r * groups), x, xs, groups);
        r += 8;
    }
    if r + 4 <= rows {
        block::<4>(o.add(r), w.add(r * cols), s.add(r * groups), x, xs, groups);
        r += 4;
    }
    while r < rows {
        block::<1>(o.add(r), w.add(r * cols), s.add(r * groups), x, xs, groups);
        r += 1;
    }
}

/// `R` consecutive rows (`w: [R·groups·32]`, `ws: [R·groups]`) against `x`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn block<const R: usize>(
    out: *mut f32,
    w: *const i8,
    ws: *const u16,
    xq: *const i8,
    xs: *const f32,
    groups: usize,
) {
    let cols = groups * 32;
    // rows are contiguous: each load also prefetches the same spot of the block
    // after next (one stream; decode reads the weights from L3 or DRAM)
    let ahead = 2 * R * cols;
    let flip = _mm512_set1_epi8(-128);
    // lanes 0–7 ← scale 2k, lanes 8–15 ← scale 2k+1 (pair k of a chunk of eight groups)
    let spread = [0, 1, 2, 3].map(|k| {
        let (a, b) = (2 * k, 2 * k + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let mut acc = [_mm512_setzero_ps(); R];
    let mut g = 0;
    while g < groups {
        let n = if groups - g >= 8 { 8 } else { groups - g };
        // combined scales ws·xs of this chunk's (up to) eight groups, per row
        let mut sc = [_mm512_setzero_ps(); R];
        if n == 8 {
            let xv = _mm256_loadu_ps(xs.add(g));
            for (r, sc) in sc.iter_mut().enumerate() {
                let h = _mm_loadu_si128(ws.add(r * groups + g) as *const __m128i);
                *sc = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtph_ps(h), xv));
            }
        } else {
            let m = (1u8 << n) - 1;
            let xv = _mm256_maskz_loadu_ps(m, xs.add(g));
            for (r, sc) in sc.iter_mut().enumerate() {
                let h = _mm_maskz_loadu_epi16(m, ws.add(r * groups + g) as *const i16);
                *sc = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtph_ps(h), xv));
            }
        }
        let at = g * 32;
        // one pair of groups (`$load`: how 64 bytes are read) into every row's accumulator
        macro_rules! pair {
            ($k:expr, $spread:expr, |$p:ident| $load:expr) => {{
                let xv = {
                    let $p = xq.add(at + 64 * $k);
                    $load
                };
                let corr =
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, xv));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wp = w.add(r * cols + at + 64 * $k);
                    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(ahead));
                    let wv = {
                        let $p = wp;
                        $load
                    };
                    let q = _mm512_dpbusd_epi32(corr, _mm512_xor_si512(wv, flip), xv);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_permutexvar_ps($spread, sc[r]), *acc);
                }
            }};
        }
        for (k, spread) in spread.iter().enumerate().take(n / 2) {
            pair!(k, *spread, |p| _mm512_loadu_si512(p as *const __m512i));
        }
        if n % 2 == 1 {
            // odd last group: 32 bytes, the upper half zero (adds nothing)
            pair!(n / 2, spread[n / 2], |p| _mm512_maskz_loadu_epi8(0xffff_ffff, p));
        }
        g += n;
    }
    if R == 8 {
        store8(out, &*(acc.as_ptr() as *const [__m512; 8]));
    } else {
        for (r, acc) in acc.iter().enumerate() {
            *out.add(r) = _mm512_reduce_add_ps(*acc);
        }
    }
}

/// `out[r] = Σ lanes of a[r]` for eight accumulators: a transposing add tree
/// (19 shuffles and adds instead of eight separate reductions' 56). It pairs
/// lanes as `_mm512_reduce_add_ps` does (i + 8, i + 4, i + 2, i + 1), so a
/// row's sum is bit-identical whichever block it falls in (threaded splits).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn store8(out: *mut f32, a: &[__m512; 8]) {
    // 512 → 256 bits per row: 128-bit lanes [x, x, y, y]
    let (b01, b23) = (fold_lanes(a[0], a[1]), fold_lanes(a[2], a[3]));
    let (b45, b67) = (fold_lanes(a[4], a[5]), fold_lanes(a[6], a[7]));
    // 256 → 128 bits per row: 128-bit lane L = row L (and row 4 + L)
    let c0123 =
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(b01, b23), _mm512_shuffle_f32x4::<0b11_01_11_01>(b01, b23));
    let c4567 =
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(b45, b67), _mm512_shuffle_f32x4::<0b11_01_11_01>(b45, b67));
    // within 128-bit lane L: [row L, row L+4, row L, row L+4] partials, then totals in elements 0, 1
    let d = _mm512_add_ps(_mm512_unpacklo_ps(c0123, c4567), _mm512_unpackhi_ps(c0123, c4567));
    let e = _mm512_add_ps(d, _mm512_permute_ps::<0b01_00_11_10>(d));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm256_storeu_ps(out, _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, e)));
}

/// `[x0 + x2, x1 + x3, y0 + y2, y1 + y3]` over 128-bit lanes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn fold_lanes(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(x, y), _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y))
}
