/**
 * The fused LoRA layer over a dense base (FusedKernels.loraLinear and its backward) as the
 * matmul jobs of wgsl/lora.ts. Dispatches per layer and step, against 6 forward and 9 backward
 * for the base matmul plus the composite branch (dropout, two matmuls, scale, base add; their
 * gradients and the input-gradient sum):
 *   forward   1: h = s · dropout(x) Aᵀ          2: y = x Wᵀ + h Bᵀ (+ bias)
 *   backward  1: gh = s · gy B  |  gB = gyᵀ h   2: gA = ghᵀ dropout(x)  |  gx = gy W + dropout(gh A)
 * ("|": two jobs of one dispatch). Operands are bound whole; a layer with an operand wider than one
 * storage binding runs the same math as separate kernels instead (`composite*`, which chunk).
 */
import type { DropoutParams, FusedKernels } from "@lowrank/tensor";
import { hash32 } from "@lowrank/tensor";
import { LORA_WG, type LoraJobShader, loraWgsl } from "../wgsl/lora.ts";
import type { Layout } from "../wgsl/matmul.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords } from "./context.ts";
import { binaryExpr, elementwise } from "./elementwise.ts";
import { dropout } from "./fused-nn.ts";
import { matmulKernel } from "./matmul.ts";
import { f32Bits } from "./runs.ts";

/** A logical 2-D operand: element [i, j] at off + i·s1 + j·s2 of its storage. */
interface Mat {
  h: GpuStorage;
  off: number;
  s1: number;
  s2: number;
}
interface Seg {
  a: Mat;
  b: Mat;
  K: number;
  scale: number;
  mask?: "a" | "b" | "out";
}
interface Job {
  M: number;
  N: number;
  segs: Seg[];
  bias?: Mat | null;
  /** Row length of the index space the mask is drawn over (x's inFeatures). */
  maskStride: number;
}

const pow2ceil = (x: number) => 2 ** Math.ceil(Math.log2(Math.max(1, x)));
/** x [rows, cols] row-major (the fused kernels' inputs are contiguous) and its transpose. */
const rowMajor = (x: GpuInput): Mat => ({ h: x.handle, off: x.view.offset, s1: x.view.shape[1], s2: 1 });
const transposed = (x: GpuInput): Mat => ({ h: x.handle, off: x.view.offset, s1: 1, s2: x.view.shape[1] });
const fresh = (h: GpuStorage, cols: number): Mat => ({ h, off: 0, s1: cols, s2: 1 });

function layoutA(m: Mat, M: number): Layout {
  if (m.s2 === 1 && m.s1 % 4 === 0 && m.off % 4 === 0) return "row";
  return m.s1 === 1 && M % 4 === 0 && m.s2 % 4 === 0 && m.off % 4 === 0 ? "col" : "any";
}
function layoutB(m: Mat, N: number): Layout {
  if (m.s2 === 1 && N % 4 === 0 && m.s1 % 4 === 0 && m.off % 4 === 0) return "row";
  return m.s1 === 1 && m.s2 % 4 === 0 && m.off % 4 === 0 ? "col" : "any";
}

/** Whether every storage binds whole within the device's binding limit. */
function fits(ctx: KernelContext, xs: GpuInput[]): boolean {
  return xs.every((x) => x.handle.size <= ctx.maxWords);
}

