//! The batched path (blocks of tokens, matrix × matrix) against the
//! token-by-token path (matrix × vector): the same kernels on the same row
//! blocks in the same order, so logits, the KV cache and bits per byte must be
//! bit-identical. Tolerance: none (exact f32/f64 equality), on every kernel
//! table this CPU runs, for f32, f16, q8 and q4 weights, every KV cache type,
//! prompts shorter and longer than a block, odd lengths, blocks that start
//! after existing cache positions, an expansion pack, and threads.
//!
//! The one exception: a table whose batched quantized products add the
//! groups in their own order (`MatmulOrder::GroupsInOrder`, AVX-512) gives
//! q8 and q4 models' blocks logits within [`LOGIT_TOLERANCE`] of token by
//! token, and bits per byte within [`NATS_TOLERANCE`] (there scoring also
//! goes through the fused head, `Kernels::head_nll`, whose own bound is in
//! `kernels.rs`); threads still change nothing there, bit for bit.

mod common;

use common::aligned;
use edgelm_runtime::bpb::{score_document, Totals};
use edgelm_runtime::format::DType;
use edgelm_runtime::kernels::{self, Kernels, MatmulOrder};
use edgelm_runtime::threads::Pool;
use edgelm_runtime::{Error, KvType, Model, Session, SessionOptions};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

fn tokens(n: usize, vocab: u32, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11 + salt * 101) % vocab).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Worst relative logit change (`|a − b| / max(|a|, 1)`) a block may make
/// against token by token where the batched products' f32 order is not the
/// matvec's. The products differ in their last bits, but q8 and q4 models
/// quantize each layer's input again: a last-bit change can move a value
/// across a rounding step (1/127 of its group's largest magnitude), and that
/// step propagates (as `reduced_caches_are_close_to_f32` bounds the f16
/// cache's effect on these models by 0.1). Seen on AVX-512 (Zen 4): at most
/// 2.3e-3 with the f32 cache, 2.8e-2 with q4 weights and the q8 cache.
const LOGIT_TOLERANCE: f32 = 0.1;
/// Relative change of bits per byte's total nats allowed there (seen: about
/// 1e-9).
const NATS_TOLERANCE: f64 = 1e-4;

/// Whether table `k` computes the batched path of model `name` (a `DType`'s
/// name) bit for bit as token by token: its quantized batched products keep
/// the matvec's order, or the model has no quantized weights (f32 and f16
/// blocks go through the matvec per token), and its block attention scores
/// from the cache as decode does (a table with `scores_by_dim` scores a
/// block's queries in that kernel's order).
fn exact(k: &Kernels, name: &str) -> bool {
    (k.matmul_order == MatmulOrder::Matvec || !matches!(name, "Q8" | "Q4")) && k.scores_by_dim.is_none()
}

/// `got` against `want` (logits as bits): equal, or where `exact` is false,
/// within [`LOGIT_TOLERANCE`] (and then the worst change is returned).
fn check_logits(got: &[Vec<u32>], want: &[Vec<u32>], exact: bool, what: &str) -> f32 {
    if exact {
        assert_eq!(got, want, "{what}");
        return 0.0;
    }
    assert_eq!(got.len(), want.len(), "{what}: logit rows");
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}: logits per row");
        for (&g, &w) in g.iter().zip(w) {
            let (g, w) = (f32::from_bits(g), f32::from_bits(w));
            assert!(g.is_finite(), "{what}: logit {g}");
            worst = worst.max((g - w).abs() / w.abs().max(1.0));
        }
    }
    assert!(worst < LOGIT_TOLERANCE, "{what}: worst relative logit change {worst}");
    worst
}

fn opts(max_seq: usize, kv: KvType, block: usize) -> SessionOptions {
    SessionOptions { kv, block, block_logits: true, ..SessionOptions::new(max_seq) }
}

/// Logits after every token: `chunks` fed with `extend` (the prompt path,
/// which keeps only the last token's logits) and then five decode steps.
fn run_extend(
    model: &Model<'_>,
    domain: &str,
    k: &'static Kernels,
    o: SessionOptions,
    chunks: &[&[u32]],
    pool: Option<&Pool>,
) -> Vec<Vec<u32>> {
    let mut arena = vec![0u8; model.arena_bytes_for(&o)];
    let mut s = Session::new(model, domain, &mut arena, o).unwrap();
    s.set_kernels(k);
    if let Some(p) = pool {
        s.set_pool(p);
    }
    let mut out = Vec::new();
    for c in chunks {
        out.push(bits(s.extend(c).unwrap()));
    }
    for t in [3u32, 5, 7, 11, 13] {
        // decode reads the cache the blocks wrote
        out.push(bits(s.step(t).unwrap()));
    }
    out
}

