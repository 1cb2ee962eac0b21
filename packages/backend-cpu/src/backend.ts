import {
  type Backend,
  type BinaryOp,
  type DType,
  type FusedKernels,
  type HostArray,
  type Input,
  type MemoryStats,
  type ReduceOp,
  type UnaryOp,
  type View,
  DTYPES,
  hostArray,
  numel,
  uniformAt,
} from "@lowrank/tensor";
import { type Bits, binaryStrided, unaryKernel, whereStrided } from "./kernels/elementwise.ts";
import { encodeHalf, isHalf, useBf16Codec } from "./kernels/half.ts";
import { concatViews, gatherKernel, scatterAddKernel } from "./kernels/indexing.ts";
import { reduceStrided } from "./kernels/reduce.ts";
import {
  addRmsNormRows,
  crossEntropyBackwardRows,
  crossEntropyRowsKernel,
  rmsNormBackwardRows,
  rmsNormRows,
  softmaxBackwardRows,
  softmaxRows,
} from "./kernels/fused.ts";
import { matmul4bitKernel } from "./kernels/matmul4bit.ts";
import { adamwKernel, dropoutKernel, ropeKernel, swigluBackwardKernel, swigluKernel } from "./kernels/fused-nn.ts";
import { type AttnOps, type AttnShape, attentionBackward, attentionForward, engineOps } from "./kernels/attention.ts";
import { type LoraOps, loraBackward, loraForward } from "./kernels/lora.ts";
import { type Rows, attentionDecodeKernel } from "./kernels/attention-decode.ts";
import { type Num, contiguous, copyView, gatherValues, numeric, numericView } from "./kernels/strided.ts";
import { type MatmulEngine, createMatmulEngine } from "./matmul.ts";
import { ElementwiseWasm } from "./wasm/elementwise.ts";
import { type SimdChoice, SimdError, selectSimd } from "./wasm/simd.ts";
import { DecodeWasm } from "./wasm/attention-decode.ts";
import { BlasEngine } from "./blas/engine.ts";
import { selectBlas } from "./blas/index.ts";
import { gemmViews } from "./kernels/gemm-views.ts";
import { availableCores } from "./wasm/threads.ts";
import { OutputPool } from "./output-pool.ts";

/** A CPU storage is its host array. */
export type CpuHandle = HostArray;

export interface CpuBackendOptions {
  /** Worker threads for matmul (default: available cores - 1; 0 = main thread only). */
  threads?: number;
  /** Use the WASM SIMD kernels (matmul; f32 elementwise, where, exp/sigmoid, row sums; decode attention) when the runtime supports them (default true). */
  wasm?: boolean;
  /**
   * Matmul through the system BLAS: "auto" (the first known library found, else WASM), "off", or
   * the path of a library with cblas_sgemm (an error if it does not load). Wins over LOWRANK_BLAS.
   */
  blas?: "auto" | "off" | (string & {});
  /**
   * The WASM SIMD build: "auto" (relaxed SIMD, i.e. fused multiply-add, where the runtime validates
   * it, else plain), "relaxed" (a SimdError where it does not) or "plain". Wins over LOWRANK_SIMD.
   * Pin one to get the same bits from two runtimes (wasm/simd.ts).
   */
  simd?: SimdChoice;
}

/** Whether matmul runs on a system BLAS, which one, and why (or why not). */
export type BlasStatus =
  | { active: true; reason: string; library: string; core: string | null; path: string; via: string; threads: number }
  | { active: false; reason: string };

/**
 * The CPU backend: the reference every other backend is checked against, and a usable fast
 * path (matmul on the system BLAS, else packed on WASM SIMD across worker threads). Elementwise
 * work walks strided views row by row in TypeScript (kernels/strided.ts), with WASM SIMD for the
 * common f32 cases (wasm/elementwise.ts); f16/bf16 are decoded to f32, computed, and rounded on store.
 */
