//! Decode and prompt speed, edgelm vs llama.cpp, same model, alternately in
//! one run.
//!
//! llama.cpp runs in-process through the crate `llama-cpp-2` (vendored
//! llama.cpp, built for this CPU: `RUSTFLAGS="-C target-cpu=native"`, as its
//! users build it); edgelm runs as the `edgelm bench` CLI from a normal build
//! (no target-cpu=native: run-time dispatch), so the native flags of this
//! binary never reach edgelm. Decode: 8-token prompt, then 128 greedy tokens.
//! Prompt processing: a 64- and a 256-token prompt in one call each, the logits
//! of the last token only (llama-bench's `pp`; `edgelm bench --gen-tokens 0`).
//! Both sides get the same token ids; median of 5 runs per call, `rounds`
//! alternating rounds at 1 and 2 threads.
//!
//! ```text
//! cargo run --release -p edgelm-testkit --example write_synthetic -- stories15m q8 /tmp/s15m-q8.edgelm
//! cargo run --release -p edgelm-convert -- export-gguf /tmp/s15m-q8.edgelm -o /tmp/s15m-q8.gguf
//! cargo build --release -p edgelm-cli
//! RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=target-llama \
//!   cargo run --release -p edgelm-benches --features llama-cpp --bin llama_decode -- \
//!   /tmp/s15m-q8.gguf /tmp/s15m-q8.edgelm target/release/edgelm [rounds]
//! ```

use std::num::NonZeroU32;
use std::process::Command;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

const PROMPT: usize = 8;
/// Prompt lengths for prompt processing (the issue's pp64 and pp256).
const PP: [usize; 2] = [64, 256];
const GEN: usize = 128;
const RUNS: usize = 5;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn argmax(x: &[f32]) -> i32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as i32
}

/// A 256-token context on `threads` threads (prompt and decode alike).
fn context<'m>(backend: &LlamaBackend, model: &'m LlamaModel, threads: i32) -> LlamaContext<'m> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(256))
        .with_n_batch(256)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.new_context(backend, params).expect("llama.cpp context")
}

/// Median decode tokens/s of `RUNS` runs on a fresh context with `threads`.
fn llama(backend: &LlamaBackend, model: &LlamaModel, threads: i32) -> f64 {
    let mut ctx = context(backend, model, threads);
    let vocab = model.n_vocab();
    let mut batch = LlamaBatch::new(256, 1);
    let mut tps = Vec::new();
    for _ in 0..RUNS {
        ctx.clear_kv_cache();
        batch.clear();
        for i in 0..PROMPT {
            // the token ids `edgelm bench` feeds
            let t = ((1 + i as u64 * 7919) % vocab as u64) as i32;
            batch.add(LlamaToken::new(t), i as i32, &[0], i + 1 == PROMPT).unwrap();
        }
        ctx.decode(&mut batch).expect("prompt decode");
        let mut last = argmax(ctx.get_logits_ith(batch.n_tokens() - 1));
        let t0 = Instant::now();
        for p in 0..GEN {
            batch.clear();
            batch.add(LlamaToken::new(last), (PROMPT + p) as i32, &[0], true).unwrap();
            ctx.decode(&mut batch).expect("decode");
            last = argmax(ctx.get_logits_ith(0));
        }
        tps.push(GEN as f64 / t0.elapsed().as_secs_f64());
    }
    median(&mut tps)
}

/// Median prompt tokens/s of `RUNS` runs: one batch of `n` prompt tokens.
fn llama_pp(backend: &LlamaBackend, model: &LlamaModel, threads: i32, n: usize) -> f64 {
    let mut ctx = context(backend, model, threads);
    let vocab = model.n_vocab();
    let mut batch = LlamaBatch::new(256, 1);
    let mut tps = Vec::new();
    for _ in 0..RUNS {
        ctx.clear_kv_cache();
        batch.clear();
        for i in 0..n {
            let t = ((1 + i as u64 * 7919) % vocab as u64) as i32;
            batch.add(LlamaToken::new(t), i as i32, &[0], i + 1 == n).unwrap();
        }
        let t0 = Instant::now();
        ctx.decode(&mut batch).expect("prompt decode");
        tps.push(n as f64 / t0.elapsed().as_secs_f64());
        argmax(ctx.get_logits_ith(batch.n_tokens() - 1));
    }
    median(&mut tps)
}

/// A field of `edgelm bench --json` (median of `RUNS`) for these arguments.
fn edgelm_bench(bin: &str, model: &str, threads: usize, prompt: usize, gen: usize, key: &str) -> f64 {
    let out = Command::new(bin)
        .args(["bench", "--model", model, "--threads", &threads.to_string(), "--runs", &RUNS.to_string()])
        .args(["--prompt-tokens", &prompt.to_string(), "--gen-tokens", &gen.to_string(), "--json"])
        .output()
        .expect("run edgelm");
    assert!(out.status.success(), "edgelm bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let key = format!("\"{key}\":");
    let at = s.find(&key).expect("the field in edgelm's JSON") + key.len();
    s[at..].split([',', '}']).next().unwrap().trim().parse().expect("a number")
}

/// `edgelm bench` (median of `RUNS`), decode tokens/s.
fn edgelm(bin: &str, model: &str, threads: usize) -> f64 {
    edgelm_bench(bin, model, threads, PROMPT, GEN, "decode_tokens_per_s")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (gguf, model, bin) = match args.as_slice() {
        [g, m, b, ..] => (g.as_str(), m.as_str(), b.as_str()),
        _ => panic!("usage: llama_decode MODEL.gguf MODEL.edgelm path/to/edgelm [rounds]"),
    };
    let rounds: usize = args.get(3).map_or(5, |r| r.parse().expect("rounds"));
    let mut backend = LlamaBackend::init().expect("llama backend");
    backend.void_logs();
    let lmodel = LlamaModel::load_from_file(&backend, gguf, &LlamaModelParams::default()).expect("load GGUF");
    // rows: decode, then each prompt length; per row and thread count, [llama.cpp, edgelm]
    let names: Vec<String> = std::iter::once("decode".to_string()).chain(PP.iter().map(|n| format!("pp{n}"))).collect();
    let mut results = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; names.len()];
    for round in 0..rounds {
        for (ti, threads) in [1usize, 2].into_iter().enumerate() {
            for (ri, name) in names.iter().enumerate() {
                let (l, e) = match ri {
                    0 => (llama(&backend, &lmodel, threads as i32), edgelm(bin, model, threads)),
                    _ => {
                        let n = PP[ri - 1];
                        let l = llama_pp(&backend, &lmodel, threads as i32, n);
                        (l, edgelm_bench(bin, model, threads, n, 0, "prompt_tokens_per_s"))
                    }
                };
                println!(
                    "round {round} threads {threads} {name}: llama.cpp {l:.1} tok/s, edgelm {e:.1} tok/s, ratio {:.2}",
                    e / l
                );
                results[ri][ti][0].push(l);
                results[ri][ti][1].push(e);
            }
        }
    }
    println!("\nmeasure | threads | llama.cpp (median) | edgelm (median) | ratio");
    for (ri, name) in names.iter().enumerate() {
        for (ti, threads) in [1, 2].into_iter().enumerate() {
            let l = median(&mut results[ri][ti][0]);
            let e = median(&mut results[ri][ti][1]);
            println!("{name} | {threads} | {l:.1} | {e:.1} | {:.2}", e / l);
        }
    }
}
