import { CpuBackend, type CpuBackendOptions } from "./backend.ts";

export { type BlasStatus, CpuBackend, type CpuBackendOptions, type CpuHandle } from "./backend.ts";
export { BlasError } from "./blas/index.ts";
export { SIMD_CHOICES, type SimdChoice, SimdError } from "./wasm/simd.ts";
export { matmulNaive, matmulBlocked } from "./kernels/matmul.ts";
export { createMatmulEngine, type MatmulEngine, type MatmulEngineOptions, type WasmMatmulEngine } from "./matmul.ts";

export function createCpuBackend(opts: CpuBackendOptions = {}): CpuBackend {
  return new CpuBackend(opts);
}
