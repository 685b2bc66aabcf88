//! The Llama-style decoder: token embedding, `n_layers` blocks of
//! `h = x + o_proj(attn(rmsnorm(x)))`, `out = h + down(silu(gate(rmsnorm(h))) * up(rmsnorm(h)))`,
//! a final RMSNorm and the output head (optionally tied to the embedding). RoPE in
//! the Hugging Face rotate-half layout, grouped-query attention. The maths matches
//! the runtime's forward pass (docs/CHECKPOINT.md).
//!
//! Parameters are named candle [`Var`]s (Hugging Face names) kept in a
//! [`candle_nn::VarMap`]; [`Llama::vars`] lists them so an optimiser can be given any
//! subset (e.g. only new blocks inserted into a frozen base).

use crate::config::ModelConfig;
use crate::ops::{self, Rope};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::sync::PoisonError;

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Var, // [dim]
    pub wq: Var,        // [n_heads*head_dim, dim]
    pub wk: Var,        // [n_kv_heads*head_dim, dim]
    pub wv: Var,        // [n_kv_heads*head_dim, dim]
    pub wo: Var,        // [dim, n_heads*head_dim]
    pub mlp_norm: Var,  // [dim]
    pub w_gate: Var,    // [ffn, dim]   (w1)
    pub w_up: Var,      // [ffn, dim]   (w3)
    pub w_down: Var,    // [dim, ffn]   (w2)
}

/// The decoder.
pub struct Llama {
    pub cfg: ModelConfig,
    pub embed: Var, // [vocab, dim]
    pub blocks: Vec<Block>,
    pub norm: Var,            // [dim]
    pub lm_head: Option<Var>, // [vocab, dim]; None when tied to `embed`
    pub varmap: VarMap,
    rope: Rope,
    device: Device,
}

/// Hugging Face name of a block tensor.
pub fn layer_name(i: usize, suffix: &str) -> String {
    format!("model.layers.{i}.{suffix}")
}

/// Hugging Face suffixes of a block's tensors, in [`Block`] field order.
pub const BLOCK_SUFFIXES: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// The expected tensor names and shapes of a config, in a fixed order.
pub fn expected_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd, f, v) = (cfg.dim, cfg.head_dim(), cfg.ffn_dim, cfg.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    for i in 0..cfg.n_layers {
        let shapes = [
            vec![d],
            vec![cfg.n_heads * hd, d],
            vec![cfg.n_kv_heads * hd, d],
            vec![cfg.n_kv_heads * hd, d],
            vec![d, cfg.n_heads * hd],
            vec![d],
            vec![f, d],
            vec![f, d],
            vec![d, f],
        ];
        for (s, shape) in BLOCK_SUFFIXES.iter().zip(shapes) {
            out.push((layer_name(i, s), shape));
        }
    }
    out.push(("model.norm.weight".into(), vec![d]));
    if !cfg.tie_embeddings {
        out.push(("lm_head.weight".into(), vec![v, d]));
    }
    out
}

impl Llama {
    /// A freshly initialised model: weights ~ N(0, 0.02²), the residual output
    /// projections (`o_proj`, `down_proj`) scaled by `1/sqrt(2·n_layers)`, norms 1.
    /// Deterministic for a seed.
    pub fn new(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut rng = Rng::new(seed, 0x1417);
        let resid = 0.02 / (2.0 * cfg.n_layers as f64).sqrt();
        let mut tensors = HashMap::new();
        for (name, shape) in expected_shapes(cfg) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                let std =
                    if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") { resid } else { 0.02 };
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Self::from_tensors(cfg, tensors, device)
    }

