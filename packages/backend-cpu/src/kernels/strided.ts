import { type DType, type HostArray, type View, isContiguous, numel, toF32 } from "@lowrank/tensor";

export type Num = Float32Array | Float64Array | Int32Array | Uint8Array;

/** Storage offsets of every element of a view, in row-major order of its shape. */
export function offsets(view: View): Int32Array {
  const { shape, strides, offset } = view;
  const n = numel(shape);
  const out = new Int32Array(n);
  const rank = shape.length;
  if (rank === 0) {
    out[0] = offset;
    return out;
  }
  if (isContiguous(shape, strides)) {
    for (let i = 0; i < n; i++) out[i] = offset + i;
    return out;
  }
  const inner = shape[rank - 1];
  const innerStride = strides[rank - 1];
  const idx = new Array<number>(rank).fill(0);
  let base = offset;
  for (let i = 0; i < n; i += inner) {
    for (let j = 0; j < inner; j++) out[i + j] = base + j * innerStride;
    // advance the outer multi-index
    for (let d = rank - 2; d >= 0; d--) {
      idx[d]++;
      base += strides[d];
      if (idx[d] < shape[d]) break;
      base -= strides[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** Numeric values of a storage: f16/bf16 decoded to f32, other types as they are. */
export function numeric(dtype: DType, data: HostArray): Num {
  return dtype === "f16" || dtype === "bf16" ? toF32(dtype, data) : (data as Num);
}

/** True when the view covers `data` exactly in row-major order (no gather needed). */
export function isDense(view: View, length: number): boolean {
  return view.offset === 0 && numel(view.shape) === length && isContiguous(view.shape, view.strides);
}

/** The view's values, contiguous, as numbers (copy unless already dense). */
export function gatherValues(src: Num, view: View): Num {
  if (isDense(view, src.length)) return src;
  const off = offsets(view);
  const out = new (src.constructor as { new (n: number): Num })(off.length);
  for (let i = 0; i < off.length; i++) out[i] = src[off[i]];
  return out;
}
