//! Numeric kernels. `reference` is the scalar truth every SIMD path is
//! tested against; a [`Kernels`] table of function pointers is chosen once.

pub mod reference;

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
pub type MatvecF32 = fn(out: &mut [f32], w: &[f32], x: &[f32]);
pub type MatvecF16 = fn(out: &mut [f32], w: &[u16], x: &[f32]);
pub type QuantizeQ8 = fn(x: &[f32], q: &mut [i8], s: &mut [f32]);

/// The kernels the forward pass calls. Every entry has a scalar twin in
/// [`reference`]; shapes are implied by slice lengths (documented per field).
pub struct Kernels {
    /// Name shown by `edgelm inspect` / `edgelm bench`.
    pub name: &'static str,
    /// `out[r] = Σ_g (Σ_i wq[r,g,i]·xq[g,i]) · (ws[r,g]·xs[g])`;
    /// `wq: [rows·cols]`, `ws: [rows·cols/32]` (f16 bits), `xq: [cols]`, `xs: [cols/32]`, `out: [rows]`.
    pub matvec_q8: MatvecQ8,
    /// `out[r] = Σ_c w[r,c]·x[c]`; `w: [rows·cols]`, `x: [cols]`.
    pub matvec_f32: MatvecF32,
    /// As `matvec_f32` with f16 weights (bits).
    pub matvec_f16: MatvecF16,
    /// Quantizes `x: [n]` (n a multiple of 32) to `q: [n]`, `s: [n/32]`.
    pub quantize_q8: QuantizeQ8,
}

/// The scalar reference table.
pub static REFERENCE: Kernels = Kernels {
    name: "reference",
    matvec_q8: reference::matvec_q8,
    matvec_f32: reference::matvec_f32,
    matvec_f16: reference::matvec_f16,
    quantize_q8: reference::quantize_q8,
};

/// The best table for this CPU (chosen once per call site; cheap).
pub fn best() -> &'static Kernels {
    &REFERENCE
}
