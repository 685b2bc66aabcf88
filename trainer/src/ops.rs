//! Differentiable building blocks of the decoder. On CPU with f32 tensors the fused
//! custom ops below are used (one pass forward, one pass backward); elsewhere (CUDA,
//! other dtypes) the same maths is composed from candle primitives. Tests check
//! that both paths agree in value and gradient. The CPU kernels split their rows
//! over rayon's pool (the one `--threads` sizes, shared with candle's matmuls) and
//! do their exponentials and reductions with [`crate::vecmath`].

use crate::vecmath::{self, rows_per_task};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

type CResult<T> = candle_core::Result<T>;

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: expected f32"),
    }
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [u32]> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    match s {
        CpuStorage::U32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: expected u32 targets"),
    }
}

/// The f32 data of a contiguous CPU storage, borrowed: the backward passes read
/// their inputs in place (`to_vec1` would copy them on the calling thread, the
/// one thread that is not in rayon's pool).
fn cpu_f32s<'a>(s: &'a candle_core::Storage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    f32s(cpu_storage(s, what)?, l, what)
}

/// The CPU storage behind a tensor's storage guard (the fused ops are CPU-only).
fn cpu_storage<'a>(s: &'a candle_core::Storage, what: &str) -> CResult<&'a CpuStorage> {
    match s {
        candle_core::Storage::Cpu(cs) => Ok(cs),
        _ => candle_core::bail!("{what}: CPU tensors expected"),
    }
}

