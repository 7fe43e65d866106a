/**
 * Parity of an op declared with defineOp: its kernels on a backend (implementation "auto") against its
 * reference implementation on the reference backend, forward and backward, on the inputs you give.
 * Framework-free (returns a result; assertOpParity throws ParityError), so any package's tests use it.
 */
import { backward } from "../autograd";
import { referenceBackend } from "../backend/reference";
import type { Backend, DType } from "../backend/types";
import type { DefinedOp } from "../define-op";
import { Generator } from "../random";
import { tensor } from "../tensor";
import { ParityError, type Tolerance, TOL_ACC } from "./parity";

export interface OpParityInput {
  /** Values (row-major); integers for i32 inputs. */
  readonly values: ArrayLike<number>;
  readonly shape: readonly number[];
  readonly dtype?: DType;
  /** Check this input's gradient (float inputs only). */
  readonly requiresGrad?: boolean;
}

export interface OpParityOptions {
  /** Default TOL_ACC: |a − r| ≤ atol + rtol·|r| per element. */
  readonly tolerance?: Tolerance;
  /** Also compare gradients (default true when the op has inputs that require grad). */
  readonly backward?: boolean;
  /** Seed of the upstream gradient (default 7). */
  readonly seed?: number;
  /** The oracle's backend (default: the shared reference backend). */
  readonly reference?: Backend;
}

export interface OpParityResult {
  readonly op: string;
  readonly backend: string;
  readonly ok: boolean;
  /** Worst |a − r| / (atol + rtol·|r|) of the output (≤ 1 passes). */
  readonly forward: number;
  /** The same per input (null where no gradient was compared). */
  readonly grads: readonly (number | null)[];
  readonly message: string;
}

function worstRatio(a: ArrayLike<number>, r: ArrayLike<number>, tol: Tolerance): number {
  if (a.length !== r.length) return Number.POSITIVE_INFINITY;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const bound = tol.atol + tol.rtol * Math.abs(r[i]);
    const d = Math.abs(a[i] - r[i]);
    const q = Number.isNaN(a[i]) !== Number.isNaN(r[i]) ? Number.POSITIVE_INFINITY : Number.isNaN(d) ? 0 : d / bound;
    if (q > worst) worst = q;
  }
  return worst;
}

interface Run {
  readonly out: Float32Array | Float64Array | Int32Array | Uint8Array;
  readonly grads: (Float32Array | Float64Array | Int32Array | Uint8Array | null)[];
}

function runOnce<A>(
  op: DefinedOp<A>,
  backend: Backend,
  impl: "auto" | "reference",
  inputs: readonly OpParityInput[],
  attrs: A,
  withGrad: boolean,
  seed: number,
): Run {
  const xs = inputs.map((inp) =>
    tensor(Array.from(inp.values), {
      shape: inp.shape,
      dtype: inp.dtype ?? "f32",
      backend,
      requiresGrad: withGrad && inp.requiresGrad === true,
    }),
  );
  try {
    const y = op.run(xs, attrs, impl);
    const out = y.toTypedArray();
    if (withGrad && y.requiresGrad) {
      const w = tensor(
        Array.from(new Generator(seed).uniform(y.size), (u) => 0.5 + u),
        { shape: y.shape, backend },
      );
      const p = y.mul(w);
      const s = p.sum();
      backward(s);
      for (const t of [w, p, s]) t.dispose();
    }
    y.dispose();
    return { out, grads: xs.map((x) => (x.grad ? x.grad.toTypedArray() : null)) };
  } finally {
    for (const x of xs) {
      x.grad?.dispose();
      x.dispose();
    }
  }
}

/** Compare op on `backend` (its kernels where declared) with op's reference on the reference backend. */
export function checkOpParity<A>(
  op: DefinedOp<A>,
  backend: Backend,
  inputs: readonly OpParityInput[],
  attrs: A,
  options: OpParityOptions = {},
): OpParityResult {
  const tol = options.tolerance ?? TOL_ACC;
  const withGrad = options.backward ?? inputs.some((i) => i.requiresGrad);
  const seed = options.seed ?? 7;
  const ref = runOnce(op, options.reference ?? referenceBackend, "reference", inputs, attrs, withGrad, seed);
  const got = runOnce(op, backend, "auto", inputs, attrs, withGrad, seed);
  const forward = worstRatio(got.out, ref.out, tol);
  const grads = inputs.map((_, i) => {
    const r = ref.grads[i];
    const a = got.grads[i];
    if (!r && !a) return null;
    if (!r || !a) return Number.POSITIVE_INFINITY;
    return worstRatio(a, r, tol);
  });
  const ok = forward <= 1 && grads.every((g) => g === null || g <= 1);
  const message =
    `${op.opName} on ${backend.name} vs reference: forward ${forward.toPrecision(3)}×tol` +
    grads.map((g, i) => (g === null ? "" : `, grad ${i} ${g.toPrecision(3)}×tol`)).join("");
  return { op: op.opName, backend: backend.name, ok, forward, grads, message };
}

/** checkOpParity that throws ParityError (naming the op, backend and the worst output) on a mismatch. */
export function assertOpParity<A>(
  op: DefinedOp<A>,
  backend: Backend,
  inputs: readonly OpParityInput[],
  attrs: A,
  options: OpParityOptions = {},
): OpParityResult {
  const r = checkOpParity(op, backend, inputs, attrs, options);
  if (!r.ok) throw new ParityError(r.message);
  return r;
}
