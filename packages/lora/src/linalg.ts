/**
 * Small dense linear algebra in float64 for the adapter initialisations (PiSSA, OLoRA, LoftQ): thin SVD by
 * one-sided Jacobi, Householder QR with LAPACK's sign convention (so R and Q match torch.linalg.qr), and
 * Halko's randomized low-rank SVD (torch.svd_lowrank). Matrices are row-major Float64Array.
 * Readable rather than fast: these run once per layer at adapter creation.
 */
export interface Mat {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float64Array;
}

export function mat(rows: number, cols: number, data?: ArrayLike<number>): Mat {
  const d = new Float64Array(rows * cols);
  if (data) d.set(data);
  return { rows, cols, data: d };
}

export function transpose(a: Mat): Mat {
  const out = mat(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < a.cols; j++) out.data[j * a.rows + i] = a.data[i * a.cols + j];
  return out;
}

export function matmul(a: Mat, b: Mat): Mat {
  if (a.cols !== b.rows) throw new Error(`linalg.matmul: ${a.rows}x${a.cols} @ ${b.rows}x${b.cols}`);
  const out = mat(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let k = 0; k < a.cols; k++) {
      const v = a.data[i * a.cols + k];
      if (v === 0) continue;
      const bo = k * b.cols;
      const oo = i * b.cols;
      for (let j = 0; j < b.cols; j++) out.data[oo + j] += v * b.data[bo + j];
    }
  return out;
}

/** Columns [0, k) of a. */
export function leftCols(a: Mat, k: number): Mat {
  const out = mat(a.rows, k);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < k; j++) out.data[i * k + j] = a.data[i * a.cols + j];
  return out;
}
/** Rows [0, k) of a. */
export function topRows(a: Mat, k: number): Mat {
  return mat(k, a.cols, a.data.subarray(0, k * a.cols));
}

export interface Svd {
  /** [m, k] left singular vectors (columns). */
  readonly u: Mat;
  /** k singular values, descending. */
  readonly s: Float64Array;
  /** [k, n] right singular vectors (rows): a = u · diag(s) · vt. */
  readonly vt: Mat;
}

/**
 * Thin SVD (k = min(m, n)) by one-sided Jacobi rotations on the columns (Hestenes), accurate to float64
 * round-off. Sign convention (SVD signs are arbitrary in LAPACK too): each right singular vector's
 * largest-magnitude entry is made positive, and the fixture script applies the same rule to torch's SVD.
 */
export function svd(a: Mat): Svd {
  if (a.rows < a.cols) {
    const t = svd(transpose(a));
    return canonical({ u: transpose(t.vt), s: t.s, vt: transpose(t.u) });
  }
  const m = a.rows;
  const n = a.cols;
  const u = Float64Array.from(a.data); // columns get orthogonalised in place
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++)
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const up = u[i * n + p];
          const uq = u[i * n + q];
          alpha += up * up;
          beta += uq * uq;
          gamma += up * uq;
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta) || gamma === 0) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const up = u[i * n + p];
          const uq = u[i * n + q];
          u[i * n + p] = c * up - s * uq;
          u[i * n + q] = s * up + c * uq;
        }
        for (let i = 0; i < n; i++) {
          const vp = v[i * n + p];
          const vq = v[i * n + q];
          v[i * n + p] = c * vp - s * vq;
          v[i * n + q] = s * vp + c * vq;
        }
      }
    if (!rotated) break;
  }
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < m; i++) s += u[i * n + j] ** 2;
    norms[j] = Math.sqrt(s);
  }
  const order = [...Array(n).keys()].sort((x, y) => norms[y] - norms[x]);
  const U = mat(m, n);
  const S = new Float64Array(n);
  const Vt = mat(n, n);
  order.forEach((j, k) => {
    S[k] = norms[j];
    for (let i = 0; i < m; i++) U.data[i * n + k] = norms[j] > 0 ? u[i * n + j] / norms[j] : 0;
    for (let i = 0; i < n; i++) Vt.data[k * n + i] = v[i * n + j];
  });
  return canonical({ u: U, s: S, vt: Vt });
}

