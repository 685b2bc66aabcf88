//! Every SIMD kernel table this CPU supports, against the scalar reference.
//!
//! Bounds:
//! - q8 matvec: per-group integer sums are exactly the reference's (checked
//!   with unit scales and one live group at a time, so the f32 result *is*
//!   the i32 sum); with real scales `|got − ref| ≤ 1e-5 · Σ_g |d_g|·Σ_i |w_i·x_i|`
//!   (the standard dot-product bound: x86 paths convert integer partial sums
//!   of a group, not the group total, to f32; `d_g = ws·xs`).
//! - q4 matvec: the same two checks with 4-bit weights (every nibble value,
//!   activations in [-127, 127]): exact integer group sums, and the same
//!   f32 bound with `w_i = nibble − 8`.
//! - quantize_q8 and rope: bit-exact.
//! - dot-product style f32 kernels (matvec_f32/f16, attention, rmsnorm):
//!   `|got − ref| ≤ 1e-5 · Σ|terms|` (summation order differs).
//! - softmax, swiglu (vector `exp`, ≤ 2 ulp): relative 1e-5 (+ 1e-30 absolute).
//!
//! Under qemu, CI sets `EDGELM_EXPECT_KERNELS` to the path the emulated CPU
//! must select (`neon` on cortex-a72, `dotprod` on cortex-a76).

use edgelm_runtime::kernels::{self, reference, Kernels, MatmulOrder, REFERENCE};
use proptest::prelude::*;

fn simd_tables() -> Vec<&'static Kernels> {
    kernels::available().filter(|k| k.name != "reference").collect()
}

fn cases() -> ProptestConfig {
    // modest: the suite also runs under qemu in CI
    ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() }
}

/// f16 bits of a finite scale in roughly [1e-4, 0.1].
fn f16_scale() -> impl Strategy<Value = u16> {
    0x0C00u16..0x2E66
}

fn q8_inputs(max_groups: usize) -> impl Strategy<Value = (usize, usize, Vec<i8>, Vec<u16>, Vec<i8>, Vec<f32>)> {
    (prop::sample::select(vec![1usize, 2, 3, 4, 5, 7, 8, 9, 33, 37, 289]), 1..=max_groups).prop_flat_map(
        |(rows, groups)| {
            let cols = groups * 32;
            (
                Just(rows),
                Just(cols),
                prop::collection::vec(any::<i8>(), rows * cols),
                prop::collection::vec(f16_scale(), rows * groups),
                prop::collection::vec(-127i8..=127, cols),
                prop::collection::vec(1e-4f32..0.1, groups),
            )
        },
    )
}

fn q4_inputs(max_groups: usize) -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<u16>, Vec<i8>, Vec<f32>)> {
    (prop::sample::select(vec![1usize, 2, 3, 4, 5, 7, 8, 9, 33, 37, 289]), 1..=max_groups).prop_flat_map(
        |(rows, groups)| {
            let cols = groups * 32;
            (
                Just(rows),
                Just(cols),
                prop::collection::vec(any::<u8>(), rows * cols / 2),
                prop::collection::vec(f16_scale(), rows * groups),
                prop::collection::vec(-127i8..=127, cols),
                prop::collection::vec(1e-4f32..0.1, groups),
            )
        },
    )
}

/// q4 weights unpacked to i8 `nibble − 8` in element order (`[rows·cols]`).
fn unpack_q4(wq: &[u8]) -> Vec<i8> {
    wq.chunks_exact(16)
        .flat_map(|g| {
            let lo = g.iter().map(|&b| (b & 0x0f) as i8 - 8);
            let hi = g.iter().map(|&b| (b >> 4) as i8 - 8);
            lo.chain(hi).collect::<Vec<_>>()
        })
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The scalar twin of [`MatmulOrder::GroupsInOrder`]: per (row, token) the
/// exact group sums, added group by group with one FMA each. `w8`: the
/// weights as i8 (q4 unpacked); token `b`'s row `r` at `b·rows + r`.
fn groups_in_order(w8: &[i8], ws: &[u16], xq: &[i8], xs: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
    let groups = cols / 32;
    let mut out = vec![0f32; n * rows];
    for b in 0..n {
        for r in 0..rows {
            let mut acc = 0f32;
            for g in 0..groups {
                let (w, x) = (&w8[r * cols + g * 32..][..32], &xq[b * cols + g * 32..][..32]);
                let sum: i32 = w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum();
                let scale = kernels::f16_to_f32(ws[r * groups + g]) * xs[b * groups + g];
                acc = (sum as f32).mul_add(scale, acc);
            }
            out[b * rows + r] = acc;
        }
    }
    out
}

/// `ln Σ e^l` in f64 (the largest logit taken out first).
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
}

/// The fused head where a token's logits rise row after row (each a shift
/// raise, far past any one chunk) and where they fall, targets at the top,
/// the bottom and in between: the rescaled sums keep the nats within the
/// bound of `head_nll_is_the_log_sum_exp_of_the_product`.
#[test]
fn head_nll_keeps_its_bound_when_logits_climb() {
    let (rows, cols, n) = (700usize, 64usize, 20usize);
    let groups = cols / 32;
    for rising in [true, false] {
        // every weight 1, a token's activations all positive: logit r ∝ its row's scale
        let w = vec![1i8; rows * cols];
        let ws: Vec<u16> = (0..rows * groups)
            .map(|i| {
                let r = if rising { i / groups } else { rows - 1 - i / groups };
                half::f16::from_f32(1e-3 + r as f32 * 6e-3).to_bits()
            })
            .collect();
        let x: Vec<f32> = (0..n * cols).map(|i| 0.5 + (i % 7) as f32 / 14.0).collect();
        let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
        reference::quantize_q8(&x, &mut xq, &mut xs);
        let targets: Vec<u32> = (0..n as u32).map(|b| [0, rows as u32 - 1, 350, 699, 1][b as usize % 5]).collect();
        for k in kernels::available() {
            let Some(fused) = k.head_nll else { continue };
            let mut logits = vec![0f32; n * rows];
            (k.matmul_q8)(&mut kernels::TileOut::new(&mut logits, rows, rows, n), &w, &ws, &xq, &xs);
            let spread = logits[..rows].iter().fold(0f32, |m, &l| m.max(l))
                - logits[..rows].iter().fold(f32::MAX, |m, &l| m.min(l));
            assert!(spread > 100.0, "the logits should climb far past one shift: {spread}");
            let mut got = vec![f64::NAN; n];
            (fused.q8)(&mut got, &w, &ws, rows, &xq, &xs, &targets);
            for b in 0..n {
                let want = log_sum_exp(&logits[b * rows..][..rows]) - logits[b * rows + targets[b] as usize] as f64;
                assert!(
                    (got[b] - want).abs() <= 4e-6 * want.abs().max(1.0),
                    "{} rising {rising} token {b}: {} vs {}",
                    k.name,
                    got[b],
                    want
                );
            }
        }
    }
}

/// One token's matvec: `(out, xq, xs)`.
type TokenMatvec<'a> = &'a dyn Fn(&mut [f32], &[i8], &[f32]);

/// What table `k`'s batched product must give every token (token `b`'s row
/// `r` at `b·rows + r`): its matvec's, or the twin of its order.
#[allow(clippy::too_many_arguments)]
fn batched_want(
    k: &Kernels,
    matvec: TokenMatvec<'_>,
    w8: &[i8],
    ws: &[u16],
    xq: &[i8],
    xs: &[f32],
    rows: usize,
    n: usize,
) -> Vec<f32> {
    let (cols, groups) = (xq.len() / n, xs.len() / n);
    match k.matmul_order {
        MatmulOrder::Matvec => {
            let mut want = vec![0f32; n * rows];
            for b in 0..n {
                matvec(&mut want[b * rows..][..rows], &xq[b * cols..][..cols], &xs[b * groups..][..groups]);
            }
            want
        }
        MatmulOrder::GroupsInOrder => groups_in_order(w8, ws, xq, xs, rows, cols, n),
    }
}

/// Tokens for a batched kernel's test: few (single tokens, fours) and
/// enough for several 16-token vectors and 64-token passes (`lanes.rs`),
/// at most about 4 M multiply-adds per case (the suite runs under qemu).
fn batch_tokens(rows: usize, cols: usize, n: usize) -> usize {
    n.min((4_000_000 / (rows * cols)).max(1))
}

