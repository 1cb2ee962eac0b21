/** WebGPU edge for browsers (and web workers): navigator.gpu. */
import { acquireDevice } from "./acquire.ts";
import { type RequestWebGpuOptions, type WebGpuContext, WebGpuUnavailableError } from "./types.ts";

export * from "./index.ts";

export async function requestWebGpu(opts: RequestWebGpuOptions = {}): Promise<WebGpuContext> {
  const g = globalThis as { navigator?: { gpu?: GPU }; isSecureContext?: boolean };
  const gpu = g.navigator?.gpu;
  if (!gpu) {
    if (g.isSecureContext === false) {
      throw new WebGpuUnavailableError(
        "insecure-context",
        "browser",
        "WebGPU exists only in secure contexts: serve the page over https or from localhost/127.0.0.1",
      );
    }
    throw new WebGpuUnavailableError(
      "no-webgpu-api",
      "browser",
      "this runtime has no navigator.gpu: use a browser with WebGPU enabled (e.g. Chrome/Edge 113+); " +
        "under Node or Bun use @lowrank/backend-webgpu/node, under Deno /deno",
    );
  }
  return acquireDevice(gpu, "browser", opts, {
    noAdapterHint: "the browser offered no adapter (WebGPU blocked or disabled for this GPU; headless Chromium needs --enable-unsafe-webgpu)",
    onRelease: () => {},
  });
}