function canonical(r: Svd): Svd {
  const { u, vt } = r;
  for (let k = 0; k < vt.rows; k++) {
    let best = 0;
    for (let i = 0; i < vt.cols; i++)
      if (Math.abs(vt.data[k * vt.cols + i]) > Math.abs(vt.data[k * vt.cols + best])) best = i;
    if (vt.data[k * vt.cols + best] < 0) {
      for (let i = 0; i < vt.cols; i++) vt.data[k * vt.cols + i] = -vt.data[k * vt.cols + i];
      for (let i = 0; i < u.rows; i++) u.data[i * u.cols + k] = -u.data[i * u.cols + k];
    }
  }
  return r;
}

/**
 * Reduced QR (q [m, k], r [k, n], k = min(m, n)) by Householder reflections exactly as LAPACK's dgeqrf/dorgqr
 * build them (dlarfg: beta = −sign(alpha)·‖x‖, tau = (beta − alpha)/beta; no reflection when the tail is 0),
 * so the signs of R's diagonal and Q's columns are torch.linalg.qr's.
 */
export function qr(a: Mat): { q: Mat; r: Mat } {
  const m = a.rows;
  const n = a.cols;
  const k = Math.min(m, n);
  const w = Float64Array.from(a.data);
  const vs: Float64Array[] = [];
  const taus = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    const alpha = w[j * n + j];
    let xnorm2 = 0;
    for (let i = j + 1; i < m; i++) xnorm2 += w[i * n + j] ** 2;
    const v = new Float64Array(m - j);
    v[0] = 1;
    if (xnorm2 === 0) {
      taus[j] = 0;
      vs.push(v);
      continue;
    }
    const beta = -(alpha >= 0 ? 1 : -1) * Math.hypot(alpha, Math.sqrt(xnorm2));
    const tau = (beta - alpha) / beta;
    const scale = 1 / (alpha - beta);
    for (let i = j + 1; i < m; i++) v[i - j] = w[i * n + j] * scale;
    taus[j] = tau;
    vs.push(v);
    w[j * n + j] = beta;
    for (let i = j + 1; i < m; i++) w[i * n + j] = 0;
    for (let c = j + 1; c < n; c++) {
      let dot = 0;
      for (let i = j; i < m; i++) dot += v[i - j] * w[i * n + c];
      dot *= tau;
      for (let i = j; i < m; i++) w[i * n + c] -= dot * v[i - j];
    }
  }
  const r = mat(k, n);
  for (let i = 0; i < k; i++) for (let c = i; c < n; c++) r.data[i * n + c] = w[i * n + c];
  // Q = H0 H1 … H(k-1) applied to the first k columns of the identity, last reflection first (dorgqr)
  const q = mat(m, k);
  for (let i = 0; i < k; i++) q.data[i * k + i] = 1;
  for (let j = k - 1; j >= 0; j--) {
    const v = vs[j];
    const tau = taus[j];
    if (tau === 0) continue;
    for (let c = 0; c < k; c++) {
      let dot = 0;
      for (let i = j; i < m; i++) dot += v[i - j] * q.data[i * k + c];
      dot *= tau;
      for (let i = j; i < m; i++) q.data[i * k + c] -= dot * v[i - j];
    }
  }
  return { q, r };
}

/**
 * Randomized rank-q SVD (Halko et al. 2009, Alg. 5.1, as torch.svd_lowrank): an orthonormal basis of
 * range(a·R) refined by `niter` power iterations, then the exact SVD of the small projection.
 * `gaussian(n)` supplies the random draws (the package passes its Philox generator).
 */
export function svdLowRank(a: Mat, q: number, niter: number, gaussian: (n: number) => ArrayLike<number>): Svd {
  const R = mat(a.cols, q, gaussian(a.cols * q));
  const at = transpose(a);
  let Q = qr(matmul(a, R)).q;
  for (let i = 0; i < niter; i++) {
    Q = qr(matmul(at, Q)).q;
    Q = qr(matmul(a, Q)).q;
  }
  const B = matmul(transpose(Q), a); // [q, n]
  const small = svd(B);
  return canonical({ u: matmul(Q, small.u), s: small.s, vt: small.vt });
}
