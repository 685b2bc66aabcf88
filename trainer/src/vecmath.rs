//! f32 row maths for the fused CPU ops, written so that LLVM vectorises it on
//! the baseline target (no `unsafe`, no target features): a branch-free `exp`
//! (libm's `expf` is one call per element and took 13 % of a training step on
//! the ~1M bench), and reductions over eight independent lanes (a plain `sum()`
//! of f32 stays scalar, because vectorising it would reorder the additions).

/// Lanes of the reductions: one AVX register, two SSE ones.
const LANES: usize = 8;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `x - n·ln2` keeps its low bits (Cephes).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Inputs are clamped here: below, e^x is under f32's smallest normal; above,
/// 2ⁿ would overflow the exponent field (nothing here exponentiates positives
/// that large: softmax rows subtract their maximum first).
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;

/// e^x with a relative error under 3·10⁻⁷ on [-87, 88] (tested against f64);
/// inputs outside are clamped to that range, NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    // x = n·ln2 + r with n an integer and |r| ≤ ln2/2
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let n_int = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()); // n, two's complement
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r: Cephes' degree-6 minimax polynomial
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let er = p * r * r + r + 1.0;
    // 2ⁿ from its exponent bits; n ∈ [-126, 127] after the clamp
    let pow2 = f32::from_bits(n_int.wrapping_add(127) << 23);
    er * pow2
}

/// Largest element (`-inf` for an empty slice); NaN-free input assumed.
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    tail.iter().fold(m, |a, &b| a.max(b))
}

/// `Σ a[i]·b[i]` over the shorter length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[i] = e^(x[i]·scale - shift)`; returns `Σ out[i]`.
pub fn exp_into(out: &mut [f32], x: &[f32], scale: f32, shift: f32) -> f32 {
    let n = out.len().min(x.len());
    let (out, x) = (&mut out[..n], &x[..n]);
    let mut acc = [0f32; LANES];
    let mut co = out.chunks_exact_mut(LANES);
    let mut cx = x.chunks_exact(LANES);
    for (o, xs) in (&mut co).zip(&mut cx) {
        for ((s, o), &v) in acc.iter_mut().zip(o.iter_mut()).zip(xs) {
            *o = exp(v * scale - shift);
            *s += *o;
        }
    }
    let mut tail = 0f32;
    for (o, &v) in co.into_remainder().iter_mut().zip(cx.remainder()) {
        *o = exp(v * scale - shift);
        tail += *o;
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ e^(x[i] - shift)` without storing the terms.
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let cx = x.chunks_exact(LANES);
    let tail: f32 = cx.remainder().iter().map(|&v| exp(v - shift)).sum();
    for xs in cx {
        for (s, &v) in acc.iter_mut().zip(xs) {
            *s += exp(v - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `ln Σ e^x[i]`, stable (the maximum is taken out first).
pub fn logsumexp(x: &[f32]) -> f32 {
    let m = max(x);
    m + sum_exp(x, m).ln()
}

/// Rows handed to one rayon task: enough work (≈ 64 K elements) that the
/// hand-off is noise, and at least one row.
pub fn rows_per_task(row_len: usize) -> usize {
    (65_536 / row_len.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 2e-38 && exp(-1000.0) >= 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_scalar() {
        for n in [0usize, 1, 7, 8, 9, 31, 100, 4096] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 11.0).collect();
            let want_dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want_dot).abs() < 1e-3 * (1.0 + want_dot.abs()), "dot n={n}");
            let want_max = a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max(&a), want_max, "max n={n}");
            if n > 0 {
                let want_lse =
                    want_max as f64 + a.iter().map(|&v| (v as f64 - want_max as f64).exp()).sum::<f64>().ln();
                assert!((logsumexp(&a) as f64 - want_lse).abs() < 1e-5 * (1.0 + want_lse.abs()), "lse n={n}");
                let mut out = vec![0f32; n];
                let s = exp_into(&mut out, &a, 0.5, 1.0);
                let want: Vec<f64> = a.iter().map(|&v| (v as f64 * 0.5 - 1.0).exp()).collect();
                for (o, w) in out.iter().zip(&want) {
                    assert!((*o as f64 - w).abs() <= 3e-7 * w, "exp_into n={n}");
                }
                let ws: f64 = want.iter().sum();
                assert!((s as f64 - ws).abs() < 1e-5 * ws, "exp_into sum n={n}");
            }
        }
    }
}
