//! Domain packs: bound to their base, additive (loading one changes nothing
//! for other domains), and identity-initialised expansion blocks compute the base.

mod common;

use common::aligned;
use edgelm_runtime::format::DType;
use edgelm_runtime::{Error, Model, SamplerConfig, Session, SessionOptions};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

fn recipe_pack(identity_init: bool, own_vocab: Option<u32>) -> SyntheticPackSpec {
    SyntheticPackSpec {
        domain: "recipe".into(),
        own_vocab,
        tag_token: if own_vocab.is_none() { Some(0) } else { None },
        positions: vec![1, 2],
        identity_init,
        dtype: DType::Q8,
        seed: 11,
    }
}

fn generate(model: &Model<'_>, domain: &str, prompt: &str) -> String {
    let mut arena = vec![0u8; model.arena_bytes(64)];
    let opts = SessionOptions {
        max_seq: 64,
        sampler: SamplerConfig { temperature: 0.8, top_p: 0.9, seed: 3, ..Default::default() },
        ..SessionOptions::new(64)
    };
    let mut s = Session::new(model, domain, &mut arena, opts).unwrap();
    s.feed_prompt(prompt).unwrap();
    let mut out = String::new();
    s.generate(40, &mut |t| out.push_str(t)).unwrap();
    out
}

#[test]
fn story_output_is_identical_with_and_without_a_pack() {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let base = aligned(synthetic_model(&spec).unwrap());
    let pack = aligned(synthetic_pack(&spec, &recipe_pack(false, Some(400))).unwrap());
    let alone = Model::from_bytes(&base).unwrap();
    let mut with = Model::from_bytes(&base).unwrap();
    with.add_pack_bytes(&pack).unwrap();
    assert_eq!(with.domains().len(), 2);
    assert!(with.arena_bytes(64) > alone.arena_bytes(64), "the pack's blocks and vocabulary need room");
    let a = generate(&alone, "story", "Once upon a time");
    let b = generate(&with, "story", "Once upon a time");
    assert_eq!(a, b);
    // and the recipe domain really is different
    let r = generate(&with, "recipe", "Once upon a time");
    assert_ne!(a, r);
}

#[test]
fn a_pack_for_another_base_is_refused() {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let mut other = spec.clone();
    other.seed = 99;
    let base = aligned(synthetic_model(&spec).unwrap());
    let foreign = aligned(synthetic_pack(&other, &recipe_pack(false, None)).unwrap());
    let pack = aligned(synthetic_pack(&spec, &recipe_pack(false, None)).unwrap());
    let mut model = Model::from_bytes(&base).unwrap();
    let e = model.add_pack_bytes(&foreign).unwrap_err();
    assert!(matches!(e, Error::PackBaseMismatch { .. }), "{e:?}");
    assert_eq!(model.domains().len(), 1, "a refused pack leaves the model unchanged");
    // a base is not a pack, and a domain cannot be loaded twice
    assert_eq!(model.add_pack_bytes(&base).unwrap_err(), Error::NotAPack);
    model.add_pack_bytes(&pack).unwrap();
    assert!(matches!(model.add_pack_bytes(&pack), Err(Error::DuplicateDomain(_))));
    assert_eq!(model.domains().len(), 2);
}

#[test]
fn identity_initialised_blocks_compute_the_base_exactly() {
    // shared tokenizer and head, expansion blocks with zeroed output
    // projections: the recipe domain's logits equal the story domain's
    // (given the same tokens: the tag token is BOS here).
    let spec = SyntheticSpec::tiny(DType::F32);
    let base = aligned(synthetic_model(&spec).unwrap());
    let pack = aligned(synthetic_pack(&spec, &recipe_pack(true, None)).unwrap());
    let mut model = Model::from_bytes(&base).unwrap();
    model.add_pack_bytes(&pack).unwrap();
    let (mut a1, mut a2) = (vec![0u8; model.arena_bytes(32)], vec![0u8; model.arena_bytes(32)]);
    let mut story = Session::new(&model, "story", &mut a1, SessionOptions::new(32)).unwrap();
    let mut recipe = Session::new(&model, "recipe", &mut a2, SessionOptions::new(32)).unwrap();
    for t in [0u32, 5, 77, 300, 12, 12, 9] {
        let a = story.step(t).unwrap().to_vec();
        let b = recipe.step(t).unwrap();
        assert_eq!(&a[..], b, "token {t}");
    }
}
