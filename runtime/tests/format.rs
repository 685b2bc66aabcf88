//! The `.edgelm` format: round trips and corrupt inputs. Every corruption
//! must give an error — never a panic, never an out-of-bounds read.

mod common;

use common::aligned;
use edgelm_runtime::format::{
    checksum::xxh64, Config, DType, FileKind, FileWriter, ModelFile, ALIGN, CHECKSUM_LEN, PREAMBLE_LEN,
};
use edgelm_runtime::{Error, Model, VerifyChecksum};
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

fn cfg() -> Config {
    SyntheticSpec::tiny(DType::F32).config
}

#[test]
fn round_trip_every_dtype() {
    let mut w = FileWriter::new(FileKind::Base, "rt", cfg());
    let vals: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
    w.add_f32("a.f32", &[4, 16], &vals).unwrap();
    w.add_f16("b.f16", &[64], &vals).unwrap();
    w.add_q8("c.q8", &[2, 32], &vals).unwrap();
    w.add_u32("d.u32", &[3], &[1, u32::MAX, 7]).unwrap();
    w.add_u8("e.u8", &[9, 8, 7, 6, 5]).unwrap();
    let bytes = aligned(w.to_bytes().unwrap());
    let f = ModelFile::parse(&bytes, VerifyChecksum::Yes).unwrap();
    assert_eq!(f.meta.config, cfg());
    assert_eq!(f.meta.model_id, "rt");
    assert_eq!(f.n_tensors(), 5);
    let a = f.tensor("a.f32").unwrap();
    assert_eq!(a.shape(), &[4, 16]);
    assert_eq!(a.f32s().unwrap(), &vals[..]);
    let b = f.tensor("b.f16").unwrap().f16_bits().unwrap();
    for (h, v) in b.iter().zip(&vals) {
        assert_eq!(half::f16::from_bits(*h), half::f16::from_f32(*v));
    }
    let (qs, sc) = f.tensor("c.q8").unwrap().q8().unwrap();
    assert_eq!((qs.len(), sc.len()), (64, 2));
    for (i, v) in vals.iter().enumerate() {
        let d = half::f16::from_bits(sc[i / 32]).to_f32();
        assert!((qs[i] as f32 * d - v).abs() <= d / 2.0 + 1e-6, "element {i}");
    }
    assert_eq!(f.tensor("d.u32").unwrap().u32s().unwrap(), &[1, u32::MAX, 7]);
    assert_eq!(f.tensor("e.u8").unwrap().u8s().unwrap(), &[9, 8, 7, 6, 5]);
    for t in f.tensors() {
        assert_eq!((t.bytes.as_ptr() as usize) % ALIGN, 0, "{} is not aligned", t.name);
    }
    assert!(matches!(f.tensor("nope"), Err(Error::MissingTensor(_))));
    assert!(matches!(f.tensor("a.f32").unwrap().u32s(), Err(Error::WrongDType { .. })));
    // written twice, byte-identical
    assert_eq!(&bytes[..], &w.to_bytes().unwrap()[..]);
}

fn tiny() -> Vec<u8> {
    synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap()
}

/// Parses and loads, as a user would. Must never panic.
fn load(bytes: &[u8], verify: VerifyChecksum) -> Result<(), Error> {
    let b = aligned(bytes.to_vec());
    let f = ModelFile::parse(&b, verify)?;
    Model::from_file(&f)?;
    Ok(())
}

fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - CHECKSUM_LEN;
    let sum = xxh64(&bytes[..n], 0);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn truncated_at_every_boundary_is_an_error() {
    let bytes = tiny();
    assert!(load(&bytes, VerifyChecksum::Yes).is_ok());
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let mut cuts: Vec<usize> = (0..=PREAMBLE_LEN + 8).collect();
    cuts.extend((PREAMBLE_LEN..PREAMBLE_LEN + header_len).step_by(7));
    cuts.extend([PREAMBLE_LEN + header_len, bytes.len() - CHECKSUM_LEN, bytes.len() - 1]);
    cuts.extend((0..bytes.len()).step_by(4093));
    for cut in cuts {
        let e = load(&bytes[..cut], VerifyChecksum::Yes).unwrap_err();
        assert!(matches!(e, Error::TooShort { .. }), "cut at {cut}: {e:?}");
        // even without the checksum, a short file is refused
        assert!(load(&bytes[..cut], VerifyChecksum::Skip).is_err());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(load(&longer, VerifyChecksum::Yes), Err(Error::SizeMismatch { .. })));
}

