//! Numeric kernels. `reference` is the scalar truth every SIMD path is
//! tested against; a [`Kernels`] table of function pointers is chosen once.
//!
//! Paths (names accepted by `EDGELM_KERNELS`):
//!
//! | name | ISA | chosen when |
//! |---|---|---|
//! | `reference` | scalar Rust | always available |
//! | `avx2` | x86_64 AVX2 + FMA + F16C | CPU has them |
//! | `avxvnni` | `avx2` with VEX `vpdpbusd` (AVX-VNNI) | CPU has AVX-VNNI |
//! | `avx512vnni` | `avx2` with EVEX `vpdpbusd`: 512-bit q8 matvec and q4 batched product (AVX-512 F/BW/VL/VNNI) | CPU has them (preferred) |
//! | `neon` | aarch64 NEON (`smull`/`sadalp`): Cortex-A53/A72 (Pi 3, Pi 4) | every aarch64 CPU |
//! | `dotprod` | `neon` with `sdot`: Cortex-A76/A78 (Pi 5, Jetson Orin) | CPU has the dotprod extension |
//!
//! Selection: with `std`, [`best`] detects CPU features at run time once
//! (`is_x86_feature_detected!` / `is_aarch64_feature_detected!`) and honours
//! the environment variable `EDGELM_KERNELS=<name>`. A name that is unknown
//! or unsupported by this CPU falls back to the detected best path (the
//! library never prints: [`from_env`] says what was wrong, for a caller that
//! wants to warn); [`select`] is the fallible form. Without `std`, the table is fixed at compile time from
//! `cfg(target_feature)` (e.g. `-C target-feature=+dotprod` for a Pi 5
//! firmware). No path needs `-C target-cpu=native`.
//!
//! Integer results of every q8 and q4 path are exactly those of the reference
//! (the same per-group `i32` sums); f32 results may differ in summation
//! order (bounds are stated in `runtime/tests/kernels.rs`).

/// `attn_values2` (and its f16 and q8 forms) of a table without a pair
/// kernel: the table's single kernel twice, which is what the pair kernels
/// promise bit for bit.
macro_rules! attn_pairs_of_singles {
    ($vis:vis $name:ident = $single:path, $ty:ty) => {
        #[doc = concat!("`", stringify!($single), "` for two weightings (see [`crate::kernels::Kernels::attn_values2`]).")]
        $vis fn $name(out: [&mut [f32]; 2], att: [&[f32]; 2], values: &[$ty], stride: usize) {
            let [o0, o1] = out;
            $single(o0, att[0], values, stride);
            $single(o1, att[1], values, stride);
        }
    };
}
pub(crate) use attn_pairs_of_singles;

/// The safe wrappers of a SIMD table's f32 kernels, shared by the x86_64 and
/// aarch64 modules: slice checks, then the invoking module's `unsafe`
/// primitives `dot`, `dot_f16`, `scale_mul`, `quantize_q8_simd`,
/// `softmax_simd`, `rope_simd` (one head of a multiple of `$rope_step` floats;
/// other head sizes use the reference), `swiglu_simd`, `dot_i8`, `attn_values_simd`,
/// `attn_values_f16_simd` and `attn_values_i8_simd`.
/// Sound only where the module hands its tables out after detecting the
/// features those primitives enable.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! simd_f32_wrappers {
    (rope_step: $rope_step:expr) => {
        fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
            let cols = x.len();
            assert!(w.len() >= out.len() * cols);
            for (r, o) in out.iter_mut().enumerate() {
                // SAFETY: detected tables only; row `r` lies inside `w` (checked).
                *o = unsafe { dot(w.as_ptr().add(r * cols), x.as_ptr(), cols) };
            }
        }

        fn matvec_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
            let cols = x.len();
            assert!(w.len() >= out.len() * cols);
            for (r, o) in out.iter_mut().enumerate() {
                // SAFETY: detected tables only; row `r` lies inside `w` (checked).
                *o = unsafe { dot_f16(w.as_ptr().add(r * cols), x.as_ptr(), cols) };
            }
        }

        fn quantize_q8(x: &[f32], q: &mut [i8], s: &mut [f32]) {
            let groups = (x.len() / 32).min(q.len() / 32).min(s.len());
            // SAFETY: detected tables only; `groups` groups fit every slice.
            unsafe { quantize_q8_simd(x.as_ptr(), q.as_mut_ptr(), s.as_mut_ptr(), groups) }
        }

        fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
            // SAFETY: detected tables only; the sum reads `x` within its length.
            let ss = unsafe { dot(x.as_ptr(), x.as_ptr(), x.len()) } / x.len() as f32;
            let inv = 1.0 / libm::sqrtf(ss + eps);
            let n = out.len().min(x.len()).min(w.len());
            // SAFETY: detected tables only; `n` bounds all three slices.
            unsafe { scale_mul(out.as_mut_ptr(), x.as_ptr(), w.as_ptr(), inv, n) }
        }

        fn softmax(x: &mut [f32]) {
            // SAFETY: detected tables only; pointer and length come from one slice.
            unsafe { softmax_simd(x.as_mut_ptr(), x.len()) }
        }

        fn rope(x: &mut [f32], rope: &[f32], head_dim: usize) {
            if !head_dim.is_multiple_of($rope_step) || rope.len() < head_dim {
                return $crate::kernels::reference::rope(x, rope, head_dim);
            }
            for head in x.chunks_exact_mut(head_dim) {
                // SAFETY: detected tables only; `head` and `rope` hold `head_dim` floats.
                unsafe { rope_simd(head.as_mut_ptr(), rope.as_ptr(), head_dim) }
            }
        }

        fn swiglu(g: &mut [f32], u: &[f32]) {
            let n = g.len().min(u.len());
            // SAFETY: detected tables only; `n` bounds both slices.
            unsafe { swiglu_simd(g.as_mut_ptr(), u.as_ptr(), n) }
        }

        fn attn_scores(att: &mut [f32], q: &[f32], keys: &[f32], stride: usize, scale: f32) {
            let hd = q.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(keys.len() >= last * stride + hd, "attn_scores: keys too short");
            }
            for (t, a) in att.iter_mut().enumerate() {
                // SAFETY: detected tables only; key `t` lies inside `keys` (checked above).
                *a = unsafe { dot(q.as_ptr(), keys.as_ptr().add(t * stride), hd) } * scale;
            }
        }

        fn attn_scores_f16(att: &mut [f32], q: &[f32], keys: &[u16], stride: usize, scale: f32) {
            let hd = q.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(keys.len() >= last * stride + hd, "attn_scores_f16: keys too short");
            }
            for (t, a) in att.iter_mut().enumerate() {
                // SAFETY: detected tables only; key `t` lies inside `keys` (checked above).
                *a = unsafe { dot_f16(keys.as_ptr().add(t * stride), q.as_ptr(), hd) } * scale;
            }
        }

        fn attn_values_f16(out: &mut [f32], att: &[f32], values: &[u16], stride: usize) {
            let hd = out.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(values.len() >= last * stride + hd, "attn_values_f16: values too short");
            }
            // SAFETY: detected tables only; every value row read lies inside `values` (checked above).
            unsafe { attn_values_f16_simd(out.as_mut_ptr(), hd, att, values.as_ptr(), stride) }
        }

        fn attn_scores_q8(att: &mut [f32], q: &[f32], keys: &[i8], stride: usize, scale: f32) {
            let hd = q.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(keys.len() >= last * stride + hd, "attn_scores_q8: keys too short");
            }
            for (t, a) in att.iter_mut().enumerate() {
                // SAFETY: detected tables only; key `t` lies inside `keys` (checked above).
                *a = unsafe { dot_i8(keys.as_ptr().add(t * stride), q.as_ptr(), hd) } * scale;
            }
        }

        fn attn_values_q8(out: &mut [f32], att: &[f32], values: &[i8], stride: usize) {
            let hd = out.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(values.len() >= last * stride + hd, "attn_values_q8: values too short");
            }
            // SAFETY: detected tables only; every value row read lies inside `values` (checked above).
            unsafe { attn_values_i8_simd(out.as_mut_ptr(), hd, att, values.as_ptr(), stride) }
        }

        fn attn_values(out: &mut [f32], att: &[f32], values: &[f32], stride: usize) {
            let hd = out.len();
            if let Some(last) = att.len().checked_sub(1) {
                assert!(values.len() >= last * stride + hd, "attn_values: values too short");
            }
            // SAFETY: detected tables only; every value row read lies inside `values` (checked above).
            unsafe { attn_values_simd(out.as_mut_ptr(), hd, att, values.as_ptr(), stride) }
        }
    };
}

