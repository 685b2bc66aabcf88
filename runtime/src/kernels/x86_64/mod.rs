//! x86_64 kernels: AVX2 + FMA + F16C (every kiosk PC since ~2013), with the
//! q8 dot product optionally on VNNI (`vpdpbusd`): VEX AVX-VNNI at 256-bit
//! width here, AVX-512 VNNI at 512-bit width in `q8_avx512.rs` (its own scheme,
//! described there).
//!
//! 256-bit q8 dot per group of 32: `vpmaddubsw`/`vpdpbusd` multiply u8 × i8, so the
//! signs move onto the activations: `|w| (as u8) · (x · sign(w))`. `|w|` is
//! exact for all of i8 (|-128| = 128 as u8); `x · sign(w)` is exact because
//! activations lie in [-127, 127]. `vpmaddubsw` sums pairs into i16 with
//! saturation, but `2 · 128 · 127 = 32512` never saturates, so every path
//! yields the reference's exact per-group `i32` sums (as integer partial
//! sums whose total is the group's sum). Four groups' lanes are folded with
//! unpack + add (integer, exact) into one vector holding two exact partial
//! sums per group, converted to f32 and scaled by `ws·xs` with one FMA into
//! per-row accumulators; a tail group goes through its eight lanes. The f32
//! result differs from the reference only in the order of f32 operations
//! (bound: `runtime/tests/kernels.rs`). Folding the halves too, or fully
//! reducing each group, measured 20–40 % slower (shuffle port). Rows are
//! processed four at a time (each activation vector loaded once per four
//! rows), and the block after next is software-prefetched.
//!
//! The batched products (q8 and q4, a tile of rows against a block of
//! tokens) avoid that fold altogether: one token per 32-bit lane, so a
//! group's sum is whole in its lane, and the groups are added in order
//! (`MatmulOrder::GroupsInOrder`), not in the matvec's order: `lanes_avx2.rs`
//! for the AVX2 and AVX-VNNI tables (AVX2 instructions: QEMU 7.2 cannot run
//! AVX-VNNI and no machine here has it, so a `vpdpbusd` form would ship
//! untested), `lanes.rs` for AVX-512 VNNI. Until stop 36 the 256-bit
//! tables transposed four groups of weights and activations per pass to
//! keep the matvec's order; tokens in the lanes prefill the 15M shape
//! 1.2–1.35× faster on AVX2 (docs/BENCHMARKS.md).
//!
//! The AVX-512 VNNI table's elementwise kernels (sum of exponentials, max,
//! softmax, SwiGLU, quantizing) and attention values are 512-bit too
//! (`wide.rs`); the rest of it is this file's AVX2 code.

use core::arch::x86_64::*;

use super::{
    check_q4, check_q4_tile, check_q8, check_q8_tile, reference, HeadNll, Kernels, MatmulOrder, ScoresByDim, TileOut,
};

mod by_dim;
mod lanes;
mod lanes_avx2;
mod q4;
mod q8_avx512;
mod wide;

#[cfg(feature = "std")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}
#[cfg(not(feature = "std"))]
fn has_avx2() -> bool {
    cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))
}
#[cfg(feature = "std")]
fn has_avxvnni() -> bool {
    has_avx2() && std::is_x86_feature_detected!("avxvnni")
}
#[cfg(not(feature = "std"))]
fn has_avxvnni() -> bool {
    has_avx2() && cfg!(target_feature = "avxvnni")
}
#[cfg(feature = "std")]
fn has_avx512vnni() -> bool {
    has_avx2()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}
#[cfg(not(feature = "std"))]
fn has_avx512vnni() -> bool {
    has_avx2()
        && cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni"
        ))
}

/// The AVX2 table, if this CPU has AVX2, FMA and F16C.
pub fn avx2() -> Option<&'static Kernels> {
    has_avx2().then_some(&AVX2)
}
/// The AVX-VNNI table, if this CPU has it (and AVX2, FMA, F16C).
pub fn avxvnni() -> Option<&'static Kernels> {
    has_avxvnni().then_some(&AVXVNNI)
}
/// The AVX-512 VNNI table, if this CPU has AVX-512 F/BW/VL/VNNI (and AVX2, FMA, F16C).
pub fn avx512vnni() -> Option<&'static Kernels> {
    has_avx512vnni().then_some(&AVX512VNNI)
}

// The tables are private: they are handed out only after detection, which is
// what makes their safe wrappers sound.
static AVX2: Kernels = Kernels {
    name: "avx2",
    matvec_q8: matvec_q8_avx2,
    matmul_q8: matmul_q8_avx2,
    matvec_q4: matvec_q4_avx2,
    matmul_q4: matmul_q4_avx2,
    matmul_order: MatmulOrder::GroupsInOrder,
    matmul_tile_bytes: usize::MAX,
    matvec_f32,
    matvec_f16,
    quantize_q8,
    rmsnorm,
    softmax,
    rope,
    swiglu,
    attn_scores: attn_scores4,
    attn_values,
    attn_scores_f16: attn_scores4_f16,
    attn_values_f16,
    attn_scores_q8: attn_scores4_q8,
    scores_by_dim: None,
    attn_values_q8,
    attn_values2: attn_values2_avx2,
    attn_values2_f16: attn_values2_f16_avx2,
    attn_values2_q8: attn_values2_q8_avx2,
    sum_exp,
    max: reference::max,
    head_nll: None,
};
static AVXVNNI: Kernels =
    Kernels { name: "avxvnni", matvec_q8: matvec_q8_avxvnni, matvec_q4: matvec_q4_avxvnni, ..AVX2 };
