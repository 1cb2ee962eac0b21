/**
 * The matmul engine over a system BLAS: cblas_sgemm on the caller's arrays, no copies. Besides the
 * packed MatmulEngine call it takes strided operands (`gemm`), so transposed and row-strided views
 * reach the library as CblasTrans and leading dimensions (kernels/gemm-views.ts).
 */
import type { MatmulEngine } from "../matmul.ts";
import type { BlasLibrary } from "./library.ts";

export class BlasEngine implements MatmulEngine {
  /** Threads the library reports after we set them (0: it cannot be told). */
  readonly threads: number;

  constructor(readonly lib: BlasLibrary, private readonly wanted: number) {
    this.threads = lib.useThreads(wanted);
  }

  /** C[M,N] (row stride ldc) = op(A)·op(B); each array starts at its matrix's first element. */
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, lda: number, B: Float32Array, ldb: number, C: Float32Array, ldc: number): void {
    if (M === 0 || N === 0) return;
    if (K === 0) {
      for (let i = 0; i < M; i++) C.fill(0, i * ldc, i * ldc + N);
      return;
    }
    // Thread counts are process-wide: another backend may have set a different one.
    this.lib.useThreads(this.wanted);
    this.lib.sgemm(transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  }

  matmul(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number): void {
    this.gemm(false, false, M, N, K, A, K, B, N, C, N);
  }

  describe(): string {
    const threads = this.threads ? `, ${this.threads} thread${this.threads === 1 ? "" : "s"}` : "";
    return `${this.lib.label}${threads}, ${this.lib.path}`;
  }

  dispose(): void {}
}