// why: the SIMD modules index within slices whose lengths their safe
// wrappers assert once per call (`check_q8`, `check_q4`, the tile checks,
// `simd_f32_wrappers!`); the rest of the crate denies unchecked indexing.
#[cfg(target_arch = "aarch64")]
#[allow(clippy::indexing_slicing)]
pub mod aarch64;
#[cfg(feature = "std")]
pub(crate) mod pool;
pub mod reference;
#[cfg(target_arch = "x86_64")]
#[allow(clippy::indexing_slicing)] // why: as for `aarch64` above
pub mod x86_64;

use crate::format::{Q4_GROUP, Q8_GROUP};

/// Rounds half away from zero (C `roundf`), the rounding of every quantizer here.
#[inline]
pub fn round_half_away(x: f32) -> f32 {
    libm::roundf(x)
}

/// IEEE half bits to f32.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

pub type MatvecQ8 = fn(out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]);
pub type MatvecQ4 = fn(out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]);
pub type MatmulQ8 = fn(out: &mut TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]);
pub type MatmulQ4 = fn(out: &mut TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]);
pub type MatvecF32 = fn(out: &mut [f32], w: &[f32], x: &[f32]);
pub type MatvecF16 = fn(out: &mut [f32], w: &[u16], x: &[f32]);
pub type QuantizeQ8 = fn(x: &[f32], q: &mut [i8], s: &mut [f32]);
pub type Rmsnorm = fn(out: &mut [f32], x: &[f32], w: &[f32], eps: f32);
pub type Softmax = fn(x: &mut [f32]);
pub type Rope = fn(x: &mut [f32], rope: &[f32], head_dim: usize);
pub type Swiglu = fn(g: &mut [f32], u: &[f32]);
pub type AttnScores = fn(att: &mut [f32], q: &[f32], keys: &[f32], stride: usize, scale: f32);
pub type AttnValues = fn(out: &mut [f32], att: &[f32], values: &[f32], stride: usize);
pub type AttnScoresF16 = fn(att: &mut [f32], q: &[f32], keys: &[u16], stride: usize, scale: f32);
pub type AttnValuesF16 = fn(out: &mut [f32], att: &[f32], values: &[u16], stride: usize);
pub type AttnScoresQ8 = fn(att: &mut [f32], q: &[f32], keys: &[i8], stride: usize, scale: f32);
pub type AttnValuesQ8 = fn(out: &mut [f32], att: &[f32], values: &[i8], stride: usize);
pub type AttnScores1T = fn(att: &mut [f32], q: &[f32], kt: &[f32], ld: usize, scale: f32);
pub type AttnScores2T = fn(att: [&mut [f32]; 2], q: [&[f32]; 2], kt: &[f32], ld: usize, scale: f32);
pub type KeysByDimF32 = fn(kt: &mut [f32], ld: usize, keys: &[f32], n: usize, stride: usize, hd: usize);

/// A table's attention scores from keys stored by dimension (a block's keys
/// transposed once per layer, `KvCache::keys_by_dim`, then read by every
/// query of the block: no horizontal sum per key), for one head or the two
/// heads of a KV group, which share each load of a key.
///
/// Their order is this path's own, not `attn_scores`': for key `t` and a
/// query `q` of `hd`, `e = fma(q[d], k[d], e)` over the even `d` in
/// increasing order from `e = 0`, `o` the same over the odd `d`, and the
/// score `(e + o)·scale`, all in f32 (a scalar model of it is in
/// `runtime/tests/kernels.rs`). A block's queries all take this path on a
/// table that has it, one head or two, so a (token, head) of a block gets
/// the same bits however the block is split over threads; against a
/// decoded token's `attn_scores` the difference is that of two orders of
/// one f32 dot product.
#[derive(Clone, Copy)]
pub struct ScoresByDim {
    /// `att[t] = (Σ_d q[d]·kt[d·ld + t])·scale` for `t < att.len()`, in the
    /// order above. `kt` holds `q.len()` rows of `ld` floats; `ld` and the
    /// last row reach the length rounded up to [`KEYS_BY_DIM_PAD`] (whole
    /// registers are read; entries past the keys are ignored).
    pub one: AttnScores1T,
    /// `one` for two queries (the same lengths) against the same keys, each
    /// with the bits `one` gives it.
    pub two: AttnScores2T,
    /// Stores `n` f32 keys (`hd` elements at `keys[t·stride..]`) by
    /// dimension: `kt[d·ld + t] = keys[t·stride + d]`, and may write zeros
    /// in each row up to `n` rounded up to [`KEYS_BY_DIM_PAD`] (`kt` sized
    /// as for `two`).
    pub store_f32: KeysByDimF32,
}
pub type AttnValues2 = fn(out: [&mut [f32]; 2], att: [&[f32]; 2], values: &[f32], stride: usize);
pub type AttnValues2F16 = fn(out: [&mut [f32]; 2], att: [&[f32]; 2], values: &[u16], stride: usize);
pub type AttnValues2Q8 = fn(out: [&mut [f32]; 2], att: [&[f32]; 2], values: &[i8], stride: usize);
pub type SumExp = fn(xs: &[f32], max: f32) -> f64;
pub type MaxF32 = fn(xs: &[f32]) -> f32;
pub type HeadNllQ8 = fn(nats: &mut [f64], wq: &[i8], ws: &[u16], rows: usize, xq: &[i8], xs: &[f32], targets: &[u32]);
pub type HeadNllQ4 = fn(nats: &mut [f64], wq: &[u8], ws: &[u16], rows: usize, xq: &[i8], xs: &[f32], targets: &[u32]);

/// Bits per byte's nats straight from a quantized head ([`Kernels::head_nll`]):
/// for each token `b < targets.len()` (its q8 activations `xq[b·cols..]`,
/// scales `xs[b·cols/32..]`), `nats[b] = ln Σ_{r < rows} e^{l_r} − l_t`
/// with `l` the logits `matmul_q8` (`matmul_q4`) gives for the head's
/// first `rows` rows and `t = targets[b]`, within 4e-6·max(nats, 1) of
/// that sum in f64. The logits are never stored. Panics if a target is not
/// below `rows`, a slice is too short or `cols` exceeds `max_cols`.
#[derive(Clone, Copy)]
pub struct HeadNll {
    pub q8: HeadNllQ8,
    pub q4: HeadNllQ4,
    /// The widest head rows the kernels take.
    pub max_cols: usize,
}

/// The f32 order of a table's batched quantized products (`matmul_q8`,
/// `matmul_q4`) for one row and token. The integer group sums `Σ w·x` are
/// exact in both; only the order of the f32 additions differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulOrder {
    /// The table's matvec's operations in its order, per token: a block's
    /// products are its decode's bit for bit, so a batched prompt leaves the
    /// logits and cache a token-by-token one leaves.
    Matvec,
    /// Group by group with one lane per token: `acc = fma(Σ_g w·x, ws·xs,
    /// acc)` for `g = 0, 1, …` from `acc = 0`, every product rounded once.
    /// Each (row, token) is one lane's work, so tiles and threads never
    /// change the bits; but they are not the matvec's: both lie within the
    /// dot-product bound `1e-5 · Σ_g |ws·xs|·Σ|w·x|` of the reference, and a
    /// batched prompt's logits differ from a token-by-token prompt's
    /// (`runtime/tests/batch.rs` states how far). Chosen where it is much
    /// the faster form (`x86_64/lanes.rs`, `x86_64/lanes_avx2.rs`).
    GroupsInOrder,
}

