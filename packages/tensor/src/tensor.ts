import type { Backend, Input, View } from "./backend.ts";
import { type DType, type HostArray, fromF32, hostArray, isFloat, toF32 } from "./dtype.ts";
import { contiguousStrides, isContiguous, numel, shapeStr } from "./shape.ts";
import { type Disposable, track } from "./scope.ts";
import { Storage } from "./storage.ts";
import type { Node } from "./autograd.ts";
import * as ops from "./ops.ts";
import { backward as runBackward, releaseGraph } from "./autograd.ts";

let defaultBackend: Backend | null = null;

/** Set the backend used when a creation function is not given one. Apps and tests call this; the core never picks. */
export function setDefaultBackend(b: Backend | null): void {
  defaultBackend = b;
}

export function getDefaultBackend(): Backend {
  if (!defaultBackend) {
    throw new Error("no backend: pass { backend } or call setDefaultBackend() (e.g. with @lowrank/backend-cpu's createCpuBackend())");
  }
  return defaultBackend;
}

let nextId = 1;

/**
 * An n-dimensional array on a backend. Movement ops (reshape, permute, expand, slice, transpose)
 * return views sharing storage; everything else dispatches a backend primitive. Call `dispose()`
 * (or use `scope`) to free device memory; autograd keeps what it needs on its own.
 */
export class Tensor implements Disposable {
  readonly id = nextId++;
  readonly shape: readonly number[];
  /** Element strides and offset into the storage (change only through `assign`). */
  strides: readonly number[];
  offset: number;
  readonly dtype: DType;
  /** Set on leaves that should receive a gradient. Non-leaf tensors derive it from their inputs. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf after `backward()`. Owned by this tensor; `zeroGrad()` frees it. */
  grad: Tensor | null = null;
  /** Optional name used in error messages and by modules. */
  name?: string;
  /** @internal autograd node that produced this tensor. */
  _node: Node | null = null;
  /** @internal set when backward released the node that produced this tensor. */
  _released = false;
  private _storage: Storage | null;

  /** @internal use the factories (`tensor`, `zeros`, ...) */
  constructor(storage: Storage, view: View, dtype: DType, register = true) {
    this._storage = storage;
    this.shape = view.shape;
    this.strides = view.strides;
    this.offset = view.offset;
    this.dtype = dtype;
    if (register) track(this);
  }

  get backend(): Backend {
    return this.storage.backend;
  }
  get rank(): number {
    return this.shape.length;
  }
  get size(): number {
    return numel(this.shape);
  }
  get disposed(): boolean {
    return this._storage === null;
  }
  get isContiguous(): boolean {
    return isContiguous(this.shape, this.strides);
  }
  /** @internal */
  get storage(): Storage {
    if (!this._storage) throw new Error(`tensor ${this.describe()} was disposed`);
    return this._storage;
  }
  /** @internal what a kernel reads */
  get input(): Input {
    return { handle: this.storage.handle, dtype: this.dtype, view: this };
  }
  describe(): string {
    return `${this.name ?? `#${this.id}`} ${this.dtype}${shapeStr(this.shape)}`;
  }

  dispose(): void {
    if (!this._storage) return;
    this._storage.release();
    this._storage = null;
  }

  /** @internal a new tensor object over the same storage (own reference). */
  alias(view: View = this, register = true): Tensor {
    return new Tensor(this.storage.retain(), view, this.dtype, register);
  }

  /**
   * Replace this tensor's contents with `src` (same shape and dtype), keeping the object, so
   * modules and optimizers hold stable parameter references. Shares `src`'s storage; not
   * recorded by autograd. Graph nodes that saved the old value keep their own reference.
   */
  assign(src: Tensor): this {
    if (src.dtype !== this.dtype || src.shape.length !== this.shape.length || src.shape.some((d, i) => d !== this.shape[i])) {
      throw new RangeError(`assign: ${src.describe()} does not match ${this.describe()}`);
    }
    if (this._node) throw new Error(`assign: ${this.describe()} is computed; assign only to leaves`);
    const st = src.storage.retain();
    this._storage?.release();
    this._storage = st;
    this.strides = src.strides;
    this.offset = src.offset;
    return this;
  }

