/**
 * Backend selection at the edge: --backend, else LOWRANK_BACKEND, else auto. The packages below
 * never choose a device themselves; the CLI (and later the server) does it here.
 */
import type { Backend } from "@lowrank/tensor";
import { BlasError, type BlasStatus, createCpuBackend } from "@lowrank/backend-cpu";
import { createWebGpuBackend, describeAdapter, type WebGpuAdapterInfo, type WebGpuContext } from "@lowrank/backend-webgpu";
import { detectRuntime, type Runtime } from "./runtime.ts";

export const BACKEND_CHOICES = ["auto", "cpu", "webgpu"] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

/**
 * Software rasterizers (Mesa's llvmpipe/lavapipe, SwiftShader) run WGSL on the CPU; measured here
 * they are 5-8x slower than the CPU backend's WASM SIMD matmul, so auto skips them.
 */
export function isSoftwareAdapter(info: WebGpuAdapterInfo): boolean {
  const text = `${info.description} ${info.vendor} ${info.architecture}`.toLowerCase();
  return /software|llvmpipe|lavapipe|swiftshader/.test(text);
}

/** A bad --backend / LOWRANK_BACKEND value, or a backend that cannot run here. */
export class BackendError extends Error {
  override readonly name = "BackendError";
  constructor(message: string, readonly usage: boolean) {
    super(message);
  }
}

/** A BlasError (LOWRANK_BLAS names a library that does not load) reads like the backend errors: one line, no stack. */
export function asBackendError(err: unknown): BackendError | null {
  if (err instanceof BackendError) return err;
  if (err instanceof BlasError) return new BackendError(err.message, false);
  return null;
}

/** One line on the CPU backend's matmul library: which, where, through which FFI, and why; or why none. */
export function describeBlas(blas: BlasStatus): string {
  if (!blas.active) return `none, matmul on the WASM kernel: ${blas.reason}`;
  return `${blas.library}${blas.core ? ` (${blas.core})` : ""} at ${blas.path} via ${blas.via}: ${blas.reason}`;
}

export type WebGpuProbe =
  | { available: true; runtime: Runtime; implementation: string; adapter: WebGpuAdapterInfo; description: string; f16: boolean }
  | { available: false; runtime: Runtime; cause: string; /** WebGpuUnavailableError.reason, when that is the error. */ reason?: string };

export interface BackendSelection {
  name: "cpu" | "webgpu";
  backend: Backend;
  requested: BackendChoice;
  /** Where the request came from. */
  source: "--backend" | "LOWRANK_BACKEND" | "default";
  /** One line: why this backend (auto) or that it was asked for. */
  reason: string;
}

export function isBackendChoice(v: string): v is BackendChoice {
  return (BACKEND_CHOICES as readonly string[]).includes(v);
}

/** Resolve the request: option, else LOWRANK_BACKEND, else auto. Throws a usage BackendError on bad values. */
export function resolveChoice(
  choice: string | undefined,
  env: Record<string, string | undefined> = process.env,
): { requested: BackendChoice; source: BackendSelection["source"] } {
  const [value, source]: [string, BackendSelection["source"]] =
    choice !== undefined ? [choice, "--backend"] : env.LOWRANK_BACKEND ? [env.LOWRANK_BACKEND, "LOWRANK_BACKEND"] : ["auto", "default"];
  if (!isBackendChoice(value)) {
    const where = source === "--backend" ? `--backend ${value}` : `LOWRANK_BACKEND=${value}`;
    throw new BackendError(`${where} is not a backend: use one of ${BACKEND_CHOICES.join(", ")}`, true);
  }
  return { requested: value, source };
}

/** Acquire a device through the WebGPU edge of this runtime. */
async function acquireWebGpu(runtime: Runtime): Promise<WebGpuContext> {
  // Dynamic imports: Deno must not load dawn.node, Node/Bun have no built-in navigator.gpu.
  return runtime === "deno"
    ? await (await import("@lowrank/backend-webgpu/deno")).requestWebGpu()
    : await (await import("@lowrank/backend-webgpu/node")).requestWebGpu();
}

/** Acquire a WebGPU device through the edge for this runtime, describe it, and release it at once. */
export async function probeWebGpu(runtime: Runtime = detectRuntime()): Promise<WebGpuProbe> {
  let ctx: WebGpuContext;
  try {
    ctx = await acquireWebGpu(runtime);
  } catch (err) {
    const reason = (err as { reason?: unknown })?.reason;
    return { available: false, runtime, cause: err instanceof Error ? err.message : String(err), ...(typeof reason === "string" ? { reason } : {}) };
  }
  try {
    return {
      available: true,
      runtime,
      implementation: runtime === "deno" ? "wgpu (Deno built-in)" : "Dawn (webgpu npm)",
      adapter: ctx.adapterInfo,
      description: describeAdapter(ctx.adapterInfo),
      f16: ctx.features.includes("shader-f16"),
    };
  } finally {
    ctx.release();
  }
}

/** "llvmpipe: Mesa 25.0.7 ..." -> "llvmpipe" (for one-line reasons). */
export function shortAdapterName(probe: WebGpuProbe): string {
  if (!probe.available) return "none";
  const d = probe.adapter.description || probe.adapter.vendor || "unnamed";
  return d.split(/[:(]/)[0]!.trim() || d;
}

/** What auto picks and why, given a WebGPU probe. */
export function autoChoice(probe: WebGpuProbe): { name: "cpu" | "webgpu"; reason: string } {
  if (!probe.available) return { name: "cpu", reason: `webgpu unavailable${probe.reason ? ` (${probe.reason})` : ""}` };
  if (isSoftwareAdapter(probe.adapter)) {
    return {
      name: "cpu",
      reason: `webgpu adapter ${shortAdapterName(probe)} is a software rasterizer (slower than the cpu backend); --backend webgpu forces it`,
    };
  }
  return { name: "webgpu", reason: `webgpu adapter ${shortAdapterName(probe)} found` };
}

/**
 * Pick and create the backend: `choice` (the --backend option) wins, else LOWRANK_BACKEND, else auto.
 * The caller owns the returned backend and must dispose() it.
 */
export async function selectBackend(
  choice?: BackendChoice,
  env: Record<string, string | undefined> = process.env,
  probe?: WebGpuProbe,
): Promise<BackendSelection> {
  const { requested, source } = resolveChoice(choice, env);
  if (requested === "cpu") {
    return {
      name: "cpu",
      backend: createCpuBackend(),
      requested,
      source,
      reason: `requested by ${source === "--backend" ? "--backend cpu" : "LOWRANK_BACKEND=cpu"}`,
    };
  }
  const webgpu = probe ?? (await probeWebGpu());
  const where = source === "--backend" ? "--backend webgpu" : "LOWRANK_BACKEND=webgpu";
  if (requested === "webgpu" && !webgpu.available) {
    throw new BackendError(`${where}: the webgpu backend cannot run: ${webgpu.cause}. Use --backend cpu (or auto)`, false);
  }
  const auto = requested === "webgpu" ? { name: "webgpu" as const, reason: `requested by ${where}` } : autoChoice(webgpu);
  if (auto.name === "cpu") return { name: "cpu", backend: createCpuBackend(), requested, source, reason: auto.reason };
  // The backend owns the context: dispose() releases the device so the process can exit.
  const backend = createWebGpuBackend(await acquireWebGpu(webgpu.runtime));
  return { name: "webgpu", backend, requested, source, reason: auto.reason };
}
