/**
 * Fused kernels of the transformer block besides attention: dropout, SwiGLU, RoPE (forward and
 * backward) and the in-place AdamW step. f32 math; halves are decoded on load and rounded once on
 * store. Dispatches: dropout 1, swiglu 1, swigluBackward 2 (one per gradient), rope 1,
 * ropeBackward 1, adamw 1 per group of tensors (adamw.ts) — more only when an operand spans several storage bindings.
 */
import { type DType, type FusedKernels, hash32, isContiguous, isFloat, numel } from "@lowrank/tensor";
import { BITS, EPW, Wgsl } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, groupsFor } from "./context.ts";
import { makeAdamw } from "./adamw.ts";
import { elementwise } from "./elementwise.ts";
import { dispatchRuns, f32Bits } from "./runs.ts";
import { checkRank, coalesce, contiguousStrides } from "./strided.ts";

const WG = 64;

function operand(x: GpuInput) {
  return { handle: x.handle, dtype: x.dtype, strides: x.view.strides, offset: x.view.offset };
}

function floatOnly(kernel: string, ...xs: GpuInput[]): void {
  for (const x of xs) if (!isFloat(x.dtype)) throw new TypeError(`${kernel}: expected a float tensor, got ${x.dtype}`);
}

/**
 * Dropout: keep iff uniformAt(seed, offset + i) >= p. The comparison is made exact on the
 * device: uniformAt is m / 2^24 for an integer m, so u >= p iff u >= ceil(p 2^24) / 2^24, a
 * threshold f32 holds exactly (p itself would round). Offsets up to 2^53 (the 64-bit counter of
 * the `random` kernel).
 */
export function dropout(ctx: KernelContext, x: GpuInput, p: number, seed: number, offset: number): GpuStorage {
  floatOnly("dropout", x);
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`dropout: offset must be an integer in [0, 2^53), got ${offset}`);
  const threshold = Math.min(Math.max(Math.ceil(p * 16777216), 0), 16777216) / 16777216;
  return elementwise(ctx, {
    name: "dropout",
    out: x.dtype,
    shape: x.view.shape,
    operands: [operand(x)],
    extras: [hash32(seed >>> 0), offset >>> 0, Math.floor(offset / 4294967296) >>> 0, f32Bits(threshold), f32Bits(1 / (1 - p))],
    expr: (w, [v]) => (w.need("hash"), `select(0.0, ${v} * pf(63u), uniform_at(li) >= pf(62u))`),
  });
}

function swiglu(ctx: KernelContext, gate: GpuInput, up: GpuInput): GpuStorage {
  floatOnly("swiglu", gate, up);
  return elementwise(ctx, {
    name: "swiglu",
    out: gate.dtype,
    shape: gate.view.shape,
    operands: [operand(gate), operand(up)],
    expr: (w, [g, u]) => (w.need("sigmoid"), `${g} * sigmoid_(${g}) * ${u}`),
  });
}

/** gUp = gy silu(g); gGate = gy u s (1 + g (1 - s)) with s = sigmoid(g): two elementwise passes. */
function swigluBackward(ctx: KernelContext, gate: GpuInput, up: GpuInput, gy: GpuInput): { gGate: GpuStorage; gUp: GpuStorage } {
  floatOnly("swigluBackward", gate, up, gy);
  const shape = gate.view.shape;
  const gUp = elementwise(ctx, {
    name: "swiglu_gup",
    out: up.dtype,
    shape,
    operands: [operand(gate), operand(gy)],
    expr: (w, [g, dy]) => (w.need("sigmoid"), `${dy} * ${g} * sigmoid_(${g})`),
  });
  const gGate = elementwise(ctx, {
    name: "swiglu_ggate",
    out: gate.dtype,
    shape,
    operands: [operand(gate), operand(up), operand(gy)],
    expr: (w, [g, u, dy]) => (w.need("sigmoid"), `${dy} * ${u} * (sigmoid_(${g}) * (1.0 + ${g} * (1.0 - sigmoid_(${g}))))`),
  });
  return { gGate, gUp };
}

// ---------------------------------------------------------------- rope

/**
 * RoPE over x [..., T, D] read through its view; out contiguous. Each invocation owns one output
 * word (one f32 or two halves of a row; D is even, so rows start on word boundaries).
 * Parameters: 2 T, 3 D, 4 x stride of T, 5 x stride of D, 6/7 cos strides (T, i), 8/9 sin
 * strides, 10 batch rank, 11 sign of sin (f32; -1 for the backward); bases 16 out, 17 x,
 * 18 cos, 19 sin; 24.. batch shape, 32.. x batch strides.
 */
