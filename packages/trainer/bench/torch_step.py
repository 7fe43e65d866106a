"""Peer of qlora-step.ts: the same step in PyTorch (Debian torch 1.13, OpenBLAS/MKL-free CPU build): a hand-written
Llama (~125M: hidden 768, 12 layers, 12/4 heads, ffn 2048, vocab 32000) with DENSE f32 frozen weights, hand-written
LoRA r=16 on every linear layer, torch.utils.checkpoint per decoder layer, torch.optim.AdamW, micro-batch 4 x seq 256.
Prints one JSON line (tokens/s, peak RSS, breakdown).   /usr/bin/python3 torch_step.py [steps]"""
import json, math, resource, sys, time, os
# torch.set_num_threads does not bound OpenBLAS's own threads (Debian's pthread build uses every core), so the
# peer's thread count is also given to OpenBLAS, which reads it once, when `import torch` loads it.
os.environ["OPENBLAS_NUM_THREADS"] = os.environ.get("QLORA_THREADS", "2")

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
threads = int(os.environ.get("QLORA_THREADS", "2"))
torch.set_num_threads(threads)
torch.manual_seed(1)
B, S, V, H, L, NH, KV, FF, R, ALPHA = 4, 256, 32000, 768, 12, 12, 4, 2048, 16, 32
HD = H // NH


class LoraLinear(torch.nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(o, i) * 0.02, requires_grad=False)
        self.A = torch.nn.Parameter(torch.empty(R, i))
        torch.nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = torch.nn.Parameter(torch.zeros(o, R))
        self.s = ALPHA / R

    def forward(self, x):
        return F.linear(x, self.weight) + self.s * F.linear(F.linear(x, self.A), self.B)


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rot_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat((-b, a), -1)


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = LoraLinear(H, H), LoraLinear(H, KV * HD), LoraLinear(H, KV * HD), LoraLinear(H, H)
        self.g, self.u, self.d = LoraLinear(H, FF), LoraLinear(H, FF), LoraLinear(FF, H)
        self.n1 = torch.nn.Parameter(torch.ones(H), requires_grad=False)
        self.n2 = torch.nn.Parameter(torch.ones(H), requires_grad=False)

    def forward(self, x, cos, sin, mask):
        h = rms(x, self.n1)
        q = self.q(h).view(B, S, NH, HD).transpose(1, 2)
        k = self.k(h).view(B, S, KV, HD).transpose(1, 2)
        v = self.v(h).view(B, S, KV, HD).transpose(1, 2)
        q, k = q * cos + rot_half(q) * sin, k * cos + rot_half(k) * sin
        k = k.repeat_interleave(NH // KV, 1)
        v = v.repeat_interleave(NH // KV, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD) + mask, -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, S, H))
        h = rms(x, self.n2)
        return x + self.d(F.silu(self.g(h)) * self.u(h))


emb = torch.randn(V, H) * 0.02
head = torch.randn(V, H) * 0.02
layers = torch.nn.ModuleList([Layer() for _ in range(L)])
normf = torch.ones(H)
inv = 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD))
ang = torch.outer(torch.arange(S).float(), inv)
cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
mask = torch.full((S, S), float("-inf")).triu(1)
params = [p for p in layers.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
g = torch.Generator().manual_seed(7)

times = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
step_times = []
for step in range(steps + 1):
    t0 = time.perf_counter()
    ids = torch.randint(0, V, (B, S), generator=g)
    t1 = time.perf_counter()
    x = emb[ids]
    for layer in layers:
        x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
    logits = F.linear(rms(x, normf), head)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    if step > 0:
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[k] += v
        step_times.append(t4 - t0)
step_s = sum(step_times) / len(step_times)
print(json.dumps({
    "impl": "pytorch", "torch": torch.__version__, "threads": threads, "steps": steps,
    "tokens_per_s": round(B * S / step_s, 1), "step_s": round(step_s, 3), "step_s_each": [round(t, 3) for t in step_times],
    "breakdown_s": {k: round(v / steps, 3) for k, v in times.items()},
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
