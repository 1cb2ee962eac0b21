/**
 * Dispatch of the hand-written kernels (rope, adamw, attention): the kernel walks a row-major
 * index space by global linear index; the host cuts that space into contiguous runs whose every
 * binding fits one storage window (usually one run, so one dispatch).
 *
 * Parameters the kernel reads: p(0) first linear index of the run, p(1) its length, p(16 + j)
 * the element base of binding j: the operand's view offset minus the first element of its bound
 * window (wraps in u32; the kernel adds the global element offset). p(2..15) and p(24..63) are
 * the caller's.
 */
import type { Compiled } from "../engine.ts";
import type { GpuStorage, KernelContext } from "./context.ts";
import { bindWords } from "./context.ts";
import { type Access, contiguousStrides, planBoxes } from "./strided.ts";

/** One binding: the storage and how the index space touches it. */
export interface RunOperand {
  h: GpuStorage;
  a: Access;
}

export const P_BASE = 16;

/**
 * Dispatch `k` once per run of `space`. `grain[d]` keeps dim d whole (rows the kernel reads
 * entire); `groups(length)` is the workgroup count of a run.
 */
export function dispatchRuns(
  ctx: KernelContext,
  k: Compiled,
  space: readonly number[],
  grain: readonly number[],
  ops: RunOperand[],
  params: Uint32Array,
  groups: (length: number) => number,
): void {
  if (space.some((s) => s === 0)) return;
  const lin = contiguousStrides(space);
  for (const box of planBoxes(
    k.spec.name,
    space,
    ops.map((o) => o.a),
    ctx.maxWords,
    grain,
    undefined,
    true,
  )) {
    const p = params.slice();
    const length = box.hi.reduce((acc, h, d) => acc * (h - box.lo[d]), 1);
    p[0] = box.lo.reduce((acc, l, d) => acc + l * lin[d], 0);
    p[1] = length;
    ops.forEach((o, j) => (p[P_BASE + j] = o.a.offset - box.windows[j].word * o.a.epw));
    ctx.engine.dispatch(
      k,
      p,
      ops.map((o, j) => bindWords(o.h, box.windows[j].word, box.windows[j].words)),
      groups(length),
    );
  }
}

/** The 32-bit pattern of an f32 (for p() parameters read with pf()). */
export function f32Bits(v: number): number {
  return new Uint32Array(Float32Array.of(v).buffer)[0];
}
