/**
 * The dispatch engine under the kernels: pipeline cache, batched command encoding, per-dispatch
 * parameter blocks, readback, error capture. Kernels describe themselves as WGSL plus a binding
 * list; the engine never knows what they compute.
 *
 * Parameters: every dispatch gets a 256-byte-aligned block of one uniform "arena" buffer. The
 * blocks of a batch are staged on the host and written with one queue.writeBuffer right before
 * the batch is submitted, so the write is ordered after every earlier submit and before this
 * batch; the next batch can reuse the same arena buffer.
 */
import { WebGpuBackendError, WebGpuDeviceLostError, WebGpuDisposedError, WebGpuKernelError, WebGpuOutOfMemoryError, WebGpuValidationError } from "./errors.ts";
import { USAGE } from "./pool.ts";

export type BindingKind = "read" | "write";

export interface KernelSpec {
  /** Short name shown in errors and GPU labels, e.g. "binary_add_f32". */
  name: string;
  code: string;
  /** Storage bindings 1..n (binding 0 is always the parameter uniform). */
  bindings: BindingKind[];
  /** Append the shared error-flag buffer as the last binding (kernels that validate indices). */
  flags?: boolean;
  /** u32 words of the parameter block the shader declares (multiple of 4). */
  paramWords?: number;
}

export interface Compiled {
  readonly spec: KernelSpec;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly paramBytes: number;
}

/** A buffer window bound to one binding slot. */
export interface Bind {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** Bits kernels set in the flag buffer, with the message read() throws. */
export const FLAG_MESSAGES: Record<number, [string, string]> = {
  1: ["gather", "index out of range"],
  2: ["scatterAdd", "index out of range"],
  4: ["crossEntropy", "target out of range (neither in [0, V) nor the ignore index)"],
};

export const PARAM_BLOCK = 256;
const ARENA_BYTES = 256 * 1024;
const MAX_BATCH = 256;

export interface EngineOptions {
  /** Submit after every dispatch inside an error scope, so errors name the exact kernel. */
  debug: boolean;
  /** Largest byte size bound to one storage binding (defaults to the device limit). */
  maxBindingBytes: number;
}

export class Engine {
  readonly maxWorkgroupsPerDim: number;
  private readonly pipelines = new Map<string, Compiled>();
  private readonly layouts = new Map<string, GPUBindGroupLayout>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private readonly arena: GPUBuffer;
  private readonly arenaHost = new ArrayBuffer(ARENA_BYTES);
  private arenaPos = 0;
  private batchCount = 0;
  private batchKernels = new Set<string>();
  /** Buffers to destroy once the current batch is submitted (upload staging, temporaries). */
  private afterSubmit: GPUBuffer[] = [];
  readonly flagBuffer: GPUBuffer;
  private flagsDirty = false;
  private pendingScopes: Promise<void>[] = [];
  /** Work a kernel holds back to merge with later calls (AdamW over many tensors); recorded before any other command. */
  private held: (() => void) | null = null;
  private error: WebGpuBackendError | null = null;
  private lost: WebGpuDeviceLostError | null = null;
  disposed = false;
  /**
   * Counters for tests and benchmarks: dispatches, copies and clears recorded, queue submits,
   * host reads, pipelines compiled, and dispatches per kernel name (the benchmark's breakdown).
   */
  readonly counters = { dispatches: 0, copies: 0, clears: 0, submits: 0, pipelines: 0, reads: 0, byKernel: new Map<string, number>() };

  constructor(readonly device: GPUDevice, readonly opts: EngineOptions) {
    this.maxWorkgroupsPerDim = device.limits.maxComputeWorkgroupsPerDimension;
    this.arena = device.createBuffer({ size: ARENA_BYTES, usage: USAGE.UNIFORM | USAGE.COPY_DST, label: "lowrank params" });
    this.flagBuffer = device.createBuffer({ size: 16, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST, label: "lowrank flags" });
    const onError = (ev: Event) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      this.record(err, [...this.batchKernels].join(", ") || "unknown kernel");
    };
    const target = device as GPUDevice & { addEventListener?: (t: string, f: (e: Event) => void) => void };
    if (typeof target.addEventListener === "function") target.addEventListener("uncapturederror", onError);
    else (device as { onuncapturederror: unknown }).onuncapturederror = onError;
    device.lost.then((info) => {
      if (!this.disposed) this.lost = new WebGpuDeviceLostError([...this.batchKernels].join(", ") || "idle", String(info.reason), info.message);
    });
  }

