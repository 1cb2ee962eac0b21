/**
 * Walking strided views without per-element index arrays: dims that every operand can merge are
 * coalesced (so a broadcast scalar, a row [n] or a column [.., 1] becomes a 2-D loop with inner
 * stride 0 or 1), then kernels run an outer loop over row starts and a tight inner loop over the
 * last dim.
 */
import { type DType, type HostArray, type View, isContiguous, numel } from "@lowrank/tensor";
import { decodeHalf, isHalf } from "./half.ts";
import type { ElementwiseWasm } from "../wasm/elementwise.ts";

export type Num = Float32Array | Float64Array | Int32Array | Uint8Array;
/** A storage array or a decoded one: anything indexable by element. */
export type Elems = Num | Uint16Array;

/** A loop nest over one shape for several operands: merged dims (never empty) and each operand's strides. */
export interface Loop {
  shape: number[];
  strides: number[][];
}

/**
 * Merge adjacent dims where every operand steps through them as one (stride[d] = stride[d+1] *
 * shape[d+1], which also holds for broadcast stride 0) and drop size-1 dims. Row-major order of
 * the elements is unchanged. An empty result becomes one dim of size 1.
 */
export function coalesce(shape: readonly number[], strides: readonly (readonly number[])[]): Loop {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = shape.length - 1; d >= 0; d--) {
    const size = shape[d];
    if (size === 1) continue;
    if (outShape.length && strides.every((s, k) => s[d] === outStrides[k][0] * outShape[0])) {
      outShape[0] *= size;
      continue;
    }
    outShape.unshift(size);
    strides.forEach((s, k) => outStrides[k].unshift(s[d]));
  }
  if (!outShape.length) return { shape: [1], strides: strides.map(() => [0]) };
  return { shape: outShape, strides: outStrides };
}

