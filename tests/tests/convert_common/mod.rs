//! Shared support for the converter tests: seeded random Llama weights by
//! runtime tensor name, an independent f64 reference forward pass (with
//! either interleaved or Hugging Face rotate-half RoPE), and helpers to run
//! the runtime on converted bytes.
#![allow(dead_code)]

use std::collections::HashMap;

use edgelm_runtime::format::Config;
use edgelm_runtime::sampler::argmax;
use edgelm_runtime::{AlignedBytes, Model, Session, SessionOptions};

/// Weights by name: `(shape, values)`.
pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

pub fn tiny_config(vocab: u32, tied: bool) -> Config {
    Config {
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 96,
        vocab_size: vocab,
        max_seq_len: 96,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_head: tied,
    }
}

/// Random weights under runtime names (`tok_embeddings`, `layers.N.…`,
/// `norm`, `output` unless tied), from the runtime's synthetic generator.
/// Matrices are uniform with scale `1/sqrt(cols)`; the embedding and head use
/// 4× that, which gives logits the spread of a trained model (with
/// all-`1/sqrt(cols)` weights a tiny random model's top logits are near-ties,
/// and greedy agreement then measures the ties rather than the conversion).
pub fn random_weights(c: &Config, seed: u64) -> Weights {
    edgelm_testkit::synthetic::random_weights(c, seed, 4.0)
        .into_iter()
        .map(|(name, shape, v)| (name, (shape.into_iter().map(|d| d as usize).collect(), v)))
        .collect()
}

use edgelm_testkit::reference;

pub use reference::Rope;

/// The independent f64 forward pass (shared with the runtime's tests) on `w`.
pub struct Reference(reference::Reference);

impl Reference {
    pub fn new(cfg: Config, w: &Weights, rope: Rope) -> Self {
        Reference(reference::Reference::from_weights(cfg, w.iter().map(|(n, (_, v))| (n.as_str(), v.as_slice())), rope))
    }

    /// Logits after feeding `token` at the next position.
    pub fn step(&mut self, token: u32) -> Vec<f64> {
        self.0.step(token)
    }
}

pub fn test_tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % vocab).collect()
}

/// Worst `|runtime - reference| / max(|reference|, 1)` over `tokens`.
pub fn worst_error(bytes: &[u8], reference: &mut Reference, tokens: &[u32]) -> f64 {
    let aligned = AlignedBytes::from_slice(bytes);
    let model = Model::from_bytes(&aligned).expect("converted file loads");
    let n = tokens.len();
    let mut arena = vec![0u8; model.arena_bytes(n)];
    let mut s = Session::with_domain(&model, model.default_domain(), &mut arena, SessionOptions::new(n)).unwrap();
    let mut worst = 0f64;
    for &t in tokens {
        let got = s.step(t).unwrap().to_vec();
        let want = reference.step(t);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((*g as f64 - w).abs() / w.abs().max(1.0));
        }
    }
    worst
}

fn argmax64(v: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding for `steps` tokens from `first`: how often the runtime on
/// `bytes` picks the reference's token, both fed the reference's choices.
pub fn greedy_agreement(bytes: &[u8], reference: &mut Reference, first: u32, steps: usize) -> usize {
    let aligned = AlignedBytes::from_slice(bytes);
    let model = Model::from_bytes(&aligned).expect("converted file loads");
    let mut arena = vec![0u8; model.arena_bytes(steps)];
    let mut s = Session::with_domain(&model, model.default_domain(), &mut arena, SessionOptions::new(steps)).unwrap();
    let (mut tok, mut agree) = (first, 0);
    for _ in 0..steps {
        let want = argmax64(&reference.step(tok));
        let got = argmax(s.step(tok).unwrap());
        agree += (want == got) as usize;
        tok = want;
    }
    agree
}

/// Rounds every value through f16 (what an f16 store keeps).
pub fn round_f16(w: &Weights) -> Weights {
    w.iter()
        .map(|(n, (s, v))| {
            let r = if s.len() == 2 { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() } else { v.clone() };
            (n.clone(), (s.clone(), r))
        })
        .collect()
}

/// llama.cpp-style Q8_0 of one row-major tensor: `(blocks bytes, dequantized values)`.
pub fn q8_0(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for g in v.chunks(32) {
        let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let dh = half::f16::from_f32(d);
        bytes.extend_from_slice(&dh.to_le_bytes());
        for &x in g {
            let q = (x * id).round().clamp(-127.0, 127.0) as i8;
            bytes.push(q as u8);
            deq.push(q as f32 * dh.to_f32());
        }
    }
    (bytes, deq)
}

/// Names of the matrices (2-D tensors) in `w`.
pub fn matrix_names(w: &Weights) -> Vec<String> {
    let mut v: Vec<String> = w.iter().filter(|(_, (s, _))| s.len() == 2).map(|(n, _)| n.clone()).collect();
    v.sort();
    v
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}