static AVX512VNNI: Kernels = Kernels {
    name: "avx512vnni",
    matvec_q8: matvec_q8_avx512vnni,
    matmul_q8: matmul_q8_avx512vnni,
    matvec_q4: matvec_q4_avx512vnni,
    matmul_q4: matmul_q4_avx512vnni,
    matmul_order: MatmulOrder::GroupsInOrder,
    matmul_tile_bytes: usize::MAX,
    quantize_q8: quantize_q8_avx512,
    softmax: softmax_avx512,
    swiglu: swiglu_avx512,
    sum_exp: sum_exp_avx512,
    max: max_avx512,
    head_nll: Some(HeadNll { q8: head_nll_q8_avx512, q4: head_nll_q4_avx512, max_cols: lanes::HEAD_NLL_MAX_COLS }),
    scores_by_dim: Some(ScoresByDim {
        one: by_dim::attn_scores1_t,
        two: by_dim::attn_scores2_t,
        store_f32: by_dim::keys_by_dim_f32,
    }),
    attn_values: attn_values_avx512,
    attn_values_f16: attn_values_f16_avx512,
    attn_values_q8: attn_values_q8_avx512,
    attn_values2: attn_values2_avx512,
    attn_values2_f16: attn_values2_f16_avx512,
    attn_values2_q8: attn_values2_q8_avx512,
    ..AVX2
};

// ---- safe wrappers (reachable only through the tables above) ----

// SAFETY (the wrappers down to `attn_values_q8_avx512`): only reachable via
// `AVX512VNNI`, returned after detecting avx2+fma+f16c+avx512f/bw/vl/vnni;
// each reads and writes its slices within their lengths (the attention
// kernels check the cache's length first).
fn quantize_q8_avx512(x: &[f32], q: &mut [i8], s: &mut [f32]) {
    // SAFETY: see above.
    unsafe { wide::quantize_q8(x, q, s) }
}
fn softmax_avx512(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { wide::softmax(x) }
}
fn swiglu_avx512(g: &mut [f32], u: &[f32]) {
    // SAFETY: see above.
    unsafe { wide::swiglu(g, u) }
}
fn sum_exp_avx512(xs: &[f32], max: f32) -> f64 {
    // SAFETY: see above.
    unsafe { wide::sum_exp(xs, max) }
}
fn max_avx512(xs: &[f32]) -> f32 {
    // SAFETY: see above.
    unsafe { wide::max(xs) }
}
fn attn_values_avx512(out: &mut [f32], att: &[f32], values: &[f32], stride: usize) {
    // SAFETY: see above.
    unsafe { wide::attn_values(out, att, values, stride) }
}
fn attn_values_f16_avx512(out: &mut [f32], att: &[f32], values: &[u16], stride: usize) {
    // SAFETY: see above.
    unsafe { wide::attn_values_f16(out, att, values, stride) }
}
fn attn_values_q8_avx512(out: &mut [f32], att: &[f32], values: &[i8], stride: usize) {
    // SAFETY: see above.
    unsafe { wide::attn_values_q8(out, att, values, stride) }
}