export class CpuBackend implements Backend<CpuHandle> {
  readonly name = "cpu";
  readonly dtypes: readonly DType[] = DTYPES;
  private live = 0;
  private peak = 0;
  /** Highest liveBytes ever (resetPeak does not lower it): the output pool's bound. */
  private peakEver = 0;
  private buffers = 0;
  /** @internal recycled f32 outputs: every kernel that writes each element of its output takes from it */
  readonly pool = new OutputPool(() => this.peakEver);
  readonly engine: MatmulEngine;
  readonly blas: BlasStatus;
  /** The WASM SIMD build the kernels run ("relaxed": fused multiply-add), null when none does. */
  readonly simd: "relaxed" | "plain" | null;
  readonly fused: Partial<FusedKernels<CpuHandle>>;
  /** null: TypeScript elementwise kernels only (wasm: false, or no WASM SIMD here). */
  /** @internal also used by the fused kernels (makeFused) */
  readonly ew: ElementwiseWasm | null;
  /** @internal attentionDecode's WASM SIMD kernel; null as `ew` */
  readonly decodeWasm: DecodeWasm | null;

  constructor(opts: CpuBackendOptions = {}) {
    const { lib, reason } = selectBlas(opts.blas);
    const simd = selectSimd(opts.simd);
    const relaxed = simd.choice !== "plain";
    if (lib) {
      // `threads` counts workers besides the caller; a BLAS counts the caller too.
      const engine = new BlasEngine(lib, opts.threads === undefined ? availableCores() : Math.max(0, Math.floor(opts.threads)) + 1);
      this.engine = engine;
      this.blas = { active: true, reason, library: lib.label, core: lib.core, path: lib.path, via: lib.via, threads: engine.threads };
    } else {
      this.engine = createMatmulEngine({ ...opts, relaxed });
      this.blas = { active: false, reason };
    }
    this.ew = opts.wasm === false ? null : ElementwiseWasm.create({ relaxed });
    const matmulRelaxed = (this.engine as { relaxed?: boolean }).relaxed;
    this.simd = this.ew ? (this.ew.relaxed ? "relaxed" : "plain") : null;
    if (simd.choice === "relaxed" && (this.simd !== "relaxed" || matmulRelaxed === false)) {
      this.engine.dispose();
      throw new SimdError(`${simd.where}: ${opts.wasm === false ? "wasm: false runs no WASM" : "this runtime does not validate relaxed SIMD"}`);
    }
    this.decodeWasm = opts.wasm === false ? null : DecodeWasm.create({ relaxed });
    useBf16Codec(this.ew);
    this.fused = makeFused(this);
  }

  get device(): string {
    return `cpu (${this.engine.describe()}${this.blas.active ? "" : `; no BLAS: ${this.blas.reason}`})`;
  }

  // ---- memory ----
  /** @internal register a freshly allocated array */
  own<T extends HostArray>(a: T): T {
    this.live += a.byteLength;
    this.buffers++;
    if (this.live > this.peak) this.peak = this.live;
    if (this.live > this.peakEver) this.peakEver = this.live;
    return a;
  }
  alloc(dtype: DType, n: number): HostArray {
    return this.own(hostArray(dtype, n));
  }
  upload(data: HostArray, dtype: DType): CpuHandle {
    const a = hostArray(dtype, data.length);
    (a as Uint8Array).set(data as Uint8Array);
    return this.own(a);
  }
  async read(h: CpuHandle, dtype: DType, size: number): Promise<HostArray> {
    return this.readSync(h, dtype, size);
  }
  readSync(h: CpuHandle, _dtype: DType, size: number): HostArray {
    return h.slice(0, size) as HostArray;
  }
  copyInto(dst: Input<CpuHandle>, src: Input<CpuHandle>): void {
    copyView(src.handle as Num, src.view, dst.handle as Num, dst.view);
  }
  free(h: CpuHandle): void {
    this.live -= h.byteLength;
    this.buffers--;
    this.pool.put(h);
  }
  memory(): MemoryStats {
    return { liveBytes: this.live, peakBytes: this.peak, liveBuffers: this.buffers };
  }
  resetPeak(): void {
    this.peak = this.live;
  }
  async sync(): Promise<void> {}
  dispose(): void {
    this.engine.dispose();
    this.pool.clear();
  }