/** Run one or two jobs as one dispatch; returns their fresh f32 outputs. */
function run(ctx: KernelContext, name: string, jobs: Job[], drop: DropoutParams | null): GpuStorage[] {
  const shaders: LoraJobShader[] = jobs.map((j) => ({
    segs: j.segs.map((s) => ({ a: layoutA(s.a, j.M), b: layoutB(s.b, j.N), mask: drop ? s.mask : undefined })),
    bias: !!j.bias,
    vecOut: j.N % 4 === 0,
    wx: Math.min(16, pow2ceil(Math.ceil(j.N / 4))),
  }));
  const k = ctx.engine.compile({
    name,
    code: loraWgsl(shaders),
    bindings: jobs.flatMap((j) => ["write" as const, ...j.segs.flatMap(() => ["read" as const, "read" as const]), ...(j.bias ? ["read" as const] : [])]),
  });
  const p = new Uint32Array(64);
  const outs: GpuStorage[] = [];
  const binds: ReturnType<typeof bindWords>[] = [];
  const whole = (h: GpuStorage) => bindWords(h, 0, Math.ceil(h.size / 4) * 4);
  let groups = 0;
  jobs.forEach((j, ji) => {
    const J = 32 * ji;
    const wx = shaders[ji].wx;
    const tilesN = Math.ceil(j.N / (4 * wx));
    const tiles = tilesN * Math.ceil(j.M / (4 * (LORA_WG / wx)));
    const out = ctx.alloc("f32", j.M * j.N);
    outs.push(out);
    binds.push(whole(out));
    p.set([j.M, j.N, tilesN, tiles, 0, j.bias?.off ?? 0, j.maskStride], J);
    j.segs.forEach((s, si) => {
      p.set([s.K, s.a.off, s.a.s1, s.a.s2, s.b.off, s.b.s1, s.b.s2, f32Bits(s.scale)], J + 8 + 8 * si);
      binds.push(whole(s.a.h), whole(s.b.h));
    });
    if (j.bias) binds.push(whole(j.bias.h));
    groups += tiles;
  });
  if (drop) {
    if (!Number.isSafeInteger(drop.offset) || drop.offset < 0)
      throw new RangeError(`loraLinear: dropout offset must be an integer in [0, 2^53), got ${drop.offset}`);
    const threshold = Math.min(Math.max(Math.ceil(drop.p * 16777216), 0), 16777216) / 16777216;
    p.set([hash32(drop.seed >>> 0), drop.offset >>> 0, Math.floor(drop.offset / 4294967296) >>> 0, f32Bits(threshold), f32Bits(1 / (1 - drop.p))], 59);
  }
  ctx.engine.dispatch(k, p, binds, groups);
  return outs;
}

// ---------------------------------------------------------------- composite (operands past one binding)

const view2 = (h: GpuStorage, rows: number, cols: number): GpuInput => ({
  handle: h,
  dtype: "f32",
  view: { shape: [rows, cols], strides: [cols, 1], offset: 0 },
});
const T = (x: GpuInput): GpuInput => ({
  ...x,
  view: { shape: [x.view.shape[1], x.view.shape[0]], strides: [x.view.strides[1], x.view.strides[0]], offset: x.view.offset },
});

/** a + b as a new f32 storage (b may broadcast through its strides). */
function add(ctx: KernelContext, a: GpuInput, b: GpuInput): GpuStorage {
  const operands = [a, b].map((x) => ({ handle: x.handle, dtype: "f32" as const, strides: x.view.strides, offset: x.view.offset }));
  return elementwise(ctx, { name: "binary_add", out: "f32", shape: a.view.shape, operands, expr: binaryExpr("add", "f32") });
}

/** s · a as a new f32 storage. */
function scaled(ctx: KernelContext, a: GpuInput, s: number): GpuStorage {
  const operands = [{ handle: a.handle, dtype: "f32" as const, strides: a.view.strides, offset: a.view.offset }];
  return elementwise(ctx, { name: "lora_scale", out: "f32", shape: a.view.shape, operands, extras: [f32Bits(s)], expr: (_w, [v]) => `${v} * pf(59u)` });
}

/** Release `old` and return `next` (a chain of new storages). */
function swap(ctx: KernelContext, old: GpuStorage, next: GpuStorage): GpuStorage {
  ctx.release(old);
  return next;
}

function compositeForward(
  ctx: KernelContext,
  x: GpuInput,
  w: GpuInput,
  bias: GpuInput | null,
  a: GpuInput,
  b: GpuInput,
  s: number,
  drop: DropoutParams | null,
) {
  const [N, r, out] = [x.view.shape[0], a.view.shape[0], w.view.shape[0]];
  const xd = drop ? view2(dropout(ctx, x, drop.p, drop.seed, drop.offset), N, x.view.shape[1]) : x;
  const h0 = matmulKernel(ctx, xd, T(a), "tiled");
  if (drop) ctx.release(xd.handle);
  const h = swap(ctx, h0, scaled(ctx, view2(h0, N, r), s));
  let y = matmulKernel(ctx, x, T(w), "tiled");
  if (bias) y = swap(ctx, y, add(ctx, view2(y, N, out), { ...bias, view: { shape: [N, out], strides: [0, 1], offset: bias.view.offset } }));
  const d = matmulKernel(ctx, view2(h, N, r), T(b), "tiled");
  y = swap(ctx, y, add(ctx, view2(y, N, out), view2(d, N, out)));
  ctx.release(d);
  return { y, h };
}

