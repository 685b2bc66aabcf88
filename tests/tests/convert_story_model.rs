//! The committed story model (`models/story-base`, a trainer checkpoint
//! with f16 safetensors): import at f32 and q8, check both load and verify,
//! and that q8 costs under 1 % bits per byte on a held-out passage.

use std::path::PathBuf;

use edgelm_convert::checkpoint::import_checkpoint;
use edgelm_convert::inspect::verify;
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_runtime::bpb::{eval_document, Totals};
use edgelm_runtime::{AlignedBytes, Model, Session, SessionOptions};

/// Written for this test (not from the training corpus).
const PASSAGE: &str = "The Fox and the Little Hen\n\nOnce upon a time there was a little red hen who lived \
in a small house at the edge of the wood. Every morning she swept the floor, and every evening she sat by \
the fire and sang to her chickens. One day a sly fox came to the door and knocked. \"Who is there?\" asked \
the hen. \"Only a poor traveller,\" said the fox, \"who is cold and hungry.\" But the little hen was wise, \
and she did not open the door.";

fn bpb(bytes: &[u8]) -> f64 {
    let aligned = AlignedBytes::from_slice(bytes);
    let model = Model::from_bytes(&aligned).unwrap();
    let seq = model.config().max_seq_len as usize;
    let mut arena = vec![0u8; model.arena_bytes(seq)];
    let mut s = Session::with_domain(&model, model.default_domain(), &mut arena, SessionOptions::new(seq)).unwrap();
    let mut totals = Totals::default();
    eval_document(&mut s, PASSAGE, &mut totals).unwrap();
    totals.bpb()
}

#[test]
fn story_model_q8_is_within_one_percent_of_f32_and_q4_within_five() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/story-base");
    if !dir.join("model.safetensors").exists() {
        eprintln!("models/story-base is not in this checkout; skipped");
        return;
    }
    let f32 = import_checkpoint(&dir, &ImportOptions::new(StoreDType::F32)).unwrap();
    let q8 = import_checkpoint(&dir, &ImportOptions::new(StoreDType::Q8)).unwrap();
    for c in [&f32, &q8] {
        let v = verify(&c.bytes, None).unwrap();
        assert_eq!(v.domains[0].0, "story");
    }
    assert!(q8.bytes.len() * 3 < f32.bytes.len(), "q8 {} vs f32 {} bytes", q8.bytes.len(), f32.bytes.len());
    let (a, b) = (bpb(&f32.bytes), bpb(&q8.bytes));
    eprintln!("passage BPB: f32 {a:.5}, q8 {b:.5}");
    assert!(a.is_finite() && a < 3.0, "f32 BPB {a}: the imported model does not model English");
    assert!((b - a).abs() / a < 0.01, "q8 BPB {b} vs f32 {a}");
    // q4 (Q4_0 semantics): +1.0 % on the 25-document valid slice of docs/BENCHMARKS.md, +3.5 % on
    // this one short passage (1.0525 vs 1.0172); a broken q4 path scores far worse than either
    let q4 = import_checkpoint(&dir, &ImportOptions::new(StoreDType::Q4)).unwrap();
    verify(&q4.bytes, None).unwrap();
    let c = bpb(&q4.bytes);
    eprintln!("passage BPB: q4 {c:.5}; q4 file {:.3}× the q8 file", q4.bytes.len() as f64 / q8.bytes.len() as f64);
    assert!((c - a).abs() / a < 0.05, "q4 BPB {c} vs f32 {a}");
    assert!(q4.bytes.len() * 100 < q8.bytes.len() * 57, "q4 {} vs q8 {} bytes", q4.bytes.len(), q8.bytes.len());
}
