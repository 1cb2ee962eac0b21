/**
 * Batched matmul host side: picks the load layout of each operand from its strides (transposed
 * views are read in place), merges batch dims, chunks work whose operands exceed one binding,
 * and dispatches the reg4x4 kernel (or the naive one, kept for benchmarks).
 * Halves are read as halves and accumulated in f32; the f32 result is rounded into the dtype by
 * the cast kernel. Integer matmuls go through f32 like the CPU backend (truncating store).
 */
import { numel } from "@lowrank/tensor";
import { type Layout, type MatmulShader, matmulWgsl } from "../wgsl/matmul.ts";
import { EPW } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords } from "./context.ts";
import { WebGpuLimitError } from "../errors.ts";
import { binaryExpr, elementwise, fullKernel } from "./elementwise.ts";
import { type Box, checkRank, coalesce, contiguousStrides, planBoxes } from "./strided.ts";

export type MatmulVariant = "tiled" | "naive";

function pow2ceil(x: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, x)));
}

const aligned = (xs: readonly number[]) => xs.every((s) => s % 4 === 0);

/** Cast a view to a contiguous f32 temporary. */
function toF32(ctx: KernelContext, x: GpuInput): GpuStorage {
  return elementwise(ctx, {
    name: `cast_${x.dtype}`,
    out: "f32",
    shape: x.view.shape,
    operands: [{ handle: x.handle, dtype: x.dtype, strides: x.view.strides, offset: x.view.offset }],
    expr: (w, [v]) => w.convert(x.dtype, "f32", v),
  });
}

export function matmulKernel(ctx: KernelContext, a: GpuInput, b: GpuInput, variant: MatmulVariant): GpuStorage {
  const dtype = a.dtype;
  if (dtype === "i32" || dtype === "u8") {
    const af = toF32(ctx, a);
    const bf = toF32(ctx, b);
    const view = (x: GpuInput, h: GpuStorage): GpuInput => ({
      handle: h,
      dtype: "f32",
      view: { shape: x.view.shape, strides: contiguousStrides(x.view.shape), offset: 0 },
    });
    const c = matmulKernel(ctx, view(a, af), view(b, bf), variant);
    ctx.release(af);
    ctx.release(bf);
    const n = numel(a.view.shape.slice(0, -1)) * b.view.shape[b.view.shape.length - 1];
    const out = elementwise(ctx, {
      name: "cast_f32",
      out: dtype,
      shape: [n],
      operands: [{ handle: c, dtype: "f32", strides: [1], offset: 0 }],
      expr: (w, [v]) => w.convert("f32", dtype, v),
    });
    ctx.release(c);
    return out;
  }
  const sa = a.view.shape;
  const sb = b.view.shape;
  const r = sa.length;
  const [M, K, N] = [sa[r - 2], sa[r - 1], sb[r - 1]];
  const batchShape = sa.slice(0, r - 2);
  const batch = numel(batchShape);
  if (dtype !== "f32") {
    // Halves: f32 result, then one rounding into the dtype.
    const c = matmulF32(ctx, a, b, variant, M, K, N, batchShape);
    const out = elementwise(ctx, {
      name: "cast_f32",
      out: dtype,
      shape: [batch * M * N],
      operands: [{ handle: c, dtype: "f32", strides: [1], offset: 0 }],
      expr: (w, [v]) => w.convert("f32", dtype, v),
    });
    ctx.release(c);
    return out;
  }
  return matmulF32(ctx, a, b, variant, M, K, N, batchShape);
}

