#!/usr/bin/python3
"""Peer for bench/run.ts: torch.optim.AdamW steps over the shapes of a Llama-3-8B r=16 all-linear LoRA adapter.

Usage: /usr/bin/python3 torch_adamw.py <threads> <foreach:0|1> <warmup> <steps>
Prints one JSON line: {"foreach": bool, "threads": n, "params": count, "seconds": [per-step wall times]}.
"""
import json
import sys
import time

import torch

threads, foreach, warmup, steps = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
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
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=foreach)
times = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    opt.step()
    if i >= warmup:
        times.append(time.perf_counter() - t0)
print(json.dumps({"foreach": foreach, "threads": threads, "params": sum(p.numel() for p in params), "seconds": times}))
