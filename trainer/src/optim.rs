//! AdamW over an explicit list of named vars (so a caller can train a subset, e.g.
//! new blocks over a frozen base), global-norm gradient clipping, and gradient
//! accumulation.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices (rank >= 2) only.
    pub weight_decay: f64,
}

/// AdamW state: first and second moments per var, and the step count.
pub struct AdamW {
    pub params: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Completed optimiser steps.
    pub t: usize,
    pub hp: AdamWParams,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, hp: AdamWParams) -> Result<Self> {
        let m = params.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW { params, m, v, t: 0, hp })
    }

    /// One update with gradients aligned with `params` and learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.hp.beta1, self.hp.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, ((_, p), g)) in self.params.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let upd = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.hp.eps)?)?;
            let decay = if p.rank() >= 2 { lr * self.hp.weight_decay } else { 0.0 };
            let new = ((p.as_tensor() * (1.0 - decay))? - (upd * lr)?)?;
            p.set(&new)?;
            // candle leaves a var's gradient attached to the backward graph (a
            // LoRA adapter's is `dL/dW · A^T`, A a var): moments kept attached would
            // chain every step's graph to the next, and memory would grow each step.
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{n}"), self.m[i].clone());
            out.insert(format!("v.{n}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, mut t: HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            for (key, slot) in [(format!("m.{n}"), &mut self.m[i]), (format!("v.{n}"), &mut self.v[i])] {
                let x = t.remove(&key).ok_or_else(|| Error::Config(format!("optimizer state lacks {key}")))?;
                if x.dims() != p.dims() {
                    return Err(Error::Config(format!("optimizer state {key} has shape {:?}", x.dims())));
                }
                *slot = x.to_device(p.device())?;
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// Sums gradients over micro-batches, aligned with a list of vars.
pub struct GradAccumulator {
    pub sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(n: usize) -> Self {
        GradAccumulator { sums: vec![None; n] }
    }

    /// Adds `scale * grad` of each var (vars without gradient count as zero).
    pub fn add(&mut self, vars: &[(String, Var)], store: &GradStore, scale: f64) -> Result<()> {
        for ((_, v), slot) in vars.iter().zip(self.sums.iter_mut()) {
            if let Some(g) = store.get(v.as_tensor()) {
                let g = if scale == 1.0 { g.clone() } else { (g * scale)? };
                *slot = Some(match slot.take() {
                    None => g,
                    Some(s) => (s + g)?,
                });
            }
        }
        Ok(())
    }

    /// The summed gradients (zeros where none) and their global L2 norm, clipped to
    /// `max_norm` when it is positive.
    pub fn finish(self, vars: &[(String, Var)], max_norm: f64) -> Result<(Vec<Tensor>, f64)> {
        let grads = self
            .sums
            .into_iter()
            .zip(vars)
            .map(|(g, (_, v))| g.map_or_else(|| v.zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut sq = 0f64;
        for g in &grads {
            sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let k = max_norm / (norm + 1e-6);
            let grads = grads.iter().map(|g| g * k).collect::<candle_core::Result<Vec<_>>>()?;
            return Ok((grads, norm));
        }
        Ok((grads, norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_minimises_a_quadratic() {
        let x = Var::new(&[3f32, -2.0], &Device::Cpu).unwrap();
        let hp = AdamWParams { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], hp).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let store = loss.backward().unwrap();
            let mut acc = GradAccumulator::new(1);
            acc.add(&opt.params, &store, 1.0).unwrap();
            let (g, _) = acc.finish(&opt.params, 1.0).unwrap();
            opt.step(&g, 0.05).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }

    /// A product of two vars (as in a LoRA adapter) gives gradients that still
    /// carry the backward graph; the moments must not keep it (or each step's
    /// graph stays reachable from the next: memory grows without bound).
    #[test]
    fn adamw_moments_hold_no_graph() {
        let dev = Device::Cpu;
        let a = Var::new(&[[0.5f32, -1.0], [0.25, 2.0]], &dev).unwrap();
        let b = Var::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let x = Tensor::new(&[[1f32], [2.0]], &dev).unwrap();
        let hp = AdamWParams { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], hp).unwrap();
        for _ in 0..3 {
            let w = b.as_tensor().matmul(a.as_tensor()).unwrap();
            let loss = w.matmul(&x).unwrap().sqr().unwrap().sum_all().unwrap();
            let store = loss.backward().unwrap();
            let mut acc = GradAccumulator::new(2);
            acc.add(&opt.params, &store, 1.0).unwrap();
            let (g, _) = acc.finish(&opt.params, 1.0).unwrap();
            assert!(g.iter().any(|g| g.track_op()), "the gradients carry the graph (what this test guards against)");
            opt.step(&g, 0.01).unwrap();
            assert!(opt.m.iter().chain(&opt.v).all(|t| !t.track_op()), "a moment holds the backward graph");
        }
    }
}
