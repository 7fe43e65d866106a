#!/usr/bin/python3
"""Golden fixtures for @qlora/lora: PEFT's LoRA math re-implemented in plain PyTorch (no peft library),
following peft/tuners/lora/{layer,dora}.py and peft/utils/loftq_utils.py line by line.

Run: /usr/bin/python3 packages/lora/scripts/make_fixtures.py   (torch 1.13 CPU; CI never runs it)
Writes packages/lora/test/fixtures/lora_fixtures.json: {"generator", "torch", "cases": {name: {...}}} where
every tensor is {"shape": [...], "data": [flat row-major floats]}. Inputs are float32 numbers; the math runs in
float64 on exactly those values (PEFT runs float32; float64 makes the fixture an exact oracle).

Cases:
  lora_*     forward y = x W^T + b + s * B(A(dropout(x))) and the gradients of sum(y * G) w.r.t. x, A, B
             (dropout = a given inverted-dropout mask, as torch.nn.Dropout would apply it); plain s = alpha / r
             and rsLoRA s = alpha / sqrt(r); delta weight s * B @ A (merge).
  pissa      torch.linalg.svd of W; A = diag(sqrt(S_r / s)) Vh_r, B = U_r diag(sqrt(S_r / s)); W - s B A.
             SVD signs are arbitrary: each right singular vector's largest-|.| entry is made positive (the TS
             SVD uses the same rule).
  olora      torch.linalg.qr(W): B = Q[:, :r], A = R[:r]; W - s B A (LAPACK's signs; the TS QR uses dlarfg's).
  loftq_*    loftq_init with bitsandbytes-style NF4 (blocks of 64, no double quantization) in torch: A, B, the
             dequantized base, for 1 and 2 iterations.
  peft_adapter/  an adapter directory laid out byte for byte as Python PEFT's save_pretrained writes it for a model
             with HF module names (model.layers.{0,1}.self_attn.{q,v}_proj, hidden 64): adapter_config.json
             (json.dumps(indent=2, sort_keys=True)), adapter_model.safetensors (Rust safetensors layout: compact JSON
             header, "__metadata__" {"format": "pt"} first, tensors ordered by dtype then name, space padding to
             8 bytes), F32 for "default"; a second adapter "second" (DoRA, BF16, rsLoRA) in peft_adapter/second/.
             expected_peft_adapter.json holds the tensor values for the test.
  dora_*     DoRA forward/backward: weight norm ||W + s B A|| per output row (detached), m / norm scaling, with
             and without a dropout mask; dense base and a 4-bit base (the NF4-dequantized W fed in); gradients for
             x, A, B and the magnitude m; the merged weight (m / norm) (W + s B A).
"""
import json
import math
import os
import re

import torch

torch.manual_seed(20261207)
f64 = torch.float64
OUT_PATH = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "lora_fixtures.json")

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)


def nf4_roundtrip(w32, blocksize=64):
    """bitsandbytes quantize_4bit(nf4) + dequantize_4bit in float32: per-block absmax, nearest code."""
    flat = w32.reshape(-1).to(torch.float32)
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = torch.cat([flat, torch.zeros(pad)]).reshape(-1, blocksize)
    absmax = blocks.abs().max(dim=1, keepdim=True).values
    scaled = torch.where(absmax > 0, blocks / absmax, torch.zeros_like(blocks))
    idx = (scaled.unsqueeze(-1) - NF4).abs().argmin(dim=-1)
    deq = NF4[idx] * absmax
    return deq.reshape(-1)[:n].reshape(w32.shape)


