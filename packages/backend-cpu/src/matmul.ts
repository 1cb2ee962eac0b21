/**
 * The matmul engine behind CpuBackend.matmul: packed row-major f32 C[M,N] = A[M,K]·B[K,N].
 * This file picks the implementation; kernels/matmul.ts holds the TypeScript kernels.
 */
import { matmulBlocked } from "./kernels/matmul.ts";

export interface MatmulEngine {
  matmul(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number): void;
  describe(): string;
  dispose(): void;
}

export function createMatmulEngine(_opts: { threads?: number; wasm?: boolean } = {}): MatmulEngine {
  return {
    matmul: (A, B, C, M, N, K) => matmulBlocked(A, B, C, M, N, K),
    describe: () => "1 thread, typescript",
    dispose: () => {},
  };
}