fn exact_isums(wq: &[i8], xq: &[i8], rows: usize, cols: usize) -> Vec<Vec<i32>> {
    (0..rows)
        .map(|r| {
            (0..cols / 32)
                .map(|g| (0..32).map(|i| wq[r * cols + g * 32 + i] as i32 * xq[g * 32 + i] as i32).sum())
                .collect()
        })
        .collect()
}

#[test]
fn expected_kernel_path_is_selected() {
    let best = kernels::best();
    eprintln!("kernel path: {} (available: {:?})", best.name, kernels::available().map(|k| k.name).collect::<Vec<_>>());
    if let Ok(want) = std::env::var("EDGELM_EXPECT_KERNELS") {
        assert_eq!(best.name, want, "EDGELM_EXPECT_KERNELS");
    }
    #[cfg(target_arch = "aarch64")]
    assert!(kernels::available().any(|k| k.name == "neon"), "every aarch64 CPU has NEON");
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert_ne!(kernels::detected().name, "reference", "a SIMD path should be detected here");
    }
}

#[test]
fn select_by_name_and_errors() {
    assert_eq!(kernels::select(Some("reference")).unwrap().name, "reference");
    assert_eq!(kernels::select(Some("REFERENCE")).unwrap().name, "reference");
    assert_eq!(kernels::select(None).unwrap().name, kernels::detected().name);
    assert_eq!(kernels::select(Some("auto")).unwrap().name, kernels::detected().name);
    for k in kernels::available() {
        assert_eq!(kernels::select(Some(k.name)).unwrap().name, k.name);
    }
    let e = kernels::select(Some("sse9")).unwrap_err();
    assert!(!e.known);
    let msg = e.to_string();
    assert!(msg.contains("reference") && msg.contains("avx2") && msg.contains("dotprod"), "{msg}");
    // a path of the other architecture is known but unsupported here
    let other = if cfg!(target_arch = "aarch64") { "avx2" } else { "dotprod" };
    let e = kernels::select(Some(other)).unwrap_err();
    assert!(e.known, "{e}");
}

#[test]
fn q8_group_sums_equal_reference_exactly_at_edges() {
    // extremes: -128 weights, ±127 activations, every group alone with unit scales
    let one = half::f16::from_f32(1.0).to_bits();
    for k in simd_tables() {
        for &(rows, groups) in &[(1usize, 1usize), (3, 2), (5, 9), (33, 24), (4, 8), (6, 17)] {
            let cols = groups * 32;
            let wq: Vec<i8> =
                (0..rows * cols).map(|i| if i % 3 == 0 { -128 } else { (127 - (i % 255) as i32) as i8 }).collect();
            let xq: Vec<i8> = (0..cols).map(|i| if i % 2 == 0 { -127 } else { 127 }).collect();
            let ws = vec![one; rows * groups];
            let want = exact_isums(&wq, &xq, rows, cols);
            for g in 0..groups {
                let mut x1 = vec![0i8; cols];
                x1[g * 32..(g + 1) * 32].copy_from_slice(&xq[g * 32..(g + 1) * 32]);
                let xs = vec![1f32; groups];
                let mut out = vec![0f32; rows];
                (k.matvec_q8)(&mut out, &wq, &ws, &x1, &xs);
                for r in 0..rows {
                    assert_eq!(out[r], want[r][g] as f32, "{}: rows {rows} groups {groups} row {r} group {g}", k.name);
                }
            }
        }
    }
}

/// The q4 (and q8) batched kernels against their order per token, bit for
/// bit, on rows wider than the property tests reach (more than 4096
/// columns, where the x86 kernels leave their prepared-activation paths and
/// `lanes.rs` and `lanes_avx2.rs` carry sums from span to span), with
/// octets, a quad left over and single groups.
#[test]
fn q4_matmul_equals_its_order_per_token_on_wide_rows() {
    for groups in [132usize, 135, 136, 139] {
        let (rows, n, cols) = (5, 6, groups * 32);
        let wq: Vec<u8> = (0..rows * cols / 2).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2]).collect();
        let ws: Vec<u16> = (0..rows * groups).map(|i| 0x0C00 + (i as u16).wrapping_mul(40503) % 0x2000).collect();
        let x: Vec<f32> =
            (0..n * cols).map(|i| ((i as u32).wrapping_mul(2246822519) >> 8) as f32 / (1 << 24) as f32 - 0.5).collect();
        let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
        reference::quantize_q8(&x, &mut xq, &mut xs);
        let w8 = unpack_q4(&wq);
        for k in kernels::available() {
            let mut got = vec![f32::NAN; n * rows];
            (k.matmul_q4)(&mut kernels::TileOut::new(&mut got, rows, rows, n), &wq, &ws, &xq, &xs);
            let want = batched_want(k, &|o, x, s| (k.matvec_q4)(o, &wq, &ws, x, s), &w8, &ws, &xq, &xs, rows, n);
            for b in 0..n {
                let want = &want[b * rows..][..rows];
                assert_eq!(bits(&got[b * rows..][..rows]), bits(want), "{} groups {} token {}", k.name, groups, b);
            }
            // the q8 product over the same spans (the weights' bytes as i8, all of i8)
            let w8q: Vec<i8> = (0..rows * cols).map(|i| wq[i / 2].rotate_left(4 * (i % 2) as u32) as i8).collect();
            let mut got = vec![f32::NAN; n * rows];
            (k.matmul_q8)(&mut kernels::TileOut::new(&mut got, rows, rows, n), &w8q, &ws, &xq, &xs);
            let want = batched_want(k, &|o, x, s| (k.matvec_q8)(o, &w8q, &ws, x, s), &w8q, &ws, &xq, &xs, rows, n);
            for b in 0..n {
                let want = &want[b * rows..][..rows];
                assert_eq!(bits(&got[b * rows..][..rows]), bits(want), "{} q8 groups {} token {}", k.name, groups, b);
            }
        }
    }
}