def f32(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(f64)


def T(t):
    t = t.detach().to(f64)
    return {"shape": list(t.shape), "data": [float(v) for v in t.reshape(-1).tolist()]}


def canonical_svd(U, S, Vh):
    for k in range(Vh.shape[0]):
        j = int(Vh[k].abs().argmax())
        if Vh[k, j] < 0:
            Vh[k] = -Vh[k]
            U[:, k] = -U[:, k]
    return U, S, Vh


def lora_case(M, S_, IN, OUT, r, alpha, rslora, p):
    x = f32(M, S_, IN).requires_grad_(True)
    W = f32(OUT, IN, scale=IN ** -0.5)
    b = f32(OUT, scale=0.1)
    A = f32(r, IN, scale=IN ** -0.5).requires_grad_(True)
    B = f32(OUT, r, scale=0.2).requires_grad_(True)  # non-zero B: a trained adapter
    keep = (torch.rand(M, S_, IN) >= p).to(f64)
    mask = keep / (1 - p) if p > 0 else torch.ones(M, S_, IN, dtype=f64)
    G = f32(M, S_, OUT)
    s = alpha / math.sqrt(r) if rslora else alpha / r
    # peft Linear.forward: result = base_layer(x); result = result + lora_B(lora_A(dropout(x))) * scaling
    y = torch.nn.functional.linear(x, W, b) + torch.nn.functional.linear(torch.nn.functional.linear(x * mask, A), B) * s
    (y * G).sum().backward()
    return {
        "r": r, "alpha": alpha, "use_rslora": rslora, "scaling": s, "p": p,
        "x": T(x), "W": T(W), "bias": T(b), "A": T(A), "B": T(B), "mask": T(mask), "G": T(G),
        "y": T(y), "dX": T(x.grad), "dA": T(A.grad), "dB": T(B.grad),
        "delta_weight": T(s * (B @ A)),
    }


def pissa_case(OUT, IN, r, alpha):
    W = f32(OUT, IN)
    s = alpha / r
    V, S, Uh = torch.linalg.svd(W, full_matrices=False)  # peft's naming: W = V S Uh
    V, S, Uh = canonical_svd(V.clone(), S.clone(), Uh.clone())
    Vr, Sr, Uhr = V[:, :r], S[:r] / s, Uh[:r]
    A = torch.diag(torch.sqrt(Sr)) @ Uhr
    B = Vr @ torch.diag(torch.sqrt(Sr))
    return {"r": r, "alpha": alpha, "scaling": s, "W": T(W), "A": T(A), "B": T(B), "residual": T(W - s * B @ A), "S": T(S)}


def olora_case(OUT, IN, r, alpha):
    W = f32(OUT, IN)
    s = alpha / r
    Q, R = torch.linalg.qr(W)
    B, A = Q[:, :r], R[:r]
    return {"r": r, "alpha": alpha, "scaling": s, "W": T(W), "A": T(A), "B": T(B), "residual": T(W - s * B @ A)}


def loftq_case(OUT, IN, r, iters):
    W32 = torch.randn(OUT, IN, dtype=torch.float32) * 0.1
    weight = W32.clone()
    res = weight.clone()
    for _ in range(iters):
        deq = nf4_roundtrip(res)
        res = weight - deq
        U, S, Vh = torch.linalg.svd(res.to(f64), full_matrices=False)
        U, S, Vh = canonical_svd(U.clone(), S.clone(), Vh.clone())
        L = U[:, :r] @ torch.sqrt(torch.diag(S)[:r, :r])
        Rm = torch.sqrt(torch.diag(S)[:r, :r]) @ Vh[:r, :]
        res = weight - (L @ Rm).to(torch.float32)
    return {"r": r, "iters": iters, "W": T(W32), "A": T(Rm), "B": T(L), "base": T(deq)}


def dora_case(M, IN, OUT, r, alpha, p, quant):
    x = f32(M, IN).requires_grad_(True)
    W32 = (torch.randn(OUT, IN, dtype=torch.float32) * IN ** -0.5)
    W = (nf4_roundtrip(W32) if quant else W32).to(f64)
    b = f32(OUT, scale=0.1)
    A = f32(r, IN, scale=IN ** -0.5).requires_grad_(True)
    B = f32(OUT, r, scale=0.2).requires_grad_(True)
    s = alpha / r
    # magnitude: initialised to ||W + s B A|| per row, then trained away from it (perturbed here)
    m0 = torch.linalg.norm(W + s * (B @ A), dim=1).detach()
    m = (m0 * (1 + 0.1 * torch.randn(OUT, dtype=torch.float32).to(f64))).requires_grad_(True)
    keep = (torch.rand(M, IN) >= p).to(f64)
    mask = keep / (1 - p) if p > 0 else torch.ones(M, IN, dtype=f64)
    G = f32(M, OUT)
    # peft Linear.forward with DoRA: result = base_layer(x); x = dropout(x);
    # result += lora_magnitude_vector(x, lora_A, lora_B, scaling, base_layer, base_result=None if dropout else result)
    result = torch.nn.functional.linear(x, W, b)
    xd = x * mask
    lora_weight = (B @ A)  # lora_B(lora_A(eye)).T
    weight_norm = torch.linalg.norm(W + s * lora_weight.detach(), dim=1).detach()
    mag_norm_scale = (m / weight_norm).view(1, -1)
    lora_result = torch.nn.functional.linear(torch.nn.functional.linear(xd, A), B)
    if p > 0:
        base_result = torch.nn.functional.linear(xd, W)
    else:
        base_result = result - b
    y = result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * s
    (y * G).sum().backward()
    merged = (m / weight_norm).view(-1, 1) * (W + s * (B @ A))
    return {
        "r": r, "alpha": alpha, "scaling": s, "p": p, "quantized": quant,
        "x": T(x), "W_original": T(W32.to(f64)), "W": T(W), "bias": T(b), "A": T(A), "B": T(B), "m": T(m),
        "m_init": T(m0), "mask": T(mask), "G": T(G),
        "y": T(y), "dX": T(x.grad), "dA": T(A.grad), "dB": T(B.grad), "dm": T(m.grad), "merged": T(merged),
    }


cases = {
    "lora_plain": lora_case(2, 5, 16, 12, 4, 8, False, 0.0),
    "lora_dropout": lora_case(2, 5, 16, 12, 4, 8, False, 0.25),
    "lora_rslora": lora_case(2, 3, 16, 12, 4, 8, True, 0.0),
    "pissa": pissa_case(12, 16, 4, 8),
    "olora": olora_case(12, 16, 4, 8),
    "olora_wide": olora_case(16, 12, 3, 6),
    "loftq_1": loftq_case(16, 64, 4, 1),
    "loftq_2": loftq_case(16, 64, 4, 2),
    "dora_dense": dora_case(6, 16, 12, 4, 8, 0.0, False),
    "dora_dense_dropout": dora_case(6, 16, 12, 4, 8, 0.25, False),
    "dora_4bit": dora_case(6, 64, 12, 4, 8, 0.0, True),
}


def write_safetensors(path, tensors):
    """Rust safetensors' serialize(): order by (dtype alignment desc, name), compact header, space padding."""
    import struct
    size = {"F32": 4, "BF16": 2}
    order = sorted(tensors.items(), key=lambda kv: (-size[kv[1][0]], kv[0]))
    header = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name, (dtype, t) in order:
        if dtype == "F32":
            raw = t.to(torch.float32).contiguous().numpy().tobytes()
        else:
            bits = t.to(torch.float32).contiguous().view(torch.int32)
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(torch.int16).numpy().tobytes()  # RNE to bf16
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def peft_config(**over):
    c = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "tiny-llama", "bias": "none",
        "corda_config": None, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "layer_replication": None, "layers_pattern": None,
        "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.05,
        "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA",
        "peft_version": "0.17.1", "qalora_group_size": 16, "r": 4, "rank_pattern": {}, "revision": None,
        "target_modules": ["q_proj", "v_proj"], "target_parameters": None, "task_type": "CAUSAL_LM",
        "trainable_token_indices": None, "use_dora": False, "use_qalora": False, "use_rslora": False,
    }
    c.update(over)
    return c


