import type { ReduceOp, View } from "@lowrank/tensor";
import type { ElementwiseWasm } from "../wasm/elementwise.ts";
import type { Out } from "./elementwise.ts";
import { type Num, coalesce, rowStarts } from "./strided.ts";

/**
 * Reduce the last `nReduce` dims of a (possibly permuted or broadcast) view; out[o] takes the
 * elements of output o in row-major order of the reduced dims, whatever the loop order, so
 * results do not depend on the layout. Sums accumulate in f64; max is NaN if any element is
 * NaN, and otherwise the first of equal maxima wins (-0 before 0 stays -0).
 */
export function reduceStrided(op: ReduceOp, x: Num, view: View, nReduce: number, out: Out, wasm: ElementwiseWasm | null = null): void {
  const k = view.shape.length - nReduce;
  const outer = coalesce(view.shape.slice(0, k), [view.strides.slice(0, k)]);
  const inner = coalesce(view.shape.slice(k), [view.strides.slice(k)]);
  const oShape = outer.shape,
    os = outer.strides[0],
    iShape = inner.shape,
    is = inner.strides[0];
  const starts = rowStarts([...oShape, 1], [...os, 0], view.offset);
  if (out.length === 0) return;
  if (iShape.length === 1 && is[0] === 1) {
    // WASM sums in another fixed order (8 partial f64 sums): results may differ in the last f32 bit.
    if (op === "sum" && x instanceof Float32Array && wasm?.sumRuns(x, starts, iShape[0], out)) return;
    reduceRuns(op, x, starts, iShape[0], out);
  } else if (oShape.length === 1 && os[0] === 1) {
    // Column-like: step through the reduced elements in order, each across every output at once.
    const inner = rowStarts([...iShape, 1], [...is, 0], 0);
    if (op === "sum" && x instanceof Float32Array && wasm?.sumColumns(x, view.offset, oShape[0], inner, out)) return;
    reduceColumns(op, x, view.offset, oShape[0], inner, out);
  } else {
    const q = iShape.length - 1;
    reduceNested(op, x, starts, rowStarts(iShape, is, 0), iShape[q], is[q], out);
  }
}

/** Each output reduces a contiguous run of n elements starting at starts[o]. */
function reduceRuns(op: ReduceOp, x: Num, starts: Int32Array, n: number, out: Out): void {
  for (let o = 0; o < starts.length; o++) {
    const base = starts[o];
    if (op === "sum") {
      let s = 0;
      for (let i = base; i < base + n; i++) s += x[i];
      out[o] = s;
    } else {
      // Four independent Math.max chains (NaN-propagating); only a 0 result needs the order: the first zero's sign.
      let m0 = -Infinity,
        m1 = -Infinity,
        m2 = -Infinity,
        m3 = -Infinity;
      let i = base;
      for (; i + 4 <= base + n; i += 4) {
        m0 = Math.max(m0, x[i]);
        m1 = Math.max(m1, x[i + 1]);
        m2 = Math.max(m2, x[i + 2]);
        m3 = Math.max(m3, x[i + 3]);
      }
      for (; i < base + n; i++) m0 = Math.max(m0, x[i]);
      let m = Math.max(Math.max(m0, m1), Math.max(m2, m3));
      if (m === 0)
        for (i = base; ; i++)
          if (x[i] === 0) {
            m = x[i];
            break;
          }
      out[o] = m;
    }
  }
}

/** Output o reduces x[offset + o + inner[j]] over j in order. */
function reduceColumns(op: ReduceOp, x: Num, offset: number, count: number, inner: Int32Array, out: Out): void {
  const acc = new Float64Array(count).fill(op === "sum" ? 0 : -Infinity);
  for (let j = 0; j < inner.length; j++) {
    const base = offset + inner[j];
    if (op === "sum") for (let o = 0; o < count; o++) acc[o] += x[base + o];
    else
      for (let o = 0; o < count; o++) {
        const v = x[base + o];
        if (v > acc[o] || v !== v) acc[o] = v;
      }
  }
  for (let o = 0; o < count; o++) out[o] = acc[o];
}

/** Output o reduces x[starts[o] + rows[r] + k * step] over r, then k < n, in order. */
function reduceNested(op: ReduceOp, x: Num, starts: Int32Array, rows: Int32Array, n: number, step: number, out: Out): void {
  for (let o = 0; o < starts.length; o++) {
    let s = op === "sum" ? 0 : -Infinity;
    for (let r = 0; r < rows.length; r++) {
      let i = starts[o] + rows[r];
      if (op === "sum") for (let k = 0; k < n; k++, i += step) s += x[i];
      else
        for (let k = 0; k < n; k++, i += step) {
          const v = x[i];
          if (v > s || v !== v) s = v;
        }
    }
    out[o] = s;
  }
}
