/**
 * Primitive ops: each dispatches one backend kernel (or builds a view) and records an autograd
 * node whose rule lives in grad.ts. Composites (functional.ts) are built only from these.
 */
import type { BinaryOp, ReduceOp, UnaryOp, View } from "./backend.ts";
import type { DType } from "./dtype.ts";
import { isFloat } from "./dtype.ts";
import { record } from "./autograd.ts";
import "./grad.ts"; // registers the primitives' gradient rules, which this module records
import { broadcastShapes, contiguousStrides, isContiguous, normAxis, numel, sameShape, shapeStr } from "./shape.ts";
import { scope } from "./scope.ts";
import { Tensor, fromHandle, full } from "./tensor.ts";

function checkSameBackend(op: string, ts: Tensor[]): void {
  const b = ts[0].backend;
  for (const t of ts) {
    if (t.backend !== b) throw new Error(`${op}: tensors live on different backends (${b.name} and ${t.backend.name}); move one first`);
  }
}

function checkSameDtype(op: string, a: Tensor, b: Tensor): void {
  if (a.dtype !== b.dtype) throw new TypeError(`${op}: dtype mismatch ${a.describe()} vs ${b.describe()}; cast one explicitly`);
}

export function scalarLike(like: Tensor, value: number, dtype: DType = like.dtype): Tensor {
  return full([], value, { dtype, backend: like.backend });
}

function asTensor(o: Tensor | number, like: Tensor): Tensor {
  return typeof o === "number" ? scalarLike(like, o) : o;
}

// ---------------------------------------------------------------- views

function viewOf(x: Tensor, view: View): Tensor {
  return x.alias(view);
}

export function reshape(x: Tensor, shape: number[]): Tensor {
  const size = x.size;
  const infer = shape.indexOf(-1);
  if (infer >= 0) {
    const rest = numel(shape.filter((_, i) => i !== infer));
    shape = shape.map((d, i) => (i === infer ? size / rest : d));
  }
  if (numel(shape) !== size || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new RangeError(`reshape: cannot view ${x.describe()} as ${shapeStr(shape)}`);
  }
  const src = x.isContiguous ? x : contiguous(x);
  const y = viewOf(src, { shape, strides: contiguousStrides(shape), offset: src.offset });
  if (src !== x) src.dispose();
  return record(y, "reshape", [x]);
}

export function permute(x: Tensor, axes: number[]): Tensor {
  if (axes.length !== x.rank) throw new RangeError(`permute: ${axes.length} axes for ${x.describe()}`);
  const ax = axes.map((a) => normAxis(a, x.rank));
  if (new Set(ax).size !== ax.length) throw new RangeError(`permute: repeated axis in [${axes}]`);
  const y = viewOf(x, { shape: ax.map((a) => x.shape[a]), strides: ax.map((a) => x.strides[a]), offset: x.offset });
  return record(y, "permute", [x], ax);
}

export function transpose(x: Tensor, a: number, b: number): Tensor {
  const axes = x.shape.map((_, i) => i);
  const i = normAxis(a, x.rank);
  const j = normAxis(b, x.rank);
  [axes[i], axes[j]] = [axes[j], axes[i]];
  return permute(x, axes);
}

/** Broadcast to `shape` (NumPy rules, may add leading dims) with stride 0; no copy. */
export function expand(x: Tensor, shape: number[]): Tensor {
  if (sameShape(x.shape, shape)) return record(viewOf(x, x), "expand", [x]);
  const lead = shape.length - x.rank;
  if (lead < 0) throw new RangeError(`expand: cannot expand ${x.describe()} to ${shapeStr(shape)}`);
  const strides = shape.map((d, i) => {
    if (i < lead) return 0;
    const s = x.shape[i - lead];
    if (s === d) return x.strides[i - lead];
    if (s === 1) return 0;
    throw new RangeError(`expand: cannot expand ${x.describe()} to ${shapeStr(shape)}`);
  });
  return record(viewOf(x, { shape: [...shape], strides, offset: x.offset }), "expand", [x]);
}

