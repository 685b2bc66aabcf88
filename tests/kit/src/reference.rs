//! An independent, straightforward f64 Llama forward pass with a KV cache:
//! the oracle of the runtime's forward tests and of the converter tests
//! (`tests/tests/convert_common` includes this file by path).

use std::collections::HashMap;

use edgelm_runtime::format::Config;

/// Which RoPE pairing the reference applies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rope {
    /// llama2.c / llama.cpp / the runtime: pairs (2i, 2i+1).
    Interleaved,
    /// Hugging Face: pairs (i, i + head_dim/2).
    RotateHalf,
}

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
    /// `weights`: every f32 tensor by runtime name.
    pub fn from_weights<'a>(cfg: Config, weights: impl IntoIterator<Item = (&'a str, &'a [f32])>, rope: Rope) -> Self {
        let w = weights.into_iter().map(|(n, v)| (n.to_string(), v.iter().map(|&x| x as f64).collect())).collect();
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

    /// Logits after each token of `tokens`, fed from the next position on.
    pub fn logits(&mut self, tokens: &[u32]) -> Vec<Vec<f64>> {
        tokens.iter().map(|&t| self.step(t)).collect()
    }
}
