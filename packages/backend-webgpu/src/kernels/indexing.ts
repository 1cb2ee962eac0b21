/**
 * gather, scatterAdd and concat.
 *
 * scatterAdd without float atomics (WGSL has none): a deterministic two-pass scheme.
 *   1. rank: for every index column, each entry j computes its stable position in the sorted
 *      order, pos = #{j' : idx[j'] < idx[j]} + #{j' < j : idx[j'] == idx[j]}, and writes
 *      perm[pos] = j, keys[pos] = idx[j] (a counting sort with no atomics; O(L^2) per column).
 *   2. accumulate: each output element binary-searches its key in `keys` and sums src over its
 *      run of `perm` in ascending j, the CPU's order. Results are bit-identical run to run.
 * When the index is broadcast along every non-axis dim (embedding: ids expanded over the model
 * dim) there is one column, ranked once for all of them: O(T^2) for T tokens, then O(V*D*log T).
 * Out-of-range indices set a flag that the next read() throws as a WebGpuKernelError; their
 * lanes produce 0.
 */
import type { DType } from "@lowrank/tensor";
import { numel } from "@lowrank/tensor";
import { WebGpuLimitError } from "../errors.ts";
import { BITS, EPW, Wgsl, natOf } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords, groupsFor, wordsOf } from "./context.ts";
import { elementwise } from "./elementwise.ts";
import { ALIGN_WORDS, MAX_RANK, checkRank, contiguousStrides, planBoxes } from "./strided.ts";

const WG = 64;

/** Bind a whole storage (index scratch buffers). */
function whole(ctx: KernelContext, kernel: string, h: GpuStorage) {
  const words = wordsOf(h.dtype, h.size);
  if (words > ctx.maxWords)
    throw new WebGpuLimitError(kernel, `${kernel}: a ${words * 4}-byte operand exceeds the ${ctx.maxWords * 4}-byte storage binding limit`);
  return bindWords(h, 0, Math.max(1, words));
}

const UNRAVEL = (shapeAt: number, into = "c") => `var ${into}: array<u32, ${MAX_RANK}>;
  {
    var r = li;
    for (var d = i32(p(3u)) - 1; d >= 0; d--) { let ud = u32(d); let s = p(${shapeAt}u + ud); ${into}[ud] = r % s; r = r / s; }
  }`;

/** Up to this many bindings hold one data-indexed tensor (an embedding table beyond one binding). */
const MAX_WINDOWS = 4;

/**
 * A read-only tensor addressed by data (gather's source, scatterAdd's source): the view's whole
 * span split over consecutive bindings `<name>0..`, read through `fn bits_<name>(o)` with `o`
 * relative to `first * epw`; params[perAt] holds the words per binding.
 */
function windowed(ctx: KernelContext, kernel: string, name: string, x: GpuInput, w: Wgsl, binding: number, perAt: number) {
  const v = x.view;
  const epw = EPW[x.dtype];
  const bits = BITS[x.dtype];
  const maxOff = v.offset + v.shape.reduce((a, s, d) => a + (s - 1) * v.strides[d], 0);
  const first = Math.floor(Math.floor(v.offset / epw) / ALIGN_WORDS) * ALIGN_WORDS;
  const total = Math.floor(maxOff / epw) + 1 - first;
  const per = Math.floor(ctx.maxWords / ALIGN_WORDS) * ALIGN_WORDS;
  const count = Math.max(1, Math.ceil(total / per));
  if (count > MAX_WINDOWS)
    throw new WebGpuLimitError(kernel, `${kernel}: the ${name} operand spans ${total * 4} bytes, above ${MAX_WINDOWS} storage bindings of ${per * 4} bytes`);
  for (let k = 0; k < count; k++) w.buffer(binding + k, `${name}${k}`, false);
  const pick = Array.from({ length: count }, (_, k) => `if (k == ${k}u) { word = ${name}${k}[lw]; }`).join(" else ");
  w.decl(`fn bits_${name}(o: u32) -> u32 {
  let wi = o / ${epw}u;
  let k = wi / p(${perAt}u);
  let lw = wi - k * p(${perAt}u);
  var word = 0u;
  ${pick}
  return extractBits(word, (o % ${epw}u) * ${bits}u, ${bits}u);
}`);
  return {
    binds: Array.from({ length: count }, (_, k) => bindWords(x.handle, first + k * per, Math.min(per, total - k * per))),
    base: v.offset - first * epw,
    per,
  };
}