/// Whether the fused CPU kernels apply to `t`.
pub fn fused_ok(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "edgelm-rms-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "rms_norm x")?;
        let w = f32s(s2, l2, "rms_norm w")?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        let task = rows_per_task(d) * d;
        out.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(oc, xc)| {
            for (xr, or) in xc.chunks_exact(d).zip(oc.chunks_exact_mut(d)) {
                let r = 1.0 / (vecmath::dot(xr, xr) / d as f32 + self.eps).sqrt();
                for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
                    *o = xv * r * wv;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let ((xs, xl), (ws, wl), (gs, gl)) = (x.storage_and_layout(), w.storage_and_layout(), g.storage_and_layout());
        let xv = cpu_f32s(&xs, xl, "rms_norm bwd x")?;
        let wv = cpu_f32s(&ws, wl, "rms_norm bwd w")?;
        let gv = cpu_f32s(&gs, gl, "rms_norm bwd g")?;
        let d = wv.len();
        let mut dx = vec![0f32; xv.len()];
        let task = rows_per_task(d) * d;
        // each task sums its rows' share of dw; the shares are added in task order
        // afterwards, so the result does not depend on the thread count or on
        // which thread ran what (exact `--resume` relies on it)
        let shares: Vec<Vec<f32>> = dx
            .par_chunks_mut(task)
            .zip(xv.par_chunks(task).zip(gv.par_chunks(task)))
            .map(|(dxc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                let mut gw = vec![0f32; d];
                for ((xr, gr), dxr) in xc.chunks_exact(d).zip(gc.chunks_exact(d)).zip(dxc.chunks_exact_mut(d)) {
                    let r = 1.0 / (vecmath::dot(xr, xr) / d as f32 + self.eps).sqrt();
                    for ((g, &gi), &wi) in gw.iter_mut().zip(gr).zip(wv) {
                        *g = gi * wi;
                    }
                    let c = r * r * r * vecmath::dot(&gw, xr) / d as f32;
                    for i in 0..d {
                        dw[i] += gr[i] * xr[i] * r;
                        dxr[i] = r * gw[i] - xr[i] * c;
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for share in &shares {
            for (x, y) in dw.iter_mut().zip(share) {
                *x += y;
            }
        }
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = Tensor::from_vec(dw, d, w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dimension: `x * w / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    if fused_ok(x) && x.is_contiguous() {
        x.apply_op2(w, RmsNorm { eps: eps as f32 })
    } else {
        let d = x.dim(D::Minus1)? as f64;
        let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
        x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
    }
}

// ---------------------------------------------------------------- RoPE

/// Precomputed rotary tables for the rotate-half (Hugging Face) layout.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[max_seq, head_dim/2]`, row-major.
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    half: usize,
    /// The same tables as tensors (composed path).
    cos_t: Tensor,
    sin_t: Tensor,
}

impl Rope {
    pub fn new(head_dim: usize, max_seq: usize, theta: f64, dev: &candle_core::Device) -> CResult<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq * half);
        let mut sin = Vec::with_capacity(max_seq * half);
        for p in 0..max_seq {
            for i in 0..half {
                let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
                let a = p as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos_t = Tensor::from_vec(cos.clone(), (max_seq, half), dev)?;
        let sin_t = Tensor::from_vec(sin.clone(), (max_seq, half), dev)?;
        Ok(Rope { cos: Arc::new(cos), sin: Arc::new(sin), half, cos_t, sin_t })
    }

    /// Rotates `x: [B, T, H, head_dim]` (positions 0..T).
    pub fn apply(&self, x: &Tensor) -> CResult<Tensor> {
        let (_b, t, h, hd) = x.dims4()?;
        if hd != 2 * self.half || t * self.half > self.cos.len() {
            candle_core::bail!("rope: head_dim {hd} or length {t} does not match the tables");
        }
        if fused_ok(x) {
            x.contiguous()?.apply_op1(RopeOp { rope: self.clone(), t, h, inverse: false })
        } else {
            let cos = self.cos_t.narrow(0, 0, t)?.to_dtype(x.dtype())?;
            let sin = self.sin_t.narrow(0, 0, t)?.to_dtype(x.dtype())?;
            let cos = Tensor::cat(&[&cos, &cos], 1)?.unsqueeze(1)?; // [T, 1, hd]
            let sin = Tensor::cat(&[&sin, &sin], 1)?.unsqueeze(1)?;
            let x1 = x.narrow(D::Minus1, 0, self.half)?;
            let x2 = x.narrow(D::Minus1, self.half, self.half)?;
            let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?
        }
    }
}

struct RopeOp {
    rope: Rope,
    t: usize,
    h: usize,
    inverse: bool,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "edgelm-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "rope")?;
        let half = self.rope.half;
        let hd = 2 * half;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(hd);
        out.par_chunks_mut(rows * hd).zip(x.par_chunks(rows * hd)).enumerate().for_each(|(ti, (oc, xc))| {
            for (i, (xr, or)) in xc.chunks_exact(hd).zip(oc.chunks_exact_mut(hd)).enumerate() {
                let p = ((ti * rows + i) / self.h) % self.t;
                let c = &self.rope.cos[p * half..(p + 1) * half];
                let sn = &self.rope.sin[p * half..(p + 1) * half];
                for i in 0..half {
                    let (a, b) = (xr[i], xr[i + half]);
                    let s = sign * sn[i];
                    or[i] = a * c[i] - b * s;
                    or[i + half] = b * c[i] + a * s;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        // The rotation is orthogonal: its transpose is the rotation by -angle.
        let inv = RopeOp { rope: self.rope.clone(), t: self.t, h: self.h, inverse: !self.inverse };
        Ok(Some(g.contiguous()?.apply_op1(inv)?))
    }
}

// ---------------------------------------------------------------- causal softmax

/// Scaled causal softmax over the last dim of `scores: [..., R, T]` where row `r`
/// is position `r % T` (so grouped query heads may be stacked along R).
/// Entries after the position get probability 0.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> CResult<Tensor> {
    let t = scores.dim(D::Minus1)?;
    if fused_ok(scores) {
        scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32, t })
    } else {
        let r = scores.dim(D::Minus2)?;
        let mask: Vec<f32> =
            (0..r).flat_map(|i| (0..t).map(move |j| if j <= i % t { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (r, t), scores.device())?.to_dtype(scores.dtype())?;
        let s = (scores * scale)?.broadcast_add(&mask)?;
        candle_nn::ops::softmax(&s, D::Minus1)
    }
}

struct CausalSoftmax {
    scale: f32,
    t: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "edgelm-causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "causal_softmax")?;
        let t = self.t;
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(t);
        out.par_chunks_mut(rows * t).zip(x.par_chunks(rows * t)).enumerate().for_each(|(ti, (oc, xc))| {
            for (i, (xr, or)) in xc.chunks_exact(t).zip(oc.chunks_exact_mut(t)).enumerate() {
                let n = (ti * rows + i) % t + 1;
                // scale > 0, so the scaled maximum is the maximum scaled
                let m = vecmath::max(&xr[..n]) * self.scale;
                let inv = 1.0 / vecmath::exp_into(&mut or[..n], &xr[..n], self.scale, m);
                for o in &mut or[..n] {
                    *o *= inv;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2(&g.contiguous()?, SoftmaxBwd { scale: self.scale, t: self.t })?))
    }
}

/// `dx = scale * y * (g - sum(g * y))` row-wise (causal rows end at their position).
struct SoftmaxBwd {
    scale: f32,
    t: usize,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "edgelm-causal-softmax-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let y = f32s(s1, l1, "softmax bwd y")?;
        let g = f32s(s2, l2, "softmax bwd g")?;
        let t = self.t;
        let mut out = vec![0f32; y.len()];
        let rows = rows_per_task(t);
        let inputs = y.par_chunks(rows * t).zip(g.par_chunks(rows * t));
        out.par_chunks_mut(rows * t).zip(inputs).enumerate().for_each(|(ti, (oc, (yc, gc)))| {
            for (i, ((yr, gr), or)) in
                yc.chunks_exact(t).zip(gc.chunks_exact(t)).zip(oc.chunks_exact_mut(t)).enumerate()
            {
                let n = (ti * rows + i) % t + 1;
                let dot = vecmath::dot(&yr[..n], &gr[..n]);
                for j in 0..n {
                    or[j] = self.scale * yr[j] * (gr[j] - dot);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- causal attention

/// `softmax_causal(q · kᵀ · scale) · v` per batch: `q: [B, KV, R, hd]` (the query
/// heads sharing a KV head stacked, row `r` at position `r % T`), `k, v: [B, KV,
/// T, hd]` -> `[B, KV, R, hd]`.
///
/// Fused on CPU: each of the `B·KV` batches is one rayon task that runs its
/// products and its softmax, forward and backward. Composed, the products of
/// every batch are split over the threads one after another, and the `[B, KV,
/// R, T]` scores and probabilities (16 MiB each at 16×256 tokens) each go
/// through a zero-filled gradient buffer and an addition on the main thread.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> CResult<Tensor> {
    if fused_ok(q) && fused_ok(k) && fused_ok(v) && q.rank() == 4 && k.dims() == v.dims() {
        let op = CausalAttention { scale: scale as f32, probs: std::sync::Mutex::new(None) };
        q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
    } else {
        let p = causal_softmax(&q.matmul(&k.t()?)?, scale)?;
        p.matmul(v)
    }
}

struct CausalAttention {
    scale: f32,
    /// The probabilities `[B·KV, R, T]` from the forward pass, taken by the
    /// backward. One buffer from the calling thread: per-task buffers that live
    /// from the forward to the backward pass came back as fresh pages each step
    /// (page faults were 10 % of a step).
    probs: std::sync::Mutex<Option<CpuStorage>>,
}

/// Batch count, rows `R`, length `T` and head size of a [`causal_attention`].
fn attention_dims(lq: &Layout, lk: &Layout) -> CResult<(usize, usize, usize, usize)> {
    let (b, kv, r, hd) = lq.shape().dims4()?;
    let (b2, kv2, t, hd2) = lk.shape().dims4()?;
    if (b, kv, hd) != (b2, kv2, hd2) || t == 0 || r % t != 0 {
        candle_core::bail!("causal_attention: q {:?} does not fit k/v {:?}", lq.dims(), lk.dims());
    }
    Ok((b * kv, r, t, hd))
}

/// `lhs · rhs` for row-major `lhs: [m, k]` at `lo`, `rhs: [k, n]` at `ro`, either
/// one transposed in place (read as its `[k, m]` / `[n, k]` row-major storage).
#[allow(clippy::too_many_arguments)]
fn mm(
    lhs: &CpuStorage,
    lo: usize,
    lt: bool,
    rhs: &CpuStorage,
    ro: usize,
    rt: bool,
    (m, n, k): (usize, usize, usize),
) -> CResult<Vec<f32>> {
    use candle_core::backend::BackendStorage;
    let lay = |rows: usize, cols: usize, t: bool, off: usize| {
        if t {
            Layout::new(Shape::from((rows, cols)), vec![1, rows], off)
        } else {
            Layout::contiguous_with_offset((rows, cols), off)
        }
    };
    match lhs.matmul(rhs, (1, m, n, k), &lay(m, k, lt, lo), &lay(k, n, rt, ro))? {
        CpuStorage::F32(v) => Ok(v),
        _ => candle_core::bail!("causal_attention: expected f32"),
    }
}

impl CausalAttention {
    /// Every batch's probabilities `softmax_causal(q_i · k_iᵀ · scale)`, `[B·KV, R, T]`.
    fn probs(
        &self,
        q: &CpuStorage,
        k: &CpuStorage,
        (nb, r, t, hd): (usize, usize, usize, usize),
    ) -> CResult<CpuStorage> {
        let mut p = vec![0f32; nb * r * t];
        p.par_chunks_mut(r * t).enumerate().try_for_each(|(i, pc)| self.probs_into(pc, q, k, i, (r, t, hd)))?;
        Ok(CpuStorage::F32(p))
    }

    /// Batch `i`'s probabilities into `p: [R, T]`.
    fn probs_into(
        &self,
        p: &mut [f32],
        q: &CpuStorage,
        k: &CpuStorage,
        i: usize,
        (r, t, hd): (usize, usize, usize),
    ) -> CResult<()> {
        let s = mm(q, i * r * hd, false, k, i * t * hd, true, (r, t, hd))?;
        for (row, (sr, pr)) in s.chunks_exact(t).zip(p.chunks_exact_mut(t)).enumerate() {
            let n = row % t + 1;
            // scale > 0, so the scaled maximum is the maximum scaled
            let m = vecmath::max(&sr[..n]) * self.scale;
            let inv = 1.0 / vecmath::exp_into(&mut pr[..n], &sr[..n], self.scale, m);
            for x in &mut pr[..n] {
                *x *= inv;
            }
        }
        Ok(())
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "edgelm-causal-attention"
    }
    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (nb, r, t, hd) = attention_dims(lq, lk)?;
        if lv.dims() != lk.dims()
            || [lq, lk, lv].iter().any(|l| l.contiguous_offsets() != Some((0, l.shape().elem_count())))
        {
            candle_core::bail!("causal_attention: inputs must be contiguous, k and v of one shape");
        }
        let probs = self.probs(sq, sk, (nb, r, t, hd))?;
        let mut out = vec![0f32; nb * r * hd];
        out.par_chunks_mut(r * hd).enumerate().try_for_each(|(i, o)| -> CResult<()> {
            o.copy_from_slice(&mm(&probs, i * r * t, false, sv, i * t * hd, false, (r, hd, t))?);
            Ok(())
        })?;
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(probs);
        }
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let ((qs, lq), (ks, lk), (vs, _), (gs, lg)) =
            (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout(), g.storage_and_layout());
        let (sq, sk, sv) = (cpu_storage(&qs, "q")?, cpu_storage(&ks, "k")?, cpu_storage(&vs, "v")?);
        let sg = cpu_storage(&gs, "attention grad")?;
        let (nb, r, t, hd) = attention_dims(lq, lk)?;
        if lg.contiguous_offsets() != Some((0, nb * r * hd)) {
            candle_core::bail!("causal_attention bwd: gradient layout");
        }
        let stashed = self.probs.lock().ok().and_then(|mut slot| slot.take());
        let probs = match stashed {
            Some(p) if p.as_slice::<f32>().is_ok_and(|v| v.len() == nb * r * t) => p,
            // a second backward pass: recompute
            _ => self.probs(sq, sk, (nb, r, t, hd))?,
        };
        let pv = probs.as_slice::<f32>()?;
        let (mut dq, mut dk, mut dv) = (vec![0f32; nb * r * hd], vec![0f32; nb * t * hd], vec![0f32; nb * t * hd]);
        let outs = dq.par_chunks_mut(r * hd).zip(dk.par_chunks_mut(t * hd).zip(dv.par_chunks_mut(t * hd)));
        outs.zip(pv.par_chunks(r * t)).enumerate().try_for_each(|(i, ((dqi, (dki, dvi)), p))| -> CResult<()> {
            // dP = dO · vᵀ; dS = scale · P ∘ (dP - rowsum(P ∘ dP))
            let mut ds = mm(sg, i * r * hd, false, sv, i * t * hd, true, (r, t, hd))?;
            for (row, (dr, pr)) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
                let n = row % t + 1;
                let dot = vecmath::dot(&pr[..n], &dr[..n]);
                for (d, &pj) in dr[..n].iter_mut().zip(&pr[..n]) {
                    *d = self.scale * pj * (*d - dot);
                }
                dr[n..].fill(0.0);
            }
            let ds = CpuStorage::F32(ds);
            dvi.copy_from_slice(&mm(&probs, i * r * t, true, sg, i * r * hd, false, (t, hd, r))?); // Pᵀ · dO
            dqi.copy_from_slice(&mm(&ds, 0, false, sk, i * t * hd, false, (r, hd, t))?); // dS · k
            dki.copy_from_slice(&mm(&ds, 0, true, sq, i * r * hd, false, (t, hd, r))?); // dSᵀ · q
            Ok(())
        })?;
        let dq = Tensor::from_vec(dq, q.shape(), q.device())?;
        let dk = Tensor::from_vec(dk, k.shape(), k.device())?;
        let dv = Tensor::from_vec(dv, v.shape(), v.device())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

// ---------------------------------------------------------------- attention over packed projections

/// Query positions per block of [`qkv_attention`]: a block's queries need only
/// the keys up to its last position, so about half of the causal products
/// (the masked future) are never computed.
const ATTN_BLOCK: usize = 32;

/// The shape of a [`qkv_attention`]: batch, length, query heads, KV heads, head size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

impl AttnShape {
    /// Width of a packed projection row: `[q heads | k heads | v heads]`.
    fn width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
    fn rep(&self) -> usize {
        self.nh / self.nkv
    }
    /// `(first position, end position)` of every query block.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let t = self.t;
        (0..t).step_by(ATTN_BLOCK).map(move |t0| (t0, (t0 + ATTN_BLOCK).min(t)))
    }
    /// Stored probabilities of one (sequence, KV head): block `[t0, t1)` keeps
    /// `(t1 - t0)·rep` rows of `t1` keys.
    fn probs_per_head(&self) -> usize {
        self.blocks().map(|(t0, t1)| (t1 - t0) * self.rep() * t1).sum()
    }
}

/// Causal grouped-query attention with RoPE on packed projections:
/// `qkv: [B·T, (nh + 2·nkv)·hd]` (each row `[q heads | k heads | v heads]`, the
/// product of the normed input with the concatenated `q/k/v_proj` weights) ->
/// `[B·T, nh·hd]` (heads side by side, the input of `o_proj`). Query head `h`
/// uses KV head `h / (nh / nkv)`; positions are 0..T.
///
/// Fused on CPU: one rayon task per sequence applies RoPE, runs the products
/// and the softmax of each KV head in blocks of [`ATTN_BLOCK`] query positions
/// against only the keys up to the block's end, and writes the output in the
/// layout `o_proj` reads; the backward pass writes the packed gradient. Composed,
/// that is three narrow copies, two RoPE ops, four transposed copies and the
/// full `T × T` products, each intermediate with its own gradient buffer.
pub fn qkv_attention(qkv: &Tensor, rope: &Rope, s: AttnShape) -> CResult<Tensor> {
    let AttnShape { b, t, nh, nkv, hd } = s;
    if nkv == 0 || nh % nkv != 0 || qkv.dims() != [b * t, s.width()] || hd != 2 * rope.half {
        candle_core::bail!("qkv_attention: {:?} does not fit a packed projection {:?}", s, qkv.dims());
    }
    let scale = 1.0 / (hd as f64).sqrt();
    if fused_ok(qkv) {
        if t * rope.half > rope.cos.len() {
            candle_core::bail!("qkv_attention: length {t} is longer than the RoPE tables");
        }
        let op = QkvAttention { rope: rope.clone(), s, scale: scale as f32, probs: std::sync::Mutex::new(None) };
        qkv.contiguous()?.apply_op1(op)
    } else {
        let rep = s.rep();
        let q = qkv.narrow(1, 0, nh * hd)?.reshape((b, t, nh, hd))?;
        let k = qkv.narrow(1, nh * hd, nkv * hd)?.reshape((b, t, nkv, hd))?;
        let v = qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?.reshape((b, t, nkv, hd))?;
        let q = rope.apply(&q)?.transpose(1, 2)?.contiguous()?.reshape((b, nkv, rep * t, hd))?;
        let k = rope.apply(&k)?.transpose(1, 2)?.contiguous()?; // [B, KV, T, hd]
        let v = v.transpose(1, 2)?.contiguous()?; // [B, KV, T, hd]
        let o = causal_attention(&q, &k, &v, scale)?; // [B, KV, rep*T, hd]
        o.reshape((b, nh, t, hd))?.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))
    }
}

struct QkvAttention {
    rope: Rope,
    s: AttnShape,
    scale: f32,
    /// The probabilities of every block from the forward pass (per sequence,
    /// per KV head, per block `[rows, keys]`), taken by the backward.
    probs: std::sync::Mutex<Option<CpuStorage>>,
}

/// Offsets of one (sequence, KV head)'s contiguous copies in its task buffer:
/// `q: [T·rep, hd]` position-major (row `t·rep + j` is query head `kv·rep + j`
/// at position `t`), then `k, v: [T, hd]`, then (backward) `dO` like `q`.
struct Local {
    q: usize,
    k: usize,
    v: usize,
    g: usize,
    len: usize,
}

impl QkvAttention {
    fn local(&self) -> Local {
        let (t, hd, rep) = (self.s.t, self.s.hd, self.s.rep());
        let q = 0;
        let k = q + t * rep * hd;
        let v = k + t * hd;
        let g = v + t * hd;
        Local { q, k, v, g, len: g + t * rep * hd }
    }

    /// Rotates `x` (one head vector at position `p`) in place; `inverse` rotates back.
    fn rotate(&self, x: &mut [f32], p: usize, inverse: bool) {
        let half = self.rope.half;
        let (c, sn) = (&self.rope.cos[p * half..(p + 1) * half], &self.rope.sin[p * half..(p + 1) * half]);
        let sign = if inverse { -1.0 } else { 1.0 };
        let (lo, hi) = x.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            let s = sign * sn[i];
            lo[i] = a * c[i] - b * s;
            hi[i] = b * c[i] + a * s;
        }
    }

    /// KV head `kv`'s rotated queries and keys and its values, from one sequence's
    /// packed rows `x: [T, width]`, into `buf` (laid out as [`Local`]).
    fn gather(&self, buf: &mut [f32], x: &[f32], kv: usize) {
        let AttnShape { t, nh, nkv, hd, .. } = self.s;
        let (rep, w, lo) = (self.s.rep(), self.s.width(), self.local());
        for p in 0..t {
            let row = &x[p * w..(p + 1) * w];
            for j in 0..rep {
                let dst = &mut buf[lo.q + (p * rep + j) * hd..][..hd];
                dst.copy_from_slice(&row[(kv * rep + j) * hd..][..hd]);
                self.rotate(dst, p, false);
            }
            let dst = &mut buf[lo.k + p * hd..][..hd];
            dst.copy_from_slice(&row[(nh + kv) * hd..][..hd]);
            self.rotate(dst, p, false);
            buf[lo.v + p * hd..][..hd].copy_from_slice(&row[(nh + nkv + kv) * hd..][..hd]);
        }
    }

    /// One sequence's probabilities `probs` (all KV heads, the blocks of each
    /// one after another) from its packed rows `x`.
    fn probs_seq(&self, probs: &mut [f32], x: &[f32]) -> CResult<()> {
        let hd = self.s.hd;
        let (rep, lo, per_head) = (self.s.rep(), self.local(), self.s.probs_per_head());
        for (kv, ph) in probs.chunks_exact_mut(per_head).enumerate() {
            let mut buf = vec![0f32; lo.len];
            self.gather(&mut buf, x, kv);
            let loc = CpuStorage::F32(buf);
            let mut off = 0;
            for (t0, t1) in self.s.blocks() {
                let rows = (t1 - t0) * rep;
                // scores of the block's queries against keys 0..t1
                let sc = mm(&loc, lo.q + t0 * rep * hd, false, &loc, lo.k, true, (rows, t1, hd))?;
                let pb = &mut ph[off..off + rows * t1];
                for (r, (sr, pr)) in sc.chunks_exact(t1).zip(pb.chunks_exact_mut(t1)).enumerate() {
                    let n = t0 + r / rep + 1;
                    // scale > 0, so the scaled maximum is the maximum scaled
                    let m = vecmath::max(&sr[..n]) * self.scale;
                    let inv = 1.0 / vecmath::exp_into(&mut pr[..n], &sr[..n], self.scale, m);
                    for x in &mut pr[..n] {
                        *x *= inv;
                    }
                    pr[n..].fill(0.0);
                }
                off += rows * t1;
            }
        }
        Ok(())
    }

    /// Every sequence's probabilities `[B, KV, blocks]` (a second backward pass
    /// recomputes them).
    fn all_probs(&self, x: &[f32]) -> CResult<CpuStorage> {
        let per_seq = self.s.nkv * self.s.probs_per_head();
        let mut probs = vec![0f32; self.s.b * per_seq];
        probs
            .par_chunks_mut(per_seq)
            .zip(x.par_chunks(self.s.t * self.s.width()))
            .try_for_each(|(p, xs)| self.probs_seq(p, xs))?;
        Ok(CpuStorage::F32(probs))
    }

    /// One sequence's output rows `out: [T, nh·hd]` (`P · v` per block) from
    /// its packed rows `x` and the probabilities at `p_off`.
    fn output_seq(&self, out: &mut [f32], x: &[f32], probs: &CpuStorage, p_off: usize) -> CResult<()> {
        let AttnShape { nh, nkv, hd, .. } = self.s;
        let (rep, w, per_head) = (self.s.rep(), self.s.width(), self.s.probs_per_head());
        for kv in 0..nkv {
            let v: Vec<f32> = x.chunks_exact(w).flat_map(|row| &row[(nh + nkv + kv) * hd..][..hd]).copied().collect(); // [T, hd]
            let v = CpuStorage::F32(v);
            let mut off = p_off + kv * per_head;
            for (t0, t1) in self.s.blocks() {
                let rows = (t1 - t0) * rep;
                let o = mm(probs, off, false, &v, 0, false, (rows, hd, t1))?; // [rows, hd]
                for (r, orow) in o.chunks_exact(hd).enumerate() {
                    let (pos, j) = (t0 + r / rep, r % rep);
                    out[pos * nh * hd + (kv * rep + j) * hd..][..hd].copy_from_slice(orow);
                }
                off += rows * t1;
            }
        }
        Ok(())
    }

    /// One sequence's backward: the packed gradient `dx: [T, width]` from its
    /// rows `x`, the output gradient `g: [T, nh·hd]` and its probabilities.
    fn backward_seq(&self, dx: &mut [f32], x: &[f32], g: &[f32], probs: &CpuStorage, p_off: usize) -> CResult<()> {
        let AttnShape { t, nh, nkv, hd, .. } = self.s;
        let (rep, w, lo, per_head) = (self.s.rep(), self.s.width(), self.local(), self.s.probs_per_head());
        let pv = probs.as_slice::<f32>()?;
        for kv in 0..nkv {
            let mut buf = vec![0f32; lo.len];
            self.gather(&mut buf, x, kv);
            for p in 0..t {
                for j in 0..rep {
                    buf[lo.g + (p * rep + j) * hd..][..hd]
                        .copy_from_slice(&g[p * nh * hd + (kv * rep + j) * hd..][..hd]);
                }
            }
            let loc = CpuStorage::F32(buf);
            let mut dq = vec![0f32; t * rep * hd];
            let (mut dk, mut dv) = (vec![0f32; t * hd], vec![0f32; t * hd]);
            let mut off = p_off + kv * per_head;
            for (t0, t1) in self.s.blocks() {
                let rows = (t1 - t0) * rep;
                let (qo, go) = (lo.q + t0 * rep * hd, lo.g + t0 * rep * hd);
                let p = &pv[off..off + rows * t1];
                // dP = dO · vᵀ; dS = scale · P ∘ (dP - rowsum(P ∘ dP))
                let mut ds = mm(&loc, go, false, &loc, lo.v, true, (rows, t1, hd))?;
                for (r, (dr, pr)) in ds.chunks_exact_mut(t1).zip(p.chunks_exact(t1)).enumerate() {
                    let n = t0 + r / rep + 1;
                    let dot = vecmath::dot(&pr[..n], &dr[..n]);
                    for (d, &pj) in dr[..n].iter_mut().zip(&pr[..n]) {
                        *d = self.scale * pj * (*d - dot);
                    }
                    dr[n..].fill(0.0);
                }
                let ds = CpuStorage::F32(ds);
                add_into(&mut dv[..t1 * hd], &mm(probs, off, true, &loc, go, false, (t1, hd, rows))?); // Pᵀ · dO
                dq[t0 * rep * hd..t1 * rep * hd].copy_from_slice(&mm(
                    &ds,
                    0,
                    false,
                    &loc,
                    lo.k,
                    false,
                    (rows, hd, t1),
                )?); // dS · k
                add_into(&mut dk[..t1 * hd], &mm(&ds, 0, true, &loc, qo, false, (t1, hd, rows))?); // dSᵀ · q
                off += rows * t1;
            }
            // back through RoPE (its transpose is the rotation by -angle), into the packed rows
            for p in 0..t {
                let row = &mut dx[p * w..(p + 1) * w];
                for j in 0..rep {
                    let src = &mut dq[(p * rep + j) * hd..][..hd];
                    self.rotate(src, p, true);
                    row[(kv * rep + j) * hd..][..hd].copy_from_slice(src);
                }
                let src = &mut dk[p * hd..][..hd];
                self.rotate(src, p, true);
                row[(nh + kv) * hd..][..hd].copy_from_slice(src);
                row[(nh + nkv + kv) * hd..][..hd].copy_from_slice(&dv[p * hd..][..hd]);
            }
        }
        Ok(())
    }
}

/// `acc[i] += x[i]`.
fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

impl CustomOp1 for QkvAttention {
    fn name(&self) -> &'static str {
        "edgelm-qkv-attention"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "qkv_attention")?;
        if x.len() != self.s.b * self.s.t * self.s.width() {
            candle_core::bail!("qkv_attention: input of {} values", x.len());
        }
        let AttnShape { b, t, nh, nkv, hd } = self.s;
        let probs = self.all_probs(x)?;
        let per_seq = nkv * self.s.probs_per_head();
        let mut out = vec![0f32; b * t * nh * hd];
        out.par_chunks_mut(t * nh * hd)
            .zip(x.par_chunks(t * self.s.width()))
            .enumerate()
            .try_for_each(|(i, (o, xs))| self.output_seq(o, xs, &probs, i * per_seq))?;
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(probs);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.s.b * self.s.t, self.s.nh * self.s.hd))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let AttnShape { b, t, nh, nkv, hd } = self.s;
        let g = g.contiguous()?;
        let ((xs, xl), (gs, gl)) = (x.storage_and_layout(), g.storage_and_layout());
        let xv = cpu_f32s(&xs, xl, "qkv_attention bwd x")?;
        let gv = cpu_f32s(&gs, gl, "qkv_attention bwd g")?;
        let per_seq = nkv * self.s.probs_per_head();
        let stashed = self.probs.lock().ok().and_then(|mut slot| slot.take());
        let probs = match stashed {
            Some(p) if p.as_slice::<f32>().is_ok_and(|v| v.len() == b * per_seq) => p,
            // a second backward pass: recompute
            _ => self.all_probs(xv)?,
        };
        let w = self.s.width();
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(t * w)
            .zip(xv.par_chunks(t * w).zip(gv.par_chunks(t * nh * hd)))
            .enumerate()
            .try_for_each(|(i, (d, (xs, gs)))| self.backward_seq(d, xs, gs, &probs, i * per_seq))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

// ---------------------------------------------------------------- SwiGLU over a packed product

/// `silu(gate) * up` on packed rows `gu: [N, 2F]` (`[gate | up]`, the product
/// with the concatenated `gate_proj`/`up_proj` weights) -> `[N, F]`.
pub fn swiglu_packed(gu: &Tensor) -> CResult<Tensor> {
    let (_n, f2) = gu.dims2()?;
    if f2 % 2 != 0 {
        candle_core::bail!("swiglu_packed: odd width {f2}");
    }
    if fused_ok(gu) {
        gu.contiguous()?.apply_op1(SwiGluPacked { f: f2 / 2 })
    } else {
        swiglu(&gu.narrow(1, 0, f2 / 2)?, &gu.narrow(1, f2 / 2, f2 / 2)?)
    }
}

struct SwiGluPacked {
    f: usize,
}

impl CustomOp1 for SwiGluPacked {
    fn name(&self) -> &'static str {
        "edgelm-swiglu-packed"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s, l, "swiglu_packed")?;
        let f = self.f;
        let n = x.len() / (2 * f);
        let rows = rows_per_task(2 * f);
        let mut out = vec![0f32; n * f];
        out.par_chunks_mut(rows * f).zip(x.par_chunks(rows * 2 * f)).for_each(|(oc, xc)| {
            for (o, xr) in oc.chunks_exact_mut(f).zip(xc.chunks_exact(2 * f)) {
                let (a, b) = xr.split_at(f);
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = a / (1.0 + vecmath::exp(-a)) * b;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, f))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let f = self.f;
        let g = g.contiguous()?;
        let dx = {
            let ((xs, xl), (gs, gl)) = (x.storage_and_layout(), g.storage_and_layout());
            let xv = cpu_f32s(&xs, xl, "swiglu_packed bwd x")?;
            let gv = cpu_f32s(&gs, gl, "swiglu_packed bwd g")?;
            let rows = rows_per_task(2 * f);
            let mut dx = vec![0f32; xv.len()];
            let inputs = xv.par_chunks(rows * 2 * f).zip(gv.par_chunks(rows * f));
            dx.par_chunks_mut(rows * 2 * f).zip(inputs).for_each(|(dc, (xc, gc))| {
                for ((dr, xr), gr) in dc.chunks_exact_mut(2 * f).zip(xc.chunks_exact(2 * f)).zip(gc.chunks_exact(f)) {
                    let (a, b) = xr.split_at(f);
                    let (da, db) = dr.split_at_mut(f);
                    for i in 0..f {
                        // silu(a) = a·σ(a); silu'(a) = σ(a)·(1 + a·(1 - σ(a)))
                        let sig = 1.0 / (1.0 + vecmath::exp(-a[i]));
                        da[i] = gr[i] * b[i] * sig * (1.0 + a[i] * (1.0 - sig));
                        db[i] = gr[i] * a[i] * sig;
                    }
                }
            });
            dx
        };
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

// ---------------------------------------------------------------- cross-entropy

/// Per-row cross-entropy `-ln softmax(logits)[target]`: `logits [N, V]`, `targets [N]`
/// (u32) -> `[N]`.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    if fused_ok(logits) {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        lsm.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    }
}

/// Mean cross-entropy (the training loss).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    cross_entropy_rows(logits, targets)?.mean_all()
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "edgelm-cross-entropy"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "cross_entropy logits")?;
        let tg = u32s(s2, l2, "cross_entropy targets")?;
        let (n, v) = l1.shape().dims2()?;
        if tg.len() != n {
            candle_core::bail!("cross_entropy: {n} rows but {} targets", tg.len());
        }
        if let Some(&t) = tg.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross_entropy: target {t} out of vocabulary {v}");
        }
        let out: Vec<f32> =
            x.par_chunks_exact(v).zip(tg.par_iter()).map(|(r, &t)| vecmath::logsumexp(r) - r[t as usize]).collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    fn bwd(&self, x: &Tensor, t: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3(t, &g.contiguous()?, CrossEntropyBwd)?;
        Ok((Some(dx), None))
    }
}

/// `dlogits = (softmax(logits) - onehot(target)) * g[row]`.
struct CrossEntropyBwd;

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "edgelm-cross-entropy-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "cross_entropy bwd logits")?;
        let tg = u32s(s2, l2, "cross_entropy bwd targets")?;
        let g = f32s(s3, l3, "cross_entropy bwd grad")?;
        let (_n, v) = l1.shape().dims2()?;
        let mut out = vec![0f32; x.len()];
        let rows = x.par_chunks_exact(v).zip(tg.par_iter().zip(g.par_iter()));
        out.par_chunks_exact_mut(v).zip(rows).try_for_each(|(o, (r, (&t, &gr)))| {
            let k = gr / vecmath::exp_into(o, r, 1.0, vecmath::max(r));
            for oj in o.iter_mut() {
                *oj *= k;
            }
            match o.get_mut(t as usize) {
                Some(ot) => *ot -= gr,
                None => candle_core::bail!("cross_entropy: target {t} out of vocabulary {v}"),
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- output head + cross-entropy

/// Mean cross-entropy of the output head: `logits = h · wᵀ` (`h: [N, d]`,
/// `w: [V, d]`), `targets: [N]` (u32). The training loss of every model here.
///
/// Fused on CPU: the forward pass keeps the softmax it computes for the loss,
/// and the backward pass turns it into `dlogits` in place and multiplies it out
/// into `dh` and `dw`. Composed, the `[N, V]` logits (64 MiB for 16×256 tokens
/// over 4096) are exponentiated a second time backward and their gradient goes
/// through a zero-filled buffer and an addition in candle's gradient store.
pub fn head_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    if fused_ok(h) && fused_ok(w) && h.rank() == 2 {
        let targets = targets.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let op = HeadCrossEntropy { targets, probs: std::sync::Mutex::new(None) };
        h.contiguous()?.apply_op2(&w.contiguous()?, op)?.mean_all()
    } else {
        cross_entropy(&h.matmul(&w.t()?)?, &targets.flatten_all()?)
    }
}

struct HeadCrossEntropy {
    targets: Vec<u32>,
    /// `softmax(h · wᵀ)` `[N, V]` from the forward pass, taken by the backward.
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

impl HeadCrossEntropy {
    /// `softmax(h · wᵀ)` row by row and each row's `-ln p[target]`.
    fn probs_and_losses(&self, h: &Tensor, w: &Tensor) -> CResult<(Vec<f32>, Vec<f32>)> {
        let (n, v) = (h.dim(0)?, w.dim(0)?);
        if self.targets.len() != n {
            candle_core::bail!("cross_entropy: {n} rows but {} targets", self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross_entropy: target {t} out of vocabulary {v}");
        }
        let logits = h.matmul(&w.t()?)?;
        let (storage, layout) = logits.storage_and_layout();
        let x = match &*storage {
            candle_core::Storage::Cpu(cs) => f32s(cs, layout, "head logits")?,
            _ => candle_core::bail!("head_cross_entropy: CPU tensors expected"),
        };
        let mut probs = vec![0f32; n * v];
        let mut losses = vec![0f32; n];
        let rows = x.par_chunks_exact(v).zip(self.targets.par_iter());
        probs.par_chunks_exact_mut(v).zip(losses.par_iter_mut()).zip(rows).for_each(|((p, loss), (r, &t))| {
            let m = vecmath::max(r);
            let sum = vecmath::exp_into(p, r, 1.0, m);
            *loss = m + sum.ln() - r[t as usize];
            let inv = 1.0 / sum;
            for pj in p.iter_mut() {
                *pj *= inv;
            }
        });
        Ok((probs, losses))
    }
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "edgelm-head-cross-entropy"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        let (v, d2) = l2.shape().dims2()?;
        if d != d2 {
            candle_core::bail!("head_cross_entropy: h has {d} columns, w has {d2}");
        }
        let dev = candle_core::Device::Cpu;
        let h = Tensor::from_slice(f32s(s1, l1, "head h")?, (n, d), &dev)?;
        let w = Tensor::from_slice(f32s(s2, l2, "head w")?, (v, d), &dev)?;
        let (probs, losses) = self.probs_and_losses(&h, &w)?;
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(probs);
        }
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }
    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = (h.dim(0)?, w.dim(0)?);
        let stashed = self.probs.lock().ok().and_then(|mut slot| slot.take());
        let mut dl = match stashed {
            Some(p) if p.len() == n * v => p,
            // a second backward pass: recompute
            _ => self.probs_and_losses(&h.detach(), &w.detach())?.0,
        };
        let gv = g.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        // dlogits = (softmax - onehot(target)) · g[row]
        dl.par_chunks_exact_mut(v).zip(self.targets.par_iter().zip(gv.par_iter())).for_each(|(row, (&t, &gr))| {
            for pj in row.iter_mut() {
                *pj *= gr;
            }
            row[t as usize] -= gr;
        });
        let dl = Tensor::from_vec(dl, (n, v), h.device())?;
        let dh = dl.matmul(&w.detach())?;
        // a frozen head (an expansion over the base's vocabulary) needs no gradient
        let dw = if w.track_op() { Some(dl.t()?.matmul(&h.detach())?) } else { None };
        Ok((Some(dh), dw))
    }
}

// ---------------------------------------------------------------- linear

/// Tokens per weight-gradient task of [`linear`]: a fixed size, so the partial
/// sums, and the order they are added in, do not depend on the thread count.
const TOKENS_PER_TASK: usize = 512;

/// A projection `y = x · wᵀ` (`x: [N, d_in]`, `w: [d_out, d_in]` -> `[N, d_out]`).
///
/// Fused on CPU for its backward pass: the weight gradient `dw = gᵀ · x` is a
/// small `d_out × d_in` product over all N tokens, which gemm splits over its
/// few output tiles, one depth block after another. Here each task takes
/// [`TOKENS_PER_TASK`] tokens (the tasks run in parallel), and the partial sums
/// are added in task order afterwards. Composed, candle also zero-fills and
/// adds the gradient of the transposed weight and then of the weight.
pub fn linear(x: &Tensor, w: &Tensor) -> CResult<Tensor> {
    if fused_ok(x) && fused_ok(w) && x.rank() == 2 && w.rank() == 2 {
        x.apply_op2(w, Linear)
    } else {
        x.matmul(&w.t()?)
    }
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "edgelm-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (n, d_in) = l1.shape().dims2()?;
        let (d_out, d_in2) = l2.shape().dims2()?;
        if d_in != d_in2 {
            candle_core::bail!("linear: x has {d_in} columns, w has {d_in2}");
        }
        let y = s1.matmul(s2, (1, n, d_out, d_in), l1, &l2.transpose(0, 1)?)?;
        Ok((y, Shape::from((n, d_out))))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (x, g) = (x.detach(), g.contiguous()?);
        let dx = g.matmul(&w.detach())?;
        // a frozen weight (expansion's base blocks) needs no gradient
        let dw = if w.track_op() { Some(weight_grad(&x, &g)?) } else { None };
        Ok((Some(dx), dw))
    }
}

/// `gᵀ · x` (`g: [N, d_out]`, `x: [N, d_in]` -> `[d_out, d_in]`), summed over
/// token blocks of [`TOKENS_PER_TASK`] in parallel and added in block order.
fn weight_grad(x: &Tensor, g: &Tensor) -> CResult<Tensor> {
    let (n, d_in) = x.dims2()?;
    let d_out = g.dim(1)?;
    let starts: Vec<usize> = (0..n).step_by(TOKENS_PER_TASK).collect();
    let parts = starts
        .par_iter()
        .map(|&s| {
            let len = TOKENS_PER_TASK.min(n - s);
            g.narrow(0, s, len)?.t()?.matmul(&x.narrow(0, s, len)?)?.flatten_all()?.to_vec1::<f32>()
        })
        .collect::<CResult<Vec<Vec<f32>>>>()?;
    let mut parts = parts.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![0f32; d_out * d_in]);
    let rest: Vec<Vec<f32>> = parts.collect();
    dw.par_chunks_mut(ELEMS_PER_TASK).enumerate().for_each(|(ci, out)| {
        let lo = ci * ELEMS_PER_TASK;
        let hi = lo + out.len();
        for p in &rest {
            for (o, &v) in out.iter_mut().zip(&p[lo..hi]) {
                *o += v;
            }
        }
    });
    Tensor::from_vec(dw, (d_out, d_in), x.device())
}

// ---------------------------------------------------------------- SwiGLU

/// `silu(gate) * up`, element-wise (the feed-forward's gating). Fused on CPU:
/// composed, it is a silu and a product forward and about eight element-wise
/// passes backward, each with its own buffer.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    if fused_ok(gate) && gate.dims() == up.dims() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        gate.silu()? * up
    }
}

/// Elements handed to one rayon task by the element-wise ops.
const ELEMS_PER_TASK: usize = 65_536;

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "edgelm-swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let a = f32s(s1, l1, "swiglu gate")?;
        let b = f32s(s2, l2, "swiglu up")?;
        let mut out = vec![0f32; a.len()];
        let inputs = a.par_chunks(ELEMS_PER_TASK).zip(b.par_chunks(ELEMS_PER_TASK));
        out.par_chunks_mut(ELEMS_PER_TASK).zip(inputs).for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a / (1.0 + vecmath::exp(-a)) * b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = {
            let g = g.contiguous()?;
            let ((a_s, al), (b_s, bl), (gs, gl)) =
                (a.storage_and_layout(), b.storage_and_layout(), g.storage_and_layout());
            let av = cpu_f32s(&a_s, al, "swiglu bwd gate")?;
            let bv = cpu_f32s(&b_s, bl, "swiglu bwd up")?;
            let gv = cpu_f32s(&gs, gl, "swiglu bwd g")?;
            let (mut da, mut db) = (vec![0f32; av.len()], vec![0f32; av.len()]);
            let inputs =
                av.par_chunks(ELEMS_PER_TASK).zip(bv.par_chunks(ELEMS_PER_TASK)).zip(gv.par_chunks(ELEMS_PER_TASK));
            da.par_chunks_mut(ELEMS_PER_TASK).zip(db.par_chunks_mut(ELEMS_PER_TASK)).zip(inputs).for_each(
                |((da, db), ((a, b), g))| {
                    for i in 0..da.len() {
                        // silu(a) = a·σ(a); silu'(a) = σ(a)·(1 + a·(1 - σ(a)))
                        let sig = 1.0 / (1.0 + vecmath::exp(-a[i]));
                        da[i] = g[i] * b[i] * sig * (1.0 + a[i] * (1.0 - sig));
                        db[i] = g[i] * a[i] * sig;
                    }
                },
            );
            (da, db)
        };
        let da = Tensor::from_vec(da, a.shape(), a.device())?;
        let db = Tensor::from_vec(db, b.shape(), b.device())?;
        Ok((Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed, 9);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Compares fused (f32 CPU) vs composed (f64 CPU) value and gradient.
    fn check(f: impl Fn(&Tensor) -> Tensor, x: Tensor) {
        let v32 = Var::from_tensor(&x).unwrap();
        let y32 = f(v32.as_tensor());
        let w = randn(y32.dims(), 77);
        let g32 = (&y32 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let v64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let y64 = f(v64.as_tensor());
        let g64 = (&y64 * w.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let y64 = y64.to_dtype(DType::F32).unwrap();
        assert!(max_diff(&y32, &y64) < 1e-4, "value diff {}", max_diff(&y32, &y64));
        let a = g32.get(v32.as_tensor()).unwrap();
        let b = g64.get(v64.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
        assert!(max_diff(a, &b) < 1e-3, "grad diff {}", max_diff(a, &b));
    }

    #[test]
    fn fused_ops_match_composed() {
        let w = randn(&[8], 3);
        check(|x| rms_norm(x, &w.to_dtype(x.dtype()).unwrap(), 1e-5).unwrap(), randn(&[5, 8], 1));
        let rope = Rope::new(8, 16, 10000.0, &Device::Cpu).unwrap();
        check(|x| rope.apply(x).unwrap(), randn(&[2, 6, 3, 8], 2));
        check(|x| causal_softmax(x, 0.5).unwrap(), randn(&[2, 3, 12, 6], 4));
        let t = Tensor::new(&[1u32, 0, 6, 3], &Device::Cpu).unwrap();
        check(|x| cross_entropy_rows(x, &t).unwrap(), randn(&[4, 7], 5));
        let up = randn(&[5, 9], 6);
        check(|x| swiglu(x, &up.to_dtype(x.dtype()).unwrap()).unwrap(), randn(&[5, 9], 7));
        let gate = randn(&[5, 9], 8);
        check(|x| swiglu(&gate.to_dtype(x.dtype()).unwrap(), x).unwrap(), randn(&[5, 9], 9));
    }

    /// Shapes large enough that the rows are split over several rayon tasks
    /// (whose boundaries must not shift positions or lose partial sums).
    #[test]
    fn fused_ops_match_composed_across_task_boundaries() {
        let w = randn(&[8], 13);
        check(|x| rms_norm(x, &w.to_dtype(x.dtype()).unwrap(), 1e-5).unwrap(), randn(&[9000, 8], 14));
        let rope = Rope::new(8, 16, 10000.0, &Device::Cpu).unwrap();
        check(|x| rope.apply(x).unwrap(), randn(&[700, 16, 1, 8], 15));
        check(|x| causal_softmax(x, 0.7).unwrap(), randn(&[2, 1000, 6, 6], 16));
        let t: Vec<u32> = (0..3000u32).map(|i| i * 7 % 31).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        check(|x| cross_entropy_rows(x, &t).unwrap(), randn(&[3000, 31], 17));
        let up = randn(&[300, 500], 18);
        check(|x| swiglu(x, &up.to_dtype(x.dtype()).unwrap()).unwrap(), randn(&[300, 500], 19));
    }

    /// The fused head + loss against the composed `cross_entropy(h · wᵀ)` in f64:
    /// value and both gradients, over more rows than one rayon task.
    #[test]
    fn head_cross_entropy_matches_composed() {
        for (n, v, d) in [(5usize, 7usize, 4usize), (3000, 31, 8)] {
            let h = randn(&[n, d], 31);
            let w = randn(&[v, d], 32);
            let t: Vec<u32> = (0..n as u32).map(|i| i * 5 % v as u32).collect();
            let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
            let (h32, w32) = (Var::from_tensor(&h).unwrap(), Var::from_tensor(&w).unwrap());
            let l32 = head_cross_entropy(h32.as_tensor(), w32.as_tensor(), &t).unwrap();
            let g32 = l32.backward().unwrap();
            let h64 = Var::from_tensor(&h.to_dtype(DType::F64).unwrap()).unwrap();
            let w64 = Var::from_tensor(&w.to_dtype(DType::F64).unwrap()).unwrap();
            let l64 = head_cross_entropy(h64.as_tensor(), w64.as_tensor(), &t).unwrap();
            let g64 = l64.backward().unwrap();
            let dv = (l32.to_scalar::<f32>().unwrap() as f64 - l64.to_scalar::<f64>().unwrap()).abs();
            assert!(dv < 1e-5, "loss diff {dv} (n={n})");
            for (a, b) in [(h32.as_tensor(), h64.as_tensor()), (w32.as_tensor(), w64.as_tensor())] {
                let ga = g32.get(a).unwrap();
                let gb = g64.get(b).unwrap().to_dtype(DType::F32).unwrap();
                assert!(max_diff(ga, &gb) < 1e-5, "grad diff {} (n={n})", max_diff(ga, &gb));
            }
        }
        // a frozen head gets no gradient, the hidden states still do
        let h = Var::from_tensor(&randn(&[4, 3], 33)).unwrap();
        let w = randn(&[6, 3], 34);
        let t = Tensor::new(&[0u32, 5, 2, 1], &Device::Cpu).unwrap();
        let g = head_cross_entropy(h.as_tensor(), &w, &t).unwrap().backward().unwrap();
        assert!(g.get(h.as_tensor()).is_some() && g.get(&w).is_none());
        let bad = Tensor::new(&[0u32, 6, 2, 1], &Device::Cpu).unwrap();
        assert!(head_cross_entropy(h.as_tensor(), &w, &bad).is_err());
    }

    /// The fused projection against the composed `x · wᵀ` in f64: value and both
    /// gradients, with token counts under one, at and over several weight-gradient
    /// tasks (the last one partial).
    #[test]
    fn linear_matches_composed() {
        for (n, d_in, d_out) in [(5usize, 4usize, 3usize), (512, 8, 6), (1500, 12, 7)] {
            let x = randn(&[n, d_in], 41);
            let w = randn(&[d_out, d_in], 42);
            let up = randn(&[n, d_out], 43);
            let (x32, w32) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let y32 = linear(x32.as_tensor(), w32.as_tensor()).unwrap();
            let g32 = (&y32 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let x64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
            let w64 = Var::from_tensor(&w.to_dtype(DType::F64).unwrap()).unwrap();
            let y64 = linear(x64.as_tensor(), w64.as_tensor()).unwrap();
            let up64 = up.to_dtype(DType::F64).unwrap();
            let g64 = (&y64 * &up64).unwrap().sum_all().unwrap().backward().unwrap();
            let dv = max_diff(&y32, &y64.to_dtype(DType::F32).unwrap());
            assert!(dv < 1e-4, "value diff {dv} (n={n})");
            for (a, b) in [(x32.as_tensor(), x64.as_tensor()), (w32.as_tensor(), w64.as_tensor())] {
                let ga = g32.get(a).unwrap();
                let gb = g64.get(b).unwrap().to_dtype(DType::F32).unwrap();
                // the weight gradient sums n products: relative to its size
                let scale = gb.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                assert!(max_diff(ga, &gb) < 1e-5 * scale, "grad diff {} (n={n})", max_diff(ga, &gb));
            }
        }
        // a frozen weight gets no gradient, the input still does
        let x = Var::from_tensor(&randn(&[700, 5], 44)).unwrap();
        let w = randn(&[3, 5], 45);
        let g = linear(x.as_tensor(), &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some() && g.get(&w).is_none());
        assert!(linear(x.as_tensor(), &randn(&[3, 4], 46)).is_err());
    }

    /// The fused attention against the composed `softmax_causal(q·kᵀ·scale)·v` in
    /// f64: value and the gradients of q, k and v, over several batches with
    /// grouped query heads (R = 2·T) and a batch count above the thread count.
    #[test]
    fn causal_attention_matches_composed() {
        for (b, kv, rep, t, hd) in [(1usize, 1usize, 1usize, 5usize, 4usize), (3, 2, 2, 7, 6)] {
            let q = randn(&[b, kv, rep * t, hd], 51);
            let k = randn(&[b, kv, t, hd], 52);
            let v = randn(&[b, kv, t, hd], 53);
            let up = randn(&[b, kv, rep * t, hd], 54);
            let run = |dt: DType| {
                let vars: Vec<Var> =
                    [&q, &k, &v].iter().map(|x| Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap()).collect();
                let o = causal_attention(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 0.4).unwrap();
                let grads = (&o * up.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let gs: Vec<Tensor> =
                    vars.iter().map(|x| grads.get(x.as_tensor()).unwrap().to_dtype(DType::F32).unwrap()).collect();
                (o.to_dtype(DType::F32).unwrap(), gs)
            };
            let (o32, g32) = run(DType::F32);
            let (o64, g64) = run(DType::F64);
            assert!(max_diff(&o32, &o64) < 1e-5, "value diff {}", max_diff(&o32, &o64));
            for (a, c) in g32.iter().zip(&g64) {
                assert!(max_diff(a, c) < 1e-4, "grad diff {}", max_diff(a, c));
            }
        }
        // a second backward pass over the same graph recomputes the probabilities
        let q = Var::from_tensor(&randn(&[2, 1, 8, 4], 58)).unwrap();
        let (k, v) = (randn(&[2, 1, 4, 4], 59), randn(&[2, 1, 4, 4], 60));
        let loss = causal_attention(q.as_tensor(), &k, &v, 0.5).unwrap().sqr().unwrap().sum_all().unwrap();
        let first = loss.backward().unwrap().get(q.as_tensor()).unwrap().clone();
        let second = loss.backward().unwrap().get(q.as_tensor()).unwrap().clone();
        assert_eq!(max_diff(&first, &second), 0.0);
        let q = randn(&[1, 1, 6, 4], 55);
        assert!(causal_attention(&q, &randn(&[1, 1, 4, 4], 56), &randn(&[1, 1, 4, 4], 57), 1.0).is_err());
    }

    /// The fused attention over packed projections against the composed path
    /// (narrow, RoPE, transposes, full causal products) in f64: value and the
    /// packed gradient. Lengths under one query block, at several blocks with a
    /// partial last one, grouped and ungrouped heads, more sequences than threads.
    #[test]
    fn qkv_attention_matches_composed() {
        for (b, t, nh, nkv, hd) in [(1usize, 5usize, 1usize, 1usize, 4usize), (3, 70, 4, 2, 6), (2, 64, 3, 3, 8)] {
            let s = AttnShape { b, t, nh, nkv, hd };
            let rope = Rope::new(hd, 80, 10000.0, &Device::Cpu).unwrap();
            check(|x| qkv_attention(x, &rope, s).unwrap(), randn(&[b * t, (nh + 2 * nkv) * hd], 61 + t as u64));
        }
        // a second backward pass over the same graph recomputes the probabilities
        let s = AttnShape { b: 2, t: 40, nh: 2, nkv: 1, hd: 4 };
        let rope = Rope::new(4, 40, 10000.0, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&randn(&[80, 16], 62)).unwrap();
        let loss = qkv_attention(x.as_tensor(), &rope, s).unwrap().sqr().unwrap().sum_all().unwrap();
        let first = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let second = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        assert_eq!(max_diff(&first, &second), 0.0);
        // shapes that do not fit are errors
        assert!(qkv_attention(&randn(&[80, 15], 63), &rope, s).is_err());
        assert!(qkv_attention(&randn(&[80, 16], 63), &rope, AttnShape { t: 41, b: 1, ..s }).is_err());
        assert!(qkv_attention(&randn(&[80, 16], 63), &rope, AttnShape { nh: 3, nkv: 2, hd: 2, ..s }).is_err());
    }

    #[test]
    fn swiglu_packed_matches_composed() {
        check(|x| swiglu_packed(x).unwrap(), randn(&[5, 18], 64));
        check(|x| swiglu_packed(x).unwrap(), randn(&[300, 1000], 65));
        assert!(swiglu_packed(&randn(&[3, 7], 66)).is_err());
    }

    /// RMSNorm's weight gradient (fused f32 vs composed f64) over `rows × d`; with
    /// many rows the per-task partial sums are added across rayon tasks.
    fn check_rms_norm_weight_grad(rows: usize, d: usize, seed: u64) {
        let x = randn(&[rows, d], seed);
        let w32 = Var::from_tensor(&randn(&[d], seed + 1)).unwrap();
        let w64 = Var::from_tensor(&w32.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let g32 = rms_norm(&x, &w32, 1e-5).unwrap().sum_all().unwrap().backward().unwrap();
        let g64 =
            rms_norm(&x.to_dtype(DType::F64).unwrap(), &w64, 1e-5).unwrap().sum_all().unwrap().backward().unwrap();
        let a = g32.get(&w32).unwrap();
        let b = g64.get(&w64).unwrap().to_dtype(DType::F32).unwrap();
        // sums over many rows in f32: relative to the size of the sums
        let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert!(max_diff(a, &b) < 1e-4 * scale, "{rows}×{d}: {} vs scale {scale}", max_diff(a, &b));
    }

    #[test]
    fn rms_norm_weight_grad() {
        check_rms_norm_weight_grad(4, 6, 11);
        check_rms_norm_weight_grad(9000, 8, 21);
    }
}