/// The kernels the forward pass calls. Every entry has a scalar twin in
/// [`reference`]; shapes are implied by slice lengths (documented per field).
pub struct Kernels {
    /// Name shown by `edgelm inspect` / `edgelm bench`.
    pub name: &'static str,
    /// `out[r] = Σ_g (Σ_i wq[r,g,i]·xq[g,i]) · (ws[r,g]·xs[g])`;
    /// `wq: [rows·cols]`, `ws: [rows·cols/32]` (f16 bits), `xq: [cols]`, `xs: [cols/32]`, `out: [rows]`.
    /// `xq` must lie in `[-127, 127]` (as [`Kernels::quantize_q8`] produces); `wq` may use all of `i8`.
    pub matvec_q8: MatvecQ8,
    /// `matvec_q8` for a block of tokens: `out.token(b)[r]` = row `r` of the
    /// weights applied to token `b`, for `r < out.rows()`, `b < out.tokens()`;
    /// `wq: [rows·cols]`, `ws: [rows·cols/32]`, `xq: [tokens·cols]` (token `b`
    /// at `b·cols`), `xs: [tokens·cols/32]`. The f32 order of each (row,
    /// token) is [`Kernels::matmul_order`]'s.
    pub matmul_q8: MatmulQ8,
    /// As `matvec_q8` with 4-bit weights: `wq: [rows·cols/2]` packed nibbles
    /// (group `g` of row `r` is bytes `16(r·cols/32 + g)..+16`; byte `j` holds
    /// element `j` low, `j + 16` high, each as `q + 8`, see
    /// [`crate::format::DType::Q4`]), `ws: [rows·cols/32]`.
    pub matvec_q4: MatvecQ4,
    /// `matvec_q4` for a block of tokens, as `matmul_q8` is for `matvec_q8`
    /// (`wq: [rows·cols/2]`), in [`Kernels::matmul_order`]'s f32 order.
    pub matmul_q4: MatmulQ4,
    /// How `matmul_q8` and `matmul_q4` add up each (row, token).
    pub matmul_order: MatmulOrder,
    /// Weight bytes per call of `matmul_q8` and `matmul_q4` in the forward
    /// pass's batched products ([`TileMatrix::tile_bytes`]): [`TILE_BYTES`]
    /// where the kernel keeps a tile in L1 while the block's tokens pass
    /// (the matvec-order tables); `usize::MAX`, whole matrices (or a
    /// thread's share), on AVX2 and AVX-512, whose token-lane kernels read
    /// each weight once per pass of tokens (up to 64) whatever the tile and
    /// transpose the block's activations once per call (per 16 KiB tile
    /// that was 6 % of `edgelm eval` on AVX-512). Either way a (row, token)
    /// has the same bits.
    pub matmul_tile_bytes: usize,
    /// `out[r] = Σ_c w[r,c]·x[c]`; `w: [rows·cols]`, `x: [cols]`.
    pub matvec_f32: MatvecF32,
    /// As `matvec_f32` with f16 weights (bits).
    pub matvec_f16: MatvecF16,
    /// Quantizes `x: [n]` (n a multiple of 32) to `q: [n]`, `s: [n/32]`. Bit-exact on every path.
    pub quantize_q8: QuantizeQ8,
    /// `out = x / sqrt(mean(x²) + eps) * w`.
    pub rmsnorm: Rmsnorm,
    /// In-place softmax.
    pub softmax: Softmax,
    /// Rotates each head of `x` (interleaved pairs `2i, 2i+1`) by the
    /// `(cos, sin)` pairs in `rope: [head_dim]`. Bit-exact on every path.
    pub rope: Rope,
    /// `g[i] = silu(g[i]) · u[i]` (SwiGLU).
    pub swiglu: Swiglu,
    /// `att[t] = (q · keys[t·stride ..][..q.len()]) · scale` for every `t < att.len()`.
    pub attn_scores: AttnScores,
    /// `out = Σ_t att[t] · values[t·stride ..][..out.len()]`.
    pub attn_values: AttnValues,
    /// As `attn_scores` with an f16 KV cache (keys as IEEE half bits).
    pub attn_scores_f16: AttnScoresF16,
    /// As `attn_values` with an f16 KV cache (values as IEEE half bits).
    pub attn_values_f16: AttnValuesF16,
    /// As `attn_scores` with a q8 KV cache: keys as `i8`, widened exactly;
    /// the caller applies each key's scale ([`crate::kv`]).
    pub attn_scores_q8: AttnScoresQ8,
    /// Attention scores from keys stored by dimension, for a block's
    /// queries, one head or a KV group's two at a time. `None` where the table has
    /// none (reference, AVX2, Arm): the caller scores from the cache
    /// (`attn_scores`).
    pub scores_by_dim: Option<ScoresByDim>,
    /// As `attn_values` with a q8 KV cache (values as `i8`; the caller has
    /// folded each value's scale into `att`).
    pub attn_values_q8: AttnValuesQ8,
    /// Two attention weightings of the same values (two heads of one KV
    /// group): exactly `attn_values(out[j], att[j], values, stride)` for
    /// `j = 0, 1`, bit for bit; both `att` the same length, both `out` too.
    /// On x86 each value is loaded once for both (the single kernels are
    /// bound by loads, one per multiply-add, or on AVX2 by FMA latency);
    /// the reference and Arm tables call their single kernel twice.
    pub attn_values2: AttnValues2,
    /// `attn_values2` with an f16 KV cache (`attn_values_f16` twice).
    pub attn_values2_f16: AttnValues2F16,
    /// `attn_values2` with a q8 KV cache (`attn_values_q8` twice).
    pub attn_values2_q8: AttnValues2Q8,
    /// `Σ e^(x − max)` over `xs` for bits per byte ([`crate::bpb::nll`]):
    /// [`reference::sum_exp`]'s value (each term in f32 by
    /// [`reference::exp`], converted to f64 and added into lane `i mod 8` in
    /// order, then the tail and the eight lanes), bit for bit on the
    /// reference, AVX2 and Arm tables; within 1e-6 relative on AVX-512, whose
    /// terms use FMA (the exact form's chain of dependent operations held it
    /// to a third of its throughput). A token's nats move by under 1e-6 of a
    /// nat either way; the products already make logits differ across tables.
    pub sum_exp: SumExp,
    /// The largest element of `xs` (`-inf` for none; NaNs skipped), the max
    /// [`crate::bpb::nll`] subtracts before `sum_exp`. The reference's value
    /// on every path (of equal zeros, either sign).
    pub max: MaxF32,
    /// Scoring a block's tokens against their targets without storing its
    /// logits (AVX-512; `None`: the product, then `max` and `sum_exp` per
    /// token).
    pub head_nll: Option<HeadNll>,
}

impl core::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernels").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The scalar reference table.
pub static REFERENCE: Kernels = Kernels {
    name: "reference",
    matvec_q8: reference::matvec_q8,
    matmul_q8: reference::matmul_q8,
    matvec_q4: reference::matvec_q4,
    matmul_q4: reference::matmul_q4,
    matmul_order: MatmulOrder::Matvec,
    matmul_tile_bytes: TILE_BYTES,
    matvec_f32: reference::matvec_f32,
    matvec_f16: reference::matvec_f16,
    quantize_q8: reference::quantize_q8,
    rmsnorm: reference::rmsnorm,
    softmax: reference::softmax,
    rope: reference::rope,
    swiglu: reference::swiglu,
    attn_scores: reference::attn_scores,
    attn_values: reference::attn_values,
    attn_scores_f16: reference::attn_scores_f16,
    attn_values_f16: reference::attn_values_f16,
    attn_scores_q8: reference::attn_scores_q8,
    scores_by_dim: None,
    attn_values_q8: reference::attn_values_q8,
    attn_values2: reference::attn_values2,
    attn_values2_f16: reference::attn_values2_f16,
    attn_values2_q8: reference::attn_values2_q8,
    sum_exp: reference::sum_exp,
    max: reference::max,
    head_nll: None,
};

/// Every path name this build knows (supported by this CPU or not).
pub const NAMES: &[&str] = &["reference", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod"];

/// The tables this CPU can run, best last. With `std` this is run-time
/// detection; without it, what `cfg(target_feature)` guarantees.
pub fn available() -> impl Iterator<Item = &'static Kernels> {
    #[allow(unused_mut)]
    let mut list: [Option<&'static Kernels>; 4] = [Some(&REFERENCE), None, None, None];
    #[cfg(target_arch = "x86_64")]
    {
        list[1] = x86_64::avx2();
        list[2] = x86_64::avxvnni();
        list[3] = x86_64::avx512vnni();
    }
    #[cfg(target_arch = "aarch64")]
    {
        list[1] = aarch64::neon();
        list[2] = aarch64::dotprod();
    }
    list.into_iter().flatten()
}

/// The fastest table this CPU supports (ignoring `EDGELM_KERNELS`).
pub fn detected() -> &'static Kernels {
    available().last().unwrap_or(&REFERENCE)
}