  /** @internal Store f32/f64/int values as `dtype` (a kernel's f32 result as it is; f16/bf16 rounded, the f32 array recycled). */
  store(dtype: DType, values: Num): CpuHandle {
    if (isHalf(dtype)) {
      // A half result is computed in f32 scratch (scratch(), the pool); it goes back once rounded.
      const h = this.own(encodeHalf(dtype, values instanceof Float32Array ? values : Float32Array.from(values)));
      this.pool.put(values as HostArray);
      return h;
    }
    if (values instanceof Float64Array || values.constructor !== hostArray(dtype, 0).constructor) {
      const a = hostArray(dtype, values.length);
      (a as Float32Array).set(values);
      return this.own(a);
    }
    return this.own(values as HostArray);
  }
  /** Output array for a computation: f32 for floats (rounded into f16/bf16 by store), else the dtype. */
  private scratch(dtype: DType, n: number): Float32Array | Int32Array | Uint8Array {
    return dtype === "f32" || isHalf(dtype) ? this.pool.take(n) : (hostArray(dtype, n) as Float32Array | Int32Array | Uint8Array);
  }
  /** The view's values packed (the storage itself when already dense); f16/bf16 decoded to f32. */
  private packed(x: Input<CpuHandle>): Num {
    const { values, view } = numericView(x.dtype, x.handle, x.view);
    return gatherValues(values, view);
  }
  /** Contiguous f32 copy (or the storage itself) of a view. */
  packedF32(x: Input<CpuHandle>): Float32Array {
    const v = this.packed(x);
    return v instanceof Float32Array ? v : Float32Array.from(v);
  }

  // ---- creation ----
  full(size: number, value: number, dtype: DType): CpuHandle {
    const a = this.scratch(dtype, size);
    a.fill(value);
    return this.store(dtype, a);
  }
  arange(size: number, start: number, step: number, dtype: DType): CpuHandle {
    const a = this.scratch(dtype, size);
    for (let i = 0; i < size; i++) a[i] = start + i * step;
    return this.store(dtype, a);
  }
  random(size: number, seed: number, offset: number): CpuHandle {
    const a = new Float32Array(size);
    for (let i = 0; i < size; i++) a[i] = uniformAt(seed, offset + i);
    return this.own(a);
  }