  private record(err: GPUError, kernel: string): void {
    // Keep the first root cause; "invalid due to a previous error" follow-ups only fill a gap.
    const followUp = /previous error/.test(err.message);
    if (this.error && (followUp || !/previous error/.test(this.error.message))) return;
    const oom = typeof GPUOutOfMemoryError !== "undefined" && err instanceof GPUOutOfMemoryError;
    this.error = oom || /out of memory/i.test(err.message) ? new WebGpuOutOfMemoryError(kernel, err.message) : new WebGpuValidationError(kernel, err.message);
  }

  /** Throw when the device is gone or the backend disposed (every entry point calls this). */
  alive(what: string): void {
    if (this.disposed) throw new WebGpuDisposedError(what);
    if (this.lost) throw this.lost;
  }

  /** Throw a recorded asynchronous error once (device loss stays). */
  private throwRecorded(): void {
    if (this.lost) throw this.lost;
    const e = this.error;
    if (e) {
      this.error = null;
      throw e;
    }
  }

  // ---- pipelines ----

  compile(spec: KernelSpec): Compiled {
    const hit = this.pipelines.get(spec.code);
    if (hit) return hit;
    const kinds = ["uniform", ...spec.bindings, ...(spec.flags ? ["write"] : [])];
    const key = kinds.join(",");
    let layout = this.layouts.get(key);
    if (!layout) {
      layout = this.device.createBindGroupLayout({
        label: `lowrank ${key}`,
        entries: kinds.map((k, i) => ({
          binding: i,
          visibility: 4, // GPUShaderStage.COMPUTE
          buffer: { type: k === "uniform" ? "uniform" : k === "read" ? "read-only-storage" : "storage" },
        })),
      });
      this.layouts.set(key, layout);
    }
    this.device.pushErrorScope("validation");
    const module = this.device.createShaderModule({ code: spec.code, label: spec.name });
    const pipeline = this.device.createComputePipeline({
      label: spec.name,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    this.scope(this.device.popErrorScope(), spec.name, () => this.pipelines.delete(spec.code));
    const c: Compiled = { spec, pipeline, layout, paramBytes: Math.max(16, (spec.paramWords ?? 64) * 4) };
    this.pipelines.set(spec.code, c);
    this.counters.pipelines++;
    return c;
  }

  private scope(p: Promise<GPUError | null>, kernel: string, onError?: () => void): void {
    this.pendingScopes.push(
      p.then(
        (err) => {
          if (err) {
            onError?.();
            this.record(err, kernel);
          }
        },
        () => {},
      ),
    );
  }

  // ---- encoding ----

  private enc(): GPUCommandEncoder {
    return (this.encoder ??= this.device.createCommandEncoder({ label: "lowrank batch" }));
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  /**
   * Record one dispatch of `groups` workgroups (folded into 2-D beyond the per-dimension limit;
   * shaders rebuild the linear id as wid.y * nwg.x + wid.x and drop ids past the end).
   */
  dispatch(k: Compiled, params: Uint32Array, binds: Bind[], groups: number): void {
    this.alive(k.spec.name);
    this.drain();
    if (groups <= 0) return;
    const block = Math.ceil(Math.max(params.byteLength, k.paramBytes) / PARAM_BLOCK) * PARAM_BLOCK;
    if (this.arenaPos + block > ARENA_BYTES || this.batchCount >= MAX_BATCH) this.flush();
    const at = this.arenaPos;
    new Uint32Array(this.arenaHost, at, params.length).set(params);
    this.arenaPos += block;
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.arena, offset: at, size: k.paramBytes } }];
    binds.forEach((b, i) =>
      entries.push({ binding: i + 1, resource: { buffer: b.buffer, offset: b.offset ?? 0, size: b.size ?? b.buffer.size - (b.offset ?? 0) } }),
    );
    if (k.spec.flags) {
      entries.push({ binding: binds.length + 1, resource: { buffer: this.flagBuffer } });
      this.flagsDirty = true;
    }
    if (this.opts.debug) this.device.pushErrorScope("validation");
    const group = this.device.createBindGroup({ label: k.spec.name, layout: k.layout, entries });
    this.pass ??= this.enc().beginComputePass({ label: "lowrank kernels" });
    this.pass.setPipeline(k.pipeline);
    this.pass.setBindGroup(0, group);
    const max = this.maxWorkgroupsPerDim;
    const y = Math.ceil(groups / max);
    if (y > max) throw new WebGpuBackendError(k.spec.name, `dispatch of ${groups} workgroups exceeds ${max}^2`);
    this.pass.dispatchWorkgroups(Math.ceil(groups / y), y);
    this.batchCount++;
    this.batchKernels.add(k.spec.name);
    this.counters.dispatches++;
    this.counters.byKernel.set(k.spec.name, (this.counters.byKernel.get(k.spec.name) ?? 0) + 1);
    if (this.opts.debug) {
      this.flush();
      this.scope(this.device.popErrorScope(), k.spec.name);
    }
  }

  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.alive("copy");
    this.drain();
    if (bytes <= 0) return;
    this.endPass();
    this.enc().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
    this.batchCount++;
    this.counters.copies++;
  }

  clear(buf: GPUBuffer, offset: number, bytes: number): void {
    this.alive("clear");
    this.drain();
    if (bytes <= 0) return;
    this.endPass();
    this.enc().clearBuffer(buf, offset, bytes);
    this.batchCount++;
    this.counters.clears++;
  }

  /** True when commands are recorded (or held) but not submitted (uploads must not writeBuffer then). */
  get pending(): boolean {
    return this.encoder !== null || this.held !== null;
  }

  /**
   * Hold `record` back until the next command, flush or read; it then runs first, so held work
   * keeps its place in command order. A second hold replaces the first (the holder merges).
   */
  hold(record: () => void): void {
    if (this.opts.debug) record();
    else this.held = record;
  }

  /** Record held work now. */
  drain(): void {
    const h = this.held;
    if (!h) return;
    this.held = null;
    h();
  }

  destroyAfterSubmit(buf: GPUBuffer): void {
    if (this.encoder) this.afterSubmit.push(buf);
    else buf.destroy();
  }

  /** Submit the batch: write its parameter blocks, then the commands. */
  flush(): void {
    this.drain();
    if (!this.encoder) return;
    this.endPass();
    if (this.arenaPos > 0) this.device.queue.writeBuffer(this.arena, 0, this.arenaHost, 0, this.arenaPos);
    const cb = this.encoder.finish();
    this.encoder = null;
    this.device.queue.submit([cb]);
    this.counters.submits++;
    this.arenaPos = 0;
    this.batchCount = 0;
    this.batchKernels = new Set();
    for (const b of this.afterSubmit) b.destroy();
    this.afterSubmit = [];
  }

  // ---- completion, readback ----

  private async settle(): Promise<void> {
    while (this.pendingScopes.length) {
      const ps = this.pendingScopes;
      this.pendingScopes = [];
      await Promise.all(ps);
    }
  }

  async sync(): Promise<void> {
    this.alive("sync");
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.settle();
    this.throwRecorded();
  }

  /** Copy `bytes` from `buf` to the host (the only readback path), checking kernel flags too. */
  async read(buf: GPUBuffer, offset: number, bytes: number, what: string): Promise<ArrayBuffer> {
    this.alive(what);
    this.counters.reads++;
    const size = Math.ceil(bytes / 4) * 4;
    const withFlags = this.flagsDirty;
    const staging = this.device.createBuffer({
      size: Math.max(16, size + (withFlags ? 16 : 0)),
      usage: USAGE.MAP_READ | USAGE.COPY_DST,
      label: "lowrank readback",
    });
    this.copy(buf, offset, staging, 0, size);
    if (withFlags) {
      this.enc().copyBufferToBuffer(this.flagBuffer, 0, staging, size, 16);
      this.flagsDirty = false;
    }
    this.flush();
    try {
      await staging.mapAsync(1 /* GPUMapMode.READ */);
    } catch (err) {
      staging.destroy();
      await this.settle();
      this.throwRecorded();
      throw new WebGpuBackendError(what, `readback failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    const mapped = staging.getMappedRange();
    const data = mapped.slice(0, bytes);
    const flags = withFlags ? new Uint32Array(mapped, size, 1)[0] : 0;
    staging.unmap();
    staging.destroy();
    await this.settle();
    this.throwRecorded();
    if (flags) {
      this.device.queue.writeBuffer(this.flagBuffer, 0, new Uint32Array(4));
      const bit =
        Object.keys(FLAG_MESSAGES)
          .map(Number)
          .find((b) => flags & b) ?? 1;
      const [kernel, msg] = FLAG_MESSAGES[bit];
      throw new WebGpuKernelError(kernel, `${kernel}: ${msg} (flagged by a kernel queued before this read; out-of-range lanes produced 0/NaN)`);
    }
    return data;
  }

  dispose(): void {
    if (this.disposed) return;
    try {
      this.flush();
    } catch {
      // a lost device cannot submit; nothing left to do
    }
    this.disposed = true;
    this.arena.destroy();
    this.flagBuffer.destroy();
    this.pipelines.clear();
    this.layouts.clear();
  }
}
