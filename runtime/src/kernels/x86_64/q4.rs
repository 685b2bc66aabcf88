//! q4 matvec (4-bit weights, q8 activations) at 256-bit width, one module per
//! dot-product instruction (the AVX2, AVX-VNNI and AVX-512 VNNI tables' decode).
//!
//! A group's 16 bytes are unpacked with one shift and one mask into 32
//! unsigned nibbles `u = q + 8` in element order (low nibbles = elements
//! 0–15 in the low 128-bit lane, high nibbles = 16–31 in the high lane, which
//! is why the format packs them that way). The offset is taken out in
//! integers with a per-group correction that depends only on the
//! activations, computed once per group for a block of four rows:
//! - AVX2: `vpmaddubsw(u, x)` (u8 × i8 pairs, ≤ 2·15·127: no saturation)
//!   minus `vpmaddubsw(8, x)` in i16 (the difference `Σ (u − 8)·x` of a pair
//!   lies in ±2·8·127), then `vpmaddwd` by 1 into i32;
//! - VNNI: `vpdpbusd(−8·Σx, u, x)`, the accumulator starting at the
//!   correction (VEX AVX-VNNI, or EVEX AVX-512 VNNI at 256 bits).
//!
//! Either way each group yields eight exact i32 partial sums of the
//! reference's group sum; from there the scheme is the q8 one (four groups
//! folded with unpack + add, one convert and one FMA by `ws·xs`), so the f32
//! result differs from the reference only in the order of f32 operations.
//! The batched forms are `../lanes_avx2.rs` and `../lanes.rs` (tokens in the
//! lanes, their own f32 order).
//!
//! The AVX2 table's matvec (`octets: true`) takes the groups eight at a time
//! where it can: a pair of quads reduced to eight whole-group sums in element
//! order (the halves added in integers), so one convert, one multiply and one
//! FMA serve eight groups, and the paired-load matvec's reduction needs half
//! its `vpmaddwd`s (where `vpmaddubsw`/`vpmaddwd` share two pipes of Zen 3 and
//! bound the loop). Its f32 order is then: the octets, the quad left over
//! (half sums, as above), the single groups.

/// Widest row (columns) whose prepared activations [`PairX`] holds; wider
/// matrices take the per-group path.
const PAIR_COLS: usize = 4096;

/// A matvec's activations rearranged per quad for the paired-load kernel
/// (`x: [PAIR_COLS/32]` vectors, `c: [PAIR_COLS/128]` corrections, `s:
/// [PAIR_COLS/128]` activation scales of a quad in both halves; with octets,
/// `c8: [PAIR_COLS/256]` an octet's corrections in [`octet_sum`]'s layout):
/// 6.5 KiB on the stack.
#[repr(C, align(32))]
struct PairX {
    x: [[u8; 32]; PAIR_COLS / 32],
    c: [[u8; 32]; PAIR_COLS / 128],
    s: [[f32; 8]; PAIR_COLS / 128],
    c8: [[u8; 32]; PAIR_COLS / 256],
}

