/**
 * Fused last-axis kernels (softmax, logSoftmax, rmsNorm, addRmsNorm, crossEntropy and their backward
 * kernels): one workgroup per row, row reductions in workgroup memory, f32 math. makeFused adds
 * the kernels of fused-nn.ts, attention.ts, lora.ts and matmul4bit.ts. Outputs are written as f32; a half/bf16 result
 * is then rounded by the cast kernel (one rounding, like the CPU). Rows are chunked so every
 * operand window fits one storage binding (a 32k-vocab logits matrix is larger than lavapipe's
 * 128 MiB binding limit).
 *
 * Operand kinds: "rows" (row r at base + r*n), "vec" (one length-n vector for every row),
 * "perrow" (element r). Parameters: 0 rows in chunk, 1 n, 2 eps, 3 ignore index, 4 first
 * chunk?, 16+k input bases, 32+k output bases.
 */
import { type FusedKernels, numel } from "@lowrank/tensor";
import { Wgsl, natOf, wgReduce } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords } from "./context.ts";
import { makeAttention } from "./attention.ts";
import { contig, finish } from "./elementwise.ts";
import { makeFusedNn } from "./fused-nn.ts";
import { matmul4bit } from "./matmul4bit.ts";
import { makeLora } from "./lora.ts";
import { sumSquares } from "./sumsq.ts";
import { type Access, planBoxes } from "./strided.ts";

const WG = 64;
type Kind = "rows" | "vec" | "perrow";

interface RowIn {
  name: string;
  x: GpuInput;
  kind: Kind;
}
interface RowOut {
  name: string;
  kind: Kind;
}

const REDUCE = wgReduce(WG);

/**
 * Run a row kernel: `body` sees the chunk-local row `r`, `lid`, `n`, accessors `<in>(r, i)` /
 * `<in>(i)` / `<in>(r)` and setters `set_<out>(...)`. Returns the f32 outputs.
 */