function matmulF32(
  ctx: KernelContext,
  a: GpuInput,
  b: GpuInput,
  variant: MatmulVariant,
  M: number,
  K: number,
  N: number,
  batchShape: readonly number[],
): GpuStorage {
  const batch = numel(batchShape);
  if (batch * M * N === 0 || K === 0) return fullKernel(ctx, batch * M * N, 0, "f32");
  const r = a.view.shape.length;
  const as = a.view.strides;
  const bs = b.view.strides;
  const [sam, sak, sbk, sbn] = [as[r - 2], as[r - 1], bs[r - 2], bs[r - 1]];
  const outBatch = contiguousStrides(batchShape).map((s) => s * M * N);
  const merged = coalesce(batchShape, [as.slice(0, r - 2), bs.slice(0, r - 2), outBatch]);
  const bshape = batchShape.length ? merged.shape : [1];
  const [aB, bB, oB] = batchShape.length ? merged.strides : [[0], [0], [0]];
  checkRank("matmul", bshape.length);
  const ao = a.view.offset;
  const bo = b.view.offset;
  const aLay: Layout =
    sak === 1 && sam % 4 === 0 && ao % 4 === 0 && aligned(aB)
      ? "row"
      : sam === 1 && M % 4 === 0 && sak % 4 === 0 && ao % 4 === 0 && aligned(aB)
      ? "col"
      : "any";
  const bLay: Layout =
    sbn === 1 && N % 4 === 0 && sbk % 4 === 0 && bo % 4 === 0 && aligned(bB)
      ? "row"
      : sbk === 1 && sbn % 4 === 0 && bo % 4 === 0 && aligned(bB)
      ? "col"
      : "any";
  const naive = variant === "naive";
  // Narrow outputs (LoRA's rank-16 side) get narrow workgroups so no lane idles, and no taller
  // than leaves ~8 workgroups along M to spread over the cores.
  const wx = naive ? 8 : Math.min(16, pow2ceil(Math.ceil(N / 4)));
  const wy = naive ? 8 : Math.min(256 / wx, pow2ceil(Math.ceil(M / 32)));
  const per = naive ? 1 : 4;
  const [tmRows, tnCols] = [wy * per, wx * per];
  const shader: MatmulShader = { a: aLay, b: bLay, dtype: a.dtype, nativeF16: ctx.hasF16, vecOut: N % 4 === 0, wx, wy, naive };
  const name = naive ? "matmul_naive" : `matmul_${aLay}_${bLay}`;
  const k = ctx.engine.compile({ name: `${name}_${a.dtype}`, code: matmulWgsl(shader), bindings: ["write", "read", "read"] });

  const space = [...bshape, M, N];
  const nb = bshape.length;
  let boxes: Box[];
  try {
    boxes = planBoxes(
      name,
      space,
      [
        { strides: [...oB, N, 1], offset: 0, epw: 1 },
        { strides: [...aB, sam, 0], offset: ao, epw: EPW[a.dtype], span: (K - 1) * sak },
        { strides: [...bB, 0, sbn], offset: bo, epw: EPW[b.dtype], span: (K - 1) * sbk },
      ],
      ctx.maxWords,
      [...bshape.map(() => 1), 4, 4],
    );
  } catch (err) {
    if (!(err instanceof WebGpuLimitError) || K < 2) throw err;
    return splitK(ctx, a, b, variant, M, K, N, batchShape);
  }
  const out = ctx.alloc("f32", batch * M * N);
  for (const box of boxes) {
    const [ow, aw, bw] = box.windows.map((w) => ({ word: w.word, words: Math.ceil(w.words / 4) * 4 }));
    const rows = box.hi[nb] - box.lo[nb];
    const cols = box.hi[nb + 1] - box.lo[nb + 1];
    const tilesM = Math.ceil(rows / tmRows);
    const tilesN = Math.ceil(cols / tnCols);
    const nbatch = numel(box.hi.slice(0, nb).map((h, d) => h - box.lo[d]));
    const p = new Uint32Array(64);
    p[0] = box.hi[nb];
    p[1] = box.hi[nb + 1];
    p[2] = K;
    p[3] = nb;
    p[4] = tilesN;
    p[5] = tilesM;
    p[6] = tilesN * tilesM * nbatch;
    p[7] = box.lo[nb];
    p[8] = box.lo[nb + 1];
    p[9] = N;
    p[10] = ao - aw.word * EPW[a.dtype];
    p[11] = sam;
    p[12] = sak;
    p[13] = bo - bw.word * EPW[b.dtype];
    p[14] = sbk;
    p[15] = sbn;
    p[16] = -ow.word;
    for (let d = 0; d < nb; d++) {
      p[20 + d] = box.hi[d] - box.lo[d];
      p[28 + d] = box.lo[d];
      p[36 + d] = aB[d];
      p[44 + d] = bB[d];
      p[52 + d] = oB[d];
    }
    ctx.engine.dispatch(k, p, [bindWords(out, ow.word, ow.words), bindWords(a.handle, aw.word, aw.words), bindWords(b.handle, bw.word, bw.words)], p[6]);
  }
  return out;
}

/** Operand rows wider than one binding (a row-major B with huge N): C = A[:, :h] B[:h] + A[:, h:] B[h:]. */
function splitK(
  ctx: KernelContext,
  a: GpuInput,
  b: GpuInput,
  variant: MatmulVariant,
  M: number,
  K: number,
  N: number,
  batchShape: readonly number[],
): GpuStorage {
  const r = a.view.shape.length;
  const h = K > 8 ? Math.ceil(K / 8) * 4 : Math.ceil(K / 2);
  const part = (x: GpuInput, axis: number, start: number, len: number): GpuInput => {
    const shape = [...x.view.shape];
    shape[axis] = len;
    return { ...x, view: { shape, strides: x.view.strides, offset: x.view.offset + start * x.view.strides[axis] } };
  };
  const c1 = matmulF32(ctx, part(a, r - 1, 0, h), part(b, r - 2, 0, h), variant, M, h, N, batchShape);
  const c2 = matmulF32(ctx, part(a, r - 1, h, K - h), part(b, r - 2, h, K - h), variant, M, K - h, N, batchShape);
  const n = numel(batchShape) * M * N;
  const c = elementwise(ctx, {
    name: "binary_add",
    out: "f32",
    shape: [n],
    operands: [c1, c2].map((x) => ({ handle: x, dtype: "f32" as const, strides: [1], offset: 0 })),
    expr: binaryExpr("add", "f32"),
  });
  ctx.release(c1);
  ctx.release(c2);
  return c;
}