macro_rules! q4_matvec {
    ($(#[$attr:meta])* $module:ident, $feat:literal, pairs: $pairs:literal, pair_rows: $pair_rows:literal, octets: $octets:literal, corr: |$cx:ident| $corr:expr, dot: |$u:ident, $x:ident, $c:ident| $dot:expr) => {
        $(#[$attr])*
        pub(super) mod $module {
            use core::arch::x86_64::*;

            use super::super::{dup128, f16_scalar, fold4, hsum, prefetch_block_after_next, store4};
            use super::{PairX, PAIR_COLS};

            /// Row-independent part of a group's dot product (the `−8·Σx` correction).
            #[target_feature(enable = $feat)]
            #[inline]
            pub(super) unsafe fn corr($cx: __m256i) -> __m256i {
                $corr
            }

            /// Eight i32 lanes summing to `Σ (u − 8)·x` over one group.
            #[target_feature(enable = $feat)]
            #[inline]
            pub(super) unsafe fn dot($u: __m256i, $x: __m256i, $c: __m256i) -> __m256i {
                $dot
            }

            /// 32 nibbles of one group (16 bytes at `p`) as u8 in element order.
            #[target_feature(enable = $feat)]
            #[inline]
            pub(super) unsafe fn unpack(p: *const u8) -> __m256i {
                let b = _mm_loadu_si128(p as *const __m128i);
                _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f))
            }

            /// The whole-group sums of an octet in element order from its two
            /// quads' half sums `a`, `b` ([`fold4`]'s layout: lanes `k`, `k + 4`
            /// the halves of group `k`). Exact.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn whole8(a: __m256i, b: __m256i) -> __m256i {
                _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b))
            }

            /// Caller guarantees the CPU features and slice lengths (`check_q4`).
            #[target_feature(enable = $feat)]
            pub unsafe fn matvec(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
                let cols = xq.len();
                let groups = cols / 32;
                let rows = out.len();
                let (o, w, s) = (out.as_mut_ptr(), wq.as_ptr(), ws.as_ptr());
                if $pairs && groups >= 4 && cols <= PAIR_COLS {
                    // the activations of every quad rearranged once for all rows
                    let mut px = core::mem::MaybeUninit::<PairX>::uninit();
                    let px = px.as_mut_ptr();
                    let xp = core::ptr::addr_of_mut!((*px).x) as *mut __m256i;
                    let cp = core::ptr::addr_of_mut!((*px).c) as *mut __m256i;
                    let xsp = core::ptr::addr_of_mut!((*px).s) as *mut __m256;
                    let c8p = core::ptr::addr_of_mut!((*px).c8) as *mut __m256i;
                    for q in 0..groups / 4 {
                        let x = pair_x(xq.as_ptr().add(q * 128));
                        let e = _mm256_set1_epi8(8);
                        let c = _mm256_sub_epi32(_mm256_setzero_si256(), pair_sum([e; 4], x));
                        for (k, x) in x.into_iter().enumerate() {
                            _mm256_store_si256(xp.add(4 * q + k), x);
                        }
                        _mm256_store_si256(cp.add(q), c);
                        _mm256_store_ps(xsp.add(q) as *mut f32, dup128(_mm_loadu_ps(xs.as_ptr().add(4 * q))));
                    }
                    let octets = if $octets { groups / 8 } else { 0 };
                    for j in 0..octets {
                        let x = [0, 1, 2, 3, 4, 5, 6, 7].map(|k| _mm256_load_si256(xp.add(8 * j + k)));
                        let e = _mm256_set1_epi8(8);
                        _mm256_store_si256(c8p.add(j), _mm256_sub_epi32(_mm256_setzero_si256(), octet_sum([e; 8], x)));
                    }
                    let mut r = 0;
                    while $pair_rows == 4 && r + 4 <= rows {
                        let (w, s) = (w.add(r * cols / 2), s.add(r * groups));
                        block_pairs::<4>(o.add(r), w, s, xq.as_ptr(), xs.as_ptr(), xp, cp, xsp, c8p, groups);
                        r += 4;
                    }
                    while r < rows {
                        let (w, s) = (w.add(r * cols / 2), s.add(r * groups));
                        block_pairs::<1>(o.add(r), w, s, xq.as_ptr(), xs.as_ptr(), xp, cp, xsp, c8p, groups);
                        r += 1;
                    }
                    return;
                }
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

            /// Activations of quad `g..g + 4` (128 bytes at `x`) arranged as
            /// [`pair_nibbles`] unpacks two 32-byte loads of weights:
            /// `[g lo | g+1 lo]`, `[g hi | g+1 hi]`, `[g+2 lo | g+3 lo]`,
            /// `[g+2 hi | g+3 hi]` (lo/hi: elements 0–15 / 16–31).
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn pair_x(x: *const i8) -> [__m256i; 4] {
                let v = [0, 1, 2, 3].map(|k| _mm256_loadu_si256(x.add(32 * k) as *const __m256i));
                [
                    _mm256_permute2x128_si256::<0x20>(v[0], v[1]),
                    _mm256_permute2x128_si256::<0x31>(v[0], v[1]),
                    _mm256_permute2x128_si256::<0x20>(v[2], v[3]),
                    _mm256_permute2x128_si256::<0x31>(v[2], v[3]),
                ]
            }

            /// The nibbles of quad `g..g + 4` (64 bytes at `p`) with one
            /// 32-byte load per two groups and the shift shared by both:
            /// the layout of [`pair_x`].
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn pair_nibbles(p: *const u8) -> [__m256i; 4] {
                let m = _mm256_set1_epi8(0x0f);
                let v0 = _mm256_loadu_si256(p as *const __m256i);
                let v1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
                [
                    _mm256_and_si256(v0, m),
                    _mm256_and_si256(_mm256_srli_epi16(v0, 4), m),
                    _mm256_and_si256(v1, m),
                    _mm256_and_si256(_mm256_srli_epi16(v1, 4), m),
                ]
            }

            /// `Σ u·x` per (group, half) of a quad in [`pair_x`]'s layout, as
            /// i32 lanes `[g lo, g+2 lo, g hi, g+2 hi | g+1 lo, g+3 lo, g+1 hi,
            /// g+3 hi]`. Every 128-bit lane of a product belongs to one (group,
            /// half), so the sums are halved level by level within lanes:
            /// `vpmaddwd` by 1 to i32, `vpackssdw` of two vectors back to i16
            /// (|Σ| ≤ 4·15·128 = 7 680, then 15 360: never saturates), and
            /// again. Exact. (Three `vphaddw` instead are fewer instructions but
            /// two cycles each on one FP pipe of Zen 3: `llvm-mca -mcpu=znver3`
            /// puts a four-row quad at 30.2 cycles this way, 32.0 that way.)
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn pair_sum(u: [__m256i; 4], x: [__m256i; 4]) -> __m256i {
                let one = _mm256_set1_epi16(1);
                let p = [0, 1, 2, 3].map(|k| _mm256_madd_epi16(_mm256_maddubs_epi16(u[k], x[k]), one));
                let q0 = _mm256_madd_epi16(_mm256_packs_epi32(p[0], p[2]), one);
                let q1 = _mm256_madd_epi16(_mm256_packs_epi32(p[1], p[3]), one);
                _mm256_madd_epi16(_mm256_packs_epi32(q0, q1), one)
            }

            /// `Σ u·x` per whole group of an octet (two quads, eight vectors
            /// each of [`pair_x`]'s layout), as i32 lanes `[g, g+2, g+4, g+6 |
            /// g+1, g+3, g+5, g+7]` (`vpermd` by `[0, 4, 1, 5, 2, 6, 3, 7]` puts
            /// them in element order). A product's two halves are added in i16 first (each
            /// 128-bit lane of the sum is one whole group; |Σ| ≤ 4·15·127 =
            /// 7 620), then halved level by level as [`pair_sum`] does (15 240,
            /// 30 480, 60 960: never saturates). Exact. Per octet 8
            /// `vpmaddubsw`, 7 `vpmaddwd` and 3 `vpackssdw`, where two
            /// [`pair_sum`]s take 8, 14 and 6.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn octet_sum(u: [__m256i; 8], x: [__m256i; 8]) -> __m256i {
                let one = _mm256_set1_epi16(1);
                let m = [0, 1, 2, 3].map(|k| {
                    let a = _mm256_maddubs_epi16(u[2 * k], x[2 * k]);
                    _mm256_madd_epi16(_mm256_add_epi16(a, _mm256_maddubs_epi16(u[2 * k + 1], x[2 * k + 1])), one)
                });
                let q0 = _mm256_madd_epi16(_mm256_packs_epi32(m[0], m[1]), one);
                let q1 = _mm256_madd_epi16(_mm256_packs_epi32(m[2], m[3]), one);
                _mm256_madd_epi16(_mm256_packs_epi32(q0, q1), one)
            }

            /// As [`block`], rows `R` at a time, with the quads' activations
            /// prepared once per matvec (`xp: [groups/4 · 4]` from [`pair_x`],
            /// `cp: [groups/4]` their `−8·Σx` in [`pair_sum`]'s layout): per
            /// (row, quad) two 32-byte loads, 4 masks, 2 shifts, 4 `vpmaddubsw`,
            /// 7 `vpmaddwd`, 3 `vpackssdw`, add and one `vpermd` to [`fold4`]'s
            /// lane layout (where [`block`] spends 4 loads + inserts, 4 shifts,
            /// 4 masks, 12 multiply/subtract ops and 9 for the fold). The
            /// i32 lanes are the same exact sums, and the f32 operations (scales,
            /// converts, FMAs, single groups, reduction) are [`block`]'s in its
            /// order: bit-identical to it.
            #[target_feature(enable = $feat)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn block_pairs<const R: usize>(
                out: *mut f32,
                w: *const u8,
                ws: *const u16,
                xq: *const i8,
                xs: *const f32,
                xp: *const __m256i,
                cp: *const __m256i,
                xsp: *const __m256,
                c8p: *const __m256i,
                groups: usize,
            ) {
                let row_bytes = groups * 16;
                if R == 4 {
                    prefetch_block_after_next(w, R * row_bytes);
                }
                // [g lo, g+2 lo, g hi, g+2 hi | g+1 lo, …] → lanes k, k+4 = group g+k's halves;
                // [g, g+2, g+4, g+6 | g+1, …] → lane k = group g+k
                let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                let mut acc = [_mm256_setzero_ps(); R];
                // [`block`]'s order: the octets, the quad left over, the single groups
                let quads = groups / 4;
                let octets = if $octets { quads / 2 } else { 0 };
                for j in 0..octets {
                    let x = [0, 1, 2, 3, 4, 5, 6, 7].map(|k| _mm256_load_si256(xp.add(8 * j + k)));
                    let c = _mm256_load_si256(c8p.add(j));
                    let xs8 = _mm256_loadu_ps(xs.add(8 * j));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let p = w.add(r * row_bytes + j * 128);
                        let (u0, u1) = (pair_nibbles(p), pair_nibbles(p.add(64)));
                        let u = [u0[0], u0[1], u0[2], u0[3], u1[0], u1[1], u1[2], u1[3]];
                        let s = _mm256_permutevar8x32_epi32(_mm256_add_epi32(octet_sum(u, x), c), order);
                        let h = _mm_loadu_si128(ws.add(r * groups + 8 * j) as *const __m128i);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(_mm256_cvtph_ps(h), xs8), *acc);
                    }
                }
                for q in 2 * octets..quads {
                    let (x, c) = (xp.add(4 * q), _mm256_load_si256(cp.add(q)));
                    let x = [0, 1, 2, 3].map(|k| _mm256_load_si256(x.add(k)));
                    let xsq = _mm256_load_ps(xsp.add(q) as *const f32);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let u = pair_nibbles(w.add(r * row_bytes + q * 64));
                        let s = _mm256_permutevar8x32_epi32(_mm256_add_epi32(pair_sum(u, x), c), order);
                        // ws·xs of the four groups in both halves: `block`'s `sc` products
                        let h = _mm_set1_epi64x((ws.add(r * groups + 4 * q) as *const i64).read_unaligned());
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(_mm256_cvtph_ps(h), xsq), *acc);
                    }
                }
                for g in 4 * quads..groups {
                    let xv = _mm256_loadu_si256(xq.add(g * 32) as *const __m256i);
                    let c = corr(xv);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let p = _mm256_cvtepi32_ps(dot(unpack(w.add(r * row_bytes + g * 16)), xv, c));
                        let d = f16_scalar(*ws.add(r * groups + g)) * *xs.add(g);
                        *acc = _mm256_fmadd_ps(p, _mm256_set1_ps(d), *acc);
                    }
                }
                if R == 4 {
                    store4(out, acc[0], acc[1], acc[2], acc[3]);
                } else {
                    for (r, a) in acc.iter().enumerate() {
                        *out.add(r) = hsum(*a);
                    }
                }
            }

            /// `R` consecutive rows (`w: [R·groups·16]`, `ws: [R·groups]`).
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
                if R == 4 {
                    prefetch_block_after_next(w, R * row_bytes);
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
                    if $octets && n == 8 {
                        let x = [0, 1, 2, 3, 4, 5, 6, 7]
                            .map(|k| _mm256_loadu_si256(xq.add((g0 + k) * 32) as *const __m256i));
                        let c = x.map(|x| corr(x));
                        for r in 0..R {
                            let p = w.add(r * row_bytes + g0 * 16);
                            let d = [0, 1, 2, 3, 4, 5, 6, 7].map(|k| dot(unpack(p.add(16 * k)), x[k], c[k]));
                            let s = whole8(fold4([d[0], d[1], d[2], d[3]]), fold4([d[4], d[5], d[6], d[7]]));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_loadu_ps(sc[r].as_ptr()), acc[r]);
                        }
                        j = 8;
                    }
                    while j + 4 <= n {
                        let g = g0 + j;
                        let x = [0, 1, 2, 3].map(|k| _mm256_loadu_si256(xq.add((g + k) * 32) as *const __m256i));
                        let c = x.map(|x| corr(x));
                        for r in 0..R {
                            let p = w.add(r * row_bytes + g * 16);
                            let p0 = dot(unpack(p), x[0], c[0]);
                            let p1 = dot(unpack(p.add(16)), x[1], c[1]);
                            let p2 = dot(unpack(p.add(32)), x[2], c[2]);
                            let p3 = dot(unpack(p.add(48)), x[3], c[3]);
                            let s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p0, p1), _mm256_unpackhi_epi32(p0, p1));
                            let s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p2, p3), _mm256_unpackhi_epi32(p2, p3));
                            let s = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
                            // lanes k and k+4 hold halves of group j+k's exact i32 sum
                            let d = _mm256_broadcast_ps(&*(sc[r].as_ptr().add(j) as *const __m128));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[r]);
                        }
                        j += 4;
                    }
                    while j < n {
                        let g = g0 + j;
                        let xv = _mm256_loadu_si256(xq.add(g * 32) as *const __m256i);
                        let c = corr(xv);
                        for r in 0..R {
                            let p = _mm256_cvtepi32_ps(dot(unpack(w.add(r * row_bytes + g * 16)), xv, c));
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

// `pair_rows: 1`: an octet's eight activation vectors held for a block of
// four rows left too few of the sixteen registers (LLVM spilled the rest);
// one row at a time, the activations as memory operands, the matvec ran
// 12–15 % faster (15M shapes, simultaneous A/B, docs/BENCHMARKS.md stop 36).
q4_matvec!(q4_avx2, "avx2,fma,f16c", pairs: true, pair_rows: 1, octets: true,
corr: |x| _mm256_maddubs_epi16(_mm256_set1_epi8(8), x),
dot: |u, x, c| _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u, x), c), _mm256_set1_epi16(1)));
q4_matvec!(q4_avxvnni, "avx2,fma,f16c,avxvnni", pairs: false, pair_rows: 4, octets: false,
corr: |x| _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(8), x)),
dot: |u, x, c| _mm256_dpbusd_avx_epi32(c, u, x));
// The matvec takes the paired-load path here too (`vpmaddubsw` pairs, not
// `vpdpbusd`): on Zen 5 it decodes the 15M shape 1.22× faster at one thread
// and, unlike the per-group `block` form (which gained nothing from a second
// thread there), 1.4× faster again at two (docs/BENCHMARKS.md). Bit-identical
// either way.
q4_matvec!(q4_avx512vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", pairs: true, pair_rows: 4, octets: false,
corr: |x| _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(8), x)),
dot: |u, x, c| _mm256_dpbusd_epi32(c, u, x));
