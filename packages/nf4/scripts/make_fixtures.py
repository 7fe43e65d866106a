#!/usr/bin/env python3
"""Golden fixtures for @qlora/nf4, from an independent numpy port of bitsandbytes' CUDA semantics.

Run (dev only; CI never runs Python):
    /usr/bin/python3 packages/nf4/scripts/make_fixtures.py
Writes packages/nf4/test/fixtures/nf4-golden.bin:
    8 bytes magic b"QLNF4FX\\0", uint32 LE format version, uint32 LE header length,
    header (UTF-8 JSON: generator, version, numpy version, cases with array offsets), then the raw
    little-endian arrays (each 8-byte aligned, offsets relative to the start of the data section).

Everything is float32 arithmetic with IEEE rounding (reciprocal 1/absmax correctly rounded, products
correctly rounded): this is the CUDA kernel's semantics minus fast-math (spec bnb-4bit-format.md §0, §2).
Tables are typed in from the spec's *decimal* columns (the TypeScript code uses the hex columns), and the
dynamic maps are regenerated with bitsandbytes' own create_dynamic_map algorithm (FMA linspace).
"""
import json
import math
import os
import struct
import sys

import numpy as np

GENERATOR = "packages/nf4/scripts/make_fixtures.py"
VERSION = 1
MAGIC = b"QLNF4FX\0"
f32 = np.float32
FLT_MAX = np.finfo(np.float32).max

NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=f32)
NF4_T = np.array([
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=f32)
# FP4: bnb's raw list divided (float32) by 12
FP4 = (np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=f32) / f32(12)).astype(f32)
FP4_LIT = {k: f32(float(k)) for k in ["0.29166667", "0.583333", "0.8333333", "0.4166667", "0.0859375", "0.20833333", "0.00260417"]}


def bits(x):
    return int(np.array([x], dtype=f32).view(np.uint32)[0])


# sanity: the float32 literals must be the ones in the spec's hex column
assert [hex(bits(FP4_LIT[k])) for k in ["0.29166667", "0.583333", "0.8333333", "0.4166667", "0.0859375", "0.20833333", "0.00260417"]] == [
    "0x3e955555", "0x3f155550", "0x3f555555", "0x3ed55556", "0x3db00000", "0x3e555555", "0x3b2aaab9"]
# the NF4 thresholds are the float32 midpoints of adjacent NF4 values (spec §2.2)
assert np.array_equal(NF4_T, ((NF4[:-1] + NF4[1:]) * f32(0.5)).astype(f32))


def create_dynamic_map(signed):
    """bitsandbytes functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)."""
    # torch's float32 linspace as x86/ARM builds compute it: step = fl32(fl32(end-start)/fl32(k-1)),
    # start + step*t (t < k/2) or end - step*(k-1-t), each with ONE rounding (FMA) (spec §5.3).
    # The float64 evaluation below is exact before the final rounding, i.e. an FMA.
    # (Debian's torch 1.13 build evaluates without FMA and gives the 42/43-entries-differ variant
    # the spec warns about; so torch is not used here.)
    def linspace(a, b, k):
        a, b = f32(a), f32(b)
        step = f32(f32(b - a) / f32(k - 1))
        return np.array([f32(np.float64(a) + np.float64(step) * t) if t < k // 2
                         else f32(np.float64(b) - np.float64(step) * (k - 1 - t)) for t in range(k)], dtype=f32)
    how = "numpy emulation of torch float32 linspace with FMA"
    data = []
    non_sign_bits = 7
    for i in range(7):
        k = 2 ** (i + non_sign_bits - 7) + 1 if signed else 2 ** (i + non_sign_bits - 7 + 1) + 1
        b = linspace(0.1, 1, k)
        means = ((b[:-1] + b[1:]).astype(f32) / f32(2.0)).astype(f32)
        scale = f32(10 ** (-(7 - 1) + i))
        data += (scale * means).astype(f32).tolist()
        if signed:
            data += (-scale * means).astype(f32).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 256
    data.sort()
    return np.array(data, dtype=f32), how


