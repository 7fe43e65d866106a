// One rank of a multi-GPU NCCL job (src/nccl.test.ts starts one per GPU when a machine has several). RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT come from the environment. Every rank builds every rank's input from the
// same formula, so it checks each collective against its definition (f64 accumulation in rank order) locally.
// Prints one JSON line: {"ok":true,"checks":N} or {"ok":false,"message":…}.
import { createNcclCommunicator } from "../../src/nccl";

type Arr = Float32Array | Float64Array | Int32Array;
const kinds = [Float32Array, Float64Array, Int32Array] as const;
const input = (C: (typeof kinds)[number], n: number, rank: number): Arr => {
  const a = new C(n);
  for (let i = 0; i < n; i++) a[i] = C === Int32Array ? ((i * 7 + rank * 13) % 23) - 11 : Math.sin(i * 0.37 + rank) * 3;
  return a;
};

function near(got: Arr, want: ArrayLike<number>, what: string, tol: number): void {
  if (got.length !== want.length) throw new Error(`${what}: length ${got.length}, expected ${want.length}`);
  for (let i = 0; i < want.length; i++)
    if (Math.abs(got[i] - want[i]) > tol * (1 + Math.abs(want[i])))
      throw new Error(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
}

try {
  const comm = await createNcclCommunicator({ timeoutMs: 60_000 });
  const N = comm.worldSize;
  let checks = 0;
  for (const C of kinds) {
    const tol = C === Float32Array ? 1e-6 : C === Float64Array ? 1e-12 : 0;
    for (const n of [1, 7, 1001, 65537]) {
      const parts = Array.from({ length: N }, (_, r) => input(C, n, r));
      const sum = Float64Array.from({ length: n }, (_, i) => parts.reduce((s, p) => s + p[i], 0));
      const x = input(C, n, comm.rank);
      await comm.allReduce(x, "sum").done;
      near(x, sum, `${C.name} allReduce sum n=${n}`, tol);
      const mx = input(C, n, comm.rank);
      await comm.allReduce(mx, "max").done;
      near(
        mx,
        Array.from({ length: n }, (_, i) => Math.max(...parts.map((p) => p[i]))),
        `${C.name} max n=${n}`,
        0,
      );
      if (C !== Int32Array) {
        const av = input(C, n, comm.rank);
        await comm.allReduce(av, "avg").done;
        near(
          av,
          Array.from(sum, (v) => v / N),
          `${C.name} avg n=${n}`,
          tol,
        );
      }
      const gathered = await comm.allGather(input(C, n, comm.rank)).done;
      near(
        gathered,
        parts.flatMap((p) => Array.from(p)),
        `${C.name} allGather n=${n}`,
        0,
      );
      const m = n * N;
      const big = Array.from({ length: N }, (_, r) => input(C, m, r));
      const scattered = await comm.reduceScatter(input(C, m, comm.rank), "sum").done;
      const want = Array.from({ length: n }, (_, i) => big.reduce((s, p) => s + p[comm.rank * n + i], 0));
      near(scattered, want, `${C.name} reduceScatter n=${n}`, tol);
      const b = input(C, n, comm.rank);
      await comm.broadcast(b, N - 1).done;
      near(b, parts[N - 1], `${C.name} broadcast n=${n}`, 0);
      checks += C === Int32Array ? 5 : 6;
    }
  }
  // several in flight at once, awaited in reverse
  const handles = Array.from({ length: 4 }, (_, k) => comm.allReduce(Float32Array.of(k + comm.rank), "sum"));
  for (const h of handles.reverse()) await h.done;
  await comm.barrier().done;
  await comm.close();
  console.log(JSON.stringify({ ok: true, checks: checks + 2 }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, message: (error as Error).message }));
}
