/**
 * Flash-style grouped-query attention, host side (the WGSL is in ../wgsl/attention.ts).
 * Dispatches: forward 1; backward 2 (the dq pass, which also writes delta = rowsum(dO * O), then
 * the dk/dv pass). More only when an operand spans several storage bindings; one more per
 * half-precision output when D is odd (rows then share words: f32 result, then the cast kernel).
 */
import { type DType, type FusedKernels, isFloat } from "@lowrank/tensor";
import { WebGpuLimitError } from "../errors.ts";
import { MAX_HEAD_DIM, WG, attentionDkvWgsl, attentionDqWgsl, attentionForwardWgsl } from "../wgsl/attention.ts";
import { EPW } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, groupsFor } from "./context.ts";
import { contig, finish } from "./elementwise.ts";
import { type RunOperand, dispatchRuns, f32Bits } from "./runs.ts";
import type { Access } from "./strided.ts";

interface Dims {
  B: number;
  Hq: number;
  Hkv: number;
  G: number;
  T: number;
  S: number;
  D: number;
}

function dimsOf(kernel: string, q: GpuInput, k: GpuInput, v: GpuInput): Dims {
  const [qs, ks, vs] = [q.view.shape, k.view.shape, v.view.shape];
  if (qs.length !== 4 || ks.length !== 4 || vs.length !== 4) throw new RangeError(`${kernel}: q, k, v must be [B, H, T, D], got [${qs}], [${ks}], [${vs}]`);
  const [B, Hq, T, D] = qs;
  const [, Hkv, S] = ks;
  if (ks[0] !== B || ks[3] !== D || vs.join() !== ks.join()) throw new RangeError(`${kernel}: k [${ks}] and v [${vs}] do not match q [${qs}]`);
  if (Hkv === 0 || Hq % Hkv !== 0) throw new RangeError(`${kernel}: ${Hq} query heads not a multiple of ${Hkv} kv heads`);
  if (D > MAX_HEAD_DIM) throw new WebGpuLimitError(kernel, `${kernel}: head dim ${D} exceeds the kernel maximum ${MAX_HEAD_DIM}`);
  for (const x of [q, k, v]) if (!isFloat(x.dtype)) throw new TypeError(`${kernel}: expected float tensors, got ${x.dtype}`);
  return { B, Hq, Hkv, G: Hq / Hkv, T, S, D };
}

/** The dtype a kernel stores a row output in: halves pack two per word, so odd D goes through f32. */
function storeDtype(dtype: DType, D: number): DType {
  return dtype === "f32" || D % 2 === 0 ? dtype : "f32";
}

function params(d: Dims, causal: boolean, scale: number): Uint32Array {
  const p = new Uint32Array(64);
  p.set([d.T, d.S, d.Hq, d.G, d.Hkv, causal ? 1 : 0, f32Bits(scale), d.D, Math.ceil(d.D / 4)], 2);
  return p;
}

/** Accesses over the query-row space [B, Hkv, G, T]. */
function queryRows(d: Dims) {
  const { Hq, Hkv, G, T, S, D } = d;
  return {
    space: [d.B, Hkv, G, T],
    row: (x: GpuStorage, dtype: DType, offset = 0): RunOperand => ({
      h: x,
      a: { strides: [Hq * T * D, G * T * D, T * D, D], offset, epw: EPW[dtype], span: D - 1 },
    }),
    one: (x: GpuStorage, dtype: DType, offset = 0): RunOperand => ({ h: x, a: { strides: [Hq * T, G * T, T, 1], offset, epw: EPW[dtype] } }),
    keys: (x: GpuInput): RunOperand => ({ h: x.handle, a: { strides: [Hkv * S * D, S * D, 0, 0], offset: x.view.offset, epw: EPW[x.dtype], span: S * D - 1 } }),
  };
}

const input = (x: GpuInput, a: Omit<Access, "offset" | "epw">): RunOperand => ({ h: x.handle, a: { ...a, offset: x.view.offset, epw: EPW[x.dtype] } });

function attention(ctx: KernelContext, q0: GpuInput, k0: GpuInput, v0: GpuInput, causal: boolean, scale: number): { out: GpuStorage; lse: GpuStorage } {
  const d = dimsOf("attention", q0, k0, v0);
  const temps: GpuStorage[] = [];
  const [q, k, v] = [q0, k0, v0].map((x) => contig(ctx, x, temps));
  const rows = d.B * d.Hq * d.T;
  const outType = storeDtype(q.dtype, d.D);
  const out = ctx.alloc(outType, rows * d.D);
  const lse = ctx.alloc("f32", rows);
  const kern = ctx.engine.compile({
    name: "attention",
    code: attentionForwardWgsl(d.D, { q: q.dtype, k: k.dtype, v: v.dtype }, outType),
    bindings: ["write", "write", "read", "read", "read"],
  });
  const s = queryRows(d);
  dispatchRuns(
    ctx,
    kern,
    s.space,
    [1, 1, 1, 1],
    [s.row(out, outType), s.one(lse, "f32"), s.row(q.handle, q.dtype, q.view.offset), s.keys(k), s.keys(v)],
    params(d, causal, scale),
    (n) => groupsFor(n, WG),
  );
  temps.forEach((t) => ctx.release(t));
  return { out: finish(ctx, out, q.dtype), lse };
}

