#!/usr/bin/python3
"""Peer for bench/attention.bench.ts: causal GQA attention forward+backward in torch 1.13 (no
scaled_dot_product_attention before 2.0) with autograd, in the fastest plain formulation torch has here:
    "baddbmm": the G query heads of a kv head stacked as rows, q [b·kvh, G·seq, d], k/v [b·kvh, seq, d]
               (no copy of k/v per query head); s = baddbmm(causal additive mask, q·scale, kᵀ) (mask fused
               into the GEMM's C input); p = softmax(s); o = bmm(p, v); o.backward(dout)
The older form ("repeat_interleave": k, v repeated to the query heads, 4-D matmul, masked_fill) is
timed too at seq <= --compare-max-seq (default 512; above that it is several times slower and takes minutes
per step on a loaded 2-core machine), and the faster form at each seq is the peer (its name is printed). Prints one JSON object:
    {"torch": version, "ms": {seq: median ms}, "form": {seq: name}, "all_ms": {seq: {form: ms}},
     "peak_bytes": {seq: peak RSS growth during one fwd+bwd of the chosen form}}
Peak memory: the process's VmHWM (peak resident set) is reset to the current RSS through
/proc/self/clear_refs just before one fwd+bwd, then read afterwards; the figure is VmHWM − RSS before,
i.e. what the step itself added on top of the inputs."""
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


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seqs", default="512,2048")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--compare-max-seq", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, h, kvh, d = args.batch, args.heads, args.kv_heads, args.head_dim
    group = h // kvh
    scale = d ** -0.5
    ms, peak, form, all_ms = {}, {}, {}, {}
    for seq in [int(s) for s in args.seqs.split(",")]:
        q = torch.randn(b, h, seq, d, requires_grad=True)
        k = torch.randn(b, kvh, seq, d, requires_grad=True)
        v = torch.randn(b, kvh, seq, d, requires_grad=True)
        dout = torch.randn(b, h, seq, d)
        mask = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        # additive causal mask for the stacked group rows [G·seq, seq]
        add_mask = torch.zeros(seq, seq).masked_fill(mask, float("-inf")).repeat(group, 1)

        def step_baddbmm():
            q.grad = k.grad = v.grad = None
            qg = q.reshape(b * kvh, group * seq, d)  # heads of one kv group are adjacent: a view
            kg = k.reshape(b * kvh, seq, d)
            vg = v.reshape(b * kvh, seq, d)
            s = torch.baddbmm(add_mask, qg * scale, kg.transpose(1, 2))
            p = torch.softmax(s, dim=-1)
            o = torch.bmm(p, vg).reshape(b, h, seq, d)
            o.backward(dout)

        def step_repeat():
            q.grad = k.grad = v.grad = None
            kk = k.repeat_interleave(group, dim=1)
            vv = v.repeat_interleave(group, dim=1)
            s = torch.matmul(q, kk.transpose(-1, -2)) * scale
            s = s.masked_fill(mask, float("-inf"))
            p = torch.softmax(s, dim=-1)
            o = torch.matmul(p, vv)
            o.backward(dout)

        def timed(step, reps):
            step()  # warm-up
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)

        forms = {"baddbmm": step_baddbmm}
        if seq <= args.compare_max_seq:
            forms["repeat_interleave"] = step_repeat
        all_ms[seq] = {name: timed(fn, args.reps) for name, fn in forms.items()}
        best = min(all_ms[seq], key=all_ms[seq].get)
        step = forms[best]
        q.grad = k.grad = v.grad = None
        rss_before = status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        step()
        peak[seq] = (status_kb("VmHWM") - rss_before) * 1024
        form[seq] = best
        ms[seq] = all_ms[seq][best]
    print(json.dumps({"torch": torch.__version__, "ms": ms, "form": form, "all_ms": all_ms, "peak_bytes": peak}))


if __name__ == "__main__":
    main()