function rowKernel(
  ctx: KernelContext,
  name: string,
  rows: number,
  n: number,
  inputs: RowIn[],
  outs: RowOut[],
  body: string,
  opts: { eps?: number; ignore?: number; flags?: boolean; carry?: boolean } = {},
): GpuStorage[] {
  const temps: GpuStorage[] = [];
  const ins = inputs.map((i) => ({ ...i, x: contig(ctx, i.x, temps) }));
  const outputs = outs.map((o) => ctx.alloc("f32", o.kind === "rows" ? rows * n : o.kind === "vec" ? n : rows));
  const w = new Wgsl().params(64);
  const args = (k: Kind) => (k === "rows" ? "r: u32, i: u32" : k === "vec" ? "i: u32" : "r: u32");
  const idx = (k: Kind) => (k === "rows" ? "r * p(1u) + i" : k === "vec" ? "i" : "r");
  outs.forEach((o, k) => {
    w.buffer(1 + k, `o_${o.name}`, true);
    w.decl(`fn set_${o.name}(${args(o.kind)}, v: f32) { o_${o.name}[p(${32 + k}u) + ${idx(o.kind)}] = bitcast<u32>(v); }
fn get_${o.name}(${args(o.kind)}) -> f32 { return bitcast<f32>(o_${o.name}[p(${32 + k}u) + ${idx(o.kind)}]); }`);
  });
  ins.forEach((inp, k) => {
    w.buffer(1 + outs.length + k, `b_${inp.name}`, false).loader(`b_${inp.name}`, inp.x.dtype);
    w.decl(`fn ${inp.name}(${args(inp.kind)}) -> ${natOf(inp.x.dtype)} { return ld_b_${inp.name}(p(${16 + k}u) + ${idx(inp.kind)}); }`);
  });
  if (opts.flags) w.flags(1 + outs.length + ins.length);
  w.need("inf", "nan").decl(REDUCE);
  const main = Wgsl.main(
    WG,
    `  let r = group;
  if (r >= p(0u)) { return; }
  let n = p(1u);
  let eps = pf(2u);
  let ignore = bitcast<i32>(p(3u));
${body}`,
  );
  const k = ctx.engine.compile({
    name,
    code: w.build(main),
    flags: opts.flags,
    bindings: [...outs.map(() => "write" as const), ...ins.map(() => "read" as const)],
  });
  const access = (kind: Kind, offset: number, epw: number): Access =>
    kind === "rows" ? { strides: [n], offset, epw, span: n - 1 } : kind === "vec" ? { strides: [0], offset, epw, span: n - 1 } : { strides: [1], offset, epw };
  const accesses = [
    ...outs.map((o) => access(o.kind, 0, 1)),
    ...ins.map((i) => access(i.kind, i.x.view.offset, i.x.dtype === "f32" || i.x.dtype === "i32" ? 1 : i.x.dtype === "u8" ? 4 : 2)),
  ];
  // Column-sum outputs ("vec") accumulate across row chunks (carry): later chunks add to earlier.
  const boxes = planBoxes(name, [rows], accesses, ctx.maxWords, undefined, undefined, true);
  boxes.forEach((box, bi) => {
    const p = new Uint32Array(64);
    p[0] = opts.carry ? n : box.hi[0] - box.lo[0];
    p[1] = n;
    p[2] = new Uint32Array(Float32Array.of(opts.eps ?? 0).buffer)[0];
    p[3] = (opts.ignore ?? 0) >>> 0;
    p[4] = bi === 0 ? 1 : 0;
    p[5] = box.hi[0] - box.lo[0];
    accesses.forEach((a, j) => {
      const base = a.offset + a.strides[0] * box.lo[0] - box.windows[j].word * a.epw;
      p[j < outs.length ? 32 + j : 16 + j - outs.length] = base;
    });
    const handles = [...outputs, ...ins.map((i) => i.x.handle)];
    const binds = handles.map((h, j) => bindWords(h, box.windows[j].word, box.windows[j].words));
    ctx.engine.dispatch(k, p, binds, opts.carry ? Math.ceil(n / WG) : box.hi[0] - box.lo[0]);
  });
  temps.forEach((t) => ctx.release(t));
  return outputs;
}

function dims(x: GpuInput): { rows: number; n: number } {
  const s = x.view.shape;
  const n = s.length ? s[s.length - 1] : 1;
  return { rows: n === 0 ? 0 : numel(s) / n, n };
}

const SOFTMAX = (log: boolean) => `
  var m = -inf_f32();
  for (var i = lid; i < n; i += ${WG}u) { m = max(m, x(r, i)); }
  m = wg_max(m, lid);
  var s = 0.0;
  for (var i = lid; i < n; i += ${WG}u) { s += exp(x(r, i) - m); }
  s = wg_sum(s, lid);
  ${log ? "let ls = log(s);" : ""}
  for (var i = lid; i < n; i += ${WG}u) { set_y(r, i, ${log ? "x(r, i) - m - ls" : "exp(x(r, i) - m) / s"}); }`;

const SOFTMAX_BWD = (log: boolean) => `
  var s = 0.0;
  for (var i = lid; i < n; i += ${WG}u) { s += ${log ? "gy(r, i)" : "gy(r, i) * y(r, i)"}; }
  s = wg_sum(s, lid);
  for (var i = lid; i < n; i += ${WG}u) { set_g(r, i, ${log ? "gy(r, i) - exp(y(r, i)) * s" : "y(r, i) * (gy(r, i) - s)"}); }`;

/**
 * RMSNorm of row r read through `v(i)`; `store` (addRmsNorm) first writes h = x + res, kept in f32
 * until finish rounds it, so a half h is normed before its rounding.
 */
const rmsNormBody = (v: string, store = "") => `
  var ss = 0.0;
  for (var i = lid; i < n; i += ${WG}u) { ${store}let v = ${v}; ss += v * v; }
  ss = wg_sum(ss, lid);
  let rs = 1.0 / sqrt(ss / f32(n) + eps);
  if (lid == 0u) { set_rstd(r, rs); }
  for (var i = lid; i < n; i += ${WG}u) { set_y(r, i, ${v} * rs * w(i)); }`;
