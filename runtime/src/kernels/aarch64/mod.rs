//! aarch64 kernels: plain NEON (every ARMv8-A core: Cortex-A53/A72 in a
//! Pi 3/Pi 4) and NEON with the dot-product extension (`sdot`: Cortex-A76/A78
//! in a Pi 5 or Jetson Orin).
//!
//! q8 dot per group of 32, `neon`: `smull`/`smlal` multiply i8 pairs into
//! i16 (two products per lane: |128·127|·2 = 32512 fits, activations being in
//! [-127, 127]), `saddlp`/`sadalp` widen into four i32 lanes. `dotprod`:
//! two `sdot` (exact i8·i8 sums of four into i32). Either way the four
//! lanes are reduced in integers to the reference's exact group sum
//! (`addp` folds four groups into one vector; a lone group uses `addv`),
//! converted to f32 and scaled by `ws·xs` with an FMA into per-row
//! accumulators, four rows at a time so each activation vector is loaded
//! once per four rows.
//!
//! f16 scales are widened with integer ops (`(h & 0x7fff) << 13` as f32 times
//! 2^112, sign or-ed in): exact for every finite half, normal or subnormal.
//! (`vcvt_f32_f16` needs the unstable `f16` type on Rust 1.95.)
//! `sdot` is emitted with `asm!`: its intrinsic is unstable on Rust 1.95.

use core::arch::aarch64::*;

use super::{check_q4, check_q4_tile, check_q8, check_q8_tile, f16_to_f32, Kernels, MatmulOrder, TileOut, TILE_BYTES};

mod q4;

#[cfg(feature = "std")]
fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}
#[cfg(not(feature = "std"))]
fn has_dotprod() -> bool {
    cfg!(target_feature = "dotprod")
}
#[cfg(feature = "std")]
fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}
#[cfg(not(feature = "std"))]
fn has_neon() -> bool {
    cfg!(target_feature = "neon")
}

/// The NEON table (every aarch64 CPU with Advanced SIMD).
pub fn neon() -> Option<&'static Kernels> {
    has_neon().then_some(&NEON)
}
/// The NEON + dotprod table, if this CPU has `sdot`.
pub fn dotprod() -> Option<&'static Kernels> {
    (has_neon() && has_dotprod()).then_some(&DOTPROD)
}

// Private: handed out only after detection, which makes the safe wrappers sound.
static NEON: Kernels = Kernels {
    name: "neon",
    matvec_q8: matvec_q8_neon,
    matmul_q8: matmul_q8_neon,
    matvec_q4: matvec_q4_neon,
    matmul_q4: matmul_q4_neon,
    matmul_order: MatmulOrder::Matvec,
    matmul_tile_bytes: TILE_BYTES,
    matvec_f32,
    matvec_f16,
    quantize_q8,
    rmsnorm,
    softmax,
    rope,
    swiglu,
    attn_scores,
    attn_values,
    attn_scores_f16,
    attn_values_f16,
    attn_scores_q8,
    scores_by_dim: None,
    attn_values_q8,
    attn_values2,
    attn_values2_f16,
    attn_values2_q8,
    // the scalar form vectorises on NEON as it is
    sum_exp: super::reference::sum_exp,
    max: super::reference::max,
    head_nll: None,
};
static DOTPROD: Kernels = Kernels {
    name: "dotprod",
    matvec_q8: matvec_q8_dotprod,
    matmul_q8: matmul_q8_dotprod,
    matvec_q4: matvec_q4_dotprod,
    matmul_q4: matmul_q4_dotprod,
    matmul_order: MatmulOrder::Matvec,
    ..NEON
};

fn matvec_q8_neon(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `NEON`/`DOTPROD`, returned after detecting
    // NEON; slice lengths were checked above.
    unsafe { q8_neon::matvec(out, wq, ws, xq, xs) }
}
fn matvec_q8_dotprod(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `DOTPROD`, returned after detecting NEON and
    // dotprod; slice lengths were checked above.
    unsafe { q8_dotprod::matvec(out, wq, ws, xq, xs) }
}

