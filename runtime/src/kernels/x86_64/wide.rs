//! The AVX-512 table's kernels at 512-bit width besides the products: the
//! largest logit (the reference's value) and the sum of exponentials (within
//! 1e-6 of the reference's) of bits per byte, softmax, SwiGLU, q8 quantization (the
//! reference's bits) and the attention values (one head, or two heads of a
//! KV group sharing their loads).
//!
//! Why wider: the `exp` loops are a chain of ~25 dependent f32 operations
//! per vector. On Zen 4 the 256-bit sum of exponentials ran at a third of
//! its operation throughput (4 µs per 4 096 logits, 12 % of `edgelm eval`):
//! it was bound by how many iterations the FP scheduler holds in flight, not
//! by the pipes. A 512-bit operation carries sixteen lanes in one scheduler
//! entry where a 256-bit one carries eight, so twice the elements are in
//! flight. The values kernel is bound by loads (one per multiply-add), so a
//! pair of heads sharing them is where it gains. Softmax gains mostly at
//! lengths that are not a multiple of eight (most of a prompt's: the
//! attention of token `t` covers `t + 1` positions), whose tail the AVX2
//! kernel takes through scalar `expf`. Measured on the Zen 4 VM
//! (`cargo bench -p edgelm-benches --bench eval_kernels`, the AVX2 table's
//! kernel → this one; the figures are in docs/BENCHMARKS.md).
//!
//! Tails (fewer than sixteen elements) are masked loads and stores, so a
//! call's result depends only on its slice, as on every path.

use core::arch::x86_64::*;

use super::lanes::lane_mask as mask;
use crate::kernels::reference;

/// Lanes of a register.
const LANES: usize = 16;

/// [`reference::max`] (NaNs skipped, `-inf` for none): `max_ps(v, acc)` is
/// `v > acc ? v : acc`, the reference's comparison, so a NaN `v` keeps `acc`.
/// The value is the reference's; of equal zeros, either sign may come back.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn max(xs: &[f32]) -> f32 {
    let (n, p) = (xs.len(), xs.as_ptr());
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + LANES <= n {
        acc = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), acc);
        i += LANES;
    }
    if i < n {
        let m = mask(n - i);
        acc = _mm512_mask_max_ps(acc, m, _mm512_maskz_loadu_ps(m, p.add(i)), acc);
    }
    _mm512_reduce_max_ps(acc)
}

/// `Σ e^(x − max)` for bits per byte, within 1e-6 relative of
/// [`reference::sum_exp`] (not its bits: see `Kernels::sum_exp`). Each term
/// is [`exp16_core`]'s (≤ 2 ulp) of `x − max` clamped as the reference
/// clamps; runs of [`F32_RUN`] registers are added in f32 per lane (at most
/// seven roundings of a sum of terms), each run's lanes then in f64. Why not
/// the reference's bits: its exponential is a chain of ~25 dependent plain
/// multiplies and adds per term, and the out-of-order window held about
/// three terms' chains, so the 512-bit loop ran at 28 cycles per sixteen
/// terms (10 % of `edgelm eval`); with FMA and `vscalefps` the chain is half
/// as long and a dozen operations do a term's work.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn sum_exp(xs: &[f32], max: f32) -> f64 {
    let (n, p) = (xs.len(), xs.as_ptr());
    let c = _mm512_set1_ps;
    let m = c(max);
    let mut total = _mm512_setzero_pd();
    let mut i = 0;
    while i < n {
        let end = n.min(i + F32_RUN * LANES);
        let mut run = _mm512_setzero_ps();
        while i < end {
            let k = mask(end - i);
            // the reference's clamp; a NaN stays NaN (min/max return their
            // second operand when either is NaN)
            let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), m);
            let x = _mm512_min_ps(c(reference::EXP_MAX), _mm512_max_ps(c(reference::EXP_MIN), x));
            run = _mm512_mask_add_ps(run, k, run, exp16_core(x));
            i += LANES;
        }
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(run)));
        total = _mm512_add_pd(total, _mm512_cvtps_pd(_mm512_castps512_ps256(run)));
        total = _mm512_add_pd(total, _mm512_cvtps_pd(high));
    }
    _mm512_reduce_add_pd(total)
}