/// A requested kernel path that cannot run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedKernels<'n> {
    pub requested: &'n str,
    /// Whether the name is known at all (`false`: a typo).
    pub known: bool,
}

impl core::fmt::Display for UnsupportedKernels<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.known {
            write!(f, "kernel path {:?} is not supported by this CPU; available here:", self.requested)?;
        } else {
            write!(f, "unknown kernel path {:?} (known:", self.requested)?;
            for n in NAMES {
                write!(f, " {n}")?;
            }
            write!(f, "); available here:")?;
        }
        for k in available() {
            write!(f, " {}", k.name)?;
        }
        Ok(())
    }
}

/// The table named `name` (case-insensitive), or the detected best one for
/// `None` / an empty name / `"auto"`.
pub fn select(name: Option<&str>) -> Result<&'static Kernels, UnsupportedKernels<'_>> {
    let name = match name.map(str::trim) {
        None | Some("") => return Ok(detected()),
        Some(n) if n.eq_ignore_ascii_case("auto") => return Ok(detected()),
        Some(n) => n,
    };
    available()
        .find(|k| k.name.eq_ignore_ascii_case(name))
        .ok_or(UnsupportedKernels { requested: name, known: NAMES.iter().any(|n| n.eq_ignore_ascii_case(name)) })
}

/// The environment variable that forces a kernel path (std).
pub const ENV_VAR: &str = "EDGELM_KERNELS";

/// An `EDGELM_KERNELS` value that cannot be used here (owned form of
/// [`UnsupportedKernels`]).
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableOverride {
    pub requested: std::string::String,
    pub known: bool,
}

#[cfg(feature = "std")]
impl core::fmt::Display for UnusableOverride {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        UnsupportedKernels { requested: &self.requested, known: self.known }.fmt(f)
    }
}

/// The table `EDGELM_KERNELS` asks for (the detected best one when it is unset,
/// empty or `auto`); `Err` when it names a path this CPU cannot run. Callers
/// that want to tell the user check this; [`best`] silently falls back.
#[cfg(feature = "std")]
pub fn from_env() -> Result<&'static Kernels, UnusableOverride> {
    let env = std::env::var(ENV_VAR).ok();
    select(env.as_deref()).map_err(|e| UnusableOverride { requested: e.requested.into(), known: e.known })
}

/// The table [`crate::Session`] uses. With `std`: chosen once per process
/// (run-time detection, `EDGELM_KERNELS` honoured; an unusable override
/// falls back to the detected path, see [`from_env`]). Without `std`: fixed
/// at compile time by `cfg(target_feature)`.
#[cfg(feature = "std")]
pub fn best() -> &'static Kernels {
    static CHOSEN: std::sync::OnceLock<&'static Kernels> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| from_env().unwrap_or_else(|_| detected()))
}

/// The table [`crate::Session`] uses: without `std`, fixed at compile time.
#[cfg(not(feature = "std"))]
pub fn best() -> &'static Kernels {
    detected()
}

/// Something that runs `f(0), …, f(threads() - 1)` concurrently and returns
/// when all have finished: a thread pool ([`crate::threads::Pool`] with
/// `std`), or a firmware's second core. Used to split matrix rows.
pub trait Parallel: Sync {
    /// How many calls of `f` one [`Parallel::run`] makes (≥ 1).
    fn threads(&self) -> usize;
    /// Calls `f(i)` for every `i < threads()`, concurrently; returns after all.
    fn run(&self, f: &(dyn Fn(usize) + Sync));
}

/// What `ld` and the last row of keys stored by dimension are padded to
/// ([`ScoresByDim`]): the keys of a register.
pub const KEYS_BY_DIM_PAD: usize = 16;

/// Whether this build has tables that score from keys stored by dimension
/// (x86_64's): only then does a session's arena hold them (`arena.rs`).
pub const KEYS_BY_DIM: bool = cfg!(target_arch = "x86_64");

/// The row length of keys stored by dimension for a context of `max_seq`:
/// padded, plus one register more, so that rows are not a power of two apart
/// (the 32 rows of a head 1 KiB apart at 256 positions fall into the same L1
/// sets; one line more spreads them).
pub fn keys_by_dim_ld(max_seq: usize) -> usize {
    max_seq.next_multiple_of(KEYS_BY_DIM_PAD) + KEYS_BY_DIM_PAD
}

/// Matrices with fewer weight bytes than this run on one thread even with a
/// pool: below it the hand-off costs more than it saves (measured on the
/// 2-vCPU bench machine, see docs/BENCHMARKS.md).
pub const PARALLEL_MIN_BYTES: usize = 200_000;

/// `par`, when a matrix of `rows` rows and `work` units (bytes, or elements
/// for the quantized types) is worth splitting over its threads.
fn worth_splitting(par: Option<&dyn Parallel>, rows: usize, work: usize) -> Option<&dyn Parallel> {
    par.filter(|p| p.threads() > 1 && work >= PARALLEL_MIN_BYTES && rows >= 8)
}

/// A raw `&mut [T]` that may be split across threads by disjoint ranges.
struct SharedOut<T = f32> {
    ptr: *mut T,
    len: usize,
}
// SAFETY: only used by `par_rows`, `par_rows_many`, `matmul_tiles`, `attention_heads`
// and `par_token_rows`, which hand out disjoint ranges and join every user before
// the borrow it was made from ends.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// The element pointer at `i` (`i ≤ len`).
    fn at(&self, i: usize) -> *mut T {
        debug_assert!(i <= self.len);
        self.ptr.wrapping_add(i)
    }

    /// # Safety
    /// `start <= end <= len`, and no other live reference overlaps `[start, end)`.
    #[allow(clippy::mut_from_ref)] // the point of this type; callers keep ranges disjoint
    unsafe fn chunk(&self, start: usize, end: usize) -> &mut [T] {
        debug_assert!(start <= end && end <= self.len);
        // SAFETY: guaranteed by the caller (in bounds, not aliased).
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

/// One job's rows shared out so that the threads finish together: thread
/// `i` first runs its fixed share of the first three quarters, then claims
/// chunks of the last quarter from a counter as it finishes. A thread that
/// runs slower (a vCPU whose host core is busy, a little core of a
/// big.LITTLE chip) so takes less of the tail, where an equal split waits
/// for it. Every range
/// starts on a multiple of `align` (the kernels' row blocks), so each unit is
/// computed exactly as an equal split computes it: the results do not depend
/// on which thread takes it.
struct Shares {
    units: usize,
    /// Units of each thread's fixed share (a multiple of `align`).
    fixed: usize,
    /// Units per claim from the tail (a multiple of `align`).
    chunk: usize,
    /// The tail's next unclaimed unit.
    next: core::sync::atomic::AtomicUsize,
}

impl Shares {
    fn new(units: usize, align: usize, threads: usize) -> Shares {
        let (align, threads) = (align.max(1), threads.max(1));
        let fixed = units * 3 / 4 / threads / align * align;
        let tail = units - fixed * threads;
        // about two claims per thread: enough to even out, few atomics
        let chunk = tail.div_ceil(2 * threads).div_ceil(align).max(1) * align;
        Shares { units, fixed, chunk, next: core::sync::atomic::AtomicUsize::new(fixed * threads) }
    }

    /// Shares of the rows of several outputs laid end to end, each padded to
    /// a multiple of 8 rows (the widest row block of the SIMD kernels), so
    /// every range starts on a multiple of 8 rows of its output.
    fn rows(rows: impl Iterator<Item = usize>, threads: usize) -> Shares {
        Shares::new(rows.map(|r| r.div_ceil(8) * 8).sum(), 8, threads)
    }

    /// [`Shares::take`] for shares made by [`Shares::rows`] over `outs`
    /// (`rows(o)` rows each): `f(j, &outs[j], lo, hi)` for each non-empty row
    /// range `[lo, hi)` of output `j` that thread `i` takes (a range crossing
    /// from one output into the next is cut there).
    fn take_rows<T>(
        &self,
        i: usize,
        outs: &[T],
        rows: impl Fn(&T) -> usize,
        mut f: impl FnMut(usize, &T, usize, usize),
    ) {
        self.take(i, |start, end| {
            let mut base = 0;
            for (j, out) in outs.iter().enumerate() {
                let len = rows(out);
                let (lo, hi) = (start.max(base) - base, end.saturating_sub(base).min(len));
                if lo < hi {
                    f(j, out, lo, hi);
                }
                base += len.div_ceil(8) * 8;
            }
        })
    }

    /// Calls `f(start, end)` for each range thread `i` takes, in order.
    fn take(&self, i: usize, mut f: impl FnMut(usize, usize)) {
        if self.fixed > 0 {
            f(i * self.fixed, (i + 1) * self.fixed);
        }
        loop {
            // Relaxed: the claims only need to be disjoint; `Parallel::run`
            // orders the writes before the caller reads them
            let start = self.next.fetch_add(self.chunk, core::sync::atomic::Ordering::Relaxed);
            if start >= self.units {
                return;
            }
            f(start, (start + self.chunk).min(self.units));
        }
    }
}

/// The columns `c0..hd` of an `attn_values` kernel one at a time, past its
/// last full vector (the x86 and aarch64 kernels share it): `out[c] =
/// Σ_t att[t]·load(values + t·stride + c)`, a multiply then an add per `t`,
/// in order.
///
/// # Safety
/// `out` is writable for `hd` floats, and `values + t·stride + c` is
/// readable for every `t < att.len()` and `c0 ≤ c < hd`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) unsafe fn attn_values_tail<T>(
    out: *mut f32,
    c0: usize,
    hd: usize,
    att: &[f32],
    values: *const T,
    stride: usize,
    load: impl Fn(*const T) -> f32,
) {
    for c in c0..hd {
        let mut acc = 0f32;
        for (t, &a) in att.iter().enumerate() {
            acc += a * load(values.add(t * stride + c));
        }
        *out.add(c) = acc;
    }
}

