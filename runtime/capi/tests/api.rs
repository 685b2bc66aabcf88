//! The C ABI, called from Rust exactly as C calls it: the text equals the
//! runtime's own for the same settings (library and caller arenas, path and
//! buffer models), the callback stops generation, a model refuses to change
//! or go while sessions are open, and runtime errors arrive as the right
//! status with a message. NULL and garbage arguments are the C test's
//! (tests/c/errors.c).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};

use edgelm::edgelm_status::{self, *};
use edgelm::*;
use edgelm_runtime::format::DType;
use edgelm_runtime::{AlignedBytes, Engine, EngineOptions, Error, SamplerConfig, SessionOptions};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

fn files() -> (Vec<u8>, Vec<u8>) {
    let spec = SyntheticSpec::tiny(DType::Q8);
    let pack = SyntheticPackSpec {
        domain: "recipe".into(),
        own_vocab: Some(300),
        tag_token: None,
        positions: vec![1],
        identity_init: false,
        dtype: DType::Q8,
        seed: 9,
    };
    (synthetic_model(&spec).unwrap(), synthetic_pack(&spec, &pack).unwrap())
}

fn sampler(seed: u64) -> edgelm_sampler {
    let mut s = std::mem::MaybeUninit::uninit();
    // SAFETY: a writable sampler
    assert_eq!(unsafe { edgelm_sampler_defaults(s.as_mut_ptr()) }, EDGELM_OK);
    // SAFETY: written on success
    let mut s = unsafe { s.assume_init() };
    s.temperature = 0.8;
    s.top_p = 0.9;
    s.seed = seed;
    s
}

fn last_error() -> String {
    // SAFETY: a valid NUL-terminated string
    unsafe { CStr::from_ptr(edgelm_last_error()) }.to_string_lossy().into_owned()
}

#[track_caller]
fn ok(status: edgelm_status) {
    assert_eq!(status, EDGELM_OK, "{}", last_error());
}

fn open_buffers(base: &[u8], pack: &[u8]) -> *mut edgelm_model {
    let mut m = null_mut();
    // SAFETY: valid buffers and out-pointer
    ok(unsafe { edgelm_model_open_buffer(base.as_ptr(), base.len(), &mut m) });
    // SAFETY: as above
    ok(unsafe { edgelm_model_add_pack_buffer(m, pack.as_ptr(), pack.len()) });
    m
}

/// Collects pieces; stops after `stop_after` pieces when set.
struct Sink {
    text: String,
    pieces: usize,
    stop_after: Option<usize>,
}

unsafe extern "C" fn collect(piece: *const c_char, len: usize, user: *mut c_void) -> c_int {
    // SAFETY: the library passes `len` bytes plus a NUL, and our Sink
    let (bytes, sink) = unsafe { (std::slice::from_raw_parts(piece.cast::<u8>(), len + 1), &mut *(user as *mut Sink)) };
    assert_eq!(bytes[len], 0, "pieces are NUL-terminated");
    sink.text.push_str(std::str::from_utf8(&bytes[..len]).unwrap());
    sink.pieces += 1;
    c_int::from(sink.stop_after.is_some_and(|n| sink.pieces >= n))
}

/// Prompt + generate on `s`; the text and why it stopped.
fn run(s: *mut edgelm_session, prompt: &str, n: usize, stop_after: Option<usize>) -> (String, edgelm_stop_reason) {
    let mut sink = Sink { text: String::new(), pieces: 0, stop_after };
    let mut reason = edgelm_stop_reason::EDGELM_STOP_MAX_TOKENS;
    let mut n_prompt = 0;
    // SAFETY: a live session, valid buffers
    unsafe {
        ok(edgelm_session_feed_prompt(s, prompt.as_ptr().cast(), prompt.len(), &mut n_prompt));
        assert!(n_prompt >= prompt.len().min(1));
        ok(edgelm_session_generate(s, n, Some(collect), (&mut sink as *mut Sink).cast(), &mut reason));
    }
    (sink.text, reason)
}

