/**
 * Benchmark of the reference backend (pure TS, single thread) against PyTorch 1.13 CPU eager f32
 * (torch.set_num_threads(1)) measured in the same run. Not a test. `pnpm --filter @qlora/tensor bench`.
 * Prints medians of several runs (ms) and the ratio ours/peer (higher = slower than PyTorch).
 */
import { spawnSync } from "node:child_process";
import { performance } from "node:perf_hooks";
import "../src/autograd";
import { swiglu } from "../src/fused/swiglu";
import * as ops from "../src/ops";
import { manualSeed } from "../src/random";
import { randn, tensor, tidy } from "../src/tensor";
import type { Tensor } from "../src/tensor";

const REPS = 5;
const cfg = { B: 1, S: 64, H: 8, KVH: 4, D: 32, INTER: 512, V: 512 };
const HID = cfg.H * cfg.D;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
function time(fn: () => void): number {
  fn(); // warm-up
  const t: number[] = [];
  for (let i = 0; i < REPS; i++) {
    const t0 = performance.now();
    fn();
    t.push(performance.now() - t0);
  }
  return median(t);
}

manualSeed(0);
const { B, S, H, KVH, D, INTER, V } = cfg;
const w = (o: number, i: number) => {
  const r = randn([o, i]);
  const s = r.mul(1 / Math.sqrt(i));
  r.dispose();
  s.requiresGrad = true;
  return s;
};
const p = {
  q: w(HID, HID),
  k: w(KVH * D, HID),
  v: w(KVH * D, HID),
  o: w(HID, HID),
  g: w(INTER, HID),
  u: w(INTER, HID),
  d: w(HID, INTER),
  head: w(V, HID),
};
const n1 = tensor(new Float32Array(HID).fill(1), { requiresGrad: true });
const n2 = tensor(new Float32Array(HID).fill(1), { requiresGrad: true });
const x = randn([B, S, HID]);
x.requiresGrad = true;
const pos = tensor(
  Int32Array.from({ length: B * S }, (_, i) => i % S),
  { shape: [B, S] },
);
const labels = tensor(
  Int32Array.from({ length: B * S }, (_, i) => (i * 7) % V),
  { shape: [B * S] },
);
const lin = (h: Tensor, wt: Tensor) => ops.matmul(h, wt.transpose(0, 1));

function block(): Tensor {
  return tidy(() => {
    const hn = ops.rmsNorm(x, n1, 1e-6);
    const q = ops.rope(lin(hn, p.q).reshape([B, S, H, D]), pos).transpose(1, 2);
    const k = ops.rope(lin(hn, p.k).reshape([B, S, KVH, D]), pos).transpose(1, 2);
    const v = lin(hn, p.v).reshape([B, S, KVH, D]).transpose(1, 2);
    const a = ops.attention(q, k, v).transpose(1, 2).reshape([B, S, HID]);
    const h = x.add(lin(a, p.o));
    const hn2 = ops.rmsNorm(h, n2, 1e-6);
    const out = h.add(lin(swiglu(lin(hn2, p.g), lin(hn2, p.u)), p.d));
    return ops.crossEntropy(lin(out, p.head).reshape([-1, V]), labels);
  });
}
const params = [...Object.values(p), n1, n2, x];
const clear = () =>
  params.forEach((t) => {
    t.grad?.dispose();
    t.grad = null;
  });

const ours: Record<string, number> = {};
const a = randn([256, 256]);
const b = randn([256, 256]);
ours["matmul 256³"] = time(() => ops.matmul(a, b).dispose());
ours["block forward"] = time(() => {
  const l = block();
  ops.sum(l).dispose();
  l.dispose();
});
ours["block forward+backward"] = time(() => {
  const l = block();
  l.backward();
  l.dispose();
  clear();
});

