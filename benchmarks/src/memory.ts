/**
 * The memory table (`lowrank bench memory`): bytes one training step holds, by category,
 * measured on the CPU backend's allocator counters (backend.memory(): every storage is counted
 * when allocated and when freed), next to plan.ts's formula.
 *
 * Per configuration, on a fresh count:
 *   weights      live bytes after building the model and applying the method, minus the LoRA
 *                parameters (for qlora: the NF4 base), plus the RoPE tables made by the first step
 *   lora         the trainable LoRA tensors' bytes
 *   optimizer    live growth over the first full step (AdamW creates exp_avg/exp_avg_sq there)
 *   gradients    live growth over step 2's forward + backward (the graph is released by then,
 *                so what remains is the parameters' .grad)
 *   activations  step 2's forward + backward peak minus all of the above ("peak minus the rest")
 *   update       step 2's optimizer-step peak above weights + LoRA + gradients + state: the grad
 *                norm's squares of every gradient (clipping and the fused AdamW work in place)
 * The step's peak is the larger of the two phases.
 */
import { createCpuBackend } from "@lowrank/backend-cpu";
import type { LlamaForCausalLM } from "@lowrank/nn/node";
import { type Backend, Rng } from "@lowrank/tensor";
import { AdamW, batchLossSum, clipGradients, collate, globalGradNorm, namedParams } from "@lowrank/trainer/node";
import { type Machine, log, machine } from "./common.ts";
import { SHAPES, type Shape, loadShape } from "./models.ts";
import { type PlanEstimate, type PlanMethod, estimate } from "@lowrank/trainer";
import { applyMethod, syntheticExamples } from "./step.ts";

export interface MemoryCase {
  shape: string;
  method: PlanMethod;
  recompute?: boolean;
}

export interface MemoryConfig {
  name: string;
  batch: number;
  seq: number;
  rank: number;
  alpha: number;
  targets: "all-linear" | string[];
  dropout: number;
  cases: MemoryCase[];
  /** Shapes not measured, with the reason (the estimator still covers them). */
  skipped: { shape: string; reason: string }[];
}

export interface Categories {
  weights: number;
  lora: number;
  gradients: number;
  optimizer: number;
  activations: number;
  update: number;
  peak: number;
}

export interface MemoryRow {
  shape: string;
  weights: "real" | "random";
  method: PlanMethod;
  recompute: boolean;
  params: number;
  trainable: number;
  measured: Categories;
  formula: Categories;
  /** measured peak / formula peak. */
  peakRatio: number;
  stepSeconds: number;
  /** Live bytes left after disposing everything (0: no leak skews the next case). */
  leakedBytes: number;
}

export interface MemoryResult {
  config: MemoryConfig & { command: string; date: string; machine: Machine };
  rows: MemoryRow[];
  skipped: { shape: string; reason: string }[];
  wall_seconds: number;
}

const planShape = (s: Shape) => ({ vocab: s.vocab, dim: s.dim, layers: s.layers, heads: s.heads, kvHeads: s.kvHeads, hidden: s.hidden, tied: s.tied });

/** The RoPE tables the first forward made (ropeTables(1) returns the existing ones, allocating nothing). */
function ropeBytes(model: LlamaForCausalLM): number {
  const t = model.model.ropeTables(1);
  return 4 * (t.cos.size + t.sin.size);
}