/// What the runtime itself generates.
fn by_runtime(base: &[u8], pack: &[u8], domain: &str, seed: u64, prompt: &str, n: usize) -> String {
    let mut engine = Engine::from_bytes(AlignedBytes::from_slice(base), EngineOptions::default()).unwrap();
    engine.add_pack_bytes(AlignedBytes::from_slice(pack)).unwrap();
    let sampler = SamplerConfig { temperature: 0.8, top_p: 0.9, seed, ..Default::default() };
    let opts = SessionOptions { sampler, ..SessionOptions::new(engine.max_seq()) };
    engine
        .with_session(Some(domain), opts, |s| -> Result<String, Error> {
            s.feed_prompt(prompt)?;
            let mut out = String::new();
            s.generate(n, &mut |t| out.push_str(t))?;
            Ok(out)
        })
        .unwrap()
}

#[test]
fn text_equals_the_runtime_s_in_both_arenas_and_the_callback_stops() {
    let (base, pack) = files();
    let m = open_buffers(&base, &pack);
    let mut count = 0;
    // SAFETY: live model, writable outs
    ok(unsafe { edgelm_model_domain_count(m, &mut count) });
    let names: Vec<String> = (0..count)
        .map(|i| {
            let mut p = null();
            // SAFETY: as above
            ok(unsafe { edgelm_model_domain_name(m, i, &mut p) });
            // SAFETY: a NUL-terminated name owned by the model
            unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names, ["story", "recipe"]);

    for (i, domain) in names.iter().enumerate() {
        let expected = by_runtime(&base, &pack, domain, 11 + i as u64, "Once", 40);
        assert!(!expected.is_empty());
        let cdomain = CString::new(domain.as_str()).unwrap();
        let smp = sampler(11 + i as u64);

        // the library's arena
        let mut s = null_mut();
        // SAFETY: live model, valid strings and outs
        ok(unsafe { edgelm_session_new(m, cdomain.as_ptr(), 0, &smp, &mut s) });
        assert_eq!(run(s, "Once", 40, None).0, expected, "{domain}");

        // the caller's arena, deliberately misaligned
        let mut need = 0;
        // SAFETY: as above
        ok(unsafe { edgelm_model_arena_size(m, 0, &mut need) });
        let mut arena = vec![0u8; need + 1];
        let mut s2 = null_mut();
        // SAFETY: `need` writable bytes at offset 1, kept until the session is freed
        ok(unsafe {
            edgelm_session_new_in_arena(m, cdomain.as_ptr(), 0, &smp, arena[1..].as_mut_ptr().cast(), need, &mut s2)
        });
        assert_eq!(run(s2, "Once", 40, None).0, expected, "{domain} in the caller's arena");
        // SAFETY: live session
        ok(unsafe { edgelm_session_free(s2) });

        // the callback stops generation: the first three pieces, then nothing
        // (the first session again: a new prompt restarts the context, not the RNG)
        // SAFETY: live session, then freed once
        unsafe {
            ok(edgelm_session_free(s));
            s = null_mut();
            ok(edgelm_session_new(m, cdomain.as_ptr(), 0, &smp, &mut s));
        }
        let (text, reason) = run(s, "Once", 40, Some(3));
        assert_eq!(reason, edgelm_stop_reason::EDGELM_STOP_CALLBACK);
        assert!(expected.starts_with(&text) && text.len() < expected.len(), "{text:?} vs {expected:?}");
        let mut tokens = 0;
        // SAFETY: live session
        ok(unsafe { edgelm_session_token_count(s, &mut tokens) });
        assert!(tokens > 0);
        // SAFETY: live session
        ok(unsafe { edgelm_session_reset(s) });
        // SAFETY: live session
        ok(unsafe { edgelm_session_token_count(s, &mut tokens) });
        assert_eq!(tokens, 0);
        // SAFETY: live session, freed once
        ok(unsafe { edgelm_session_free(s) });
    }
    // SAFETY: no session is open
    ok(unsafe { edgelm_model_free(m) });
}

#[test]
fn a_model_with_open_sessions_is_neither_changed_nor_freed() {
    let (base, pack) = files();
    let mut m = null_mut();
    // SAFETY: valid buffers and outs throughout; each handle freed once
    unsafe {
        ok(edgelm_model_open_buffer(base.as_ptr(), base.len(), &mut m));
        let mut s = null_mut();
        ok(edgelm_session_new(m, null(), 16, null(), &mut s));
        assert_eq!(edgelm_model_add_pack_buffer(m, pack.as_ptr(), pack.len()), EDGELM_ERR_BUSY);
        assert!(last_error().contains("session"), "{}", last_error());
        assert_eq!(edgelm_model_free(m), EDGELM_ERR_BUSY);
        ok(edgelm_session_free(s));
        ok(edgelm_model_add_pack_buffer(m, pack.as_ptr(), pack.len()));
        // a refused pack (loaded twice) leaves the model as it was
        assert_eq!(edgelm_model_add_pack_buffer(m, pack.as_ptr(), pack.len()), EDGELM_ERR_WRONG_FILE);
        let mut count = 0;
        ok(edgelm_model_domain_count(m, &mut count));
        assert_eq!(count, 2);
        ok(edgelm_model_free(m));
    }
}

#[test]
fn runtime_errors_arrive_as_status_and_message() {
    let (base, pack) = files();
    let m = open_buffers(&base, &pack);
    let mut s = null_mut();
    // SAFETY: valid pointers throughout
    unsafe {
        let poetry = c"poetry";
        assert_eq!(edgelm_session_new(m, poetry.as_ptr(), 0, null(), &mut s), EDGELM_ERR_UNKNOWN_DOMAIN);
        assert!(last_error().contains("poetry"), "{}", last_error());
        assert!(s.is_null(), "no handle on failure");

        let mut bad = sampler(1);
        bad.top_p = 0.0;
        assert_eq!(edgelm_sampler_check(&bad), EDGELM_ERR_INVALID_ARGUMENT);
        assert_eq!(edgelm_session_new(m, null(), 0, &bad, &mut s), EDGELM_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("top-p"), "{}", last_error());
        bad = sampler(1);
        bad.temperature = f32::NAN;
        assert_eq!(edgelm_session_new(m, null(), 0, &bad, &mut s), EDGELM_ERR_INVALID_ARGUMENT);

        let mut max_seq = 0;
        ok(edgelm_model_max_seq(m, &mut max_seq));
        let mut need = 0;
        assert_eq!(edgelm_model_arena_size(m, max_seq + 1, &mut need), EDGELM_ERR_INVALID_ARGUMENT);
        ok(edgelm_model_arena_size(m, 8, &mut need));
        let mut arena = vec![0u8; need - 1];
        let r = edgelm_session_new_in_arena(m, null(), 8, null(), arena.as_mut_ptr().cast(), arena.len(), &mut s);
        assert_eq!(r, EDGELM_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("arena"), "{}", last_error());

        // a prompt longer than the context; a full context
        ok(edgelm_session_new(m, null(), 8, null(), &mut s));
        let long = "word ".repeat(50);
        assert_eq!(
            edgelm_session_feed_prompt(s, long.as_ptr().cast(), long.len(), null_mut()),
            EDGELM_ERR_PROMPT_TOO_LONG
        );
        let mut reason = edgelm_stop_reason::EDGELM_STOP_END_OF_TEXT;
        ok(edgelm_session_generate(s, 100, None, null_mut(), &mut reason));
        assert!(
            matches!(
                reason,
                edgelm_stop_reason::EDGELM_STOP_CONTEXT_FULL | edgelm_stop_reason::EDGELM_STOP_END_OF_TEXT
            ),
            "{reason:?}"
        );
        let bad_utf8 = [b'a', 0xff, b'b'];
        assert_eq!(
            edgelm_session_feed_prompt(s, bad_utf8.as_ptr().cast(), bad_utf8.len(), null_mut()),
            EDGELM_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("UTF-8"), "{}", last_error());
        ok(edgelm_session_free(s));
        ok(edgelm_model_free(m));

        // bad files
        let mut m2 = null_mut();
        let garbage = vec![7u8; 4096];
        assert_eq!(edgelm_model_open_buffer(garbage.as_ptr(), garbage.len(), &mut m2), EDGELM_ERR_CORRUPT_FILE);
        assert_eq!(edgelm_model_open_buffer(pack.as_ptr(), pack.len(), &mut m2), EDGELM_ERR_WRONG_FILE);
        let mut truncated = base.clone();
        truncated.truncate(base.len() / 2);
        assert_eq!(edgelm_model_open_buffer(truncated.as_ptr(), truncated.len(), &mut m2), EDGELM_ERR_CORRUPT_FILE);
        let missing = c"/nonexistent/edgelm/model.edgelm";
        assert_eq!(edgelm_model_open(missing.as_ptr(), &mut m2), EDGELM_ERR_IO);
        assert!(last_error().contains("/nonexistent/edgelm/model.edgelm"), "{}", last_error());
        assert!(m2.is_null());
    }
}

#[test]
fn the_committed_models_open_from_paths_and_match_the_runtime() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/");
    let (base, pack) = (format!("{root}base.edgelm"), format!("{root}recipe.edgelm"));
    let expected =
        by_runtime(&std::fs::read(&base).unwrap(), &std::fs::read(&pack).unwrap(), "recipe", 3, "Title:", 24);
    let (cbase, cpack) = (CString::new(base).unwrap(), CString::new(pack).unwrap());
    let mut m = null_mut();
    let mut s = null_mut();
    // SAFETY: valid pointers; handles freed once
    unsafe {
        ok(edgelm_model_open(cbase.as_ptr(), &mut m));
        ok(edgelm_model_add_pack(m, cpack.as_ptr()));
        assert_eq!(edgelm_model_add_pack(m, cbase.as_ptr()), EDGELM_ERR_WRONG_FILE, "a base is not a pack");
        ok(edgelm_session_new(m, c"recipe".as_ptr(), 0, &sampler(3), &mut s));
        assert_eq!(run(s, "Title:", 24, None).0, expected);
        ok(edgelm_session_free(s));
        ok(edgelm_model_free(m));
    }
}

