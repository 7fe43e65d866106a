#!/usr/bin/python3
"""Peer for bench/run.ts: torch optimizer steps over the shapes of a Llama-3-8B r=16 all-linear LoRA adapter.

Usage: /usr/bin/python3 torch_optim.py <adamw|lion> <threads> <foreach:0|1> <warmup> <steps>
  adamw: torch.optim.AdamW(foreach=...).
  lion:  torch 1.13 has no Lion; lion-pytorch's update (its current lerp form, the fewest passes over memory)
         per tensor, or the same with torch._foreach_* ops over all tensors at once (foreach=1).
Prints one JSON line: {"optimizer": ..., "foreach": bool, "threads": n, "params": count, "seconds": [per-step wall
times], "cpuSeconds": [per-step CPU time of the process, all threads]}.
"""
import json
import os
import sys
import time

# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[2]

import torch

name, threads, foreach = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
warmup, steps = int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
HIDDEN, INTER, KV, R, LAYERS = 4096, 14336, 1024, 16, 32
MODULES = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, KV), "v": (HIDDEN, KV), "o": (HIDDEN, HIDDEN),
           "gate": (HIDDEN, INTER), "up": (HIDDEN, INTER), "down": (INTER, HIDDEN)}
torch.manual_seed(0)
params = []
for _ in range(LAYERS):
    for fin, fout in MODULES.values():
        for shape in ((R, fin), (fout, R)):
            p = torch.nn.Parameter(torch.randn(shape) * 0.01)
            p.grad = torch.randn(shape) * 1e-3
            params.append(p)


class Lion:
    """lion-pytorch's update: p *= 1 - lr*wd; p -= lr*sign(lerp(m, g, 1-b1)); m = lerp(m, g, 1-b2)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, foreach=False):
        self.params, self.lr, self.betas, self.wd, self.foreach = params, lr, betas, weight_decay, foreach
        self.exp_avg = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        grads = [p.grad for p in self.params]
        if self.foreach:
            torch._foreach_mul_(self.params, 1 - self.lr * self.wd)
            updates = [m.clone() for m in self.exp_avg]
            for u, g in zip(updates, grads):
                u.lerp_(g, 1 - b1).sign_()
            torch._foreach_add_(self.params, updates, alpha=-self.lr)
            for m, g in zip(self.exp_avg, grads):
                m.lerp_(g, 1 - b2)
            return
        for p, g, m in zip(self.params, grads, self.exp_avg):
            p.mul_(1 - self.lr * self.wd)
            update = m.clone().lerp_(g, 1 - b1).sign_()
            p.add_(update, alpha=-self.lr)
            m.lerp_(g, 1 - b2)


if name == "adamw":
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=foreach)
elif name == "lion":
    opt = Lion(params, lr=1e-4, weight_decay=0.01, foreach=foreach)
else:
    raise SystemExit(f"unknown optimizer {name!r} (adamw or lion)")
times, cpu = [], []
for i in range(warmup + steps):
    t0, c0 = time.perf_counter(), time.process_time()
    opt.step()
    if i >= warmup:
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
print(json.dumps({"optimizer": name, "foreach": foreach, "threads": threads,
                  "params": sum(p.numel() for p in params), "seconds": times, "cpuSeconds": cpu}))
