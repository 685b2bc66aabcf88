#!/usr/bin/env python3
"""Training throughput (tokens/s) of edgelm-train vs the same architecture in PyTorch
on CPU (eager, and compiled with torch.compile), same batch, sequence length and
thread count, measured alternately in one run.

Architecture (docs/CHECKPOINT.md): Llama decoder, RMSNorm, RoPE (rotate-half), GQA,
SwiGLU, tied output head; AdamW (betas 0.9/0.95, wd 0.1 on matrices), grad clip 1.0,
random token windows. Every side times `--steps` optimiser steps after `--warmup`
untimed ones (torch.compile compiles during the warm-up). Each measurement runs in
a process of its own, with no environment tuning (edgelm-train as a user runs it),
and `--rounds` rounds alternate edgelm / eager / compiled; the table shows medians.

Usage:
  pip install torch        # torch.compile also needs a C++ compiler (gcc)
  cargo build --release --workspace --bin edgelm-train
  python3 benches/pytorch_train_throughput.py [--threads 1 2] [--steps 5] [--rounds 3]
Prints a Markdown table (and JSON lines with --json).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

CONFIGS = {
    # name: (dim, layers, heads, kv_heads, ffn, vocab)
    "~1M": (128, 3, 4, 2, 352, 4096),
    "~4M": (256, 4, 8, 4, 704, 4096),
}


def n_params(dim, layers, heads, kv, ffn, vocab):
    hd = dim // heads
    per = 2 * dim * heads * hd + 2 * dim * kv * hd + 3 * dim * ffn + 2 * dim
    return vocab * dim + layers * per + dim


def torch_tokens_per_s(cfg, batch, seq, steps, warmup, threads, compiled):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dim, layers, heads, kv, ffn, vocab = cfg
    hd = dim // heads

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    inv = 10000.0 ** (-torch.arange(0, hd // 2, dtype=torch.float32) * 2 / hd)
    ang = torch.arange(seq, dtype=torch.float32)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):  # [B, H, T, hd], rotate-half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = RMSNorm(), RMSNorm()
            self.q = nn.Linear(dim, heads * hd, bias=False)
            self.k = nn.Linear(dim, kv * hd, bias=False)
            self.v = nn.Linear(dim, kv * hd, bias=False)
            self.o = nn.Linear(heads * hd, dim, bias=False)
            self.g = nn.Linear(dim, ffn, bias=False)
            self.u = nn.Linear(dim, ffn, bias=False)
            self.d = nn.Linear(ffn, dim, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.n1(x)
            q = rope(self.q(h).view(b, t, heads, hd).transpose(1, 2))
            k = rope(self.k(h).view(b, t, kv, hd).transpose(1, 2))
            v = self.v(h).view(b, t, kv, hd).transpose(1, 2)
            k = k.repeat_interleave(heads // kv, dim=1)
            v = v.repeat_interleave(heads // kv, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, heads * hd))
            h = self.n2(x)
            return x + self.d(F.silu(self.g(h)) * self.u(h))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.norm = RMSNorm()

        def forward(self, ids):
            x = self.emb(ids)
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x) @ self.emb.weight.t()

    m = Model()
    fwd = torch.compile(m) if compiled else m
    decay = [p for p in m.parameters() if p.dim() >= 2]
    other = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), foreach=True,
    )
    ids = torch.randint(0, vocab, (batch, seq + 1))

    def step():
        logits = fwd(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq / (time.perf_counter() - t0)


def edgelm_tokens_per_s(binary, cfg, batch, seq, steps, warmup, threads):
    dim, layers, heads, kv, ffn, vocab = cfg
    cmd = [binary, "--threads", str(threads), "bench", "--dim", str(dim), "--layers", str(layers),
           "--heads", str(heads), "--kv-heads", str(kv), "--ffn", str(ffn), "--vocab", str(vocab),
           "--seq-len", str(seq), "--batch", str(batch), "--steps", str(steps), "--warmup-steps", str(warmup)]
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=1800)
    if r.returncode == 2 and "--json" in r.stderr:
        # binaries before the time split printed JSON without the flag
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    r.check_returncode()
    return json.loads(r.stdout)["tokens_per_s"]


def torch_in_subprocess(name, batch, seq, steps, warmup, threads, compiled):
    """One PyTorch measurement in a fresh interpreter (threads and compile caches
    of one measurement do not leak into the next)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--batch", str(batch), "--seq", str(seq),
         "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads)]
        + (["--compiled"] if compiled else []),
        check=True, capture_output=True, text=True, timeout=1800,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..",
                    os.environ.get("CARGO_TARGET_DIR", "target"), "release", "edgelm-train"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        import torch
        tps = torch_tokens_per_s(CONFIGS[a.worker], a.batch, a.seq, a.steps, a.warmup, a.threads[0], a.compiled)
        print(json.dumps({"tokens_per_s": tps, "torch_version": torch.__version__}))
        return 0

    rows = []
    version = "?"
    for name in a.configs:
        cfg = CONFIGS[name]
        for threads in a.threads:
            e, te, tc = [], [], []
            for _ in range(a.rounds):
                e.append(edgelm_tokens_per_s(a.binary, cfg, a.batch, a.seq, a.steps, a.warmup, threads))
                r = torch_in_subprocess(name, a.batch, a.seq, a.steps, a.warmup, threads, False)
                te.append(r["tokens_per_s"])
                version = r["torch_version"]
                tc.append(torch_in_subprocess(name, a.batch, a.seq, a.steps, a.warmup, threads, True)["tokens_per_s"])
            rows.append(dict(config=name, params=n_params(*cfg), dim=cfg[0], layers=cfg[1], heads=cfg[2],
                             kv_heads=cfg[3], ffn=cfg[4], vocab=cfg[5], batch=a.batch, seq=a.seq,
                             threads=threads, rounds=a.rounds, edgelm_tokens_per_s=round(median(e), 1),
                             torch_eager_tokens_per_s=round(median(te), 1),
                             torch_compiled_tokens_per_s=round(median(tc), 1), torch_version=version,
                             edgelm_all=[round(x) for x in e], eager_all=[round(x) for x in te],
                             compiled_all=[round(x) for x in tc]))
    print(f"| config | params | batch x seq | threads | edgelm-train tok/s | PyTorch {version} eager | "
          "torch.compile | vs eager | vs compiled |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e, te, tc = r["edgelm_tokens_per_s"], r["torch_eager_tokens_per_s"], r["torch_compiled_tokens_per_s"]
        print(f"| {r['config']} (d{r['dim']} L{r['layers']} h{r['heads']}/{r['kv_heads']} ffn{r['ffn']} V{r['vocab']}) "
              f"| {r['params'] / 1e6:.2f}M | {r['batch']}x{r['seq']} | {r['threads']} | {e:.0f} | {te:.0f} | {tc:.0f} "
              f"| {e / te:.2f} | {e / tc:.2f} |")
    if a.json:
        for r in rows:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