/// Registers of terms added in f32 before a run goes to f64.
const F32_RUN: usize = 8;

/// `e^x` on `[-87.3, 88.3]`, clamped outside (a NaN reads as the low end,
/// as the AVX2 table's `exp_ps` has it): [`exp16_core`].
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
pub(super) unsafe fn exp16(x: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    exp16_core(_mm512_min_ps(_mm512_max_ps(x, c(-87.336_54)), c(88.376_26)))
}

/// `e^x` for `x` in `[-87.3, 88.3]` (callers clamp; a NaN stays NaN):
/// Cephes' polynomial with FMA (`x = n·ln2 + r`, `|r| ≤ ln2/2`), `2ⁿ`
/// applied by `vscalefps` (exact, no exponent arithmetic); ≤ 2 ulp.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
pub(super) unsafe fn exp16_core(x: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        c(core::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, c(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, c(-2.121_944_4e-4), r);
    let mut y = c(1.987_569_1e-4);
    for k in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = _mm512_fmadd_ps(y, r, c(k));
    }
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, c(1.0)));
    _mm512_scalef_ps(y, n)
}

/// In-place softmax: the max, `e^(x − max)` and its sum (sixteen lanes,
/// added across at the end), then each term times the sum's reciprocal
/// (one rounding more than a division, well inside the 1e-5 the tests
/// allow; a 512-bit division is several times a multiply's cost).
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mv = _mm512_set1_ps(max(x));
    let lo = _mm512_set1_ps(reference::EXP_MIN);
    let p = x.as_mut_ptr();
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = mask(n - i);
        // `x − max ≤ 0`: only the lower clamp can act
        let e = exp16_core(_mm512_max_ps(lo, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), mv)));
        _mm512_mask_storeu_ps(p.add(i), m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        i += LANES;
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    i = 0;
    while i < n {
        let m = mask(n - i);
        _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), inv));
        i += LANES;
    }
}

/// `g[i] = g[i] / (1 + e^(−g[i])) · u[i]` over the shorter of the two.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn swiglu(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = mask(n - i);
        let gv = _mm512_maskz_loadu_ps(m, gp.add(i));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let silu = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(gp.add(i), m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up.add(i))));
        i += LANES;
    }
}