def block_absmax(x, bs):
    """fmaxf from -FLT_MAX over the real elements (NaN ignored); a partial block's padding loads as 0."""
    n = len(x)
    nb = -(-n // bs)
    out = np.empty(nb, dtype=f32)
    for b in range(nb):
        blk = x[b * bs:(b + 1) * bs]
        a = np.abs(blk)
        a = a[~np.isnan(a)]
        m = f32(-FLT_MAX) if len(blk) == bs else f32(0)
        if a.size:
            m = max(m, a.max())
        out[b] = m
    return out


def nf4_codes(y):
    return np.sum(y[:, None] > NF4_T[None, :], axis=1).astype(np.uint8)  # NaN -> 0


def fp4_codes(y):
    L = FP4_LIT
    a = np.abs(y)
    sign = np.where(y < 0, 8, 0)
    c = np.where(a > L["0.29166667"],
                 np.where(a > L["0.583333"], np.where(a > L["0.8333333"], 3, 2), np.where(a > L["0.4166667"], 5, 4)),
                 np.where(a > L["0.0859375"], np.where(a > L["0.20833333"], 7, 6), np.where(a > L["0.00260417"], 1, 0)))
    return (c + sign).astype(np.uint8)


def quant4(x, bs, qt):
    x = x.astype(f32)
    n = len(x)
    am = block_absmax(x, bs)
    with np.errstate(all="ignore"):
        r = (f32(1) / am).astype(f32)
        xp = np.concatenate([x, np.zeros(n % 2, dtype=f32)])
        idx = np.arange(len(xp)) // bs
        y = (xp * r[idx]).astype(f32)
    codes = nf4_codes(y) if qt == "nf4" else fp4_codes(y)
    packed = ((codes[0::2].astype(np.uint16) << 4) | codes[1::2]).astype(np.uint8)
    return packed, am


def dequant4(packed, am, bs, qt, n):
    codes = np.empty(2 * len(packed), dtype=np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    codes = codes[:n]
    lut = NF4 if qt == "nf4" else FP4
    with np.errstate(all="ignore"):
        return (lut[codes] * am[np.arange(n) // bs]).astype(f32)


def quant8_value(c, y):
    """Brute force: nearest against float32 midpoints, exact ties to the even index, NaN -> 0."""
    mids = ((c[:-1] + c[1:]).astype(f32) * f32(0.5)).astype(f32)
    q = np.sum(y[:, None] > mids[None, :], axis=1)
    eq = y[:, None] == mids[None, :]
    tie = eq.any(axis=1)
    j = np.argmax(eq, axis=1)
    q = np.where(tie, np.where(j % 2 == 0, j, j + 1), q)
    return q.astype(np.uint8)


def quant8(x, code, bs):
    x = x.astype(f32)
    am = block_absmax(x, bs)
    with np.errstate(all="ignore"):
        r = (f32(1) / am).astype(f32)
        y = (x * r[np.arange(len(x)) // bs]).astype(f32)
    return quant8_value(code, y), am


def dequant8(q, am, code, bs):
    return (code[q] * am[np.arange(len(q)) // bs]).astype(f32)


def to_bf16(x):
    b = x.astype(f32).view(np.uint32).astype(np.uint64)
    out = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), out).astype(np.uint16)


def to_f16(x):
    with np.errstate(all="ignore"):
        h = x.astype(f32).astype(np.float16).view(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FFF), h).astype(np.uint16)


def from_bf16(u):
    return (u.astype(np.uint32) << 16).view(f32)


class Writer:
    def __init__(self):
        self.blob = bytearray()
        self.cases = []

    def arr(self, a):
        kinds = {np.dtype(np.float32): "f32", np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float64): "f64"}
        a = np.ascontiguousarray(a)
        while len(self.blob) % 8:
            self.blob.append(0)
        ref = {"dtype": kinds[a.dtype], "offset": len(self.blob), "length": int(a.size)}
        self.blob += a.astype(a.dtype.newbyteorder("<")).tobytes()
        return ref

    def case(self, meta, arrays):
        meta = dict(meta)
        meta["arrays"] = {k: self.arr(v) for k, v in arrays.items()}
        self.cases.append(meta)


def quant_state_json(qt, bs, dtype, shape, offset=None):
    d = {"quant_type": qt, "blocksize": bs, "dtype": dtype, "shape": list(shape)}
    if offset is not None:
        d.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": float(offset)})
    return json.dumps(d)


def four_bit_case(w, name, x_in, in_dtype, bs, qt, dq, shape, out_dtypes):
    """x_in: float32 values (in_dtype float32) or uint16 bit patterns (bfloat16/float16)."""
    if in_dtype == "float32":
        x = x_in.astype(f32)
    elif in_dtype == "bfloat16":
        x = from_bf16(x_in)
    else:
        x = x_in.view(np.float16).astype(f32)
    n = len(x)
    packed, am = quant4(x, bs, qt)
    arrays = {"input": x_in, "packed": packed}
    meta = {"name": name, "kind": "4bit", "quantType": qt, "blocksize": bs, "dtype": in_dtype,
            "shape": list(shape), "doubleQuant": dq}
    if dq:
        offset = f32(np.mean(am.astype(np.float64)))
        xs = (am - offset).astype(f32)
        code, _ = create_dynamic_map(True)
        q, nam = quant8(xs, code, 256)
        rec = ((code[q] * nam[np.arange(len(q)) // 256]).astype(f32) + offset).astype(f32)
        arrays.update({"qabsmax": q, "nestedAbsmax": nam, "recoveredAbsmax": rec, "absmax": am})
        meta["offset"] = float(offset)
        used = rec
    else:
        arrays["absmax"] = am
        offset = None
        used = am
    meta["json"] = quant_state_json(qt, bs, in_dtype, shape, offset)
    deq = dequant4(packed, used, bs, qt, n)
    for od in out_dtypes:
        arrays["dequant_" + od] = deq if od == "float32" else (to_bf16(deq) if od == "bfloat16" else to_f16(deq))
    w.case(meta, arrays)


def main():
    rng = np.random.default_rng(20261130)
    w = Writer()
    smap, how = create_dynamic_map(True)
    umap, _ = create_dynamic_map(False)
    w.case({"name": "dynamic_maps", "kind": "maps", "how": how}, {"signed": smap, "unsigned": umap, "nf4": NF4, "fp4": FP4})

    for bs in [32, 64, 128, 256, 512, 1024, 2048, 4096]:
        n = 3 * bs + 5 if bs < 1024 else bs + 3
        # per-block scales so the absmax values differ a lot
        scale = np.exp(rng.normal(size=-(-n // bs)) * 1.5).astype(f32)
        xf = (rng.standard_normal(n).astype(f32) * 0.05 * scale[np.arange(n) // bs]).astype(f32)
        xb = to_bf16((rng.standard_normal(n) * 0.02).astype(f32))
        for qt in ["nf4", "fp4"]:
            for dq in [False, True]:
                four_bit_case(w, f"{qt}-bs{bs}-f32{'-dq' if dq else ''}", xf, "float32", bs, qt, dq, [n], ["float32"])
                four_bit_case(w, f"{qt}-bs{bs}-bf16{'-dq' if dq else ''}", xb, "bfloat16", bs, qt, dq, [n], ["bfloat16"])
        if bs == 64:
            xh = to_f16((rng.standard_normal(n) * 0.1).astype(f32))
            for qt in ["nf4", "fp4"]:
                four_bit_case(w, f"{qt}-bs64-f16", xh, "float16", bs, qt, False, [n], ["float16", "float32", "bfloat16"])

    # many blocks: the nested absmax has 2 blocks of 256; 2-D shape
    n = 300 * 32 + 5
    scale = np.exp(rng.normal(size=-(-n // 32))).astype(f32)
    xf = (rng.standard_normal(n).astype(f32) * scale[np.arange(n) // 32]).astype(f32)
    for qt in ["nf4", "fp4"]:
        four_bit_case(w, f"{qt}-bs32-f32-dq-many", xf, "float32", 32, qt, True, [5, 1921], ["float32", "bfloat16"])

    # special blocks: zeros, NaN, +-Inf, tiny values around 0, a 1-element tail
    bs = 64
    x = (rng.standard_normal(6 * bs + 1) * 0.3).astype(f32)
    x[0:64] = 0
    x[64 + 3] = np.nan
    x[64 + 10] = np.nan
    x[128 + 5] = np.inf
    x[192 + 7] = -np.inf
    x[192 + 8] = np.nan
    x[256:320] = (rng.standard_normal(64) * 1e-3).astype(f32)
    x[256] = 1.0
    x[257] = -0.0
    x[258] = -0.002
    x[320:384] = np.nan
    x[320] = 0.5  # a block of NaN except one value
    for qt in ["nf4", "fp4"]:
        four_bit_case(w, f"{qt}-bs64-f32-special", x, "float32", bs, qt, False, [len(x)], ["float32", "bfloat16", "float16"])

    # 8-bit blockwise codec
    for name, code_name, code, bs, data in [
        ("q8-signed-bs256", "signed", smap, 256, (rng.standard_normal(256 * 7 + 33)).astype(f32)),
        ("q8-signed-bs4096", "signed", smap, 4096, (rng.standard_normal(4096 + 77) * 3).astype(f32)),
        ("q8-signed-bs64-mids", "signed", smap, 64, None),
        ("q8-unsigned-bs256", "unsigned", umap, 256, rng.random(256 * 5 + 7).astype(f32)),
    ]:
        if data is None:
            # exact float32 midpoints (ties) and their neighbours, scaled so absmax = 1 per block
            mids = ((smap[:-1] + smap[1:]).astype(f32) * f32(0.5)).astype(f32)
            vals = np.concatenate([mids, np.nextafter(mids, f32(2)), np.nextafter(mids, f32(-2)), smap])
            vals = vals[np.abs(vals) <= 1].astype(f32)
            blocks = [np.concatenate([[f32(1.0)], vals[i:i + 63]]) for i in range(0, len(vals), 63)]
            data = np.concatenate(blocks).astype(f32)
        q, am = quant8(data, code, bs)
        w.case({"name": name, "kind": "8bit", "code": code_name, "blocksize": bs},
               {"input": data, "q": q, "absmax": am, "dequant": dequant8(q, am, code, bs)})

    # Python float repr
    vals = [0.0, -0.0, 1.0, -1.0, 2.5, 3.0, 0.1, 0.1 + 0.2, 1e-4, 1e-5, 0.0001234, 0.00001234, 1e15, 1e16,
            123456789012345678.0, 9999999999999998.0, 1e21, 1e22, 1e-7, 1.5e-7, 5e-324, 1.7976931348623157e308,
            2.2250738585072014e-308, 1e100, 1e-100, 12345.678, float(f32(0.03125041723251343)), float(f32(1e-5)),
            float(f32(1.0105469226837158)), 100.0, 65504.0, 1e5, 1e6, 1234567890123456.7]
    vals += [float(f32(v)) for v in (rng.standard_normal(150) * np.exp(rng.normal(size=150) * 8))]
    vals += [float(v) for v in (rng.standard_normal(150) * 10.0 ** rng.integers(-30, 30, size=150))]
    w.case({"name": "python_float_repr", "kind": "repr", "reprs": [repr(v) for v in vals]},
           {"values": np.array(vals, dtype=np.float64)})

    header = json.dumps({"generator": GENERATOR, "version": VERSION, "numpy": np.__version__,
                         "python": sys.version.split()[0], "cases": w.cases}).encode()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "nf4-golden.bin")
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(header)) + header + bytes(w.blob))
    os.replace(tmp, out)
    print(f"wrote {os.path.normpath(out)}: {len(w.cases)} cases, {os.path.getsize(out)} bytes (maps: {how})")


if __name__ == "__main__":
    main()