fn matmul_q8_neon(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `NEON`/`DOTPROD`, returned after detecting
    // NEON; slice lengths were checked above.
    unsafe { q8_neon::matmul(out, wq, ws, xq, xs) }
}
fn matmul_q8_dotprod(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q8_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `DOTPROD`, returned after detecting NEON and
    // dotprod; slice lengths were checked above.
    unsafe { q8_dotprod::matmul(out, wq, ws, xq, xs) }
}

fn matvec_q4_neon(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `NEON`/`DOTPROD`, returned after detecting
    // NEON; slice lengths were checked above.
    unsafe { q4::q4_neon::matvec(out, wq, ws, xq, xs) }
}
fn matvec_q4_dotprod(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `DOTPROD`, returned after detecting NEON and
    // dotprod; slice lengths were checked above.
    unsafe { q4::q4_dotprod::matvec(out, wq, ws, xq, xs) }
}

fn matmul_q4_neon(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `NEON`/`DOTPROD`, returned after detecting
    // NEON; slice lengths were checked above.
    unsafe { q4::q4_neon::matmul(out, wq, ws, xq, xs) }
}
fn matmul_q4_dotprod(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    check_q4_tile(out, wq, ws, xq, xs);
    // SAFETY: only reachable via `DOTPROD`, returned after detecting NEON and
    // dotprod; slice lengths were checked above.
    unsafe { q4::q4_dotprod::matmul(out, wq, ws, xq, xs) }
}

simd_f32_wrappers!(rope_step: 4);
// no pair kernels here: each is its single kernel twice
super::attn_pairs_of_singles!(attn_values2 = attn_values, f32);
super::attn_pairs_of_singles!(attn_values2_f16 = attn_values_f16, u16);
super::attn_pairs_of_singles!(attn_values2_q8 = attn_values_q8, i8);

// ---- helpers ----

/// Four f16 (bits) to f32, exact for finite values.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let h = vmovl_u16(h);
    let mag = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7fff)));
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let v = vmulq_f32(vreinterpretq_f32_u32(mag), vdupq_n_f32(f32::from_bits(0x7780_0000))); // 2^112
    vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), sign))
}

#[target_feature(enable = "neon")]
#[inline]
unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let (mut s0, mut s1, mut s2, mut s3) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0), vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 16 <= n {
        s0 = vfmaq_f32(s0, vld1q_f32(a.add(i)), vld1q_f32(b.add(i)));
        s1 = vfmaq_f32(s1, vld1q_f32(a.add(i + 4)), vld1q_f32(b.add(i + 4)));
        s2 = vfmaq_f32(s2, vld1q_f32(a.add(i + 8)), vld1q_f32(b.add(i + 8)));
        s3 = vfmaq_f32(s3, vld1q_f32(a.add(i + 12)), vld1q_f32(b.add(i + 12)));
        i += 16;
    }
    while i + 4 <= n {
        s0 = vfmaq_f32(s0, vld1q_f32(a.add(i)), vld1q_f32(b.add(i)));
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    while i < n {
        s += *a.add(i) * *b.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
unsafe fn dot_f16(w: *const u16, x: *const f32, n: usize) -> f32 {
    let (mut s0, mut s1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 8 <= n {
        let h = vld1q_u16(w.add(i));
        s0 = vfmaq_f32(s0, f16x4_to_f32(vget_low_u16(h)), vld1q_f32(x.add(i)));
        s1 = vfmaq_f32(s1, f16x4_to_f32(vget_high_u16(h)), vld1q_f32(x.add(i + 4)));
        i += 8;
    }
    let mut s = vaddvq_f32(vaddq_f32(s0, s1));
    while i < n {
        s += f16_to_f32(*w.add(i)) * *x.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
unsafe fn scale_mul(out: *mut f32, x: *const f32, w: *const f32, k: f32, n: usize) {
    let kv = vdupq_n_f32(k);
    let mut i = 0;
    while i + 4 <= n {
        vst1q_f32(out.add(i), vmulq_f32(vmulq_f32(vld1q_f32(x.add(i)), kv), vld1q_f32(w.add(i))));
        i += 4;
    }
    while i < n {
        *out.add(i) = *x.add(i) * k * *w.add(i);
        i += 1;
    }
}

/// `e^x` (Cephes polynomial; ≤ 2 ulp on [-87.3, 88.3]; clamped outside).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn exp_ps(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.336_54)), vdupq_n_f32(88.376_26));
    let fx = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5), x, vdupq_n_f32(core::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, fx, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, fx, vdupq_n_f32(-2.121_944_4e-4));
    let mut y = vdupq_n_f32(1.987_569_1e-4);
    y = vfmaq_f32(vdupq_n_f32(1.398_2e-3), y, r);
    y = vfmaq_f32(vdupq_n_f32(8.333_452e-3), y, r);
    y = vfmaq_f32(vdupq_n_f32(4.166_579_6e-2), y, r);
    y = vfmaq_f32(vdupq_n_f32(0.166_666_65), y, r);
    y = vfmaq_f32(vdupq_n_f32(0.5), y, r);
    y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)));
    vmulq_f32(y, vreinterpretq_f32_s32(e))
}

