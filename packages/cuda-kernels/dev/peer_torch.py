#!/usr/bin/env python3
"""PyTorch peers for the benchmarks of dev/gpu_check.cu, measured in the same run (scripts/gpu-check.sh).

Prints one JSON object per measurement (lines starting with "{") and a markdown table last:
  - device-to-device copy GB/s (bytes read + written): 1 GiB and the bf16 outputs of the dequant rows (n x 4096)
  - bf16 GEMM y[m,n] = x[m,k] . W[n,k]^T (F.linear -> cuBLAS/cuBLASLt), TFLOP/s
  - scaled_dot_product_attention, causal bf16, B=1, 32 q heads / 8 kv heads, S=2048, D=128, forward and
    forward+backward: GQA via enable_gqa=True and via repeat_interleave of K/V, each SDPA backend that accepts it
  - one Llama-3-8B-shaped decoder layer forward+backward, eager bf16 (HF LlamaDecoderLayer-style ops), frozen
    weights, LoRA r=16 on all 7 linears, T=2048 tokens: tokens/s and MFU with the harness's formula; plus, when
    bitsandbytes imports, its NF4 variant and bitsandbytes' NF4+DQ dequantize (the peer of the dequant rows)
Timings: CUDA events around `inner` calls, median of `reps` samples after warm-up.
`--smoke` runs tiny shapes (on the CPU when there is no GPU) to check the script itself; its numbers mean nothing.
"""
import argparse
import contextlib
import json
import math
import statistics
import sys
import time

ROWS = []


def emit(what, value, unit, ms=None, note="", table=True):
    """One JSON line per measurement; `table` rows also go into the table printed last."""
    row = {"what": what, "value": round(value, 3), "unit": unit, "ms": None if ms is None else round(ms, 4), "note": note}
    if table:
        ROWS.append(row)
    print(json.dumps(row), flush=True)


