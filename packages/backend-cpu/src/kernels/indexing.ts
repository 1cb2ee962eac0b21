import { numel } from "@lowrank/tensor";
import type { Num } from "./strided.ts";

function checkIndex(v: number, dim: number, op: string, axis: number): void {
  if (v < 0 || v >= dim || !Number.isInteger(v)) throw new RangeError(`${op}: index ${v} out of range [0, ${dim}) on axis ${axis}`);
}

/** out = torch.gather(x, axis, idx) on packed x [xShape] and packed idx [idxShape]. */
export function gatherKernel(x: Num, xShape: readonly number[], idx: Int32Array | Num, idxShape: readonly number[], axis: number, out: Num): void {
  const rank = xShape.length;
  const xStrides = new Array<number>(rank);
  let s = 1;
  for (let d = rank - 1; d >= 0; d--) { xStrides[d] = s; s *= xShape[d]; }
  const n = numel(idxShape);
  const coord = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    const v = idx[i];
    checkIndex(v, xShape[axis], "gather", axis);
    let o = 0;
    for (let d = 0; d < rank; d++) o += (d === axis ? v : coord[d]) * xStrides[d];
    out[i] = x[o];
    for (let d = rank - 1; d >= 0; d--) { if (++coord[d] < idxShape[d]) break; coord[d] = 0; }
  }
}

/** acc (zeros of outShape) [idx along axis] += src, in f64. */
export function scatterAddKernel(acc: Float64Array, outShape: readonly number[], idx: Int32Array | Num, src: Num, srcShape: readonly number[], axis: number): void {
  const rank = outShape.length;
  const oStrides = new Array<number>(rank);
  let s = 1;
  for (let d = rank - 1; d >= 0; d--) { oStrides[d] = s; s *= outShape[d]; }
  const n = numel(srcShape);
  const coord = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    const v = idx[i];
    checkIndex(v, outShape[axis], "scatterAdd", axis);
    let o = 0;
    for (let d = 0; d < rank; d++) o += (d === axis ? v : coord[d]) * oStrides[d];
    acc[o] += src[i];
    for (let d = rank - 1; d >= 0; d--) { if (++coord[d] < srcShape[d]) break; coord[d] = 0; }
  }
}

/** Concatenate packed parts along `axis` into out. */
export function concatKernel(parts: Num[], shapes: (readonly number[])[], axis: number, out: Num): void {
  const outer = numel(shapes[0].slice(0, axis));
  const blocks = shapes.map((sh) => numel(sh.slice(axis)));
  const row = blocks.reduce((a, b) => a + b, 0);
  let col = 0;
  parts.forEach((p, k) => {
    const blk = blocks[k];
    for (let o = 0; o < outer; o++) {
      const dst = o * row + col;
      const src = o * blk;
      for (let j = 0; j < blk; j++) out[dst + j] = p[src + j];
    }
    col += blk;
  });
}