const RMSNORM = rmsNormBody("x(r, i)");
const ADD_RMSNORM = rmsNormBody("get_h(r, i)", "set_h(r, i, x(r, i) + res(r, i)); ");

const RMSNORM_BWD = `
  let rs = rstd(r);
  var dot = 0.0;
  for (var i = lid; i < n; i += ${WG}u) { dot += gy(r, i) * w(i) * x(r, i) * rs; }
  dot = wg_sum(dot, lid) / f32(n);
  for (var i = lid; i < n; i += ${WG}u) { set_gx(r, i, rs * (gy(r, i) * w(i) - x(r, i) * rs * dot)); }`;

/** gw[i] = sum over rows of gy * x * rstd: one invocation per column, rows in order (deterministic). */
const RMSNORM_GW = `
  let col = unit;
  if (col >= n) { return; }
  var acc = select(get_gw(col), 0.0, p(4u) != 0u);
  for (var q = 0u; q < p(5u); q++) { acc += gy(q, col) * (x(q, col) * rstd(q)); }
  set_gw(col, acc);`;

const CROSS_ENTROPY = `
  var m = -inf_f32();
  for (var i = lid; i < n; i += ${WG}u) { m = max(m, x(r, i)); }
  m = wg_max(m, lid);
  var s = 0.0;
  for (var i = lid; i < n; i += ${WG}u) { s += exp(x(r, i) - m); }
  s = wg_sum(s, lid);
  let l = m + log(s);
  if (lid == 0u) {
    set_lse(r, l);
    let t = tg(r);
    if (t == ignore) { set_loss(r, 0.0); }
    else if (t < 0 || u32(t) >= n) { atomicOr(&flags[0], 4u); set_loss(r, nan_f32()); }
    else { set_loss(r, l - x(r, u32(t))); }
  }`;

const CROSS_ENTROPY_BWD = `
  let t = tg(r);
  if (t == ignore) {
    for (var i = lid; i < n; i += ${WG}u) { set_gl(r, i, 0.0); }
    return;
  }
  if (lid == 0u && (t < 0 || u32(t) >= n)) { atomicOr(&flags[0], 4u); }
  let gr = g(r);
  let l = lse(r);
  for (var i = lid; i < n; i += ${WG}u) {
    let v = exp(x(r, i) - l) * gr;
    set_gl(r, i, select(v, v - gr, i32(i) == t));
  }`;