  // ---- elementwise ----
  unary(op: UnaryOp, x: Input<CpuHandle>): CpuHandle {
    const v = this.packed(x);
    const out = this.scratch(x.dtype, v.length);
    if (!(v instanceof Float32Array && out instanceof Float32Array && this.ew?.unary(op, v, out))) unaryKernel(op, v, out);
    return this.store(x.dtype, out);
  }
  binary(op: BinaryOp, a: Input<CpuHandle>, b: Input<CpuHandle>): CpuHandle {
    const outDtype: DType = op === "lt" || op === "eq" ? "u8" : a.dtype;
    const out = this.scratch(outDtype, numel(a.view.shape));
    const A = numericView(a.dtype, a.handle, a.view, this.take);
    const B = numericView(b.dtype, b.handle, b.view, this.take);
    const wasm = this.ew && A.values instanceof Float32Array && B.values instanceof Float32Array && !(out instanceof Int32Array);
    if (!(wasm && this.ew!.binary(op, A.values as Float32Array, A.view, B.values as Float32Array, B.view, out as Float32Array | Uint8Array))) {
      binaryStrided(op, A.values, A.view, B.values, B.view, out);
    }
    this.recycle(a, A);
    this.recycle(b, B);
    return this.store(outDtype, out);
  }
  /** Recycled f32 arrays for decoding half-precision operands (numericView's `take`). */
  private readonly take = (n: number) => this.pool.take(n);
  /** Return a half operand's decoded f32 copy (never the storage itself) to the pool. */
  private recycle(x: Input<CpuHandle>, decoded: { values: Num }): void {
    if (isHalf(x.dtype)) this.pool.put(decoded.values as HostArray);
  }
  /** Moves storage bits (f16/bf16 are not decoded). */
  where(c: Input<CpuHandle>, a: Input<CpuHandle>, b: Input<CpuHandle>): CpuHandle {
    const n = numel(a.view.shape);
    const out = a.dtype === "f32" ? this.pool.take(n) : hostArray(a.dtype, n);
    const [cb, ab, bb, ob] = [truthy(c), bits(a.handle), bits(b.handle), bits(out)];
    const wasm = this.ew && ob instanceof Int32Array && this.ew.where(cb, c.view, ab as Int32Array, a.view, bb as Int32Array, b.view, ob);
    if (!wasm) whereStrided(cb, c.view, ab, a.view, bb, b.view, ob);
    return this.own(out);
  }
  cast(x: Input<CpuHandle>, to: DType): CpuHandle {
    if (to === x.dtype) return this.copy(x);
    const v = this.packed(x);
    if (isHalf(to)) return this.own(encodeHalf(to, v instanceof Float32Array ? v : Float32Array.from(v)));
    // A typed-array store truncates toward zero and wraps (NaN -> 0) for i32/u8, rounds for f32.
    const out = hostArray(to, v.length);
    out.set(v);
    return this.own(out);
  }
  copy(x: Input<CpuHandle>): CpuHandle {
    const shape = x.view.shape;
    const out = x.dtype === "f32" ? this.pool.take(numel(shape)) : hostArray(x.dtype, numel(shape));
    copyView(x.handle, x.view, out, { shape, strides: contiguous(shape), offset: 0 }, this.ew);
    return this.own(out);
  }

  // ---- reductions, movement, indexing ----
  reduce(op: ReduceOp, x: Input<CpuHandle>, nReduce: number): CpuHandle {
    const shape = x.view.shape;
    const out = this.scratch(x.dtype, numel(shape.slice(0, shape.length - nReduce)));
    const X = numericView(x.dtype, x.handle, x.view);
    reduceStrided(op, X.values, X.view, nReduce, out, this.ew);
    return this.store(x.dtype, out);
  }
  concat(xs: Input<CpuHandle>[], axis: number): CpuHandle {
    const out = hostArray(
      xs[0].dtype,
      xs.reduce((s, x) => s + numel(x.view.shape), 0),
    );
    concatViews(
      xs.map((x) => ({ data: x.handle, view: x.view })),
      axis,
      out,
    );
    return this.own(out);
  }
  matmul(a: Input<CpuHandle>, b: Input<CpuHandle>): CpuHandle {
    const sa = a.view.shape;
    const sb = b.view.shape;
    const M = sa[sa.length - 2],
      K = sa[sa.length - 1],
      N = sb[sb.length - 1];
    const batch = numel(sa.slice(0, -2));
    const C = this.pool.take(batch * M * N);
    const f32 = (x: Input<CpuHandle>) => {
      const { values: v, view } = numericView(x.dtype, x.handle, x.view, this.take);
      return { values: v instanceof Float32Array ? v : Float32Array.from(v), view };
    };
    const [A16, B16] = [f32(a), f32(b)];
    if (this.engine instanceof BlasEngine) {
      gemmViews(this.engine, A16, B16, C, (x) => gatherValues(x.values, x.view) as Float32Array);
    } else {
      const A = gatherValues(A16.values, A16.view);
      // x·Wᵀ: W [N, K] row-major goes to the engine as it is, not transposed first (for one row of x,
      // as in decoding, the transpose cost 30x the product).
      const t = packedTranspose(B16.view);
      const B = t ? B16.values.subarray(B16.view.offset, B16.view.offset + batch * K * N) : gatherValues(B16.values, B16.view);
      for (let i = 0; i < batch; i++) {
        this.engine.matmul(A.subarray(i * M * K, (i + 1) * M * K), B.subarray(i * K * N, (i + 1) * K * N), C.subarray(i * M * N, (i + 1) * M * N), M, N, K, t);
      }
    }
    this.recycle(a, A16);
    this.recycle(b, B16);
    return this.store(a.dtype, C);
  }
  gather(x: Input<CpuHandle>, idx: Input<CpuHandle>, axis: number): CpuHandle {
    const xv = this.packed(x);
    const rows = rowIds(idx, axis, x.view.shape);
    if (rows) {
      // embedding: one id per output row, whole rows of the table copied
      const dim = x.view.shape[1];
      const out = this.scratch(x.dtype, rows.length * dim) as Num;
      for (let r = 0; r < rows.length; r++) out.set(xv.subarray(rows[r] * dim, (rows[r] + 1) * dim), r * dim);
      return this.store(x.dtype, out);
    }
    const iv = gatherValues(idx.handle as Num, idx.view);
    const out = this.scratch(x.dtype, iv.length) as Num;
    gatherKernel(xv, x.view.shape, iv, idx.view.shape, axis, out);
    return this.store(x.dtype, out);
  }
  scatterAdd(shape: readonly number[], dtype: DType, idx: Input<CpuHandle>, src: Input<CpuHandle>, axis: number): CpuHandle {
    const acc = new Float64Array(numel(shape));
    const sv = this.packed(src);
    const rows = rowIds(idx, axis, shape);
    if (rows) {
      // embedding's gradient: whole rows added in order (the same f64 sums as the general kernel)
      const dim = shape[1];
      for (let r = 0; r < rows.length; r++) {
        const o = rows[r] * dim,
          i0 = r * dim;
        for (let j = 0; j < dim; j++) acc[o + j] += sv[i0 + j];
      }
      return this.store(dtype, acc);
    }
    const iv = gatherValues(idx.handle as Num, idx.view);
    scatterAddKernel(acc, shape, iv, sv, src.view.shape, axis);
    return this.store(dtype, acc);
  }
}

