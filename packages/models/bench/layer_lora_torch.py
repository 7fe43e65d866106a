#!/usr/bin/python3
"""PyTorch peer of bench/runtime-before-after.ts: one Llama decoder layer with dense float32 frozen weights and
PEFT-style LoRA (y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, r=16, s=2) on all 7 linears, forward + backward (dX, dA, dB), in
torch 1.13's fastest plain formulation (no SDPA in 1.13: matmul attention with a causal mask through baddbmm,
GQA by expand, rope by precomputed cos/sin; the same as bench/layer_torch.py plus LoRA).
Run with OMP_NUM_THREADS=2. Prints one JSON line with per-step figures like the TypeScript side.
  /usr/bin/python3 layer_lora_torch.py --hidden 1024 --heads 16 --kv-heads 4 --ffn 2816 --seq 512 --steps 6"""
import argparse
import json
import os
import re
import resource
import time

# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "2")

import torch

p = argparse.ArgumentParser()
p.add_argument("--hidden", type=int, default=1024)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--kv-heads", type=int, default=4)
p.add_argument("--ffn", type=int, default=2816)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--seq", type=int, default=512)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--steps", type=int, default=6)
a = p.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def hwm_bytes():
    """VmHWM, the RSS high-water mark; reset_hwm lowers it to the current RSS (ru_maxrss follows it too)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


maxrss0 = hwm_bytes()
run_peak = maxrss0
B, S, HID, H, KV, FFN, R, EPS = a.batch, a.seq, a.hidden, a.heads, a.kv_heads, a.ffn, a.rank, 1e-5
D = HID // H
SCALE = 2.0
g = torch.Generator().manual_seed(1)


def frozen(o, i):
    return torch.randn(o, i, generator=g) * 0.02


def lora(o, i):
    return ((torch.randn(R, i, generator=g) * 0.01).requires_grad_(True),
            (torch.randn(o, R, generator=g) * 0.01).requires_grad_(True))


shapes = {"q": (H * D, HID), "k": (KV * D, HID), "v": (KV * D, HID), "o": (HID, H * D),
          "g": (FFN, HID), "u": (FFN, HID), "d": (HID, FFN)}
W = {k: frozen(*s) for k, s in shapes.items()}
L = {k: lora(*s) for k, s in shapes.items()}
n1, n2 = torch.ones(HID), torch.ones(HID)
inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
fr = torch.arange(S).float()[:, None] * inv[None]
emb = torch.cat((fr, fr), -1)
cos, sin = emb.cos()[None, None], emb.sin()[None, None]
mask = torch.full((S, S), float("-inf")).triu(1)


def lin(x, k):
    A, Bm = L[k]
    return x @ W[k].t() + ((x @ A.t()) @ Bm.t()) * SCALE


def rms(x, wt):
    return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rot(x):
    return torch.cat((-x[..., D // 2:], x[..., : D // 2]), -1)


def layer(x):
    h = rms(x, n1)
    q = lin(h, "q").view(B, S, H, D).transpose(1, 2)
    k = lin(h, "k").view(B, S, KV, D).transpose(1, 2)
    v = lin(h, "v").view(B, S, KV, D).transpose(1, 2)
    q = q * cos + rot(q) * sin
    k = k * cos + rot(k) * sin
    k = k[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D)
    v = v[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D)
    att = torch.baddbmm(mask.expand(B * H, S, S), q.reshape(B * H, S, D), k.reshape(B * H, S, D).transpose(1, 2),
                        alpha=D ** -0.5)
    o = torch.bmm(torch.softmax(att, -1), v.reshape(B * H, S, D)).view(B, H, S, D).transpose(1, 2)
    x = x + lin(o.reshape(B, S, H * D), "o")
    h = rms(x, n2)
    return x + lin(torch.nn.functional.silu(lin(h, "g")) * lin(h, "u"), "d")


x = torch.randn(B, S, HID, generator=g).requires_grad_(True)
gout = torch.ones(B, S, HID)
rep = {"variant": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
       "step_ms": [], "faults": [], "rss_bytes": [], "step_rss_peak_growth_bytes": []}
rss_start = rss_bytes()
steps_peak = 0  # highest VmHWM at the end of a step (the build's own peak excluded)
for i in range(a.steps):
    run_peak = max(run_peak, hwm_bytes())
    can_reset = reset_hwm()
    r0 = rss_bytes()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    out = layer(x)
    out.backward(gout)
    del out
    x.grad = None
    for A, Bm in L.values():
        A.grad = None
        Bm.grad = None
    rep["step_ms"].append((time.perf_counter() - t0) * 1000)
    rep["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    rep["rss_bytes"].append(rss_bytes())
    rep["step_rss_peak_growth_bytes"].append(hwm_bytes() - r0 if can_reset else None)
    steps_peak = max(steps_peak, hwm_bytes())
rep["rss_start_bytes"] = rss_start
maxrss = max(run_peak, hwm_bytes())
rep["peak_rss_growth_bytes"] = maxrss - maxrss0  # from before the layer was built (weights included)
rep["steps_peak_rss_growth_bytes"] = steps_peak - rss_start  # from after the build (activations, caches)
print(json.dumps(rep))