export function slice(x: Tensor, ranges: ([number, number] | null)[]): Tensor {
  let offset = x.offset;
  const shape = x.shape.map((d, i) => {
    const r = ranges[i];
    if (!r) return d;
    const start = r[0] < 0 ? r[0] + d : r[0];
    const end = r[1] < 0 ? r[1] + d : Math.min(r[1], d);
    if (start < 0 || start > end || end > d) throw new RangeError(`slice: range [${r}] out of bounds for axis ${i} of ${x.describe()}`);
    offset += start * x.strides[i];
    return end - start;
  });
  const starts = x.shape.map((d, i) => {
    const r = ranges[i];
    return r ? (r[0] < 0 ? r[0] + d : r[0]) : 0;
  });
  return record(viewOf(x, { shape, strides: x.strides, offset }), "slice", [x], starts);
}

export function narrow(x: Tensor, axis: number, start: number, length: number): Tensor {
  const a = normAxis(axis, x.rank);
  const ranges: ([number, number] | null)[] = x.shape.map(() => null);
  ranges[a] = [start, start + length];
  return slice(x, ranges);
}

export function squeeze(x: Tensor, axis?: number): Tensor {
  const shape = axis === undefined ? x.shape.filter((d) => d !== 1) : x.shape.filter((_, i) => i !== normAxis(axis, x.rank));
  if (axis !== undefined && x.shape[normAxis(axis, x.rank)] !== 1) throw new RangeError(`squeeze: axis ${axis} of ${x.describe()} is not 1`);
  return reshape(x, shape);
}

export function unsqueeze(x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.rank + 1);
  const shape = [...x.shape];
  shape.splice(a, 0, 1);
  return reshape(x, shape);
}

export function flatten(x: Tensor, start = 0, end = -1): Tensor {
  if (x.rank === 0) return reshape(x, [1]);
  const s = normAxis(start, x.rank);
  const e = normAxis(end, x.rank);
  return reshape(x, [...x.shape.slice(0, s), numel(x.shape.slice(s, e + 1)), ...x.shape.slice(e + 1)]);
}

/** Contiguous (row-major) version; an alias when the view already is. */
export function contiguous(x: Tensor): Tensor {
  if (isContiguous(x.shape, x.strides)) return record(viewOf(x, x), "copy", [x]);
  return record(fromHandle(x.backend, x.backend.copy(x.input), x.shape, x.dtype), "copy", [x]);
}

/**
 * Write src's values into dst's elements in place (Backend.copyInto): dst is usually a view
 * (narrow) of a larger storage, and every tensor over that storage sees the change. Not recorded by
 * autograd, so dst must not need a gradient. Throws where the backend cannot write in place
 * (`canCopyInto`).
 */
export function copyInto(dst: Tensor, src: Tensor): void {
  checkSameBackend("copyInto", [dst, src]);
  checkSameDtype("copyInto", dst, src);
  if (!sameShape(dst.shape, src.shape)) throw new RangeError(`copyInto: ${src.describe()} does not fit ${dst.describe()}`);
  if (dst.requiresGrad || dst._node) throw new Error(`copyInto: ${dst.describe()} takes part in autograd; write only into buffers`);
  const k = dst.backend.copyInto;
  if (!k) throw new Error(`copyInto: backend ${dst.backend.name} cannot write into a storage in place`);
  k.call(dst.backend, dst.input, src.input);
}

/** Whether `copyInto` works on this tensor's backend. */
export function canCopyInto(t: Tensor): boolean {
  return t.backend.copyInto !== undefined;
}

// ---------------------------------------------------------------- elementwise

export function unary(op: UnaryOp, x: Tensor): Tensor {
  if (!isFloat(x.dtype) && op !== "neg" && op !== "abs" && op !== "relu") throw new TypeError(`${op}: needs a float tensor, got ${x.describe()}`);
  return record(fromHandle(x.backend, x.backend.unary(op, x.input), x.shape, x.dtype), op, [x]);
}

