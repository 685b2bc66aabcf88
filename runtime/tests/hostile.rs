//! Hostile inputs the format and session tests elsewhere do not cover, each
//! with the specific error it must give (docs/RELIABILITY.md lists them all):
//! hand-encoded headers the writer refuses to make (overlapping data,
//! overflowing shapes, absurd vocabularies), damage to each region of a
//! file and of a pack, sampler values out of range, the arena message, ids
//! and offsets past the tables of the public helpers (`bpb::nll`,
//! `Matrix::row_into`, `KvCache`).

mod common;

use common::aligned;
use edgelm_runtime::bpb::nll;
use edgelm_runtime::format::{
    align_up, checksum::xxh64, Config, DType, FileKind, HeaderMeta, ModelFile, TensorInfo, CHECKSUM_LEN, ENDIAN_MARK,
    FORMAT_VERSION, MAGIC, PREAMBLE_LEN,
};
use edgelm_runtime::kernels::{self, REFERENCE};
use edgelm_runtime::kv::KvCache;
use edgelm_runtime::{Error, ErrorKind, Model, SamplerConfig, Session, SessionOptions, VerifyChecksum};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

fn cfg() -> Config {
    SyntheticSpec::micro(DType::Q8).config
}

/// A file with this config and tensor table, `data_len` zero bytes of data
/// and a correct checksum: what a hostile writer could make.
fn raw_file(config: Config, entries: &[TensorInfo<'_>], data_len: u64) -> Vec<u8> {
    raw_file_version(FORMAT_VERSION, config, entries, data_len)
}

/// [`raw_file`] declaring format `version`.
fn raw_file_version(version: u32, config: Config, entries: &[TensorInfo<'_>], data_len: u64) -> Vec<u8> {
    let meta = HeaderMeta {
        kind: FileKind::Base,
        model_id: "hostile",
        base_model_id: "",
        config,
        domains: heapless::Vec::new(),
    };
    let mut header = postcard::to_allocvec(&meta).unwrap();
    header.extend(postcard::to_allocvec(&(entries.len() as u32)).unwrap());
    for e in entries {
        header.extend(postcard::to_allocvec(e).unwrap());
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&ENDIAN_MARK.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&header);
    out.resize(align_up(out.len()) + data_len as usize, 0);
    reseal_append(&mut out);
    out
}

fn reseal_append(out: &mut Vec<u8>) {
    let sum = xxh64(out, 0);
    out.extend_from_slice(&sum.to_le_bytes());
}

fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - CHECKSUM_LEN;
    let sum = xxh64(&bytes[..n], 0);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
}

fn entry<'a>(name: &'a str, dtype: DType, shape: &[u32], offset: u64, len: u64) -> TensorInfo<'a> {
    TensorInfo { name, dtype, shape: heapless::Vec::from_slice(shape).unwrap(), offset, len }
}

fn parse(bytes: &[u8]) -> Result<(), Error> {
    let b = aligned(bytes.to_vec());
    ModelFile::parse(&b, VerifyChecksum::Yes).map(|_| ())
}

fn tensor_error(bytes: &[u8]) -> &'static str {
    match parse(bytes) {
        Err(Error::BadTensor { what, .. }) => what,
        other => panic!("expected a BadTensor error, got {other:?}"),
    }
}

#[test]
fn the_raw_writer_makes_valid_files() {
    // the helper itself: two well-placed tensors parse
    let f = raw_file(cfg(), &[entry("a", DType::F32, &[16], 0, 64), entry("b", DType::U8, &[3], 64, 3)], 67);
    parse(&f).unwrap();
}