function attentionBackward(
  ctx: KernelContext,
  q0: GpuInput,
  k0: GpuInput,
  v0: GpuInput,
  o0: GpuInput,
  lse0: GpuInput,
  gy0: GpuInput,
  causal: boolean,
  scale: number,
): { gq: GpuStorage; gk: GpuStorage; gv: GpuStorage } {
  const d = dimsOf("attentionBackward", q0, k0, v0);
  const { B, Hq, Hkv, G, T, S, D } = d;
  const temps: GpuStorage[] = [];
  const [q, k, v, o, lse, gy] = [q0, k0, v0, o0, lse0, gy0].map((x) => contig(ctx, x, temps));
  const p = params(d, causal, scale);

  // dq pass over query rows; it also leaves delta for the dk/dv pass.
  const qRows = B * Hq * T;
  const gqType = storeDtype(q.dtype, D);
  const gq = ctx.alloc(gqType, qRows * D);
  const delta = ctx.alloc("f32", qRows);
  const dt = { q: q.dtype, k: k.dtype, v: v.dtype, out: o.dtype, lse: lse.dtype, gy: gy.dtype };
  const kq = ctx.engine.compile({
    name: "attentionBackward_dq",
    code: attentionDqWgsl(D, dt, gqType),
    bindings: ["write", "write", "read", "read", "read", "read", "read", "read"],
  });
  const s = queryRows(d);
  dispatchRuns(
    ctx,
    kq,
    s.space,
    [1, 1, 1, 1],
    [
      s.row(gq, gqType),
      s.one(delta, "f32"),
      s.row(q.handle, q.dtype, q.view.offset),
      s.keys(k),
      s.keys(v),
      s.row(o.handle, o.dtype, o.view.offset),
      s.one(lse.handle, lse.dtype, lse.view.offset),
      s.row(gy.handle, gy.dtype, gy.view.offset),
    ],
    p,
    (n) => groupsFor(n, WG),
  );

  // dk/dv pass over key rows [B, Hkv, S]: each sums over the G query heads sharing its kv head.
  const kRows = B * Hkv * S;
  const [gkType, gvType] = [storeDtype(k.dtype, D), storeDtype(v.dtype, D)];
  const gk = ctx.alloc(gkType, kRows * D);
  const gv = ctx.alloc(gvType, kRows * D);
  const kkv = ctx.engine.compile({
    name: "attentionBackward_dkv",
    code: attentionDkvWgsl(D, dt, gkType, gvType),
    bindings: ["write", "write", "read", "read", "read", "read", "read", "read"],
  });
  const keyRow = { strides: [Hkv * S * D, S * D, D], span: D - 1 };
  const allQueries = { strides: [Hq * T * D, G * T * D, 0], span: G * T * D - 1 };
  const allRows = { strides: [Hq * T, G * T, 0], span: G * T - 1 };
  dispatchRuns(
    ctx,
    kkv,
    [B, Hkv, S],
    [1, 1, 1],
    [
      { h: gk, a: { ...keyRow, offset: 0, epw: EPW[gkType] } },
      { h: gv, a: { ...keyRow, offset: 0, epw: EPW[gvType] } },
      input(q, allQueries),
      input(k, keyRow),
      input(v, keyRow),
      input(gy, allQueries),
      input(lse, allRows),
      { h: delta, a: { ...allRows, offset: 0, epw: 1 } },
    ],
    p,
    (n) => groupsFor(n, WG),
  );

  ctx.release(delta);
  temps.forEach((t) => ctx.release(t));
  return { gq: finish(ctx, gq, q.dtype), gk: finish(ctx, gk, k.dtype), gv: finish(ctx, gv, v.dtype) };
}

export function makeAttention(ctx: KernelContext): Pick<FusedKernels<GpuStorage>, "attention" | "attentionBackward"> {
  return {
    attention: (q, k, v, causal, scale) => attention(ctx, q, k, v, causal, scale),
    attentionBackward: (q, k, v, out, lse, gy, causal, scale) => attentionBackward(ctx, q, k, v, out, lse, gy, causal, scale),
  };
}
