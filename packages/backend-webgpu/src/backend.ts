/**
 * The WebGPU backend: implements @lowrank/tensor's Backend with WGSL kernels on a GPUDevice.
 * Runtime-agnostic: it takes a context from an edge (requestWebGpu of /node, /deno, /browser) or
 * a bare GPUDevice, and never touches navigator or dawn.node itself.
 */
import {
  type Backend,
  type BinaryOp,
  type DType,
  type FusedKernels,
  type HostArray,
  type MemoryStats,
  type ReduceOp,
  type UnaryOp,
  byteSize,
  isContiguous,
  numel,
} from "@lowrank/tensor";
import { Engine } from "./engine.ts";
import { WebGpuOutOfMemoryError } from "./errors.ts";
import { describeAdapter, type WebGpuContext } from "./types.ts";
import { arangeKernel, binaryExpr, elementwise, fullKernel, randomKernel, type Operand, unaryExpr } from "./kernels/elementwise.ts";
import { type GpuInput, GpuStorage, type KernelContext, wordsOf } from "./kernels/context.ts";
import { concatKernel, gatherKernel, scatterAddKernel } from "./kernels/indexing.ts";
import { makeFused } from "./kernels/fused.ts";
import { matmulKernel, type MatmulVariant } from "./kernels/matmul.ts";
import { reduceKernel } from "./kernels/reduce.ts";
import { BufferPool, type PoolStats, USAGE } from "./pool.ts";
import { EPW } from "./wgsl/common.ts";

export { GpuStorage, type GpuInput } from "./kernels/context.ts";

export interface WebGpuBackendOptions {
  /**
   * Submit each kernel on its own inside an error scope so validation errors name the exact
   * kernel (slow; for debugging). Without it errors are caught per batch and still thrown typed.
   */
  debug?: boolean;
  /** Largest storage binding in bytes (default: the device's maxStorageBufferBindingSize). Lower it to test chunking. */
  maxBindingBytes?: number;
  /** Bytes of freed buffers kept for reuse (default 1 GiB or a quarter of maxBufferSize). */
  maxPooledBytes?: number;
  /** Matmul kernel: "tiled" (default, register-tiled, 4x4 outputs per invocation) or "naive" (one output each; benchmarks). */
  matmul?: MatmulVariant;
  /** Release the context (or destroy a bare device) on dispose() (default true). */
  ownsDevice?: boolean;
}

/** Memory stats plus what the pool holds. */
export interface WebGpuMemoryStats extends MemoryStats, PoolStats {}

export class WebGpuBackend implements Backend<GpuStorage>, KernelContext {
  readonly name = "webgpu";
  readonly device: string;
  /** Every dtype: halves and u8 are packed into 32-bit words and converted with bit operations. */
  readonly dtypes: readonly DType[] = ["f32", "f16", "bf16", "i32", "u8"];
  readonly engine: Engine;
  readonly gpuDevice: GPUDevice;
  readonly maxWords: number;
  readonly hasF16: boolean;
  readonly matmulVariant: MatmulVariant;
  readonly fused: Partial<FusedKernels<GpuStorage>>;
  private readonly pool: BufferPool;
  private readonly live = new Set<GpuStorage>();
  private liveBytes = 0;
  private peakBytes = 0;
  // Holds the edge's context (and through it the GPU object) for the backend's whole life.
  private context: WebGpuContext | null;
  private readonly ownsDevice: boolean;

  constructor(source: WebGpuContext | GPUDevice, opts: WebGpuBackendOptions = {}) {
    const isCtx = "adapter" in source && "release" in source;
    this.context = isCtx ? (source as WebGpuContext) : null;
    this.gpuDevice = isCtx ? (source as WebGpuContext).device : (source as GPUDevice);
    const limits = this.gpuDevice.limits;
    const binding = Math.min(opts.maxBindingBytes ?? Infinity, limits.maxStorageBufferBindingSize);
    // Whole 16-byte units, so vec4 bindings rounded up stay under the limit.
    this.maxWords = Math.floor(binding / 16) * 4;
    this.hasF16 = this.gpuDevice.features.has("shader-f16");
    this.matmulVariant = opts.matmul ?? "tiled";
    this.ownsDevice = opts.ownsDevice ?? true;
    this.engine = new Engine(this.gpuDevice, { debug: opts.debug ?? false, maxBindingBytes: binding });
    this.pool = new BufferPool(this.gpuDevice, opts.maxPooledBytes ?? Math.min(2 ** 30, limits.maxBufferSize / 4));
    const adapter = isCtx ? describeAdapter((source as WebGpuContext).adapterInfo) : "GPUDevice";
    this.device = `webgpu (${adapter}${this.hasF16 ? ", shader-f16" : ""})`;
    this.fused = makeFused(this);
  }

