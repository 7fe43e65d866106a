#!/usr/bin/python3
"""PyTorch parity fixtures for @qlora/models.

Implements the Hugging Face forward of LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM /
Qwen3ForCausalLM in plain torch (no transformers library): RMSNorm, rope with rope_scaling 'linear' and
'llama3' (transformers' _compute_llama3_parameters), GQA, Qwen2 q/k/v bias, Qwen3 q/k RMSNorm, tied
embeddings, sliding-window attention (Mistral: every layer; Qwen2/Qwen3 with use_sliding_window: the layers
current transformers marks "sliding_attention", i.e. layer_types or i >= max_window_layers; a query at i sees
keys i - window < j <= i), SwiGLU MLP, shifted cross-entropy with ignore_index -100.

Run (Debian's python3-torch, float32):
  pnpm exec tsx --conditions=@qlora/source packages/models/scripts/make-tiny-models.ts /tmp/tiny
  /usr/bin/python3 packages/models/scripts/make_parity_fixtures.py /tmp/tiny packages/models/test/fixtures/parity

Each output <name>.bin is a QLTF v1 file: b"QLTF", u32 version, u32 header length, JSON header
({generator, torch, model_sha256, config, tensors: [{name, dtype, shape, offset, nbytes}]}), raw data.
"""
import hashlib
import json
import math
import os
import struct
import sys

import torch

SEQ = 128
BATCH = 2
DT = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = bytearray(raw[base + b : base + end])
        t = torch.frombuffer(buf, dtype=DT[e["dtype"]]).reshape(e["shape"]) if end > b else torch.zeros(e["shape"])
        out[name] = t.float()
    return out, hashlib.sha256(raw).hexdigest()


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def inv_freq(cfg, d):
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    assert kind == "llama3", kind
    factor = rs["factor"]
    low, high = rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
    return torch.where(medium, smoothed, inv_l)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def layer_windows(cfg):
    """Sliding window per layer (0 = full causal attention), as transformers derives it."""
    arch = cfg["architectures"][0]
    L = cfg["num_hidden_layers"]
    W = cfg.get("sliding_window")
    if arch == "MistralForCausalLM":
        return [W or 0] * L
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and cfg.get("use_sliding_window") and W:
        types = cfg.get("layer_types") or [
            "sliding_attention" if i >= cfg.get("max_window_layers", 28) else "full_attention" for i in range(L)
        ]
        return [W if t == "sliding_attention" else 0 for t in types]
    return [0] * L