export function makeFused(ctx: KernelContext): Partial<FusedKernels<GpuStorage>> {
  return {
    softmax: (x) => {
      const { rows, n } = dims(x);
      return finish(ctx, rowKernel(ctx, "softmax", rows, n, [{ name: "x", x, kind: "rows" }], [{ name: "y", kind: "rows" }], SOFTMAX(false))[0], x.dtype);
    },
    logSoftmax: (x) => {
      const { rows, n } = dims(x);
      return finish(ctx, rowKernel(ctx, "logSoftmax", rows, n, [{ name: "x", x, kind: "rows" }], [{ name: "y", kind: "rows" }], SOFTMAX(true))[0], x.dtype);
    },
    softmaxBackward: (y, gy) => {
      const { rows, n } = dims(y);
      return finish(
        ctx,
        rowKernel(
          ctx,
          "softmaxBackward",
          rows,
          n,
          [
            { name: "y", x: y, kind: "rows" },
            { name: "gy", x: gy, kind: "rows" },
          ],
          [{ name: "g", kind: "rows" }],
          SOFTMAX_BWD(false),
        )[0],
        y.dtype,
      );
    },
    logSoftmaxBackward: (y, gy) => {
      const { rows, n } = dims(y);
      return finish(
        ctx,
        rowKernel(
          ctx,
          "logSoftmaxBackward",
          rows,
          n,
          [
            { name: "y", x: y, kind: "rows" },
            { name: "gy", x: gy, kind: "rows" },
          ],
          [{ name: "g", kind: "rows" }],
          SOFTMAX_BWD(true),
        )[0],
        y.dtype,
      );
    },
    rmsNorm: (x, w, eps) => {
      const { rows, n } = dims(x);
      const [y, rstd] = rowKernel(
        ctx,
        "rmsNorm",
        rows,
        n,
        [
          { name: "x", x, kind: "rows" },
          { name: "w", x: w, kind: "vec" },
        ],
        [
          { name: "y", kind: "rows" },
          { name: "rstd", kind: "perrow" },
        ],
        RMSNORM,
        { eps },
      );
      return { out: finish(ctx, y, x.dtype), rstd };
    },
    addRmsNorm: (x, res, w, eps) => {
      const { rows, n } = dims(x);
      const ins: RowIn[] = [
        { name: "x", x, kind: "rows" },
        { name: "res", x: res, kind: "rows" },
        { name: "w", x: w, kind: "vec" },
      ];
      const [h, y, rstd] = rowKernel(
        ctx,
        "addRmsNorm",
        rows,
        n,
        ins,
        [
          { name: "h", kind: "rows" },
          { name: "y", kind: "rows" },
          { name: "rstd", kind: "perrow" },
        ],
        ADD_RMSNORM,
        { eps },
      );
      return { h: finish(ctx, h, x.dtype), out: finish(ctx, y, x.dtype), rstd };
    },
    rmsNormBackward: (x, w, rstd, gy) => {
      const { rows, n } = dims(x);
      const ins: RowIn[] = [
        { name: "x", x, kind: "rows" },
        { name: "w", x: w, kind: "vec" },
        { name: "rstd", x: rstd, kind: "perrow" },
        { name: "gy", x: gy, kind: "rows" },
      ];
      const [gx] = rowKernel(ctx, "rmsNormBackward", rows, n, ins, [{ name: "gx", kind: "rows" }], RMSNORM_BWD);
      const [gw] = rowKernel(ctx, "rmsNormGradW", rows, n, [ins[0], ins[2], ins[3]], [{ name: "gw", kind: "vec" }], RMSNORM_GW, { carry: true });
      return { gx: finish(ctx, gx, x.dtype), gw: finish(ctx, gw, w.dtype) };
    },
    crossEntropy: (logits, targets, ignore) => {
      const { rows, n } = dims(logits);
      const [loss, lse] = rowKernel(
        ctx,
        "crossEntropy",
        rows,
        n,
        [
          { name: "x", x: logits, kind: "rows" },
          { name: "tg", x: targets, kind: "perrow" },
        ],
        [
          { name: "loss", kind: "perrow" },
          { name: "lse", kind: "perrow" },
        ],
        CROSS_ENTROPY,
        { ignore, flags: true },
      );
      return { loss: finish(ctx, loss, logits.dtype), lse };
    },
    crossEntropyBackward: (logits, targets, lse, g, ignore) => {
      const { rows, n } = dims(logits);
      const ins: RowIn[] = [
        { name: "x", x: logits, kind: "rows" },
        { name: "tg", x: targets, kind: "perrow" },
        { name: "lse", x: lse, kind: "perrow" },
        { name: "g", x: g, kind: "perrow" },
      ];
      return finish(
        ctx,
        rowKernel(ctx, "crossEntropyBackward", rows, n, ins, [{ name: "gl", kind: "rows" }], CROSS_ENTROPY_BWD, { ignore, flags: true })[0],
        logits.dtype,
      );
    },
    ...makeFusedNn(ctx),
    ...makeAttention(ctx),
    ...makeLora(ctx),
    sumSquares: (xs) => sumSquares(ctx, xs),
    matmul4bit: (x, w, transpose) => matmul4bit(ctx, x, w, transpose),
  };
}