#[test]
fn overlapping_tensor_data_is_refused() {
    // b starts inside a
    let f = raw_file(cfg(), &[entry("a", DType::F32, &[32], 0, 128), entry("b", DType::F32, &[16], 64, 64)], 128);
    assert_eq!(tensor_error(&f), "data overlaps the previous tensor's");
    // the same data twice
    let f = raw_file(cfg(), &[entry("a", DType::F32, &[16], 0, 64), entry("b", DType::F32, &[16], 0, 64)], 64);
    assert_eq!(tensor_error(&f), "data overlaps the previous tensor's");
    // data out of table order
    let f = raw_file(cfg(), &[entry("a", DType::F32, &[16], 64, 64), entry("b", DType::F32, &[16], 0, 64)], 128);
    assert_eq!(tensor_error(&f), "data overlaps the previous tensor's");
}

#[test]
fn misaligned_tensor_offsets_are_refused() {
    let f = raw_file(cfg(), &[entry("a", DType::U8, &[4], 0, 4), entry("b", DType::F32, &[1], 4, 4)], 8);
    assert_eq!(tensor_error(&f), "offset is not 64-byte aligned");
}

#[test]
fn shapes_whose_products_overflow_or_exceed_the_file_are_refused() {
    let m = u32::MAX;
    // element count overflows u64 (and so usize)
    let f = raw_file(cfg(), &[entry("a", DType::U8, &[m, m, m, m], 0, 64)], 64);
    assert_eq!(tensor_error(&f), "element count overflows");
    // element count fits, bytes (× 4) do not
    let f = raw_file(cfg(), &[entry("a", DType::F32, &[m, m], 0, 64)], 64);
    assert_eq!(tensor_error(&f), "byte length overflows");
    // consistent, but far larger than the file
    let n = (1u64 << 20) * (1 << 12) * 4;
    let f = raw_file(cfg(), &[entry("a", DType::F32, &[1 << 20, 1 << 12], 0, n)], 64);
    assert_eq!(tensor_error(&f), "data lies past the end of the file");
    // offset + len overflows
    let f = raw_file(cfg(), &[entry("a", DType::U8, &[64], u64::MAX - 63, 64)], 64);
    assert_eq!(tensor_error(&f), "offset + length overflows");
    // a zero dimension, no dimensions, five dimensions cannot even decode
    let f = raw_file(cfg(), &[entry("a", DType::U8, &[4, 0], 0, 0)], 64);
    assert_eq!(tensor_error(&f), "shape has a zero dimension");
    let f = raw_file(cfg(), &[entry("a", DType::U8, &[], 0, 0)], 64);
    assert_eq!(tensor_error(&f), "shape has no dimensions");
}

#[test]
fn hostile_q4_tensors_are_refused() {
    // a well-formed q4 tensor: 64 values = 32 bytes of nibbles + 2 f16 scales
    let f = raw_file(cfg(), &[entry("a", DType::Q4, &[2, 32], 0, 36)], 64);
    parse(&f).unwrap();
    // the same in a version-1 file: q4 needs version 2
    let f = raw_file_version(1, cfg(), &[entry("a", DType::Q4, &[2, 32], 0, 36)], 64);
    assert_eq!(tensor_error(&f), "dtype needs a newer format version than the file declares");
    // rows not a whole number of groups (even though the element count is)
    let f = raw_file(cfg(), &[entry("a", DType::Q4, &[2, 48], 0, 54)], 64);
    assert_eq!(tensor_error(&f), "q4 tensor's last dimension is not a multiple of 32");
    // the q8 length for a q4 shape, and one byte short
    let f = raw_file(cfg(), &[entry("a", DType::Q4, &[2, 32], 0, 68)], 128);
    assert_eq!(tensor_error(&f), "byte length does not match dtype and shape");
    let f = raw_file(cfg(), &[entry("a", DType::Q4, &[2, 32], 0, 35)], 64);
    assert_eq!(tensor_error(&f), "byte length does not match dtype and shape");
    // the largest element counts: q4 bytes (n/2 + n/16) never overflow, so the
    // length check and the file size refuse them
    let m = u32::MAX;
    let f = raw_file(cfg(), &[entry("a", DType::Q4, &[m, m, 1 << 31, 32], 0, 64)], 64);
    assert_eq!(tensor_error(&f), "element count overflows");
    let n = (m as u64) * (1 << 20) * 32;
    let len = n / 2 + n / 16;
    let f = raw_file(cfg(), &[entry("a", DType::Q4, &[m, 1 << 20, 32], 0, len)], 64);
    assert_eq!(tensor_error(&f), "data lies past the end of the file");
    // versions outside 1..=2
    for v in [0, FORMAT_VERSION + 1] {
        let f = raw_file_version(v, cfg(), &[entry("a", DType::U8, &[3], 0, 3)], 64);
        assert_eq!(parse(&f), Err(Error::UnsupportedVersion { found: v, supported: FORMAT_VERSION }));
    }
    // v1 files without q4 still parse
    let f = raw_file_version(1, cfg(), &[entry("a", DType::Q8, &[32], 0, 34)], 64);
    parse(&f).unwrap();
}

