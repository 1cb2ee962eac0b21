/**
 * The elementwise family: unary, binary, where, cast, copy, full, arange, random and (through
 * `into`/`region`) concat. One generated kernel shape: each invocation owns one output word
 * (1, 2 or 4 elements), reads up to three strided operands, and computes one WGSL expression.
 *
 * Parameter block (u32 words): 0 first word, 1 words, 2 elements, 3 rank, 4 boxed, 5 output
 * window word; 8.. shape[8]; 16.. box lo[8]; 24.. box hi[8]; 32 + 9k operand k: base, strides[8];
 * 59..63 kernel extras. Operand modes are compile-time: dense (same layout as the output),
 * scalar (all strides 0) or strided.
 */
import type { BinaryOp, DType, UnaryOp } from "@lowrank/tensor";
import { hash32, isContiguous, numel } from "@lowrank/tensor";
import { BITS, EPW, Wgsl, natOf } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords, groupsFor, wordsOf } from "./context.ts";
import { type Access, MAX_RANK, checkRank, coalesce, contiguousStrides, planBoxes } from "./strided.ts";

const WG = 64;
const P_IN = 32;
const P_EXTRA = 59;

export interface Operand {
  handle: GpuStorage;
  dtype: DType;
  /** Strides over the kernel's index space (the output shape) and element offset. */
  strides: readonly number[];
  offset: number;
}

export interface EwSpec {
  /** Kernel family name for labels and errors, e.g. "binary_add". */
  name: string;
  out: DType;
  shape: readonly number[];
  operands: Operand[];
  /** Natural-typed value of the output element from the operands' load expressions. */
  expr: (w: Wgsl, x: string[]) => string;
  /** Copy raw storage fields (operand dtype == out dtype); `expr` is ignored. */
  bits?: boolean;
  /** Up to 5 u32 the expression reads as p(59u)..p(63u). */
  extras?: number[];
  /** Write into this existing storage instead of allocating (concat). */
  into?: GpuStorage;
  /** Only this box of the index space is written (concat); the rest of `into` is kept. */
  region?: { lo: number[]; hi: number[] };
}

/** "const": an untouched full() storage, read from the parameter block (no binding). */
type Mode = "dense" | "scalar" | "strided" | "const";

function modeOf(strides: readonly number[], shape: readonly number[]): Mode {
  if (strides.every((s) => s === 0)) return "scalar";
  const c = contiguousStrides(shape);
  return strides.every((s, d) => s === c[d] || shape[d] === 1) ? "dense" : "strided";
}

function kernelCode(spec: EwSpec, modes: Mode[]): string {
  const w = new Wgsl().params(64).buffer(1, "out", true);
  const names = spec.operands.map((_, k) => `in${k}`);
  let binding = 2;
  spec.operands.forEach((op, k) => {
    if (modes[k] === "const") return;
    w.buffer(binding++, names[k], false);
    if (spec.bits) w.bitsLoader(names[k], op.dtype);
    else w.loader(names[k], op.dtype);
  });
  const epw = EPW[spec.out];
  const bits = BITS[spec.out];
  const strided = modes.includes("strided");
  const offs = modes.map((m, k) => {
    const base = `p(${P_IN + 9 * k}u)`;
    if (m === "const") return "";
    if (m === "scalar") return `let o${k} = ${base};`;
    if (m === "dense") return `let o${k} = ${base} + li;`;
    return `var o${k} = ${base};\n      for (var d = 0u; d < rank; d++) { o${k} += c[d] * p(${P_IN + 9 * k + 1}u + d); }`;
  });
  const loads = spec.operands.map((op, k) => {
    if (modes[k] === "const") return natOf(op.dtype) === "f32" ? `pf(${P_IN + 9 * k}u)` : `bitcast<i32>(p(${P_IN + 9 * k}u))`;
    return `${spec.bits ? "bits" : "ld"}_${names[k]}(o${k})`;
  });
  const field = spec.bits ? loads[0] : w.encode(spec.out, spec.expr(w, loads));
  const coords = `var c: array<u32, ${MAX_RANK}>;
      var r = li;
      var inside = true;
      for (var d = i32(rank) - 1; d >= 0; d--) {
        let ud = u32(d);
        let s = p(8u + ud);
        c[ud] = r % s;
        r = r / s;
        inside = inside && c[ud] >= p(16u + ud) && c[ud] < p(24u + ud);
      }`;
  const body = `  if (unit >= p(1u)) { return; }
  let w = p(0u) + unit;
  let boxed = p(4u) != 0u;
  let rank = p(3u);
  var word = 0u;
  if (boxed) { word = out[w - p(5u)]; }
  for (var e = 0u; e < ${epw}u; e++) {
    let li = w * ${epw}u + e;
    if (li >= p(2u)) { break; }
    ${strided ? coords : `if (boxed) {\n      ${coords}\n      if (!inside) { continue; }\n    }`}
    ${strided ? "if (!inside) { continue; }" : ""}
    ${offs.join("\n    ")}
    word = insertBits(word, ${field}, e * ${bits}u, ${bits}u);
  }
  out[w - p(5u)] = word;`;
  return w.build(Wgsl.main(WG, body));
}