/** Broadcasting binary op; numbers become scalars of the tensor's dtype. */
export function binary(op: BinaryOp, aIn: Tensor | number, bIn: Tensor | number): Tensor {
  return scope(() => {
    const like = typeof aIn === "number" ? (bIn as Tensor) : aIn;
    const a = asTensor(aIn, like);
    const b = asTensor(bIn, like);
    checkSameBackend(op, [a, b]);
    checkSameDtype(op, a, b);
    const shape = broadcastShapes(a.shape, b.shape);
    const ea = sameShape(a.shape, shape) ? a : expand(a, shape);
    const eb = sameShape(b.shape, shape) ? b : expand(b, shape);
    const outDtype: DType = op === "lt" || op === "eq" ? "u8" : a.dtype;
    const y = fromHandle(a.backend, a.backend.binary(op, ea.input, eb.input), shape, outDtype);
    if (outDtype === "u8") return y;
    return record(y, op, [ea, eb]);
  });
}

export const gt = (a: Tensor, b: Tensor | number): Tensor => scope(() => binary("lt", typeof b === "number" ? scalarLike(a, b) : b, a));
export const rsqrt = (x: Tensor): Tensor => scope(() => unary("recip", unary("sqrt", x)));

/** where(cond, a, b): cond is u8 (non-zero picks a); all three broadcast together. */
export function where(cond: Tensor, aIn: Tensor | number, bIn: Tensor | number): Tensor {
  return scope(() => {
    const like = typeof aIn === "number" ? (bIn as Tensor) : aIn;
    if (typeof like === "number") throw new TypeError("where: at least one of a, b must be a tensor");
    const a = asTensor(aIn, like);
    const b = asTensor(bIn, like);
    if (cond.dtype !== "u8") throw new TypeError(`where: condition must be u8 (from lt/eq), got ${cond.describe()}`);
    checkSameDtype("where", a, b);
    checkSameBackend("where", [cond, a, b]);
    const shape = broadcastShapes(broadcastShapes(cond.shape, a.shape), b.shape);
    const ex = (t: Tensor) => (sameShape(t.shape, shape) ? t : expand(t, shape));
    const [c, ea, eb] = [ex(cond), ex(a), ex(b)];
    return record(fromHandle(a.backend, a.backend.where(c.input, ea.input, eb.input), shape, a.dtype), "where", [c, ea, eb]);
  });
}

export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return record(viewOf(x, x), "copy", [x]);
  const y = fromHandle(x.backend, x.backend.cast(x.input, dtype), x.shape, dtype);
  return isFloat(dtype) && isFloat(x.dtype) ? record(y, "cast", [x]) : y;
}

/** @internal cast and dispose the source. */
export function castOwned(x: Tensor, dtype: DType): Tensor {
  const y = cast(x, dtype);
  x.dispose();
  return y;
}

// ---------------------------------------------------------------- reductions

function reduceAxes(x: Tensor, axes: number | number[] | undefined): number[] {
  const list = axes === undefined ? x.shape.map((_, i) => i) : Array.isArray(axes) ? axes : [axes];
  return [...new Set(list.map((a) => normAxis(a, x.rank)))].sort((p, q) => p - q);
}

export function reduce(op: ReduceOp, x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  return scope(() => {
    const ax = reduceAxes(x, axes);
    const kept = x.shape.map((_, i) => i).filter((i) => !ax.includes(i));
    const perm = [...kept, ...ax];
    const px = perm.every((p, i) => p === i) ? x : permute(x, perm);
    const outShape = kept.map((i) => x.shape[i]);
    let y = record(fromHandle(x.backend, x.backend.reduce(op, px.input, ax.length), outShape, x.dtype), `reduce_${op}`, [px], ax.length);
    if (keepdim)
      y = reshape(
        y,
        x.shape.map((d, i) => (ax.includes(i) ? 1 : d)),
      );
    return y;
  });
}

export function mean(x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  return scope(() => {
    const ax = reduceAxes(x, axes);
    const n = numel(ax.map((a) => x.shape[a]));
    return binary("mul", reduce("sum", x, ax, keepdim), 1 / n);
  });
}

/** Sum a broadcast gradient back down to `shape` (the inverse of expand). */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  return scope(() => {
    if (sameShape(g.shape, shape)) return g;
    const lead = g.rank - shape.length;
    const axes: number[] = [];
    g.shape.forEach((d, i) => {
      if (i < lead || (shape[i - lead] === 1 && d !== 1)) axes.push(i);
    });
    return reshape(reduce("sum", g, axes, false), [...shape]);
  });
}

// ---------------------------------------------------------------- matmul, indexing, concat