/** Whether a [..., K, N] view is the transpose of packed [..., N, K] matrices stored back to back. */
function packedTranspose(v: View): boolean {
  const r = v.shape.length;
  const [K, N] = [v.shape[r - 2], v.shape[r - 1]];
  if (v.strides[r - 2] !== 1 || v.strides[r - 1] !== K || K === 1 || N === 1) return false;
  let size = K * N;
  for (let d = r - 3; d >= 0; d--) {
    if (v.shape[d] !== 1 && v.strides[d] !== size) return false;
    size *= v.shape[d];
  }
  return true;
}

/** Integer view of a storage (f32 as its bits). */
function bits(h: HostArray): Bits {
  return h instanceof Float32Array ? new Int32Array(h.buffer, h.byteOffset, h.length) : (h as Bits);
}

/** A condition storage as u8 0/1 (it is u8 already from lt/eq). */
function truthy(c: Input<CpuHandle>): Uint8Array {
  if (c.dtype === "u8") return c.handle as Uint8Array;
  return Uint8Array.from(numeric(c.dtype, c.handle), (v) => (v ? 1 : 0));
}

function makeFused(be: CpuBackend): Partial<FusedKernels<CpuHandle>> {
  const rowsOf = (x: Input<CpuHandle>) => {
    const s = x.view.shape;
    const n = s[s.length - 1];
    return { rows: numel(s) / n, n };
  };
  const out = (dtype: DType, v: Float32Array): CpuHandle => be.store(dtype, v);
  const exp = (x: Float32Array, n: number) => {
    const v = x.subarray(0, n);
    if (!be.ew?.unary("exp", v, v)) unaryKernel("exp", v, v);
  };
  // RoPE and its backward: the rotation by +angle or -angle (its transpose).
  const rotate =
    (sign: 1 | -1) =>
    (x: Input<CpuHandle>, cos: Input<CpuHandle>, sin: Input<CpuHandle>, interleaved: boolean): CpuHandle => {
      const y = be.pool.take(numel(x.view.shape));
      const [data, c, s] = [numeric(x.dtype, x.handle) as Float32Array, be.packedF32(cos), be.packedF32(sin)];
      if (interleaved || !(data instanceof Float32Array) || !be.ew?.rope(data, x.view, c, s, sign, y)) ropeKernel(data, x.view, c, s, interleaved, sign, y);
      return out(x.dtype, y);
    };
  const blas = be.engine instanceof BlasEngine ? be.engine : null;
  const flat = (n: number): View => ({ shape: [n], strides: [1], offset: 0 });
  const arrays = { take: (n: number) => be.pool.take(n), give: (a: Float32Array) => be.pool.put(a) };
  const attn: AttnOps = blas
    ? { gemm: (tA, tB, M, N, K, A, B, C, acc) => blas.gemm(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, C, N, acc ? 1 : 0), exp, rows: be.ew, ...arrays }
    : { ...engineOps(be.engine, exp, arrays, (acc, x) => be.ew?.binary("add", acc, flat(acc.length), x, flat(x.length), acc) ?? false), rows: be.ew };
  let keepBytes = new Uint8Array(0);
  const lora: LoraOps = {
    gemm: attn.gemm,
    ...arrays,
    // One byte per element, reused by every backward (they run one at a time); `ready` says it holds this call's mask.
    dropout: (x, y, d, mask) => {
      if (mask?.ready && be.ew?.maskApply(x, keepBytes, d.p, y)) return;
      if (mask && keepBytes.length < x.length) keepBytes = new Uint8Array(x.length);
      if (be.ew?.dropout(x, y, d.p, d.seed, d.offset, mask ? keepBytes.subarray(0, x.length) : undefined)) {
        if (mask) mask.ready = true;
      } else dropoutKernel(x, d.p, d.seed, d.offset, y);
    },
  };
  const loraDims = (x: Input<CpuHandle>, w: Input<CpuHandle>, a: Input<CpuHandle>) => ({
    N: x.view.shape[0],
    inF: x.view.shape[1],
    outF: w.view.shape[0],
    r: a.view.shape[0],
  });
  return {
    softmax: (x) => {
      const { rows, n } = rowsOf(x);
      const y = be.pool.take(rows * n);
      softmaxRows(be.packedF32(x), rows, n, y, false);
      return out(x.dtype, y);
    },
    logSoftmax: (x) => {
      const { rows, n } = rowsOf(x);
      const y = be.pool.take(rows * n);
      softmaxRows(be.packedF32(x), rows, n, y, true);
      return out(x.dtype, y);
    },
    softmaxBackward: (y, gy) => {
      const { rows, n } = rowsOf(y);
      const g = be.pool.take(rows * n);
      softmaxBackwardRows(be.packedF32(y), be.packedF32(gy), rows, n, g, false);
      return out(y.dtype, g);
    },
    logSoftmaxBackward: (y, gy) => {
      const { rows, n } = rowsOf(y);
      const g = be.pool.take(rows * n);
      softmaxBackwardRows(be.packedF32(y), be.packedF32(gy), rows, n, g, true);
      return out(y.dtype, g);
    },
    rmsNorm: (x, w, eps) => {
      const { rows, n } = rowsOf(x);
      const y = be.pool.take(rows * n);
      const rstd = new Float32Array(rows);
      const [xv, wv] = [be.packedF32(x), be.packedF32(w)];
      if (!be.ew?.rmsNorm(xv, wv, rows, n, eps, y, rstd)) rmsNormRows(xv, wv, rows, n, eps, y, rstd);
      return { out: out(x.dtype, y), rstd: be.own(rstd) };
    },
    addRmsNorm: (x, r, w, eps) => {
      const { rows, n } = rowsOf(x);
      const [xv, rv, wv] = [be.packedF32(x), be.packedF32(r), be.packedF32(w)];
      const y = be.pool.take(rows * n);
      const rstd = new Float32Array(rows);
      if (x.dtype === "f32") {
        const h = be.pool.take(rows * n);
        if (!be.ew?.rmsNorm(xv, wv, rows, n, eps, y, rstd, { res: rv, h })) addRmsNormRows(xv, rv, wv, rows, n, eps, h, y, rstd);
        return { h: be.own(h), out: be.own(y), rstd: be.own(rstd) };
      }
      // f16/bf16: h is rounded to its dtype, then normed as stored (what the add + rmsNorm composite computes).
      const sum = new Float32Array(rows * n);
      for (let i = 0; i < sum.length; i++) sum[i] = xv[i] + rv[i];
      const h = out(x.dtype, sum);
      const hv = numeric(x.dtype, h) as Float32Array;
      rmsNormRows(hv, wv, rows, n, eps, y, rstd);
      return { h, out: out(x.dtype, y), rstd: be.own(rstd) };
    },
    rmsNormBackward: (x, w, rstd, gy) => {
      const { rows, n } = rowsOf(x);
      const gx = be.pool.take(rows * n);
      const gw = new Float64Array(n);
      const [xv, wv, rv, gv] = [be.packedF32(x), be.packedF32(w), be.packedF32(rstd), be.packedF32(gy)];
      if (!be.ew?.rmsNormBackward(xv, wv, rv, gv, rows, n, gx, gw)) rmsNormBackwardRows(xv, wv, rv, gv, rows, n, gx, gw);
      return { gx: out(x.dtype, gx), gw: out(w.dtype, Float32Array.from(gw)) };
    },
    crossEntropy: (logits, targets, ignore) => {
      const { rows, n } = rowsOf(logits);
      const loss = new Float32Array(rows);
      const lse = new Float32Array(rows);
      const t = gatherValues(targets.handle as Num, targets.view) as Int32Array;
      const x = be.packedF32(logits);
      crossEntropyRowsKernel(x, t, rows, n, ignore, loss, lse, be.ew?.crossEntropyRows(x, rows, n, lse) ?? false);
      return { loss: out(logits.dtype, loss), lse: be.own(lse) };
    },
    crossEntropyBackward: (logits, targets, lse, g, ignore) => {
      const { rows, n } = rowsOf(logits);
      const gl = be.pool.take(rows * n);
      const t = gatherValues(targets.handle as Num, targets.view) as Int32Array;
      const [x, l, gv] = [be.packedF32(logits), be.packedF32(lse), be.packedF32(g)];
      const done = be.ew?.crossEntropyRows(x, rows, n, l, { g: gv, out: gl }) ?? false;
      crossEntropyBackwardRows(x, t, l, gv, rows, n, ignore, gl, done);
      return out(logits.dtype, gl);
    },
    matmul4bit: (x, w, transpose) => matmul4bitKernel(be, x, w, transpose),
    // WASM SIMD where it runs (same mask bits; sigmoid within 2 ulp), else the TypeScript kernels.
    dropout: (x, p, seed, offset) => {
      const v = be.packedF32(x);
      const y = be.pool.take(v.length);
      if (!be.ew?.dropout(v, y, p, seed, offset)) dropoutKernel(v, p, seed, offset, y);
      return out(x.dtype, y);
    },
    swiglu: (gate, up) => {
      const y = be.pool.take(numel(gate.view.shape));
      const [g, u] = [be.packedF32(gate), be.packedF32(up)];
      if (!be.ew?.swiglu(g, u, y)) swigluKernel(g, u, y);
      return out(gate.dtype, y);
    },
    swigluBackward: (gate, up, gy) => {
      const n = numel(gate.view.shape);
      const gGate = be.pool.take(n),
        gUp = be.pool.take(n);
      const [g, u, dy] = [be.packedF32(gate), be.packedF32(up), be.packedF32(gy)];
      if (!be.ew?.swigluBackward(g, u, dy, gGate, gUp)) swigluBackwardKernel(g, u, dy, gGate, gUp);
      return { gGate: out(gate.dtype, gGate), gUp: out(up.dtype, gUp) };
    },
    rope: rotate(1),
    ropeBackward: rotate(-1),
    attention: (q, k, v, causal, scale) => {
      const a = attnShape(q, k, causal, scale);
      const r = attentionForward(attn, be.packedF32(q), be.packedF32(k), be.packedF32(v), a);
      return { out: out(q.dtype, r.out), lse: be.own(r.lse) };
    },
    attentionBackward: (q, k, v, o, lse, gy, causal, scale) => {
      const a = attnShape(q, k, causal, scale);
      const r = attentionBackward(attn, be.packedF32(q), be.packedF32(k), be.packedF32(v), be.packedF32(o), be.packedF32(lse), be.packedF32(gy), a);
      return { gq: out(q.dtype, r.gq), gk: out(k.dtype, r.gk), gv: out(v.dtype, r.gv) };
    },
    attentionDecode: (q, kNew, vNew, ks, vs, lengths, scale) => {
      const [Hq, N, D] = q.view.shape;
      const y = be.pool.take(N * Hq * D);
      const args = [
        { N, Hq, Hkv: kNew.view.shape[0], D, scale },
        rowsOf3(q),
        rowsOf3(kNew),
        rowsOf3(vNew),
        ks.map(rowsOf3),
        vs.map(rowsOf3),
        lengths,
        y,
      ] as const;
      if (!be.decodeWasm?.run(...args)) attentionDecodeKernel(...args);
      return be.own(y);
    },
    loraRows: (x, w, bias, a, b, mask) => {
      const r = loraForward(
        lora,
        loraDims(x, w, a),
        be.packedF32(x),
        be.packedF32(w),
        bias && be.packedF32(bias),
        be.packedF32(a),
        be.packedF32(b),
        be.packedF32(mask),
        null,
      );
      lora.give(r.h); // inference only: nothing keeps h
      return be.own(r.y);
    },
    loraLinear: (x, w, bias, a, b, scaling, drop) => {
      const r = loraForward(
        lora,
        loraDims(x, w, a),
        be.packedF32(x),
        be.packedF32(w),
        bias && be.packedF32(bias),
        be.packedF32(a),
        be.packedF32(b),
        scaling,
        drop,
      );
      return { y: be.own(r.y), h: be.own(r.h) };
    },
    loraLinearBackward: (x, w, a, b, h, gy, scaling, drop) => {
      const r = loraBackward(
        lora,
        loraDims(x, w, a),
        be.packedF32(x),
        be.packedF32(w),
        be.packedF32(a),
        be.packedF32(b),
        be.packedF32(h),
        be.packedF32(gy),
        scaling,
        drop,
      );
      return { gx: be.own(r.gx), gA: be.own(r.gA), gB: be.own(r.gB) };
    },
    adamw: (p, g, m, v, size, h) => adamwKernel(p as Float32Array, be.packedF32(g), m as Float32Array, v as Float32Array, size, h),
  };
}