fn matvec_q8_avx2(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX2`/`avx2()`, returned after detecting
    // avx2+fma+f16c; slice lengths were checked above.
    unsafe { q8_avx2::matvec(out, wq, ws, xq, xs) }
}
fn matvec_q8_avxvnni(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVXVNNI`, returned after detecting
    // avx2+fma+f16c+avxvnni; slice lengths were checked above.
    unsafe { q8_avxvnni::matvec(out, wq, ws, xq, xs) }
}
fn matvec_q8_avx512vnni(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX512VNNI`, returned after detecting
    // avx2+fma+f16c+avx512f/bw/vl/vnni; slice lengths were checked above.
    unsafe { q8_avx512::matvec(out, wq, ws, xq, xs) }
}

fn matmul_q8_avx2(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX2` and `AVXVNNI` (its batched products
    // are these), both returned after detecting avx2+fma+f16c; slice lengths
    // were checked above.
    unsafe { lanes_avx2::matmul_q8(out, wq, ws, xq, xs) }
}
/// The columns of `n = targets.len()` tokens' activations for `HeadNll`
/// (a multiple of 32, at most one pass's), after checking the slices but
/// the weights (`row_bytes` per row: the caller's) and that every target is
/// a row.
fn check_head_nll(
    nats: &[f64],
    w: (usize, fn(usize) -> usize),
    ws: &[u16],
    rows: usize,
    xq: &[i8],
    xs: &[f32],
    targets: &[u32],
) -> usize {
    let n = targets.len();
    let cols = xq.len().checked_div(n).unwrap_or(0);
    let g = cols / 32;
    let (w_bytes, row_bytes) = w;
    assert!(cols.is_multiple_of(32), "head_nll: cols {cols} not a multiple of 32");
    assert!(
        nats.len() >= n && w_bytes >= rows * row_bytes(cols) && ws.len() >= rows * g && xs.len() >= n * g,
        "head_nll: slices too short for {rows} rows × {cols} cols × {n} tokens"
    );
    assert!(targets.iter().all(|&t| (t as usize) < rows), "head_nll: a target past the {rows} rows");
    assert!(cols <= lanes::HEAD_NLL_MAX_COLS, "head_nll: rows of {cols} columns are wider than one pass takes");
    cols
}
fn head_nll_q8_avx512(nats: &mut [f64], wq: &[i8], ws: &[u16], rows: usize, xq: &[i8], xs: &[f32], targets: &[u32]) {
    check_head_nll(nats, (wq.len(), |c| c), ws, rows, xq, xs, targets);
    // SAFETY: only reachable via `AVX512VNNI`, returned after detecting
    // avx2+fma+f16c+avx512f/bw/vl/vnni; slice lengths were checked above.
    unsafe { lanes::head_nll_q8(nats, wq, ws, rows, xq, xs, targets) }
}
fn head_nll_q4_avx512(nats: &mut [f64], wq: &[u8], ws: &[u16], rows: usize, xq: &[i8], xs: &[f32], targets: &[u32]) {
    check_head_nll(nats, (wq.len(), |c| c / 2), ws, rows, xq, xs, targets);
    // SAFETY: as above.
    unsafe { lanes::head_nll_q4(nats, wq, ws, rows, xq, xs, targets) }
}
/// The 512-bit batched products keep the tokens in the lanes (`lanes.rs`).
fn matmul_q8_avx512vnni(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX512VNNI`, returned after detecting
    // avx2+fma+f16c+avx512f/bw/vl/vnni; slice lengths were checked above.
    unsafe { lanes::matmul_q8(out, wq, ws, xq, xs) }
}
fn matmul_q4_avx512vnni(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX512VNNI`, returned after detecting
    // avx2+fma+f16c+avx512f/bw/vl/vnni; slice lengths were checked above.
    unsafe { lanes::matmul_q4(out, wq, ws, xq, xs) }
}
fn matmul_q4_avx2(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX2` and `AVXVNNI` (its batched products
    // are these), both returned after detecting avx2+fma+f16c; slice lengths
    // were checked above.
    unsafe { lanes_avx2::matmul_q4(out, wq, ws, xq, xs) }
}

fn matvec_q4_avx2(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX2`/`avx2()`, returned after detecting
    // avx2+fma+f16c; slice lengths were checked above.
    unsafe { q4::q4_avx2::matvec(out, wq, ws, xq, xs) }
}
fn matvec_q4_avxvnni(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVXVNNI`, returned after detecting
    // avx2+fma+f16c+avxvnni; slice lengths were checked above.
    unsafe { q4::q4_avxvnni::matvec(out, wq, ws, xq, xs) }
}
fn matvec_q4_avx512vnni(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `AVX512VNNI`, returned after detecting
    // avx2+fma+f16c+avx512f/bw/vl/vnni; slice lengths were checked above.
    unsafe { q4::q4_avx512vnni::matvec(out, wq, ws, xq, xs) }
}

simd_f32_wrappers!(rope_step: 8);

// `attn_scores` four keys at a time (heads of a multiple of 8 floats), for
// one cached element type (`$load(p)`: eight keys' elements at `p` as f32):
// per key the FMAs of `$dot` in its order and `hsum`'s additions in its
// order (bit-identical to `$one`, the table's one-key-at-a-time kernel), the
// four reductions done side by side and without a call per key; other keys
// and head sizes go through `$one`.
macro_rules! attn_scores4 {
    ($wrapper:ident, $four:ident, $one:ident, $ty:ty, |$p:ident| $load:expr) => {
        fn $wrapper(att: &mut [f32], q: &[f32], keys: &[$ty], stride: usize, scale: f32) {
            let hd = q.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(keys.len() >= last * stride + hd, "attn_scores: keys too short");
            }
            let quads = if hd.is_multiple_of(8) { att.len() / 4 } else { 0 };
            // SAFETY: detected tables only; keys `t < 4·quads ≤ att.len()` lie inside `keys` (checked above).
            unsafe { $four(att.as_mut_ptr(), quads, q.as_ptr(), hd, keys.as_ptr(), stride, scale) };
            let t = 4 * quads;
            if t < att.len() {
                $one(&mut att[t..], q, &keys[t * stride..], stride, scale);
            }
        }

        /// `att[t] = dot(q, keys + t·stride)·scale` for `t < 4·quads`, `hd` a multiple of 8.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $four(
            att: *mut f32,
            quads: usize,
            q: *const f32,
            hd: usize,
            keys: *const $ty,
            stride: usize,
            scale: f32,
        ) {
            for t in (0..4 * quads).step_by(4) {
                let k = [0, 1, 2, 3].map(|j| keys.add((t + j) * stride));
                let (mut s0, mut s1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
                let mut i = 0;
                while i + 16 <= hd {
                    let (qa, qb) = (_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(q.add(i + 8)));
                    for j in 0..4 {
                        let $p = k[j].add(i);
                        s0[j] = _mm256_fmadd_ps(qa, $load, s0[j]);
                        let $p = k[j].add(i + 8);
                        s1[j] = _mm256_fmadd_ps(qb, $load, s1[j]);
                    }
                    i += 16;
                }
                if i + 8 <= hd {
                    let qa = _mm256_loadu_ps(q.add(i));
                    for j in 0..4 {
                        let $p = k[j].add(i);
                        s0[j] = _mm256_fmadd_ps(qa, $load, s0[j]);
                    }
                }
                let v = [0, 1, 2, 3].map(|j| _mm256_add_ps(s0[j], s1[j]));
                // `hsum` per key: lanes i + (i + 4), then (0 + 2, 1 + 3), then the pair
                let h01 = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(v[0], v[1]),
                    _mm256_permute2f128_ps::<0x31>(v[0], v[1]),
                );
                let h23 = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(v[2], v[3]),
                    _mm256_permute2f128_ps::<0x31>(v[2], v[3]),
                );
                let u = _mm256_add_ps(
                    _mm256_shuffle_ps::<0b01_00_01_00>(h01, h23),
                    _mm256_shuffle_ps::<0b11_10_11_10>(h01, h23),
                );
                // lanes [k0, k2, …] in the low half, [k1, k3, …] in the high half
                let r =
                    _mm256_add_ps(_mm256_shuffle_ps::<0b10_00_10_00>(u, u), _mm256_shuffle_ps::<0b11_01_11_01>(u, u));
                let sums = _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r));
                _mm_storeu_ps(att.add(t), _mm_mul_ps(sums, _mm_set1_ps(scale)));
            }
        }
    };
}
attn_scores4!(attn_scores4, scores4, attn_scores, f32, |p| _mm256_loadu_ps(p));
attn_scores4!(attn_scores4_f16, scores4_f16, attn_scores_f16, u16, |p| f16x8(p));
attn_scores4!(attn_scores4_q8, scores4_q8, attn_scores_q8, i8, |p| i8x8(p));

// ---- shared helpers ----

/// Prefetches the block of rows after next: the `bytes` that start `2·bytes`
/// past `w` (rows are contiguous, one stream). Near the last rows that address
/// lies past the weights, so it is formed with `wrapping_add` (`add` past the
/// allocation is UB even unread); a prefetch never faults.
#[inline(always)]
fn prefetch_block_after_next(w: *const u8, bytes: usize) {
    let ahead = w.wrapping_add(2 * bytes);
    let mut off = 0;
    while off < bytes {
        // SAFETY: a prefetch is a hint: it reads nothing and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off) as *const i8) };
        off += 64;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Writes the horizontal sums of four accumulators to `out[0..4]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store4(out: *mut f32, a: __m256, b: __m256, c: __m256, d: __m256) {
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let s = _mm256_hadd_ps(ab, cd);
    let r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    _mm_storeu_ps(out, r);
}

/// `v` in both 128-bit halves.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dup128(v: __m128) -> __m256 {
    _mm256_insertf128_ps(_mm256_castps128_ps256(v), v, 1)
}

/// Lanes `k`, `k + 4` of the result: the two 16-byte halves of group `k`'s
/// sum, from four groups' eight-lane products `p` (integer, exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold4(p: [__m256i; 4]) -> __m256i {
    let s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
    let s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
    _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_scalar(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

// `Σ widen(w[i])·x[i]` over `n`, for one element type of `w` (`$load8(p)`:
// eight at `p` as f32, `$load1(p)`: one): two chains of eight, then eight,
// `hsum`, then the tail in order (the order [`attn_scores4`] repeats per key).
macro_rules! dot_of {
    ($(#[$attr:meta])* $name:ident, $ty:ty, |$p:ident| $load8:expr, |$q:ident| $load1:expr) => {
        $(#[$attr])*
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: *const $ty, x: *const f32, n: usize) -> f32 {
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= n {
                let $p = w.add(i);
                s0 = _mm256_fmadd_ps($load8, _mm256_loadu_ps(x.add(i)), s0);
                let $p = w.add(i + 8);
                s1 = _mm256_fmadd_ps($load8, _mm256_loadu_ps(x.add(i + 8)), s1);
                i += 16;
            }
            if i + 8 <= n {
                let $p = w.add(i);
                s0 = _mm256_fmadd_ps($load8, _mm256_loadu_ps(x.add(i)), s0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(s0, s1));
            while i < n {
                let $q = w.add(i);
                s += $load1 * *x.add(i);
                i += 1;
            }
            s
        }
    };
}
dot_of!(
    /// `Σ a[i]·b[i]` over `n` floats.
    #[inline]
    dot, f32, |p| _mm256_loadu_ps(p), |p| *p
);
dot_of!(dot_f16, u16, |p| f16x8(p), |p| f16_scalar(*p));
dot_of!(
    /// A q8 KV cache's key against a query.
    dot_i8, i8, |p| i8x8(p), |p| f32::from(*p)
);

/// `out[i] = x[i] * k * w[i]` (same rounding as the scalar expression).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_mul(out: *mut f32, x: *const f32, w: *const f32, k: f32, n: usize) {
    let kv = _mm256_set1_ps(k);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x.add(i)), kv), _mm256_loadu_ps(w.add(i)));
        _mm256_storeu_ps(out.add(i), v);
        i += 8;
    }
    while i < n {
        *out.add(i) = *x.add(i) * k * *w.add(i);
        i += 1;
    }
}

