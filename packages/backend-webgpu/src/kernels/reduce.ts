/**
 * sum / max over the last n dims of a (possibly permuted or broadcast) view. Two shapes:
 * short rows: one invocation per output word loops over its rows; long rows: one workgroup per
 * output word, invocations stride over the row and combine in workgroup memory. Floats
 * accumulate in f32 (max propagates NaN), integers in wrapping i32.
 *
 * Parameters: 0 first word, 1 words, 2 rows, 3 outer rank, 4 inner rank, 5 output window word,
 * 6 inner count, 7 input base; 8.. outer shape, 16.. outer strides, 24.. inner shape, 32.. inner strides;
 * 56 first row, 57 end row, 58 boxed. When the rows are chunked (binding limit), a chunk is a
 * contiguous run of rows; a word shared with the next chunk is read-modified-written.
 */
import type { DType, ReduceOp } from "@lowrank/tensor";
import { numel } from "@lowrank/tensor";
import { BITS, EPW, Wgsl, natOf } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords, groupsFor } from "./context.ts";
import { binaryExpr, elementwise } from "./elementwise.ts";
import { ALIGN_WORDS, checkRank, coalesce, contiguousStrides, planBoxes } from "./strided.ts";

const WG = 64;

function code(op: ReduceOp, x: GpuInput, perGroup: boolean, outDtype: DType): string {
  const nat = natOf(x.dtype);
  const dt = outDtype;
  const w = new Wgsl().params(64).buffer(1, "out", true).buffer(2, "x", false).loader("x", x.dtype);
  if (op === "max" && nat === "f32") w.need("inf");
  const init = op === "sum" ? (nat === "f32" ? "0.0" : "0") : nat === "f32" ? "-inf_f32()" : "-2147483647 - 1";
  const combine = (a: string, b: string) => {
    if (op === "sum") return nat === "f32" ? `${a} + ${b}` : `bitcast<i32>(bitcast<u32>(${a}) + bitcast<u32>(${b}))`;
    if (nat === "f32") {
      w.need("nanmax");
      return `nanmax(${a}, ${b})`;
    }
    return `max(${a}, ${b})`;
  };
  // Integer max of an empty row is 0 (the CPU's -Infinity stored into an integer array).
  const finish = (v: string) => (op === "max" && nat === "i32" ? `select(${v}, 0, p(6u) == 0u)` : v);
  const epw = EPW[dt];
  const bits = BITS[dt];
  w.decl(`
fn row_base(row: u32) -> u32 {
  var r = row;
  var o = p(7u);
  for (var d = i32(p(3u)) - 1; d >= 0; d--) {
    let ud = u32(d);
    let s = p(8u + ud);
    o += (r % s) * p(16u + ud);
    r = r / s;
  }
  return o;
}
fn inner_off(j: u32) -> u32 {
  if (p(4u) == 1u) { return j * p(32u); }
  var r = j;
  var o = 0u;
  for (var d = i32(p(4u)) - 1; d >= 0; d--) {
    let ud = u32(d);
    let s = p(24u + ud);
    o += (r % s) * p(32u + ud);
    r = r / s;
  }
  return o;
}`);
  if (!perGroup) {
    const body = `  if (unit >= p(1u)) { return; }
  let w = p(0u) + unit;
  var word = 0u;
  if (p(58u) != 0u) { word = out[w - p(5u)]; }
  for (var e = 0u; e < ${epw}u; e++) {
    let row = w * ${epw}u + e;
    if (row >= p(2u)) { break; }
    if (row < p(56u) || row >= p(57u)) { continue; }
    let base = row_base(row);
    var acc: ${nat} = ${init};
    for (var j = 0u; j < p(6u); j++) { acc = ${combine("acc", "ld_x(base + inner_off(j))")}; }
    word = insertBits(word, ${w.encode(dt, finish("acc"))}, e * ${bits}u, ${bits}u);
  }
  out[w - p(5u)] = word;`;
    return w.build(Wgsl.main(WG, body));
  }
  w.decl(`var<workgroup> part: array<${nat}, ${WG}>;`);
  const body = `  if (group >= p(1u)) { return; }
  let w = p(0u) + group;
  var word = 0u;
  if (p(58u) != 0u) { word = out[w - p(5u)]; }
  for (var e = 0u; e < ${epw}u; e++) {
    let row = w * ${epw}u + e;
    if (row >= p(2u)) { break; }
    if (row < p(56u) || row >= p(57u)) { continue; }
    let base = row_base(row);
    var acc: ${nat} = ${init};
    for (var j = lid; j < p(6u); j += ${WG}u) { acc = ${combine("acc", "ld_x(base + inner_off(j))")}; }
    part[lid] = acc;
    workgroupBarrier();
    for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
      if (lid < s) { part[lid] = ${combine("part[lid]", "part[lid + s]")}; }
      workgroupBarrier();
    }
    word = insertBits(word, ${w.encode(dt, finish("part[0]"))}, e * ${bits}u, ${bits}u);
    workgroupBarrier();
  }
  if (lid == 0u) { out[w - p(5u)] = word; }`;
  return w.build(Wgsl.main(WG, body));
}