#[test]
fn zero_and_huge_vocabularies_are_refused() {
    for vocab in [0, (1 << 20) + 1, u32::MAX] {
        let f = raw_file(Config { vocab_size: vocab, ..cfg() }, &[], 0);
        assert_eq!(parse(&f), Err(Error::BadConfig("vocab_size must be in 1..=1048576")), "vocab {vocab}");
    }
    // a vocabulary the format allows but the tensors do not have
    let mut c = cfg();
    c.vocab_size = 1 << 20;
    let f = raw_file(c, &[entry("tok_embeddings", DType::F32, &[264, 32], 0, 264 * 32 * 4)], 264 * 32 * 4);
    let b = aligned(f);
    let file = ModelFile::parse(&b, VerifyChecksum::Yes).unwrap();
    assert!(matches!(Model::from_file(&file), Err(Error::MissingTensor(_) | Error::ShapeMismatch { .. })));
}

fn micro_base() -> Vec<u8> {
    synthetic_model(&SyntheticSpec::micro(DType::Q8)).unwrap()
}

fn micro_pack() -> Vec<u8> {
    let spec = SyntheticPackSpec { own_vocab: Some(260), positions: vec![1], ..SyntheticPackSpec::recipe(DType::Q8) };
    synthetic_pack(&SyntheticSpec::micro(DType::Q8), &spec).unwrap()
}

/// Byte ranges of a file's regions: header, tensor table, each tensor's data, trailer.
fn regions(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let a = aligned(bytes.to_vec());
    let f = ModelFile::parse(&a, VerifyChecksum::Yes).unwrap();
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let mut out =
        vec![("preamble".to_string(), 0, PREAMBLE_LEN), ("header".into(), PREAMBLE_LEN, PREAMBLE_LEN + header_len)];
    for t in f.tensors() {
        let start = t.bytes.as_ptr() as usize - a.as_ptr() as usize;
        out.push((t.name.to_string(), start, start + t.bytes.len()));
    }
    out.push(("trailer".into(), bytes.len() - CHECKSUM_LEN, bytes.len()));
    out
}

#[test]
fn a_flipped_bit_in_any_region_is_a_checksum_mismatch_and_never_a_panic_without_it() {
    for (what, bytes) in [("base", micro_base()), ("pack", micro_pack())] {
        let base = aligned(micro_base());
        for (region, start, end) in regions(&bytes) {
            for at in [start, (start + end) / 2, end - 1] {
                for bit in [0, 7] {
                    let mut b = bytes.clone();
                    b[at] ^= 1 << bit;
                    let damaged = aligned(b);
                    // with the checksum: the preamble's own checks come first
                    // (magic, version, sizes); anywhere else it is the checksum
                    let e = ModelFile::parse(&damaged, VerifyChecksum::Yes).unwrap_err();
                    if region != "preamble" {
                        assert!(matches!(e, Error::ChecksumMismatch { .. }), "{what} {region} byte {at}: {e:?}");
                    }
                    assert!(matches!(e.kind(), ErrorKind::CorruptFile | ErrorKind::Unsupported), "{e:?}");
                    // without it: structure errors or a model that loads, never a panic
                    let base_here = base.clone(); // dropped before `damaged`, which the model borrows too
                    if let Ok(f) = ModelFile::parse(&damaged, VerifyChecksum::Skip) {
                        if what == "base" {
                            let _ = Model::from_file(&f);
                        } else {
                            let mut m = Model::from_bytes(&base_here).unwrap();
                            if m.add_pack(&f).is_err() {
                                assert_eq!(m.domains().len(), 1, "a refused pack leaves the model as it was");
                            }
                        }
                    };
                }
            }
        }
    }
}

