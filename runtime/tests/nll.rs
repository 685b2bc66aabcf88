//! `bpb::nll` (lane-parallel max, branch-free f32 `exp`, f64 sums) against
//! the all-f64 form it replaced, over every scored token of synthetic models:
//! the summed nats, and so bits per byte, differ by less than 1e-6 relative.

mod common;

use common::aligned;
use edgelm_runtime::bpb::nll;
use edgelm_runtime::format::DType;
use edgelm_runtime::{Model, Session, SessionOptions};
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

/// The all-f64 form: `max + ln Σ exp_f64(v − max) − logits[target]`.
fn nll_f64(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max + libm::log(logits.iter().map(|&v| libm::exp(v as f64 - max)).sum::<f64>());
    lse - logits[target as usize] as f64
}

#[test]
fn bpb_within_1e6_relative_of_the_f64_form() {
    for (dtype, seed) in [(DType::F32, 1u64), (DType::Q8, 2), (DType::Q8, 3)] {
        let spec = SyntheticSpec { seed, ..SyntheticSpec::tiny(dtype) };
        let bytes = aligned(synthetic_model(&spec).unwrap());
        let model = Model::from_bytes(&bytes).unwrap();
        let vocab = model.domain("story").unwrap().vocab_size as u32;
        let o = SessionOptions { block: 16, block_logits: true, ..SessionOptions::new(64) };
        let mut arena = vec![0u8; model.arena_bytes_for(&o)];
        let mut s = Session::new(&model, "story", &mut arena, o).unwrap();
        let (mut got, mut want, mut worst) = (0f64, 0f64, 0f64);
        for doc in 0..6u32 {
            let seq: Vec<u32> = (0..64u32).map(|i| (i * 37 + doc * 101 + i * i * 7) % vocab).collect();
            s.reset();
            s.extend_scored(&seq[..63], &mut |i, logits| {
                let (a, b) = (nll(logits, seq[i + 1]).unwrap(), nll_f64(logits, seq[i + 1]));
                got += a;
                want += b;
                worst = f64::max(worst, (a - b).abs() / b.abs().max(1.0));
            })
            .unwrap();
        }
        let rel = (got - want).abs() / want;
        eprintln!("{dtype:?} seed {seed}: total nats {rel:.2e} relative apart, worst token {worst:.2e}");
        assert!(rel < 1e-6, "{dtype:?} seed {seed}: nats {got} vs {want} ({rel:e} relative)");
        assert!(worst <= 1e-6, "{dtype:?} seed {seed}: a token {worst:e} off");
    }
}
