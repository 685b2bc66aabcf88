//! The kernels `edgelm eval` spends its time in besides the products, at the
//! shipped base's shapes (vocab 4 096, heads of 32, 2 KV heads of 64
//! columns, SwiGLU 352, 128 positions seen): the sum of exponentials and
//! max of bits per byte, softmax, SwiGLU, q8 quantization, attention scores
//! and values (one head, and the two heads of a KV group through
//! `attn_values2`), on every kernel table this CPU runs, side by side.
//!
//! `cargo bench -p edgelm-benches --bench eval_kernels`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgelm_runtime::kernels::{self, Kernels};
use std::hint::black_box;
use std::time::Duration;

/// Deterministic values in `[-spread/2, spread/2)`.
fn values(n: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}

fn tables() -> Vec<&'static Kernels> {
    kernels::available().filter(|k| k.name != "reference").collect()
}

fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
    elements: usize,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elements as u64));
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(30);
    g
}

/// The batched q8 products of a 64-token block at the shipped base's shapes
/// (the head's 4 096 rows, the FFN's 352 × 128 and 128 × 352, q's 128 ×
/// 128, k/v's 64 × 128), throughput in multiply-adds.
fn bench_matmul(c: &mut Criterion) {
    let n = 64;
    for (rows, cols) in [(4096, 128), (352, 128), (128, 352), (128, 128), (64, 128)] {
        let wq: Vec<i8> = values(rows * cols, 11, 254.0).iter().map(|&v| v as i8).collect();
        let ws: Vec<u16> =
            (0..rows * cols / 32).map(|i| half::f16::from_f32(0.01 + (i % 7) as f32 * 1e-3).to_bits()).collect();
        let xq: Vec<i8> = values(n * cols, 12, 254.0).iter().map(|&v| v as i8).collect();
        let xs: Vec<f32> = values(n * cols / 32, 13, 0.02).iter().map(|v| v.abs() + 0.001).collect();
        let mut out = vec![0f32; n * rows];
        let mut g = group(c, &format!("matmul_q8/{rows}x{cols}x{n}"), rows * cols * n);
        for k in tables() {
            g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                b.iter(|| {
                    let mut tile = kernels::TileOut::new(&mut out, rows, rows, n);
                    (k.matmul_q8)(&mut tile, black_box(&wq), &ws, &xq, &xs)
                })
            });
        }
        g.finish();
    }
}

fn bench(c: &mut Criterion) {
    let logits = values(4096, 1, 20.0);
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut g = group(c, "sum_exp/4096", 4096);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| b.iter(|| (k.sum_exp)(black_box(&logits), max)));
    }
    g.finish();
    let mut g = group(c, "max/4096", 4096);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| b.iter(|| (k.max)(black_box(&logits))));
    }
    g.finish();

    // 128 positions, and 127 (a tail of seven past the AVX2 kernel's vectors)
    for n in [128, 127] {
        let scores = values(n, 2, 8.0);
        let mut att = scores.clone();
        let mut g = group(c, &format!("softmax/{n}"), n);
        for k in tables() {
            g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                b.iter(|| {
                    att.copy_from_slice(&scores);
                    (k.softmax)(black_box(&mut att))
                })
            });
        }
        g.finish();
    }

    let (gate, up) = (values(352, 3, 6.0), values(352, 4, 2.0));
    let mut h = gate.clone();
    let mut g = group(c, "swiglu/352", 352);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
            b.iter(|| {
                h.copy_from_slice(&gate);
                (k.swiglu)(black_box(&mut h), &up)
            })
        });
    }
    g.finish();

    let x = values(352, 5, 4.0);
    let (mut xq, mut xs) = (vec![0i8; 352], vec![0f32; 11]);
    let mut g = group(c, "quantize_q8/352", 352);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
            b.iter(|| (k.quantize_q8)(black_box(&x), &mut xq, &mut xs))
        });
    }
    g.finish();

    // one layer's cache of 128 positions: keys and values of 2 KV heads × 32 at stride 64
    let (hd, stride, n) = (32, 64, 128);
    let cache = values(n * stride, 6, 2.0);
    let q = values(2 * hd, 7, 2.0);
    let weights: Vec<f32> = values(n, 8, 1.0).iter().map(|v| v.abs() / n as f32).collect();
    let mut out = vec![0f32; 2 * hd];
    let mut s = vec![0f32; n];
    // a KV group's two heads: their scores as two `attn_scores` calls, then
    // from the keys stored by dimension (`Kernels::scores_by_dim`)
    let mut g = group(c, "attn_scores/2x128x32", 2 * n);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
            b.iter(|| {
                (k.attn_scores)(&mut s, black_box(&q[..hd]), &cache, stride, 0.18);
                (k.attn_scores)(&mut s, black_box(&q[hd..]), &cache, stride, 0.18)
            })
        });
    }
    g.finish();
    // the same keys stored by dimension, as a block's attention reads them
    let ld = edgelm_runtime::kernels::keys_by_dim_ld(n);
    let mut kt = vec![0f32; hd * ld];
    for (t, key) in cache.chunks(stride).enumerate() {
        for (d, &x) in key[..hd].iter().enumerate() {
            kt[d * ld + t] = x;
        }
    }
    let mut s2 = vec![0f32; n];
    let mut g = group(c, "attn_scores_by_dim/2x128x32", 2 * n);
    for k in tables() {
        if let Some(by) = k.scores_by_dim {
            g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                b.iter(|| (by.two)([&mut s, &mut s2], [black_box(&q[..hd]), &q[hd..]], &kt, ld, 0.18))
            });
        }
    }
    g.finish();
    // a head alone (the 15M shape's heads, one KV head each)
    let mut g = group(c, "attn_scores_by_dim/1x128x32", n);
    for k in tables() {
        if let Some(by) = k.scores_by_dim {
            g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                b.iter(|| (by.one)(&mut s, black_box(&q[..hd]), &kt, ld, 0.18))
            });
        }
    }
    g.finish();
    let mut g = group(c, "attn_values/128x32", n);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
            b.iter(|| (k.attn_values)(&mut out[..hd], black_box(&weights), &cache, stride))
        });
    }
    g.finish();
    let mut g = group(c, "attn_values2/2x128x32", 2 * n);
    for k in tables() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
            b.iter(|| {
                let (o0, o1) = out.split_at_mut(hd);
                (k.attn_values2)([o0, o1], [black_box(&weights), &weights], &cache, stride)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_matmul);
criterion_main!(benches);