/// Splits `out`'s rows across `par` ([`Shares`], ranges of multiples of 8
/// rows, the widest row block of the SIMD kernels) and calls `f(rows_start,
/// chunk)` for each range, concurrently.
fn par_rows(par: &dyn Parallel, out: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    split_rows_many(par, [out], &|_, r0, o| f(r0, o))
}

/// Several products that read the same input vector, in ONE hand-off to
/// `par` (each `Parallel::run` is a wake-up and a barrier): `f(j, r0, chunk)`
/// writes rows `r0..r0 + chunk.len()` of output `j`. The outputs' rows are
/// shared out as one run ([`split_rows_many`]), in ranges of multiples of 8
/// rows of each output, so the results are those of separate calls; all run
/// on the caller when `work` (the summed units of [`worth_splitting`]) is
/// below [`PARALLEL_MIN_BYTES`]. Decode uses it for q, k, v and for gate and
/// up, whose matrices are each too small to be worth a hand-off of their own.
pub fn par_rows_many<const N: usize>(
    par: Option<&dyn Parallel>,
    outs: [&mut [f32]; N],
    work: usize,
    f: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let rows = outs.iter().map(|o| o.len()).min().unwrap_or(0);
    match worth_splitting(par, rows, work) {
        Some(p) => split_rows_many(p, outs, f),
        None => {
            for (j, out) in outs.into_iter().enumerate() {
                f(j, 0, out);
            }
        }
    }
}

/// [`par_rows_many`] without the size threshold: the outputs' rows, each
/// output padded to a multiple of 8, laid end to end and shared out by
/// [`Shares`]; a range that crosses from one output into the next is cut
/// there (at a multiple of 8 rows of both).
fn split_rows_many<const N: usize>(
    par: &dyn Parallel,
    outs: [&mut [f32]; N],
    f: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let shared = outs.map(|o| SharedOut { ptr: o.as_mut_ptr(), len: o.len() });
    let shares = Shares::rows(shared.iter().map(|o| o.len), par.threads());
    par.run(&|i| {
        shares.take_rows(
            i,
            &shared,
            |o| o.len,
            |j, out, lo, hi| {
                // SAFETY: `Shares` hands out disjoint row ranges of each output
                // (`hi ≤ len`: in bounds); the outputs are distinct `&mut` borrows
                // held for the whole `run`, which returns only after every call
                // has finished.
                let chunk = unsafe { out.chunk(lo, hi) };
                f(j, lo, chunk);
            },
        )
    });
}

/// `k.matvec_q8`, rows split across `par` when the matrix is large enough.
pub fn matvec_q8_par(
    k: &Kernels,
    par: Option<&dyn Parallel>,
    out: &mut [f32],
    wq: &[i8],
    ws: &[u16],
    xq: &[i8],
    xs: &[f32],
) {
    match worth_splitting(par, out.len(), out.len() * xq.len()) {
        Some(p) => matvec_q8_split(k, p, out, wq, ws, xq, xs),
        None => (k.matvec_q8)(out, wq, ws, xq, xs),
    }
}

