/**
 * WebGPU edge for Deno: the built-in navigator.gpu (wgpu). Older Deno releases expose it only
 * with `--unstable-webgpu`; wgpu has no dawn.node-style lifetime hazard, but the context still
 * holds the GPU object for symmetry with the other edges.
 */
import { acquireDevice } from "./acquire.ts";
import { type RequestWebGpuOptions, VULKAN_HINT, type WebGpuContext, WebGpuUnavailableError } from "./types.ts";

export * from "./index.ts";

export async function requestWebGpu(opts: RequestWebGpuOptions = {}): Promise<WebGpuContext> {
  const deno = (globalThis as { Deno?: { version?: { deno?: string } } }).Deno;
  if (!deno) {
    throw new WebGpuUnavailableError("wrong-runtime", "deno", "the Deno edge runs only under Deno; use @lowrank/backend-webgpu/node (Node, Bun) or /browser");
  }
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu) {
    throw new WebGpuUnavailableError(
      "deno-needs-unstable-webgpu",
      "deno",
      `Deno ${deno.version?.deno ?? ""} exposes no navigator.gpu; run it with the flag: \`deno run --unstable-webgpu ...\``,
    );
  }
  return acquireDevice(gpu, "deno", opts, {
    noAdapterHint: `wgpu found no usable Vulkan adapter; ${VULKAN_HINT}`,
    onRelease: () => {},
  });
}