#[test]
fn a_model_is_shared_by_threads() {
    let (base, pack) = files();
    let m = open_buffers(&base, &pack) as usize;
    let work = move |seed: u64| {
        let mut s = null_mut();
        // SAFETY: the model is live until every thread has joined; the session is this thread's
        unsafe { ok(edgelm_session_new(m as *const edgelm_model, c"recipe".as_ptr(), 0, &sampler(seed), &mut s)) };
        let text = run(s, "Once", 30, None).0;
        // SAFETY: this thread's session, freed once
        ok(unsafe { edgelm_session_free(s) });
        text
    };
    let serial: Vec<String> = (0..4).map(work).collect();
    let threads: Vec<_> = (0..4).map(|seed| std::thread::spawn(move || work(seed))).collect();
    let parallel: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(serial, parallel);
    // SAFETY: every session is freed
    ok(unsafe { edgelm_model_free(m as *mut edgelm_model) });
}

#[test]
fn status_names_and_version() {
    // SAFETY: static strings
    unsafe {
        assert_eq!(CStr::from_ptr(edgelm_status_name(EDGELM_ERR_BUSY as c_int)).to_str(), Ok("EDGELM_ERR_BUSY"));
        assert_eq!(CStr::from_ptr(edgelm_status_name(12345)).to_str(), Ok("unknown status"));
        assert_eq!(CStr::from_ptr(edgelm_version()).to_str(), Ok(env!("CARGO_PKG_VERSION")));
    }
}