/// `k.matvec_q8` with rows always split across `par` (no size threshold).
pub fn matvec_q8_split(k: &Kernels, par: &dyn Parallel, out: &mut [f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    let g = cols / Q8_GROUP;
    par_rows(par, out, &|r0, o| {
        let r1 = r0 + o.len();
        let (wq, ws) = (wq.get(r0 * cols..r1 * cols), ws.get(r0 * g..r1 * g));
        // too short: empty slices, which the kernel refuses as the unsplit call would
        (k.matvec_q8)(o, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
    })
}

/// `k.matvec_q4`, rows split across `par` when the matrix is large enough
/// (the threshold counts elements, as for q8: a q4 byte holds two weights and
/// costs about twice the unpacking work, so counting bytes split only the head
/// of the 15M shape and 2 threads decoded no faster than 1).
pub fn matvec_q4_par(
    k: &Kernels,
    par: Option<&dyn Parallel>,
    out: &mut [f32],
    wq: &[u8],
    ws: &[u16],
    xq: &[i8],
    xs: &[f32],
) {
    match worth_splitting(par, out.len(), out.len() * xq.len()) {
        Some(p) => matvec_q4_split(k, p, out, wq, ws, xq, xs),
        None => (k.matvec_q4)(out, wq, ws, xq, xs),
    }
}

/// `k.matvec_q4` with rows always split across `par` (no size threshold).
pub fn matvec_q4_split(k: &Kernels, par: &dyn Parallel, out: &mut [f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    let g = cols / Q4_GROUP;
    par_rows(par, out, &|r0, o| {
        let r1 = r0 + o.len();
        let (wq, ws) = (wq.get(r0 * cols / 2..r1 * cols / 2), ws.get(r0 * g..r1 * g));
        // too short: empty slices, which the kernel refuses as the unsplit call would
        (k.matvec_q4)(o, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
    })
}

/// `k.matvec_f32`, rows split across `par` when the matrix is large enough.
pub fn matvec_f32_par(k: &Kernels, par: Option<&dyn Parallel>, out: &mut [f32], w: &[f32], x: &[f32]) {
    let cols = x.len();
    match worth_splitting(par, out.len(), out.len() * cols * 4) {
        // too short: an empty slice, which the kernel refuses as the unsplit call would
        Some(p) => par_rows(p, out, &|r0, o| (k.matvec_f32)(o, w.get(r0 * cols..).unwrap_or_default(), x)),
        None => (k.matvec_f32)(out, w, x),
    }
}

/// `k.matvec_f16`, rows split across `par` when the matrix is large enough.
pub fn matvec_f16_par(k: &Kernels, par: Option<&dyn Parallel>, out: &mut [f32], w: &[u16], x: &[f32]) {
    let cols = x.len();
    match worth_splitting(par, out.len(), out.len() * cols * 2) {
        // too short: an empty slice, which the kernel refuses as the unsplit call would
        Some(p) => par_rows(p, out, &|r0, o| (k.matvec_f16)(o, w.get(r0 * cols..).unwrap_or_default(), x)),
        None => (k.matvec_f16)(out, w, x),
    }
}

/// Checks the slice lengths every SIMD `matvec_q4` relies on (panics like a
/// failed index would in the reference).
#[inline]
#[allow(dead_code)]
pub(crate) fn check_q4(out: &[f32], wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    assert!(cols.is_multiple_of(Q4_GROUP), "q4 cols {cols} not a multiple of {Q4_GROUP}");
    let g = cols / Q4_GROUP;
    assert!(
        wq.len() >= out.len() * cols / 2 && ws.len() >= out.len() * g && xs.len() >= g,
        "matvec_q4: slices too short for {} rows × {cols} cols",
        out.len()
    );
}

/// Checks the slice lengths every SIMD `matvec_q8` relies on (panics like a
/// failed index would in the reference).
#[inline]
#[allow(dead_code)]
pub(crate) fn check_q8(out: &[f32], wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let cols = xq.len();
    assert!(cols.is_multiple_of(Q8_GROUP), "q8 cols {cols} not a multiple of {Q8_GROUP}");
    let g = cols / Q8_GROUP;
    assert!(
        wq.len() >= out.len() * cols && ws.len() >= out.len() * g && xs.len() >= g,
        "matvec_q8: slices too short for {} rows × {cols} cols",
        out.len()
    );
}

/// Checks the slice lengths every SIMD `matmul_q8` relies on (panics like a
/// failed index would in the reference); returns `cols`.
#[inline]
#[allow(dead_code)]
pub(crate) fn check_q8_tile(out: &TileOut<'_>, wq: &[i8], ws: &[u16], xq: &[i8], xs: &[f32]) -> usize {
    let (rows, n) = (out.rows(), out.tokens());
    let cols = xq.len().checked_div(n).unwrap_or(0);
    assert!(cols.is_multiple_of(Q8_GROUP), "q8 cols {cols} not a multiple of {Q8_GROUP}");
    let g = cols / Q8_GROUP;
    assert!(
        wq.len() >= rows * cols && ws.len() >= rows * g && xs.len() >= n * g,
        "matmul_q8: slices too short for {rows} rows × {cols} cols × {n} tokens"
    );
    cols
}

/// A quantized matvec with weights of element type `W` (`MatvecQ8`, `MatvecQ4`).
#[allow(dead_code)]
type MatvecQuant<W> = fn(&mut [f32], &[W], &[u16], &[i8], &[f32]);

/// A batched product as the table's matvec per token (for a path whose
/// batched kernel is its matvec: bit-identical by construction).
#[allow(dead_code)]
pub(crate) fn per_token<W>(matvec: MatvecQuant<W>, out: &mut TileOut<'_>, wq: &[W], ws: &[u16], xq: &[i8], xs: &[f32]) {
    let n = out.tokens();
    let cols = xq.len().checked_div(n).unwrap_or(0);
    let g = cols / Q8_GROUP;
    for b in 0..n {
        // `xq`'s row is in range (n·cols ≤ xq.len()); a short `xs` gives an
        // empty slice, which the matvec's own check refuses
        let (xq, xs) = (xq.get(b * cols..(b + 1) * cols), xs.get(b * g..(b + 1) * g));
        matvec(out.token(b), wq, ws, xq.unwrap_or_default(), xs.unwrap_or_default());
    }
}

/// Checks the slice lengths every SIMD `matmul_q4` relies on (panics like a
/// failed index would in the reference); returns `cols`.
#[inline]
#[allow(dead_code)]
pub(crate) fn check_q4_tile(out: &TileOut<'_>, wq: &[u8], ws: &[u16], xq: &[i8], xs: &[f32]) -> usize {
    let (rows, n) = (out.rows(), out.tokens());
    let cols = xq.len().checked_div(n).unwrap_or(0);
    assert!(cols.is_multiple_of(Q4_GROUP), "q4 cols {cols} not a multiple of {Q4_GROUP}");
    let g = cols / Q4_GROUP;
    assert!(
        wq.len() >= rows * cols / 2 && ws.len() >= rows * g && xs.len() >= n * g,
        "matmul_q4: slices too short for {rows} rows × {cols} cols × {n} tokens"
    );
    cols
}

/// The output of a batched product over one tile of rows: `rows` floats per
/// token for `tokens` tokens, token `b`'s at `b·ld` of the whole output. The
/// tokens' rows are strided, so tiles of other rows (other threads' ones)
/// interleave with this one's; [`TileOut::token`] hands out one token's rows
/// at a time.
#[derive(Debug)]
pub struct TileOut<'a> {
    ptr: *mut f32,
    ld: usize,
    rows: usize,
    tokens: usize,
    _out: core::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> TileOut<'a> {
    /// The tile of `out` (`[(tokens − 1)·ld + rows]`) whose token `b` is
    /// `out[b·ld..][..rows]`. Panics unless `ld ≥ rows` and `out` is long enough.
    pub fn new(out: &'a mut [f32], ld: usize, rows: usize, tokens: usize) -> Self {
        assert!(
            ld >= rows && (tokens == 0 || out.len() >= (tokens - 1) * ld + rows),
            "TileOut: output too short for {tokens} tokens of {rows} rows at stride {ld}"
        );
        TileOut { ptr: out.as_mut_ptr(), ld, rows, tokens, _out: core::marker::PhantomData }
    }

    /// # Safety
    /// For the life `'a`, `ptr.add(b·ld)..+rows` must be valid for writes for
    /// every `b < tokens`, and no other live reference may overlap those ranges.
    unsafe fn from_raw(ptr: *mut f32, ld: usize, rows: usize, tokens: usize) -> Self {
        TileOut { ptr, ld, rows, tokens, _out: core::marker::PhantomData }
    }

    /// Rows per token.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Tokens in the tile.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The rows of tokens `b..b + T`, at once (a batched kernel writes one
    /// row of several tokens together). Panics unless `b + T ≤ tokens()`.
    pub fn tokens_at<const T: usize>(&mut self, b: usize) -> [&mut [f32]; T] {
        assert!(b + T <= self.tokens, "TileOut: tokens {b}..{} of {}", b + T, self.tokens);
        // SAFETY: every `b + j < tokens`, so each range is one of those the
        // constructor vouched for; they are disjoint (`ld ≥ rows`), and
        // `&mut self` keeps them the only live references into the tile.
        core::array::from_fn(|j| unsafe { core::slice::from_raw_parts_mut(self.ptr.add((b + j) * self.ld), self.rows) })
    }

    /// Token `b`'s rows. Panics unless `b < tokens()`.
    pub fn token(&mut self, b: usize) -> &mut [f32] {
        assert!(b < self.tokens, "TileOut: token {b} of {}", self.tokens);
        // SAFETY: `b < tokens`, so the range is one of those the constructor
        // vouched for; `&mut self` keeps it the only live reference into the tile.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(b * self.ld), self.rows) }
    }
}

/// Bytes of weights one tile of a batched product holds: a tile is read from
/// memory once per block of tokens and then from L1 (32–48 KiB on every
/// target core) once per token.
pub const TILE_BYTES: usize = 16 * 1024;

/// A matrix × block-of-vectors product over a tile of rows:
/// `tile_kernel(out, r0)` writes rows `r0..r0 + out.rows()` of the product for
/// every token of the block. [`matmul_tiles`] calls it tile by tile (each
/// tile's weights stay in cache while every token of the block passes), rows
/// split across threads when the block's work (weight bytes × tokens) reaches
/// [`PARALLEL_MIN_BYTES`].
///
/// Tiles and thread chunks start at multiples of 8 rows, the widest row block
/// of every matvec kernel, so each row's sum is computed in exactly the same
/// order as by one matvec over the whole matrix: the batched path is
/// bit-identical to the per-token one.
pub type TileKernel<'f> = dyn Fn(&mut TileOut<'_>, usize) + Sync + 'f;

/// One token's rows of a tile: `row_kernel(out, r0, b)` writes rows
/// `r0..r0 + out.len()` of the product with token `b`'s input (a table's
/// matvec, for the types without a batched kernel); see [`matmul_rows`].
pub type RowKernel<'f> = dyn Fn(&mut [f32], usize, usize) + Sync + 'f;

/// Rows per tile of `tile_bytes` for rows of `row_bytes` weight bytes (a
/// multiple of 8, ≥ 8).
fn tile_rows(row_bytes: usize, tile_bytes: usize) -> usize {
    (tile_bytes / row_bytes.max(1)).max(8) / 8 * 8
}

/// `out[b·ld + r]` = row `r` of a `rows`-row matrix (of `row_bytes` bytes per
/// row) applied to token `b`'s input, for `b < n`; see [`TileKernel`].
/// Panics unless `ld ≥ rows` and `out` holds `(n − 1)·ld + rows` floats.
pub fn matmul_tiles(
    par: Option<&dyn Parallel>,
    out: &mut [f32],
    ld: usize,
    rows: usize,
    n: usize,
    row_bytes: usize,
    tile_kernel: &TileKernel<'_>,
) {
    let tile_bytes = TILE_BYTES;
    matmul_tiles_many(par, [TileMatrix { out, ld, rows, row_bytes, tile_bytes }], n, &|_, tile, r0| {
        tile_kernel(tile, r0)
    })
}

/// One product of [`matmul_tiles_many`]: its output (`(n − 1)·ld + rows`
/// floats, token `b` at `b·ld`), rows, weight bytes per row and per tile
/// ([`TILE_BYTES`], or [`Kernels::matmul_tile_bytes`] for a table's batched
/// kernels).
#[derive(Debug)]
pub struct TileMatrix<'o> {
    pub out: &'o mut [f32],
    pub ld: usize,
    pub rows: usize,
    pub row_bytes: usize,
    pub tile_bytes: usize,
}

/// A tile kernel of several products: `f(j, out, r0)` is product `j`'s
/// [`TileKernel`].
pub type TileKernelMany<'f> = dyn Fn(usize, &mut TileOut<'_>, usize) + Sync + 'f;

