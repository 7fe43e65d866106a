#!/usr/bin/env python3
"""Golden fixtures for @qlora/formats, from numpy/torch (independent of our TypeScript).

Run with Debian's python (numpy + torch):  /usr/bin/python3 packages/formats/scripts/make_fixtures.py
Writes packages/formats/test/fixtures/golden.json:
  q8_0: inputs (float32 bytes) and the Q8_0 blocks per ggml's quantize_row_q8_0_ref, written here
        in numpy float32 the way gguf-py's quants.py does it (d = amax/127, id = d ? 1/d : 0,
        q = roundf(x*id) with roundf = half away from zero, d stored as fp16).
  f16:  float32 inputs and numpy's float32 -> float16 bits (round to nearest even).
  bf16: float32 inputs and torch's float32 -> bfloat16 bits (round to nearest even).
"""
import json
import os

import numpy as np
import torch

rng = np.random.default_rng(20261130)


def np_roundf(n: np.ndarray) -> np.ndarray:
    # gguf-py quants.py np_roundf: round half away from zero, exactly
    a = abs(n)
    floored = np.floor(a)
    b = floored + np.floor(2 * (a - floored))
    return np.sign(n) * b


def quantize_q8_0(x: np.ndarray) -> bytes:
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = np_roundf((blocks * inv).astype(np.float32)).astype(np.int8)
    out = bytearray()
    for i in range(blocks.shape[0]):
        out += d[i].astype(np.float16).tobytes()
        out += qs[i].tobytes()
    return bytes(out)


blocks = [
    rng.standard_normal(32) * 0.02,  # typical weights
    rng.standard_normal(32) * 300.0,  # large
    rng.standard_normal(32) * 1e-6,  # d lands in fp16 subnormals
    np.zeros(32),  # d = 0
    np.array([127.0, -0.5, 0.5, 1.5, -1.5, 2.5, -2.5, 126.5] + [0.0] * 24),  # ties, id = 1
    rng.uniform(-1, 1, 32) * np.float32(3.0e4),  # near the fp16 range
    np.array([-7.0] + list(rng.uniform(-7, 7, 31))),  # negative amax
]
q_in = np.concatenate(blocks).astype(np.float32)

f16_in = np.concatenate([
    rng.standard_normal(64).astype(np.float32),
    np.array([0.0, -0.0, 65504.0, 65520.0, 65519.996, 1e-8, 2.98e-8, 5.96e-8, 6.1e-5, 6.09e-5, 1.0 + 2**-11, 1.0 + 3 * 2**-11,
              np.inf, -np.inf, 1e10, -1e-10, 2049.0, 2051.0], dtype=np.float32),
    (rng.standard_normal(64) * 1e-5).astype(np.float32),
]).astype(np.float32)
bf16_in = np.concatenate([
    rng.standard_normal(64).astype(np.float32),
    np.array([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, np.inf, -np.inf, 1e-40, -1e-39], dtype=np.float32),
]).astype(np.float32)

golden = {
    "generator": "packages/formats/scripts/make_fixtures.py (numpy %s, torch %s)" % (np.__version__, torch.__version__),
    "q8_0": {"input_f32_hex": q_in.tobytes().hex(), "blocks_hex": quantize_q8_0(q_in).hex()},
    "f16": {"input_f32_hex": f16_in.tobytes().hex(), "bits": f16_in.astype(np.float16).view(np.uint16).tolist()},
    "bf16": {
        "input_f32_hex": bf16_in.tobytes().hex(),
        "bits": torch.from_numpy(bf16_in.copy()).to(torch.bfloat16).view(torch.int16).numpy().astype(np.uint16).tolist(),
    },
}
out = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "golden.json")
with open(out, "w") as f:
    json.dump(golden, f, indent=1)
    f.write("\n")
print("wrote", os.path.normpath(out))