  // ---- memory ----

  alloc(dtype: DType, n: number): GpuStorage {
    const words = Math.max(1, wordsOf(dtype, n));
    if (words * 4 > this.gpuDevice.limits.maxBufferSize) {
      throw new WebGpuOutOfMemoryError("alloc", `${n} ${dtype} elements (${words * 4} bytes) exceed maxBufferSize ${this.gpuDevice.limits.maxBufferSize}`);
    }
    return this.own(new GpuStorage(this.pool.acquire(words * 4, `lowrank ${dtype}[${n}]`), dtype, n, n * byteSize(dtype)));
  }

  private own(h: GpuStorage): GpuStorage {
    this.live.add(h);
    this.liveBytes += h.bytes;
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
    return h;
  }

  release(h: GpuStorage): void {
    this.free(h);
  }

  upload(data: HostArray, dtype: DType): GpuStorage {
    this.engine.alive("upload");
    const n = data.length;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const padded = Math.max(4, Math.ceil(bytes.byteLength / 4) * 4);
    const buf = this.pool.acquire(padded, `lowrank ${dtype}[${n}]`);
    if (bytes.byteLength === 0) {
      // nothing to write (and wgpu panics on empty writes)
    } else if (this.engine.pending) {
      // Unsubmitted commands may still read this recycled buffer and queue.writeBuffer would
      // overtake them: stage the data in a fresh mapped buffer and copy in encoding order.
      const staging = this.gpuDevice.createBuffer({ size: padded, usage: USAGE.COPY_SRC, mappedAtCreation: true, label: "lowrank upload" });
      new Uint8Array(staging.getMappedRange(0, padded)).set(bytes);
      staging.unmap();
      this.engine.copy(staging, 0, buf, 0, padded);
      this.engine.destroyAfterSubmit(staging);
    } else {
      if (bytes.byteLength % 4 === 0) this.gpuDevice.queue.writeBuffer(buf, 0, bytes);
      else {
        const tmp = new Uint8Array(padded);
        tmp.set(bytes);
        this.gpuDevice.queue.writeBuffer(buf, 0, tmp);
      }
    }
    return this.own(new GpuStorage(buf, dtype, n, n * byteSize(dtype)));
  }

  async read(h: GpuStorage, dtype: DType, size: number): Promise<HostArray> {
    const bytes = size * byteSize(dtype);
    const data = bytes === 0 ? new ArrayBuffer(0) : await this.engine.read(h.buffer, 0, bytes, "read");
    switch (dtype) {
      case "f32":
        return new Float32Array(data);
      case "i32":
        return new Int32Array(data);
      case "f16":
      case "bf16":
        return new Uint16Array(data);
      case "u8":
        return new Uint8Array(data);
    }
  }

  free(h: GpuStorage): void {
    if (h.freed) return;
    h.freed = true;
    this.live.delete(h);
    this.liveBytes -= h.bytes;
    if (!this.engine.disposed) this.pool.release(h.rawBuffer);
  }

  memory(): WebGpuMemoryStats {
    return { liveBytes: this.liveBytes, peakBytes: this.peakBytes, liveBuffers: this.live.size, ...this.pool.stats() };
  }

  resetPeak(): void {
    this.peakBytes = this.liveBytes;
  }

  /** Destroy the pooled (free) buffers now. */
  trimPool(): void {
    this.pool.trim();
  }

  async sync(): Promise<void> {
    await this.engine.sync();
  }