/// Several batched products over the same block of `n` tokens (q, k and v;
/// gate and up) in ONE hand-off to `par` (a `Parallel::run` is a wake-up
/// and a barrier): each product tiled and, when the products' summed work
/// (weight bytes × tokens) reaches [`PARALLEL_MIN_BYTES`], the products'
/// rows shared out across the threads as one run ([`Shares`]; tiles and
/// ranges at multiples of 8 rows of each product: the results are those of
/// separate calls on one thread, bit for bit). Panics unless every
/// `ld ≥ rows` and every `out` is long enough.
pub fn matmul_tiles_many<const N: usize>(
    par: Option<&dyn Parallel>,
    ms: [TileMatrix<'_>; N],
    n: usize,
    tile_kernel: &TileKernelMany<'_>,
) {
    if n == 0 {
        return;
    }
    for m in &ms {
        assert!(
            m.rows == 0 || (m.ld >= m.rows && m.out.len() >= (n - 1) * m.ld + m.rows),
            "matmul_tiles: output too short"
        );
    }
    let work: usize = ms.iter().map(|m| m.rows * m.row_bytes * n).sum();
    let min_rows = ms.iter().map(|m| m.rows).min().unwrap_or(0);
    match par {
        // the work is the tiles' bytes once per token: a block of 32 tokens
        // splits the 288×288 projections that a single token keeps on one thread
        Some(p) if p.threads() > 1 && work >= PARALLEL_MIN_BYTES && min_rows >= 16 => {
            let shared = ms.map(|m| {
                (SharedOut { ptr: m.out.as_mut_ptr(), len: m.out.len() }, m.ld, m.rows, m.row_bytes, m.tile_bytes)
            });
            let shares = Shares::rows(shared.iter().map(|(_, _, rows, _, _)| *rows), p.threads());
            p.run(&|i| {
                shares.take_rows(
                    i,
                    &shared,
                    |(_, _, rows, _, _)| *rows,
                    |j, (out, ld, _, row_bytes, tile_bytes), lo, hi| {
                        let tile = tile_rows(*row_bytes, *tile_bytes);
                        let mut t0 = lo;
                        while t0 < hi {
                            let t1 = (t0 + tile).min(hi);
                            // SAFETY: this call only reaches ranges `[b·ld + t0, b·ld + t1)`
                            // of output `j`, `b < n`, with `lo ≤ t0 < t1 ≤ hi ≤ rows ≤ ld`:
                            // in bounds (asserted above), disjoint from every other
                            // call's (`Shares` hands out disjoint row ranges and
                            // `ld ≥ rows`; the outputs are distinct `&mut` borrows),
                            // and one tile at a time; the outputs stay mutably
                            // borrowed until `run` returns, after every call has finished.
                            let mut tile_out = unsafe { TileOut::from_raw(out.at(t0), *ld, t1 - t0, n) };
                            tile_kernel(j, &mut tile_out, t0);
                            t0 = t1;
                        }
                    },
                )
            });
        }
        _ => {
            for (j, m) in ms.into_iter().enumerate() {
                // one thread: consecutive tiles borrow `out` one at a time
                let (tile, mut t0) = (tile_rows(m.row_bytes, m.tile_bytes), 0);
                while t0 < m.rows {
                    let t1 = (t0 + tile).min(m.rows);
                    let len = (n - 1) * m.ld + (t1 - t0);
                    // in range (asserted above); `TileOut::new` checks the length again
                    let tile_out = m.out.get_mut(t0..t0 + len).unwrap_or_default();
                    tile_kernel(j, &mut TileOut::new(tile_out, m.ld, t1 - t0, n), t0);
                    t0 = t1;
                }
            }
        }
    }
}

/// [`matmul_tiles`] with a per-token kernel: within a tile, every token of
/// the block passes in turn; see [`RowKernel`].
pub fn matmul_rows(
    par: Option<&dyn Parallel>,
    out: &mut [f32],
    ld: usize,
    rows: usize,
    n: usize,
    row_bytes: usize,
    row_kernel: &RowKernel<'_>,
) {
    matmul_tiles(par, out, ld, rows, n, row_bytes, &|tile, r0| {
        for b in 0..tile.tokens() {
            row_kernel(tile.token(b), r0, b);
        }
    })
}

/// Per-thread work of a group of attention heads: `f(h0, h1, out, att)`
/// handles heads `h0..h1`, with `out` their `(h1 − h0)·hd` output columns of
/// every token (a [`TileOut`]: token `b` at `b·ld` of the block's output) and
/// `att` their `(h1 − h0)·att_stride` floats of score scratch.
pub type HeadKernel<'f> = dyn Fn(usize, usize, &mut TileOut<'_>, &mut [f32]) -> crate::Result<()> + Sync + 'f;

