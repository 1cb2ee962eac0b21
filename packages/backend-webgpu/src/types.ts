/**
 * The WebGPU contract shared by the runtime edges (node.ts, deno.ts, browser.ts, through
 * acquire.ts) and the backend: the device context an edge hands over, the request options, and
 * why WebGPU is unavailable. It imports nothing, so it is safe to load anywhere.
 */

export type WebGpuEdge = "node" | "deno" | "browser";

export interface WebGpuAdapterInfo {
  readonly vendor: string;
  readonly architecture: string;
  readonly description: string;
}

/** The limits we raise to the adapter's maximum (kernels size their bindings and workgroups from these). */
export const REQUESTED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
] as const;

export type WebGpuLimits = { readonly [K in (typeof REQUESTED_LIMITS)[number]]: number };

/** A device plus everything that must outlive it. Call `release()` when done. */
export interface WebGpuContext {
  readonly edge: WebGpuEdge;
  /** The GPU object (`navigator.gpu` or Dawn's `create()` result); kept here so it outlives the device. */
  readonly gpu: GPU;
  readonly adapter: GPUAdapter;
  readonly device: GPUDevice;
  readonly adapterInfo: WebGpuAdapterInfo;
  /** The device's limits (snapshot taken at creation). */
  readonly limits: WebGpuLimits;
  /** Features enabled on the device, sorted. */
  readonly features: readonly string[];
  readonly released: boolean;
  /** Destroy the device and drop every reference so the process can exit. Idempotent. */
  release(): void;
}

export interface RequestWebGpuOptions {
  powerPreference?: GPUPowerPreference;
  forceFallbackAdapter?: boolean;
  /** Enable `shader-f16` when the adapter has it (default true). */
  f16?: boolean;
  /** Device label, shown in validation errors. */
  label?: string;
}

export type WebGpuUnavailableReason =
  /** The edge's implementation failed to load (dawn.node: missing libvulkan, GLIBCXX too old, ...). */
  | "module-load-failed"
  /** The runtime exposes no navigator.gpu. */
  | "no-webgpu-api"
  /** Deno without --unstable-webgpu. */
  | "deno-needs-unstable-webgpu"
  /** The browser hides WebGPU outside secure contexts (https or localhost). */
  | "insecure-context"
  /** The edge does not belong to this runtime (e.g. the Deno edge under Node). */
  | "wrong-runtime"
  /** requestAdapter() returned null or threw: usually no Vulkan/Metal/D3D driver. */
  | "no-adapter"
  /** The adapter refused the device request. */
  | "device-request-failed";

/** WebGPU is not usable here; `message` names the cause and the fix, `reason` is machine-readable. */
export class WebGpuUnavailableError extends Error {
  override readonly name = "WebGpuUnavailableError";
  readonly reason: WebGpuUnavailableReason;
  readonly edge: WebGpuEdge;

  constructor(reason: WebGpuUnavailableReason, edge: WebGpuEdge, message: string, options?: { cause?: unknown }) {
    super(`WebGPU unavailable (${edge}, ${reason}): ${message}`, options);
    this.reason = reason;
    this.edge = edge;
  }
}

/** The fix we suggest whenever the Vulkan driver is the likely culprit on Linux. */
export const VULKAN_HINT =
  "install the Vulkan loader and Mesa's lavapipe driver (Debian 12: `sudo bash scripts/install-system.sh`), " + "or use the CPU backend (--backend cpu)";

/** "llvmpipe: Mesa 25.0.7 (vendor mesa, software)" style one-liner. */
export function describeAdapter(info: WebGpuAdapterInfo): string {
  const extra = [info.vendor && `vendor ${info.vendor}`, info.architecture].filter(Boolean).join(", ");
  const name = info.description || info.vendor || "unnamed adapter";
  return extra ? `${name} (${extra})` : name;
}