/**
 * Reduce the last `nReduce` dims of x into `outDtype` (default x's dtype; partial results use
 * the natural type). A row whose input span exceeds one binding is split along its outermost
 * reduced dim into partial reductions that are then combined elementwise.
 */
export function reduceKernel(ctx: KernelContext, op: ReduceOp, x: GpuInput, nReduce: number, outDtype: DType = x.dtype): GpuStorage {
  const { shape, strides, offset } = x.view;
  const r = shape.length - nReduce;
  const outerShape = shape.slice(0, r);
  const rows = numel(outerShape);
  const inner = coalesce(shape.slice(r), [strides.slice(r)]);
  const innerCount = numel(shape.slice(r));
  const span = innerCount === 0 ? 0 : inner.shape.reduce((a, s, d) => a + (s - 1) * inner.strides[0][d], 0);
  if (rows > 0 && Math.floor(span / EPW[x.dtype]) + 2 * ALIGN_WORDS > ctx.maxWords && inner.shape[0] > 1) {
    return splitReduce(ctx, op, x, r, inner, outDtype);
  }
  const out = ctx.alloc(outDtype, rows);
  if (rows === 0) return out;
  const outer = coalesce(outerShape, [contiguousStrides(outerShape), strides.slice(0, r)]);
  checkRank("reduce", Math.max(outer.shape.length, inner.shape.length));
  const perGroup = innerCount > 64;
  const name = `reduce_${op}_${x.dtype}${outDtype === x.dtype ? "" : `_${outDtype}`}${perGroup ? "_wg" : ""}`;
  const k = ctx.engine.compile({ name, code: code(op, x, perGroup, outDtype), bindings: ["write", "read"] });
  const epwOut = EPW[outDtype];
  const boxes = planBoxes(
    name,
    outer.shape,
    [
      { strides: outer.strides[0], offset: 0, epw: epwOut },
      { strides: outer.strides[1], offset, epw: EPW[x.dtype], span },
    ],
    ctx.maxWords,
    undefined,
    undefined,
    true,
  );
  for (const box of boxes) {
    const params = new Uint32Array(64);
    const linLo = box.lo.reduce((a, l, d) => a + l * outer.strides[0][d], 0);
    const linHi = box.hi.reduce((a, h, d) => a + (h - 1) * outer.strides[0][d], 0);
    const w0 = Math.floor(linLo / epwOut);
    const w1 = Math.floor(linHi / epwOut);
    const [ow, xw] = box.windows;
    params[0] = w0;
    params[1] = w1 - w0 + 1;
    params[2] = rows;
    params[3] = outer.shape.length;
    params[4] = inner.shape.length;
    params[5] = ow.word;
    params[6] = innerCount;
    params[7] = offset - xw.word * EPW[x.dtype];
    params[56] = linLo;
    params[57] = linHi + 1;
    params[58] = box.full ? 0 : 1;
    outer.shape.forEach((s, d) => {
      params[8 + d] = s;
      params[16 + d] = outer.strides[1][d];
    });
    inner.shape.forEach((s, d) => {
      params[24 + d] = s;
      params[32 + d] = inner.strides[0][d];
    });
    ctx.engine.dispatch(
      k,
      params,
      [bindWords(out, ow.word, ow.words), bindWords(x.handle, xw.word, xw.words)],
      perGroup ? w1 - w0 + 1 : groupsFor(w1 - w0 + 1, WG),
    );
  }
  return out;
}

/** Two halves of the outermost reduced dim, each reduced in the natural type, then combined. */
function splitReduce(ctx: KernelContext, op: ReduceOp, x: GpuInput, r: number, inner: { shape: number[]; strides: number[][] }, outDtype: DType): GpuStorage {
  const nat: DType = natOf(x.dtype);
  const e0 = inner.shape[0];
  const s0 = inner.strides[0][0];
  const half = Math.ceil(e0 / 2);
  const piece = (start: number, len: number): GpuStorage =>
    reduceKernel(
      ctx,
      op,
      {
        handle: x.handle,
        dtype: x.dtype,
        view: {
          shape: [...x.view.shape.slice(0, r), len, ...inner.shape.slice(1)],
          strides: [...x.view.strides.slice(0, r), s0, ...inner.strides[0].slice(1)],
          offset: x.view.offset + start * s0,
        },
      },
      1 + inner.shape.length - 1,
      nat,
    );
  const a = piece(0, half);
  const b = piece(half, e0 - half);
  const rows = numel(x.view.shape.slice(0, r));
  const ops = [a, b].map((h) => ({ handle: h, dtype: nat, strides: [1], offset: 0 }));
  const c = elementwise(ctx, {
    name: `binary_${op === "sum" ? "add" : "max"}`,
    out: nat,
    shape: [rows],
    operands: ops,
    expr: binaryExpr(op === "sum" ? "add" : "max", nat),
  });
  ctx.release(a);
  ctx.release(b);
  if (outDtype === nat) return c;
  const out = elementwise(ctx, {
    name: `cast_${nat}`,
    out: outDtype,
    shape: [rows],
    operands: [{ handle: c, dtype: nat, strides: [1], offset: 0 }],
    expr: (w, [v]) => w.convert(nat, outDtype, v),
  });
  ctx.release(c);
  return out;
}