/// Splits a block's attention over `par` by heads (each (token, head) is
/// computed by one thread, in full, so results do not depend on the split)
/// when `work` (multiply-adds) is worth a hand-off; else one call for all.
/// `out` must hold `n` tokens of `heads·hd` floats at stride `ld` and `att`
/// `heads·att_stride` floats ([`crate::Error::BadConfig`] otherwise).
#[allow(clippy::too_many_arguments)]
pub fn attention_heads(
    par: Option<&dyn Parallel>,
    work: usize,
    heads: usize,
    hd: usize,
    out: &mut [f32],
    ld: usize,
    n: usize,
    att: &mut [f32],
    att_stride: usize,
    f: &HeadKernel<'_>,
) -> crate::Result<()> {
    const SHORT: crate::Error = crate::Error::BadConfig("attention: a buffer is shorter than the model's shapes");
    if n == 0 || heads == 0 {
        return Ok(());
    }
    let cols = heads * hd;
    if ld < cols || out.len() < (n - 1) * ld + cols {
        return Err(SHORT);
    }
    let att = att.get_mut(..heads * att_stride).ok_or(SHORT)?;
    match par.filter(|p| p.threads() > 1 && heads > 1 && work >= PARALLEL_MIN_BYTES) {
        Some(p) => {
            let per = heads.div_ceil(p.threads());
            let (o, a) = (
                SharedOut { ptr: out.as_mut_ptr(), len: out.len() },
                SharedOut { ptr: att.as_mut_ptr(), len: att.len() },
            );
            let failed = core::sync::atomic::AtomicBool::new(false);
            p.run(&|i| {
                let h0 = (i * per).min(heads);
                let h1 = ((i + 1) * per).min(heads);
                if h0 < h1 {
                    // SAFETY: thread `i` only reaches the columns `[h0·hd, h1·hd)`
                    // of each token's row and `att[h0·att_stride..h1·att_stride]`:
                    // in bounds (checked above, `h1 ≤ heads`), disjoint from
                    // every other thread's (head ranges are disjoint, `ld ≥
                    // cols`); both buffers stay mutably borrowed until `run`
                    // returns, after every call has finished.
                    let (mut tile, att) = unsafe {
                        (
                            TileOut::from_raw(o.at(h0 * hd), ld, (h1 - h0) * hd, n),
                            a.chunk(h0 * att_stride, h1 * att_stride),
                        )
                    };
                    if f(h0, h1, &mut tile, att).is_err() {
                        failed.store(true, core::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            if failed.into_inner() {
                // no lock to carry a worker's error in no_std: rerun on this
                // thread, which returns it (the results would be the same)
                return f(0, heads, &mut TileOut::new(out, ld, cols, n), att);
            }
            Ok(())
        }
        None => f(0, heads, &mut TileOut::new(out, ld, cols, n), att),
    }
}

/// How [`par_token_rows`] shares one buffer out: by the block's tokens
/// (`width` elements a token: each thread gets its tokens' rows) or one row
/// per thread (`width` elements: a thread's own scratch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSplit {
    Tokens(usize),
    Thread(usize),
}

/// A thread's share of a token-parallel job: `f(t0, t1, f32s, i8s)` runs the
/// block's tokens `t0..t1`, each buffer cut as its [`RowSplit`] says.
pub type TokenJob<'f, const F: usize, const I: usize> =
    dyn Fn(usize, usize, &mut [&mut [f32]; F], &mut [&mut [i8]; I]) -> crate::Result<()> + Sync + 'f;

/// Splits a block's `n` tokens over `par` in contiguous ranges (multiples of
/// four tokens, the batched kernels' pass) and runs `f` once per thread,
/// concurrently, each with its tokens' rows of every `Tokens` buffer and its
/// own row of every `Thread` buffer: no two threads share a row, so a whole
/// stretch of a block (norms, products, attention) runs in one hand-off with
/// no data moving between threads. Each token's results are what one thread
/// computes for it, provided `f` treats tokens independently.
/// [`crate::Error::BadConfig`] if a buffer is too short or a call failed.
pub fn par_token_rows<const F: usize, const I: usize>(
    par: &dyn Parallel,
    n: usize,
    f32s: [(&mut [f32], RowSplit); F],
    i8s: [(&mut [i8], RowSplit); I],
    f: &TokenJob<'_, F, I>,
) -> crate::Result<()> {
    const SHORT: crate::Error = crate::Error::BadConfig("a block buffer is shorter than its threads' rows");
    let threads = par.threads().max(1);
    // an equal split: `Shares`' small tail ranges cost more than they even
    // out here (each range streams every weight again for its few tokens:
    // 2-thread prompts 7 % slower with them, docs/BENCHMARKS.md)
    let per = n.div_ceil(threads).div_ceil(4) * 4;
    let need = |split: RowSplit| match split {
        RowSplit::Tokens(w) => n * w,
        RowSplit::Thread(w) => threads * w,
    };
    if f32s.iter().any(|(b, split)| b.len() < need(*split)) || i8s.iter().any(|(b, split)| b.len() < need(*split)) {
        return Err(SHORT);
    }
    let fs = f32s.map(|(b, split)| (SharedOut { ptr: b.as_mut_ptr(), len: b.len() }, split));
    let is = i8s.map(|(b, split)| (SharedOut { ptr: b.as_mut_ptr(), len: b.len() }, split));
    let failed = core::sync::atomic::AtomicBool::new(false);
    par.run(&|i| {
        let (t0, t1) = ((i * per).min(n), ((i + 1) * per).min(n));
        if t0 >= t1 {
            return;
        }
        let range = |split: RowSplit| match split {
            RowSplit::Tokens(w) => (t0 * w, t1 * w),
            RowSplit::Thread(w) => (i * w, (i + 1) * w),
        };
        // SAFETY: thread `i < threads` only reaches `[t0·w, t1·w)` of a `Tokens`
        // buffer and `[i·w, (i + 1)·w)` of a `Thread` buffer: in bounds (lengths
        // checked above: `t1 ≤ n`, `i < threads`) and disjoint from every other
        // thread's (token ranges and thread indices are disjoint; the buffers
        // are distinct `&mut` borrows), all held until `run` returns, after
        // every call has finished.
        let mut a: [&mut [f32]; F] = fs.each_ref().map(|(buf, split)| {
            let (lo, hi) = range(*split);
            unsafe { buf.chunk(lo, hi) }
        });
        // SAFETY: as above, for the i8 buffers.
        let mut b: [&mut [i8]; I] = is.each_ref().map(|(buf, split)| {
            let (lo, hi) = range(*split);
            unsafe { buf.chunk(lo, hi) }
        });
        if f(t0, t1, &mut a, &mut b).is_err() {
            failed.store(true, core::sync::atomic::Ordering::Relaxed);
        }
    });
    if failed.into_inner() {
        return Err(crate::Error::BadConfig(
            "a thread of a token-parallel block failed (a buffer shorter than the model's shapes)",
        ));
    }
    Ok(())
}

/// `out[b·ld + r]` = row `r` of the q8 matrix (`wq: [rows·cols]`, `ws:
/// [rows·cols/32]`) applied to token `b` (`xq: [n·cols]` exactly, `xs:
/// [n·cols/32]`),
/// through `k.matmul_q8` tile by tile ([`matmul_tiles`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_q8(
    k: &Kernels,
    par: Option<&dyn Parallel>,
    out: &mut [f32],
    ld: usize,
    rows: usize,
    n: usize,
    wq: &[i8],
    ws: &[u16],
    xq: &[i8],
    xs: &[f32],
) {
    let cols = xq.len().checked_div(n).unwrap_or(0);
    let g = cols / Q8_GROUP;
    matmul_tiles(par, out, ld, rows, n, cols + 2 * g, &|tile, r0| {
        let r1 = r0 + tile.rows();
        let (wq, ws) = (wq.get(r0 * cols..r1 * cols), ws.get(r0 * g..r1 * g));
        // too short: empty slices, which the kernel refuses with the shapes
        (k.matmul_q8)(tile, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
    })
}

/// As [`matmul_q8`] for q4 weights (`wq: [rows·cols/2]`), through `k.matmul_q4`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_q4(
    k: &Kernels,
    par: Option<&dyn Parallel>,
    out: &mut [f32],
    ld: usize,
    rows: usize,
    n: usize,
    wq: &[u8],
    ws: &[u16],
    xq: &[i8],
    xs: &[f32],
) {
    let cols = xq.len().checked_div(n).unwrap_or(0);
    let g = cols / Q4_GROUP;
    matmul_tiles(par, out, ld, rows, n, cols / 2 + 2 * g, &|tile, r0| {
        let r1 = r0 + tile.rows();
        let (wq, ws) = (wq.get(r0 * cols / 2..r1 * cols / 2), ws.get(r0 * g..r1 * g));
        // too short: empty slices, which the kernel refuses with the shapes
        (k.matmul_q4)(tile, wq.unwrap_or_default(), ws.unwrap_or_default(), xq, xs)
    })
}

#[cfg(test)]
mod tests {
    use super::Shares;
    use std::vec::Vec;

    /// Whatever order the threads arrive in, the ranges cover every unit
    /// once, start on the alignment, and each thread's first range is its
    /// fixed share.
    #[test]
    fn shares_cover_every_unit_once() {
        for units in [0usize, 1, 7, 8, 13, 64, 288, 301, 1336, 32000] {
            for align in [1usize, 4, 8] {
                for threads in 1..=4usize {
                    for order in [(0..threads).collect::<Vec<_>>(), (0..threads).rev().collect()] {
                        let shares = Shares::new(units, align, threads);
                        let mut seen = std::vec![0u8; units];
                        for &i in &order {
                            let mut first = true;
                            shares.take(i, |s, e| {
                                assert!(s < e && e <= units, "{units}/{align}/{threads}: [{s}, {e})");
                                assert_eq!(s % align, 0, "{units}/{align}/{threads}: start {s}");
                                if first && shares.fixed > 0 {
                                    assert_eq!((s, e), (i * shares.fixed, (i + 1) * shares.fixed));
                                }
                                first = false;
                                seen[s..e].iter_mut().for_each(|v| *v += 1);
                            });
                        }
                        assert!(seen.iter().all(|&v| v == 1), "{units}/{align}/{threads}/{order:?}: {seen:?}");
                    }
                }
            }
        }
    }
}