#[test]
fn q4_extremes_are_exact() {
    // every weight -8 (byte 0x00) or 7 (0xff), activations ±127: the largest
    // group sums (|−8·127·32| = 32512), each group alone and all together
    let one = half::f16::from_f32(1.0).to_bits();
    for k in kernels::available() {
        for &(rows, groups) in &[(1usize, 1usize), (5, 3), (8, 9), (13, 17)] {
            let cols = groups * 32;
            let wq: Vec<u8> =
                (0..rows * cols / 2).map(|i| if (i / 16 + i / 7) % 2 == 0 { 0x00 } else { 0xff }).collect();
            let xq: Vec<i8> = (0..cols).map(|i| if i % 3 == 0 { -127 } else { 127 }).collect();
            let (ws, xs) = (vec![one; rows * groups], vec![1f32; groups]);
            let want = exact_isums(&unpack_q4(&wq), &xq, rows, cols);
            let mut out = vec![0f32; rows];
            (k.matvec_q4)(&mut out, &wq, &ws, &xq, &xs);
            for r in 0..rows {
                let total: i64 = want[r].iter().map(|&v| v as i64).sum();
                assert_eq!(out[r] as f64, total as f64, "{} rows {rows} groups {groups} row {r}", k.name);
            }
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    /// Unit scales, one live group at a time: the output is that group's
    /// i32 sum, exactly (|sum| ≤ 32·128·127 < 2^24).
    #[test]
    fn q8_group_sums_equal_reference_exactly((rows, cols, wq, _ws, xq, _xs) in q8_inputs(12)) {
        let groups = cols / 32;
        let one = half::f16::from_f32(1.0).to_bits();
        let ws = vec![one; rows * groups];
        let xs = vec![1f32; groups];
        let want = exact_isums(&wq, &xq, rows, cols);
        for k in simd_tables() {
            for g in 0..groups {
                let mut x1 = vec![0i8; cols];
                x1[g * 32..(g + 1) * 32].copy_from_slice(&xq[g * 32..(g + 1) * 32]);
                let mut out = vec![f32::NAN; rows];
                (k.matvec_q8)(&mut out, &wq, &ws, &x1, &xs);
                let mut reference_out = vec![f32::NAN; rows];
                (REFERENCE.matvec_q8)(&mut reference_out, &wq, &ws, &x1, &xs);
                for r in 0..rows {
                    prop_assert_eq!(out[r], want[r][g] as f32, "{} row {} group {}", k.name, r, g);
                    prop_assert_eq!(out[r], reference_out[r]);
                }
            }
            // all groups live, unit scales: exact integer row sums
            let mut out = vec![0f32; rows];
            (k.matvec_q8)(&mut out, &wq, &ws, &xq, &xs);
            for r in 0..rows {
                let total: i64 = want[r].iter().map(|&v| v as i64).sum();
                prop_assert_eq!(out[r] as f64, total as f64, "{} row {}", k.name, r);
            }
        }
    }

    /// Real scales: within 1e-5 · Σ_g |d_g|·Σ_i |w_i·x_i| of the reference.
    #[test]
    fn q8_matvec_close_to_reference((rows, cols, wq, ws, xq, xs) in q8_inputs(30)) {
        let groups = cols / 32;
        let mut want = vec![0f32; rows];
        reference::matvec_q8(&mut want, &wq, &ws, &xq, &xs);
        let abs_sums: Vec<Vec<f64>> = (0..rows)
            .map(|r| {
                (0..groups)
                    .map(|g| (0..32).map(|i| (wq[r * cols + g * 32 + i] as f64 * xq[g * 32 + i] as f64).abs()).sum())
                    .collect()
            })
            .collect();
        for k in simd_tables() {
            let mut out = vec![0f32; rows];
            (k.matvec_q8)(&mut out, &wq, &ws, &xq, &xs);
            for r in 0..rows {
                let mag: f64 = (0..groups)
                    .map(|g| abs_sums[r][g] * (kernels::f16_to_f32(ws[r * groups + g]) as f64 * xs[g] as f64).abs())
                    .sum();
                prop_assert!((out[r] as f64 - want[r] as f64).abs() <= 1e-5 * mag + 1e-30,
                    "{} row {}: {} vs {} (mag {})", k.name, r, out[r], want[r], mag);
            }
        }
    }

    /// `sum_exp` (the `Σ e^(x − max)` of bits per byte) is the reference's,
    /// bit for bit, on every path but AVX-512, and within 1e-6 relative
    /// there: lengths with and without a tail of under eight and across the
    /// AVX-512 kernel's f32 runs, values beyond the clamp on both sides,
    /// infinities, NaN (then a NaN, whose payload is not compared), and
    /// `max` the true maximum or not.
    #[test]
    fn sum_exp_is_the_references(
        xs in prop::collection::vec(
            prop_oneof![
                8 => -120f32..20f32,
                1 => Just(f32::NEG_INFINITY),
                1 => Just(f32::INFINITY),
                1 => Just(f32::NAN),
                1 => Just(-0.0f32),
            ],
            0..300,
        ),
        own_max in any::<bool>(),
        max in -10f32..100f32,
    ) {
        let max = if own_max { xs.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m }) } else { max };
        let want = reference::sum_exp(&xs, max);
        for k in kernels::available() {
            let got = (k.sum_exp)(&xs, max);
            if want.is_nan() {
                prop_assert!(got.is_nan(), "{}: {} where the reference has NaN", k.name, got);
            } else if k.name == "avx512vnni" {
                prop_assert!((got - want).abs() <= 1e-6 * want.abs(), "{}: {} vs {}", k.name, got, want);
            } else {
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{}: {} vs {}", k.name, got, want);
            }
        }
    }

    /// `max` (before `sum_exp` in bits per byte) is the reference's on every
    /// path: NaNs skipped, infinities kept, `-inf` for none, lengths with
    /// and without a tail; equal zeros may differ in sign only.
    #[test]
    fn max_is_the_references(
        xs in prop::collection::vec(
            prop_oneof![
                8 => -120f32..20f32,
                1 => Just(f32::NEG_INFINITY),
                1 => Just(f32::INFINITY),
                1 => Just(f32::NAN),
                1 => Just(-0.0f32),
                1 => Just(0.0f32),
            ],
            0..70,
        ),
    ) {
        let want = reference::max(&xs);
        prop_assert!(!want.is_nan());
        for k in kernels::available() {
            let got = (k.max)(&xs);
            prop_assert!(got == want || (got.is_infinite() && got.to_bits() == want.to_bits()), "{}: {} vs {}", k.name, got, want);
        }
    }

    /// The batched q8 kernel (`matmul_q8`, tokens strided by `ld`) gives every
    /// token exactly what its table's order promises (bit for bit: its
    /// `matvec_q8`, or the twin `groups_in_order`; odd row counts, so
    /// four-row blocks, sixteen-row chunks and single rows; tokens from one
    /// to several 64-token passes; 1..=30 groups, so eight-group chunks,
    /// quads and single groups), leaves the gaps between tokens alone, and is
    /// within the matvec bound of the reference `reference::matmul_q8`.
    #[test]
    fn q8_matmul_equals_its_order_per_token(
        (rows, cols, wq, ws, _xq, _xs) in q8_inputs(30),
        n in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 9, 16, 17, 33, 64, 67, 150]),
        gap in 0usize..3,
        seed in any::<u32>(),
    ) {
        let n = batch_tokens(rows, cols, n);
        let groups = cols / 32;
        let ld = rows + gap;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect();
        let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
        reference::quantize_q8(&x, &mut xq, &mut xs);
        let mut want_ref = vec![f32::NAN; (n - 1) * ld + rows];
        reference::matmul_q8(&mut kernels::TileOut::new(&mut want_ref, ld, rows, n), &wq, &ws, &xq, &xs);
        for k in kernels::available() {
            let mut got = vec![f32::NAN; (n - 1) * ld + rows];
            (k.matmul_q8)(&mut kernels::TileOut::new(&mut got, ld, rows, n), &wq, &ws, &xq, &xs);
            let want = batched_want(k, &|o, x, s| (k.matvec_q8)(o, &wq, &ws, x, s), &wq, &ws, &xq, &xs, rows, n);
            for b in 0..n {
                prop_assert_eq!(bits(&got[b * ld..][..rows]), bits(&want[b * rows..][..rows]), "{} token {} of {}", k.name, b, n);
                if b + 1 < n {
                    prop_assert!(got[b * ld + rows..(b + 1) * ld].iter().all(|v| v.is_nan()), "{} wrote a gap", k.name);
                }
                for r in 0..rows {
                    let mag: f64 = (0..groups)
                        .map(|g| {
                            let s: f64 = (0..32)
                                .map(|i| (wq[r * cols + g * 32 + i] as f64 * xq[b * cols + g * 32 + i] as f64).abs())
                                .sum();
                            s * (kernels::f16_to_f32(ws[r * groups + g]) as f64 * xs[b * groups + g] as f64).abs()
                        })
                        .sum();
                    let (g, w) = (got[b * ld + r] as f64, want_ref[b * ld + r] as f64);
                    prop_assert!((g - w).abs() <= 1e-5 * mag + 1e-30, "{} token {} row {}: {} vs {}", k.name, b, r, g, w);
                }
            }
        }
    }

    /// The batched q4 kernel against its table's order per token, bit for
    /// bit, as `q8_matmul_equals_its_order_per_token` (every nibble value),
    /// and within the q4 matvec bound of the reference `reference::matmul_q4`.
    #[test]
    fn q4_matmul_equals_its_order_per_token(
        (rows, cols, wq, ws, _xq, _xs) in q4_inputs(30),
        n in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 9, 16, 17, 33, 64, 67, 150]),
        gap in 0usize..3,
        seed in any::<u32>(),
    ) {
        let n = batch_tokens(rows, cols, n);
        let groups = cols / 32;
        let ld = rows + gap;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect();
        let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
        reference::quantize_q8(&x, &mut xq, &mut xs);
        let w8 = unpack_q4(&wq);
        let mut want_ref = vec![f32::NAN; (n - 1) * ld + rows];
        reference::matmul_q4(&mut kernels::TileOut::new(&mut want_ref, ld, rows, n), &wq, &ws, &xq, &xs);
        for k in kernels::available() {
            let mut got = vec![f32::NAN; (n - 1) * ld + rows];
            (k.matmul_q4)(&mut kernels::TileOut::new(&mut got, ld, rows, n), &wq, &ws, &xq, &xs);
            let want = batched_want(k, &|o, x, s| (k.matvec_q4)(o, &wq, &ws, x, s), &w8, &ws, &xq, &xs, rows, n);
            for b in 0..n {
                prop_assert_eq!(bits(&got[b * ld..][..rows]), bits(&want[b * rows..][..rows]), "{} token {} of {}", k.name, b, n);
                if b + 1 < n {
                    prop_assert!(got[b * ld + rows..(b + 1) * ld].iter().all(|v| v.is_nan()), "{} wrote a gap", k.name);
                }
                for r in 0..rows {
                    let mag: f64 = (0..groups)
                        .map(|g| {
                            let s: f64 = (0..32)
                                .map(|i| (w8[r * cols + g * 32 + i] as f64 * xq[b * cols + g * 32 + i] as f64).abs())
                                .sum();
                            s * (kernels::f16_to_f32(ws[r * groups + g]) as f64 * xs[b * groups + g] as f64).abs()
                        })
                        .sum();
                    let (g, w) = (got[b * ld + r] as f64, want_ref[b * ld + r] as f64);
                    prop_assert!((g - w).abs() <= 1e-5 * mag + 1e-30, "{} token {} row {}: {} vs {}", k.name, b, r, g, w);
                }
            }
        }
    }

    /// `head_nll` (AVX-512's fused head) against the f64 log-sum-exp of the
    /// table's own batched product over the same rows: q8 and q4 heads,
    /// vocabularies not a multiple of sixteen, one token to two 64-token
    /// passes, scales from flat to widely spread logits (a token's shift is
    /// then raised mid-way), targets anywhere; within 4e-6·max(nats, 1).
    #[test]
    fn head_nll_is_the_log_sum_exp_of_the_product(
        rows in prop::sample::select(vec![1usize, 5, 16, 17, 40, 300]),
        groups in 1usize..=4,
        n in prop::sample::select(vec![1usize, 3, 16, 17, 64, 70]),
        q4 in any::<bool>(),
        spread in prop::sample::select(vec![1e-3f32, 0.1, 3.0]),
        seed in any::<u32>(),
    ) {
        let cols = groups * 32;
        let mut h = seed | 1;
        let mut next = move || { h ^= h << 13; h ^= h >> 17; h ^= h << 5; h };
        let wq: Vec<u8> = (0..rows * cols).map(|_| next() as u8).collect();
        let ws: Vec<u16> = (0..rows * groups)
            .map(|_| half::f16::from_f32(spread * (0.05 + (next() % 1000) as f32 / 1000.0)).to_bits())
            .collect();
        let x: Vec<f32> = (0..n * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
        let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
        reference::quantize_q8(&x, &mut xq, &mut xs);
        let targets: Vec<u32> = (0..n).map(|_| next() % rows as u32).collect();
        for k in kernels::available() {
            let Some(fused) = k.head_nll else { continue };
            let mut logits = vec![0f32; n * rows];
            let mut got = vec![f64::NAN; n];
            if q4 {
                let w = &wq[..rows * cols / 2];
                (k.matmul_q4)(&mut kernels::TileOut::new(&mut logits, rows, rows, n), w, &ws, &xq, &xs);
                (fused.q4)(&mut got, w, &ws, rows, &xq, &xs, &targets);
            } else {
                let w: Vec<i8> = wq.iter().map(|&b| b as i8).collect();
                (k.matmul_q8)(&mut kernels::TileOut::new(&mut logits, rows, rows, n), &w, &ws, &xq, &xs);
                (fused.q8)(&mut got, &w, &ws, rows, &xq, &xs, &targets);
            }
            for b in 0..n {
                let want = log_sum_exp(&logits[b * rows..][..rows]) - logits[b * rows + targets[b] as usize] as f64;
                prop_assert!((got[b] - want).abs() <= 4e-6 * want.abs().max(1.0),
                    "{} token {} of {}: {} vs {}", k.name, b, n, got[b], want);
            }
        }
    }

    /// q4, unit scales, one live group at a time: exactly the group's i32 sum.
    #[test]
    fn q4_group_sums_equal_reference_exactly((rows, cols, wq, _ws, xq, _xs) in q4_inputs(12)) {
        let groups = cols / 32;
        let one = half::f16::from_f32(1.0).to_bits();
        let ws = vec![one; rows * groups];
        let xs = vec![1f32; groups];
        let want = exact_isums(&unpack_q4(&wq), &xq, rows, cols);
        for k in kernels::available() {
            for g in 0..groups {
                let mut x1 = vec![0i8; cols];
                x1[g * 32..(g + 1) * 32].copy_from_slice(&xq[g * 32..(g + 1) * 32]);
                let mut out = vec![f32::NAN; rows];
                (k.matvec_q4)(&mut out, &wq, &ws, &x1, &xs);
                for r in 0..rows {
                    prop_assert_eq!(out[r], want[r][g] as f32, "{} row {} group {}", k.name, r, g);
                }
            }
            let mut out = vec![0f32; rows];
            (k.matvec_q4)(&mut out, &wq, &ws, &xq, &xs);
            for r in 0..rows {
                let total: i64 = want[r].iter().map(|&v| v as i64).sum();
                prop_assert_eq!(out[r] as f64, total as f64, "{} row {}", k.name, r);
            }
        }
    }

    /// q4, real scales: within 1e-5 · Σ_g |d_g|·Σ_i |w_i·x_i| of the reference,
    /// which in turn equals the q8 reference on the unpacked weights bit for bit.
    #[test]
    fn q4_matvec_close_to_reference((rows, cols, wq, ws, xq, xs) in q4_inputs(30)) {
        let groups = cols / 32;
        let w8 = unpack_q4(&wq);
        let mut want = vec![0f32; rows];
        reference::matvec_q4(&mut want, &wq, &ws, &xq, &xs);
        let mut via_q8 = vec![0f32; rows];
        reference::matvec_q8(&mut via_q8, &w8, &ws, &xq, &xs);
        prop_assert_eq!(&want, &via_q8);
        for k in simd_tables() {
            let mut out = vec![0f32; rows];
            (k.matvec_q4)(&mut out, &wq, &ws, &xq, &xs);
            for r in 0..rows {
                let mag: f64 = (0..groups)
                    .map(|g| {
                        let s: f64 = (0..32).map(|i| (w8[r * cols + g * 32 + i] as f64 * xq[g * 32 + i] as f64).abs()).sum();
                        s * (kernels::f16_to_f32(ws[r * groups + g]) as f64 * xs[g] as f64).abs()
                    })
                    .sum();
                prop_assert!((out[r] as f64 - want[r] as f64).abs() <= 1e-5 * mag + 1e-30,
                    "{} row {}: {} vs {} (mag {})", k.name, r, out[r], want[r], mag);
            }
        }
    }

    #[test]
    fn quantize_is_bit_exact(groups in 1usize..40, seed in any::<u64>(), halves in any::<bool>()) {
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let x: Vec<f32> = (0..groups * 32).map(|i| {
            if halves {
                // amax 127 makes the scale 1: exact .5 ties must round away from zero
                if i % 32 == 0 { 127.0 } else { (next() % 255) as f32 - 127.0 + if next() % 2 == 0 { 0.5 } else { 0.0 } }
            } else if i % 97 == 5 { 0.0 } else {
                ((next() as f32 / u32::MAX as f32) - 0.5) * 10f32.powi((next() % 7) as i32 - 3)
            }
        }).collect();
        let (mut q0, mut s0) = (vec![0i8; x.len()], vec![0f32; groups]);
        reference::quantize_q8(&x, &mut q0, &mut s0);
        for k in simd_tables() {
            let (mut q, mut s) = (vec![0i8; x.len()], vec![0f32; groups]);
            (k.quantize_q8)(&x, &mut q, &mut s);
            prop_assert_eq!(&q, &q0, "{}", k.name);
            prop_assert_eq!(s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s0.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        // scale 1 (amax 127): the floats next to the halves round as the reference rounds them
        let below_half = f32::from_bits(0x3EFF_FFFF);
        let mut edges = vec![127.0, below_half, -below_half, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5];
        edges.extend([1.5f32, 2.5, 126.5].map(|v| f32::from_bits(v.to_bits() - 1)));
        edges.resize(32, 0.0);
        let (mut q0, mut s0) = (vec![0i8; 32], vec![0f32; 1]);
        reference::quantize_q8(&edges, &mut q0, &mut s0);
        prop_assert_eq!(&q0[..9], &[127, 0, 0, 1, -1, 2, -3, 127, -127]);
        for k in simd_tables() {
            let (mut q, mut s) = (vec![0i8; 32], vec![0f32; 1]);
            (k.quantize_q8)(&edges, &mut q, &mut s);
            prop_assert_eq!(&q, &q0, "{} halves", k.name);
        }
        // zero group
        let z = vec![0f32; 32];
        for k in simd_tables() {
            let (mut q, mut s) = (vec![1i8; 32], vec![1f32; 1]);
            (k.quantize_q8)(&z, &mut q, &mut s);
            prop_assert!(q.iter().all(|&v| v == 0) && s[0] == 0.0);
        }
    }

    #[test]
    fn f32_and_f16_matvec_close(rows in 1usize..20, cols in 1usize..200, seed in any::<u32>()) {
        let w: Vec<f32> = (0..rows * cols).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        let x: Vec<f32> = (0..cols).map(|i| (((i as u32).wrapping_mul(40503) ^ seed) % 1001) as f32 / 500.0 - 1.0).collect();
        let wh: Vec<u16> = w.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
        reference::matvec_f32(&mut a, &w, &x);
        reference::matvec_f16(&mut b, &wh, &x);
        for k in simd_tables() {
            let (mut a2, mut b2) = (vec![0f32; rows], vec![0f32; rows]);
            (k.matvec_f32)(&mut a2, &w, &x);
            (k.matvec_f16)(&mut b2, &wh, &x);
            for r in 0..rows {
                let mag: f32 = (0..cols).map(|c| (w[r * cols + c] * x[c]).abs()).sum();
                prop_assert!((a[r] - a2[r]).abs() <= 1e-5 * mag + 1e-30, "{} f32 row {}: {} vs {}", k.name, r, a2[r], a[r]);
                prop_assert!((b[r] - b2[r]).abs() <= 1e-5 * mag + 1e-30, "{} f16 row {}: {} vs {}", k.name, r, b2[r], b[r]);
            }
        }
    }

    #[test]
    fn elementwise_kernels_close(n in 1usize..300, seed in any::<u32>(), spread in 0.1f32..30.0) {
        let v = |i: usize, s: u32| ((((i as u32).wrapping_mul(2654435761) ^ s) % 20001) as f32 / 10000.0 - 1.0) * spread;
        let x: Vec<f32> = (0..n).map(|i| v(i, seed)).collect();
        let u: Vec<f32> = (0..n).map(|i| v(i, seed ^ 0x5555)).collect();
        let w: Vec<f32> = (0..n).map(|i| v(i, seed ^ 0xaaaa) / spread).collect();
        for k in simd_tables() {
            // rmsnorm
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            reference::rmsnorm(&mut a, &x, &w, 1e-5);
            (k.rmsnorm)(&mut b, &x, &w, 1e-5);
            for i in 0..n {
                prop_assert!((a[i] - b[i]).abs() <= 1e-5 * a[i].abs() + 1e-30, "{} rmsnorm {}: {} vs {}", k.name, i, b[i], a[i]);
            }
            // softmax
            let (mut a, mut b) = (x.clone(), x.clone());
            reference::softmax(&mut a);
            (k.softmax)(&mut b);
            for i in 0..n {
                prop_assert!((a[i] - b[i]).abs() <= 1e-5 * a[i].abs() + 1e-30, "{} softmax {}: {} vs {}", k.name, i, b[i], a[i]);
            }
            // swiglu
            let (mut a, mut b) = (x.clone(), x.clone());
            reference::swiglu(&mut a, &u);
            (k.swiglu)(&mut b, &u);
            for i in 0..n {
                prop_assert!((a[i] - b[i]).abs() <= 1e-5 * a[i].abs() + 1e-30, "{} swiglu {}: {} vs {}", k.name, i, b[i], a[i]);
            }
        }
    }

    #[test]
    fn rope_is_bit_exact(heads in 1usize..7, half_hd in 1usize..40, pos in 0usize..5000) {
        let hd = half_hd * 2;
        let mut table = vec![0f32; hd];
        for (i, cs) in table.chunks_exact_mut(2).enumerate() {
            let a = pos as f32 / 10000f32.powf(2.0 * i as f32 / hd as f32);
            cs[0] = a.cos();
            cs[1] = a.sin();
        }
        let x: Vec<f32> = (0..heads * hd).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = x.clone();
        reference::rope(&mut a, &table, hd);
        for k in simd_tables() {
            let mut b = x.clone();
            (k.rope)(&mut b, &table, hd);
            prop_assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{}", k.name);
        }
    }

    #[test]
    fn attention_kernels_close(len in 1usize..70, hd in 1usize..80, extra in 0usize..40, seed in any::<u32>()) {
        let stride = hd + extra;
        let v = |i: usize, s: u32| (((i as u32).wrapping_mul(2654435761) ^ s) % 2001) as f32 / 1000.0 - 1.0;
        let q: Vec<f32> = (0..hd).map(|i| v(i, seed)).collect();
        let keys: Vec<f32> = (0..(len - 1) * stride + hd).map(|i| v(i, seed ^ 7)).collect();
        let vals: Vec<f32> = (0..(len - 1) * stride + hd).map(|i| v(i, seed ^ 99)).collect();
        let (mut scores, mut oa) = (vec![0f32; len], vec![0f32; hd]);
        reference::attn_scores(&mut scores, &q, &keys, stride, 0.125);
        let mut a = scores.clone();
        reference::softmax(&mut a);
        reference::attn_values(&mut oa, &a, &vals, stride);
        for k in simd_tables() {
            let (mut b, mut ob) = (vec![0f32; len], vec![1f32; hd]);
            (k.attn_scores)(&mut b, &q, &keys, stride, 0.125);
            for t in 0..len {
                let mag: f32 = (0..hd).map(|i| (q[i] * keys[t * stride + i]).abs()).sum::<f32>() * 0.125;
                prop_assert!((scores[t] - b[t]).abs() <= 1e-5 * mag + 1e-30, "{} score {}", k.name, t);
                // several keys per call (x86: four at a time) or one alone: the same bits
                let mut one = [0f32];
                (k.attn_scores)(&mut one, &q, &keys[t * stride..], stride, 0.125);
                prop_assert_eq!(one[0].to_bits(), b[t].to_bits(), "{} score {} alone", k.name, t);
            }
            // values from the same weights, so only attn_values is compared
            (k.attn_values)(&mut ob, &a, &vals, stride);
            for i in 0..hd {
                let mag: f32 = (0..len).map(|t| (a[t] * vals[t * stride + i]).abs()).sum();
                prop_assert!((oa[i] - ob[i]).abs() <= 1e-5 * mag + 1e-30, "{} value {}: {} vs {}", k.name, i, ob[i], oa[i]);
            }
        }
    }
}

/// `attn_values2` (two heads of a KV group over the same values) is two
/// `attn_values` calls, bit for bit, on every table and cache type: heads
/// narrower and wider than the AVX-512 pair kernel's 32, lengths with and
/// without a tail of its four chains.
#[allow(clippy::type_complexity)]
fn values_pair_is_two_singles<T: Copy>(
    (len, hd, extra, seed): (usize, usize, usize, u32),
    element: fn(usize, u32) -> T,
    kernels: fn(&Kernels) -> (fn(&mut [f32], &[f32], &[T], usize), fn([&mut [f32]; 2], [&[f32]; 2], &[T], usize)),
) -> Result<(), TestCaseError> {
    let stride = hd + extra;
    let vals: Vec<T> = (0..(len - 1) * stride + hd).map(|i| element(i, seed)).collect();
    let w = |i: usize, s: u32| (((i as u32).wrapping_mul(2654435761) ^ s) % 1000) as f32 / 1000.0;
    let (a0, a1): (Vec<f32>, Vec<f32>) =
        ((0..len).map(|t| w(t, seed ^ 5)).collect(), (0..len).map(|t| w(t, seed ^ 9)).collect());
    for k in kernels::available() {
        let (single, pair) = kernels(k);
        let (mut s0, mut s1) = (vec![0f32; hd], vec![0f32; hd]);
        single(&mut s0, &a0, &vals, stride);
        single(&mut s1, &a1, &vals, stride);
        let (mut p0, mut p1) = (vec![1f32; hd], vec![1f32; hd]);
        pair([&mut p0, &mut p1], [&a0, &a1], &vals, stride);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&p0), bits(&s0), "{} first head", k.name);
        prop_assert_eq!(bits(&p1), bits(&s1), "{} second head", k.name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn values_pair_is_two_singles_every_cache(len in 1usize..70, hd in 1usize..80, extra in 0usize..40, seed in any::<u32>()) {
        let shape = (len, hd, extra, seed);
        let f32s = |i: usize, s: u32| (((i as u32).wrapping_mul(2654435761) ^ s) % 2001) as f32 / 1000.0 - 1.0;
        values_pair_is_two_singles(shape, f32s, |k| (k.attn_values, k.attn_values2))?;
        values_pair_is_two_singles(
            shape,
            |i, s| half::f16::from_f32((((i as u32).wrapping_mul(2654435761) ^ s) % 2001) as f32 / 1000.0 - 1.0).to_bits(),
            |k| (k.attn_values_f16, k.attn_values2_f16),
        )?;
        values_pair_is_two_singles(
            shape,
            |i, s| ((((i as u32).wrapping_mul(2246822519) ^ s) % 255) as i32 - 127) as i8,
            |k| (k.attn_values_q8, k.attn_values2_q8),
        )?;
    }
}

proptest! {
    #![proptest_config(cases())]

    /// Scores from keys stored by dimension (`Kernels::scores_by_dim`) have
    /// the bits of their order's scalar model (`scores_by_dim_model`), for
    /// any head size (odd ones: a last even dimension alone), any number of
    /// keys (32 at a time, a last sixteen, a masked tail) and any padding
    /// (entries past the keys are NaN here and must not matter); a head alone
    /// (`one`) has the bits it has in a pair (`two`); keys widened from f16
    /// and i8 too; the scores are within the f32 bound of the exact dot
    /// product, as the table's `attn_scores` is; the stored keys are the keys.
    #[test]
    fn scores_by_dimension_follow_their_order(len in 1usize..100, hd in 1usize..100, extra in 0usize..20, pad in 0usize..40, seed in any::<u32>()) {
        let stride = hd + extra;
        let v = |i: usize, s: u32| (((i as u32).wrapping_mul(2654435761) ^ s) % 2001) as f32 / 1000.0 - 1.0;
        let (q0, q1): (Vec<f32>, Vec<f32>) = ((0..hd).map(|i| v(i, seed)).collect(), (0..hd).map(|i| v(i, !seed)).collect());
        let keys: Vec<f32> = (0..(len - 1) * stride + hd).map(|i| v(i, seed ^ 7)).collect();
        let widened_f16: Vec<f32> = keys.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        let widened_i8: Vec<f32> = keys.iter().map(|&x| f32::from((x * 127.0) as i8)).collect();
        let ld = len.next_multiple_of(kernels::KEYS_BY_DIM_PAD) + pad;
        let kt_len = (hd - 1) * ld + len.next_multiple_of(kernels::KEYS_BY_DIM_PAD);
        let by_dim = |widened: &[f32]| {
            let mut kt = vec![f32::NAN; kt_len];
            for t in 0..len {
                for d in 0..hd {
                    kt[d * ld + t] = widened[t * stride + d];
                }
            }
            kt
        };
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for k in simd_tables() {
            let Some(by) = k.scores_by_dim else { continue };
            // the stored keys
            let mut kt = vec![f32::NAN; kt_len];
            (by.store_f32)(&mut kt, ld, &keys, len, stride, hd);
            for t in 0..len {
                for d in 0..hd {
                    prop_assert_eq!(kt[d * ld + t].to_bits(), keys[t * stride + d].to_bits(), "{} key {} dim {}", k.name, t, d);
                }
            }
            for (what, widened, kt) in [("f32", &keys, kt), ("f16", &widened_f16, by_dim(&widened_f16)), ("i8", &widened_i8, by_dim(&widened_i8))] {
                let (mut a0, mut a1, mut one) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
                (by.two)([&mut a0, &mut a1], [&q0, &q1], &kt, ld, 0.125);
                prop_assert_eq!(bits(&a0), bits(&scores_by_dim_model(&q0, widened, stride, 0.125)), "{} {} the first head", k.name, what);
                prop_assert_eq!(bits(&a1), bits(&scores_by_dim_model(&q1, widened, stride, 0.125)), "{} {} the second head", k.name, what);
                (by.one)(&mut one, &q1, &kt, ld, 0.125);
                prop_assert_eq!(bits(&one), bits(&a1), "{} {} a head alone", k.name, what);
                // as close to the exact dot product as `attn_scores` must be
                let mut want = vec![0f32; len];
                (k.attn_scores)(&mut want, &q0, widened, stride, 0.125);
                for t in 0..len {
                    let key = &widened[t * stride..t * stride + hd];
                    let exact: f64 = q0.iter().zip(key).map(|(&q, &k)| q as f64 * k as f64).sum::<f64>() * 0.125;
                    let size: f64 = q0.iter().zip(key).map(|(&q, &k)| (q as f64 * k as f64).abs()).sum::<f64>() * 0.125;
                    let bound = (hd + 2) as f64 * f32::EPSILON as f64 * size + 1e-30;
                    prop_assert!((a0[t] as f64 - exact).abs() <= bound, "{} {} key {}: {} vs {}", k.name, what, t, a0[t], exact);
                    prop_assert!((want[t] as f64 - exact).abs() <= bound, "{} {} attn_scores key {}", k.name, what, t);
                }
            }
        }
    }
}

/// The order of `ScoresByDim` in scalar f32: per key, the even dimensions in
/// one fused multiply-add chain and the odd ones in another, each from zero
/// in increasing order, then `(even + odd)·scale`.
fn scores_by_dim_model(q: &[f32], keys: &[f32], stride: usize, scale: f32) -> Vec<f32> {
    let n = (keys.len() - q.len()) / stride + 1;
    (0..n)
        .map(|t| {
            let key = &keys[t * stride..t * stride + q.len()];
            let (mut even, mut odd) = (0f32, 0f32);
            for (d, (&q, &k)) in q.iter().zip(key).enumerate() {
                if d % 2 == 0 {
                    even = q.mul_add(k, even);
                } else {
                    odd = q.mul_add(k, odd);
                }
            }
            (even + odd) * scale
        })
        .collect()
}

/// A reduced-cache pair of attention kernels (`scores`, `values` over
/// elements `T`) against the reference: the reference pair equals the f32
/// reference kernels on the widened elements exactly (the same math), and
/// every SIMD table's pair (`simd`) is within the f32 kernels' bounds, with a
/// key's score the same bits alone as among others.
#[allow(clippy::type_complexity)]
fn cache_attention_close<T: Copy>(
    (len, hd, extra, seed): (usize, usize, usize, u32),
    element: fn(usize, u32) -> T,
    widen: fn(T) -> f32,
    reference_pair: (fn(&mut [f32], &[f32], &[T], usize, f32), fn(&mut [f32], &[f32], &[T], usize)),
    simd: fn(&Kernels) -> (fn(&mut [f32], &[f32], &[T], usize, f32), fn(&mut [f32], &[f32], &[T], usize)),
) -> Result<(), TestCaseError> {
    let stride = hd + extra;
    let v = |i: usize, s: u32| (((i as u32).wrapping_mul(2654435761) ^ s) % 2001) as f32 / 1000.0 - 1.0;
    let q: Vec<f32> = (0..hd).map(|i| v(i, seed)).collect();
    let keys: Vec<T> = (0..(len - 1) * stride + hd).map(|i| element(i, seed ^ 7)).collect();
    let vals: Vec<T> = (0..(len - 1) * stride + hd).map(|i| element(i, seed ^ 99)).collect();
    let (kw, vw): (Vec<f32>, Vec<f32>) =
        (keys.iter().map(|&b| widen(b)).collect(), vals.iter().map(|&b| widen(b)).collect());
    let (mut scores, mut oa) = (vec![0f32; len], vec![0f32; hd]);
    (reference_pair.0)(&mut scores, &q, &keys, stride, 0.125);
    let mut s32 = vec![0f32; len];
    reference::attn_scores(&mut s32, &q, &kw, stride, 0.125);
    prop_assert_eq!(&scores, &s32);
    let mut a = scores.clone();
    reference::softmax(&mut a);
    (reference_pair.1)(&mut oa, &a, &vals, stride);
    let mut o32 = vec![0f32; hd];
    reference::attn_values(&mut o32, &a, &vw, stride);
    prop_assert_eq!(&oa, &o32);
    for k in simd_tables() {
        let (scores_k, values_k) = simd(k);
        let (mut b, mut ob) = (vec![0f32; len], vec![1f32; hd]);
        scores_k(&mut b, &q, &keys, stride, 0.125);
        for t in 0..len {
            let mag: f32 = (0..hd).map(|i| (q[i] * kw[t * stride + i]).abs()).sum::<f32>() * 0.125;
            prop_assert!((scores[t] - b[t]).abs() <= 1e-5 * mag + 1e-30, "{} score {}", k.name, t);
            // several keys per call (x86: four at a time) or one alone: the same bits
            let mut one = [0f32];
            scores_k(&mut one, &q, &keys[t * stride..], stride, 0.125);
            prop_assert_eq!(one[0].to_bits(), b[t].to_bits(), "{} score {} alone", k.name, t);
        }
        values_k(&mut ob, &a, &vals, stride);
        for i in 0..hd {
            let mag: f32 = (0..len).map(|t| (a[t] * vw[t * stride + i]).abs()).sum();
            prop_assert!((oa[i] - ob[i]).abs() <= 1e-5 * mag + 1e-30, "{} value {}: {} vs {}", k.name, i, ob[i], oa[i]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    /// The f16-cache attention kernels (`cache_attention_close`).
    #[test]
    fn f16_attention_kernels_close(len in 1usize..70, hd in 1usize..80, extra in 0usize..40, seed in any::<u32>()) {
        cache_attention_close(
            (len, hd, extra, seed),
            |i, s| half::f16::from_f32((((i as u32).wrapping_mul(2654435761) ^ s) % 2001) as f32 / 1000.0 - 1.0).to_bits(),
            |b| half::f16::from_bits(b).to_f32(),
            (reference::attn_scores_f16, reference::attn_values_f16),
            |k| (k.attn_scores_f16, k.attn_values_f16),
        )?;
    }

    /// The q8-cache attention kernels (`cache_attention_close`), on what the
    /// KV quantizer stores: −127…127.
    #[test]
    fn q8_attention_kernels_close(len in 1usize..70, hd in 1usize..80, extra in 0usize..40, seed in any::<u32>()) {
        cache_attention_close(
            (len, hd, extra, seed),
            |i, s| ((((i as u32).wrapping_mul(2246822519) ^ s) % 255) as i32 - 127) as i8,
            f32::from,
            (reference::attn_scores_q8, reference::attn_values_q8),
            |k| (k.attn_scores_q8, k.attn_values_q8),
        )?;
    }
}

/// The whole forward pass (q8, f16, f32 models): every SIMD table against
/// the reference table, one and two threads.
#[test]
fn forward_pass_matches_reference_tables() {
    use edgelm_runtime::format::DType;
    use edgelm_runtime::threads::Pool;
    use edgelm_runtime::{AlignedBytes, Model, Session, SessionOptions};
    use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

    let pool = Pool::new(2);
    let mut failures = Vec::new();
    for dtype in [DType::Q8, DType::Q4, DType::F16, DType::F32] {
        let bytes = AlignedBytes::from(synthetic_model(&SyntheticSpec::tiny(dtype)).unwrap());
        let model = Model::from_bytes(&bytes).unwrap();
        let tokens: Vec<u32> = (0..20u32).map(|i| (i * 37 + 11) % model.config().vocab_size).collect();
        let run = |k: &'static Kernels, threads: bool| -> Vec<Vec<f32>> {
            let mut arena = vec![0u8; model.arena_bytes(32)];
            let mut s = Session::new(&model, "story", &mut arena, SessionOptions::new(32)).unwrap();
            s.set_kernels(k);
            if threads {
                s.set_pool(&pool);
            }
            tokens.iter().map(|&t| s.step(t).unwrap().to_vec()).collect()
        };
        let want = run(&REFERENCE, false);
        assert_eq!(run(&REFERENCE, true), want, "{dtype:?}: threads must not change reference results");
        for k in simd_tables() {
            for threads in [false, true] {
                let got = run(k, threads);
                let mut worst = 0f32;
                for (g, w) in got.iter().zip(&want) {
                    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
                    for (a, b) in g.iter().zip(w) {
                        worst = worst.max((a - b).abs() / scale);
                    }
                }
                // q8: a 1-ulp difference upstream can flip one activation's
                // rounding (±1/127 of its group), which moves logits ~1 %;
                // f32/f16 have no such step.
                let bound = if matches!(dtype, DType::Q8 | DType::Q4) { 3e-2 } else { 2e-3 };
                if worst >= bound {
                    failures.push(format!("{dtype:?} {} threads={threads}: worst relative error {worst}", k.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Rows split across a pool give bit-identical rows (same kernel per row).
#[test]
fn threaded_matvec_is_identical_to_single_thread() {
    use edgelm_runtime::kernels::{
        matvec_f16_par, matvec_f32_par, matvec_q4_par, matvec_q4_split, matvec_q8_par, PARALLEL_MIN_BYTES,
    };
    use edgelm_runtime::threads::Pool;
    for threads in [2usize, 3, 4] {
        let pool = Pool::new(threads);
        for &(rows, cols) in &[(1001usize, 256usize), (4099, 64), (13, 32 * 600)] {
            assert!(rows * cols >= PARALLEL_MIN_BYTES);
            let groups = cols / 32;
            let wq: Vec<i8> = (0..rows * cols).map(|i| (i.wrapping_mul(2654435761) >> 7) as i8).collect();
            let ws: Vec<u16> =
                (0..rows * groups).map(|i| half::f16::from_f32(0.01 + (i % 7) as f32 * 1e-3).to_bits()).collect();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.1).sin()).collect();
            let wf: Vec<f32> = wq.iter().map(|&v| v as f32 / 100.0).collect();
            let wh: Vec<u16> = wf.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            for k in kernels::available() {
                let (mut xq, mut xs) = (vec![0i8; cols], vec![0f32; groups]);
                (k.quantize_q8)(&x, &mut xq, &mut xs);
                let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
                matvec_q8_par(k, None, &mut a, &wq, &ws, &xq, &xs);
                matvec_q8_par(k, Some(&pool), &mut b, &wq, &ws, &xq, &xs);
                assert_eq!(a, b, "{} q8 {rows}x{cols} threads {threads}", k.name);
                // q4: the same bytes read as nibbles (half the rows' bytes);
                // sized so that the pool really splits (≥ PARALLEL_MIN_BYTES)
                let w4: Vec<u8> = wq.iter().map(|&v| v as u8).collect();
                let w4 = &w4[..rows * cols / 2];
                if rows * cols / 2 >= PARALLEL_MIN_BYTES {
                    matvec_q4_par(k, None, &mut a, w4, &ws, &xq, &xs);
                    matvec_q4_par(k, Some(&pool), &mut b, w4, &ws, &xq, &xs);
                    assert_eq!(a, b, "{} q4 {rows}x{cols} threads {threads}", k.name);
                }
                matvec_q4_split(k, &pool, &mut b, w4, &ws, &xq, &xs);
                matvec_q4_par(k, None, &mut a, w4, &ws, &xq, &xs);
                assert_eq!(a, b, "{} q4 split {rows}x{cols} threads {threads}", k.name);
                matvec_f32_par(k, None, &mut a, &wf, &x);
                matvec_f32_par(k, Some(&pool), &mut b, &wf, &x);
                assert_eq!(a, b, "{} f32", k.name);
                matvec_f16_par(k, None, &mut a, &wh, &x);
                matvec_f16_par(k, Some(&pool), &mut b, &wh, &x);
                assert_eq!(a, b, "{} f16", k.name);
            }
        }
    }
}

/// The batched products (`matmul_rows` over a table's matvec, and
/// `matmul_q8` / `matmul_q4` over its batched kernels; tiled, one and several
/// threads) give every token exactly the rows one matvec gives it, or the
/// batched kernels, where the table's order is not the matvec's, exactly its
/// twin's (whatever the tiles and threads).
#[test]
fn tiled_matmul_is_identical_to_its_order_per_token() {
    use edgelm_runtime::kernels::{matmul_q4, matmul_q8, matmul_rows, PARALLEL_MIN_BYTES};
    use edgelm_runtime::threads::Pool;
    let pools = [Pool::new(2), Pool::new(3)];
    // the first case is large enough for the threaded branch; (21, 4096, 9)
    // and (19, 288, 70) take the x86 batched kernels' several passes of tokens
    const { assert!(1001 * (256 + 2 * 8) >= PARALLEL_MIN_BYTES) };
    for &(rows, cols, n) in &[
        (1001usize, 256usize, 5usize),
        (37, 64, 3),
        (301, 288, 9),
        (13, 32 * 600, 2),
        (4099, 64, 1),
        (21, 4096, 9),
        (19, 288, 70),
        // x86 AVX-512 q4: a pass of 8 + 4 tokens and three single groups;
        // passes capped at 64 tokens (one quad per row, a single group)
        (29, 352, 12),
        (19, 160, 70),
    ] {
        let groups = cols / 32;
        let wq: Vec<i8> = (0..rows * cols).map(|i| (i.wrapping_mul(2654435761) >> 7) as i8).collect();
        let ws: Vec<u16> =
            (0..rows * groups).map(|i| half::f16::from_f32(0.01 + (i % 7) as f32 * 1e-3).to_bits()).collect();
        let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
        let wf: Vec<f32> = wq.iter().map(|&v| v as f32 / 100.0).collect();
        for k in kernels::available() {
            let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
            for b in 0..n {
                (k.quantize_q8)(&x[b * cols..][..cols], &mut xq[b * cols..][..cols], &mut xs[b * groups..][..groups]);
            }
            let mut want = vec![0f32; n * rows];
            let mut want_f = vec![0f32; n * rows];
            for b in 0..n {
                (k.matvec_q8)(
                    &mut want[b * rows..][..rows],
                    &wq,
                    &ws,
                    &xq[b * cols..][..cols],
                    &xs[b * groups..][..groups],
                );
                (k.matvec_f32)(&mut want_f[b * rows..][..rows], &wf, &x[b * cols..][..cols]);
            }
            let q8 = |o: &mut [f32], r0: usize, b: usize| {
                let r1 = r0 + o.len();
                (k.matvec_q8)(
                    o,
                    &wq[r0 * cols..r1 * cols],
                    &ws[r0 * groups..r1 * groups],
                    &xq[b * cols..][..cols],
                    &xs[b * groups..][..groups],
                )
            };
            let f32k = |o: &mut [f32], r0: usize, b: usize| {
                (k.matvec_f32)(o, &wf[r0 * cols..(r0 + o.len()) * cols], &x[b * cols..][..cols])
            };
            // the batched kernels' own orders; q4: the same bytes read as nibbles
            let want_q8 = batched_want(k, &|o, x, s| (k.matvec_q8)(o, &wq, &ws, x, s), &wq, &ws, &xq, &xs, rows, n);
            let w4: Vec<u8> = wq[..rows * cols / 2].iter().map(|&v| v as u8).collect();
            let w4_8 = unpack_q4(&w4);
            let want_q4 = batched_want(k, &|o, x, s| (k.matvec_q4)(o, &w4, &ws, x, s), &w4_8, &ws, &xq, &xs, rows, n);
            let pars: [Option<&dyn kernels::Parallel>; 3] = [None, Some(&pools[0]), Some(&pools[1])];
            for par in pars {
                // ld > rows: rows of a token need not be contiguous with the next token's
                let ld = rows + 3;
                let mut got = vec![f32::NAN; (n - 1) * ld + rows];
                matmul_rows(par, &mut got, ld, rows, n, cols + 2 * groups, &q8);
                let threads = par.map_or(1, |p| p.threads());
                for b in 0..n {
                    assert_eq!(
                        &got[b * ld..][..rows],
                        &want[b * rows..][..rows],
                        "{} q8 {rows}x{cols} token {b} threads {threads}",
                        k.name
                    );
                }
                // the table's batched kernel, tile by tile (`kernels::matmul_q8`)
                got.fill(f32::NAN);
                matmul_q8(k, par, &mut got, ld, rows, n, &wq, &ws, &xq, &xs);
                for b in 0..n {
                    assert_eq!(
                        &got[b * ld..][..rows],
                        &want_q8[b * rows..][..rows],
                        "{} matmul_q8 {rows}x{cols} token {b} threads {threads}",
                        k.name
                    );
                }
                got.fill(f32::NAN);
                matmul_q4(k, par, &mut got, ld, rows, n, &w4, &ws, &xq, &xs);
                for b in 0..n {
                    assert_eq!(
                        &got[b * ld..][..rows],
                        &want_q4[b * rows..][..rows],
                        "{} matmul_q4 {rows}x{cols} token {b} threads {threads}",
                        k.name
                    );
                }
                matmul_rows(par, &mut got, ld, rows, n, 4 * cols, &f32k);
                for b in 0..n {
                    assert_eq!(
                        &got[b * ld..][..rows],
                        &want_f[b * rows..][..rows],
                        "{} f32 token {b} threads {threads}",
                        k.name
                    );
                }
            }
        }
    }
}

#[test]
fn pool_runs_every_index_once_and_survives_many_jobs() {
    use edgelm_runtime::threads::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = Pool::new(3);
    assert_eq!(pool.threads(), 3);
    let hits = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
    for _ in 0..2000 {
        pool.run(&|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
    }
    for h in &hits {
        assert_eq!(h.load(Ordering::Relaxed), 2000);
    }
    // idle long enough for workers to park, then wake them again
    std::thread::sleep(std::time::Duration::from_millis(20));
    pool.run(&|i| {
        hits[i].fetch_add(1, Ordering::Relaxed);
    });
    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 2001));
    let single = Pool::new(1);
    let n = AtomicUsize::new(0);
    single.run(&|i| {
        assert_eq!(i, 0);
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.load(Ordering::Relaxed), 1);
}

/// A stand-in for a pool whose threads run at very different speeds: the
/// calls run one after another, last index first, so that thread takes every
/// chunk of the shared tail and thread 0 only its fixed share.
struct Skewed(usize);

impl kernels::Parallel for Skewed {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        (0..self.0).rev().for_each(f)
    }
}

/// Rows shared out unevenly (one thread takes the whole tail, ranges crossing
/// from one output into the next) still give every row exactly the bits one
/// thread gives it: several outputs of row counts that are not multiples of
/// 8, as one matvec hand-off (`par_rows_many`) and as one batched hand-off
/// (`matmul_tiles_many`).
#[test]
fn unevenly_shared_rows_are_identical_to_one_thread() {
    use edgelm_runtime::kernels::{matmul_tiles_many, par_rows_many, TileMatrix, PARALLEL_MIN_BYTES, TILE_BYTES};
    let cols = 256;
    let groups = cols / 32;
    let shapes = [301usize, 21, 1001];
    let total: usize = shapes.iter().sum();
    let wq: Vec<i8> = (0..total * cols).map(|i| (i.wrapping_mul(2654435761) >> 7) as i8).collect();
    let ws: Vec<u16> =
        (0..total * groups).map(|i| half::f16::from_f32(0.01 + (i % 7) as f32 * 1e-3).to_bits()).collect();
    let n = 5;
    let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
    // each output's rows start at `first[j]` of the weights
    let first: Vec<usize> = shapes.iter().scan(0, |s, &r| Some(core::mem::replace(s, *s + r))).collect();
    for k in kernels::available() {
        let (mut xq, mut xs) = (vec![0i8; n * cols], vec![0f32; n * groups]);
        for b in 0..n {
            (k.quantize_q8)(&x[b * cols..][..cols], &mut xq[b * cols..][..cols], &mut xs[b * groups..][..groups]);
        }
        let row = |j: usize, r0: usize, o: &mut [f32], b: usize| {
            let (a, z) = (first[j] + r0, first[j] + r0 + o.len());
            let xq = &xq[b * cols..][..cols];
            (k.matvec_q8)(o, &wq[a * cols..z * cols], &ws[a * groups..z * groups], xq, &xs[b * groups..][..groups])
        };
        let mut want: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![0f32; r]).collect();
        for (j, o) in want.iter_mut().enumerate() {
            row(j, 0, o, 0);
        }
        for threads in [2usize, 3] {
            let par = Skewed(threads);
            let mut got: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![f32::NAN; r]).collect();
            let [a, b, c] = &mut got[..] else { unreachable!() };
            par_rows_many(Some(&par), [a, b, c], PARALLEL_MIN_BYTES, &|j, r0, o| row(j, r0, o, 0));
            assert!(got == want, "{} par_rows_many, {threads} threads: rows differ from one thread's", k.name);

            // the batched form: token b of output j at b·rows_j
            let mut tiles: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![f32::NAN; n * r]).collect();
            let [a, b, c] = &mut tiles[..] else { unreachable!() };
            let ms = [a, b, c].map(|o| {
                let rows = o.len() / n;
                TileMatrix { out: &mut o[..], ld: rows, rows, row_bytes: cols, tile_bytes: TILE_BYTES }
            });
            matmul_tiles_many(Some(&par), ms, n, &|j, tile, r0| {
                for b in 0..tile.tokens() {
                    row(j, r0, tile.token(b), b)
                }
            });
            for (j, t) in tiles.iter().enumerate() {
                for b in 0..n {
                    let mut one = vec![0f32; shapes[j]];
                    row(j, 0, &mut one, b);
                    let got = &t[b * shapes[j]..][..shapes[j]];
                    assert!(got == &one[..], "{} matmul_tiles_many, product {j} token {b}: rows differ", k.name);
                }
            }
        }
    }
}