  dispose(): void {
    if (this.engine.disposed) return;
    this.engine.dispose();
    this.pool.trim();
    for (const h of this.live) {
      h.freed = true;
      h.rawBuffer.destroy();
    }
    this.live.clear();
    this.liveBytes = 0;
    if (this.ownsDevice) {
      if (this.context) this.context.release();
      else this.gpuDevice.destroy();
    }
    this.context = null;
  }

  // ---- creation ----

  full(size: number, value: number, dtype: DType): GpuStorage {
    return fullKernel(this, size, value, dtype);
  }
  arange(size: number, start: number, step: number, dtype: DType): GpuStorage {
    return arangeKernel(this, size, start, step, dtype);
  }
  random(size: number, seed: number, offset: number): GpuStorage {
    return randomKernel(this, size, seed, offset);
  }

  // ---- elementwise ----

  unary(op: UnaryOp, x: GpuInput): GpuStorage {
    return elementwise(this, { name: `unary_${op}`, out: x.dtype, shape: x.view.shape, operands: [operand(x)], expr: unaryExpr(op, x.dtype) });
  }
  binary(op: BinaryOp, a: GpuInput, b: GpuInput): GpuStorage {
    const out: DType = op === "lt" || op === "eq" ? "u8" : a.dtype;
    return elementwise(this, { name: `binary_${op}`, out, shape: a.view.shape, operands: [operand(a), operand(b)], expr: binaryExpr(op, a.dtype) });
  }
  where(c: GpuInput, a: GpuInput, b: GpuInput): GpuStorage {
    return elementwise(this, {
      name: "where",
      out: a.dtype,
      shape: a.view.shape,
      operands: [operand(c), operand(a), operand(b)],
      expr: (_w, [cv, av, bv]) => `select(${bv}, ${av}, ${cv} != 0)`,
    });
  }
  cast(x: GpuInput, to: DType): GpuStorage {
    if (to === x.dtype) return this.copy(x);
    return elementwise(this, { name: `cast_${x.dtype}`, out: to, shape: x.view.shape, operands: [operand(x)], expr: (w, [v]) => w.convert(x.dtype, to, v) });
  }
  copy(x: GpuInput): GpuStorage {
    const { shape, strides, offset } = x.view;
    const n = numel(shape);
    const epw = EPW[x.dtype];
    if (isContiguous(shape, strides) && offset % epw === 0) {
      const out = this.alloc(x.dtype, n);
      this.engine.copy(x.handle.buffer, (offset / epw) * 4, out.buffer, 0, wordsOf(x.dtype, n) * 4);
      return out;
    }
    return elementwise(this, { name: "copy", out: x.dtype, shape, operands: [operand(x)], bits: true, expr: () => "" });
  }

  // ---- reductions, movement, indexing, matmul ----

  reduce(op: ReduceOp, x: GpuInput, nReduce: number): GpuStorage {
    return reduceKernel(this, op, x, nReduce);
  }
  concat(xs: GpuInput[], axis: number): GpuStorage {
    return concatKernel(this, xs, axis);
  }
  matmul(a: GpuInput, b: GpuInput): GpuStorage {
    return matmulKernel(this, a, b, this.matmulVariant);
  }
  gather(x: GpuInput, idx: GpuInput, axis: number): GpuStorage {
    return gatherKernel(this, x, idx, axis);
  }
  scatterAdd(shape: readonly number[], dtype: DType, idx: GpuInput, src: GpuInput, axis: number): GpuStorage {
    return scatterAddKernel(this, shape, dtype, idx, src, axis);
  }
}

export function operand(x: GpuInput): Operand {
  return { handle: x.handle, dtype: x.dtype, strides: x.view.strides, offset: x.view.offset };
}

/**
 * Create the backend on a context from an edge (`await requestWebGpu()` of
 * @lowrank/backend-webgpu/node, /deno or /browser) or on a bare GPUDevice.
 */
export function createWebGpuBackend(source: WebGpuContext | GPUDevice, opts: WebGpuBackendOptions = {}): WebGpuBackend {
  return new WebGpuBackend(source, opts);
}