/// `e^x` (Cephes polynomial; ≤ 2 ulp on [-87.3, 88.3]; clamped outside).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn exp_ps(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_54)), _mm256_set1_ps(88.376_26));
    let fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(core::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
    let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.398_2e-3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.333_452e-3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.166_579_6e-2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.166_666_65));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_simd(x: *mut f32, n: usize) {
    let mut i = 0;
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    while i + 8 <= n {
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(x.add(i)));
        i += 8;
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let mut max = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    while i < n {
        max = max.max(*x.add(i));
        i += 1;
    }
    let maxv = _mm256_set1_ps(max);
    let mut sv = _mm256_setzero_ps();
    i = 0;
    while i + 8 <= n {
        let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x.add(i)), maxv));
        _mm256_storeu_ps(x.add(i), e);
        sv = _mm256_add_ps(sv, e);
        i += 8;
    }
    let mut sum = hsum(sv);
    while i < n {
        let e = libm::expf(*x.add(i) - max);
        *x.add(i) = e;
        sum += e;
        i += 1;
    }
    let sumv = _mm256_set1_ps(sum);
    i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(x.add(i), _mm256_div_ps(_mm256_loadu_ps(x.add(i)), sumv));
        i += 8;
    }
    while i < n {
        *x.add(i) /= sum;
        i += 1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn swiglu_simd(g: *mut f32, u: *const f32, n: usize) {
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i + 8 <= n {
        let gv = _mm256_loadu_ps(g.add(i));
        let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        let silu = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.add(i))));
        i += 8;
    }
    while i < n {
        let gv = *g.add(i);
        *g.add(i) = gv / (1.0 + libm::expf(-gv)) * *u.add(i);
        i += 1;
    }
}