/// Every token's logits via `extend_scored`.
fn run_scored(
    model: &Model<'_>,
    domain: &str,
    k: &'static Kernels,
    o: SessionOptions,
    chunks: &[&[u32]],
) -> Vec<Vec<u32>> {
    let mut arena = vec![0u8; model.arena_bytes_for(&o)];
    let mut s = Session::new(model, domain, &mut arena, o).unwrap();
    s.set_kernels(k);
    let mut out = Vec::new();
    for c in chunks {
        s.extend_scored(c, &mut |_, l| out.push(bits(l))).unwrap();
        // `logits()` after a scored run is the last token's
        assert_eq!(bits(s.logits()), *out.last().unwrap());
    }
    out
}

fn models() -> Vec<(String, Vec<u8>, Option<Vec<u8>>)> {
    let mut v = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        let spec = SyntheticSpec::tiny(dtype);
        let base = synthetic_model(&spec).unwrap();
        let pack = (dtype == DType::Q8).then(|| synthetic_pack(&spec, &SyntheticPackSpec::recipe(dtype)).unwrap());
        v.push((format!("{dtype:?}"), base, pack));
    }
    v
}

#[test]
fn blocks_equal_token_by_token() {
    for (name, base, pack) in models() {
        let b = aligned(base);
        let p = pack.map(aligned);
        let mut model = Model::from_bytes(&b).unwrap();
        if let Some(p) = &p {
            model.add_pack_bytes(p).unwrap();
        }
        let domains: Vec<&str> = model.domains().iter().map(|d| d.name).collect();
        for domain in domains {
            let vocab = model.domain(domain).unwrap().vocab_size as u32;
            let seq = tokens(61, vocab, 1);
            // odd lengths, one token alone, blocks continuing an existing cache
            let chunks: Vec<&[u32]> = vec![&seq[..5], &seq[5..6], &seq[6..29], &seq[29..61]];
            for k in kernels::available() {
                for kv in [KvType::F32, KvType::F16, KvType::Q8] {
                    let want = run_extend(&model, domain, k, opts(80, kv, 1), &chunks, None);
                    let want_scored = run_scored(&model, domain, k, opts(80, kv, 0), &chunks);
                    let exact = exact(k, &name);
                    for block in [2usize, 7, 8, 32, 64] {
                        let what = format!("{name} {domain} {} kv {kv:?} block {block}", k.name);
                        let got = run_extend(&model, domain, k, opts(80, kv, block), &chunks, None);
                        check_logits(&got, &want, exact, &what);
                        let got = run_scored(&model, domain, k, opts(80, kv, block), &chunks);
                        check_logits(&got, &want_scored, exact, &format!("{what} scored"));
                    }
                    // block logits off: scoring falls back to token by token
                    let no_logits = SessionOptions { block_logits: false, ..opts(80, kv, 16) };
                    assert_eq!(run_scored(&model, domain, k, no_logits, &chunks), want_scored);
                }
            }
        }
    }
}

/// With a pool: the same logits as one thread with the same blocks, bit for
/// bit (rows split at multiples of 8, tokens into whole ranges). Two
/// threads on the tiny models' four heads give each thread a KV group's two
/// heads together (`attn_values2`), three threads one head at a time.
#[test]
fn blocks_with_threads_equal_one_thread() {
    for threads in [2, 3] {
        let pool = Pool::new(threads);
        for (name, base, _) in models() {
            let b = aligned(base);
            let model = Model::from_bytes(&b).unwrap();
            let seq = tokens(40, 320, 2);
            let chunks: Vec<&[u32]> = vec![&seq[..17], &seq[17..]];
            let k = kernels::best();
            let want = run_extend(&model, "story", k, opts(64, KvType::F32, 16), &chunks, None);
            let got = run_extend(&model, "story", k, opts(64, KvType::F32, 16), &chunks, Some(&pool));
            assert_eq!(got, want, "{name}, {threads} threads");
            // a 64-token block: its attention (64 tokens × 64 positions × 4 heads
            // × 16) and its products pass the threshold and split across the pool
            const { assert!(64 * 64 * 4 * 16 >= edgelm_runtime::kernels::PARALLEL_MIN_BYTES) };
            let long = tokens(90, 320, 3);
            for kv in [KvType::F32, KvType::F16, KvType::Q8] {
                let want = run_extend(&model, "story", k, opts(96, kv, 64), &[&long[..]], None);
                assert_eq!(
                    run_extend(&model, "story", k, opts(96, kv, 64), &[&long[..]], Some(&pool)),
                    want,
                    "{name} {kv:?}, {threads} threads"
                );
            }
        }
    }
}