// `attn_values` for one cached element type (`$load(p, m)`: the sixteen
// elements at `p` under mask `m` as f32, lanes off the mask zero): each
// output element is `Σ_t att[t]·v_t[i]` in `C` interleaved FMA chains,
// chain `j` taking `t ≡ j (mod C)` in order (the last `n mod C` positions
// go to chains `0..`), then the chains added as a tree, `(0 + 1) + (2 + 3)`.
// Why chains: with one chain per output vector a head of 32 is two
// dependent FMA chains, one FMA per position each, so the loop waits on
// FMA latency (4 cycles) where the pipes could do a position in two.
// The order is this table's own, the same for every call with the same
// slices, so decode and batched prompts (which call this per token and
// head) keep the same bits; against the reference, the dot-product bound.
macro_rules! attn_values_wide {
    ($(#[$attr:meta])* $name:ident, $pair:ident, $pass:ident, $ty:ty, |$p:ident, $m:ident| $load:expr) => {
        $(#[$attr])*
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        pub unsafe fn $name(out: &mut [f32], att: &[f32], values: &[$ty], stride: usize) {
            let hd = out.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(values.len() >= last * stride + hd, "attn_values: values too short");
            }
            let (o, v) = (out.as_mut_ptr(), values.as_ptr());
            // up to eight output vectors per pass over the positions
            let mut c = 0;
            while c < hd {
                match (hd - c).div_ceil(LANES) {
                    1 => $pass::<1, 4, 1>([o], c, hd, [att], v, stride),
                    2 => $pass::<2, 4, 1>([o], c, hd, [att], v, stride),
                    3 => $pass::<3, 4, 1>([o], c, hd, [att], v, stride),
                    4 => $pass::<4, 4, 1>([o], c, hd, [att], v, stride),
                    5 => $pass::<5, 2, 1>([o], c, hd, [att], v, stride),
                    6 => $pass::<6, 2, 1>([o], c, hd, [att], v, stride),
                    7 => $pass::<7, 2, 1>([o], c, hd, [att], v, stride),
                    _ => $pass::<8, 2, 1>([o], c, hd, [att], v, stride),
                }
                c += 8 * LANES;
            }
        }

        /// Two weightings (the same length) of the same values for heads
        /// of at most 32, each exactly as `$name` does it, sharing every load
        /// (both weightings' chains fill 16 registers; wider heads would
        /// spill). The caller checks the shapes (`attn_values2_wrapper!`).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        pub unsafe fn $pair(o: [*mut f32; 2], hd: usize, att: [&[f32]; 2], v: *const $ty, stride: usize) {
            match hd.div_ceil(LANES) {
                0 => {}
                1 => $pass::<1, 4, 2>(o, 0, hd, att, v, stride),
                _ => $pass::<2, 4, 2>(o, 0, hd, att, v, stride),
            }
        }

        /// Output columns `c..` (`K` vectors, the last masked at `hd`) of
        /// `Q` weightings (the same length) in `C` chains each.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn $pass<const K: usize, const C: usize, const Q: usize>(
            out: [*mut f32; Q],
            c: usize,
            hd: usize,
            att: [&[f32]; Q],
            values: *const $ty,
            stride: usize,
        ) {
            let masks: [__mmask16; K] = core::array::from_fn(|k| mask(hd.saturating_sub(c + k * LANES)));
            let mut acc = [[[_mm512_setzero_ps(); K]; C]; Q];
            let n = att[0].len();
            // position `t` into chain `j` of every weighting
            let step = |acc: &mut [[[__m512; K]; C]; Q], j: usize, t: usize| {
                let row = values.add(t * stride + c);
                let v: [__m512; K] = core::array::from_fn(|k| {
                    let ($p, $m) = (row.add(k * LANES), masks[k]);
                    $load
                });
                for (u, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*att[u].get_unchecked(t));
                    for (acc, v) in acc[j].iter_mut().zip(v) {
                        *acc = _mm512_fmadd_ps(a, v, *acc);
                    }
                }
            };
            let mut t = 0;
            while t + C <= n {
                for j in 0..C {
                    step(&mut acc, j, t + j);
                }
                t += C;
            }
            for j in 0..n - t {
                step(&mut acc, j, t + j);
            }
            for (acc, out) in acc.iter().zip(out) {
                for k in 0..K {
                    let sum = match C {
                        4 => _mm512_add_ps(_mm512_add_ps(acc[0][k], acc[1][k]), _mm512_add_ps(acc[2][k], acc[3][k])),
                        2 => _mm512_add_ps(acc[0][k], acc[1][k]),
                        _ => acc[0][k],
                    };
                    _mm512_mask_storeu_ps(out.add(c + k * LANES), masks[k], sum);
                }
            }
        }
    };
}
attn_values_wide!(
    /// `Kernels::attn_values` (an f32 cache).
    attn_values, attn_values2, attn_values_pass, f32, |p, m| _mm512_maskz_loadu_ps(m, p)
);
attn_values_wide!(
    /// `Kernels::attn_values_f16` (an f16 cache: IEEE half bits, widened exactly).
    attn_values_f16, attn_values2_f16, attn_values_pass_f16, u16, |p, m| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16))
);
attn_values_wide!(
    /// `Kernels::attn_values_q8` (a q8 cache: `i8`, widened exactly).
    attn_values_q8, attn_values2_q8, attn_values_pass_q8, i8, |p, m| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)))
);