/// One head: pairs `(a, b)` → `(a·c − b·s, a·s + b·c)`, exactly the
/// reference's roundings (no FMA).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rope_simd(x: *mut f32, rope: *const f32, hd: usize) {
    let mut i = 0;
    while i + 8 <= hd {
        let v = _mm256_loadu_ps(x.add(i));
        let t = _mm256_loadu_ps(rope.add(i));
        let c = _mm256_moveldup_ps(t);
        let s = _mm256_movehdup_ps(t);
        let sw = _mm256_permute_ps(v, 0b1011_0001);
        _mm256_storeu_ps(x.add(i), _mm256_addsub_ps(_mm256_mul_ps(v, c), _mm256_mul_ps(sw, s)));
        i += 8;
    }
}

// `attn_values` for one cached value type (`$load(p)`: eight values at `p`
// as f32, `$load1(p)`: one): every output element is `Σ_t att[t]·v_t` by one
// FMA per `t` in order; up to eight vectors of the head share one pass over
// `t`, so a head's FMA chains run side by side instead of one after another
// (a head of 48 was three passes); the columns past the last eight, scalar.
macro_rules! attn_values_vec {
    ($name:ident, $pair:ident, $pass:ident, $ty:ty, |$p:ident| $load:expr, |$q:ident| $load1:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(out: *mut f32, hd: usize, att: &[f32], values: *const $ty, stride: usize) {
            let vecs = hd / 8;
            let mut c = 0;
            while c < vecs * 8 {
                match (vecs * 8 - c) / 8 {
                    1 => $pass::<1, 1>([out], c, [att], values, stride),
                    2 => $pass::<2, 1>([out], c, [att], values, stride),
                    3 => $pass::<3, 1>([out], c, [att], values, stride),
                    4 => $pass::<4, 1>([out], c, [att], values, stride),
                    5 => $pass::<5, 1>([out], c, [att], values, stride),
                    6 => $pass::<6, 1>([out], c, [att], values, stride),
                    7 => $pass::<7, 1>([out], c, [att], values, stride),
                    _ => $pass::<8, 1>([out], c, [att], values, stride),
                }
                c += 64;
            }
            crate::kernels::attn_values_tail(out, vecs * 8, hd, att, values, stride, |$q| $load1);
        }

        /// `$name` for two weightings (the same length) of heads of at most
        /// 32: both through one pass over the positions, each value vector
        /// loaded once for both; every output the same FMA chain as `$name`'s.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $pair(out: [*mut f32; 2], hd: usize, att: [&[f32]; 2], values: *const $ty, stride: usize) {
            let vecs = hd / 8;
            match vecs {
                0 => {}
                1 => $pass::<1, 2>(out, 0, att, values, stride),
                2 => $pass::<2, 2>(out, 0, att, values, stride),
                3 => $pass::<3, 2>(out, 0, att, values, stride),
                _ => $pass::<4, 2>(out, 0, att, values, stride),
            }
            for (out, att) in out.into_iter().zip(att) {
                crate::kernels::attn_values_tail(out, vecs * 8, hd, att, values, stride, |$q| $load1);
            }
        }

        /// `K` vectors of outputs from column `c` for `Q` weightings of the
        /// same length: one pass over `t`.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn $pass<const K: usize, const Q: usize>(
            out: [*mut f32; Q],
            c: usize,
            att: [&[f32]; Q],
            values: *const $ty,
            stride: usize,
        ) {
            let mut acc = [[_mm256_setzero_ps(); K]; Q];
            for t in 0..att[0].len() {
                let row = values.add(t * stride + c);
                let v: [__m256; K] = core::array::from_fn(|k| {
                    let $p = row.add(8 * k);
                    $load
                });
                for (acc, att) in acc.iter_mut().zip(att) {
                    let av = _mm256_set1_ps(*att.get_unchecked(t));
                    for (acc, v) in acc.iter_mut().zip(v) {
                        *acc = _mm256_fmadd_ps(av, v, *acc);
                    }
                }
            }
            for (acc, out) in acc.iter().zip(out) {
                for (k, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.add(c + 8 * k), *acc);
                }
            }
        }
    };
}
attn_values_vec!(attn_values_simd, attn_values2_simd, attn_values_pass_f32, f32, |p| _mm256_loadu_ps(p), |p| *p);
attn_values_vec!(attn_values_f16_simd, attn_values2_f16_simd, attn_values_pass_f16, u16, |p| f16x8(p), |p| f16_scalar(
    *p
));
attn_values_vec!(attn_values_i8_simd, attn_values2_i8_simd, attn_values_pass_i8, i8, |p| i8x8(p), |p| f32::from(*p));