#[test]
fn a_truncated_pack_is_too_short() {
    let pack = micro_pack();
    let base = aligned(micro_base());
    for cut in [0, 7, PREAMBLE_LEN, PREAMBLE_LEN + 5, pack.len() / 2, pack.len() - 1] {
        let cut_pack = aligned(pack[..cut].to_vec());
        let mut m = Model::from_bytes(&base).unwrap();
        let e = m.add_pack_bytes(&cut_pack).unwrap_err();
        assert!(matches!(e, Error::TooShort { .. }), "cut at {cut}: {e:?}");
        assert_eq!(m.domains().len(), 1, "a refused pack leaves the model as it was");
    }
}

#[test]
fn a_pack_of_another_format_version_is_refused() {
    let mut pack = micro_pack();
    pack[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    reseal(&mut pack);
    let base = aligned(micro_base());
    let pack = aligned(pack);
    let mut m = Model::from_bytes(&base).unwrap();
    let e = m.add_pack_bytes(&pack).unwrap_err();
    assert_eq!(e, Error::UnsupportedVersion { found: FORMAT_VERSION + 1, supported: FORMAT_VERSION });
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[test]
fn a_pack_is_refused_where_a_base_belongs_and_vice_versa() {
    let base = aligned(micro_base());
    let pack = aligned(micro_pack());
    assert_eq!(Model::from_bytes(&pack).unwrap_err(), Error::NotABase);
    let mut m = Model::from_bytes(&base).unwrap();
    assert_eq!(m.add_pack_bytes(&base).unwrap_err(), Error::NotAPack);
    m.add_pack_bytes(&pack).unwrap();
    assert!(matches!(m.add_pack_bytes(&pack), Err(Error::DuplicateDomain(_))));
}

#[test]
fn sampler_values_out_of_range_are_refused() {
    let base = aligned(micro_base());
    let model = Model::from_bytes(&base).unwrap();
    let mut arena = vec![0u8; model.arena_bytes(8)];
    let d = SamplerConfig::default();
    let cases = [
        ("temperature", SamplerConfig { temperature: -0.5, ..d }),
        ("temperature", SamplerConfig { temperature: f32::NAN, ..d }),
        ("temperature", SamplerConfig { temperature: f32::INFINITY, ..d }),
        ("top-p", SamplerConfig { top_p: 0.0, ..d }),
        ("top-p", SamplerConfig { top_p: 1.5, ..d }),
        ("top-p", SamplerConfig { top_p: f32::NAN, ..d }),
        ("repeat penalty", SamplerConfig { repeat_penalty: 0.0, ..d }),
        ("repeat penalty", SamplerConfig { repeat_penalty: f32::INFINITY, ..d }),
        ("repeat penalty", SamplerConfig { repeat_penalty: -1.0, ..d }),
    ];
    for (what, sampler) in cases {
        let opts = SessionOptions { sampler, ..SessionOptions::new(8) };
        match Session::new(&model, "story", &mut arena, opts) {
            Err(e @ Error::BadSampler(msg)) => {
                assert!(msg.starts_with(what), "{sampler:?}: {msg}");
                assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            }
            other => panic!("{sampler:?} gave {:?}", other.map(|_| ())),
        }
    }
    // extreme but valid settings run
    let extreme = [
        SamplerConfig { temperature: 1e30, top_k: usize::MAX, top_p: f32::MIN_POSITIVE, ..d },
        SamplerConfig { temperature: 1e-30, repeat_penalty: 1e30, repeat_window: usize::MAX, ..d },
    ];
    for sampler in extreme {
        let opts = SessionOptions { sampler, ..SessionOptions::new(8) };
        let mut s = Session::new(&model, "story", &mut arena, opts).unwrap();
        s.feed_prompt("Once").unwrap();
        s.generate(4, &mut |_| {}).unwrap();
        assert!(s.tokens().iter().all(|&t| t < 264));
    }
}

#[test]
fn the_arena_message_states_the_size_needed() {
    let base = aligned(micro_base());
    let model = Model::from_bytes(&base).unwrap();
    let need = model.arena_bytes(8);
    let mut small = vec![0u8; need - 1];
    let e = Session::new(&model, "story", &mut small, SessionOptions::new(8)).err().unwrap();
    assert_eq!(e, Error::ArenaTooSmall { needed: need, got: need - 1 });
    assert!(e.to_string().contains(&need.to_string()), "{e}");
    let mut none: [u8; 0] = [];
    assert!(matches!(
        Session::new(&model, "story", &mut none, SessionOptions::new(8)),
        Err(Error::ArenaTooSmall { got: 0, .. })
    ));
}

#[test]
fn prompts_past_the_context_and_unknown_domains_are_their_own_errors() {
    let base = aligned(micro_base());
    let model = Model::from_bytes(&base).unwrap();
    let mut arena = vec![0u8; model.arena_bytes(16)];
    {
        let mut s = Session::new(&model, "story", &mut arena, SessionOptions::new(16)).unwrap();
        let e = s.feed_prompt(&"zq".repeat(100)).unwrap_err();
        assert!(matches!(e, Error::PromptTooLong { limit: 15, .. }), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::PromptTooLong);
        // a context that is full after generation
        s.feed_prompt("Once").unwrap();
        s.generate(100, &mut |_| {}).unwrap();
        assert!(matches!(s.step(1), Err(Error::ContextFull { limit: 16 })));
        // token ids outside the vocabulary
        s.reset();
        assert_eq!(s.step(264).unwrap_err(), Error::BadToken(264));
        assert_eq!(s.step(u32::MAX).unwrap_err(), Error::BadToken(u32::MAX));
    }
    for name in ["recipe", "", "story\0", &"x".repeat(1000)] {
        let e = Session::new(&model, name, &mut arena, SessionOptions::new(16)).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::UnknownDomain, "{name:?}");
    }
}

#[test]
fn a_target_past_the_logits_is_a_bad_token() {
    assert_eq!(nll(&[0.0; 4], 3).map(|v| v > 0.0), Ok(true));
    assert_eq!(nll(&[0.0; 4], 4), Err(Error::BadToken(4)));
    assert_eq!(nll(&[], u32::MAX), Err(Error::BadToken(u32::MAX)));
}

#[test]
fn an_embedding_row_past_the_vocabulary_is_a_bad_token() {
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        let base = aligned(synthetic_model(&SyntheticSpec::micro(dtype)).unwrap());
        let model = Model::from_bytes(&base).unwrap();
        let emb = model.default_domain().embedding;
        let mut row = vec![f32::NAN; emb.cols];
        emb.row_into(emb.rows - 1, &mut row).unwrap();
        assert!(row.iter().all(|v| v.is_finite()), "{dtype:?}");
        assert_eq!(emb.row_into(emb.rows, &mut row), Err(Error::BadToken(emb.rows as u32)), "{dtype:?}");
        assert_eq!(emb.row_into(usize::MAX, &mut row), Err(Error::BadToken(u32::MAX)), "{dtype:?}");
        let e = emb.row_into(0, &mut row[..emb.cols - 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{dtype:?}: {e}");
    }
}

#[test]
fn kv_cache_offsets_past_the_cache_are_errors() {
    let (mut k32, mut v32) = (vec![0f32; 16], vec![0f32; 16]);
    let (mut k16, mut v16) = (vec![0u16; 16], vec![0u16; 16]);
    let (mut k8, mut v8, mut ks, mut vs) = (vec![0i8; 16], vec![0i8; 16], vec![0f32; 4], vec![0f32; 4]);
    let caches = [
        KvCache::F32 { keys: &mut k32, values: &mut v32 },
        KvCache::F16 { keys: &mut k16, values: &mut v16 },
        KvCache::Q8 { keys: &mut k8, values: &mut v8, key_scales: &mut ks, value_scales: &mut vs, head_dim: 4 },
    ];
    for mut cache in caches {
        let one = [1.0f32; 4];
        cache.store(12, &one, &one).unwrap();
        for at in [13, 16, usize::MAX - 2, usize::MAX] {
            assert_eq!(cache.store(at, &one, &one).unwrap_err().kind(), ErrorKind::InvalidArgument, "store at {at}");
        }
        assert!(cache.store(0, &one, &one[..3]).is_err(), "a value shorter than its key");
        for k in kernels::available().chain([&REFERENCE]) {
            // four keys of 4 at stride 4: from 0 they fit, from 1 the last one is past the end
            let (mut att, mut out) = ([0f32; 4], [0f32; 4]);
            cache.scores(k, &mut att, &one, 0, 4, 1.0).unwrap();
            cache.mix(k, &mut out, &mut att, 0, 4).unwrap();
            assert!(cache.scores(k, &mut att, &one, 1, 4, 1.0).is_err(), "{}", k.name);
            assert!(cache.mix(k, &mut out, &mut att, 1, 4).is_err(), "{}", k.name);
            assert!(cache.scores(k, &mut att, &one, 0, usize::MAX, 1.0).is_err(), "{}", k.name);
            assert!(cache.mix(k, &mut out, &mut att, usize::MAX, 4).is_err(), "{}", k.name);
            // two heads at once: the same values as two `mix` calls, the same errors, and
            // unequal shapes an error too
            let (mut a0, mut a1, mut o0, mut o1) =
                ([0.5f32, 0.25, 0.125, 0.125], [0.1f32, 0.2, 0.3, 0.4], [0f32; 4], [0f32; 4]);
            cache.mix2(k, [&mut o0, &mut o1], [&mut a0, &mut a1], 0, 4).unwrap();
            let (mut b0, mut b1, mut p0, mut p1) =
                ([0.5f32, 0.25, 0.125, 0.125], [0.1f32, 0.2, 0.3, 0.4], [0f32; 4], [0f32; 4]);
            cache.mix(k, &mut p0, &mut b0, 0, 4).unwrap();
            cache.mix(k, &mut p1, &mut b1, 0, 4).unwrap();
            assert_eq!((o0, o1), (p0, p1), "{}", k.name);
            assert!(cache.mix2(k, [&mut o0, &mut o1], [&mut a0, &mut a1], 1, 4).is_err(), "{}", k.name);
            assert!(cache.mix2(k, [&mut o0, &mut o1], [&mut a0, &mut a1], usize::MAX, 4).is_err(), "{}", k.name);
            assert!(cache.mix2(k, [&mut o0, &mut o1], [&mut a0[..3], &mut a1], 0, 4).is_err(), "{}", k.name);
            assert!(cache.mix2(k, [&mut o0[..3], &mut o1], [&mut a0, &mut a1], 0, 4).is_err(), "{}", k.name);
        }
    }
}

/// Scores from keys stored by dimension (a block's heads on tables with
/// `scores_by_dim`) are `KvCache::scores` within the f32 bound of two orders
/// of one dot product (times a q8 key's scale), on every cache type, a head
/// alone with the bits it has in a pair; short buffers, unequal heads, no
/// heads or three and offsets past the cache are errors.
#[test]
fn kv_scores_by_dimension_are_the_caches_scores() {
    let (hd, heads, positions) = (32, 2, 75);
    let kv_dim = hd * heads;
    let len = positions * kv_dim;
    let (mut k32, mut v32) = (vec![0f32; len], vec![0f32; len]);
    let (mut k16, mut v16) = (vec![0u16; len], vec![0u16; len]);
    let (mut k8, mut v8) = (vec![0i8; len], vec![0i8; len]);
    let (mut ks, mut vs) = (vec![0f32; positions * heads], vec![0f32; positions * heads]);
    let caches = [
        KvCache::F32 { keys: &mut k32, values: &mut v32 },
        KvCache::F16 { keys: &mut k16, values: &mut v16 },
        KvCache::Q8 { keys: &mut k8, values: &mut v8, key_scales: &mut ks, value_scales: &mut vs, head_dim: hd },
    ];
    let x = |i: usize| (((i as u32).wrapping_mul(2654435761) >> 7) % 2001) as f32 / 400.0 - 2.5;
    let (q0, q1): (Vec<f32>, Vec<f32>) = ((0..hd).map(|i| x(i + 7)).collect(), (0..hd).map(|i| x(i + 999)).collect());
    let ld = kernels::keys_by_dim_ld(positions);
    for mut cache in caches {
        for p in 0..positions {
            let key: Vec<f32> = (0..kv_dim).map(|i| x(p * kv_dim + i)).collect();
            cache.store(p * kv_dim, &key, &key).unwrap();
        }
        for k in kernels::available() {
            let Some(by) = k.scores_by_dim else { continue };
            for (g, n) in [(0, 1), (1, 15), (0, 16), (1, 17), (0, 40), (1, positions)] {
                let base = g * hd;
                // garbage where the keys are not, which the kernels must ignore
                let mut kt = vec![f32::NAN; (hd - 1) * ld + n.next_multiple_of(kernels::KEYS_BY_DIM_PAD)];
                cache.keys_by_dim(by, &mut kt, ld, base, n, kv_dim, hd).unwrap();
                let (mut want0, mut want1) = (vec![0f32; n], vec![0f32; n]);
                cache.scores(k, &mut want0, &q0, base, kv_dim, 0.17).unwrap();
                cache.scores(k, &mut want1, &q1, base, kv_dim, 0.17).unwrap();
                let (mut a0, mut a1, mut alone) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                cache.scores_by_dim(by, &mut [&mut a0, &mut a1], &[&q0, &q1], &kt, ld, base, kv_dim, 0.17).unwrap();
                cache.scores_by_dim(by, &mut [&mut alone], &[&q1], &kt, ld, base, kv_dim, 0.17).unwrap();
                assert_eq!(bits(&alone), bits(&a1), "{} a head alone, {n} keys", k.name);
                // |q|, |k| ≤ 2.5 over 32 dimensions: Σ|q·k|·scale ≤ 34, and two
                // orders of the sum differ by at most 2·32·ε of it (a q8 key's
                // scale, 2.5/127, multiplies both: one rounding more each)
                for (got, want) in [(&a0, &want0), (&a1, &want1)] {
                    for (g, w) in got.iter().zip(want.iter()) {
                        assert!((g - w).abs() <= 66.0 * f32::EPSILON * 34.0, "{} {n} keys: {g} vs {w}", k.name);
                    }
                }
                assert_ne!(bits(&a0), bits(&a1), "two different queries");
                // buffers too short for the registers read, shapes that differ, keys past the cache
                let short = &kt[..kt.len() - 1];
                assert!(cache
                    .scores_by_dim(by, &mut [&mut a0, &mut a1], &[&q0, &q1], short, ld, base, kv_dim, 0.17)
                    .is_err());
                assert!(cache.keys_by_dim(by, &mut kt[..(hd - 1) * ld], ld, base, n, kv_dim, hd).is_err());
                assert!(cache.keys_by_dim(by, &mut kt, n.saturating_sub(1), base, n, kv_dim, hd).is_err());
                for stride in [0, hd - 1] {
                    assert!(cache.keys_by_dim(by, &mut kt, ld, base, n, stride, hd).is_err(), "stride {stride}");
                }
                let mut a2 = vec![0f32; n + 1];
                assert!(cache
                    .scores_by_dim(by, &mut [&mut a0, &mut a2], &[&q0, &q1], &kt, ld, base, kv_dim, 0.17)
                    .is_err());
                assert!(cache.scores_by_dim(by, &mut [&mut a0], &[&q0, &q1], &kt, ld, base, kv_dim, 0.17).is_err());
                assert!(cache.scores_by_dim(by, &mut [], &[], &kt, ld, base, kv_dim, 0.17).is_err());
                let mut a3 = vec![0f32; n];
                assert!(cache
                    .scores_by_dim(by, &mut [&mut a0, &mut a1, &mut a3], &[&q0, &q1, &q0], &kt, ld, base, kv_dim, 0.17)
                    .is_err());
                assert!(cache
                    .keys_by_dim(by, &mut kt, ld, base + (positions - n + 1) * kv_dim, n, kv_dim, hd)
                    .is_err());
            }
        }
    }
}

/// A q8 cache holds whole heads: a key of part of a head, a stride or an
/// offset off the head boundaries, or a zero stride is an error, not a
/// wrong scale; a stored head reads back as its integers times its scale.
#[test]
fn q8_kv_cache_accesses_whole_heads() {
    let (mut k8, mut v8, mut ks, mut vs) = (vec![0i8; 16], vec![0i8; 16], vec![0f32; 4], vec![0f32; 4]);
    let mut cache =
        KvCache::Q8 { keys: &mut k8, values: &mut v8, key_scales: &mut ks, value_scales: &mut vs, head_dim: 4 };
    let key = [0.5f32, -1.27, 0.0, 0.25];
    let value = [2.54f32, 1.0, -0.5, 0.0];
    cache.store(4, &key, &value).unwrap();
    assert!(cache.store(2, &key, &value).is_err(), "offset inside a head");
    assert!(cache.store(0, &key[..3], &value[..3]).is_err(), "part of a head");
    let k = &REFERENCE;
    let mut att = [0f32; 1];
    // key 1 alone: q = e_i picks the dequantized element i
    for (i, &want) in key.iter().enumerate() {
        let mut q = [0f32; 4];
        q[i] = 1.0;
        cache.scores(k, &mut att, &q, 4, 4, 1.0).unwrap();
        assert!((att[0] - want).abs() <= 1.27 / 254.0 + 1e-6, "key {i}: {} vs {want}", att[0]);
    }
    let mut out = [0f32; 4];
    let mut one = [1f32];
    cache.mix(k, &mut out, &mut one, 4, 4).unwrap();
    for (o, v) in out.iter().zip(value) {
        assert!((o - v).abs() <= 2.54 / 254.0 + 1e-6, "value {o} vs {v}");
    }
    assert_eq!(cache.scores(k, &mut att, &[1.0; 3], 4, 4, 1.0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert!(cache.scores(k, &mut att, &[1.0; 4], 2, 4, 1.0).is_err(), "offset inside a head");
    let mut two = [0f32; 2];
    assert!(cache.scores(k, &mut two, &[1.0; 4], 0, 6, 1.0).is_err(), "stride off the heads");
    assert!(cache.mix(k, &mut out, &mut two, 0, 0).is_err(), "zero stride");
}