  // ---- reading ----
  /** Values in row-major order. f16/bf16 decode to f32. */
  async read(): Promise<Float32Array | Int32Array | Uint8Array> {
    const t = this.dense();
    try {
      const raw = await t.backend.read(t.storage.handle, t.dtype, t.size);
      return decode(t.dtype, raw);
    } finally {
      if (t !== this) t.dispose();
    }
  }
  /** Synchronous read where the backend allows it (CPU). */
  readSync(): Float32Array | Int32Array | Uint8Array {
    const b = this.backend;
    if (!b.readSync) throw new Error(`backend ${b.name} has no synchronous read; use await tensor.read()`);
    const t = this.dense();
    try {
      return decode(t.dtype, b.readSync(t.storage.handle, t.dtype, t.size));
    } finally {
      if (t !== this) t.dispose();
    }
  }
  /** This tensor if it exactly covers its storage in row-major order, else a packed copy (no graph). */
  private dense(): Tensor {
    if (this.isContiguous && this.offset === 0 && this.storage.size === this.size) return this;
    return fromHandle(this.backend, this.backend.copy(this.input), this.shape, this.dtype);
  }
  async item(): Promise<number> {
    if (this.size !== 1) throw new RangeError(`item() needs one element, ${this.describe()} has ${this.size}`);
    return (await this.read())[0];
  }
  /** Nested arrays, for tests and printing. */
  async toArray(): Promise<unknown> {
    return nest(Array.from(await this.read()), this.shape);
  }

  // ---- autograd ----
  /** Backpropagate from this tensor (a scalar unless `grad` is given). The graph is released afterwards. */
  backward(grad?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    runBackward(this, grad, opts);
  }
  /** Drop the autograd graph behind this tensor without running backward. */
  releaseGraph(): void {
    releaseGraph(this);
  }
  /** A tensor over the same storage with no graph. */
  detach(): Tensor {
    return this.alias();
  }
  setRequiresGrad(on = true): this {
    if (on && !isFloat(this.dtype)) throw new TypeError(`requiresGrad needs a float tensor, got ${this.describe()}`);
    if (this._node) throw new Error(`requiresGrad can only be set on leaves; ${this.describe()} was computed`);
    this.requiresGrad = on;
    return this;
  }
  zeroGrad(): void {
    this.grad?.dispose();
    this.grad = null;
  }

  // ---- movement (views) ----
  reshape(...shape: number[] | [number[]]): Tensor {
    return ops.reshape(this, flat(shape));
  }
  view(...shape: number[] | [number[]]): Tensor {
    return ops.reshape(this, flat(shape));
  }
  permute(...axes: number[] | [number[]]): Tensor {
    return ops.permute(this, flat(axes));
  }
  transpose(a = -2, b = -1): Tensor {
    return ops.transpose(this, a, b);
  }
  get T(): Tensor {
    return ops.transpose(this, -2, -1);
  }
  expand(...shape: number[] | [number[]]): Tensor {
    return ops.expand(this, flat(shape));
  }
  /** Slice with [start, end) per axis; `null`/missing keeps the axis whole. */
  slice(ranges: ([number, number] | null)[]): Tensor {
    return ops.slice(this, ranges);
  }
  narrow(axis: number, start: number, length: number): Tensor {
    return ops.narrow(this, axis, start, length);
  }
  squeeze(axis?: number): Tensor {
    return ops.squeeze(this, axis);
  }
  unsqueeze(axis: number): Tensor {
    return ops.unsqueeze(this, axis);
  }
  flatten(start = 0, end = -1): Tensor {
    return ops.flatten(this, start, end);
  }
  contiguous(): Tensor {
    return ops.contiguous(this);
  }

  // ---- elementwise ----
  add(o: Tensor | number): Tensor {
    return ops.binary("add", this, o);
  }
  sub(o: Tensor | number): Tensor {
    return ops.binary("sub", this, o);
  }
  mul(o: Tensor | number): Tensor {
    return ops.binary("mul", this, o);
  }
  div(o: Tensor | number): Tensor {
    return ops.binary("div", this, o);
  }
  pow(o: Tensor | number): Tensor {
    return ops.binary("pow", this, o);
  }
  maximum(o: Tensor | number): Tensor {
    return ops.binary("max", this, o);
  }
  minimum(o: Tensor | number): Tensor {
    return ops.binary("min", this, o);
  }
  lt(o: Tensor | number): Tensor {
    return ops.binary("lt", this, o);
  }
  gt(o: Tensor | number): Tensor {
    return ops.gt(this, o);
  }
  eq(o: Tensor | number): Tensor {
    return ops.binary("eq", this, o);
  }
  neg(): Tensor {
    return ops.unary("neg", this);
  }
  exp(): Tensor {
    return ops.unary("exp", this);
  }
  log(): Tensor {
    return ops.unary("log", this);
  }
  sqrt(): Tensor {
    return ops.unary("sqrt", this);
  }
  rsqrt(): Tensor {
    return ops.rsqrt(this);
  }
  recip(): Tensor {
    return ops.unary("recip", this);
  }
  sin(): Tensor {
    return ops.unary("sin", this);
  }
  cos(): Tensor {
    return ops.unary("cos", this);
  }
  tanh(): Tensor {
    return ops.unary("tanh", this);
  }
  sigmoid(): Tensor {
    return ops.unary("sigmoid", this);
  }
  abs(): Tensor {
    return ops.unary("abs", this);
  }
  relu(): Tensor {
    return ops.unary("relu", this);
  }
  square(): Tensor {
    return ops.binary("mul", this, this);
  }
  cast(dtype: DType): Tensor {
    return ops.cast(this, dtype);
  }