/// One story from `m` (seed 11, "Once", 40 tokens).
fn story_of(m: *mut edgelm_model, domain: &str) -> String {
    let cdomain = CString::new(domain).unwrap();
    let smp = sampler(11);
    let mut s = null_mut();
    // SAFETY: live model, valid strings and outs
    ok(unsafe { edgelm_session_new(m, cdomain.as_ptr(), 0, &smp, &mut s) });
    let text = run(s, "Once", 40, None).0;
    // SAFETY: live session, freed once
    ok(unsafe { edgelm_session_free(s) });
    text
}

#[test]
fn models_read_in_place_and_open_options_give_the_same_text() {
    let (base, pack) = files();
    let expected: Vec<String> =
        ["story", "recipe"].iter().map(|d| by_runtime(&base, &pack, d, 11, "Once", 40)).collect();
    // 64-byte aligned buffers the caller keeps until the model is freed
    let (b, p) = (AlignedBytes::from_slice(&base), AlignedBytes::from_slice(&pack));
    let mut defaults = std::mem::MaybeUninit::uninit();
    // SAFETY: writable
    ok(unsafe { edgelm_open_options_defaults(defaults.as_mut_ptr()) });
    // SAFETY: written on success
    let defaults = unsafe { defaults.assume_init() };
    assert_eq!((defaults.threads, defaults.verify_checksum != 0), (1, true));
    let two_threads = edgelm_open_options { threads: 2, verify_checksum: 0, kv: 0 };
    for opts in [defaults, two_threads] {
        let mut m = null_mut();
        // SAFETY: aligned buffers that outlive the model, valid options and out
        unsafe {
            ok(edgelm_model_open_buffer_in_place(b.as_ptr(), b.len(), &opts, &mut m));
            ok(edgelm_model_add_pack_buffer_in_place(m, p.as_ptr(), p.len()));
        }
        for (domain, want) in ["story", "recipe"].iter().zip(&expected) {
            assert_eq!(&story_of(m, domain), want, "{domain} with {opts:?}");
        }
        // SAFETY: no session open
        ok(unsafe { edgelm_model_free(m) });
    }

    // f16 and q8 caches: smaller arenas, and sessions still generate
    let arena_of = |opts: &edgelm_open_options| {
        let (mut m, mut bytes) = (null_mut(), 0usize);
        // SAFETY: aligned buffer that outlives the model, valid options and outs
        unsafe {
            ok(edgelm_model_open_buffer_in_place(b.as_ptr(), b.len(), opts, &mut m));
            ok(edgelm_model_arena_size(m, 0, &mut bytes));
        }
        assert!(!story_of(m, "story").is_empty());
        // SAFETY: no session open
        ok(unsafe { edgelm_model_free(m) });
        bytes
    };
    let half = edgelm_open_options { kv: edgelm_kv_type::EDGELM_KV_F16 as c_int, ..defaults };
    let quarter = edgelm_open_options { kv: edgelm_kv_type::EDGELM_KV_Q8 as c_int, ..defaults };
    assert_eq!(defaults.kv, edgelm_kv_type::EDGELM_KV_F32 as c_int);
    assert!(arena_of(&quarter) < arena_of(&half) && arena_of(&half) < arena_of(&defaults));
    // an unknown cache type is refused, with the values that exist
    for kv in [3, -1, c_int::MAX] {
        let mut m = null_mut();
        let bad = edgelm_open_options { kv, ..defaults };
        // SAFETY: aligned buffer, valid options and out
        let status = unsafe { edgelm_model_open_buffer_in_place(b.as_ptr(), b.len(), &bad, &mut m) };
        assert_eq!(status, EDGELM_ERR_INVALID_ARGUMENT, "kv {kv}");
        assert!(m.is_null() && last_error().contains("EDGELM_KV_Q8"), "{}", last_error());
    }

    // in place means no copy: bytes off the 64-byte grid are refused
    let shifted = AlignedBytes::from_slice(&[&[0u8][..], &base[..]].concat());
    let mut m = null_mut();
    // SAFETY: readable bytes, valid options and out
    let status = unsafe { edgelm_model_open_buffer_in_place(shifted[1..].as_ptr(), base.len(), &defaults, &mut m) };
    assert_eq!(status, EDGELM_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("aligned"), "{}", last_error());

    // a pack whose stored checksum is wrong: refused when verified, used when not
    let mut bad = pack.clone();
    *bad.last_mut().unwrap() ^= 0xff;
    let dir = tempfile_dir();
    let (base_path, bad_path) = (dir.join("base.edgelm"), dir.join("bad-pack.edgelm"));
    std::fs::write(&base_path, &base).unwrap();
    std::fs::write(&bad_path, &bad).unwrap();
    let (cbase, cbad) =
        (CString::new(base_path.to_str().unwrap()).unwrap(), CString::new(bad_path.to_str().unwrap()).unwrap());
    for (opts, want) in [(defaults, EDGELM_ERR_CORRUPT_FILE), (two_threads, EDGELM_OK)] {
        for from_path in [true, false] {
            let mut m = null_mut();
            // SAFETY: valid strings, buffer, options and outs; the model is freed once
            unsafe {
                ok(edgelm_model_open_with(cbase.as_ptr(), &opts, &mut m));
                let status = match from_path {
                    true => edgelm_model_add_pack(m, cbad.as_ptr()),
                    false => edgelm_model_add_pack_buffer(m, bad.as_ptr(), bad.len()),
                };
                assert_eq!(status, want, "{}", last_error());
                ok(edgelm_model_free(m));
            }
        }
    }
    let zero = edgelm_open_options { threads: 0, verify_checksum: 1, kv: 0 };
    // SAFETY: valid strings, options and out
    assert_eq!(unsafe { edgelm_model_open_with(cbase.as_ptr(), &zero, &mut m) }, EDGELM_ERR_INVALID_ARGUMENT);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A fresh folder under the system's temporary one.
fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("edgelm-capi-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
