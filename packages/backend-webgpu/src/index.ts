/**
 * The WebGPU backend without a runtime edge. Pick the edge for your runtime:
 *   `@lowrank/backend-webgpu/node`    Dawn (`webgpu` npm) under Node and Bun
 *   `@lowrank/backend-webgpu/deno`    Deno's built-in navigator.gpu (wgpu)
 *   `@lowrank/backend-webgpu/browser` the browser's navigator.gpu
 * This module imports no edge, so it is safe to load anywhere. The shared types live in types.ts.
 */
export * from "./types.ts";
export { WebGpuBackend, createWebGpuBackend, GpuStorage, type GpuInput, type WebGpuBackendOptions, type WebGpuMemoryStats } from "./backend.ts";
export {
  WebGpuBackendError,
  WebGpuDeviceLostError,
  WebGpuDisposedError,
  WebGpuKernelError,
  WebGpuLimitError,
  WebGpuOutOfMemoryError,
  WebGpuValidationError,
} from "./errors.ts";
