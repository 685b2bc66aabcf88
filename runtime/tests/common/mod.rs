//! Shared test support: aligned model bytes, and the independent f64
//! reference forward pass (`reference.rs`) over the synthetic weights.
#![allow(dead_code)]

mod reference;

use edgelm_runtime::synthetic::{synthetic_weights, SyntheticSpec};
use edgelm_runtime::AlignedBytes;

pub use reference::Rope;

pub fn aligned(bytes: Vec<u8>) -> AlignedBytes {
    AlignedBytes::from(bytes)
}

/// The f64 reference on a synthetic model's weights (interleaved RoPE, as the runtime).
pub struct Reference(reference::Reference);

impl Reference {
    pub fn new(spec: &SyntheticSpec) -> Self {
        let w = synthetic_weights(spec);
        Reference(reference::Reference::from_weights(
            spec.config,
            w.iter().map(|(n, _, v)| (n.as_str(), v.as_slice())),
            Rope::Interleaved,
        ))
    }

    /// Logits after each token of `tokens` (from position 0).
    pub fn logits(mut self, tokens: &[u32]) -> Vec<Vec<f64>> {
        self.0.logits(tokens)
    }
}
