//! q4 matvec (4-bit weights, q8 activations) on NEON and NEON + dotprod.
//!
//! A group's 16 bytes become two i8 vectors with one mask, one shift and two
//! subtractions (`nibble − 8`): low nibbles are elements 0–15, high nibbles
//! 16–31, so they line up with the two 16-byte halves of the activation
//! group. From there the scheme is the q8 one (`smull`/`sadalp` or `sdot`
//! into exact i32 lanes, four groups folded with `addp`, one convert and one
//! FMA by `ws·xs`, four rows at a time).

macro_rules! q4_matvec {
    ($module:ident, $feat:literal, |$w0:ident, $w1:ident, $x0:ident, $x1:ident| $dot:expr) => {
        pub(super) mod $module {
            use core::arch::aarch64::*;

            #[allow(unused_imports)]
            use super::super::{f16x4_to_f32, sdot};
            use crate::kernels::{f16_to_f32, TileOut};

            /// Four i32 lanes summing to the group's exact dot product.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn dot($w0: int8x16_t, $w1: int8x16_t, $x0: int8x16_t, $x1: int8x16_t) -> int32x4_t {
                $dot
            }

            /// One group's weights (16 bytes at `p`): elements 0–15 and 16–31 as i8 in [-8, 7].
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn unpack(p: *const u8) -> (int8x16_t, int8x16_t) {
                let b = vld1q_u8(p);
                let eight = vdupq_n_s8(8);
                let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f))), eight);
                let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(b)), eight);
                (lo, hi)
            }

            /// Caller guarantees the CPU features and slice lengths (`check_q4`).
            #[target_feature(enable = $feat)]
            pub unsafe fn matvec(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
                let cols = xq.len();
                let groups = cols / 32;
                let rows = out.len();
                let (o, w, s) = (out.as_mut_ptr(), wq.as_ptr(), ws.as_ptr());
                let mut r = 0;
                while r + 4 <= rows {
                    block::<4>(o.add(r), w.add(r * cols / 2), s.add(r * groups), xq.as_ptr(), xs.as_ptr(), groups);
                    r += 4;
                }
                while r < rows {
                    block::<1>(o.add(r), w.add(r * cols / 2), s.add(r * groups), xq.as_ptr(), xs.as_ptr(), groups);
                    r += 1;
                }
            }

            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn block<const R: usize>(
                out: *mut f32,
                w: *const u8,
                ws: *const u16,
                xq: *const i8,
                xs: *const f32,
                groups: usize,
            ) {
                let row_bytes = groups * 16;
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
                        // four groups: pairwise adds fold their lanes into one
                        // vector (lane k = group g0+k) for one convert + one FMA
                        let at = g0 * 32;
                        let mut x = [vdupq_n_s8(0); 8];
                        for (k, x) in x.iter_mut().enumerate() {
                            *x = vld1q_s8(xq.add(at + 16 * k));
                        }
                        for r in 0..R {
                            let p = w.add(r * row_bytes + g0 * 16);
                            let mut d = [vdupq_n_s32(0); 4];
                            for (k, d) in d.iter_mut().enumerate() {
                                let (lo, hi) = unpack(p.add(16 * k));
                                *d = dot(lo, hi, x[2 * k], x[2 * k + 1]);
                            }
                            let s = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
                            acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(s), vld1q_f32(sc[r].as_ptr()));
                        }
                        g0 += 4;
                        continue;
                    }
                    for (r, sc) in sc.iter_mut().enumerate() {
                        for (j, sc) in sc.iter_mut().enumerate().take(n) {
                            *sc = f16_to_f32(*ws.add(r * groups + g0 + j)) * *xs.add(g0 + j);
                        }
                    }
                    for j in 0..n {
                        let at = (g0 + j) * 32;
                        let x0 = vld1q_s8(xq.add(at));
                        let x1 = vld1q_s8(xq.add(at + 16));
                        for r in 0..R {
                            let (lo, hi) = unpack(w.add(r * row_bytes + (g0 + j) * 16));
                            let d = dot(lo, hi, x0, x1);
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

            /// The batched form of [`matvec`] (`Kernels::matmul_q4`), as the q8
            /// one: a weight row unpacked once per four tokens, per row and
            /// token [`block`]'s f32 operations in its order, each sum reduced
            /// as `matvec` reduces that row: bit-identical.
            /// Caller guarantees the CPU features and slice lengths (`check_q4_tile`).
            #[target_feature(enable = $feat)]
            pub unsafe fn matmul(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
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
                            let sums = row::<4>(w.add(r * cols / 2), s.add(r * groups), x, xsb, groups, r < rows4);
                            for (o, v) in o.iter_mut().zip(sums) {
                                o[r] = v;
                            }
                        }
                    } else {
                        let o = out.token(b);
                        for (r, o) in o.iter_mut().enumerate() {
                            *o = row::<1>(w.add(r * cols / 2), s.add(r * groups), x, xsb, groups, r < rows4)[0];
                        }
                    }
                    b += t;
                }
            }

            /// One weight row (`w: [groups·16]`, `ws: [groups]`) against `T`
            /// tokens (`xq: [T·cols]`, `xs: [T·groups]`); `in_block`: reduced
            /// as `block::<4>` does, else as `block::<1>`.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn row<const T: usize>(
                w: *const u8,
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
                        let u = [0, 1, 2, 3].map(|k| unpack(w.add((g0 + k) * 16)));
                        let wsc = f16x4_to_f32(vld1_u16(ws.add(g0)));
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let x = xq.add(t * cols + g0 * 32);
                            let mut d = [vdupq_n_s32(0); 4];
                            for (k, d) in d.iter_mut().enumerate() {
                                *d = dot(u[k].0, u[k].1, vld1q_s8(x.add(32 * k)), vld1q_s8(x.add(32 * k + 16)));
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
                        let g = g0 + j;
                        let (lo, hi) = unpack(w.add(g * 16));
                        let wsc = f16_to_f32(*ws.add(g));
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let x = xq.add(t * cols + g * 32);
                            let d = dot(lo, hi, vld1q_s8(x), vld1q_s8(x.add(16)));
                            let isum = vsetq_lane_s32::<0>(vaddvq_s32(d), vdupq_n_s32(0));
                            *acc = vfmaq_n_f32(*acc, vcvtq_f32_s32(isum), wsc * *xs.add(t * groups + g));
                        }
                    }
                    g0 += n;
                }
                let mut sums = [0f32; 4];
                if in_block {
                    let a = |t: usize| acc[t.min(T - 1)];
                    vst1q_f32(sums.as_mut_ptr(), vpaddq_f32(vpaddq_f32(a(0), a(1)), vpaddq_f32(a(2), a(3))));
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

q4_matvec!(q4_neon, "neon", |w0, w1, x0, x1| {
    let lo = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), vget_low_s8(w1), vget_low_s8(x1));
    let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
    vpadalq_s16(vpaddlq_s16(lo), hi)
});
q4_matvec!(q4_dotprod, "neon,dotprod", |w0, w1, x0, x1| sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1));