// `Kernels::attn_values2` of the x86 tables: heads of up to 32 through the
// table's pair kernel (two weightings, each value vector loaded once for
// both: AVX2's single kernel, four chains for a head of 32, waits on FMA
// latency, AVX-512's is bound by its loads), wider ones as two single calls
// (the pair's accumulators would not fit the registers).
macro_rules! attn_values2_wrapper {
    ($wrapper:ident, $single:ident, $pair:path, $ty:ty) => {
        fn $wrapper(out: [&mut [f32]; 2], att: [&[f32]; 2], values: &[$ty], stride: usize) {
            let [o0, o1] = out;
            let (n, hd) = (att[0].len(), o0.len());
            assert!(att[1].len() == n && o1.len() == hd, "attn_values2: the two weightings' shapes differ");
            if hd > 32 {
                $single(o0, att[0], values, stride);
                return $single(o1, att[1], values, stride);
            }
            if let Some(last) = n.checked_sub(1) {
                assert!(values.len() >= last * stride + hd, "attn_values: values too short");
            }
            // SAFETY: detected tables only (each pair kernel is in the table
            // whose features it enables: avx2+fma+f16c, and avx512f/bw/vl for
            // `wide`'s); every value row read lies inside `values`, both
            // outputs hold `hd` (checked above).
            unsafe { $pair([o0.as_mut_ptr(), o1.as_mut_ptr()], hd, att, values.as_ptr(), stride) }
        }
    };
}
attn_values2_wrapper!(attn_values2_avx2, attn_values, attn_values2_simd, f32);
attn_values2_wrapper!(attn_values2_f16_avx2, attn_values_f16, attn_values2_f16_simd, u16);
attn_values2_wrapper!(attn_values2_q8_avx2, attn_values_q8, attn_values2_i8_simd, i8);
attn_values2_wrapper!(attn_values2_avx512, attn_values_avx512, wide::attn_values2, f32);
attn_values2_wrapper!(attn_values2_f16_avx512, attn_values_f16_avx512, wide::attn_values2_f16, u16);
attn_values2_wrapper!(attn_values2_q8_avx512, attn_values_q8_avx512, wide::attn_values2_q8, i8);

/// Eight f16 (bits) at `p` to f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16x8(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Eight i8 at `p` to f32 (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn i8x8(p: *const i8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

/// Round half away from zero, exactly (`t = trunc(v)`, `+sign` when `|v − t| ≥ 0.5`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn round_away(v: __m256) -> __m256i {
    let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    let frac = _mm256_sub_ps(v, t);
    let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
    let absf = _mm256_andnot_ps(_mm256_set1_ps(-0.0), frac);
    let ge = _mm256_cmp_ps(absf, _mm256_set1_ps(0.5), _CMP_GE_OQ);
    let step = _mm256_and_ps(ge, _mm256_or_ps(sign, _mm256_set1_ps(1.0)));
    _mm256_cvttps_epi32(_mm256_add_ps(t, step))
}