function ropeCode(xd: DType, cd: DType, sd: DType, out: DType, interleaved: boolean): string {
  const w = new Wgsl()
    .params(64)
    .buffer(1, "o", true)
    .buffer(2, "x", false)
    .loader("x", xd)
    .buffer(3, "cs", false)
    .loader("cs", cd)
    .buffer(4, "sn", false)
    .loader("sn", sd);
  const epw = EPW[out];
  const pair = interleaved
    ? "let i = j >> 1u; let first = (j & 1u) == 0u; let jp = j & ~1u; let jq = jp + 1u;"
    : "let half = D >> 1u; let first = j < half; let i = select(j - half, j, first); let jp = i; let jq = i + half;";
  return w.build(
    Wgsl.main(
      WG,
      `  let first_li = p(0u) + unit * ${epw}u;
  let end = p(0u) + p(1u);
  if (first_li >= end) { return; }
  let T = p(2u);
  let D = p(3u);
  var word = 0u;
  for (var e = 0u; e < ${epw}u; e++) {
    let li = first_li + e;
    if (li >= end) { break; }
    let j = li % D;
    let row = li / D;
    let t = row % T;
    var rest = row / T;
    var xo = p(17u) + t * p(4u);
    for (var d = i32(p(10u)) - 1; d >= 0; d--) {
      let extent = p(24u + u32(d));
      xo += (rest % extent) * p(32u + u32(d));
      rest = rest / extent;
    }
    ${pair}
    let xp = ld_x(xo + jp * p(5u));
    let xq = ld_x(xo + jq * p(5u));
    let c = ld_cs(p(18u) + t * p(6u) + i * p(7u));
    let sn = pf(11u) * ld_sn(p(19u) + t * p(8u) + i * p(9u));
    let v = select(xq * c + xp * sn, xp * c - xq * sn, first);
    word = insertBits(word, ${w.encode(out, "v")}, e * ${BITS[out]}u, ${BITS[out]}u);
  }
  o[(p(16u) + first_li) / ${epw}u] = word;`,
    ),
  );
}

function rope(ctx: KernelContext, x: GpuInput, cos: GpuInput, sin: GpuInput, interleaved: boolean, sign: 1 | -1): GpuStorage {
  const name = sign === 1 ? "rope" : "ropeBackward";
  floatOnly(name, x, cos, sin);
  const shape = x.view.shape;
  const r = shape.length;
  if (r < 2) throw new RangeError(`${name}: x must be [..., T, D], got [${shape}]`);
  const [T, D] = [shape[r - 2], shape[r - 1]];
  if (D % 2 !== 0) throw new RangeError(`${name}: head dim ${D} must be even`);
  const half = D / 2;
  for (const [what, c] of [
    ["cos", cos],
    ["sin", sin],
  ] as const) {
    if (c.view.shape.length !== 2 || c.view.shape[0] !== T || c.view.shape[1] !== half)
      throw new RangeError(`${name}: ${what} must be [${T}, ${half}], got [${c.view.shape}]`);
  }
  const out = ctx.alloc(x.dtype, numel(shape));
  const batchShape = shape.slice(0, r - 2);
  const xs = x.view.strides;
  const b = coalesce(batchShape, [xs.slice(0, r - 2), contiguousStrides(batchShape).map((s) => s * T * D)]);
  checkRank(name, b.shape.length);
  const k = ctx.engine.compile({ name, code: ropeCode(x.dtype, cos.dtype, sin.dtype, x.dtype, interleaved), bindings: ["write", "read", "read", "read"] });
  const [cs, ss] = [cos.view.strides, sin.view.strides];
  const p = new Uint32Array(64);
  p.set([T, D, xs[r - 2], xs[r - 1], cs[0], cs[1], ss[0], ss[1], b.shape.length, f32Bits(sign)], 2);
  b.shape.forEach((s, d) => {
    p[24 + d] = s;
    p[32 + d] = b.strides[0][d];
  });
  const nb = b.shape.length;
  const table = (c: GpuInput) => ({
    h: c.handle,
    a: { strides: [...new Array<number>(nb).fill(0), c.view.strides[0], 0], offset: c.view.offset, epw: EPW[c.dtype], span: (half - 1) * c.view.strides[1] },
  });
  const epw = EPW[x.dtype];
  dispatchRuns(
    ctx,
    k,
    [...b.shape, T, D],
    [...new Array<number>(nb).fill(1), 1, D],
    [
      { h: out, a: { strides: [...b.strides[1], D, 1], offset: 0, epw } },
      { h: x.handle, a: { strides: [...b.strides[0], xs[r - 2], xs[r - 1]], offset: x.view.offset, epw } },
      table(cos),
      table(sin),
    ],
    p,
    (n) => groupsFor(Math.ceil(n / epw), WG),
  );
  return out;
}

export function makeFusedNn(ctx: KernelContext): Pick<FusedKernels<GpuStorage>, "dropout" | "swiglu" | "swigluBackward" | "rope" | "ropeBackward" | "adamw"> {
  return {
    dropout: (x, p, seed, offset) => dropout(ctx, x, p, seed, offset),
    swiglu: (gate, up) => swiglu(ctx, gate, up),
    swigluBackward: (gate, up, gy) => swigluBackward(ctx, gate, up, gy),
    rope: (x, cos, sin, interleaved) => rope(ctx, x, cos, sin, interleaved, 1),
    ropeBackward: (gy, cos, sin, interleaved) => rope(ctx, gy, cos, sin, interleaved, -1),
    adamw: makeAdamw(ctx),
  };
}