#[target_feature(enable = "neon")]
unsafe fn softmax_simd(x: *mut f32, n: usize) {
    let mut i = 0;
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    while i + 4 <= n {
        mv = vmaxq_f32(mv, vld1q_f32(x.add(i)));
        i += 4;
    }
    let mut max = vmaxvq_f32(mv);
    while i < n {
        max = max.max(*x.add(i));
        i += 1;
    }
    let maxv = vdupq_n_f32(max);
    let mut sv = vdupq_n_f32(0.0);
    i = 0;
    while i + 4 <= n {
        let e = exp_ps(vsubq_f32(vld1q_f32(x.add(i)), maxv));
        vst1q_f32(x.add(i), e);
        sv = vaddq_f32(sv, e);
        i += 4;
    }
    let mut sum = vaddvq_f32(sv);
    while i < n {
        let e = libm::expf(*x.add(i) - max);
        *x.add(i) = e;
        sum += e;
        i += 1;
    }
    let sumv = vdupq_n_f32(sum);
    i = 0;
    while i + 4 <= n {
        vst1q_f32(x.add(i), vdivq_f32(vld1q_f32(x.add(i)), sumv));
        i += 4;
    }
    while i < n {
        *x.add(i) /= sum;
        i += 1;
    }
}

#[target_feature(enable = "neon")]
unsafe fn swiglu_simd(g: *mut f32, u: *const f32, n: usize) {
    let one = vdupq_n_f32(1.0);
    let mut i = 0;
    while i + 4 <= n {
        let gv = vld1q_f32(g.add(i));
        let e = exp_ps(vnegq_f32(gv));
        let silu = vdivq_f32(gv, vaddq_f32(one, e));
        vst1q_f32(g.add(i), vmulq_f32(silu, vld1q_f32(u.add(i))));
        i += 4;
    }
    while i < n {
        let gv = *g.add(i);
        *g.add(i) = gv / (1.0 + libm::expf(-gv)) * *u.add(i);
        i += 1;
    }
}

/// One head: pairs `(a, b)` → `(a·c − b·s, a·s + b·c)`, the reference's roundings (no FMA).
#[target_feature(enable = "neon")]
unsafe fn rope_simd(x: *mut f32, rope: *const f32, hd: usize) {
    // flips the sign of the even lanes: a·c + (−(b·s)) == a·c − b·s exactly
    let neg_even = vreinterpretq_f32_u32(vld1q_u32([0x8000_0000u32, 0, 0x8000_0000, 0].as_ptr()));
    let mut i = 0;
    while i + 4 <= hd {
        let v = vld1q_f32(x.add(i));
        let t = vld1q_f32(rope.add(i));
        let c = vtrn1q_f32(t, t);
        let s = vtrn2q_f32(t, t);
        let sw = vrev64q_f32(v);
        let p = vmulq_f32(sw, s);
        let p = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(p), vreinterpretq_u32_f32(neg_even)));
        vst1q_f32(x.add(i), vaddq_f32(vmulq_f32(v, c), p));
        i += 4;
    }
}