const py = `
import json, time, torch
torch.set_num_threads(1); torch.manual_seed(0)
B,S,H,KVH,D,INTER,V=${B},${S},${H},${KVH},${D},${INTER},${V}; HID=H*D
def med(f):
    f(); ts=[]
    for _ in range(${REPS}):
        t0=time.perf_counter(); f(); ts.append((time.perf_counter()-t0)*1e3)
    return sorted(ts)[len(ts)//2]
W=lambda o,i:(torch.randn(o,i)/i**0.5).requires_grad_(True)
p={k:W(o,i) for k,(o,i) in dict(q=(HID,HID),k=(KVH*D,HID),v=(KVH*D,HID),o=(HID,HID),g=(INTER,HID),u=(INTER,HID),d=(HID,INTER),head=(V,HID)).items()}
n1=torch.ones(HID,requires_grad=True); n2=torch.ones(HID,requires_grad=True)
x=torch.randn(B,S,HID,requires_grad=True); pos=torch.arange(S)[None].repeat(B,1); labels=(torch.arange(B*S)*7)%V
def rms(h,w): return w*(h*torch.rsqrt(h.pow(2).mean(-1,keepdim=True)+1e-6))
def rot(t): return torch.cat((-t[...,D//2:],t[...,:D//2]),-1)
inv=1.0/(10000**(torch.arange(0,D,2).float()/D)); fr=pos[...,None].float()*inv; emb=torch.cat((fr,fr),-1); cos,sin=emb.cos()[:,None],emb.sin()[:,None]
mask=torch.ones(S,S,dtype=torch.bool).tril()
def block():
    hn=rms(x,n1)
    q=(hn@p['q'].T).view(B,S,H,D).transpose(1,2); k=(hn@p['k'].T).view(B,S,KVH,D).transpose(1,2); v=(hn@p['v'].T).view(B,S,KVH,D).transpose(1,2)
    q=q*cos+rot(q)*sin; k=k*cos+rot(k)*sin
    k=k.repeat_interleave(H//KVH,1); v=v.repeat_interleave(H//KVH,1)
    s=(q@k.transpose(-1,-2)/D**0.5).masked_fill(~mask,float('-inf'))
    a=(torch.softmax(s,-1)@v).transpose(1,2).reshape(B,S,HID)
    h=x+a@p['o'].T; hn2=rms(h,n2)
    out=h+(torch.nn.functional.silu(hn2@p['g'].T)*(hn2@p['u'].T))@p['d'].T
    return torch.nn.functional.cross_entropy((out@p['head'].T).reshape(-1,V),labels)
a=torch.randn(256,256); b=torch.randn(256,256)
r={}
r['matmul 256³']=med(lambda: a@b)
with torch.no_grad(): r['block forward']=med(block)
def fb():
    l=block(); l.backward()
    for t in list(p.values())+[n1,n2,x]: t.grad=None
r['block forward+backward']=med(fb)
print(json.dumps(r))
`;
let peer: Record<string, number> = {};
const res = spawnSync("/usr/bin/python3", ["-c", py], { encoding: "utf8" });
if (res.status === 0) peer = JSON.parse(res.stdout.trim().split("\n").pop()!);
else console.error(`peer (PyTorch) unavailable: ${res.stderr?.slice(0, 300) ?? res.error}`);

console.log(
  `reference backend vs PyTorch ${"1.13"} CPU eager f32, 1 thread; B=${B} S=${S} hidden=${HID} heads=${H}/${KVH} inter=${INTER} vocab=${V}; median of ${REPS}`,
);
console.log("| op | ours (ms) | PyTorch (ms) | ratio ours/peer |");
console.log("|---|---:|---:|---:|");
for (const [k, v] of Object.entries(ours)) {
  const q = peer[k];
  console.log(
    `| ${k} | ${v.toFixed(2)} | ${q !== undefined ? q.toFixed(2) : "n/a"} | ${q !== undefined ? (v / q).toFixed(1) : "n/a"} |`,
  );
}
