/**
 * The fused LoRA layer over a dense base (FusedKernels.loraLinear and its backward) on the CPU:
 * the same GEMMs as the composite, run on packed f32 arrays through the backend's GEMM (BLAS
 * with beta = 1 where it has one), so the base output and the branch share one output array and
 * the two input gradients one sum, with no tensor-level temporaries in between.
 */
import type { DropoutParams } from "@lowrank/tensor";
import type { AttnOps } from "./attention.ts";

export interface LoraOps {
  gemm: AttnOps["gemm"];
  /** A fresh (pooled) f32 array of n elements; contents undefined. */
  take(n: number): Float32Array;
  /** Return a temporary from take() to the pool. */
  give(a: Float32Array): void;
  /**
   * out = dropout(x) with the `dropout` kernel's mask (x and out may be the same array). Given
   * `mask`, a backend may record the keep mask in it (setting `ready`) and, when it is ready,
   * apply it instead of regenerating it: the backward masks two tensors with one mask.
   */
  dropout(x: Float32Array, out: Float32Array, d: DropoutParams, mask?: KeepMask): void;
}

/** A dropout keep mask kept between the two masked passes of one backward (never stored past it). */
export interface KeepMask {
  ready: boolean;
}

/** Shapes: x [N, inF], W [outF, inF], A [r, inF], B [outF, r]. */
export interface LoraDims {
  N: number;
  inF: number;
  outF: number;
  r: number;
}

/**
 * h = scaling · dropout(x) Aᵀ, y = x Wᵀ (+ bias) + h Bᵀ. `scaling` is one number (loraLinear) or a
 * per-element [N, r] mask (loraRows: each row's scaling on its adapter's block of the stacked A, B).
 */
export function loraForward(
  ops: LoraOps,
  d: LoraDims,
  x: Float32Array,
  W: Float32Array,
  bias: Float32Array | null,
  A: Float32Array,
  B: Float32Array,
  scaling: number | Float32Array,
  drop: DropoutParams | null,
): { y: Float32Array; h: Float32Array } {
  const { N, inF, outF, r } = d;
  const xd = drop ? ops.take(N * inF) : x;
  if (drop) ops.dropout(x, xd, drop);
  const h = ops.take(N * r);
  ops.gemm(false, true, N, r, inF, xd, A, h, false);
  if (drop) ops.give(xd);
  if (typeof scaling === "number") for (let i = 0; i < N * r; i++) h[i] *= scaling;
  else for (let i = 0; i < N * r; i++) h[i] *= scaling[i];
  const y = ops.take(N * outF);
  ops.gemm(false, true, N, outF, inF, x, W, y, false);
  if (bias) for (let i = 0; i < N; i++) for (let j = 0; j < outF; j++) y[i * outF + j] += bias[j];
  ops.gemm(false, true, N, outF, r, h, B, y, true);
  return { y, h };
}

export function loraBackward(
  ops: LoraOps,
  d: LoraDims,
  x: Float32Array,
  W: Float32Array,
  A: Float32Array,
  B: Float32Array,
  h: Float32Array,
  gy: Float32Array,
  scaling: number,
  drop: DropoutParams | null,
): { gx: Float32Array; gA: Float32Array; gB: Float32Array } {
  const { N, inF, outF, r } = d;
  const gB = ops.take(outF * r);
  ops.gemm(true, false, outF, r, N, gy, h, gB, false);
  const gh = ops.take(N * r);
  ops.gemm(false, false, N, r, outF, gy, B, gh, false);
  for (let i = 0; i < N * r; i++) gh[i] *= scaling;
  const gA = ops.take(r * inF);
  const t = ops.take(N * inF);
  const mask: KeepMask = { ready: false };
  if (drop) ops.dropout(x, t, drop, mask);
  ops.gemm(true, false, r, inF, N, gh, drop ? t : x, gA, false);
  // gx = gy W + dropout(gh A): the branch's term (masked) first, then the base's accumulated onto it.
  const gx = ops.take(N * inF);
  ops.gemm(false, false, N, inF, r, gh, A, drop ? t : gx, false);
  if (drop) ops.dropout(t, gx, drop, mask);
  ops.gemm(false, false, N, inF, outF, gy, W, gx, true);
  ops.give(t);
  ops.give(gh);
  return { gx, gA, gB };
}