/** Storage offset of the first element of every row (every index of all dims but the last). */
export function rowStarts(shape: readonly number[], strides: readonly number[], offset: number): Int32Array {
  const rank = shape.length;
  const rows = numel(shape.slice(0, rank - 1));
  const out = new Int32Array(rows);
  const idx = new Array<number>(rank).fill(0);
  let base = offset;
  for (let r = 0; r < rows; r++) {
    out[r] = base;
    for (let d = rank - 2; d >= 0; d--) {
      base += strides[d];
      if (++idx[d] < shape[d]) break;
      base -= strides[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** Storage offsets of every element of a view, in row-major order of its shape. */
export function offsets(view: View): Int32Array {
  const n = numel(view.shape);
  const { shape, strides } = coalesce(view.shape, [view.strides]);
  const s = strides[0];
  const last = shape.length - 1,
    inner = shape[last],
    step = s[last];
  const starts = rowStarts(shape, s, view.offset);
  const out = new Int32Array(n);
  for (let r = 0, o = 0; r < starts.length; r++) for (let j = 0, i = starts[r]; j < inner; j++, i += step) out[o++] = i;
  return out;
}

/** Lowest and one past the highest storage index a non-empty view touches. */
export function extent(view: View): [number, number] {
  let lo = view.offset,
    hi = view.offset;
  view.shape.forEach((n, d) => {
    const span = (n - 1) * view.strides[d];
    if (span < 0) lo += span;
    else hi += span;
  });
  return [lo, hi + 1];
}

/**
 * The view's storage as numbers: f16/bf16 decoded to f32 over just the range the view touches
 * (a broadcast scalar decodes one element), with the view shifted onto the decoded copy.
 */
export function numericView(dtype: DType, data: HostArray, view: View, take?: (n: number) => Float32Array): { values: Num; view: View } {
  if (!isHalf(dtype)) return { values: data as Num, view };
  if (numel(view.shape) === 0) return { values: new Float32Array(0), view };
  const [lo, hi] = extent(view);
  return { values: decodeHalf(dtype, (data as Uint16Array).subarray(lo, hi), take?.(hi - lo)), view: { ...view, offset: view.offset - lo } };
}

/** Numeric values of a whole storage: f16/bf16 decoded to f32, other types as they are. */
export function numeric(dtype: DType, data: HostArray): Num {
  return isHalf(dtype) ? decodeHalf(dtype, data as Uint16Array) : (data as Num);
}

/** True when the view covers `data` exactly in row-major order (no gather needed). */
export function isDense(view: View, length: number): boolean {
  return view.offset === 0 && numel(view.shape) === length && isContiguous(view.shape, view.strides);
}

/** The view's values, contiguous, in the storage's own type (copy unless already dense). */
export function gatherValues<T extends Elems>(src: T, view: View): T {
  if (isDense(view, src.length)) return src;
  const out = new (src.constructor as { new (n: number): T })(numel(view.shape));
  copyView(src, view, out, { shape: view.shape, strides: contiguous(view.shape), offset: 0 });
  return out;
}

export function contiguous(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  for (let d = shape.length - 1, s = 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  return strides;
}

/** Edge of the square tiles a transposing copy moves at a time (32 x 4 bytes = two cache lines). */
const TILE = 32;

/** dst[dv] = src[sv] for two views of one shape over arrays of one element type. */
/** The WASM row copy (ElementwiseWasm.copyRows), where the backend has one. */
export type RowCopier = Pick<ElementwiseWasm, "copyRows">;

export function copyView(src: Elems, sv: View, dst: Elems, dv: View, rows: RowCopier | null = null): void {
  if (numel(sv.shape) === 0) return;
  const {
    shape,
    strides: [ss, ds],
  } = coalesce(sv.shape, [sv.strides, dv.strides]);
  const q = shape.length - 1;
  // A permuted source reads its inner dim with a long stride: go tile by tile instead.
  const p = ss.indexOf(1);
  if (p >= 0 && p < q && Math.abs(ss[q]) >= TILE && shape[p] >= 8 && shape[q] >= 8) {
    copyTransposed(src, sv.offset, ss, dst, dv.offset, ds, shape, p);
    return;
  }
  const n = shape[q],
    si = ss[q],
    di = ds[q];
  const sr = rowStarts(shape, ss, sv.offset),
    dr = rowStarts(shape, ds, dv.offset);
  if (
    rows &&
    si === 1 &&
    di === 1 &&
    (src instanceof Float32Array || src instanceof Int32Array) &&
    (dst instanceof Float32Array || dst instanceof Int32Array)
  ) {
    let packed = true;
    for (let r = 1; r < dr.length && packed; r++) packed = dr[r] === dr[0] + r * n;
    if (packed && rows.copyRows(src, sr, n, dst, dr[0])) return;
  }
  for (let r = 0; r < sr.length; r++) {
    let i = sr[r],
      j = dr[r];
    if (si === 1 && di === 1) {
      if (n >= 64) (dst as Uint8Array).set((src as Uint8Array).subarray(i, i + n), j);
      else for (let k = 0; k < n; k++) dst[j + k] = src[i + k];
    } else if (si === 0 && di === 1) {
      dst.fill(src[i], j, j + n);
    } else {
      for (let k = 0; k < n; k++, i += si, j += di) dst[j] = src[i];
    }
  }
}

/** copyView when source dim p has stride 1 and the last dim a long stride: square tiles of (p, last). */
function copyTransposed(src: Elems, so: number, ss: number[], dst: Elems, dO: number, ds: number[], shape: number[], p: number): void {
  const q = shape.length - 1;
  const P = shape[p],
    Q = shape[q],
    sq = ss[q],
    dp = ds[p],
    dq = ds[q];
  const rest = shape.map((n, d) => (d === p || d === q ? 1 : n));
  const restS = ss.map((s, d) => (d === p || d === q ? 0 : s)),
    restD = ds.map((s, d) => (d === p || d === q ? 0 : s));
  const sb = rowStarts([...rest, 1], [...restS, 0], so),
    db = rowStarts([...rest, 1], [...restD, 0], dO);
  for (let b = 0; b < sb.length; b++) {
    for (let p0 = 0; p0 < P; p0 += TILE) {
      const p1 = Math.min(P, p0 + TILE);
      for (let q0 = 0; q0 < Q; q0 += TILE) {
        const q1 = Math.min(Q, q0 + TILE);
        for (let ip = p0; ip < p1; ip++) {
          let i = sb[b] + ip + q0 * sq,
            j = db[b] + ip * dp + q0 * dq;
          for (let iq = q0; iq < q1; iq++, i += sq, j += dq) dst[j] = src[i];
        }
      }
    }
  }
}

/** dst[c * ld + off + r] = src[r * cols + c] for src [rows, cols], in 32×32 tiles (strided writes stay in cache). */
export function transposeInto(src: Float32Array, rows: number, cols: number, dst: Float32Array, ld: number, off: number): void {
  const T = 32;
  for (let r0 = 0; r0 < rows; r0 += T) {
    const r1 = Math.min(rows, r0 + T);
    for (let c0 = 0; c0 < cols; c0 += T) {
      const c1 = Math.min(cols, c0 + T);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) dst[c * ld + off + r] = src[r * cols + c];
    }
  }
}