// ---------------------------------------------------------------- gather

/**
 * Params: 0 first word, 1 words, 2 elements, 3 rank, 4 axis, 5 x base, 6 axis size, 7 idx base,
 * 8.. idx shape, 16.. idx strides, 24.. x strides, 32 output window word, 33 words per x window,
 * 34..35 element range of this chunk, 36 chunked (words shared with a neighbour chunk are read-modify-written).
 */
function gatherCode(x: GpuInput, ctx: KernelContext) {
  const dt = x.dtype;
  const w = new Wgsl().params(64).buffer(1, "out", true).buffer(2, "idx", false);
  const win = windowed(ctx, "gather", "x", x, w, 3, 33);
  w.flags(3 + win.binds.length);
  const epw = EPW[dt];
  const bits = BITS[dt];
  const body = `  if (unit >= p(1u)) { return; }
  let w = p(0u) + unit;
  var word = 0u;
  if (p(36u) != 0u) { word = out[w - p(32u)]; }
  for (var e = 0u; e < ${epw}u; e++) {
    let li = w * ${epw}u + e;
    if (li >= p(2u)) { break; }
    if (li < p(34u) || li >= p(35u)) { continue; }
    ${UNRAVEL(8)}
    var io = p(7u);
    var xo = p(5u);
    for (var d = 0u; d < p(3u); d++) { io += c[d] * p(16u + d); xo += c[d] * p(24u + d); }
    let v = bitcast<i32>(idx[io]);
    let axis = p(4u);
    if (v < 0 || u32(v) >= p(6u)) { atomicOr(&flags[0], 1u); continue; }
    xo += (u32(v) - c[axis]) * p(24u + axis);
    word = insertBits(word, bits_x(xo), e * ${bits}u, ${bits}u);
  }
  out[w - p(32u)] = word;`;
  return { code: w.build(Wgsl.main(WG, body)), win };
}

export function gatherKernel(ctx: KernelContext, x: GpuInput, idx: GpuInput, axis: number): GpuStorage {
  const shape = idx.view.shape;
  const n = numel(shape);
  const out = ctx.alloc(x.dtype, n);
  if (n === 0) return out;
  checkRank("gather", shape.length);
  const epw = EPW[x.dtype];
  const { code, win } = gatherCode(x, ctx);
  const k = ctx.engine.compile({ name: `gather_${x.dtype}`, code, bindings: ["write", "read", ...win.binds.map(() => "read" as const)], flags: true });
  const boxes = planBoxes(
    "gather",
    shape,
    [
      { strides: contiguousStrides(shape), offset: 0, epw },
      { strides: idx.view.strides, offset: idx.view.offset, epw: 1 },
    ],
    ctx.maxWords,
    undefined,
    undefined,
    true,
  );
  for (const box of boxes) {
    const [ow, iw] = box.windows;
    const cs = contiguousStrides(shape);
    const linLo = box.lo.reduce((a, l, d) => a + l * cs[d], 0);
    const linHi = box.hi.reduce((a, h, d) => a + (h - 1) * cs[d], 0);
    const w0 = Math.floor(linLo / epw);
    const w1 = Math.floor(linHi / epw);
    const p = new Uint32Array(64);
    p[0] = w0;
    p[1] = w1 - w0 + 1;
    p[2] = n;
    p[3] = shape.length;
    p[4] = axis;
    p[5] = win.base;
    p[6] = x.view.shape[axis];
    p[7] = idx.view.offset - iw.word;
    shape.forEach((s, d) => {
      p[8 + d] = s;
      p[16 + d] = idx.view.strides[d];
      p[24 + d] = x.view.strides[d];
    });
    p[32] = ow.word;
    p[33] = win.per;
    p[34] = linLo;
    p[35] = linHi + 1;
    p[36] = box.full ? 0 : 1;
    ctx.engine.dispatch(k, p, [bindWords(out, ow.word, ow.words), bindWords(idx.handle, iw.word, iw.words), ...win.binds], groupsFor(w1 - w0 + 1, WG));
  }
  return out;
}

// ---------------------------------------------------------------- scatterAdd

