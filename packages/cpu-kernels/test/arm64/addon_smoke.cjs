// Run by test/arm64-node.test.ts inside Debian's arm64 Node under qemu-aarch64. It loads the cross-built addon the
// way an npm install finds it (node-gyp-build, prebuilds/linux-arm64/) and checks N-API calls against f64
// references in plain JavaScript: f32 GEMM, the 4-bit GEMV (m = 1) and tiled 4-bit GEMM, AdamW's many scalar
// arguments, and the thread pool (bit-identical at 1 and 3 threads). It prints one JSON line, and the test asserts
// on it. Plain CommonJS, because Debian's arm64 Node is 18.
//   node addon_smoke.cjs <package dir holding prebuilds/> <path of node-gyp-build>
"use strict";
const [packageDir, nodeGypBuild] = process.argv.slice(2);
const native = require(nodeGypBuild)(packageDir);

let seed = 12345;
function random(n) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    a[i] = (seed / 2147483648) * 2 - 1;
  }
  return a;
}

// out [m, n] = a [m, k] · b [n, k]ᵀ: the worst error of an output against f64, in units of its bound
// k·2⁻²³·Σ|aᵢbᵢ| (≤ 1 passes), the bound the x64 GEMM tests use.
function worstRatio(out, a, b, n, k) {
  let worst = 0;
  for (let idx = 0; idx < out.length; idx++) {
    const i = Math.floor(idx / n),
      j = idx % n;
    let exact = 0,
      absSum = 0;
    for (let p = 0; p < k; p++) {
      exact += a[i * k + p] * b[j * k + p];
      absSum += Math.abs(a[i * k + p] * b[j * k + p]);
    }
    worst = Math.max(worst, Math.abs(out[idx] - exact) / (k * 2 ** -23 * absSum + 1e-30));
  }
  return worst;
}

function gemmCheck(m, k, n) {
  const a = random(m * k),
    b = random(n * k); // b is [n, k]: C = A·Bᵀ (transB)
  const c = new Float32Array(m * n);
  native.matmul(a, b, c, 1, m, k, n, false, true, m * k, k * n);
  return { c, worst: worstRatio(c, a, b, n, k) };
}

const NF4 = new Float32Array(
  new Uint32Array([
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000, 0x3da2faff,
    0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
  ]).buffer,
);

// W [n, k] in bitsandbytes' layout: element e in byte e/2, even e in the high nibble, one absmax per 64 elements.
function nf4Check(m, n, k) {
  const codes = new Uint8Array((n * k) / 2).map((_, i) => (i * 2654435761) >>> 24);
  const absmax = random((n * k) / 64).map((v) => 0.5 + Math.abs(v));
  const w = Float32Array.from({ length: n * k }, (_, e) => {
    const byte = codes[e >> 1];
    return Math.fround(NF4[e % 2 === 0 ? byte >> 4 : byte & 15] * absmax[Math.floor(e / 64)]);
  });
  const x = random(m * k),
    y = new Float32Array(m * n);
  native.matmul4bit(x, m, y, { quantType: "nf4", blocksize: 64, n, k, codes, absmax });
  return worstRatio(y, x, w, n, k);
}

// torch.optim.AdamW's update in f64, one step from zero moments (bias corrections 1 - β).
function adamwCheck(n) {
  const [lr, beta1, beta2, eps, wd] = [1e-3, 0.9, 0.999, 1e-8, 0.01];
  const p = random(n),
    g = random(n),
    m = new Float32Array(n),
    v = new Float32Array(n);
  const start = Float64Array.from(p);
  const bc1 = 1 - beta1,
    bc2 = 1 - beta2;
  native.optimAdamW32(p, g, m, v, n, 1 - lr * wd, beta1, 1 - beta1, beta2, 1 - beta2, eps, Math.sqrt(bc2), -lr / bc1);
  let worst = 0;
  for (let i = 0; i < n; i++) {
    const mi = (1 - beta1) * g[i],
      vi = (1 - beta2) * g[i] * g[i];
    const want = start[i] * (1 - lr * wd) - ((lr / bc1) * mi) / (Math.sqrt(vi) / Math.sqrt(bc2) + eps);
    worst = Math.max(worst, Math.abs(p[i] - want) / (1e-6 * Math.max(1, Math.abs(want))));
  }
  return worst;
}

seed = 12345;
native.setThreads(1);
const oneThread = gemmCheck(131, 77, 97);
seed = 12345; // the same operands again
native.setThreads(3);
const threeThreads = gemmCheck(131, 77, 97);
console.log(
  JSON.stringify({
    arch: process.arch,
    node: process.version,
    gemmIsa: native.gemmIsa(),
    gemvIsa: native.gemvIsa(),
    gemm: [oneThread.worst, threeThreads.worst],
    threadsBitIdentical: oneThread.c.every((v, i) => Object.is(v, threeThreads.c[i])),
    nf4Gemv: nf4Check(1, 67, 320),
    nf4Gemm: nf4Check(9, 67, 320),
    adamw: adamwCheck(1001),
  }),
);