/** Run an elementwise kernel; returns the output storage (spec.into when given). */
export function elementwise(ctx: KernelContext, spec: EwSpec): GpuStorage {
  const n = numel(spec.shape);
  const out = spec.into ?? ctx.alloc(spec.out, n);
  if (n === 0) return out;
  // Held work (a merged AdamW) may write a deferred constant: record it first, then snapshot the
  // constants before any binding below materializes a storage.
  ctx.engine.drain();
  const consts = spec.operands.map((o) => (spec.bits ? null : inlinable(o.handle)));
  if (consts.some((c) => c !== null))
    spec = { ...spec, operands: spec.operands.map((o, k) => (consts[k] === null ? o : { ...o, strides: o.strides.map(() => 0), offset: 0 })) };
  const outStrides = contiguousStrides(spec.shape);
  // Concat keeps its dims (the region is expressed in them); everything else merges dims first.
  const { shape, strides } = spec.region
    ? { shape: spec.shape.length ? [...spec.shape] : [1], strides: [outStrides, ...spec.operands.map((o) => [...o.strides])].map((s) => (s.length ? s : [0])) }
    : coalesce(spec.shape, [outStrides, ...spec.operands.map((o) => o.strides)]);
  checkRank(spec.name, shape.length);
  const opStrides = strides.slice(1);
  const modes: Mode[] = opStrides.map((s, k) => (consts[k] !== null ? "const" : spec.region && !s.every((x) => x === 0) ? "strided" : modeOf(s, shape)));
  const code = kernelCode(spec, modes);
  const bound = spec.operands.map((_, k) => k).filter((k) => modes[k] !== "const");
  const k = ctx.engine.compile({ name: `${spec.name}_${spec.out}`, code, bindings: ["write", ...bound.map(() => "read" as const)] });

  const accesses: Access[] = [
    { strides: strides[0], offset: 0, epw: EPW[spec.out] },
    ...spec.operands.map((o, i) => ({ strides: opStrides[i], offset: o.offset, epw: EPW[o.dtype] })),
  ];
  const region = spec.region ? { lo: spec.region.lo, hi: spec.region.hi } : undefined;
  for (const box of planBoxes(spec.name, shape, accesses, ctx.maxWords, undefined, region)) {
    const params = new Uint32Array(64);
    const ow = box.windows[0];
    const linLo = box.lo.reduce((a, l, d) => a + l * strides[0][d], 0);
    const linHi = box.hi.reduce((a, h, d) => a + (h - 1) * strides[0][d], 0);
    const w0 = Math.floor(linLo / EPW[spec.out]);
    const w1 = Math.floor(linHi / EPW[spec.out]);
    params[0] = w0;
    params[1] = w1 - w0 + 1;
    params[2] = n;
    params[3] = shape.length;
    params[4] = box.full ? 0 : 1;
    params[5] = ow.word;
    shape.forEach((s, d) => {
      params[8 + d] = s;
      params[16 + d] = box.lo[d];
      params[24 + d] = box.hi[d];
    });
    spec.operands.forEach((o, i) => {
      const base = P_IN + 9 * i;
      if (consts[i] !== null) {
        params[base] = consts[i] as number;
        return;
      }
      params[base] = o.offset - box.windows[i + 1].word * EPW[o.dtype];
      opStrides[i].forEach((s, d) => (params[base + 1 + d] = s));
    });
    spec.extras?.forEach((v, i) => (params[P_EXTRA + i] = v));
    const binds = [
      bindWords(out, ow.word, ow.words),
      ...bound.map((i) => bindWords(spec.operands[i].handle, box.windows[i + 1].word, box.windows[i + 1].words)),
    ];
    ctx.engine.dispatch(k, params, binds, groupsFor(w1 - w0 + 1, WG));
  }
  return out;
}

