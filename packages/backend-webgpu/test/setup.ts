/** Shared test setup: a WebGPU backend on this runtime's edge, or the reason there is none. */
import { createWebGpuBackend, type WebGpuBackend, type WebGpuBackendOptions } from "../src/backend.ts";
import { type RequestWebGpuOptions, WebGpuUnavailableError } from "../src/index.ts";

export const isDeno = "Deno" in globalThis;

/** Per-test timeout: Bun's default (5 s) is too short for lavapipe on a loaded 2-core machine. */
export const TIMEOUT_MS = 300_000;

/** Acquire a device through the runtime's edge and build a backend; a string says why not. */
export async function acquireBackend(opts: WebGpuBackendOptions = {}, request: RequestWebGpuOptions = {}): Promise<WebGpuBackend | string> {
  try {
    const edge = isDeno ? await import("../src/deno.ts") : await import("../src/node.ts");
    return createWebGpuBackend(await edge.requestWebGpu(request), opts);
  } catch (err) {
    if (err instanceof WebGpuUnavailableError) return err.message;
    throw err;
  }
}