/// Per group of 32: the absolute maximum (a max tree, exact in any order),
/// `d = amax/127` and `1/d` (0 when `d` is 0), then every value times `1/d`
/// rounded half away from zero. The divisions of eight groups go in one
/// vector each (IEEE division is correctly rounded in either form, so the
/// values are the scalar ones; `!=` is unordered, as Rust's, so a NaN
/// maximum gives a NaN inverse as the reference does).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_simd(x: *const f32, q: *mut i8, s: *mut f32, groups: usize) {
    let mut g = 0;
    while g < groups {
        let n = (groups - g).min(8);
        let mut amax = [0f32; 8];
        for (j, a) in amax.iter_mut().enumerate().take(n) {
            *a = abs_max32(x.add((g + j) * 32));
        }
        let d = _mm256_div_ps(_mm256_loadu_ps(amax.as_ptr()), _mm256_set1_ps(127.0));
        let nonzero = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_UQ);
        let id = _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0), d));
        let (mut dv, mut idv) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(dv.as_mut_ptr(), d);
        _mm256_storeu_ps(idv.as_mut_ptr(), id);
        for j in 0..n {
            quantize32(x.add((g + j) * 32), q.add((g + j) * 32), idv[j]);
            *s.add(g + j) = dv[j];
        }
        g += n;
    }
}

/// `max |x[i]|` over 32 floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn abs_max32(p: *const f32) -> f32 {
    let absmask = _mm256_set1_ps(-0.0);
    let a = [0, 8, 16, 24].map(|k| _mm256_andnot_ps(absmask, _mm256_loadu_ps(p.add(k))));
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)))
}

/// 32 floats at `p` times `id`, rounded half away from zero, to i8 at `q`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quantize32(p: *const f32, q: *mut i8, id: f32) {
    let idv = _mm256_set1_ps(id);
    let [i0, i1, i2, i3] = [0, 8, 16, 24].map(|k| round_away(_mm256_mul_ps(_mm256_loadu_ps(p.add(k)), idv)));
    // packs work per 128-bit lane: fix the order with one permute
    let w01 = _mm256_packs_epi32(i0, i1);
    let w23 = _mm256_packs_epi32(i2, i3);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q as *mut __m256i, b);
}

fn sum_exp(xs: &[f32], max: f32) -> f64 {
    // SAFETY: only reachable via the detected tables (avx2+fma+f16c); reads
    // `xs` through its own chunks.
    unsafe { sum_exp_simd(xs, max) }
}

/// [`reference::sum_exp`] eight terms at a time: [`exp8`] gives each term's
/// exact bits, and lanes 0–3 / 4–7 go to the f64 accumulators of the same
/// lanes in the same order; the tail and the final sum are the reference's.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_exp_simd(xs: &[f32], max: f32) -> f64 {
    let chunks = xs.chunks_exact(reference::SUM_EXP_LANES);
    let tail = chunks.remainder();
    let m = _mm256_set1_ps(max);
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for c in chunks {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
    }
    let mut acc = [0f64; reference::SUM_EXP_LANES];
    _mm256_storeu_pd(acc.as_mut_ptr(), lo);
    _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi);
    tail.iter().map(|&v| reference::exp(v - max) as f64).sum::<f64>() + acc.iter().sum::<f64>()
}

/// [`reference::exp`] on eight lanes: the same multiplies and adds (no FMA)
/// in the same order, so the same bits. The clamp keeps a NaN (`max_ps`
/// returns its second operand when either is NaN), as `f32::clamp` does.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn exp8(x: __m256) -> __m256 {
    let c = _mm256_set1_ps;
    let x = _mm256_min_ps(c(reference::EXP_MAX), _mm256_max_ps(c(reference::EXP_MIN), x));
    let t = _mm256_add_ps(_mm256_mul_ps(x, c(core::f32::consts::LOG2_E)), c(reference::ROUND_MAGIC));
    let n = _mm256_sub_ps(t, c(reference::ROUND_MAGIC));
    let n_int = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(reference::ROUND_MAGIC.to_bits() as i32));
    let r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_359_4))), _mm256_mul_ps(n, c(-2.121_944_4e-4)));
    let mut p = c(1.987_569_1e-4);
    for k in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_add_ps(_mm256_mul_ps(p, r), c(k));
    }
    let er = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), c(1.0));
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127))));
    _mm256_mul_ps(er, two_n)
}

// ---- q8 matvec and matmul, one module per dot-product instruction ----