/** Pass 1: stable rank of each index within its column. Params: 0 units, 1 L, 2 -, 3 rank, 4 axis, 5 idx base, 6 shared, 8.. idx shape, 16.. idx strides. */
const RANK_CODE = new Wgsl()
  .params(64)
  .buffer(1, "perm", true)
  .buffer(2, "keys", true)
  .buffer(3, "idx", false)
  .build(
    Wgsl.main(
      WG,
      `  if (unit >= p(0u)) { return; }
  let L = p(1u);
  let col = unit / L;
  let j = unit % L;
  let axis = p(4u);
  // Column base offset: unravel col over the non-axis dims.
  var base = p(5u);
  if (p(6u) == 0u) {
    var r = col;
    for (var d = i32(p(3u)) - 1; d >= 0; d--) {
      let ud = u32(d);
      if (ud == axis) { continue; }
      let s = p(8u + ud);
      base += (r % s) * p(16u + ud);
      r = r / s;
    }
  }
  let sa = p(16u + axis);
  let v = bitcast<i32>(idx[base + j * sa]);
  var pos = 0u;
  for (var q = 0u; q < L; q++) {
    let u = bitcast<i32>(idx[base + q * sa]);
    if (u < v || (u == v && q < j)) { pos++; }
  }
  perm[col * L + pos] = j;
  keys[col * L + pos] = bitcast<u32>(v);`,
    ),
  );

/**
 * Pass 2 params: 0 first word, 1 words, 2 elements, 3 rank, 4 axis, 5 L, 6 shared, 7 src base,
 * 8.. out shape, 16.. idx shape, 24.. src strides, 32 output window word, 33 check range flag,
 * 34..35 element range of this chunk, 36 chunked, 37 words per src binding, 56 index columns.
 */
function accumulateCode(ctx: KernelContext, src: GpuInput) {
  const dt = src.dtype;
  const nat = natOf(dt);
  const w = new Wgsl().params(64).buffer(1, "out", true).buffer(2, "perm", false).buffer(3, "keys", false);
  const win = windowed(ctx, "scatterAdd", "src", src, w, 4, 37);
  w.flags(4 + win.binds.length);
  w.decl(`fn ld_src(o: u32) -> ${nat} { return ${w.decode(dt, "bits_src(o)")}; }`);
  const epw = EPW[dt];
  const bits = BITS[dt];
  const add = nat === "f32" ? "acc + ld_src(so + u32(j) * sa)" : "bitcast<i32>(bitcast<u32>(acc) + bitcast<u32>(ld_src(so + u32(j) * sa)))";
  const body = `  if (unit >= p(1u)) { return; }
  let w = p(0u) + unit;
  let axis = p(4u);
  let L = p(5u);
  let sa = p(24u + axis);
  var word = 0u;
  if (p(36u) != 0u) { word = out[w - p(32u)]; }
  for (var e = 0u; e < ${epw}u; e++) {
    let li = w * ${epw}u + e;
    if (li >= p(2u)) { break; }
    if (li < p(34u) || li >= p(35u)) { continue; }
    ${UNRAVEL(8)}
    // Source column of this output element (0 when the index list is shared).
    var inside = true;
    var col = 0u;
    var so = p(7u);
    for (var d = 0u; d < p(3u); d++) {
      if (d == axis) { continue; }
      if (c[d] >= p(16u + d)) { inside = false; }
      col = col * p(16u + d) + c[d];
      so += c[d] * p(24u + d);
    }
    var acc: ${nat} = ${nat === "f32" ? "0.0" : "0"};
    if (inside && L > 0u) {
      let kb = select(col * L, 0u, p(6u) != 0u);
      let v = bitcast<u32>(i32(c[axis]));
      // lower bound of v among the sorted keys (as i32)
      var lo = 0u;
      var hi = L;
      while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (bitcast<i32>(keys[kb + mid]) < i32(v)) { lo = mid + 1u; } else { hi = mid; }
      }
      for (var q = lo; q < L && keys[kb + q] == v; q++) {
        let j = perm[kb + q];
        acc = ${add};
      }
    }
    word = insertBits(word, ${w.encode(dt, "acc")}, e * ${bits}u, ${bits}u);
  }
  out[w - p(32u)] = word;
  if (unit == 0u && p(33u) != 0u) {
    // Any key outside [0, dim) means an out-of-range index (keys are sorted per column: check the ends).
    for (var cidx = 0u; cidx < p(56u); cidx++) {
      if (L > 0u && (bitcast<i32>(keys[cidx * L]) < 0 || bitcast<i32>(keys[cidx * L + L - 1u]) >= i32(p(8u + axis)))) { atomicOr(&flags[0], 2u); }
    }
  }`;
  return { code: w.build(Wgsl.main(WG, body)), win };
}