/** Matrix product with NumPy semantics: 1-D operands promoted, batch dims broadcast. */
export function matmul(aIn: Tensor, bIn: Tensor): Tensor {
  return scope(() => {
    checkSameBackend("matmul", [aIn, bIn]);
    checkSameDtype("matmul", aIn, bIn);
    const a = aIn.rank === 1 ? reshape(aIn, [1, aIn.shape[0]]) : aIn;
    const b = bIn.rank === 1 ? reshape(bIn, [bIn.shape[0], 1]) : bIn;
    if (a.rank < 2 || b.rank < 2) throw new RangeError(`matmul: scalar operand (${aIn.describe()}, ${bIn.describe()})`);
    const [M, K] = a.shape.slice(-2);
    const [K2, N] = b.shape.slice(-2);
    if (K !== K2) throw new RangeError(`matmul: inner dims differ: ${aIn.describe()} @ ${bIn.describe()}`);
    const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const ea = a.rank - 2 === batch.length && sameShape(a.shape.slice(0, -2), batch) ? a : expand(a, [...batch, M, K]);
    const eb = b.rank - 2 === batch.length && sameShape(b.shape.slice(0, -2), batch) ? b : expand(b, [...batch, K, N]);
    let y = record(fromHandle(a.backend, a.backend.matmul(ea.input, eb.input), [...batch, M, N], a.dtype), "matmul", [ea, eb]);
    if (aIn.rank === 1) y = squeeze(y, -2);
    if (bIn.rank === 1) y = squeeze(y, -1);
    return y;
  });
}

export function gather(x: Tensor, idx: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.rank);
  if (idx.dtype !== "i32") throw new TypeError(`gather: indices must be i32, got ${idx.describe()}`);
  if (idx.rank !== x.rank) throw new RangeError(`gather: index rank ${idx.rank} != source rank ${x.rank}`);
  checkSameBackend("gather", [x, idx]);
  return record(fromHandle(x.backend, x.backend.gather(x.input, idx.input, a), idx.shape, x.dtype), "gather", [x, idx], a);
}

export function scatterAdd(shape: readonly number[], idx: Tensor, src: Tensor, axis: number): Tensor {
  const a = normAxis(axis, shape.length);
  if (idx.dtype !== "i32") throw new TypeError(`scatterAdd: indices must be i32, got ${idx.describe()}`);
  if (!sameShape(idx.shape, src.shape)) throw new RangeError(`scatterAdd: index ${idx.describe()} and source ${src.describe()} differ in shape`);
  const h = src.backend.scatterAdd(shape, src.dtype, idx.input, src.input, a);
  return record(fromHandle(src.backend, h, shape, src.dtype), "scatterAdd", [idx, src], a);
}

/** Rows of `table` picked by integer ids: out[..., :] = table[ids[...], :]. */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  return scope(() => {
    if (table.rank !== 2) throw new RangeError(`embedding: table must be 2-D, got ${table.describe()}`);
    const n = ids.size;
    const dim = table.shape[1];
    const flatIds = reshape(ids, [n, 1]);
    const idx = expand(flatIds, [n, dim]);
    return reshape(gather(table, idx, 0), [...ids.shape, dim]);
  });
}

export function concat(xs: Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new RangeError("concat: no tensors");
  const a = normAxis(axis, xs[0].rank);
  checkSameBackend("concat", xs);
  for (const x of xs) {
    checkSameDtype("concat", xs[0], x);
    if (x.rank !== xs[0].rank || x.shape.some((d, i) => i !== a && d !== xs[0].shape[i])) {
      throw new RangeError(`concat: ${x.describe()} does not match ${xs[0].describe()} outside axis ${a}`);
    }
  }
  const shape = [...xs[0].shape];
  shape[a] = xs.reduce((s, x) => s + x.shape[a], 0);
  const h = xs[0].backend.concat(
    xs.map((x) => x.input),
    a,
  );
  return record(fromHandle(xs[0].backend, h, shape, xs[0].dtype), "concat", xs, a);
}

/** Stack along a new axis. */
export function stack(xs: Tensor[], axis = 0): Tensor {
  return scope(() => {
    return concat(
      xs.map((x) => unsqueeze(x, axis)),
      axis,
    );
  });
}