#[test]
fn flipped_bytes_are_caught_by_the_checksum() {
    let bytes = tiny();
    for at in (0..bytes.len()).step_by(bytes.len() / 300) {
        let mut b = bytes.clone();
        b[at] ^= 0x5a;
        assert!(load(&b, VerifyChecksum::Yes).is_err(), "flip at {at} went unnoticed");
    }
}

#[test]
fn header_corruption_without_checksum_never_panics() {
    // With the checksum skipped, structural validation alone must hold:
    // flip every header byte (and reseal, so the checksum passes too).
    let bytes = tiny();
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    for at in 0..PREAMBLE_LEN + header_len {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[at] ^= mask;
            reseal(&mut b);
            let _ = load(&b, VerifyChecksum::Skip);
            let _ = load(&b, VerifyChecksum::Yes);
        }
    }
}

#[test]
fn specific_errors_for_specific_damage() {
    let bytes = tiny();
    let mut b = bytes.clone();
    b[0] = b'X';
    assert_eq!(load(&b, VerifyChecksum::Yes), Err(Error::BadMagic));
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(load(&b, VerifyChecksum::Yes), Err(Error::UnsupportedVersion { found: 3, supported: 2 }));
    let mut b = bytes.clone();
    b[12..16].copy_from_slice(&0x0403_0201u32.to_le_bytes());
    assert_eq!(load(&b, VerifyChecksum::Yes), Err(Error::WrongEndianness));
    let mut b = bytes.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(load(&b, VerifyChecksum::Yes), Err(Error::HeaderTooLarge(_))));
    let mut b = bytes.clone();
    b[24..32].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
    assert!(matches!(load(&b, VerifyChecksum::Yes), Err(Error::HeaderDecode(_))));
    let mut b = bytes.clone();
    let n = b.len();
    b[n - 1] ^= 1;
    assert!(matches!(load(&b, VerifyChecksum::Yes), Err(Error::ChecksumMismatch { .. })));
    assert!(load(&b, VerifyChecksum::Skip).is_ok(), "skipping the checksum is explicit and allowed");
}

#[test]
fn absurd_dims_and_offsets_are_refused() {
    // absurd config values
    for (field, value) in
        [("dim", 0u32), ("dim", 1 << 30), ("n_layers", 1000), ("n_heads", 7), ("vocab", u32::MAX), ("seq", 0)]
    {
        let mut c = cfg();
        match field {
            "dim" => c.dim = value,
            "n_layers" => c.n_layers = value,
            "n_heads" => c.n_heads = value,
            "vocab" => c.vocab_size = value,
            _ => c.max_seq_len = value,
        }
        let w = FileWriter::new(FileKind::Base, "x", c);
        assert!(matches!(w.to_bytes(), Err(Error::BadConfig(_))), "{field}={value}");
    }
    // a tensor whose offset points past the end: patch the header's last
    // entry offset by re-encoding a file whose table lies about it
    let mut w = FileWriter::new(FileKind::Base, "x", cfg());
    w.add_f32("t", &[16], &[0.0; 16]).unwrap();
    let good = w.to_bytes().unwrap();
    assert!(load(&good, VerifyChecksum::Yes).is_err(), "no weights: loading the model must fail");
    let f = aligned(good.clone());
    assert!(ModelFile::parse(&f, VerifyChecksum::Yes).is_ok());
    // the tensor entry ends with varint offset (0) and varint len (64): find
    // `0x00 0x40` at the end of the header and rewrite the offset to 0x40
    let header_end = PREAMBLE_LEN + u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    assert_eq!(&good[header_end - 2..header_end], &[0x00, 0x40]);
    let mut b = good.clone();
    b[header_end - 2] = 0x40;
    reseal(&mut b);
    let e = load(&b, VerifyChecksum::Yes).unwrap_err();
    assert!(matches!(e, Error::BadTensor { what: "data lies past the end of the file", .. }), "{e:?}");
    // misaligned offset
    let mut b = good.clone();
    b[header_end - 2] = 0x01;
    reseal(&mut b);
    assert!(matches!(
        load(&b, VerifyChecksum::Yes),
        Err(Error::BadTensor { what: "offset is not 64-byte aligned", .. })
    ));
    // wrong length for the shape
    let mut b = good;
    b[header_end - 1] = 0x3c;
    reseal(&mut b);
    assert!(matches!(
        load(&b, VerifyChecksum::Yes),
        Err(Error::BadTensor { what: "byte length does not match dtype and shape", .. })
    ));
}

