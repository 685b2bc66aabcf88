//! Shared test support: an independent, straightforward f64 forward pass
//! (full recomputation, no KV cache) over the synthetic weights.
#![allow(dead_code)]

use std::collections::HashMap;

use edgelm_runtime::format::Config;
use edgelm_runtime::synthetic::{synthetic_weights, SyntheticSpec};
use edgelm_runtime::AlignedBytes;

pub fn aligned(bytes: Vec<u8>) -> AlignedBytes {
    AlignedBytes::from(bytes)
}

pub struct Reference {
    cfg: Config,
    w: HashMap<String, Vec<f64>>,
}

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * inv * b).collect()
}

fn rope(v: &mut [f64], pos: usize, hd: usize, theta: f64) {
    for head in v.chunks_mut(hd) {
        for i in 0..hd / 2 {
            let freq = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
            let (s, c) = (pos as f64 * freq).sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * c - b * s;
            head[2 * i + 1] = a * s + b * c;
        }
    }
}

impl Reference {
    pub fn new(spec: &SyntheticSpec) -> Self {
        let w = synthetic_weights(spec)
            .into_iter()
            .map(|(n, _, v)| (n, v.into_iter().map(|x| x as f64).collect()))
            .collect();
        Reference { cfg: spec.config, w }
    }

    fn get(&self, n: &str) -> &[f64] {
        &self.w[n]
    }

    /// Logits after each token of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let (dim, hd) = (c.dim as usize, c.head_dim());
        let (heads, kvh) = (c.n_heads as usize, c.n_kv_heads as usize);
        let eps = c.norm_eps as f64;
        let emb = self.get("tok_embeddings");
        let mut xs: Vec<Vec<f64>> =
            tokens.iter().map(|&t| emb[t as usize * dim..(t as usize + 1) * dim].to_vec()).collect();
        for l in 0..c.n_layers {
            let p = format!("layers.{l}.");
            let g = |s: &str| self.get(&format!("{p}{s}"));
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            let mut qs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let h = rmsnorm(x, g("attention_norm"), eps);
                let mut q = matvec(g("attention.wq"), &h);
                let mut k = matvec(g("attention.wk"), &h);
                rope(&mut q, pos, hd, c.rope_theta as f64);
                rope(&mut k, pos, hd, c.rope_theta as f64);
                qs.push(q);
                ks.push(k);
                vs.push(matvec(g("attention.wv"), &h));
            }
            for pos in 0..xs.len() {
                let mut out = vec![0.0; dim];
                for h in 0..heads {
                    let kv = h / (heads / kvh);
                    let q = &qs[pos][h * hd..(h + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|t| {
                            q.iter().zip(&ks[t][kv * hd..(kv + 1) * hd]).map(|(a, b)| a * b).sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for t in 0..=pos {
                        for i in 0..hd {
                            out[h * hd + i] += e[t] / z * vs[t][kv * hd + i];
                        }
                    }
                }
                let o = matvec(g("attention.wo"), &out);
                for (a, b) in xs[pos].iter_mut().zip(o) {
                    *a += b;
                }
                let h = rmsnorm(&xs[pos], g("ffn_norm"), eps);
                let gate = matvec(g("feed_forward.w1"), &h);
                let up = matvec(g("feed_forward.w3"), &h);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
                let d = matvec(g("feed_forward.w2"), &act);
                for (a, b) in xs[pos].iter_mut().zip(d) {
                    *a += b;
                }
            }
        }
        let head = if c.tied_head { self.get("tok_embeddings") } else { self.get("output") };
        xs.iter().map(|x| matvec(head, &rmsnorm(x, self.get("norm"), eps))).collect()
    }
}
