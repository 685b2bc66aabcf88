//! `verify` names the tensor holding a NaN or infinite weight, in every
//! storage (f32, f16, a q8 scale), in a base and in a pack.

use edgelm_convert::inspect::verify;
use edgelm_runtime::format::{checksum::xxh64, DType, ModelFile, CHECKSUM_LEN};
use edgelm_runtime::VerifyChecksum;
use edgelm_testkit::aligned;
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

/// Overwrites the bytes at `at` inside tensor `name` and reseals the checksum.
fn poison(bytes: &[u8], name: &str, at: usize, value: &[u8]) -> Vec<u8> {
    let a = aligned(bytes.to_vec());
    let f = ModelFile::parse(&a, VerifyChecksum::Yes).unwrap();
    let t = f.tensor(name).unwrap();
    let start = t.bytes.as_ptr() as usize - a.as_ptr() as usize + at;
    let mut out = bytes.to_vec();
    out[start..start + value.len()].copy_from_slice(value);
    let n = out.len() - CHECKSUM_LEN;
    let sum = xxh64(&out[..n], 0);
    out[n..].copy_from_slice(&sum.to_le_bytes());
    out
}

fn message(base: &[u8], pack: Option<&[u8]>) -> String {
    verify(base, pack).unwrap_err().to_string()
}

#[test]
fn verify_names_the_tensor_with_a_non_finite_weight() {
    let f32_base = synthetic_model(&SyntheticSpec::micro(DType::F32)).unwrap();
    verify(&f32_base, None).unwrap();
    let bad = poison(&f32_base, "layers.0.ffn_norm", 4 * 5, &f32::NAN.to_le_bytes());
    assert!(message(&bad, None).contains("tensor layers.0.ffn_norm (f32): element 5 is NaN or infinite"));
    let bad = poison(&f32_base, "output", 4 * 100, &f32::NEG_INFINITY.to_le_bytes());
    assert!(message(&bad, None).contains("tensor output (f32): element 100"));

    let f16_base = synthetic_model(&SyntheticSpec::micro(DType::F16)).unwrap();
    verify(&f16_base, None).unwrap();
    let bad = poison(&f16_base, "layers.0.attention.wk", 2 * 7, &0x7c00u16.to_le_bytes());
    assert!(message(&bad, None).contains("tensor layers.0.attention.wk (f16): element 7"));

    // q8: the scales follow the 32·k int8 values; poison the second scale
    let q8_base = synthetic_model(&SyntheticSpec::micro(DType::Q8)).unwrap();
    verify(&q8_base, None).unwrap();
    let rows_cols = 32 * 32; // layers.0.attention.wq is [32, 32]
    let bad = poison(&q8_base, "layers.0.attention.wq", rows_cols + 2, &0x7e00u16.to_le_bytes());
    assert!(message(&bad, None).contains("tensor layers.0.attention.wq (q8): element 32"));

    // a pack's tensor is named too
    let spec = SyntheticPackSpec { own_vocab: Some(260), positions: vec![1], ..SyntheticPackSpec::recipe(DType::F32) };
    let pack = synthetic_pack(&SyntheticSpec::micro(DType::F32), &spec).unwrap();
    verify(&f32_base, Some(&pack)).unwrap();
    let bad = poison(&pack, "domains.recipe.norm", 0, &f32::NAN.to_le_bytes());
    assert!(message(&f32_base, Some(&bad)).contains("tensor domains.recipe.norm (f32): element 0"));
}