/** A 3-D f32 input whose last stride is 1 as the decode kernels read it. */
function rowsOf3(c: Input<CpuHandle>): Rows {
  return { data: c.handle as Float32Array, offset: c.view.offset, s0: c.view.strides[0], s1: c.view.strides[1] };
}

function attnShape(q: Input<CpuHandle>, k: Input<CpuHandle>, causal: boolean, scale: number): AttnShape {
  const [B, Hq, T, D] = q.view.shape;
  const [, Hkv, S] = k.view.shape;
  return { B, Hq, Hkv, T, S, D, causal, scale };
}

/**
 * The ids of an embedding-style index: 2-D, axis 0, one id per row broadcast along the row
 * (ops.embedding's expand), checked against the table's rows; null for any other index.
 */
function rowIds(idx: Input<CpuHandle>, axis: number, xShape: readonly number[]): Int32Array | null {
  const { shape, strides, offset } = idx.view;
  if (axis !== 0 || shape.length !== 2 || xShape.length !== 2 || strides[1] !== 0 || shape[1] !== xShape[1] || !(idx.handle instanceof Int32Array)) return null;
  const ids = new Int32Array(shape[0]);
  for (let r = 0; r < shape[0]; r++) {
    const v = idx.handle[offset + r * strides[0]];
    if (!(v >= 0 && v < xShape[0])) return null; // the general kernel reports the bad index
    ids[r] = v;
  }
  return ids;
}
