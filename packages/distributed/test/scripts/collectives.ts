// Every collective on odd sizes and every dtype against its definition (run inside an MPI job, see job.ts).
// Each rank's input is a deterministic function of (rank, case), so every rank can compute the reference itself.
import { type CommArray, type CommReduceOp, type Communicator, referenceCollectives } from "../../src/index";

export async function checkCollectives(comm: Communicator) {
  const { rank, worldSize } = comm;
  const ctors = { f32: Float32Array, f64: Float64Array, i32: Int32Array } as const;
  type DType = keyof typeof ctors;

  /**
   * Rank r's input for one case: integers in [-1000, 1000] (eighths for floats) from a multiplicative hash of
   * (seed, r, i), so every rank can compute every rank's input; sums of them are exact in f32 too.
   */
  function input(dtype: DType, n: number, r: number, seed: number): CommArray {
    const a = new ctors[dtype](n);
    const scale = dtype === "i32" ? 1 : 1 / 8;
    const key = Math.imul(seed, 0x9e3779b1) ^ Math.imul(r + 1, 0x85ebca6b);
    for (let i = 0; i < n; i++) a[i] = (((Math.imul(key ^ i, 0x27d4eb2d) >>> 0) % 2001) - 1000) * scale;
    return a;
  }
  const parts = (dtype: DType, n: number, seed: number) =>
    Array.from({ length: worldSize }, (_, r) => input(dtype, n, r, seed));

  const failures: string[] = [];
  function check(name: string, got: CommArray, want: Float64Array, dtype: DType): void {
    // f32 results are compared against the f64 reference rounded to f32 plus a few ulps of summation order.
    const tol = dtype === "f32" ? 1e-4 : dtype === "f64" ? 1e-12 : 0;
    if (got.length !== want.length) {
      failures.push(`${name}: length ${got.length} != ${want.length}`);
      return;
    }
    for (let i = 0; i < got.length; i++) {
      const err = Math.abs(got[i] - want[i]);
      if (!(err <= tol * Math.max(1, Math.abs(want[i])))) {
        failures.push(`${name}[${i}] rank ${rank}: ${got[i]} != ${want[i]}`);
        return;
      }
    }
  }

  const LARGE = 4096;
  let seed = 0;
  let cases = 0;
  for (const dtype of ["f32", "f64", "i32"] as DType[]) {
    for (const n of [1, 7, 1023, 65537]) {
      // Every op at the smaller sizes; at the large one (many transport fragments, slow to progress on an
      // oversubscribed machine) "sum" only: the ops are element-wise, the large size tests the transport.
      const all: CommReduceOp[] = dtype === "i32" ? ["sum", "max", "min"] : ["sum", "avg", "max", "min"];
      const ops = n > LARGE ? all.slice(0, 1) : all;
      for (const op of ops) {
        seed++;
        const data = input(dtype, n, rank, seed);
        await comm.allReduce(data, op).done;
        check(
          `allReduce ${dtype} n=${n} ${op}`,
          data,
          referenceCollectives.allReduce(parts(dtype, n, seed), op),
          dtype,
        );
        seed++;
        const m = n * worldSize;
        const rs = await comm.reduceScatter(input(dtype, m, rank, seed), op).done;
        check(
          `reduceScatter ${dtype} n=${m} ${op}`,
          rs,
          referenceCollectives.reduceScatter(parts(dtype, m, seed), op, rank),
          dtype,
        );
        cases += 2;
      }
      seed++;
      const g = await comm.allGather(input(dtype, n, rank, seed)).done;
      check(`allGather ${dtype} n=${n}`, g, referenceCollectives.allGather(parts(dtype, n, seed)), dtype);
      seed++;
      const gb = comm.allGatherBlocking?.(input(dtype, n, rank, seed)) ?? new Float64Array(0);
      check(`allGatherBlocking ${dtype} n=${n}`, gb, referenceCollectives.allGather(parts(dtype, n, seed)), dtype);
      cases++;
      for (let root = 0; root < worldSize; root++) {
        seed++;
        const b = input(dtype, n, rank, seed);
        await comm.broadcast(b, root).done;
        check(`broadcast ${dtype} n=${n} root=${root}`, b, Float64Array.from(input(dtype, n, root, seed)), dtype);
        cases++;
      }
      cases++;
    }
  }
  // Several collectives in flight at once, completed out of order of awaiting.
  const x = input("f32", 4099, rank, 999);
  const y = input("f64", 333, rank, 998);
  const hx = comm.allReduce(x, "sum");
  const hy = comm.allReduce(y, "max");
  await hy.done;
  await hx.done;
  check("overlapped allReduce f32", x, referenceCollectives.allReduce(parts("f32", 4099, 999), "sum"), "f32");
  check("overlapped allReduce f64", y, referenceCollectives.allReduce(parts("f64", 333, 998), "max"), "f64");
  await comm.barrier().done;
  const all = await comm.allGather(new Int32Array([failures.length])).done;
  if (failures.length) console.error(failures.join("\n"));
  return { worldSize, cases: cases + 2, failuresPerRank: [...all], failures };
}