def guarded(what, fn):
    """One failing peer (an SDPA backend, an OOM) must not cost the others."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported, then the next peer runs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(json.dumps({"what": what, "error": f"{type(e).__name__}: {first[:300]}"}), flush=True)


class Bench:
    def __init__(self, torch, device, smoke):
        self.torch, self.device, self.smoke = torch, device, smoke
        self.name = "cpu"
        self.gqa = True  # SDPA with enable_gqa unless the attention bench finds repeat_interleave faster

    def median_ms(self, fn, reps=10, inner=1, warmup=3):
        """Median milliseconds of one fn() call: `reps` samples of `inner` back-to-back calls."""
        torch = self.torch
        if self.smoke:
            reps, inner, warmup = 2, 1, 1
        for _ in range(warmup):
            fn()
        samples = []
        cuda = self.device.type == "cuda"
        for _ in range(reps):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(inner):
                    fn()
                b.record()
                b.synchronize()
                samples.append(a.elapsed_time(b) / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples.append((time.perf_counter() - t0) * 1e3 / inner)
        return statistics.median(samples)

    def free(self):
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def bench_copy(b):
    torch = b.torch
    sizes = [("1 GiB", (1 << 30) // 2)] + [(f"bf16 {rows}x4096 (dequant output size)", rows * 4096) for rows in (4096, 14336)]
    if b.smoke:
        sizes = [("smoke", 1 << 16)]
    for label, n in sizes:
        src = torch.empty(n, dtype=torch.bfloat16, device=b.device).normal_()
        dst = torch.empty_like(src)
        ms = b.median_ms(lambda: dst.copy_(src), reps=10, inner=1 if n >= (1 << 28) else 10)
        emit(f"torch device-to-device copy {label}", 2 * 2 * n / (ms * 1e-3) / 1e9, "GB/s", ms, "read+write bytes")
        del src, dst
        b.free()


def bench_bnb_dequant(b):
    """bitsandbytes' NF4 + double-quant dequantize to bf16: the direct peer of the harness's dequant rows."""
    torch = b.torch
    import bitsandbytes.functional as bnbf

    for rows in (4096, 14336):
        n = rows * 4096
        w = torch.randn(rows, 4096, dtype=torch.bfloat16, device=b.device)
        q, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        ms = b.median_ms(lambda: bnbf.dequantize_4bit(q, state), reps=10, inner=10)
        moved = n / 2 + n / 64 + 2 * n  # as the harness counts: packed codes + 8-bit absmax + bf16 out
        emit(f"bitsandbytes NF4+DQ dequant -> bf16 {rows}x4096", moved / (ms * 1e-3) / 1e9, "GB/s", ms, "bytes as the harness counts them")
        del w, q, state
        b.free()


def bench_gemm(b):
    torch = b.torch
    F = torch.nn.functional
    shapes = [(4096, 4096, 4096), (4096, 4096, 14336), (4096, 14336, 4096)]
    if b.smoke:
        shapes = [(64, 48, 32)]
    for m, n, k in shapes:
        x = torch.randn(m, k, dtype=torch.bfloat16, device=b.device)
        w = torch.randn(n, k, dtype=torch.bfloat16, device=b.device)
        ms = b.median_ms(lambda: F.linear(x, w), reps=10, inner=5)
        emit(f"torch bf16 GEMM (cuBLAS) m,n,k=({m},{n},{k})", 2.0 * m * n * k / (ms * 1e-3) / 1e12, "TFLOP/s", ms,
             "F.linear, bf16 out, f32 accumulate")
        del x, w
        b.free()


def sdpa_backends(torch):
    """(name, context factory) for each SDPA backend this torch exposes; None = torch's own dispatch."""
    out = [("default dispatch", None)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return out
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        if hasattr(SDPBackend, name):
            out.append((name.lower(), lambda be=getattr(SDPBackend, name): sdpa_kernel(be)))
    return out


def sdpa(torch, q, k, v, gqa):
    """Causal SDPA; gqa=True passes 8 kv heads with enable_gqa, else K/V are repeated to 32 heads first."""
    F = torch.nn.functional
    rep = q.shape[1] // k.shape[1]
    if not hasattr(F, "scaled_dot_product_attention"):  # torch < 2.0 (smoke runs only): plain math
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        return s.masked_fill(mask, float("-inf")).softmax(-1) @ v
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if rep > 1:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def bench_attention(b):
    torch = b.torch
    B, H, KVH, S, D = (1, 32, 8, 2048, 128) if not b.smoke else (1, 4, 2, 64, 16)
    fwd_flop = 2.0 * B * H * S * S * D  # 4·B·H·S²·D halved by the causal mask
    q = torch.randn(B, H, S, D, dtype=torch.bfloat16, device=b.device, requires_grad=True)
    k = torch.randn(B, KVH, S, D, dtype=torch.bfloat16, device=b.device, requires_grad=True)
    v = torch.randn(B, KVH, S, D, dtype=torch.bfloat16, device=b.device, requires_grad=True)
    do = torch.randn(B, H, S, D, dtype=torch.bfloat16, device=b.device)
    shape = f"B={B} H={H}/{KVH} S={S} D={D}; causal FLOPs = half of 4BHS²D, bwd = 2.5x fwd"
    best, fb_by_label = {}, {}
    for gqa, label in ((True, "enable_gqa"), (False, "repeat_interleave kv")):
        for be_name, ctx in sdpa_backends(torch):
            def run(backward, gqa=gqa):
                o = sdpa(torch, q, k, v, gqa)
                if backward:
                    o.backward(do)
                    q.grad = k.grad = v.grad = None

            def measure(gqa=gqa, label=label, be_name=be_name, ctx=ctx):
                for backward, what, flop in ((False, "fwd", fwd_flop), (True, "fwd+bwd", 3.5 * fwd_flop)):
                    with ctx() if ctx else contextlib.nullcontext():
                        ms = b.median_ms(lambda: run(backward), reps=10, inner=3)
                    tf = flop / (ms * 1e-3) / 1e12
                    emit(f"torch SDPA causal bf16 {what} ({label}, {be_name})", tf, "TFLOP/s", ms, shape, table=False)
                    if what not in best or ms < best[what][2]:
                        best[what] = (label, be_name, ms, flop)
                    fastest = fb_by_label.get(label)
                    if backward and (fastest is None or ms < fastest):
                        fb_by_label[label] = ms

            guarded(f"SDPA {label} {be_name}", measure)
    for what, (label, be_name, ms, flop) in best.items():
        emit(f"torch SDPA causal bf16 {what} (fastest: {label}, {be_name})", flop / (ms * 1e-3) / 1e12, "TFLOP/s", ms, shape)
    if len(fb_by_label) == 2:  # the layer peer uses the faster way to feed 8 kv heads
        b.gqa = fb_by_label["enable_gqa"] <= fb_by_label["repeat_interleave kv"]


def build_layer(torch, device, T, nf4, smoke, gqa):
    """Eager Llama-3-8B decoder layer (HF LlamaDecoderLayer ops), frozen bf16 or NF4 weights, LoRA r=16 everywhere."""
    nn, F = torch.nn, torch.nn.functional
    Hd, NH, NKV, D, FF, R = (4096, 32, 8, 128, 14336, 16) if not smoke else (64, 4, 2, 16, 128, 4)
    bf16 = torch.bfloat16

    class LoRALinear(nn.Module):
        def __init__(self, fin, fout):
            super().__init__()
            if nf4:
                import bitsandbytes as bnb

                self.base = bnb.nn.Linear4bit(fin, fout, bias=False, compute_dtype=bf16, quant_type="nf4",
                                              compress_statistics=True).to(device)
            else:
                self.base = nn.Linear(fin, fout, bias=False, device=device, dtype=bf16)
            self.base.requires_grad_(False)
            self.A = nn.Parameter(torch.randn(R, fin, device=device, dtype=bf16) / math.sqrt(fin))
            self.B = nn.Parameter(torch.randn(fout, R, device=device, dtype=bf16) * 0.01)  # nonzero: real dB and dx paths

        def forward(self, x):
            return self.base(x) + F.linear(F.linear(x, self.A), self.B)  # alpha = r: scaling 1

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(Hd, device=device, dtype=bf16), requires_grad=False)

        def forward(self, x):
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
            return self.weight * h.to(bf16)

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))
    ang = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos().to(bf16)[None, None], emb.sin().to(bf16)[None, None]

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = RMSNorm(), RMSNorm()
            self.q, self.k, self.v, self.o = LoRALinear(Hd, NH * D), LoRALinear(Hd, NKV * D), LoRALinear(Hd, NKV * D), LoRALinear(NH * D, Hd)
            self.g, self.u, self.d = LoRALinear(Hd, FF), LoRALinear(Hd, FF), LoRALinear(FF, Hd)

        def forward(self, x):
            Bz = x.shape[0]
            h = self.n1(x)
            q = self.q(h).view(Bz, T, NH, D).transpose(1, 2)
            k = self.k(h).view(Bz, T, NKV, D).transpose(1, 2)
            v = self.v(h).view(Bz, T, NKV, D).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            a = sdpa(torch, q, k, v, gqa)
            x = x + self.o(a.transpose(1, 2).reshape(Bz, T, NH * D))
            h = self.n2(x)
            return x + self.d(F.silu(self.g(h)) * self.u(h))

    frozen = 4096.0 * (4096 + 1024 + 1024 + 4096) + 3.0 * 4096 * 14336  # N of the harness's MFU formula (218M)
    return Layer(), Hd, frozen