// `$prep` turns a weight vector into the unsigned operand of the dot product
// (once per weight load, shared by every token of a batched product); `$dot`
// multiplies it with one activation vector.
macro_rules! q8_matvec {
    ($module:ident, $feat:literal, |$pw:ident| $prep:expr, |$aw:ident, $w:ident, $x:ident| $dot:expr) => {
        mod $module {
            use core::arch::x86_64::*;

            use super::{f16_scalar, fold4, hsum, prefetch_block_after_next, store4};

            /// The weight vector's operand for [`dot_prepped`].
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn prep($pw: __m256i) -> __m256i {
                $prep
            }

            /// Per-group i32 products of 32 weights (`$w`, prepared as `$aw`) and
            /// 32 activations (eight lanes of four products each, summing to the group's sum).
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn dot_prepped($aw: __m256i, $w: __m256i, $x: __m256i) -> __m256i {
                $dot
            }

            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
                dot_prepped(prep(w), w, x)
            }

            /// Caller guarantees the CPU features and slice lengths (`check_q8`).
            #[target_feature(enable = $feat)]
            pub unsafe fn matvec(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
                let cols = xq.len();
                let groups = cols / 32;
                let rows = out.len();
                let (o, w, s) = (out.as_mut_ptr(), wq.as_ptr(), ws.as_ptr());
                let mut r = 0;
                while r + 4 <= rows {
                    block::<4>(o.add(r), w.add(r * cols), s.add(r * groups), xq.as_ptr(), xs.as_ptr(), groups);
                    r += 4;
                }
                while r < rows {
                    block::<1>(o.add(r), w.add(r * cols), s.add(r * groups), xq.as_ptr(), xs.as_ptr(), groups);
                    r += 1;
                }
            }

            /// `R` consecutive rows.
            #[target_feature(enable = $feat)]
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
                if R == 4 {
                    prefetch_block_after_next(w as *const u8, R * cols);
                }
                let mut acc = [_mm256_setzero_ps(); R];
                let mut sc = [[0f32; 8]; R];
                let mut g0 = 0;
                while g0 < groups {
                    let n = if groups - g0 >= 8 { 8 } else { groups - g0 };
                    // combined scales ws·xs for the next (up to) eight groups
                    if n == 8 {
                        let xv = _mm256_loadu_ps(xs.add(g0));
                        for (r, sc) in sc.iter_mut().enumerate() {
                            let h = _mm_loadu_si128(ws.add(r * groups + g0) as *const __m128i);
                            _mm256_storeu_ps(sc.as_mut_ptr(), _mm256_mul_ps(_mm256_cvtph_ps(h), xv));
                        }
                    } else {
                        for (r, sc) in sc.iter_mut().enumerate() {
                            for (j, sc) in sc.iter_mut().enumerate().take(n) {
                                *sc = f16_scalar(*ws.add(r * groups + g0 + j)) * *xs.add(g0 + j);
                            }
                        }
                    }
                    let mut j = 0;
                    // four groups at a time: their i32 lanes are folded into one
                    // vector (lanes = groups j..j+4, twice) so one convert and
                    // one FMA serve four groups
                    while j + 4 <= n {
                        let at = (g0 + j) * 32;
                        let x0 = _mm256_loadu_si256(xq.add(at) as *const __m256i);
                        let x1 = _mm256_loadu_si256(xq.add(at + 32) as *const __m256i);
                        let x2 = _mm256_loadu_si256(xq.add(at + 64) as *const __m256i);
                        let x3 = _mm256_loadu_si256(xq.add(at + 96) as *const __m256i);
                        for r in 0..R {
                            let p = w.add(r * cols + at);
                            let p0 = dot(_mm256_loadu_si256(p as *const __m256i), x0);
                            let p1 = dot(_mm256_loadu_si256(p.add(32) as *const __m256i), x1);
                            let p2 = dot(_mm256_loadu_si256(p.add(64) as *const __m256i), x2);
                            let p3 = dot(_mm256_loadu_si256(p.add(96) as *const __m256i), x3);
                            let s = fold4([p0, p1, p2, p3]);
                            // lanes k and k+4 hold halves of group j+k's exact i32 sum
                            let d = _mm256_broadcast_ps(&*(sc[r].as_ptr().add(j) as *const __m128));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[r]);
                        }
                        j += 4;
                    }
                    while j < n {
                        let at = (g0 + j) * 32;
                        let xv = _mm256_loadu_si256(xq.add(at) as *const __m256i);
                        for r in 0..R {
                            let wv = _mm256_loadu_si256(w.add(r * cols + at) as *const __m256i);
                            let p = _mm256_cvtepi32_ps(dot(wv, xv));
                            acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc[r][j]), acc[r]);
                        }
                        j += 1;
                    }
                    g0 += n;
                }
                if R == 4 {
                    store4(out, acc[0], acc[1], acc[2], acc[3]);
                } else {
                    for (r, a) in acc.iter().enumerate() {
                        *out.add(r) = hsum(*a);
                    }
                }
            }
        }
    };
}

// The batched products of both tables are `lanes_avx2.rs` (tokens in the lanes).
q8_matvec!(q8_avx2, "avx2,fma,f16c", |w| _mm256_sign_epi8(w, w), |aw, w, x| {
    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)), _mm256_set1_epi16(1))
});
// AVX-VNNI (VEX `vpdpbusd`): the scheme measured and tested on the Intel host;
// the AMD bench machine lacks AVX-VNNI, so it is compiled but not run there.
q8_matvec!(q8_avxvnni, "avx2,fma,f16c,avxvnni", |w| _mm256_sign_epi8(w, w), |aw, w, x| {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), aw, _mm256_sign_epi8(x, w))
});
