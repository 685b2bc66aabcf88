//! The owned `Engine` (files + packs + kernels + threads) gives the same
//! sessions as a hand-built `Model` and arena; errors say what went wrong by
//! `kind()`, a full context included.

mod common;

use common::aligned;
use edgelm_runtime::format::DType;
use edgelm_runtime::{
    Engine, EngineOptions, Error, ErrorKind, Model, SamplerConfig, Session, SessionOptions, StopReason, VerifyChecksum,
};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

fn opts(max_seq: usize) -> SessionOptions {
    SessionOptions {
        max_seq,
        sampler: SamplerConfig { temperature: 0.8, top_p: 0.9, seed: 5, ..Default::default() },
        ..SessionOptions::new(max_seq)
    }
}

#[test]
fn engine_sessions_equal_hand_built_ones() {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let base = synthetic_model(&spec).unwrap();
    let pack = synthetic_pack(&spec, &SyntheticPackSpec::recipe(DType::Q8)).unwrap();

    let (b, p) = (aligned(base.clone()), aligned(pack.clone()));
    let mut model = Model::from_bytes(&b).unwrap();
    model.add_pack_bytes(&p).unwrap();
    let by_hand = |domain: &str| {
        let mut arena = vec![0u8; model.arena_bytes(48)];
        let mut s = Session::new(&model, domain, &mut arena, opts(48)).unwrap();
        s.feed_prompt("Once").unwrap();
        let mut out = String::new();
        s.generate(20, &mut |t| out.push_str(t)).unwrap();
        out
    };

    let mut engine = Engine::from_bytes(aligned(base), EngineOptions::default()).unwrap();
    engine.add_pack_bytes(aligned(pack)).unwrap();
    assert_eq!(engine.max_seq(), spec.config.max_seq_len as usize);
    for domain in [None, Some("story"), Some("recipe")] {
        let out = engine
            .with_session(domain, opts(48), |s| -> Result<String, Error> {
                s.feed_prompt("Once")?;
                let mut out = String::new();
                s.generate(20, &mut |t| out.push_str(t))?;
                Ok(out)
            })
            .unwrap();
        assert_eq!(out, by_hand(domain.unwrap_or("story")), "{domain:?}");
    }
    let e = engine.with_session(Some("poetry"), opts(48), |_| Ok::<_, Error>(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownDomain);
    let e = engine.with_session(None, opts(100_000), |_| Ok::<_, Error>(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

#[test]
fn engine_refuses_bad_files_and_keeps_what_it_had() {
    let spec = SyntheticSpec::tiny(DType::F32);
    let base = synthetic_model(&spec).unwrap();
    let e = Engine::open("/nonexistent/model.edgelm".as_ref(), EngineOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let e = Engine::from_bytes(aligned(b"not a model at all, just some bytes of text".to_vec()), Default::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptFile, "{e}");
    let zero = EngineOptions { threads: 0, ..Default::default() };
    assert_eq!(Engine::from_bytes(aligned(base.clone()), zero).unwrap_err().kind(), ErrorKind::InvalidArgument);

    let mut engine = Engine::from_bytes(aligned(base.clone()), Default::default()).unwrap();
    // a base is not a pack; the engine is unchanged after the refusal
    assert_eq!(engine.add_pack_bytes(aligned(base)).unwrap_err().kind(), ErrorKind::WrongFile);
    assert_eq!(engine.model().unwrap().domains().len(), 1);
}

fn story(engine: &Engine, domain: &str) -> String {
    engine
        .with_session(Some(domain), opts(48), |s| -> Result<String, Error> {
            s.feed_prompt("Once")?;
            let mut out = String::new();
            s.generate(20, &mut |t| out.push_str(t))?;
            Ok(out)
        })
        .unwrap()
}

#[test]
fn static_bytes_are_read_in_place_and_checksums_can_be_skipped() {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let base = synthetic_model(&spec).unwrap();
    let pack = synthetic_pack(&spec, &SyntheticPackSpec::recipe(DType::Q8)).unwrap();
    let mut copied = Engine::from_bytes(aligned(base.clone()), EngineOptions::default()).unwrap();
    copied.add_pack_bytes(aligned(pack.clone())).unwrap();

    let (b, p): (&'static [u8], &'static [u8]) =
        (Box::leak(Box::new(aligned(base))), Box::leak(Box::new(aligned(pack))));
    let mut in_place = Engine::from_static(b, EngineOptions::default()).unwrap();
    in_place.add_pack_static(p, VerifyChecksum::Yes).unwrap();
    for domain in ["story", "recipe"] {
        assert_eq!(story(&in_place, domain), story(&copied, domain));
    }
    // in place: the file one byte off the 64-byte grid is refused, not copied onto it
    let shifted: &'static [u8] = Box::leak(Box::new(aligned([&[0u8][..], b].concat())));
    let e = Engine::from_static(&shifted[1..], EngineOptions::default()).unwrap_err();
    assert_eq!(e, Error::Misaligned);

    // a pack whose stored checksum is wrong: refused when verified, used when not
    let mut bad = p.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let mut e1 = Engine::from_static(b, EngineOptions::default()).unwrap();
    let err = e1.add_pack_bytes_with(aligned(bad.clone()), VerifyChecksum::Yes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptFile, "{err}");
    e1.add_pack_bytes_with(aligned(bad), VerifyChecksum::Skip).unwrap();
    assert_eq!(story(&e1, "recipe"), story(&copied, "recipe"));
}

#[test]
fn a_full_context_is_its_own_error() {
    let bytes = aligned(synthetic_model(&SyntheticSpec::tiny(DType::F32)).unwrap());
    let model = Model::from_bytes(&bytes).unwrap();
    let mut arena = vec![0u8; model.arena_bytes(8)];
    let mut s = Session::new(&model, "story", &mut arena, SessionOptions::new(8)).unwrap();
    for t in 0..8 {
        s.step(t + 1).unwrap();
    }
    let e = s.step(1).unwrap_err();
    assert_eq!(e, Error::ContextFull { limit: 8 });
    assert_eq!(e.kind(), ErrorKind::ContextFull);
    // generation reports it as a stop reason, not an error
    s.feed_prompt("a").unwrap();
    assert_eq!(s.generate(100, &mut |_| {}).unwrap(), StopReason::ContextFull);
    // a prompt that does not fit is a different error
    let e = s.feed_prompt(&"word ".repeat(50)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PromptTooLong);
    assert!(!e.to_string().contains("--"), "library messages name no CLI flags: {e}");
}

#[test]
fn a_domain_of_another_model_is_refused() {
    let bytes = aligned(synthetic_model(&SyntheticSpec::tiny(DType::F32)).unwrap());
    let a = Model::from_bytes(&bytes).unwrap();
    let b = Model::from_bytes(&bytes).unwrap();
    let mut arena = vec![0u8; a.arena_bytes(8)];
    let e = Session::with_domain(&a, b.default_domain(), &mut arena, SessionOptions::new(8)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::UnknownDomain);
}

#[test]
fn generate_while_stops_when_asked_and_otherwise_equals_generate() {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let engine = Engine::from_bytes(aligned(synthetic_model(&spec).unwrap()), EngineOptions::default()).unwrap();
    let run = |stop_after: Option<usize>| {
        engine
            .with_session(None, opts(48), |s| -> Result<_, Error> {
                s.feed_prompt("Once")?;
                let mut pieces = Vec::new();
                let reason = s.generate_while(30, &mut |t| {
                    pieces.push(t.to_string());
                    match stop_after {
                        Some(n) if pieces.len() >= n => core::ops::ControlFlow::Break(()),
                        _ => core::ops::ControlFlow::Continue(()),
                    }
                })?;
                Ok((pieces, reason, s.tokens().len()))
            })
            .unwrap()
    };
    let plain = engine
        .with_session(None, opts(48), |s| -> Result<_, Error> {
            s.feed_prompt("Once")?;
            let mut pieces = Vec::new();
            let reason = s.generate(30, &mut |t| pieces.push(t.to_string()))?;
            Ok((pieces, reason, s.tokens().len()))
        })
        .unwrap();
    assert_eq!(run(None), plain);
    assert!(plain.0.len() > 3, "the synthetic model should stream several pieces: {plain:?}");
    let (pieces, reason, len) = run(Some(3));
    assert_eq!(reason, StopReason::Stopped);
    assert_eq!(pieces[..], plain.0[..3]);
    assert!(len < plain.2, "no tokens are generated after the stop ({len} vs {})", plain.2);
}
