/**
 * Host-side f64 linear algebra for combining adapters: a thin QR (Householder) and a one-sided
 * Jacobi SVD. Matrices are row-major Float64Arrays with explicit (rows, cols).
 *
 * The LoRA use is `svdOfProduct(B, A)`: the SVD of B·A ([out, R]·[R, in]) without forming the
 * [out, in] product, via B = Qb·Rb, Aᵀ = Qa·Ra, then the R×R SVD of Rb·Raᵀ. R is the sum of the
 * combined ranks (tens), so the Jacobi sweeps stay tiny whatever the layer size.
 */

export interface Svd {
  /** [m, k] left singular vectors (orthonormal columns where s > 0). */
  u: Float64Array;
  /** k singular values, descending, >= 0. */
  s: Float64Array;
  /** [n, k] right singular vectors (so M = U·diag(s)·Vᵀ). */
  v: Float64Array;
  m: number;
  n: number;
  k: number;
}

/** Row-major [rows, cols] transpose. */
export function transposeMat(a: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
  return t;
}

/** [m, k]·[k, n]. */
export function matmulMat(a: Float64Array, b: Float64Array, m: number, k: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p];
      if (av === 0) continue;
      const bo = p * n;
      const co = i * n;
      for (let j = 0; j < n; j++) c[co + j] += av * b[bo + j];
    }
  }
  return c;
}

/**
 * Thin QR of a [m, n] matrix with m >= n by Householder reflections: Q [m, n] with orthonormal
 * columns, R [n, n] upper triangular, A = Q·R. Rank-deficient inputs are fine (R gets zero rows
 * where the column space runs out; Q stays orthonormal).
 */
export function qrThin(a: Float64Array, m: number, n: number): { q: Float64Array; r: Float64Array } {
  if (m < n) throw new RangeError(`qrThin: needs rows >= cols, got [${m}, ${n}]`);
  const w = Float64Array.from(a); // reduced in place to R (upper part)
  const vs: Float64Array[] = [];
  for (let j = 0; j < n; j++) {
    let norm = 0;
    for (let i = j; i < m; i++) norm += w[i * n + j] ** 2;
    norm = Math.sqrt(norm);
    const v = new Float64Array(m - j);
    if (norm === 0) {
      vs.push(v); // nothing to reflect; an all-zero v is the identity
      continue;
    }
    const x0 = w[j * n + j];
    const alpha = x0 > 0 ? -norm : norm;
    for (let i = j; i < m; i++) v[i - j] = w[i * n + j];
    v[0] -= alpha;
    let vn = 0;
    for (let i = 0; i < v.length; i++) vn += v[i] * v[i];
    vn = Math.sqrt(vn);
    if (vn > 0) for (let i = 0; i < v.length; i++) v[i] /= vn;
    vs.push(v);
    // W[j:, j:] -= 2 v (vᵀ W[j:, j:])
    for (let c = j; c < n; c++) {
      let dot = 0;
      for (let i = j; i < m; i++) dot += v[i - j] * w[i * n + c];
      for (let i = j; i < m; i++) w[i * n + c] -= 2 * v[i - j] * dot;
    }
  }
  const r = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) r[i * n + j] = w[i * n + j];
  // Q = H0·H1·…·H(n-1)·[I; 0]: apply the reflections in reverse to the first n unit columns.
  const q = new Float64Array(m * n);
  for (let i = 0; i < n; i++) q[i * n + i] = 1;
  for (let j = n - 1; j >= 0; j--) {
    const v = vs[j];
    for (let c = 0; c < n; c++) {
      let dot = 0;
      for (let i = j; i < m; i++) dot += v[i - j] * q[i * n + c];
      if (dot === 0) continue;
      for (let i = j; i < m; i++) q[i * n + c] -= 2 * v[i - j] * dot;
    }
  }
  return { q, r };
}

/**
 * SVD of a [m, n] matrix by one-sided Jacobi (Hestenes): rotate column pairs of a working copy
 * until all are orthogonal; the column norms are the singular values. Accurate to a few ulps of
 * the largest singular value; meant for small matrices (use `svdOfProduct` for LoRA deltas).
 */
export function svd(a: Float64Array, m: number, n: number): Svd {
  if (m < n) {
    const t = svd(transposeMat(a, m, n), n, m); // Mᵀ = V S Uᵀ
    return { u: t.v, s: t.s, v: t.u, m, n, k: t.k };
  }
  const k = n;
  const w = Float64Array.from(a); // [m, n], columns converge to U·S
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  const eps = 1e-15;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const wp = w[i * n + p];
          const wq = w[i * n + q];
          alpha += wp * wp;
          beta += wq * wq;
          gamma += wp * wq;
        }
        if (gamma === 0 || Math.abs(gamma) <= eps * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const wp = w[i * n + p];
          const wq = w[i * n + q];
          w[i * n + p] = c * wp - s * wq;
          w[i * n + q] = s * wp + c * wq;
        }
        for (let i = 0; i < n; i++) {
          const vp = v[i * n + p];
          const vq = v[i * n + q];
          v[i * n + p] = c * vp - s * vq;
          v[i * n + q] = s * vp + c * vq;
        }
      }
    }
    if (!rotated) break;
  }
  const norms = Array.from({ length: n }, (_, j) => {
    let s = 0;
    for (let i = 0; i < m; i++) s += w[i * n + j] ** 2;
    return Math.sqrt(s);
  });
  const order = norms.map((_, j) => j).sort((x, y) => norms[y] - norms[x]);
  const u = new Float64Array(m * k);
  const s = new Float64Array(k);
  const vOut = new Float64Array(n * k);
  order.forEach((j, col) => {
    s[col] = norms[j];
    for (let i = 0; i < m; i++) u[i * k + col] = norms[j] > 0 ? w[i * n + j] / norms[j] : 0;
    for (let i = 0; i < n; i++) vOut[i * k + col] = v[i * n + j];
  });
  return { u, s, v: vOut, m, n, k };
}

/**
 * SVD of the product B·A for B [m, r] and A [r, n] (r small), without forming B·A:
 * B = Qb·Rb, Aᵀ = Qa·Ra, so B·A = Qb·(Rb·Raᵀ)·Qaᵀ and only the r×r core needs Jacobi.
 * When r exceeds m or n the product is formed directly (it is small then anyway).
 */
export function svdOfProduct(b: Float64Array, a: Float64Array, m: number, r: number, n: number): Svd {
  if (r > m || r > n) return svd(matmulMat(b, a, m, r, n), m, n);
  const { q: qb, r: rb } = qrThin(b, m, r);
  const { q: qa, r: ra } = qrThin(transposeMat(a, r, n), n, r);
  const core = matmulMat(rb, transposeMat(ra, r, r), r, r, r);
  const c = svd(core, r, r);
  return { u: matmulMat(qb, c.u, m, r, r), s: c.s, v: matmulMat(qa, c.v, n, r, r), m, n, k: r };
}

/** torch.quantile's default (linear interpolation between the two nearest ranks). */
export function quantile(values: Float64Array, q: number): number {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile: q must be in [0, 1], got ${q}`);
  const sorted = Float64Array.from(values).sort();
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}
