/**
 * Batched matmul of strided views through a BLAS, reading the operands in place: a matrix whose
 * columns are contiguous is passed as stored with its row stride as leading dimension; one whose
 * rows are contiguous (a transposed view such as W.T) as CblasTrans. Only views with neither
 * (expanded or doubly strided) are packed first.
 */
import { type View, contiguousStrides, numel } from "@lowrank/tensor";
import type { BlasEngine } from "../blas/engine.ts";

/** A [rows, cols] matrix with strides (rs, cs) as BLAS reads it: leading dimension ld, transposed or not; null if it cannot. */
export function blasLayout(rows: number, cols: number, rs: number, cs: number): { trans: boolean; ld: number } | null {
  // A single row or column has a free stride along its length-1 axis: pick the one BLAS accepts.
  if (cs === 1 || cols === 1) {
    const ld = rows === 1 ? cols : rs;
    if (ld >= Math.max(1, cols)) return { trans: false, ld };
  }
  if (rs === 1 || rows === 1) {
    const ld = cols === 1 ? rows : cs;
    if (ld >= Math.max(1, rows)) return { trans: true, ld };
  }
  return null;
}

/** Storage offset of each matrix of a [..., rows, cols] view, batch index in row-major order. */
export function batchOffsets(view: View): number[] {
  const dims = view.shape.slice(0, -2);
  const out: number[] = [];
  const idx = dims.map(() => 0);
  for (let i = 0, n = numel(dims); i < n; i++) {
    let off = view.offset;
    for (let d = 0; d < dims.length; d++) off += idx[d] * view.strides[d];
    out.push(off);
    for (let d = dims.length - 1; d >= 0 && ++idx[d] === dims[d]; d--) idx[d] = 0;
  }
  return out;
}

export interface StridedF32 {
  /** The storage's values as f32 (f16/bf16 decoded); the view indexes into it. */
  readonly values: Float32Array;
  readonly view: View;
}

/** C[batch, M, N] (contiguous) = a[batch, M, K] · b[batch, K, N]; `pack` gives a contiguous copy of a view BLAS cannot read. */
export function gemmViews(engine: BlasEngine, a: StridedF32, b: StridedF32, C: Float32Array, pack: (x: StridedF32) => Float32Array): void {
  const r = a.view.shape.length;
  const M = a.view.shape[r - 2],
    K = a.view.shape[r - 1],
    N = b.view.shape[r - 1];
  if (C.length === 0) return;
  const operand = (x: StridedF32, rows: number, cols: number) => {
    const s = x.view.strides;
    const layout = blasLayout(rows, cols, s[r - 2], s[r - 1]);
    if (layout) return { values: x.values, offsets: batchOffsets(x.view), ...layout };
    const packed = pack(x);
    return { values: packed, offsets: batchOffsets({ shape: x.view.shape, strides: contiguousStrides(x.view.shape), offset: 0 }), trans: false, ld: cols };
  };
  const A = operand(a, M, K),
    B = operand(b, K, N);
  for (let i = 0; i < A.offsets.length; i++) {
    engine.gemm(A.trans, B.trans, M, N, K, A.values.subarray(A.offsets[i]), A.ld, B.values.subarray(B.offsets[i]), B.ld, C.subarray(i * M * N), N);
  }
}