/** One configuration: build, apply the method, two steps; categories as in the file comment. */
export async function measureCase(c: MemoryCase, cfg: MemoryConfig, dataDir: string | null, backend: Backend = createCpuBackend()): Promise<MemoryRow> {
  const shape = SHAPES[c.shape];
  if (!shape) throw new Error(`memory: unknown shape ${c.shape} (known: ${Object.keys(SHAPES).join(", ")})`);
  const own = backend.memory().liveBytes;
  const { model, weights: kind } = await loadShape(shape, backend, dataDir, 0);
  const spec = { method: c.method, rank: cfg.rank, alpha: cfg.alpha, targets: cfg.targets, dropout: cfg.dropout, recompute: c.recompute };
  const { prepared, recompute } = await applyMethod(model, spec, 0);
  const afterPrepare = backend.memory().liveBytes - own;
  let trainable = 0;
  for (const t of prepared.trainable.values()) trainable += t.size;
  const lora = c.method === "full" ? 0 : 4 * trainable;
  const params = namedParams(prepared.trainable);
  const tensors = params.map((p) => p.param);
  const optimizer = new AdamW(params, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const rng = new Rng(1);
  const batches = [0, 1].map(() => collate(syntheticExamples(cfg.batch, cfg.seq, shape.vocab, rng.int(1 << 30)), 0));
  model.train();
  const step = async (i: number, onBackward?: () => void) => {
    const b = batches[i];
    const sum = batchLossSum(model, b);
    const scaled = sum.div(b.targets);
    scaled.backward();
    sum.dispose();
    scaled.dispose();
    onBackward?.();
    const norm = await globalGradNorm(tensors);
    clipGradients(tensors, 1, norm);
    optimizer.step(1e-4);
    optimizer.zeroGrad();
  };
  await step(0);
  const rope = ropeBytes(model);
  const beforeStep2 = backend.memory().liveBytes - own;
  const optimizerBytes = beforeStep2 - afterPrepare - rope;
  backend.resetPeak();
  let grads = 0;
  let peakFB = 0;
  const t0 = performance.now();
  await step(1, () => {
    peakFB = backend.memory().peakBytes - own;
    grads = backend.memory().liveBytes - own - beforeStep2;
    backend.resetPeak();
  });
  const stepSeconds = (performance.now() - t0) / 1000;
  const peakUpdate = backend.memory().peakBytes - own;
  const peak = Math.max(peakFB, peakUpdate);
  optimizer.dispose();
  model.dispose();
  const leakedBytes = backend.memory().liveBytes - own;
  const measured = {
    weights: afterPrepare - lora + rope,
    lora,
    gradients: grads,
    optimizer: optimizerBytes,
    activations: peakFB - beforeStep2 - grads,
    update: peakUpdate - beforeStep2 - grads,
    peak,
  };
  const e: PlanEstimate = estimate({
    shape: planShape(shape),
    method: c.method,
    rank: cfg.rank,
    targets: cfg.targets,
    batch: cfg.batch,
    seq: cfg.seq,
    dropout: cfg.dropout,
    recompute,
  });
  const act = recompute ? e.activationBytes.recompute : e.activationBytes.none;
  const formula = {
    weights: e.weightBytes,
    lora: e.loraBytes,
    gradients: e.gradBytes,
    optimizer: e.optimizerBytes,
    activations: act,
    update: e.updateBytes,
    peak: e.totalBytes,
  };
  if (recompute !== e.recompute) formula.peak = e.totalOtherBytes;
  return {
    shape: shape.name,
    weights: kind,
    method: c.method,
    recompute,
    params: e.params,
    trainable,
    measured,
    formula,
    peakRatio: peak / formula.peak,
    stepSeconds,
    leakedBytes,
  };
}

export async function runMemory(cfg: MemoryConfig, o: { dataDir: string | null; command: string }): Promise<MemoryResult> {
  const t0 = performance.now();
  const backend = createCpuBackend();
  const rows: MemoryRow[] = [];
  try {
    for (const c of cfg.cases) {
      const r = await measureCase(c, cfg, o.dataDir, backend);
      rows.push(r);
      log(
        `memory: ${r.shape} ${r.method}${r.recompute ? " +recompute" : ""}: peak ${(r.measured.peak / 2 ** 20).toFixed(1)} MiB measured, ${(
          r.formula.peak /
          2 ** 20
        ).toFixed(1)} MiB formula (x${r.peakRatio.toFixed(3)}), step ${r.stepSeconds.toFixed(1)} s`,
      );
    }
  } finally {
    backend.dispose();
  }
  return {
    config: { ...cfg, command: o.command, date: new Date().toISOString(), machine: machine() },
    rows,
    skipped: cfg.skipped,
    wall_seconds: (performance.now() - t0) / 1000,
  };
}
