//! Bits per byte per the protocol in docs/CHECKPOINT.md, checked by hand.

mod common;

use candle_core::{Device, Tensor};
use edgelm_trainer::eval::{evaluate, ModelScorer, Scorer};
use edgelm_trainer::model::{expected_shapes, Llama};
use edgelm_trainer::tokenizer::EdgeTokenizer;
use edgelm_trainer::Result;
use std::collections::HashMap;

/// A byte-level tokenizer without merges: 256 bytes + `<|endoftext|>` + `<|story|>`.
fn byte_tokenizer() -> EdgeTokenizer {
    EdgeTokenizer::train(["abc"].iter(), 258, &["story".into()]).unwrap()
}

/// Every next token costs 1 nat: the sum is the number of scored tokens.
struct OneNat(usize);
impl Scorer for OneNat {
    fn max_seq(&self) -> usize {
        self.0
    }
    fn score(&self, ws: &[&[u32]]) -> Result<Vec<Vec<f64>>> {
        assert!(ws.iter().all(|w| w.len() <= self.0));
        Ok(ws.iter().map(|w| vec![1.0; w.len() - 1]).collect())
    }
}

const TEXT: &str = "hello\n<|endoftext|>\n\n<|endoftext|>\nhi!\n<|endoftext|>\n";

#[test]
fn hand_checked_counts() {
    let tok = byte_tokenizer();
    assert_eq!(tok.encode("hello").unwrap().len(), 5, "one token per byte");
    // Docs "hello" (5 bytes) and "hi!" (3 bytes); the empty document is skipped.
    // Tokens: [eot h e l l o eot] -> 6 scored; [eot h i ! eot] -> 4 scored.
    for max_seq in [3, 4, 64] {
        let r = evaluate(&OneNat(max_seq), &tok, TEXT, None).unwrap();
        assert_eq!((r.documents, r.bytes, r.scored_tokens), (2, 8, 10), "max_seq {max_seq}");
        assert!((r.bpb - 10.0 / std::f64::consts::LN_2 / 8.0).abs() < 1e-12);
        assert!((r.loss - 1.0).abs() < 1e-12);
    }
    // With a domain tag after BOS the tag is context only: still 10 scored tokens.
    let r = evaluate(&OneNat(4), &tok, TEXT, Some(1)).unwrap();
    assert_eq!(r.scored_tokens, 10);
}

#[test]
fn uniform_model_gives_log2_vocab_bits_per_token() {
    let tok = byte_tokenizer();
    let mut cfg = common::tiny_model(258);
    cfg.max_seq = 4; // forces the windowing
    let zeros: HashMap<String, Tensor> = expected_shapes(&cfg)
        .into_iter()
        .map(|(n, s)| (n, Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap()))
        .collect();
    let model = Llama::from_tensors(&cfg, zeros, &Device::Cpu).unwrap();
    let r = evaluate(&ModelScorer { model: &model, batch: 3 }, &tok, TEXT, None).unwrap();
    // 10 scored tokens x log2(258) bits over 8 bytes.
    let expect = 10.0 * (258f64).log2() / 8.0;
    assert!((r.bpb - expect).abs() < 1e-5, "bpb {} expected {expect}", r.bpb);
    assert!((r.ppl - 258.0).abs() < 1e-2);
}

#[test]
fn batched_padded_scoring_equals_one_by_one() {
    let tok = byte_tokenizer();
    let cfg = common::tiny_model(258);
    let model = Llama::new(&cfg, 3, &Device::Cpu).unwrap();
    let text = common::story_text(3, 5);
    let a = evaluate(&ModelScorer { model: &model, batch: 1 }, &tok, &text, None).unwrap();
    let b = evaluate(&ModelScorer { model: &model, batch: 8 }, &tok, &text, None).unwrap();
    assert_eq!(a.scored_tokens, b.scored_tokens);
    assert!((a.total_nats - b.total_nats).abs() < 1e-3 * a.total_nats.abs().max(1.0));
}
