//! q8 and q4 matrix-vector products at the shapes of a 15M-parameter Llama
//! (dim 288, ffn 768, vocab 32000): edgelm's reference and SIMD kernels
//! (one thread, and rows split over a 2-thread pool) side by side with
//! candle-core's Q8_0 / Q4_0 `QMatMul`, same f32 weights, same run.
//!
//! `CANDLE_NUM_THREADS=1 RAYON_NUM_THREADS=1 cargo bench -p edgelm-benches --bench matvec`
//! (candle reads its thread count at first use: run again with
//! `CANDLE_NUM_THREADS=2` for its 2-thread figures). Every timed edgelm
//! call includes quantizing the activation, as candle's does.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgelm_runtime::kernels::{self, matvec_q4_split, matvec_q8_split, Kernels, REFERENCE};
use edgelm_runtime::threads::Pool;
use std::hint::black_box;
use std::time::Duration;

const SHAPES: &[(usize, usize)] = &[(288, 288), (768, 288), (288, 768), (32000, 288)];

struct Q8 {
    qs: Vec<i8>,
    scales: Vec<u16>,
}

/// Per-row groups of 32, scale = amax/127 stored as f16 (as the .edgelm writer does).
fn quantize_weights(w: &[f32]) -> Q8 {
    let mut qs = vec![0i8; w.len()];
    let mut scales = Vec::with_capacity(w.len() / 32);
    for (g, q) in w.chunks_exact(32).zip(qs.chunks_exact_mut(32)) {
        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0);
        let id = if d.to_f32() != 0.0 { 1.0 / d.to_f32() } else { 0.0 };
        for (qi, &v) in q.iter_mut().zip(g) {
            *qi = (v * id).round().clamp(-127.0, 127.0) as i8;
        }
        scales.push(d.to_bits());
    }
    Q8 { qs, scales }
}

fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn edgelm_call(k: &Kernels, pool: Option<&Pool>, w: &Q8, x: &[f32], xq: &mut [i8], xs: &mut [f32], out: &mut [f32]) {
    (k.quantize_q8)(x, xq, xs);
    match pool {
        Some(p) => matvec_q8_split(k, p, out, &w.qs, &w.scales, xq, xs),
        None => (k.matvec_q8)(out, &w.qs, &w.scales, xq, xs),
    }
}

/// q4 weights (packed nibbles, f16 scales) as the .edgelm writer makes them.
struct Q4 {
    qs: Vec<u8>,
    scales: Vec<u16>,
}

fn edgelm_q4_call(k: &Kernels, pool: Option<&Pool>, w: &Q4, x: &[f32], xq: &mut [i8], xs: &mut [f32], out: &mut [f32]) {
    (k.quantize_q8)(x, xq, xs);
    match pool {
        Some(p) => matvec_q4_split(k, p, out, &w.qs, &w.scales, xq, xs),
        None => (k.matvec_q4)(out, &w.qs, &w.scales, xq, xs),
    }
}

fn bench(c: &mut Criterion) {
    let simd = kernels::detected();
    let pool = Pool::new(2);
    let candle_threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "default".into());
    eprintln!("edgelm SIMD path: {}; candle threads: {candle_threads}", simd.name);
    for &(rows, cols) in SHAPES {
        let wf = weights(rows * cols, rows as u64 * 31 + cols as u64);
        let x = weights(cols, 7);
        let q8 = quantize_weights(&wf);
        let (mut xq, mut xs, mut out) = (vec![0i8; cols], vec![0f32; cols / 32], vec![0f32; rows]);

        let dev = Device::Cpu;
        let wt = Tensor::from_vec(wf.clone(), (rows, cols), &dev).unwrap();
        let qm = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap()).unwrap();
        let xt = Tensor::from_vec(x.clone(), (1, cols), &dev).unwrap();

        // sanity: edgelm and candle agree
        edgelm_call(simd, None, &q8, &x, &mut xq, &mut xs, &mut out);
        let cy: Vec<f32> = qm.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mag = out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = out.iter().zip(&cy).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 2e-2 * mag, "{rows}x{cols}: edgelm and candle differ by {worst} (max {mag})");

        let mut g = c.benchmark_group(format!("matvec_q8/{rows}x{cols}"));
        g.throughput(Throughput::Bytes((rows * cols + rows * cols / 32 * 2) as u64));
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
        if rows * cols <= 300_000 {
            g.bench_function("edgelm-reference", |b| {
                b.iter(|| edgelm_call(&REFERENCE, None, &q8, black_box(&x), &mut xq, &mut xs, &mut out))
            });
        }
        // interleaved: ours, candle, ours (2 threads), candle again
        g.bench_function(BenchmarkId::new("edgelm", format!("{}-1t", simd.name)), |b| {
            b.iter(|| edgelm_call(simd, None, &q8, black_box(&x), &mut xq, &mut xs, &mut out))
        });
        g.bench_function(BenchmarkId::new("candle-Q8_0", format!("{candle_threads}t")), |b| {
            b.iter(|| qm.forward(black_box(&xt)).unwrap())
        });
        g.bench_function(BenchmarkId::new("edgelm", format!("{}-2t", simd.name)), |b| {
            b.iter(|| edgelm_call(simd, Some(&pool), &q8, black_box(&x), &mut xq, &mut xs, &mut out))
        });
        g.finish();

        // q4 (Q4_0 semantics) against candle's Q4_0, same f32 weights
        let (qs, scales) = edgelm_runtime::format::quantize_q4(&wf);
        let q4 = Q4 { qs, scales };
        let qm4 = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q4_0).unwrap()).unwrap();
        edgelm_q4_call(simd, None, &q4, &x, &mut xq, &mut xs, &mut out);
        let cy: Vec<f32> = qm4.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mag = out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = out.iter().zip(&cy).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 5e-2 * mag, "{rows}x{cols}: edgelm q4 and candle Q4_0 differ by {worst} (max {mag})");
        let mut g = c.benchmark_group(format!("matvec_q4/{rows}x{cols}"));
        g.throughput(Throughput::Bytes((rows * cols / 2 + rows * cols / 32 * 2) as u64));
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
        g.bench_function(BenchmarkId::new("edgelm", format!("{}-1t", simd.name)), |b| {
            b.iter(|| edgelm_q4_call(simd, None, &q4, black_box(&x), &mut xq, &mut xs, &mut out))
        });
        g.bench_function(BenchmarkId::new("candle-Q4_0", format!("{candle_threads}t")), |b| {
            b.iter(|| qm4.forward(black_box(&xt)).unwrap())
        });
        g.bench_function(BenchmarkId::new("edgelm", format!("{}-2t", simd.name)), |b| {
            b.iter(|| edgelm_q4_call(simd, Some(&pool), &q4, black_box(&x), &mut xq, &mut xs, &mut out))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
