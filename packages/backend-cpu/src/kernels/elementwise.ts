/**
 * Elementwise kernels. Values are computed in f64 (JS numbers) and rounded by the output array,
 * which for f32 operands gives exactly the f32 result of add/sub/mul/div. Binary ops and where
 * walk coalesced views row by row (strided.ts); each op has its own loops for the common inner
 * strides (both contiguous, a scalar or a broadcast row on either side) so no per-element
 * closure or index array is involved.
 */
import type { BinaryOp, UnaryOp, View } from "@lowrank/tensor";
import { type Num, coalesce, rowStarts } from "./strided.ts";

export type Out = Float32Array | Int32Array | Uint8Array;

/** out[i] = op(x[i]) on packed x. */
export function unaryKernel(op: UnaryOp, x: Num, out: Out): void {
  const n = out.length;
  switch (op) {
    case "neg":
      for (let i = 0; i < n; i++) out[i] = -x[i];
      break;
    case "exp":
      for (let i = 0; i < n; i++) out[i] = Math.exp(x[i]);
      break;
    case "log":
      for (let i = 0; i < n; i++) out[i] = Math.log(x[i]);
      break;
    case "sqrt":
      for (let i = 0; i < n; i++) out[i] = Math.sqrt(x[i]);
      break;
    case "recip":
      for (let i = 0; i < n; i++) out[i] = 1 / x[i];
      break;
    case "sin":
      for (let i = 0; i < n; i++) out[i] = Math.sin(x[i]);
      break;
    case "cos":
      for (let i = 0; i < n; i++) out[i] = Math.cos(x[i]);
      break;
    case "tanh":
      for (let i = 0; i < n; i++) out[i] = Math.tanh(x[i]);
      break;
    case "sigmoid":
      for (let i = 0; i < n; i++) out[i] = 1 / (1 + Math.exp(-x[i]));
      break;
    case "abs":
      for (let i = 0; i < n; i++) out[i] = Math.abs(x[i]);
      break;
    case "relu":
      for (let i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0;
      break;
  }
}

type Rows = (a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number) => void;

/**
 * out = a op b over views of one shape; out is packed. max/min give NaN when either side is NaN
 * (Math.max/min); an Int32Array out truncates div toward zero; lt/eq write 1/0.
 */
export function binaryStrided(op: BinaryOp, a: Num, av: View, b: Num, bv: View, out: Out): void {
  if (out.length === 0) return;
  const {
    shape,
    strides: [sa, sb],
  } = coalesce(av.shape, [av.strides, bv.strides]);
  const q = shape.length - 1;
  ROWS[op](a, rowStarts(shape, sa, av.offset), sa[q], b, rowStarts(shape, sb, bv.offset), sb[q], out, shape[q]);
}

/** Integer views of storages: where moves bits, so f32 goes through its Int32Array view. */
export type Bits = Int32Array | Uint16Array | Uint8Array;

/**
 * out = cond ? a : b over views of one shape, bit for bit (a NaN keeps its payload). cond is u8;
 * the select is branch-free (mask = -1 when cond != 0), since a random mask mispredicts half the time.
 */
export function whereStrided(c: Uint8Array, cv: View, a: Bits, av: View, b: Bits, bv: View, out: Bits): void {
  if (out.length === 0) return;
  const {
    shape,
    strides: [sc, sa, sb],
  } = coalesce(cv.shape, [cv.strides, av.strides, bv.strides]);
  const q = shape.length - 1,
    n = shape[q];
  const rc = rowStarts(shape, sc, cv.offset),
    ra = rowStarts(shape, sa, av.offset),
    rb = rowStarts(shape, sb, bv.offset);
  const ic = sc[q],
    ia = sa[q],
    ib = sb[q];
  for (let r = 0, o = 0; r < rc.length; r++, o += n) {
    let h = rc[r],
      i = ra[r],
      j = rb[r];
    if (ic === 1 && ia === 1 && ib === 1) {
      for (let k = 0; k < n; k++) {
        const t = c[h + k],
          m = (t | -t) >> 31;
        out[o + k] = (a[i + k] & m) | (b[j + k] & ~m);
      }
    } else if (ic === 1 && ia === 1 && ib === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) {
        const t = c[h + k],
          m = (t | -t) >> 31;
        out[o + k] = (a[i + k] & m) | (y & ~m);
      }
    } else if (ic === 1 && ia === 0 && ib === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) {
        const t = c[h + k],
          m = (t | -t) >> 31;
        out[o + k] = (x & m) | (b[j + k] & ~m);
      }
    } else {
      for (let k = o; k < o + n; k++, h += ic, i += ia, j += ib) out[k] = c[h] ? a[i] : b[j];
    }
  }
}

function addRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = a[i + k] + b[j + k];
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = a[i + k] + y;
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = x + b[j + k];
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = a[i] + b[j];
  }
}
function subRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = a[i + k] - b[j + k];
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = a[i + k] - y;
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = x - b[j + k];
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = a[i] - b[j];
  }
}
function mulRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = a[i + k] * b[j + k];
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = a[i + k] * y;
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = x * b[j + k];
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = a[i] * b[j];
  }
}
function divRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = a[i + k] / b[j + k];
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = a[i + k] / y;
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = x / b[j + k];
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = a[i] / b[j];
  }
}
function maxRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = Math.max(a[i + k], b[j + k]);
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = Math.max(a[i + k], y);
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = Math.max(x, b[j + k]);
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = Math.max(a[i], b[j]);
  }
}
function minRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = Math.min(a[i + k], b[j + k]);
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = Math.min(a[i + k], y);
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = Math.min(x, b[j + k]);
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = Math.min(a[i], b[j]);
  }
}
function powRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = Math.pow(a[i + k], b[j + k]);
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = Math.pow(a[i + k], y);
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = Math.pow(x, b[j + k]);
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = Math.pow(a[i], b[j]);
  }
}
function ltRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = a[i + k] < b[j + k] ? 1 : 0;
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = a[i + k] < y ? 1 : 0;
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = x < b[j + k] ? 1 : 0;
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = a[i] < b[j] ? 1 : 0;
  }
}
function eqRows(a: Num, ra: Int32Array, sa: number, b: Num, rb: Int32Array, sb: number, out: Out, n: number): void {
  for (let r = 0, o = 0; r < ra.length; r++, o += n) {
    let i = ra[r],
      j = rb[r];
    if (sa === 1 && sb === 1) for (let k = 0; k < n; k++) out[o + k] = a[i + k] === b[j + k] ? 1 : 0;
    else if (sa === 1 && sb === 0) {
      const y = b[j];
      for (let k = 0; k < n; k++) out[o + k] = a[i + k] === y ? 1 : 0;
    } else if (sa === 0 && sb === 1) {
      const x = a[i];
      for (let k = 0; k < n; k++) out[o + k] = x === b[j + k] ? 1 : 0;
    } else for (let k = o; k < o + n; k++, i += sa, j += sb) out[k] = a[i] === b[j] ? 1 : 0;
  }
}

const ROWS: Record<BinaryOp, Rows> = {
  add: addRows,
  sub: subRows,
  mul: mulRows,
  div: divRows,
  max: maxRows,
  min: minRows,
  pow: powRows,
  lt: ltRows,
  eq: eqRows,
};
