//! Shared support for the converter tests: seeded random Llama weights by
//! runtime tensor name, an independent f64 reference forward pass (with
//! either interleaved or Hugging Face rotate-half RoPE), and helpers to run
//! the runtime on converted bytes.
#![allow(dead_code)]

use std::collections::HashMap;

use edgelm_runtime::format::Config;
use edgelm_runtime::sampler::argmax;
use edgelm_runtime::synthetic;
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
    synthetic::random_weights(c, seed, 4.0)
        .into_iter()
        .map(|(name, shape, v)| (name, (shape.into_iter().map(|d| d as usize).collect(), v)))
        .collect()
}

/// Which RoPE pairing the reference applies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rope {
    /// llama2.c / llama.cpp / the runtime: pairs (2i, 2i+1).
    Interleaved,
    /// Hugging Face: pairs (i, i + head_dim/2).
    RotateHalf,
}

/// Independent f64 forward pass with a KV cache.
pub struct Reference {
    cfg: Config,
    w: HashMap<String, Vec<f64>>,
    rope: Rope,
    keys: Vec<Vec<Vec<f64>>>,
    values: Vec<Vec<Vec<f64>>>,
}

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * inv * b).collect()
}

fn rope(v: &mut [f64], pos: usize, hd: usize, theta: f64, style: Rope) {
    for head in v.chunks_mut(hd) {
        for i in 0..hd / 2 {
            let freq = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
            let (s, c) = (pos as f64 * freq).sin_cos();
            let (ia, ib) = match style {
                Rope::Interleaved => (2 * i, 2 * i + 1),
                Rope::RotateHalf => (i, i + hd / 2),
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = a * s + b * c;
        }
    }
}

impl Reference {
    pub fn new(cfg: Config, w: &Weights, rope: Rope) -> Self {
        let w = w.iter().map(|(n, (_, v))| (n.clone(), v.iter().map(|&x| x as f64).collect())).collect();
        let l = cfg.n_layers as usize;
        Reference { cfg, w, rope, keys: vec![Vec::new(); l], values: vec![Vec::new(); l] }
    }

    fn get(&self, n: &str) -> &[f64] {
        &self.w[n]
    }

    /// Logits after feeding `token` at the next position.
    pub fn step(&mut self, token: u32) -> Vec<f64> {
        let c = self.cfg;
        let (dim, hd) = (c.dim as usize, c.head_dim());
        let (heads, kvh) = (c.n_heads as usize, c.n_kv_heads as usize);
        let eps = c.norm_eps as f64;
        let pos = self.keys[0].len();
        let emb = self.get("tok_embeddings");
        let mut x = emb[token as usize * dim..(token as usize + 1) * dim].to_vec();
        for l in 0..c.n_layers as usize {
            let p = format!("layers.{l}.");
            let g = |s: &str| self.w[&format!("{p}{s}")].as_slice();
            let h = rmsnorm(&x, g("attention_norm"), eps);
            let mut q = matvec(g("attention.wq"), &h);
            let mut k = matvec(g("attention.wk"), &h);
            let v = matvec(g("attention.wv"), &h);
            rope(&mut q, pos, hd, c.rope_theta as f64, self.rope);
            rope(&mut k, pos, hd, c.rope_theta as f64, self.rope);
            self.keys[l].push(k);
            self.values[l].push(v);
            let (ks, vs) = (&self.keys[l], &self.values[l]);
            let mut out = vec![0.0; dim];
            for hh in 0..heads {
                let kv = hh / (heads / kvh);
                let qh = &q[hh * hd..(hh + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|t| {
                        qh.iter().zip(&ks[t][kv * hd..(kv + 1) * hd]).map(|(a, b)| a * b).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..=pos {
                    for i in 0..hd {
                        out[hh * hd + i] += e[t] / z * vs[t][kv * hd + i];
                    }
                }
            }
            let o = matvec(g("attention.wo"), &out);
            for (a, b) in x.iter_mut().zip(o) {
                *a += b;
            }
            let h = rmsnorm(&x, g("ffn_norm"), eps);
            let gate = matvec(g("feed_forward.w1"), &h);
            let up = matvec(g("feed_forward.w3"), &h);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
            let d = matvec(g("feed_forward.w2"), &act);
            for (a, b) in x.iter_mut().zip(d) {
                *a += b;
            }
        }
        let head = if c.tied_head { self.get("tok_embeddings") } else { self.get("output") };
        matvec(head, &rmsnorm(&x, self.get("norm"), eps))
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
