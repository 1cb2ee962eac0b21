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
/**
 * LoRA's weight gradients gA = ghᵀ·x [r, K]·... and gB = gyᵀ·h are transposed-A products with a
 * skinny side (≤ SKINNY) and a long sum over the batch's rows. OpenBLAS takes them at 37-49 GFLOP/s
 * in one call; summed in blocks of SKINNY_DEPTH rows (beta = 1 after the first) 65-75 (measured,
 * 0.3.21, one thread, [1024 rows] x 256/688 x r 8; blocks of 64-256 were within 10%, 32 slower).
 * gB's form (N skinny) is computed as its transpose Cᵀ = op(B)ᵀ·A (M skinny) and transposed back.
 */
const SKINNY_DEPTH = 128;

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
    if (this.lib.kind === "openblas" && transA && !transB && Math.min(M, N) <= SKINNY && K > 2 * SKINNY_DEPTH && 2 * M * N * K < this.parallelMinFlops) {
      this.skinnyDepth(M, N, K, A, lda, B, ldb, C, ldc, beta);
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

  /** C[M,N] = Aᵀ·B + beta·C, A stored [K, M], B [K, N], min(M, N) ≤ SKINNY: summed over blocks of K (see SKINNY_DEPTH). */
  private skinnyDepth(
    M: number,
    N: number,
    K: number,
    A: Float32Array,
    lda: number,
    B: Float32Array,
    ldb: number,
    C: Float32Array,
    ldc: number,
    beta: number,
  ): void {
    const flip = N < M; // gB's form: Cᵀ [N, M] = Bᵀ·A, into scratch, then transposed into C
    const [m, n, a, la, b, lb] = flip ? [N, M, B, ldb, A, lda] : [M, N, A, lda, B, ldb];
    let out = C,
      ldo = ldc,
      b0 = beta;
    if (flip) {
      if (this.scratch.length < m * n) this.scratch = new Float32Array(m * n);
      [out, ldo, b0] = [this.scratch, n, 0];
    }
    for (let k0 = 0; k0 < K; k0 += SKINNY_DEPTH) {
      const kb = Math.min(SKINNY_DEPTH, K - k0);
      this.lib.sgemm(true, false, m, n, kb, a.subarray(k0 * la), la, b.subarray(k0 * lb), lb, out, ldo, k0 === 0 ? b0 : 1);
    }
    if (!flip) return;
    const T = this.scratch;
    for (let i = 0; i < M; i++) {
      const c = i * ldc;
      if (beta === 0) for (let j = 0; j < N; j++) C[c + j] = T[j * M + i];
      else for (let j = 0; j < N; j++) C[c + j] = beta * C[c + j] + T[j * M + i];
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
