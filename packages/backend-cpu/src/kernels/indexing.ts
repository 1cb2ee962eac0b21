import { type View, numel } from "@lowrank/tensor";
import { type Elems, type Num, contiguous, copyView } from "./strided.ts";

function checkIndex(v: number, dim: number, op: string, axis: number): void {
  if (v < 0 || v >= dim || !Number.isInteger(v)) throw new RangeError(`${op}: index ${v} out of range [0, ${dim}) on axis ${axis}`);
}

/** out = torch.gather(x, axis, idx) on packed x [xShape] and packed idx [idxShape]. */
export function gatherKernel(x: Num, xShape: readonly number[], idx: Int32Array | Num, idxShape: readonly number[], axis: number, out: Num): void {
  const rank = xShape.length;
  const xStrides = new Array<number>(rank);
  let s = 1;
  for (let d = rank - 1; d >= 0; d--) {
    xStrides[d] = s;
    s *= xShape[d];
  }
  const n = numel(idxShape);
  const coord = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    const v = idx[i];
    checkIndex(v, xShape[axis], "gather", axis);
    let o = 0;
    for (let d = 0; d < rank; d++) o += (d === axis ? v : coord[d]) * xStrides[d];
    out[i] = x[o];
    for (let d = rank - 1; d >= 0; d--) {
      if (++coord[d] < idxShape[d]) break;
      coord[d] = 0;
    }
  }
}

/** acc (zeros of outShape) [idx along axis] += src, in f64. */
export function scatterAddKernel(
  acc: Float64Array,
  outShape: readonly number[],
  idx: Int32Array | Num,
  src: Num,
  srcShape: readonly number[],
  axis: number,
): void {
  const rank = outShape.length;
  const oStrides = new Array<number>(rank);
  let s = 1;
  for (let d = rank - 1; d >= 0; d--) {
    oStrides[d] = s;
    s *= outShape[d];
  }
  const n = numel(srcShape);
  const coord = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    const v = idx[i];
    checkIndex(v, outShape[axis], "scatterAdd", axis);
    let o = 0;
    for (let d = 0; d < rank; d++) o += (d === axis ? v : coord[d]) * oStrides[d];
    acc[o] += src[i];
    for (let d = rank - 1; d >= 0; d--) {
      if (++coord[d] < srcShape[d]) break;
      coord[d] = 0;
    }
  }
}

/** Concatenate views (storage arrays of one type) along `axis` into packed out. */
export function concatViews(parts: { data: Elems; view: View }[], axis: number, out: Elems): void {
  const total = parts.reduce((s, p) => s + p.view.shape[axis], 0);
  const strides = contiguous(parts[0].view.shape.map((n, d) => (d === axis ? total : n)));
  let at = 0;
  for (const { data, view } of parts) {
    copyView(data, view, out, { shape: view.shape, strides, offset: at * strides[axis] });
    at += view.shape[axis];
  }
}
