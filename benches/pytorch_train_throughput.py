#!/usr/bin/env python3
"""Training throughput (tokens/s) of edgelm-train vs the same architecture in PyTorch
on CPU, same batch, sequence length and thread count, measured in one run.

Architecture (docs/CHECKPOINT.md): Llama decoder, RMSNorm, RoPE (rotate-half), GQA,
SwiGLU, tied output head; AdamW (betas 0.9/0.95, wd 0.1 on matrices), grad clip 1.0,
random token windows. Both sides time `--steps` optimiser steps after `--warmup`
untimed ones.

Usage:
  pip install torch
  cargo build --release -p edgelm-trainer
  python3 benches/pytorch_train_throughput.py [--threads 1] [--steps 5]
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


def torch_tokens_per_s(cfg, batch, seq, steps, warmup, threads):
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
    decay = [p for p in m.parameters() if p.dim() >= 2]
    other = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), foreach=True,
    )
    ids = torch.randint(0, vocab, (batch, seq + 1))

    def step():
        logits = m(ids[:, :-1])
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
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "17179869184")
    env.setdefault("MALLOC_TOP_PAD_", "1073741824")
    out = subprocess.run(
        [binary, "bench", "--dim", str(dim), "--layers", str(layers), "--heads", str(heads),
         "--kv-heads", str(kv), "--ffn", str(ffn), "--vocab", str(vocab), "--seq-len", str(seq),
         "--batch", str(batch), "--steps", str(steps), "--warmup-steps", str(warmup)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["tokens_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..",
                    os.environ.get("CARGO_TARGET_DIR", "target"), "release", "edgelm-train"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import torch

    rows = []
    for name, cfg in CONFIGS.items():
        e = edgelm_tokens_per_s(a.binary, cfg, a.batch, a.seq, a.steps, a.warmup, a.threads)
        t = torch_tokens_per_s(cfg, a.batch, a.seq, a.steps, a.warmup, a.threads)
        rows.append(dict(config=name, params=n_params(*cfg), dim=cfg[0], layers=cfg[1], heads=cfg[2],
                         kv_heads=cfg[3], ffn=cfg[4], vocab=cfg[5], batch=a.batch, seq=a.seq,
                         threads=a.threads, edgelm_tokens_per_s=round(e, 1),
                         torch_tokens_per_s=round(t, 1), torch_version=torch.__version__))
    print(f"| config | params | batch x seq | threads | edgelm-train tok/s | PyTorch {torch.__version__} tok/s | ratio |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} (d{r['dim']} L{r['layers']} h{r['heads']}/{r['kv_heads']} ffn{r['ffn']} V{r['vocab']}) "
              f"| {r['params'] / 1e6:.2f}M | {r['batch']}x{r['seq']} | {r['threads']} | {r['edgelm_tokens_per_s']:.0f} "
              f"| {r['torch_tokens_per_s']:.0f} | {r['edgelm_tokens_per_s'] / r['torch_tokens_per_s']:.2f} |")
    if a.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