def peft_adapter_dir(root):
    H = 64
    expected = {}
    for adapter, sub, cfg, dtype in [
        ("default", "", peft_config(), "F32"),
        ("second", "second", peft_config(r=2, lora_alpha=4, use_rslora=True, use_dora=True, target_modules=["q_proj"],
                                        rank_pattern={"layers.1.self_attn.q_proj": 3}), "BF16"),
    ]:
        d = os.path.join(root, sub)
        os.makedirs(d, exist_ok=True)
        tensors = {}
        for layer in (0, 1):
            for mod in cfg["target_modules"]:
                key = f"model.layers.{layer}.self_attn.{mod}"
                # peft get_pattern_key: a dotted-prefix regex with a full suffix match
                pk = next((p for p in cfg["rank_pattern"] if re.match(rf"(.*\.)?({p})$", key)), None)
                r = cfg["rank_pattern"][pk] if pk else cfg["r"]
                pre = f"base_model.model.{key}"
                tensors[f"{pre}.lora_A.weight"] = (dtype, torch.randn(r, H) * H ** -0.5)
                tensors[f"{pre}.lora_B.weight"] = (dtype, torch.randn(H, r) * 0.05)
                if cfg["use_dora"]:
                    tensors[f"{pre}.lora_magnitude_vector"] = (dtype, 1 + 0.1 * torch.rand(H))
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True))
        expected[adapter] = {k: {"dtype": dt, **T(v if dt == "F32" else v.to(torch.bfloat16).to(torch.float32))} for k, (dt, v) in tensors.items()}
    return expected


os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
fixtures_dir = os.path.dirname(OUT_PATH)
expected_adapter = peft_adapter_dir(os.path.join(fixtures_dir, "peft_adapter"))
with open(os.path.join(fixtures_dir, "expected_peft_adapter.json"), "w") as f:
    json.dump(expected_adapter, f)
with open(OUT_PATH + ".tmp", "w") as f:
    json.dump({"generator": "packages/lora/scripts/make_fixtures.py", "torch": torch.__version__, "cases": cases}, f)
os.replace(OUT_PATH + ".tmp", OUT_PATH)
print("wrote", os.path.relpath(OUT_PATH), os.path.getsize(OUT_PATH), "bytes")