  // ---- reductions, matmul ----
  sum(axes?: number | number[], keepdim = false): Tensor {
    return ops.reduce("sum", this, axes, keepdim);
  }
  max(axes?: number | number[], keepdim = false): Tensor {
    return ops.reduce("max", this, axes, keepdim);
  }
  mean(axes?: number | number[], keepdim = false): Tensor {
    return ops.mean(this, axes, keepdim);
  }
  matmul(o: Tensor): Tensor {
    return ops.matmul(this, o);
  }
}

function flat(a: number[] | [number[]]): number[] {
  return Array.isArray(a[0]) ? (a[0] as number[]) : (a as number[]);
}

function decode(dtype: DType, raw: HostArray): Float32Array | Int32Array | Uint8Array {
  if (dtype === "f16" || dtype === "bf16") return toF32(dtype, raw);
  return raw as Float32Array | Int32Array | Uint8Array;
}

function nest(values: number[], shape: readonly number[]): unknown {
  if (shape.length === 0) return values[0];
  const [d, ...rest] = shape;
  const step = numel(rest);
  return Array.from({ length: d }, (_, i) => nest(values.slice(i * step, (i + 1) * step), rest));
}

// ---------------------------------------------------------------- factories

export interface CreateOptions {
  dtype?: DType;
  backend?: Backend;
  requiresGrad?: boolean;
}

/** @internal wrap a fresh contiguous backend handle as a tensor. */
export function fromHandle(backend: Backend, handle: unknown, shape: readonly number[], dtype: DType): Tensor {
  const size = numel(shape);
  return new Tensor(new Storage(backend, handle, dtype, size), { shape: [...shape], strides: contiguousStrides(shape), offset: 0 }, dtype);
}

type Nested = number | Nested[];

function inferShape(data: Nested): number[] {
  const shape: number[] = [];
  let d: Nested = data;
  while (Array.isArray(d)) {
    shape.push(d.length);
    d = d[0];
  }
  return shape;
}

/**
 * Create a tensor from numbers, nested arrays or a typed array. Typed arrays for f16/bf16 are
 * taken as f32 values and converted; pass `raw: true` to hand over storage bits unchanged.
 */
export function tensor(data: Nested | ArrayLike<number>, opts: CreateOptions & { shape?: readonly number[]; raw?: boolean } = {}): Tensor {
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? (data instanceof Int32Array ? "i32" : data instanceof Uint8Array ? "u8" : "f32");
  const isTyped = ArrayBuffer.isView(data);
  const flatData: ArrayLike<number> = isTyped
    ? (data as ArrayLike<number>)
    : Array.isArray(data)
    ? ((data as number[]).flat(Infinity as 1) as number[])
    : [data as number];
  const shape = opts.shape ?? (isTyped ? [flatData.length] : inferShape(data as Nested));
  if (numel(shape) !== flatData.length) {
    throw new RangeError(`tensor: ${flatData.length} values do not fill shape ${shapeStr(shape)}`);
  }
  if (!backend.dtypes.includes(dtype)) throw new TypeError(`backend ${backend.name} does not support dtype ${dtype}`);
  let host: HostArray;
  if (opts.raw) host = data as HostArray;
  else if (dtype === "f16" || dtype === "bf16") host = fromF32(dtype, Array.from(flatData));
  else {
    host = hostArray(dtype, flatData.length);
    (host as Float32Array).set(flatData);
  }
  const t = fromHandle(backend, backend.upload(host, dtype), shape, dtype);
  if (opts.requiresGrad) t.setRequiresGrad();
  return t;
}

export function full(shape: readonly number[], value: number, opts: CreateOptions = {}): Tensor {
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? "f32";
  const t = fromHandle(backend, backend.full(numel(shape), value, dtype), shape, dtype);
  if (opts.requiresGrad) t.setRequiresGrad();
  return t;
}

export const zeros = (shape: readonly number[], opts: CreateOptions = {}): Tensor => full(shape, 0, opts);
export const ones = (shape: readonly number[], opts: CreateOptions = {}): Tensor => full(shape, 1, opts);

export function arange(n: number, opts: CreateOptions & { start?: number; step?: number } = {}): Tensor {
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? "i32";
  return fromHandle(backend, backend.arange(n, opts.start ?? 0, opts.step ?? 1, dtype), [n], dtype);
}

/** Uniform [0,1) from the counter-based stream (seed, offset..offset+n): identical on every backend. */
export function rand(shape: readonly number[], seed: number, offset = 0, opts: CreateOptions = {}): Tensor {
  const backend = opts.backend ?? getDefaultBackend();
  const t = fromHandle(backend, backend.random(numel(shape), seed, offset), shape, "f32");
  return opts.dtype && opts.dtype !== "f32" ? ops.castOwned(t, opts.dtype) : t;
}
