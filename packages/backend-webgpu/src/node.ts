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
import { type RequestWebGpuOptions, VULKAN_HINT, type WebGpuContext, WebGpuUnavailableError } from "./types.ts";

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
    noAdapterHint:
      process.platform === "linux"
        ? `Dawn found no usable Vulkan adapter (Debian 12's own Mesa 22.3 is too old for Dawn; it needs 25.x from bookworm-backports); ${VULKAN_HINT}`
        : `Dawn found no usable adapter on ${process.platform}; update the GPU driver or use the CPU backend (--backend cpu)`,
    onRelease: () => pinned.delete(gpu),
    aroundAdapter: withoutDawnLimitWarnings,
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

/**
 * Dawn prints limit-clamping warnings straight to the process's stderr (fd 2) when it enumerates
 * an adapter that reports huge dynamic-buffer limits (lavapipe: "maxDynamicUniformBuffers-
 * PerPipelineLayout artificially reduced ..."): noise on every CLI start, even when the CPU is
 * chosen. Around requestAdapter fd 2 points at a temporary file (libc dup/dup2 through koffi,
 * where it loads); afterwards every other line is written back to stderr, so nothing else is lost.
 */
const DAWN_NOISE = /^Warning: maxDynamic\w+PerPipelineLayout artificially reduced/;

async function withoutDawnLimitWarnings<T>(fn: () => Promise<T>): Promise<T> {
  const redirect = await stderrRedirect();
  if (!redirect) return fn();
  const fs = await import("node:fs");
  const { join } = await import("node:path");
  const { tmpdir } = await import("node:os");
  const path = join(tmpdir(), `lowrank-dawn-${process.pid}-${Date.now()}.log`);
  const fd = fs.openSync(path, "w+");
  const saved = redirect.dup(2);
  try {
    if (saved < 0 || redirect.dup2(fd, 2) < 0) return await fn();
    try {
      return await fn();
    } finally {
      redirect.dup2(saved, 2);
    }
  } finally {
    if (saved >= 0) redirect.close(saved);
    fs.closeSync(fd);
    const text = fs.readFileSync(path, "utf8");
    fs.rmSync(path, { force: true });
    const kept = text.split("\n").filter((l) => l && !DAWN_NOISE.test(l));
    if (kept.length) process.stderr.write(`${kept.join("\n")}\n`);
  }
}

interface FdCalls {
  dup(fd: number): number;
  dup2(from: number, to: number): number;
  close(fd: number): number;
}

let fdCalls: Promise<FdCalls | null> | undefined;

/** libc's dup, dup2 and close through koffi (an optional dependency); null where either is missing. */
function stderrRedirect(): Promise<FdCalls | null> {
  fdCalls ??= (async () => {
    // Node only (Bun loads this edge too, but its N-API runs koffi less reliably); Linux and macOS.
    if ((process.platform !== "linux" && process.platform !== "darwin") || "bun" in process.versions) return null;
    try {
      // Behind a specifier bundlers cannot see, as backend-cpu's BLAS edge loads it.
      const { createRequire } = await import("node:module");
      const name = "koffi";
      const koffi = createRequire(import.meta.url)(name) as typeof import("koffi");
      const libc = koffi.load(process.platform === "darwin" ? "libSystem.B.dylib" : "libc.so.6");
      return {
        dup: libc.func("int dup(int)") as (fd: number) => number,
        dup2: libc.func("int dup2(int, int)") as (a: number, b: number) => number,
        close: libc.func("int close(int)") as (fd: number) => number,
      };
    } catch {
      return null;
    }
  })();
  return fdCalls;
}