    /// Builds a model from named tensors (f16/bf16/f64 are converted to f32).
    /// Missing, extra or mis-shaped tensors are errors naming the tensor.
    pub fn from_tensors(cfg: &ModelConfig, mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let varmap = VarMap::new();
        let mut vars: HashMap<String, Var> = HashMap::new();
        for (name, shape) in expected_shapes(cfg) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| Error::Config(format!("missing tensor {name} (shape {shape:?})")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Config(format!(
                    "tensor {name} has shape {:?}, the config needs {shape:?}",
                    t.dims()
                )));
            }
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            let var = Var::from_tensor(&t)?;
            varmap.data().lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone(), var.clone());
            vars.insert(name, var);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Config(format!("unexpected tensor {extra} for this config")));
        }
        // Every name below is one of `expected_shapes`, inserted above.
        let mut take =
            |n: &str| vars.remove(n).ok_or_else(|| Error::Config(format!("tensor {n} is not in this config")));
        let embed = take("model.embed_tokens.weight")?;
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let [attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down] =
                    BLOCK_SUFFIXES.map(|s| take(&layer_name(i, s)));
                Ok(Block {
                    attn_norm: attn_norm?,
                    wq: wq?,
                    wk: wk?,
                    wv: wv?,
                    wo: wo?,
                    mlp_norm: mlp_norm?,
                    w_gate: w_gate?,
                    w_up: w_up?,
                    w_down: w_down?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = take("model.norm.weight")?;
        let lm_head = if cfg.tie_embeddings { None } else { Some(take("lm_head.weight")?) };
        let rope = Rope::new(cfg.head_dim(), cfg.max_seq, cfg.rope_theta, device)?;
        Ok(Llama { cfg: cfg.clone(), embed, blocks, norm, lm_head, varmap, rope, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        // A poisoned lock still holds a whole map: a panic elsewhere cannot tear an insert.
        let data = self.varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The current values by name (for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect()
    }

    pub fn n_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]` (u32), positions 0..T.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden(ids)?; // [B*T, dim]
        let logits = self.head(&h)?; // [B*T, vocab]
        Ok(logits.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// Mean next-token cross-entropy for inputs and targets `[B, T]`.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(ops::head_cross_entropy(&self.hidden(ids)?, w, targets)?)
    }

    /// Per-token cross-entropy (nats) `[B*T]` for inputs and targets `[B, T]`.
    pub fn token_losses(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.head(&self.hidden(ids)?)?;
        Ok(ops::cross_entropy_rows(&logits, &targets.flatten_all()?)?)
    }

    fn head(&self, h: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(h.matmul(&w.t()?)?)
    }

    /// Final hidden states after the last norm, `[B*T, dim]`.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.max_seq {
            return Err(Error::Config(format!(
                "sequence of {t} tokens is longer than the model's context {}",
                self.cfg.max_seq
            )));
        }
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?; // [B*T, dim]
        for blk in &self.blocks {
            x = self.block(blk, &x, b, t)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, self.cfg.norm_eps)?)
    }

    /// One block on `x: [B*T, dim]`.
    pub fn block(&self, blk: &Block, x: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        block_forward(&self.cfg, &self.rope, &BlockW::of(blk, false), x, b, t)
    }

    /// Logits of the last position for one sequence of ids (no cache; the last
    /// `max_seq` tokens are used).
    pub fn next_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let start = ids.len().saturating_sub(self.cfg.max_seq);
        let ctx = &ids[start..];
        let x = Tensor::new(ctx, &self.device)?.unsqueeze(0)?;
        let logits = self.forward(&x)?; // [1, T, V]
        Ok(logits.get(0)?.get(ctx.len() - 1)?.to_vec1::<f32>()?)
    }
}

/// A block's weights as plain tensors (tracked vars, or detached frozen copies).
#[derive(Debug, Clone)]
pub struct BlockW {
    pub attn_norm: Tensor,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub mlp_norm: Tensor,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

impl BlockW {
    /// `detach`: no gradient flows into these weights (frozen).
    pub fn of(b: &Block, detach: bool) -> Self {
        let t = |v: &Var| if detach { v.as_tensor().detach() } else { v.as_tensor().clone() };
        BlockW {
            attn_norm: t(&b.attn_norm),
            wq: t(&b.wq),
            wk: t(&b.wk),
            wv: t(&b.wv),
            wo: t(&b.wo),
            mlp_norm: t(&b.mlp_norm),
            w_gate: t(&b.w_gate),
            w_up: t(&b.w_up),
            w_down: t(&b.w_down),
        }
    }
}

/// One decoder block on `x: [B*T, dim]`, the one block forward of the trainer:
/// over plain tensors, so [`Llama::block`] passes its tracked vars, expansion
/// detached frozen copies and LoRA merged weights.
pub fn block_forward(cfg: &ModelConfig, rope: &Rope, w: &BlockW, x: &Tensor, b: usize, t: usize) -> Result<Tensor> {
    let shape = ops::AttnShape { b, t, nh: cfg.n_heads, nkv: cfg.n_kv_heads, hd: cfg.head_dim() };
    let h = ops::rms_norm(x, &w.attn_norm, cfg.norm_eps)?;
    // one product for q, k and v (one pass over h, one wider gemm); the weights
    // stay separate vars (checkpoint names and shapes unchanged)
    let wqkv = Tensor::cat(&[&w.wq, &w.wk, &w.wv], 0)?; // [(H + 2·KV)·hd, dim]
    let o = ops::qkv_attention(&ops::linear(&h, &wqkv)?, rope, shape)?; // [B*T, H·hd]
    let x = (x + ops::linear(&o, &w.wo)?)?;
    let h = ops::rms_norm(&x, &w.mlp_norm, cfg.norm_eps)?;
    let wgu = Tensor::cat(&[&w.w_gate, &w.w_up], 0)?; // [2·ffn, dim]
    let g = ops::swiglu_packed(&ops::linear(&h, &wgu)?)?; // [B*T, ffn]
    Ok((&x + ops::linear(&g, &w.w_down)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig {
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 24,
            vocab_size: 11,
            max_seq: 8,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn param_count_and_causality() {
        let cfg = tiny();
        let m = Llama::new(&cfg, 1, &Device::Cpu).unwrap();
        assert_eq!(m.n_params(), cfg.n_params());
        let a = Tensor::new(&[[1u32, 2, 3, 4, 5]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1u32, 2, 3, 9, 9]], &Device::Cpu).unwrap();
        let la = m.forward(&a).unwrap().get(0).unwrap().narrow(0, 0, 3).unwrap();
        let lb = m.forward(&b).unwrap().get(0).unwrap().narrow(0, 0, 3).unwrap();
        let d = (la - lb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "future tokens leaked into the past: {d}");
        // Batched rows equal single-row results.
        let ab = Tensor::cat(&[&a, &b], 0).unwrap();
        let l2 = m.forward(&ab).unwrap().get(1).unwrap();
        let l1 = m.forward(&b).unwrap().get(0).unwrap();
        let d = (l1 - l2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5);
    }

    /// Loss and every gradient of a step, computed in a 1-thread and in a
    /// 2-thread rayon pool, are identical bit for bit: the fused ops split work
    /// in fixed-size tasks and add partial sums in task order (exact `--resume`
    /// on a machine with another core count relies on it). 2560 tokens span
    /// several tasks of every fused op.
    #[test]
    fn gradients_do_not_depend_on_the_thread_count() {
        let cfg = ModelConfig { dim: 32, ffn_dim: 48, vocab_size: 50, max_seq: 64, ..tiny() };
        let m = Llama::new(&cfg, 3, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..40 * 64u32).map(|i| i * 7919 % 50).collect();
        let x = Tensor::from_vec(ids.clone(), (40, 64), &Device::Cpu).unwrap();
        let y =
            Tensor::from_vec(ids.iter().map(|i| (i + 1) % 50).collect::<Vec<u32>>(), (40, 64), &Device::Cpu).unwrap();
        let run = |threads: usize| -> Vec<Vec<u32>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let loss = m.loss(&x, &y).unwrap();
                let grads = loss.backward().unwrap();
                let mut out = vec![vec![loss.to_scalar::<f32>().unwrap().to_bits()]];
                for (name, v) in m.vars() {
                    let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
                    out.push(g.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|f| f.to_bits()).collect());
                }
                out
            })
        };
        assert!(run(1) == run(2), "a step's loss or gradients changed with the thread count");
    }

    #[test]
    fn untied_head_and_bad_tensors() {
        let cfg = ModelConfig { tie_embeddings: false, ..tiny() };
        let m = Llama::new(&cfg, 1, &Device::Cpu).unwrap();
        assert!(m.lm_head.is_some());
        let mut t = m.tensors();
        t.remove("model.norm.weight");
        let e = Llama::from_tensors(&cfg, t, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("model.norm.weight"), "{e}");
    }
}
