/**
 * Adapter -> device acquisition shared by every edge. The edge supplies the GPU object and
 * decides how it is pinned; this file only talks WebGPU.
 */
import {
  REQUESTED_LIMITS,
  type RequestWebGpuOptions,
  type WebGpuAdapterInfo,
  type WebGpuContext,
  type WebGpuEdge,
  type WebGpuLimits,
  WebGpuUnavailableError,
} from "./types.ts";

export interface AcquireHooks {
  /** Appended to the "no adapter" message: what to install or enable on this edge. */
  noAdapterHint: string;
  /** Called once from release(), after the device is destroyed: unpin the GPU object. */
  onRelease(): void;
  /** Wraps requestAdapter (the Node edge filters Dawn's native stderr noise around it). */
  aroundAdapter?<T>(fn: () => Promise<T>): Promise<T>;
}

export async function acquireDevice(gpu: GPU, edge: WebGpuEdge, opts: RequestWebGpuOptions, hooks: AcquireHooks): Promise<WebGpuContext> {
  let adapter: GPUAdapter | null;
  try {
    const adapterOpts: GPURequestAdapterOptions = {};
    if (opts.powerPreference) adapterOpts.powerPreference = opts.powerPreference;
    if (opts.forceFallbackAdapter) adapterOpts.forceFallbackAdapter = true;
    const request = () => gpu.requestAdapter(adapterOpts);
    adapter = await (hooks.aroundAdapter ? hooks.aroundAdapter(request) : request());
  } catch (err) {
    throw new WebGpuUnavailableError("no-adapter", edge, `requestAdapter() failed (${errText(err)}); ${hooks.noAdapterHint}`, { cause: err });
  }
  if (!adapter) throw new WebGpuUnavailableError("no-adapter", edge, `no adapter found; ${hooks.noAdapterHint}`);

  // Ask for the adapter's own maxima: the defaults (128 MiB bindings, 256 MiB buffers) are too small for weights.
  const requiredLimits: Record<string, number> = {};
  for (const key of REQUESTED_LIMITS) {
    const v = (adapter.limits as unknown as Record<string, number | undefined>)[key];
    if (typeof v === "number") requiredLimits[key] = v;
  }
  const requiredFeatures: GPUFeatureName[] = [];
  if (opts.f16 !== false && adapter.features.has("shader-f16")) requiredFeatures.push("shader-f16");

  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ label: opts.label ?? "lowrank", requiredLimits, requiredFeatures });
  } catch (err) {
    throw new WebGpuUnavailableError(
      "device-request-failed",
      edge,
      `the adapter refused a device with limits ${JSON.stringify(requiredLimits)} and features [${requiredFeatures}] (${errText(err)}); ` +
        "retry with { f16: false } or report the adapter (lowrank backends)",
      { cause: err },
    );
  }
  return new Context(edge, gpu, adapter, device, await adapterInfoOf(adapter), hooks.onRelease);
}

class Context implements WebGpuContext {
  readonly adapterInfo: WebGpuAdapterInfo;
  readonly limits: WebGpuLimits;
  readonly features: readonly string[];
  // Strong references: the device must never outlive the GPU object that owns the Dawn instance.
  #gpu: GPU | null;
  #adapter: GPUAdapter | null;
  #device: GPUDevice | null;
  #onRelease: (() => void) | null;

  constructor(readonly edge: WebGpuEdge, gpu: GPU, adapter: GPUAdapter, device: GPUDevice, info: WebGpuAdapterInfo, onRelease: () => void) {
    this.#gpu = gpu;
    this.#adapter = adapter;
    this.#device = device;
    this.#onRelease = onRelease;
    this.adapterInfo = info;
    const limits: Record<string, number> = {};
    for (const key of REQUESTED_LIMITS) limits[key] = (device.limits as unknown as Record<string, number>)[key] ?? 0;
    this.limits = limits as WebGpuLimits;
    this.features = [...device.features].map(String).sort();
  }

  get released(): boolean {
    return this.#device === null;
  }
  get gpu(): GPU {
    return this.#gpu ?? released("gpu");
  }
  get adapter(): GPUAdapter {
    return this.#adapter ?? released("adapter");
  }
  get device(): GPUDevice {
    return this.#device ?? released("device");
  }

  release(): void {
    if (!this.#device) return;
    this.#device.destroy();
    this.#device = null;
    this.#adapter = null;
    this.#gpu = null;
    const onRelease = this.#onRelease;
    this.#onRelease = null;
    onRelease?.();
  }
}

function released(what: string): never {
  throw new Error(`WebGPU context already released: its ${what} is gone; acquire a new context (requestWebGpu) instead`);
}

async function adapterInfoOf(adapter: GPUAdapter): Promise<WebGpuAdapterInfo> {
  // `adapter.info` is the current API; requestAdapterInfo() is the pre-2024 one some runtimes still ship.
  const legacy = adapter as GPUAdapter & { requestAdapterInfo?: () => Promise<GPUAdapterInfo> };
  const info: Partial<GPUAdapterInfo> | undefined = adapter.info ?? (await legacy.requestAdapterInfo?.());
  return {
    vendor: String(info?.vendor ?? ""),
    architecture: String(info?.architecture ?? ""),
    description: String(info?.description ?? ""),
  };
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
