#!/usr/bin/python3
"""Peer for bench/gemm.bench.ts: Debian's torch (OpenBLAS) at a given thread count, run as a small
server so the benchmark can interleave our runs and torch's one by one (the build machine is shared
and noisy; pairing makes both sides see the same load).

  peer_torch.py --threads N --items a,b,...   -> sets up the items, prints "ready"
  stdin "name calls warmup\n"                  -> runs item `warmup` times untimed, then `calls` times,
                                                 prints the elapsed milliseconds of the timed calls
Outputs are preallocated (out=), as ours are. Where torch has more than one formulation of an item, each
is timed at setup and the fastest is the peer (its name is in the "ready" line): x·Wᵀ as torch.mm(x, W.t())
(F.linear's layout) vs torch.mm(x, Wt) with the weight stored transposed; torch.mv vs torch.matmul(W, x)
vs torch.addmv."""
import argparse
import os
import sys
import time

# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--items", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def mm(m, k, n, trans_b=False, dtype=torch.float32):
        a = torch.randn(m, k).to(dtype)
        c = torch.empty(m, n, dtype=dtype)  # bf16 x bf16 -> bf16 in torch (ours writes f32)
        if not trans_b:
            b = torch.randn(k, n).to(dtype)
            return {"mm": lambda: torch.mm(a, b, out=c)}
        w = torch.randn(n, k).to(dtype)  # F.linear(x, W) layout
        wt = w.t().contiguous()
        return {"mm(x,W.t())": lambda: torch.mm(a, w.t(), out=c), "mm(x,Wt)": lambda: torch.mm(a, wt, out=c)}

    def mv(n, k):
        w, x, y = torch.randn(n, k), torch.randn(k), torch.empty(n)
        return {
            "mv": lambda: torch.mv(w, x, out=y),
            "matmul": lambda: torch.matmul(w, x, out=y),
            "addmv": lambda: torch.addmv(y, w, x, beta=0, out=y),
        }

    def fastest(candidates):
        if len(candidates) == 1:
            return next(iter(candidates.items()))
        timing = {}
        for name, fn in candidates.items():
            fn()
            reps = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                reps.append(time.perf_counter() - t0)
            timing[name] = sorted(reps)[2]
        best = min(timing, key=timing.get)
        return best, candidates[best]

    makers = {
        "gemm_f32_512": lambda: mm(512, 512, 512),
        "gemm_f32_2048": lambda: mm(2048, 2048, 2048),
        "gemm_f32_4096x1024x4096": lambda: mm(4096, 1024, 4096),
        "gemm_bf16_2048": lambda: mm(2048, 2048, 2048, dtype=torch.bfloat16),
        "gemm_nf4_2048x4096x4096": lambda: mm(2048, 4096, 4096, trans_b=True),
        "gemv_nf4_4096x4096": lambda: mv(4096, 4096),
        "gemv_nf4_14336x4096": lambda: mv(14336, 4096),
    }
    fns, forms = {}, []
    for name in args.items.split(","):
        form, fns[name] = fastest(makers[name]())
        fns[name]()  # warm-up
        forms.append(f"{name}={form}")
    print("ready", torch.__version__, torch.get_num_threads(), ";".join(forms), flush=True)
    for line in sys.stdin:
        name, calls, warmup = line.split()
        fn = fns[name]
        for _ in range(int(warmup)):
            fn()
        t0 = time.perf_counter()
        for _ in range(int(calls)):
            fn()
        print((time.perf_counter() - t0) * 1e3, flush=True)


if __name__ == "__main__":
    main()
