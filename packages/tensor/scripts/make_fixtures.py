#!/usr/bin/python3
"""Golden fixtures for @qlora/tensor: a small Llama-style causal decoder block + LM head + cross-entropy,
forward and backward, computed by PyTorch in float64 from float32 inputs and stored as float32.

Run: /usr/bin/python3 packages/tensor/scripts/make_fixtures.py   (torch 1.13 CPU; CI never runs it)
Writes packages/tensor/test/fixtures/decoder_block.bin:
  bytes 0..3  magic b"QLTF"
  bytes 4..7  u32 LE format version (1)
  bytes 8..11 u32 LE length L of the JSON header
  L bytes     UTF-8 JSON: {"generator", "torch", "config", "tensors": [{"name","dtype","shape","offset","nbytes"}]}
  data        little-endian f32 / i32 arrays at the given offsets (relative to the end of the header)
Conventions: HF LlamaRMSNorm (eps 1e-6), HF rotate_half RoPE (theta 10000) with position_ids, grouped-query
attention (4 heads, 2 kv heads, head dim 8) with a causal mask that is also block-diagonal over segment ids
(batch 1 packs two sequences; its positions restart), SwiGLU MLP, residuals, final RMSNorm, LM head,
cross-entropy with ignore_index=-100 (mean over non-ignored tokens).
"""
import json
import os
import struct
import sys

import torch

torch.manual_seed(1234)
B, S, H, KVH, D = 2, 7, 4, 2, 8
HID, INTER, VOCAB, EPS, THETA = H * D, 48, 13, 1e-6, 10000.0
f64 = torch.float64


def f32_param(*shape, scale=1.0):
    # values are float32 numbers; the computation runs in float64 on exactly those values
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(f64).requires_grad_(True)


x = f32_param(B, S, HID)
params = {
    "input_layernorm.weight": (1 + 0.1 * torch.randn(HID, dtype=torch.float32)).to(f64).requires_grad_(True),
    "q_proj.weight": f32_param(HID, HID, scale=HID ** -0.5),
    "k_proj.weight": f32_param(KVH * D, HID, scale=HID ** -0.5),
    "v_proj.weight": f32_param(KVH * D, HID, scale=HID ** -0.5),
    "o_proj.weight": f32_param(HID, HID, scale=HID ** -0.5),
    "post_attention_layernorm.weight": (1 + 0.1 * torch.randn(HID, dtype=torch.float32)).to(f64).requires_grad_(True),
    "gate_proj.weight": f32_param(INTER, HID, scale=HID ** -0.5),
    "up_proj.weight": f32_param(INTER, HID, scale=HID ** -0.5),
    "down_proj.weight": f32_param(HID, INTER, scale=INTER ** -0.5),
    "norm.weight": (1 + 0.1 * torch.randn(HID, dtype=torch.float32)).to(f64).requires_grad_(True),
    "lm_head.weight": f32_param(VOCAB, HID, scale=HID ** -0.5),
}
position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 2, 3]], dtype=torch.int32)
segment_ids = torch.tensor([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.int32)
labels = torch.randint(0, VOCAB, (B, S), dtype=torch.int32)
labels[0, 6] = -100
labels[1, 2] = -100
labels[1, 6] = -100


def rmsnorm(h, w):
    variance = h.pow(2).mean(-1, keepdim=True)
    return w * (h * torch.rsqrt(variance + EPS))


def rotate_half(t):
    t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2 :]
    return torch.cat((-t2, t1), dim=-1)


def rope(t, pos):  # t [B, heads, S, D]
    inv_freq = 1.0 / (THETA ** (torch.arange(0, D, 2, dtype=f64) / D))
    freqs = pos.to(f64)[..., None] * inv_freq  # [B, S, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    return t * cos + rotate_half(t) * sin


def forward(x, p):
    hn = rmsnorm(x, p["input_layernorm.weight"])
    q = (hn @ p["q_proj.weight"].T).view(B, S, H, D).transpose(1, 2)
    k = (hn @ p["k_proj.weight"].T).view(B, S, KVH, D).transpose(1, 2)
    v = (hn @ p["v_proj.weight"].T).view(B, S, KVH, D).transpose(1, 2)
    q, k = rope(q, position_ids), rope(k, position_ids)
    k = k.repeat_interleave(H // KVH, dim=1)
    v = v.repeat_interleave(H // KVH, dim=1)
    scores = q @ k.transpose(-1, -2) / D ** 0.5
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = (causal[None] & same)[:, None]  # [B, 1, S, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    attn = torch.softmax(scores, dim=-1) @ v  # [B, H, S, D]
    attn = attn.transpose(1, 2).reshape(B, S, HID)
    h = x + attn @ p["o_proj.weight"].T
    hn2 = rmsnorm(h, p["post_attention_layernorm.weight"])
    mlp = (torch.nn.functional.silu(hn2 @ p["gate_proj.weight"].T) * (hn2 @ p["up_proj.weight"].T)) @ p["down_proj.weight"].T
    out = h + mlp
    logits = rmsnorm(out, p["norm.weight"]) @ p["lm_head.weight"].T
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1).long(), ignore_index=-100)
    return out, logits, loss


out, logits, loss = forward(x, params)
out.retain_grad()
logits.retain_grad()
loss.backward()

tensors = [("x", x), ("position_ids", position_ids), ("segment_ids", segment_ids), ("labels", labels)]
tensors += [(f"param.{k}", v) for k, v in params.items()]
tensors += [("out", out), ("logits", logits), ("loss", loss.reshape(1))]
tensors += [("grad.x", x.grad), ("grad.out", out.grad), ("grad.logits", logits.grad)]
tensors += [(f"grad.param.{k}", v.grad) for k, v in params.items()]

index, blobs, offset = [], [], 0
for name, t in tensors:
    t = t.detach()
    if t.dtype in (torch.int32, torch.int64):
        arr, dtype = t.to(torch.int32).contiguous().numpy(), "i32"
    else:
        arr, dtype = t.to(torch.float32).contiguous().numpy(), "f32"
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    index.append({"name": name, "dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(data)})
    blobs.append(data)
    offset += len(data)

header = json.dumps({
    "generator": "packages/tensor/scripts/make_fixtures.py",
    "torch": torch.__version__,
    "config": {"batch": B, "seq": S, "heads": H, "kvHeads": KVH, "headDim": D, "hidden": HID, "intermediate": INTER,
               "vocab": VOCAB, "eps": EPS, "theta": THETA, "ignoreIndex": -100},
    "tensors": index,
}).encode("utf-8")
out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures")
os.makedirs(out_dir, exist_ok=True)
path = os.path.join(out_dir, "decoder_block.bin")
tmp = path + ".tmp"
with open(tmp, "wb") as f:
    f.write(b"QLTF" + struct.pack("<II", 1, len(header)) + header + b"".join(blobs))
os.replace(tmp, path)
print(f"wrote {path}: {len(tensors)} tensors, {offset} data bytes, loss {loss.item():.6f}", file=sys.stderr)
