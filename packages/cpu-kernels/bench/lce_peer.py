#!/usr/bin/python3
"""Peer for bench/linear-cross-entropy.bench.ts: lm-head + cross-entropy forward+backward in torch 1.13, its
fastest formulation there (no chunked cross-entropy in torch): logits = h @ W.T materialised whole, then
F.cross_entropy(logits, labels, reduction="sum", ignore_index=-100), loss.backward() (dH and dW).
Prints one JSON object: {"torch": version, "ms": median ms, "peak_bytes": peak RSS growth of one step}.
Peak memory as in attention_peer.py: VmHWM reset through /proc/self/clear_refs, then VmHWM − RSS before."""
import argparse
import json
import os
import statistics
import sys
import time

# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import torch
import torch.nn.functional as F


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--frozen-head", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h = torch.randn(args.tokens, args.hidden, requires_grad=True)
    w = (torch.randn(args.vocab, args.hidden) * 0.02).requires_grad_(not args.frozen_head)
    labels = torch.randint(0, args.vocab, (args.tokens,))
    labels[::7] = -100

    def step():
        h.grad = w.grad = None
        loss = F.cross_entropy(h @ w.T, labels, reduction="sum", ignore_index=-100)
        loss.backward()

    step()  # warm-up
    h.grad = w.grad = None
    before = status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    step()
    peak = (status_kb("VmHWM") - before) * 1024
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"torch": torch.__version__, "ms": statistics.median(times), "peak_bytes": peak}))


if __name__ == "__main__":
    main()
