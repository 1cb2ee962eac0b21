/**
 * The matmul engine over a system BLAS: cblas_sgemm on the caller's arrays, no copies. Besides the
 * packed MatmulEngine call it takes strided operands (`gemm`), so transposed and row-strided views
 * reach the library as CblasTrans and leading dimensions (kernels/gemm-views.ts).
 */
import type { MatmulEngine } from "../matmul.ts";
import type { BlasLibrary } from "./library.ts";

/**
 * Below this many FLOPs (2·M·N·K) one thread does the product: OpenBLAS's own cut (M·N·K under
 * 262144) leaves LoRA's 4 MFLOP products on all threads, where waking them costs more than they
 * add. Measured on the 2-core VM (raw sgemm, 1 vs 2 threads): 2-4 MFLOP 1.2-1.4x faster on one,
 * 8-34 MFLOP about even, 134 MFLOP and up faster on two (numbers vary with the load).
 */
export const BLAS_PARALLEL_MIN_FLOPS = 16e6;

/**
 * OpenBLAS packs both operands before multiplying, which dominates skinny products such as LoRA's
 * x·Aᵀ [1024×256]·[256×8] and h·Bᵀ [1024×8]·[8×256]. In row blocks of SKINNY_ROWS each call stays
 * under its small-matrix cut and skips most packing; a transposed B with K ≤ SKINNY is first
 * copied to [K, N] (at most 16·N values). Measured (OpenBLAS 0.3.21 on the 2-core Cooper Lake VM,
 * one thread, medians of 6): x·Aᵀ 47 -> 87 GFLOP/s, h·Bᵀ 60 -> 74-78 GFLOP/s; blocks of 64 or 256
 * were slower for x·Aᵀ, and blocks without the copy slower for h·Bᵀ.
 */
const SKINNY = 16,
  SKINNY_ROWS = 128;

export class BlasEngine implements MatmulEngine {
  /** Threads the library reports after we set them (0: it cannot be told). */
  readonly threads: number;
  private scratch = new Float32Array(0);

  constructor(readonly lib: BlasLibrary, private readonly wanted: number, private readonly parallelMinFlops = BLAS_PARALLEL_MIN_FLOPS) {
    this.threads = lib.useThreads(wanted);
  }

  /** C[M,N] (row stride ldc) = op(A)·op(B) + beta·C; each array starts at its matrix's first element. */
  gemm(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    A: Float32Array,
    lda: number,
    B: Float32Array,
    ldb: number,
    C: Float32Array,
    ldc: number,
    beta = 0,
  ): void {
    if (M === 0 || N === 0) return;
    if (K === 0) {
      if (beta === 1) return;
      for (let i = 0; i < M; i++) C.fill(0, i * ldc, i * ldc + N);
      return;
    }
    // Thread counts are process-wide (another backend may have set a different one); small
    // products run on one.
    this.lib.useThreads(2 * M * N * K < this.parallelMinFlops ? 1 : this.wanted);
    // One row (decoding a token): sgemv streams the weight once; OpenBLAS's sgemm took 2-4x longer
    // for x·Wᵀ at [1x576]·[1536x576]ᵀ and [1x576]·[49152x576]ᵀ (measured, 0.3.21, 1 and 2 threads).
    if (M === 1 && !transA && this.lib.sgemv) {
      if (beta === 0) C.fill(0, 0, N); // y is an output: no NaN of a recycled array may survive a 0·y
      if (transB) this.lib.sgemv(false, N, K, B, ldb, A, C, beta); // W [N, K] · x
      else this.lib.sgemv(true, K, N, B, ldb, A, C, beta); // B [K, N]ᵀ · x
      return;
    }
    if (this.lib.kind !== "openblas" || Math.min(N, K) > SKINNY || M <= SKINNY_ROWS) {
      this.lib.sgemm(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, beta);
      return;
    }
    if (transB && K <= SKINNY) {
      if (this.scratch.length < K * N) this.scratch = new Float32Array(K * N);
      const Bt = this.scratch;
      for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) Bt[k * N + j] = B[j * ldb + k];
      [B, ldb, transB] = [Bt, N, false];
    }
    for (let i = 0; i < M; i += SKINNY_ROWS) {
      // Row i of op(A) starts at row i of A, or at column i when A is stored transposed.
      const a = A.subarray(transA ? i : i * lda);
      this.lib.sgemm(transA, transB, Math.min(SKINNY_ROWS, M - i), N, K, a, lda, B, ldb, C.subarray(i * ldc), ldc, beta);
    }
  }

  matmul(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number, transB = false): void {
    this.gemm(false, transB, M, N, K, A, K, B, transB ? K : N, C, N);
  }

  describe(): string {
    const threads = this.threads ? `, ${this.threads} thread${this.threads === 1 ? "" : "s"}` : "";
    return `${this.lib.label}${threads}, ${this.lib.path}`;
  }

  dispose(): void {}
}