// ---------------------------------------------------------------- op tables

const F_UNARY: Record<UnaryOp, (x: string, w: Wgsl) => string> = {
  neg: (x) => `-${x}`,
  exp: (x) => `exp(${x})`,
  log: (x) => `log(${x})`,
  sqrt: (x) => `sqrt(${x})`,
  recip: (x) => `1.0 / ${x}`,
  sin: (x) => `sin(${x})`,
  cos: (x) => `cos(${x})`,
  tanh: (x, w) => (w.need("tanh"), `tanh_(${x})`),
  sigmoid: (x, w) => (w.need("sigmoid"), `sigmoid_(${x})`),
  abs: (x) => `abs(${x})`,
  relu: (x) => `select(0.0, ${x}, ${x} > 0.0)`,
};

/** Integer unaries the core allows (neg, abs, relu); i32 wraps like an Int32Array store. */
const I_UNARY: Partial<Record<UnaryOp, (x: string) => string>> = {
  neg: (x) => `bitcast<i32>(0u - bitcast<u32>(${x}))`,
  abs: (x) => `abs(${x})`,
  relu: (x) => `max(${x}, 0)`,
};

export function unaryExpr(op: UnaryOp, dtype: DType): (w: Wgsl, x: string[]) => string {
  if (natOf(dtype) === "f32") return (w, [x]) => F_UNARY[op](`(${x})`, w);
  const f = I_UNARY[op];
  if (!f) throw new TypeError(`unary ${op}: not defined for ${dtype}`);
  return (_w, [x]) => f(`(${x})`);
}

/** NaN-propagating max/min and NaN-safe comparisons (bit tests: no reliance on IEEE compare rules). */
export function binaryExpr(op: BinaryOp, dtype: DType): (w: Wgsl, x: string[]) => string {
  if (natOf(dtype) === "f32") {
    return (w, [a, b]) => {
      switch (op) {
        case "add":
          return `${a} + ${b}`;
        case "sub":
          return `${a} - ${b}`;
        case "mul":
          return `${a} * ${b}`;
        case "div":
          return `${a} / ${b}`;
        case "max":
          w.need("nanmax");
          return `nanmax(${a}, ${b})`;
        case "min":
          w.need("nanmin");
          return `nanmin(${a}, ${b})`;
        case "pow":
          w.need("pow");
          return `pow_(${a}, ${b})`;
        case "lt":
          w.need("isnan");
          return `i32(!is_nan(${a}) && !is_nan(${b}) && ${a} < ${b})`;
        case "eq":
          w.need("isnan");
          return `i32(!is_nan(${a}) && ${a} == ${b})`;
      }
    };
  }
  // i32 wraps; u8 is computed in i32 and wrapped to 8 bits by the store, like a Uint8Array.
  return (w, [a, b]) => {
    switch (op) {
      case "add":
        return `bitcast<i32>(bitcast<u32>(${a}) + bitcast<u32>(${b}))`;
      case "sub":
        return `bitcast<i32>(bitcast<u32>(${a}) - bitcast<u32>(${b}))`;
      case "mul":
        return `bitcast<i32>(bitcast<u32>(${a}) * bitcast<u32>(${b}))`;
      case "div":
        return `select(0, ${a} / select(${b}, 1, ${b} == 0), ${b} != 0)`;
      case "max":
        return `max(${a}, ${b})`;
      case "min":
        return `min(${a}, ${b})`;
      case "pow":
        w.need("ipow");
        return `ipow(${a}, ${b})`;
      case "lt":
        return `i32(${a} < ${b})`;
      case "eq":
        return `i32(${a} == ${b})`;
    }
  };
}