/// Decode (one token at a time) with a pool: the same logits as one thread.
/// The tiny models' matrices are all under the split threshold, so this uses
/// one layer of the 15M shape: q, k and v together (3 × 288 × 288) and gate
/// with up (2 × 768 × 288) pass it as one hand-off each, down alone, the
/// output projection (288 × 288) stays on the caller.
#[test]
fn decode_with_threads_equals_one_thread() {
    let pool = Pool::new(2);
    const { assert!(3 * 288 * 288 >= edgelm_runtime::kernels::PARALLEL_MIN_BYTES) };
    const { assert!(288 * 288 < edgelm_runtime::kernels::PARALLEL_MIN_BYTES) };
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        let mut spec = SyntheticSpec::stories15m(dtype);
        spec.config.n_layers = 1;
        spec.config.vocab_size = 320;
        spec.config.max_seq_len = 32;
        let b = aligned(synthetic_model(&spec).unwrap());
        let model = Model::from_bytes(&b).unwrap();
        let seq = tokens(12, 320, 4);
        for k in kernels::available() {
            // block 1: the prompt goes through the one-token path too
            let o = opts(32, KvType::F32, 1);
            let want = run_extend(&model, "story", k, o, &[&seq[..]], None);
            assert_eq!(run_extend(&model, "story", k, o, &[&seq[..]], Some(&pool)), want, "{dtype:?} {}", k.name);
        }
    }
}

/// Bits per byte: exactly the token-by-token totals (windows crossing blocks
/// too), or within [`NATS_TOLERANCE`] where `exact` says the blocks are not.
#[test]
fn bpb_equals_token_by_token() {
    for (name, base, _) in models() {
        let b = aligned(base);
        let model = Model::from_bytes(&b).unwrap();
        let docs = ["Once upon a time there was a cat.", "a", "The end of a long story, longer than the context window of this session by far, so it is scored in windows."];
        let score = |o: SessionOptions| {
            let mut arena = vec![0u8; model.arena_bytes_for(&o)];
            let mut s = Session::new(&model, "story", &mut arena, o).unwrap();
            let mut totals = Totals::default();
            for d in docs {
                let mut buf = vec![0u32; d.len() + 8];
                score_document(&mut s, d, &mut buf, &mut totals).unwrap();
            }
            totals
        };
        let exact = exact(kernels::best(), &name);
        for kv in [KvType::F32, KvType::F16, KvType::Q8] {
            let want = score(opts(48, kv, 1));
            assert!(want.scored_tokens > 48, "a document spans several windows");
            for block in [5usize, 16, 48] {
                let got = score(opts(48, kv, block));
                let what = format!("{name} kv {kv:?} block {block}");
                if exact {
                    assert_eq!(got, want, "{what}");
                } else {
                    assert_eq!(
                        (got.scored_tokens, got.bytes, got.documents),
                        (want.scored_tokens, want.bytes, want.documents)
                    );
                    let change = (got.nats - want.nats).abs() / want.nats;
                    assert!(change < NATS_TOLERANCE, "{what}: total nats {} vs {} ({change})", got.nats, want.nats);
                }
            }
        }
    }
}

/// The f16 and q8 caches stay close to the f32 one (f16: K/V rounded to 11
/// bits; q8: to 1/254 of each head's largest magnitude). Bounds on the worst
/// relative logit change: f16 1e-2 for float weights; q8 cache 5e-2; 0.1 for
/// q8/q4 weights, whose activations are re-quantized after each layer, so a
/// tiny change can move a value across a rounding step (1/127 of its group's
/// maximum) and that step propagates.
#[test]
fn reduced_caches_are_close_to_f32() {
    for (name, base, _) in models() {
        let b = aligned(base);
        let model = Model::from_bytes(&b).unwrap();
        let seq = tokens(40, 320, 3);
        let run = |kv| {
            let o = opts(64, kv, 16);
            let mut arena = vec![0u8; model.arena_bytes_for(&o)];
            let mut s = Session::new(&model, "story", &mut arena, o).unwrap();
            let mut out = Vec::new();
            s.extend_scored(&seq, &mut |_, l| out.push(l.to_vec())).unwrap();
            out
        };
        let a = run(KvType::F32);
        for kv in [KvType::F16, KvType::Q8] {
            let h = run(kv);
            let mut worst = 0f32;
            for (x, y) in a.iter().flatten().zip(h.iter().flatten()) {
                worst = worst.max((x - y).abs() / x.abs().max(1.0));
            }
            let bound = match (kv, name.as_str()) {
                (_, "Q8" | "Q4") => 0.1,
                (KvType::Q8, _) => 5e-2,
                _ => 1e-2,
            };
            assert!(worst > 0.0 && worst < bound, "{name} {kv:?}: worst relative logit change {worst}");
        }
    }
}