def forward(cfg, w, ids, pos, seg=None):
    arch = cfg["architectures"][0]
    hid = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim") or hid // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    qkv_bias = arch == "Qwen2ForCausalLM" or cfg.get("attention_bias", False)
    o_bias = arch != "Qwen2ForCausalLM" and cfg.get("attention_bias", False)
    B, S = ids.shape

    def lin(x, p, bias):
        y = x @ w[p + ".weight"].t()
        return y + w[p + ".bias"] if bias else y

    # rope tables exactly as transformers' LlamaRotaryEmbedding: float32 inv_freq @ positions
    inv = inv_freq(cfg, D)
    freqs = (inv[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [B, 1, S, D]

    causal = torch.ones(S, S, dtype=torch.bool).tril()
    allowed = causal[None].expand(B, S, S)
    if seg is not None:
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])
    mask = torch.zeros(B, 1, S, S).masked_fill(~allowed[:, None], float("-inf"))
    windows = layer_windows(cfg)
    if any(windows):
        W = max(windows)
        near = torch.ones(S, S, dtype=torch.bool).triu(-(W - 1))  # j > i - W
        swa_mask = torch.zeros(B, 1, S, S).masked_fill(~(allowed & near[None])[:, None], float("-inf"))

    h = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        x = rms_norm(h, w[p + ".input_layernorm.weight"], eps)
        q = lin(x, p + ".self_attn.q_proj", qkv_bias).view(B, S, H, D)
        k = lin(x, p + ".self_attn.k_proj", qkv_bias).view(B, S, KV, D)
        v = lin(x, p + ".self_attn.v_proj", qkv_bias).view(B, S, KV, D)
        if arch == "Qwen3ForCausalLM":
            q = rms_norm(q, w[p + ".self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + ".self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        scores = (q @ k.transpose(2, 3)) * (D ** -0.5) + (swa_mask if windows[l] else mask)
        a = torch.softmax(scores.float(), dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, S, H * D)
        h = h + lin(a, p + ".self_attn.o_proj", o_bias)
        x = rms_norm(h, w[p + ".post_attention_layernorm.weight"], eps)
        mb = arch == "LlamaForCausalLM" and cfg.get("mlp_bias", False)
        g = lin(x, p + ".mlp.gate_proj", mb)
        u = lin(x, p + ".mlp.up_proj", mb)
        h = h + lin(torch.nn.functional.silu(g) * u, p + ".mlp.down_proj", mb)
    h = rms_norm(h, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return h @ head.t()


def shifted_loss(logits, labels):
    # transformers' ForCausalLMLoss: shift, mean over labels != -100
    V = logits.shape[-1]
    lg = logits[:, :-1].reshape(-1, V)
    lb = labels[:, 1:].reshape(-1)
    total = torch.nn.functional.cross_entropy(lg, lb, ignore_index=-100, reduction="sum")
    count = (lb != -100).sum()
    return total, count


def write_fixture(path, header, tensors):
    entries, blobs, off = [], [], 0
    for name, t in tensors:
        t = t.contiguous()
        dtype = "f32" if t.dtype == torch.float32 else "i32"
        data = t.numpy().astype("<f4" if dtype == "f32" else "<i4").tobytes()
        entries.append({"name": name, "dtype": dtype, "shape": list(t.shape), "offset": off, "nbytes": len(data)})
        blobs.append(data)
        off += len(data)
    header = dict(header, tensors=entries)
    hb = json.dumps(header).encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"QLTF" + struct.pack("<II", 1, len(hb)) + hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main(models_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    for name in sorted(os.listdir(models_dir)):
        d = os.path.join(models_dir, name)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        w, sha = read_safetensors(os.path.join(d, "model.safetensors"))
        V = cfg["vocab_size"]
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        ids = torch.randint(0, V, (BATCH, SEQ), generator=g)
        labels = ids.clone()
        labels[0, :10] = -100  # a prompt without loss
        labels[1, 100:] = -100
        pos = torch.arange(SEQ)[None].expand(BATCH, SEQ).contiguous()
        with torch.no_grad():
            logits = forward(cfg, w, ids, pos)
            total, count = shifted_loss(logits, labels)
            # packed: row 0 holds three sequences (positions restart, block-diagonal causal mask)
            seg = torch.zeros(BATCH, SEQ, dtype=torch.int64)
            seg[0, 40:90] = 1
            seg[0, 90:] = 2
            ppos = pos.clone()
            ppos[0, 40:90] = torch.arange(50)
            ppos[0, 90:] = torch.arange(SEQ - 90)
            plogits = forward(cfg, w, ids, ppos, seg)
        tensors = [
            ("input_ids", ids.int()),
            ("labels", labels.int()),
            ("logits", logits),
            ("loss_sum", total.reshape(1)),
            ("loss", (total / count).reshape(1)),
            ("token_count", count.int().reshape(1)),
            ("packed.position_ids", ppos.int()),
            ("packed.segment_ids", seg.int()),
            ("packed.logits", plogits),
        ]
        header = {
            "generator": "packages/models/scripts/make_parity_fixtures.py",
            "torch": torch.__version__,
            "model": name,
            "model_sha256": sha,
            "config": cfg,
        }
        write_fixture(os.path.join(out_dir, name + ".bin"), header, tensors)
        print(name, "loss", float(total / count), "tokens", int(count))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
