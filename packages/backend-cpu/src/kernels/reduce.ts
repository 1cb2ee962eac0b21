import type { ReduceOp } from "@lowrank/tensor";
import type { Num } from "./strided.ts";

/** Reduce rows of a packed [outer, inner] array. Sums accumulate in f64. */
export function reduceKernel(op: ReduceOp, x: Num, outer: number, inner: number, out: Float32Array | Int32Array | Uint8Array): void {
  for (let o = 0; o < outer; o++) {
    const base = o * inner;
    if (op === "sum") {
      let s = 0;
      for (let i = 0; i < inner; i++) s += x[base + i];
      out[o] = s;
    } else {
      let m = -Infinity;
      for (let i = 0; i < inner; i++) {
        const v = x[base + i];
        if (v > m || v !== v) m = v;
        if (m !== m) break;
      }
      out[o] = m;
    }
  }
}