// `out = Σ_t att[t]·v_t` over one cached element type (`$load4(p)`: four
// values at `p` as f32, `$load1(p)`: one): sixteen, then four columns per
// pass over `t`, one FMA per (t, column) in order, then single columns.
macro_rules! attn_values_neon {
    ($(#[$doc:meta])* $name:ident, $ty:ty, |$p:ident| $load4:expr, |$q:ident| $load1:expr) => {
        $(#[$doc])*
        #[target_feature(enable = "neon")]
        unsafe fn $name(out: *mut f32, hd: usize, att: &[f32], values: *const $ty, stride: usize) {
            let mut c = 0;
            while c + 16 <= hd {
                let mut acc = [vdupq_n_f32(0.0); 4];
                for (t, &a) in att.iter().enumerate() {
                    let v = values.add(t * stride + c);
                    for (k, acc) in acc.iter_mut().enumerate() {
                        let $p = v.add(4 * k);
                        *acc = vfmaq_n_f32(*acc, $load4, a);
                    }
                }
                for (k, acc) in acc.iter().enumerate() {
                    vst1q_f32(out.add(c + 4 * k), *acc);
                }
                c += 16;
            }
            while c + 4 <= hd {
                let mut acc = vdupq_n_f32(0.0);
                for (t, &a) in att.iter().enumerate() {
                    let $p = values.add(t * stride + c);
                    acc = vfmaq_n_f32(acc, $load4, a);
                }
                vst1q_f32(out.add(c), acc);
                c += 4;
            }
            crate::kernels::attn_values_tail(out, c, hd, att, values, stride, |$q| $load1);
        }
    };
}
attn_values_neon!(attn_values_simd, f32, |p| vld1q_f32(p), |p| *p);
attn_values_neon!(
    /// `attn_values_simd` over an f16 cache (integer widening, see the module header).
    attn_values_f16_simd, u16, |p| f16x4_to_f32(vld1_u16(p)), |p| f16_to_f32(*p)
);
attn_values_neon!(
    /// `attn_values_simd` over a q8 cache (exact widening).
    attn_values_i8_simd, i8, |p| i8x4_to_f32(p), |p| f32::from(*p)
);

/// Four i8 at `p` to f32 (exact).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn i8x4_to_f32(p: *const i8) -> float32x4_t {
    let w = vmovl_s8(vreinterpret_s8_u32(vdup_n_u32((p as *const u32).read_unaligned())));
    vcvtq_f32_s32(vmovl_s16(vget_low_s16(w)))
}

/// `Σ f32(w[i])·x[i]` over `n` (a q8 KV cache's key against a query).
#[target_feature(enable = "neon")]
unsafe fn dot_i8(w: *const i8, x: *const f32, n: usize) -> f32 {
    let (mut s0, mut s1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 8 <= n {
        let h = vmovl_s8(vld1_s8(w.add(i)));
        s0 = vfmaq_f32(s0, vcvtq_f32_s32(vmovl_s16(vget_low_s16(h))), vld1q_f32(x.add(i)));
        s1 = vfmaq_f32(s1, vcvtq_f32_s32(vmovl_s16(vget_high_s16(h))), vld1q_f32(x.add(i + 4)));
        i += 8;
    }
    let mut s = vaddvq_f32(vaddq_f32(s0, s1));
    while i < n {
        s += f32::from(*w.add(i)) * *x.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
unsafe fn quantize_q8_simd(x: *const f32, q: *mut i8, s: *mut f32, groups: usize) {
    for g in 0..groups {
        let p = x.add(g * 32);
        let mut v = [vdupq_n_f32(0.0); 8];
        for (k, v) in v.iter_mut().enumerate() {
            *v = vld1q_f32(p.add(4 * k));
        }
        let mut m = vabsq_f32(v[0]);
        for v in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(*v));
        }
        let amax = vmaxvq_f32(m);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut n16 = [vdup_n_s16(0); 8];
        for (k, n) in n16.iter_mut().enumerate() {
            // fcvtas: round to nearest, ties away from zero == roundf
            *n = vqmovn_s32(vcvtaq_s32_f32(vmulq_n_f32(v[k], id)));
        }
        for h in 0..2 {
            let lo = vcombine_s16(n16[4 * h], n16[4 * h + 1]);
            let hi = vcombine_s16(n16[4 * h + 2], n16[4 * h + 3]);
            vst1q_s8(q.add(g * 32 + 16 * h), vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
        }
        *s.add(g) = d;
    }
}

/// `acc + Σ` of `sdot` over four-byte groups (the intrinsic is unstable on Rust 1.95).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` only reads and writes the named vector registers; the
    // caller's target features guarantee the instruction exists.
    unsafe {
        core::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

macro_rules! q8_matvec {
    ($module:ident, $feat:literal, |$w0:ident, $w1:ident, $x0:ident, $x1:ident| $dot:expr) => {
        mod $module {
            use core::arch::aarch64::*;

            #[allow(unused_imports)]
            use super::{f16x4_to_f32, sdot};
            use crate::kernels::{f16_to_f32, TileOut};

            /// Four i32 lanes summing to the group's exact dot product.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn dot($w0: int8x16_t, $w1: int8x16_t, $x0: int8x16_t, $x1: int8x16_t) -> int32x4_t {
                $dot
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
                let mut acc = [vdupq_n_f32(0.0); R];
                let mut sc = [[0f32; 4]; R];
                let mut g0 = 0;
                while g0 < groups {
                    let n = if groups - g0 >= 4 { 4 } else { groups - g0 };
                    if n == 4 {
                        let xv = vld1q_f32(xs.add(g0));
                        for (r, sc) in sc.iter_mut().enumerate() {
                            let h = vld1_u16(ws.add(r * groups + g0));
                            vst1q_f32(sc.as_mut_ptr(), vmulq_f32(f16x4_to_f32(h), xv));
                        }
                    } else {
                        for (r, sc) in sc.iter_mut().enumerate() {
                            for (j, sc) in sc.iter_mut().enumerate().take(n) {
                                *sc = f16_to_f32(*ws.add(r * groups + g0 + j)) * *xs.add(g0 + j);
                            }
                        }
                    }
                    if n == 4 {
                        // four groups: pairwise adds fold their lanes into one
                        // vector (lane k = group g0+k) for one convert + one FMA
                        let at = g0 * 32;
                        let mut x = [vdupq_n_s8(0); 8];
                        for (k, x) in x.iter_mut().enumerate() {
                            *x = vld1q_s8(xq.add(at + 16 * k));
                        }
                        for r in 0..R {
                            let p = w.add(r * cols + at);
                            let mut d = [vdupq_n_s32(0); 4];
                            for (k, d) in d.iter_mut().enumerate() {
                                *d = dot(vld1q_s8(p.add(32 * k)), vld1q_s8(p.add(32 * k + 16)), x[2 * k], x[2 * k + 1]);
                            }
                            let s = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
                            acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(s), vld1q_f32(sc[r].as_ptr()));
                        }
                        g0 += 4;
                        continue;
                    }
                    for j in 0..n {
                        let at = (g0 + j) * 32;
                        let x0 = vld1q_s8(xq.add(at));
                        let x1 = vld1q_s8(xq.add(at + 16));
                        for r in 0..R {
                            let p = w.add(r * cols + at);
                            let d = dot(vld1q_s8(p), vld1q_s8(p.add(16)), x0, x1);
                            // the group's exact i32 sum, in lane 0
                            let isum = vsetq_lane_s32::<0>(vaddvq_s32(d), vdupq_n_s32(0));
                            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(isum), sc[r][j]);
                        }
                    }
                    g0 += n;
                }
                if R == 4 {
                    let s01 = vpaddq_f32(acc[0], acc[1]);
                    let s23 = vpaddq_f32(acc[2], acc[3]);
                    vst1q_f32(out, vpaddq_f32(s01, s23));
                } else {
                    for (r, a) in acc.iter().enumerate() {
                        *out.add(r) = vaddvq_f32(*a);
                    }
                }
            }

            /// The batched form of [`matvec`] (`Kernels::matmul_q8`): one
            /// weight row at a time against four tokens (then single ones),
            /// each weight vector loaded once for the four. Per row and token
            /// the f32 operations are [`block`]'s, in its order, on the same
            /// integer sums and scale products, and each sum is reduced as
            /// `matvec` reduces that row (rows of a four-row block: pairwise
            /// `vpaddq`; the rest: `vaddvq`): bit-identical.
            /// Caller guarantees the CPU features and slice lengths (`check_q8_tile`).
            #[target_feature(enable = $feat)]
            pub unsafe fn matmul(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
                let (rows, n) = (out.rows(), out.tokens());
                if n == 0 {
                    return;
                }
                let cols = xq.len() / n;
                let groups = cols / 32;
                let rows4 = rows / 4 * 4;
                let (w, s) = (wq.as_ptr(), ws.as_ptr());
                let mut b = 0;
                while b < n {
                    let t = if n - b >= 4 { 4 } else { 1 };
                    let (x, xsb) = (xq.as_ptr().add(b * cols), xs.as_ptr().add(b * groups));
                    if t == 4 {
                        let mut o = out.tokens_at::<4>(b);
                        for r in 0..rows {
                            let sums = row::<4>(w.add(r * cols), s.add(r * groups), x, xsb, groups, r < rows4);
                            for (o, v) in o.iter_mut().zip(sums) {
                                o[r] = v;
                            }
                        }
                    } else {
                        let o = out.token(b);
                        for (r, o) in o.iter_mut().enumerate() {
                            *o = row::<1>(w.add(r * cols), s.add(r * groups), x, xsb, groups, r < rows4)[0];
                        }
                    }
                    b += t;
                }
            }

            /// One weight row (`w: [cols]`, `ws: [groups]`) against `T` tokens
            /// (`xq: [T·cols]`, `xs: [T·groups]`); `in_block`: the row's sum is
            /// reduced as `block::<4>` does, else as `block::<1>`.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn row<const T: usize>(
                w: *const i8,
                ws: *const u16,
                xq: *const i8,
                xs: *const f32,
                groups: usize,
                in_block: bool,
            ) -> [f32; 4] {
                let cols = groups * 32;
                let mut acc = [vdupq_n_f32(0.0); T];
                let mut g0 = 0;
                while g0 < groups {
                    let n = if groups - g0 >= 4 { 4 } else { groups - g0 };
                    if n == 4 {
                        let at = g0 * 32;
                        let mut wv = [vdupq_n_s8(0); 8];
                        for (k, wv) in wv.iter_mut().enumerate() {
                            *wv = vld1q_s8(w.add(at + 16 * k));
                        }
                        let wsc = f16x4_to_f32(vld1_u16(ws.add(g0)));
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let x = xq.add(t * cols + at);
                            let mut d = [vdupq_n_s32(0); 4];
                            for (k, d) in d.iter_mut().enumerate() {
                                *d = dot(
                                    wv[2 * k],
                                    wv[2 * k + 1],
                                    vld1q_s8(x.add(32 * k)),
                                    vld1q_s8(x.add(32 * k + 16)),
                                );
                            }
                            let s = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
                            // ws·xs per group, as `block`'s `sc` (the same f32 products)
                            let sc = vmulq_f32(wsc, vld1q_f32(xs.add(t * groups + g0)));
                            *acc = vfmaq_f32(*acc, vcvtq_f32_s32(s), sc);
                        }
                        g0 += 4;
                        continue;
                    }
                    for j in 0..n {
                        let at = (g0 + j) * 32;
                        let (w0, w1) = (vld1q_s8(w.add(at)), vld1q_s8(w.add(at + 16)));
                        let wsc = f16_to_f32(*ws.add(g0 + j));
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let x = xq.add(t * cols + at);
                            let d = dot(w0, w1, vld1q_s8(x), vld1q_s8(x.add(16)));
                            let isum = vsetq_lane_s32::<0>(vaddvq_s32(d), vdupq_n_s32(0));
                            *acc = vfmaq_n_f32(*acc, vcvtq_f32_s32(isum), wsc * *xs.add(t * groups + g0 + j));
                        }
                    }
                    g0 += n;
                }
                let mut sums = [0f32; 4];
                if in_block {
                    let a = |t: usize| acc[t.min(T - 1)];
                    let all = vpaddq_f32(vpaddq_f32(a(0), a(1)), vpaddq_f32(a(2), a(3)));
                    vst1q_f32(sums.as_mut_ptr(), all);
                } else {
                    for (t, a) in acc.iter().enumerate() {
                        sums[t] = vaddvq_f32(*a);
                    }
                }
                sums
            }
        }
    };
}

q8_matvec!(q8_neon, "neon", |w0, w1, x0, x1| {
    let lo = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), vget_low_s8(w1), vget_low_s8(x1));
    let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
    vpadalq_s16(vpaddlq_s16(lo), hi)
});
q8_matvec!(q8_dotprod, "neon,dotprod", |w0, w1, x0, x1| sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1));
