/**
 * Dispatches, submits and host reads per LoRA training step on WebGPU (stories260K shape):
 * the figure for "no host round trips inside a step". Counts come from the engine's counters,
 * so they are exact whatever the adapter's speed (lavapipe's tokens/s means nothing).
 */
import type { WebGpuBackend } from "@lowrank/backend-webgpu";
import { SHAPES, randomModel } from "./models.ts";
import { type MethodSpec, timeSteps } from "./step.ts";

export interface StepCounts {
  shape: string;
  method: string;
  batch: number;
  seq: number;
  /** Per step, the median over the measured steps (the first, which compiles pipelines, excluded). */
  dispatches: number;
  copies: number;
  clears: number;
  submits: number;
  reads: number;
  tokensPerS: number;
  /** Dispatches per step by kernel name, largest first. */
  byKernel: Record<string, number>;
}

/**
 * The same measurement at 668226f, before the dispatch work of issue 14 (engine counters added
 * to that commit; `node --import tsx src/webgpu.ts --quick` then): the figure "after" is compared with.
 */
export const BEFORE: Omit<StepCounts, "tokensPerS" | "byKernel"> & { commit: string } = {
  commit: "668226f",
  shape: "stories260K",
  method: "lora r8 all-linear dropout 0.05",
  batch: 2,
  seq: 32,
  dispatches: 1012,
  copies: 24,
  clears: 0,
  submits: 5,
  reads: 2,
};

const LORA: MethodSpec = { method: "lora", rank: 8, alpha: 16, targets: "all-linear", dropout: 0.05 };

/** One line: per-step counts, and the ratio to BEFORE. */
export function stepCountsLine(c: StepCounts): string {
  const top = Object.entries(c.byKernel)
    .slice(0, 6)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return (
    `LoRA step (${c.shape}, batch ${c.batch} x ${c.seq}): ${c.dispatches} dispatches (${BEFORE.dispatches} at ${BEFORE.commit}: ${(
      BEFORE.dispatches / c.dispatches
    ).toFixed(2)}x fewer), ` +
    `${c.copies} copies, ${c.submits} submits (${BEFORE.submits}), ${c.reads} host reads (${BEFORE.reads}) per step, ${c.tokensPerS.toFixed(
      0,
    )} tokens/s (on lavapipe not a speed figure); top kernels: ${top}`
  );
}

export async function stepCounts(be: WebGpuBackend, o: { batch: number; seq: number; steps: number }): Promise<StepCounts> {
  const shape = SHAPES.stories260K;
  const model = randomModel(shape, be, 0);
  const c = be.engine.counters;
  const snap = () => ({ dispatches: c.dispatches, copies: c.copies, clears: c.clears, submits: c.submits, reads: c.reads, byKernel: new Map(c.byKernel) });
  const snaps: ReturnType<typeof snap>[] = [];
  try {
    // onStep runs after each step's metrics record, so consecutive snapshots bracket one step.
    const t = await timeSteps(model, LORA, { batch: o.batch, seq: o.seq, steps: o.steps, warmup: 1, lr: 1e-3, onStep: () => snaps.push(snap()) });
    const per = (k: "dispatches" | "copies" | "clears" | "submits" | "reads") => {
      const d = snaps
        .slice(1)
        .map((s, i) => s[k] - snaps[i][k])
        .sort((a, b) => a - b);
      return d[d.length >> 1];
    };
    const first = snaps[1];
    const last = snaps[snaps.length - 1];
    const n = snaps.length - 1;
    const byKernel: Record<string, number> = {};
    const names = [...last.byKernel.keys()].map((k) => [k, ((last.byKernel.get(k) ?? 0) - (first.byKernel.get(k) ?? 0)) / (n - 1)] as const);
    for (const [k, v] of names.filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1])) byKernel[k] = v;
    return {
      shape: shape.name,
      method: "lora r8 all-linear dropout 0.05",
      batch: o.batch,
      seq: o.seq,
      dispatches: per("dispatches"),
      copies: per("copies"),
      clears: per("clears"),
      submits: per("submits"),
      reads: per("reads"),
      tokensPerS: t.tokensPerS,
      byKernel,
    };
  } finally {
    model.dispose();
  }
}