/// `Kernels::quantize_q8`, the reference's bits: per group of 32 the
/// absolute maximum (exact in any order), `d = amax / 127` and `1 / d` (0
/// when `d` is 0; IEEE division is correctly rounded in a vector too, and
/// `!=` is unordered as Rust's, so a NaN maximum gives a NaN inverse as the
/// reference's does), then each value times `1 / d` rounded half away from
/// zero and saturated to `i8` (as the AVX2 table's packs do). Sixteen
/// groups at a time: their maxima reduced together ([`group_maxima`]: no
/// horizontal reduction per group), their divisions in one vector.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn quantize_q8(x: &[f32], q: &mut [i8], s: &mut [f32]) {
    let groups = (x.len() / 32).min(q.len() / 32).min(s.len());
    let (xp, qp, sp) = (x.as_ptr(), q.as_mut_ptr(), s.as_mut_ptr());
    let mut g0 = 0;
    while g0 < groups {
        let n = (groups - g0).min(LANES);
        let amax = group_maxima(xp.add(g0 * 32), n);
        let d = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, _mm512_setzero_ps());
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
        _mm512_mask_storeu_ps(sp.add(g0), mask(n), d);
        let mut ids = [0f32; LANES];
        _mm512_storeu_ps(ids.as_mut_ptr(), id);
        for (j, &id) in ids.iter().enumerate().take(n) {
            let idv = _mm512_set1_ps(id);
            for h in 0..2 {
                let at = (g0 + j) * 32 + h * 16;
                let i = round_away(_mm512_mul_ps(_mm512_loadu_ps(xp.add(at)), idv));
                _mm_storeu_si128(qp.add(at) as *mut __m128i, _mm512_cvtsepi32_epi8(i));
            }
        }
        g0 += n;
    }
}

/// Lane `j` = the largest `|x|` of group `j` (32 floats at `x + 32·j`) for
/// `j < n ≤ 16`, 0 past `n`: each group's two registers folded into one,
/// then the sixteen registers halved together (two groups' 256-bit halves,
/// then four groups' 128-bit quarters, then pairs and single lanes within
/// the quarters: 30 shuffles, 15 maxima) where a reduction per group took
/// eight dependent operations. The maximum of absolute values is exact in
/// any order.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn group_maxima(x: *const f32, n: usize) -> __m512 {
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MAX)));
    let v: [__m512; LANES] = core::array::from_fn(|j| {
        if j < n {
            let p = x.add(j * 32);
            _mm512_max_ps(abs(_mm512_loadu_ps(p)), abs(_mm512_loadu_ps(p.add(16))))
        } else {
            _mm512_setzero_ps()
        }
    });
    // groups 2i, 2i + 1: 256-bit halves -> lanes 0..8 of group 2i, 8..16 of 2i + 1
    let w: [__m512; 8] = core::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_max_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
    });
    // quarter k of y[i]: group 4i + k, four lanes
    let y: [__m512; 4] = core::array::from_fn(|i| {
        let (a, b) = (w[2 * i], w[2 * i + 1]);
        _mm512_max_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
    });
    // quarter k of z[i]: groups 8i + k, 8i + 4 + k, two lanes each
    let z: [__m512; 2] = core::array::from_fn(|i| {
        let (a, b) = (y[2 * i], y[2 * i + 1]);
        _mm512_max_ps(_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b))
    });
    // lane 4k + m: group k + 4m
    let (a, b) = (z[0], z[1]);
    let m = _mm512_max_ps(_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b));
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), m)
}

/// Sixteen floats rounded half away from zero to i32: `v` plus 0.49999997
/// (the float below one half) with `v`'s sign, truncated. Exact for every
/// float of magnitude below 2³¹ (checked over all of them against
/// `f32::round`; adding one half instead would carry 0.49999997 up to 1);
/// the quantizer's are at most 127.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
#[inline]
unsafe fn round_away(v: __m512) -> __m512i {
    // (v & sign) | 0.49999997: the constant with v's sign
    let half = _mm512_ternarylogic_epi32::<0xEA>(
        _mm512_castps_si512(v),
        _mm512_set1_epi32(i32::MIN),
        _mm512_set1_epi32(0x3EFF_FFFF),
    );
    _mm512_cvttps_epi32(_mm512_add_ps(v, _mm512_castsi512_ps(half)))
}