#[test]
fn the_writer_refuses_what_the_reader_would() {
    let mut w = FileWriter::new(FileKind::Base, "x", cfg());
    assert!(w.add_q8("q", &[32, 3], &[0.0; 96]).is_err(), "q8 last axis must be a multiple of 32");
    assert!(w.add_f32("z", &[0, 4], &[]).is_err(), "zero dimension");
    assert!(w.add_f32(&"n".repeat(129), &[1], &[0.0]).is_err(), "name too long");
    assert!(w.add_q8_parts("p", &[1, 32], &[0; 32], &[]).is_err(), "missing scales");
    // a huge group still quantizes to finite values
    let big = [1e9f32; 32];
    w.add_q8("big", &[1, 32], &big).unwrap();
    let b = aligned(w.to_bytes().unwrap());
    let f = ModelFile::parse(&b, VerifyChecksum::Yes).unwrap();
    let (_, sc) = f.tensor("big").unwrap().q8().unwrap();
    assert!(half::f16::from_bits(sc[0]).is_finite());
}

#[test]
fn misaligned_bytes_are_refused_not_misread() {
    let bytes = tiny();
    let mut buf = vec![0u8; bytes.len() + 65];
    // the first 64-aligned offset in `buf` (0 when the allocation is aligned), plus one
    let start = (64 - buf.as_ptr() as usize % 64) % 64 + 1;
    buf[start..start + bytes.len()].copy_from_slice(&bytes);
    let e = ModelFile::parse(&buf[start..start + bytes.len()], VerifyChecksum::Yes).unwrap_err();
    assert_eq!(e, Error::Misaligned);
}

#[test]
fn a_pack_is_not_a_base() {
    let mut w = FileWriter::new(FileKind::Pack, "p", cfg());
    w.base_model_id = "other".into();
    let b = aligned(w.to_bytes().unwrap());
    assert_eq!(Model::from_bytes(&b).unwrap_err(), Error::NotABase);
}

#[test]
fn q4_round_trip_and_version() {
    let mut w = FileWriter::new(FileKind::Base, "q4", cfg());
    // a spread of magnitudes, both signs, a zero group and a group whose
    // largest value is positive (it maps to -8 with a negative scale)
    let mut vals: Vec<f32> = (0..128).map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.011 * (1 + i / 32) as f32).collect();
    vals[64..96].fill(0.0);
    vals[100] = 3.5;
    w.add_q4("q", &[4, 32], &vals).unwrap();
    let bytes = aligned(w.to_bytes().unwrap());
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2, "files with q4 are version 2");
    let f = ModelFile::parse(&bytes, VerifyChecksum::Yes).unwrap();
    let t = f.tensor("q").unwrap();
    assert_eq!(t.bytes.len(), 64 + 8);
    let (qs, sc) = t.q4().unwrap();
    assert_eq!((qs.len(), sc.len()), (64, 4));
    assert!(matches!(t.q8(), Err(Error::WrongDType { .. })));
    for (g, group) in vals.chunks(32).enumerate() {
        let d = half::f16::from_bits(sc[g]).to_f32();
        let m = group.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        for (i, &v) in group.iter().enumerate() {
            let b = qs[g * 16 + i % 16];
            let q = if i < 16 { b & 0x0f } else { b >> 4 } as i32 - 8;
            let got = q as f32 * d;
            // nearest level; values beyond +7·|d| on the side opposite to the
            // largest magnitude are clamped (at most one step off)
            let bound = if d != 0.0 && v / d > 7.0 { d.abs() } else { d.abs() / 2.0 };
            assert!((got - v).abs() <= bound * 1.01 + 1e-6, "group {g} element {i}: {got} vs {v} (d {d})");
        }
        // the largest magnitude maps to -8 exactly (up to the f16 scale)
        assert!((m - (-8.0 * d)).abs() <= 1e-3 * m.abs() + 1e-9, "group {g}");
    }
    // files without q4 stay version 1 (shipped models unchanged, older readers load them)
    let q8 = aligned(synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap());
    assert_eq!(u32::from_le_bytes(q8[8..12].try_into().unwrap()), 1);
    let q4 = aligned(synthetic_model(&SyntheticSpec::tiny(DType::Q4)).unwrap());
    assert_eq!(u32::from_le_bytes(q4[8..12].try_into().unwrap()), 2);
    Model::from_bytes(&q4).unwrap();
    // the q4 file is about 0.53× the q8 one in its matrices
    assert!(q4.len() < q8.len(), "{} vs {}", q4.len(), q8.len());
}

#[test]
fn committed_v1_models_still_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    for name in ["base.edgelm", "recipe.edgelm", "tiny-story.edgelm"] {
        let bytes = aligned(std::fs::read(format!("{dir}/{name}")).unwrap());
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1, "{name}");
        let f = ModelFile::parse(&bytes, VerifyChecksum::Yes).unwrap();
        if f.meta.kind == FileKind::Base {
            Model::from_file(&f).unwrap();
        }
    }
}
