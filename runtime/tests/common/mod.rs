//! Shared support of the runtime's tests: aligned model bytes, and the
//! independent f64 reference forward pass (from edgelm-testkit) over the
//! synthetic weights.
#![allow(dead_code)]

use edgelm_testkit::reference;
use edgelm_testkit::synthetic::{synthetic_weights, SyntheticSpec};

pub use edgelm_testkit::aligned;
pub use reference::Rope;

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