// ---------------------------------------------------------------- creation

/** Bits of `value` in the natural type of dtype (for p() extras). */
function natBits(dtype: DType, value: number): number {
  if (natOf(dtype) === "f32") return new Uint32Array(Float32Array.of(value).buffer)[0];
  return (Math.trunc(value) || 0) >>> 0;
}

/** Deferred constants' bits, when reading them from p() gives the stored value exactly (f32, i32). */
function inlinable(h: GpuStorage): number | null {
  return h.constant !== null && (h.dtype === "f32" || h.dtype === "i32") ? h.constant : null;
}

/** A deferred fill (see GpuStorage): recorded when the buffer is first used, never if it is not. */
export function fullKernel(ctx: KernelContext, size: number, value: number, dtype: DType): GpuStorage {
  const bitsOf = natBits(dtype, value);
  const out = ctx.alloc(dtype, size);
  if (size === 0) return out;
  const nat = natOf(dtype);
  out.defer(
    () => {
      if (bitsOf === 0) ctx.engine.clear(out.buffer, 0, wordsOf(dtype, size) * 4);
      else
        elementwise(ctx, {
          name: "full",
          out: dtype,
          shape: [size],
          operands: [],
          extras: [bitsOf],
          into: out,
          expr: () => (nat === "f32" ? "pf(59u)" : "bitcast<i32>(p(59u))"),
        });
    },
    bitsOf,
    () => ctx.engine.drain(),
  );
  return out;
}

export function arangeKernel(ctx: KernelContext, size: number, start: number, step: number, dtype: DType): GpuStorage {
  // Integer dtypes with integer start/step stay exact in i32; otherwise f32 arithmetic then the cast.
  const intExact = natOf(dtype) === "i32" && Number.isInteger(start) && Number.isInteger(step);
  return elementwise(ctx, {
    name: "arange",
    out: dtype,
    shape: [size],
    operands: [],
    extras: intExact ? [start >>> 0, step >>> 0] : [natBits("f32", start), natBits("f32", step)],
    expr: (w) => {
      if (intExact) return "bitcast<i32>(p(59u) + li * p(60u))";
      return w.convert("f32", dtype, "fma(f32(li), pf(60u), pf(59u))");
    },
  });
}

/** uniformAt(seed, offset + i) of random.ts, bit-exact: lowbias32 on u32 with a 64-bit counter. */
export function randomKernel(ctx: KernelContext, size: number, seed: number, offset: number): GpuStorage {
  const hi = Math.floor(offset / 4294967296);
  return elementwise(ctx, {
    name: "random",
    out: "f32",
    shape: [size],
    operands: [],
    extras: [hash32(seed >>> 0), offset >>> 0, hi >>> 0],
    expr: (w) => (w.need("hash"), "uniform_at(li)"),
  });
}

// ---------------------------------------------------------------- helpers of the hand-written kernels

/** A contiguous view of x (copies only when the core hands over a strided one; the copy joins `temps`). */
export function contig(ctx: KernelContext, x: GpuInput, temps: GpuStorage[]): GpuInput {
  if (isContiguous(x.view.shape, x.view.strides)) return x;
  const h = elementwise(ctx, {
    name: "copy",
    out: x.dtype,
    shape: x.view.shape,
    bits: true,
    expr: () => "",
    operands: [{ handle: x.handle, dtype: x.dtype, strides: x.view.strides, offset: x.view.offset }],
  });
  temps.push(h);
  return { handle: h, dtype: x.dtype, view: { shape: x.view.shape, strides: contiguousStrides(x.view.shape), offset: 0 } };
}

/** Round an f32 temporary into `dtype` and release the temporary (no-op when h already has that dtype). */
export function finish(ctx: KernelContext, h: GpuStorage, dtype: DType): GpuStorage {
  if (h.dtype === dtype) return h;
  const out = elementwise(ctx, {
    name: "cast_f32",
    out: dtype,
    shape: [h.size],
    operands: [{ handle: h, dtype: "f32", strides: [1], offset: 0 }],
    expr: (w, [v]) => w.convert("f32", dtype, v),
  });
  ctx.release(h);
  return out;
}