/// The arena: block buffers only with blocks on, block logits only when asked,
/// the f16 cache half the f32 one, the q8 cache a quarter plus its scales.
#[test]
fn arena_states_block_buffers_and_cache() {
    let b = aligned(synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap());
    let model = Model::from_bytes(&b).unwrap();
    let size = |kv, block, block_logits| {
        model.arena_bytes_for(&SessionOptions { kv, block, block_logits, ..SessionOptions::new(64) })
    };
    let one = size(KvType::F32, 1, false);
    assert_eq!(size(KvType::F32, 0, false), one);
    assert_eq!(size(KvType::F32, 1, true), one, "no block logits without blocks");
    let blocks = size(KvType::F32, 16, false);
    assert!(blocks > one);
    // block logits: 16 × vocab 320 × 4 bytes (plus alignment)
    let with_logits = size(KvType::F32, 16, true);
    assert!(with_logits >= blocks + 16 * 320 * 4 && with_logits <= blocks + 16 * 320 * 4 + 64);
    // cache: 2 × layers 2 × 64 positions × kv_dim 32 × 4 bytes; f16 saves half
    let saved = one - size(KvType::F16, 1, false);
    let cache32 = 2 * 2 * 64 * 32 * 4;
    assert!(saved >= cache32 / 2 - 128 && saved <= cache32 / 2 + 128, "saved {saved}");
    // q8: one byte per value plus an f32 scale per head (head_dim 16: 2 per
    // position of a layer's keys or values)
    let q8 = one - size(KvType::Q8, 1, false);
    let cache8 = 2 * 2 * 64 * 32 + 2 * 2 * 64 * 2 * 4;
    assert!(q8 >= cache32 - cache8 - 256 && q8 <= cache32 - cache8 + 256, "q8 saved {q8}");
    // a block longer than the context is clamped to it
    assert_eq!(size(KvType::F32, 1000, false), size(KvType::F32, 64, false));
    assert_eq!(model.arena_bytes(64), size(KvType::F32, edgelm_runtime::session::DEFAULT_BLOCK, false));
}

/// Bad input to the block path fails before anything runs.
#[test]
fn extend_checks_before_running() {
    let b = aligned(synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap());
    let model = Model::from_bytes(&b).unwrap();
    let o = opts(16, KvType::F32, 8);
    let mut arena = vec![0u8; model.arena_bytes_for(&o)];
    let mut s = Session::new(&model, "story", &mut arena, o).unwrap();
    assert!(s.extend(&[1, 2, 320]).is_err());
    assert!(s.tokens().is_empty());
    assert!(s.extend(&[1; 17]).is_err());
    assert!(s.tokens().is_empty());
    s.extend(&[1; 10]).unwrap();
    assert!(s.extend(&[1; 7]).is_err());
    assert_eq!(s.extend(&[1; 6]).unwrap().len(), 320);
    assert_eq!(s.tokens().len(), 16);
}

/// `Session::extend_nll` refuses bad input before running anything, on the
/// fused head's path (blocks, where the table has one) and token by token:
/// a target past the vocabulary, a target count other than the tokens', a
/// token past the vocabulary. The context is left as it was, and a good call
/// afterwards scores every token.
#[test]
fn extend_nll_refuses_bad_targets_and_runs_nothing() {
    for (name, base, _) in models() {
        let b = aligned(base);
        let model = Model::from_bytes(&b).unwrap();
        for block in [1usize, 16] {
            let o = SessionOptions { block_logits: false, ..opts(48, KvType::F32, block) };
            let mut arena = vec![0u8; model.arena_bytes_for(&o)];
            let mut s = Session::new(&model, "story", &mut arena, o).unwrap();
            let vocab = s.domain().vocab_size as u32;
            let seq = tokens(20, vocab, 4);
            let what = format!("{name} block {block}");
            let mut calls = 0;
            let mut count = |_: usize, _: f64| calls += 1;
            let mut bad = seq[1..].to_vec();
            bad[7] = vocab;
            assert!(
                matches!(s.extend_nll(&seq[..19], &bad, &mut count), Err(Error::BadToken(t)) if t == vocab),
                "{what}"
            );
            assert!(matches!(s.extend_nll(&seq[..19], &seq[1..19], &mut count), Err(Error::BadSetting(_))), "{what}");
            let mut bad_token = seq[..19].to_vec();
            bad_token[3] = vocab + 5;
            assert!(s.extend_nll(&bad_token, &seq[1..], &mut count).is_err(), "{what}");
            assert_eq!((calls, s.tokens().len()), (0, 0), "{what}: nothing ran");
            let mut nats = Vec::new();
            s.extend_nll(&seq[..19], &seq[1..], &mut |i, v| nats.push((i, v))).unwrap();
            assert_eq!(nats.iter().map(|&(i, _)| i).collect::<Vec<_>>(), (0..19).collect::<Vec<_>>(), "{what}");
            assert!(nats.iter().all(|&(_, v)| v.is_finite() && v > 0.0), "{what}: {nats:?}");
        }
    }
}