function compositeBackward(
  ctx: KernelContext,
  x: GpuInput,
  w: GpuInput,
  a: GpuInput,
  b: GpuInput,
  h: GpuInput,
  gy: GpuInput,
  s: number,
  drop: DropoutParams | null,
) {
  const [N, inF, r] = [x.view.shape[0], x.view.shape[1], a.view.shape[0]];
  const gB = matmulKernel(ctx, T(gy), h, "tiled");
  const gh0 = matmulKernel(ctx, gy, b, "tiled");
  const gh = view2(swap(ctx, gh0, scaled(ctx, view2(gh0, N, r), s)), N, r);
  const xd = drop ? view2(dropout(ctx, x, drop.p, drop.seed, drop.offset), N, inF) : x;
  const gA = matmulKernel(ctx, T(gh), xd, "tiled");
  if (drop) ctx.release(xd.handle);
  let t = matmulKernel(ctx, gh, a, "tiled");
  if (drop) t = swap(ctx, t, dropout(ctx, view2(t, N, inF), drop.p, drop.seed, drop.offset));
  ctx.release(gh.handle);
  let gx = matmulKernel(ctx, gy, w, "tiled");
  gx = swap(ctx, gx, add(ctx, view2(gx, N, inF), view2(t, N, inF)));
  ctx.release(t);
  return { gx, gA, gB };
}

// ---------------------------------------------------------------- the pair

export function makeLora(ctx: KernelContext): Pick<FusedKernels<GpuStorage>, "loraLinear" | "loraLinearBackward"> {
  return {
    loraLinear: (x, w, bias, a, b, s, drop) => {
      if (!fits(ctx, [x, w, a, b, ...(bias ? [bias] : [])])) return compositeForward(ctx, x, w, bias, a, b, s, drop);
      const [N, inF, out, r] = [x.view.shape[0], x.view.shape[1], w.view.shape[0], a.view.shape[0]];
      const [h] = run(ctx, "lora_h", [{ M: N, N: r, maskStride: inF, segs: [{ a: rowMajor(x), b: transposed(a), K: inF, scale: s, mask: "a" }] }], drop);
      const [y] = run(
        ctx,
        "lora_y",
        [
          {
            M: N,
            N: out,
            maskStride: inF,
            bias: bias && { h: bias.handle, off: bias.view.offset, s1: 0, s2: 1 },
            segs: [
              { a: rowMajor(x), b: transposed(w), K: inF, scale: 1 },
              { a: fresh(h, r), b: transposed(b), K: r, scale: 1 },
            ],
          },
        ],
        null,
      );
      return { y, h };
    },
    loraLinearBackward: (x, w, a, b, h, gy, s, drop) => {
      if (!fits(ctx, [x, w, a, b, h, gy])) return compositeBackward(ctx, x, w, a, b, h, gy, s, drop);
      const [N, inF, out, r] = [x.view.shape[0], x.view.shape[1], w.view.shape[0], a.view.shape[0]];
      const [gh, gB] = run(
        ctx,
        "lora_gh_gb",
        [
          { M: N, N: r, maskStride: inF, segs: [{ a: rowMajor(gy), b: rowMajor(b), K: out, scale: s }] },
          { M: out, N: r, maskStride: inF, segs: [{ a: transposed(gy), b: rowMajor(h), K: N, scale: 1 }] },
        ],
        null,
      );
      const [gA, gx] = run(
        ctx,
        "lora_ga_gx",
        [
          { M: r, N: inF, maskStride: inF, segs: [{ a: transposed(view2(gh, N, r)), b: rowMajor(x), K: N, scale: 1, mask: "b" }] },
          {
            M: N,
            N: inF,
            maskStride: inF,
            segs: [
              { a: rowMajor(gy), b: rowMajor(w), K: out, scale: 1 },
              { a: fresh(gh, r), b: rowMajor(a), K: r, scale: 1, mask: "out" },
            ],
          },
        ],
        drop,
      );
      ctx.release(gh);
      return { gx, gA, gB };
    },
  };
}