def bench_layer(b, nf4):
    torch = b.torch
    T = 2048 if not b.smoke else 32
    layer, Hd, frozen = build_layer(torch, b.device, T, nf4, b.smoke, b.gqa)
    x = torch.randn(1, T, Hd, device=b.device, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(1, T, Hd, device=b.device, dtype=torch.bfloat16) * 1e-3
    params = [p for p in layer.parameters() if p.requires_grad]

    def step():
        layer(x).backward(dout)
        for p in params:
            p.grad = None
        x.grad = None

    ms = b.median_ms(step, reps=7, inner=1, warmup=3)
    tok = T / (ms * 1e-3)
    peak = 989.4e12 if any(s in b.name for s in ("H100", "H200", "H800", "GH200")) else 312e12 if "A100" in b.name else 0
    mfu = f"MFU {100 * 4 * frozen * tok / peak:.1f}% (4N FLOPs/token, N=218M)" if peak else "MFU n/a"
    kind = "NF4 (bitsandbytes Linear4bit, double quant)" if nf4 else "bf16"
    emit(f"torch decoder layer fwd+bwd {kind} frozen, LoRA r=16 x7", tok, "tok/s", ms,
         f"eager, T={T}, SDPA {'enable_gqa' if b.gqa else 'repeat_interleave kv'}; {mfu}; {sum(p.numel() for p in params)} trainable")
    del layer, x, dout, params
    b.free()


def print_table(header):
    print(f"\n{header}\n| peer | value | ms | note |\n|---|---|---|---|")
    for r in ROWS:
        ms = "-" if r["ms"] is None else f"{r['ms']:.3f}"
        print(f"| {r['what']} | {r['value']:.1f} {r['unit']} | {ms} | {r['note']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU without a GPU): checks the script, not the GPU")
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print(f"peer_torch: skipped: torch does not import ({e})")
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print(f"peer_torch: skipped: torch {torch.__version__} sees no CUDA device")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    b = Bench(torch, device, args.smoke)
    b.name = torch.cuda.get_device_name(0) if cuda else "cpu"
    blas = torch.backends.cuda.preferred_blas_library() if cuda and hasattr(torch.backends.cuda, "preferred_blas_library") else "-"
    header = f"peer: torch {torch.__version__} on {b.name}" + (f", CUDA {torch.version.cuda}, blas {blas}" if cuda else " (smoke)")
    print(header, flush=True)
    torch.manual_seed(0)
    with torch.no_grad():
        guarded("copy", lambda: bench_copy(b))
        guarded("gemm", lambda: bench_gemm(b))
    guarded("attention", lambda: bench_attention(b))
    guarded("layer bf16", lambda: bench_layer(b, nf4=False))
    try:
        import bitsandbytes  # noqa: F401 - optional NF4 peer
    except Exception as e:  # noqa: BLE001 - import failures of optional peers are reported, not fatal
        print(json.dumps({"what": "torch decoder layer NF4 (bitsandbytes)", "skipped": f"bitsandbytes does not import: {type(e).__name__}"}))
    else:
        if cuda:
            with torch.no_grad():
                guarded("bitsandbytes dequant", lambda: bench_bnb_dequant(b))
            guarded("layer nf4", lambda: bench_layer(b, nf4=True))
    print_table(header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
