/**
 * WebGPU edge for Node and Bun: Dawn via the `webgpu` npm package (dawn.node).
 *
 * Lifetime rule (see shared/notes/environment.md §1): the object returned by `create()` owns the
 * Dawn instance. If it is garbage-collected while a device lives, the next Dawn event tick touches
 * freed memory and the process segfaults (Bun after its first GC; Node when the reference is a
 * temporary). So the GPU object is held twice: as a field of the returned context and in the
 * module-level `pinned` set below, until release() has destroyed the device.
 */
import { type AcquireHooks, acquireDevice, errText } from "./acquire.ts";
import { type RequestWebGpuOptions, VULKAN_HINT, type WebGpuContext, WebGpuUnavailableError } from "./index.ts";

export * from "./index.ts";

export interface RequestNodeWebGpuOptions extends RequestWebGpuOptions {
  /** Dawn toggles passed to `create()`, e.g. `["enable-dawn-features=allow_unsafe_apis"]`. */
  dawnFlags?: string[];
}

type DawnModule = typeof import("webgpu");

/** Every Dawn GPU object with a live device. Module-level so it is reachable from a GC root. */
const pinned = new Set<GPU>();
let dawn: Promise<DawnModule> | undefined;

/** Number of Dawn instances currently pinned (for tests and diagnostics). */
export function pinnedInstances(): number {
  return pinned.size;
}

export async function requestWebGpu(opts: RequestNodeWebGpuOptions = {}): Promise<WebGpuContext> {
  const mod = await loadDawn();
  let gpu: GPU;
  try {
    gpu = mod.create(opts.dawnFlags ?? []);
  } catch (err) {
    throw new WebGpuUnavailableError("module-load-failed", "node", `dawn.node create() failed (${errText(err)}); ${VULKAN_HINT}`, { cause: err });
  }
  // Pin before the first await: nothing else references `gpu` across the awaits below.
  pinned.add(gpu);
  const hooks: AcquireHooks = {
    noAdapterHint: process.platform === "linux"
      ? `Dawn found no usable Vulkan adapter (Debian 12's own Mesa 22.3 is too old for Dawn; it needs 25.x from bookworm-backports); ${VULKAN_HINT}`
      : `Dawn found no usable adapter on ${process.platform}; update the GPU driver or use the CPU backend (--backend cpu)`,
    onRelease: () => pinned.delete(gpu),
  };
  try {
    return await acquireDevice(gpu, "node", opts, hooks);
  } catch (err) {
    // Without an adapter nothing references the instance, so it can go. Once an adapter exists,
    // keep the instance pinned: the adapter may be finalized later and must not outlive it.
    if (err instanceof WebGpuUnavailableError && err.reason === "no-adapter") pinned.delete(gpu);
    throw err;
  }
}

function loadDawn(): Promise<DawnModule> {
  dawn ??= import("webgpu").then(
    (mod) => {
      installGlobals(mod.globals as Record<string, unknown>);
      return mod;
    },
    (err: unknown) => {
      dawn = undefined; // allow a retry after the system is fixed
      const msg = errText(err);
      const fix = /GLIBCXX|GLIBC_/.test(msg)
        ? "this dawn.node build needs a newer libstdc++/glibc than the system has; use webgpu@0.6.2 (pinned in package.json) on Debian 12"
        : /Cannot find (module|package)|ERR_MODULE_NOT_FOUND/.test(msg)
          ? "the `webgpu` package is not installed: run `npm install` at the repository root"
          : VULKAN_HINT;
      throw new WebGpuUnavailableError("module-load-failed", "node", `cannot load dawn.node from the \`webgpu\` package (${msg}); ${fix}`, { cause: err });
    },
  );
  return dawn;
}

/** The enum-like constants browsers and Deno define globally; shared kernel code uses them. */
const GLOBAL_CONSTANTS = ["GPUBufferUsage", "GPUMapMode", "GPUShaderStage", "GPUTextureUsage", "GPUColorWrite"];

function installGlobals(globals: Record<string, unknown>): void {
  const g = globalThis as Record<string, unknown>;
  for (const name of GLOBAL_CONSTANTS) if (g[name] === undefined && globals[name] !== undefined) g[name] = globals[name];
}