export function scatterAddKernel(ctx: KernelContext, shape: readonly number[], dtype: DType, idx: GpuInput, src: GpuInput, axis: number): GpuStorage {
  const n = numel(shape);
  const out = ctx.alloc(dtype, n);
  if (n === 0) return out;
  const ishape = idx.view.shape;
  checkRank("scatterAdd", shape.length);
  const L = ishape[axis];
  const total = numel(ishape);
  const shared = ishape.every((_, d) => d === axis || idx.view.strides[d] === 0 || ishape[d] === 1);
  const cols = L === 0 ? 0 : shared ? 1 : total / L;
  const perm = ctx.alloc("i32", Math.max(1, cols * L));
  const keys = ctx.alloc("i32", Math.max(1, cols * L));
  if (cols * L > 0) {
    const k1 = ctx.engine.compile({ name: "scatterAdd_rank", code: RANK_CODE, bindings: ["write", "write", "read"] });
    const p = new Uint32Array(64);
    p[0] = cols * L;
    p[1] = L;
    p[3] = ishape.length;
    p[4] = axis;
    p[5] = idx.view.offset;
    p[6] = shared ? 1 : 0;
    ishape.forEach((s, d) => {
      p[8 + d] = s;
      p[16 + d] = idx.view.strides[d];
    });
    ctx.engine.dispatch(k1, p, [whole(ctx, "scatterAdd", perm), whole(ctx, "scatterAdd", keys), whole(ctx, "scatterAdd", idx.handle)], groupsFor(cols * L, WG));
  }
  const { code, win } = accumulateCode(ctx, src);
  const k2 = ctx.engine.compile({
    name: `scatterAdd_${dtype}`,
    code,
    bindings: ["write", "read", "read", ...win.binds.map(() => "read" as const)],
    flags: true,
  });
  const epw = EPW[dtype];
  const cs = contiguousStrides(shape);
  const boxes = planBoxes("scatterAdd", shape, [{ strides: cs, offset: 0, epw }], ctx.maxWords, undefined, undefined, true);
  const binds = [whole(ctx, "scatterAdd", perm), whole(ctx, "scatterAdd", keys), ...win.binds];
  boxes.forEach((box, bi) => {
    const linLo = box.lo.reduce((a, l, d) => a + l * cs[d], 0);
    const linHi = box.hi.reduce((a, h, d) => a + (h - 1) * cs[d], 0);
    const w0 = Math.floor(linLo / epw);
    const w1 = Math.floor(linHi / epw);
    const p = new Uint32Array(64);
    p[0] = w0;
    p[1] = w1 - w0 + 1;
    p[2] = n;
    p[3] = shape.length;
    p[4] = axis;
    p[5] = L;
    p[6] = shared ? 1 : 0;
    p[7] = win.base;
    p[37] = win.per;
    shape.forEach((s, d) => {
      p[8 + d] = s;
      p[16 + d] = ishape[d];
      p[24 + d] = src.view.strides[d];
    });
    p[32] = box.windows[0].word;
    p[33] = bi === 0 ? 1 : 0;
    p[34] = linLo;
    p[35] = linHi + 1;
    p[36] = box.full ? 0 : 1;
    p[56] = cols;
    ctx.engine.dispatch(k2, p, [bindWords(out, box.windows[0].word, box.windows[0].words), ...binds], groupsFor(w1 - w0 + 1, WG));
  });
  ctx.release(perm);
  ctx.release(keys);
  return out;
}

// ---------------------------------------------------------------- concat

/** Each input is copied into its slab of the output (a boxed elementwise copy; packed words are read-modify-written). */
export function concatKernel(ctx: KernelContext, xs: GpuInput[], axis: number): GpuStorage {
  const shape = [...xs[0].view.shape];
  shape[axis] = xs.reduce((s, x) => s + x.view.shape[axis], 0);
  const dtype = xs[0].dtype;
  const out = ctx.alloc(dtype, numel(shape));
  let start = 0;
  for (const x of xs) {
    const len = x.view.shape[axis];
    if (len > 0 && numel(x.view.shape) > 0) {
      const lo = shape.map(() => 0);
      const hi = [...shape];
      lo[axis] = start;
      hi[axis] = start + len;
      elementwise(ctx, {
        name: "concat",
        out: dtype,
        shape,
        bits: true,
        expr: () => "",
        into: out,
        region: { lo, hi },
        operands: [{ handle: x.handle, dtype, strides: x.view.strides, offset: x.view.offset - start * x.view.strides[axis] }],
      });
    }
    start += len;
  }
  return out;
}
