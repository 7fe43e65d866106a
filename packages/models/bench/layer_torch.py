#!/usr/bin/python3
"""PyTorch peer of bench/layer-ours.ts: the same Llama decoder layer with dense float32 frozen weights,
forward + backward (dX only), its fastest plain formulation in torch 1.13 (no SDPA in 1.13: matmul attention
with a causal mask, GQA by expand, rope by precomputed cos/sin). Run with OMP_NUM_THREADS=2.
Prints one JSON line like the TypeScript side."""
import json
import os
import resource
import sys
import time

# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "2")

import torch

iters = int(sys.argv[1]) if len(sys.argv) > 1 else 3
torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
B, S, HID, H, KV, D, FFN, EPS = 2, 512, 2048, 16, 4, 128, 5632, 1e-5
g = torch.Generator().manual_seed(1)


def w(o, i):
    return (torch.randn(o, i, generator=g) * 0.02).requires_grad_(False)


Wq, Wk, Wv, Wo = w(H * D, HID), w(KV * D, HID), w(KV * D, HID), w(HID, H * D)
Wg, Wu, Wd = w(FFN, HID), w(FFN, HID), w(HID, FFN)
n1, n2 = torch.ones(HID), torch.ones(HID)
inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
fr = torch.arange(S).float()[:, None] * inv[None]
emb = torch.cat((fr, fr), -1)
cos, sin = emb.cos()[None, None], emb.sin()[None, None]
mask = torch.full((S, S), float("-inf")).triu(1)


def rms(x, wt):
    return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rot(x):
    return torch.cat((-x[..., D // 2 :], x[..., : D // 2]), -1)


def layer(x):
    h = rms(x, n1)
    q = (h @ Wq.t()).view(B, S, H, D).transpose(1, 2)
    k = (h @ Wk.t()).view(B, S, KV, D).transpose(1, 2)
    v = (h @ Wv.t()).view(B, S, KV, D).transpose(1, 2)
    q = q * cos + rot(q) * sin
    k = k * cos + rot(k) * sin
    k = k[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D)
    v = v[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D)
    a = torch.softmax(torch.baddbmm(mask.expand(B * H, S, S), q.reshape(B * H, S, D), k.reshape(B * H, S, D).transpose(1, 2), alpha=D ** -0.5), -1)
    a = torch.bmm(a, v.reshape(B * H, S, D)).view(B, H, S, D).transpose(1, 2).reshape(B, S, H * D)
    x = x + a @ Wo.t()
    h = rms(x, n2)
    return x + (torch.nn.functional.silu(h @ Wg.t()) * (h @ Wu.t())) @ Wd.t()


x = torch.randn(B, S, HID, generator=g).requires_grad_(True)
gout = torch.ones(B, S, HID)
times = []
for i in range(iters + 1):
    t0 = time.perf_counter()
    out = layer(x)
    out.backward(gout)
    dt = time.perf_counter() - t0
    assert torch.isfinite(x.grad).all()
    x.grad = None
    del out
    if i > 0:
        times.append(dt)
times.sort()
med = times[len(times) // 2]
print(json.dumps({
    "who": "torch",
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "median_s": med,
    "tokens_per_s": B * S / med,
    "peak_rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0,
}))
