//! A whole session on the micro model with the scalar reference kernels, in
//! every storage and with a pack: small enough to run under Miri
//! (`scripts/miri.sh`), which checks the zero-copy casts, the arena carving
//! and the session for undefined behaviour.

mod common;

use common::aligned;
use edgelm_runtime::format::DType;
use edgelm_runtime::kernels::REFERENCE;
use edgelm_runtime::{Model, SamplerConfig, Session, SessionOptions};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

/// Generated token ids for `domain`, with the arena starting `skew` bytes
/// past an aligned address.
fn tokens(model: &Model<'_>, domain: &str, skew: usize) -> Vec<u32> {
    let max_seq = 12;
    let mut arena = vec![0u8; model.arena_bytes(max_seq) + skew];
    let sampler = SamplerConfig { temperature: 0.8, top_k: 20, top_p: 0.9, repeat_penalty: 1.1, ..Default::default() };
    let opts = SessionOptions { sampler, ..SessionOptions::new(max_seq) };
    let mut s = Session::new(model, domain, &mut arena[skew..], opts).unwrap();
    s.set_kernels(&REFERENCE);
    s.feed_prompt("Once").unwrap();
    let mut text = String::new();
    // Under Miri one generated token (a forward pass, sampling with every
    // filter, decoding) covers what three do, at a third of the cost.
    let steps = if cfg!(miri) { 1 } else { 3 };
    s.generate(steps, &mut |t| text.push_str(t)).unwrap();
    s.tokens().to_vec()
}

#[test]
fn sessions_run_on_the_reference_kernels_in_every_storage() {
    for dtype in [DType::Q8, DType::F16, DType::F32] {
        let bytes = aligned(synthetic_model(&SyntheticSpec::micro(dtype)).unwrap());
        let model = Model::from_bytes(&bytes).unwrap();
        let a = tokens(&model, "story", 0);
        assert!(a.len() > 3, "{dtype:?}: {a:?}");
        assert!(a.iter().all(|&t| t < 264));
        // the arena need not start aligned: the same tokens from a skewed slice
        assert_eq!(tokens(&model, "story", 1), a, "{dtype:?}");
    }
}

#[test]
fn a_pack_domain_runs_on_the_reference_kernels() {
    let base_spec = SyntheticSpec::micro(DType::Q8);
    let base = aligned(synthetic_model(&base_spec).unwrap());
    let spec = SyntheticPackSpec { own_vocab: Some(260), positions: vec![1], ..SyntheticPackSpec::recipe(DType::Q8) };
    let pack = aligned(synthetic_pack(&base_spec, &spec).unwrap());
    let mut model = Model::from_bytes(&base).unwrap();
    let story = tokens(&model, "story", 0);
    model.add_pack_bytes(&pack).unwrap();
    assert_eq!(tokens(&model, "story", 0), story, "a pack does not change the base domain");
    let recipe = tokens(&model, "recipe", 3);
    assert!(recipe.iter().all(|&t| t < 260), "{recipe:?}");
}
