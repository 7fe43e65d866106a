#!/usr/bin/python3
"""PyTorch peer for lora-overhead.bench.ts: dense f32 nn.Linear 4096->4096 on x [2, 512, 4096], forward + input
gradient (A) vs the same + a PEFT-style LoRA r=16 (y = x W^T + s B(A x)), forward + backward (B); interleaved,
medians. PyTorch has no CPU NF4, so this is the same overhead ratio on a dense base, for context.
Usage: lora_peer.py REPS THREADS"""
import os
import sys
import time

# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[2]

import torch

reps, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
IN = OUT = 4096
R = 16
W = torch.randn(OUT, IN) / IN ** 0.5
x = torch.randn(2, 512, IN, requires_grad=True)
A = (torch.randn(R, IN) / IN ** 0.5).requires_grad_(True)
B = (torch.randn(OUT, R) * 0.01).requires_grad_(True)
g = torch.randn(2, 512, OUT)


def base():
    y = torch.nn.functional.linear(x, W)
    y.backward(g)
    x.grad = None


def lora():
    y = torch.nn.functional.linear(x, W) + torch.nn.functional.linear(torch.nn.functional.linear(x, A), B) * 2.0
    y.backward(g)
    x.grad = A.grad = B.grad = None


def ms(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


base()
lora()
ta, tb = [], []
for _ in range(reps):
    ta.append(ms(base))
    tb.append(ms(lora))
a, b = sorted(ta)[len(ta) // 2], sorted(tb)[len(tb) // 2]
print(f"PyTorch {torch.__version__} dense f32 peer: linear fwd+dX median {a:.1f} ms, + LoRA r={R} fwd+bwd median {b:.1f} ms, ratio {b / a:.3f}")
