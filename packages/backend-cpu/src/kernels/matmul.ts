/**
 * f32 matmul on packed row-major operands: C[M,N] = A[M,K] · B[K,N].
 * `matmulNaive` is the plain triple loop every benchmark compares against; `matmulBlocked` is the
 * TypeScript fallback (i-k-j order, 4 rows at a time) used where WASM is unavailable.
 */
export function matmulNaive(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number): void {
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[i * K + k] * B[k * N + j];
      C[i * N + j] = s;
    }
  }
}

export function matmulBlocked(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number, rowStart = 0, rowEnd = M): void {
  C.fill(0, rowStart * N, rowEnd * N);
  let i = rowStart;
  for (; i + 4 <= rowEnd; i += 4) {
    const c0 = i * N,
      c1 = c0 + N,
      c2 = c1 + N,
      c3 = c2 + N;
    for (let k = 0; k < K; k++) {
      const a0 = A[i * K + k],
        a1 = A[(i + 1) * K + k],
        a2 = A[(i + 2) * K + k],
        a3 = A[(i + 3) * K + k];
      const bk = k * N;
      for (let j = 0; j < N; j++) {
        const b = B[bk + j];
        C[c0 + j] += a0 * b;
        C[c1 + j] += a1 * b;
        C[c2 + j] += a2 * b;
        C[c3 + j] += a3 * b;
      }
    }
  }
  for (; i < rowEnd; i++) {
    const ci = i * N;
    for (let k = 0; k < K; k++) {
      const a = A[i * K + k];
      const bk = k * N;
      for (let j = 0; j < N; j++) C[ci + j] += a * B[bk + j];
    }
  }
}
