/**
 * Timed training steps through the trainer's own pieces (prepareModel, activation recomputation,
 * AdamW, trainLoop), on synthetic token batches: what `lowrank finetune` runs per step, without
 * the data pipeline, evaluation or file output around it. Used by the peer and memory suites.
 */
import type { LlamaForCausalLM } from "@lowrank/nn/node";
import { Rng } from "@lowrank/tensor";
import {
  AdamW,
  BatchLoader,
  type Example,
  INIT_LOSS_SCALE,
  type Method,
  type MetricRecord,
  MetricsLog,
  recomputeLayers,
  namedParams,
  prepareModel,
  resolveConfig,
  silentReporter,
  trainLoop,
} from "@lowrank/trainer/node";

export interface MethodSpec {
  method: Method;
  rank: number;
  alpha: number;
  targets: "all-linear" | string[];
  dropout: number;
  /** Default: the trainer's (on for qlora only). */
  recompute?: boolean;
  /** The trainer's mixedPrecision (default "no"); the model must already be in its compute dtype. */
  mixedPrecision?: "no" | "fp16" | "bf16";
}

/** Collects the loop's per-step records in memory instead of appending to metrics.jsonl. */
export class MemoryMetrics extends MetricsLog {
  readonly records: MetricRecord[] = [];
  /** Called with each record; may throw to stop the loop (trainLoop awaits write after every step). */
  constructor(readonly onWrite?: (r: MetricRecord, index: number) => void) {
    super("(memory)");
  }
  override async reset(): Promise<void> {}
  override async write(r: MetricRecord): Promise<void> {
    this.records.push(r);
    this.onWrite?.(r, this.records.length - 1);
  }
}

/** A step ran longer than the caller allows (a software WebGPU adapter, say). */
export class TooSlowError extends Error {
  override readonly name = "TooSlowError";
}

/** Thrown from the metrics hook to end the loop early at `stopAt` (caught by timeSteps). */
class BudgetSpent extends Error {}

/** `n` examples of `seq + 1` random token ids (every position a target), seeded. */
export function syntheticExamples(n: number, seq: number, vocab: number, seed: number): Example[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => ({
    ids: Int32Array.from({ length: seq + 1 }, () => rng.int(vocab)),
    target: new Uint8Array(seq + 1).fill(1),
  }));
}

/**
 * Apply the method to `model` in place (as finetune() does); returns the trainable parameters.
 * `modelDir` is recorded as the adapter's base_model_name_or_path (default "(benchmark)").
 */
export async function applyMethod(model: LlamaForCausalLM, spec: MethodSpec, seed = 0, modelDir = "(benchmark)") {
  const cfg = resolveConfig({
    model: modelDir,
    data: "(synthetic)",
    output: "(none)",
    method: spec.method,
    rank: spec.rank,
    alpha: spec.alpha,
    targetModules: spec.targets,
    dropout: spec.dropout,
    seed,
    recomputeActivations: spec.recompute,
    ...(spec.mixedPrecision ? { mixedPrecision: spec.mixedPrecision } : {}),
  });
  const prepared = await prepareModel(model, cfg, modelDir);
  const again = spec.recompute ?? spec.method === "qlora";
  if (again) recomputeLayers(model);
  return { prepared, recompute: again };
}

export interface StepTiming {
  /** Tokens per second of the median timed step. */
  tokensPerS: number;
  stepMs: number[];
  /** The untimed warm-up steps' milliseconds (the first creates the optimizer state). */
  warmupMs: number[];
  losses: number[];
  trainable: number;
  recompute: boolean;
  /** Highest per-step peak (backend.memory().peakBytes after resetPeak at each step start). */
  peakBytes: number;
  /** fp16: steps the loss scaler skipped (overflow). */
  skippedSteps: number;
}

/**
 * `warmup + steps` optimizer steps of batch x seq tokens with trainLoop (constant lr, clipping at
 * 1.0 as the trainer's default); the first `warmup` are not timed.
 */
export async function timeSteps(
  model: LlamaForCausalLM,
  spec: MethodSpec,
  o: {
    batch: number;
    seq: number;
    steps: number;
    warmup: number;
    lr: number;
    seed?: number;
    onStep?: (i: number) => void;
    maxStepMs?: number;
    /** Stop once performance.now() passes this and at least one timed step is done (fewer than `steps` then). */
    stopAt?: number;
    /** applyMethod's result when the caller applied the method itself (to time it, or to save the adapter after). */
    applied?: Awaited<ReturnType<typeof applyMethod>>;
  },
): Promise<StepTiming> {
  const seed = o.seed ?? 0;
  const { prepared, recompute } = o.applied ?? (await applyMethod(model, spec, seed));
  const params = namedParams(prepared.trainable);
  const optimizer = new AdamW(params, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const loader = new BatchLoader(syntheticExamples(4 * o.batch, o.seq, model.config.vocab_size, seed), o.batch, seed, 0, false);
  const tokens = o.batch * o.seq;
  const metrics = new MemoryMetrics((r, i) => {
    const ms = (1000 * tokens) / (r as { tokens_per_s: number }).tokens_per_s;
    if (o.maxStepMs !== undefined && ms > o.maxStepMs)
      throw new TooSlowError(`step ${i + 1} took ${(ms / 1000).toFixed(1)} s (limit ${(o.maxStepMs / 1000).toFixed(0)} s)`);
    o.onStep?.(i);
    if (o.stopAt !== undefined && i >= o.warmup && performance.now() > o.stopAt) throw new BudgetSpent();
  });
  const total = o.warmup + o.steps;
  let peakBytes = 0;
  const losses: number[] = [];
  const scaler = spec.mixedPrecision === "fp16" ? { scale: INIT_LOSS_SCALE, goodSteps: 0 } : undefined;
  try {
    await trainLoop({
      model,
      params,
      optimizer,
      loader,
      schedule: { name: "constant", lr: o.lr, totalSteps: total, warmupSteps: 0 },
      gradAccum: 1,
      maxGradNorm: 1,
      startStep: 0,
      evalEvery: 0,
      saveEvery: 0,
      evaluate: async () => {},
      save: async () => {},
      metrics,
      reporter: silentReporter,
      losses,
      onPeak: (b) => (peakBytes = Math.max(peakBytes, b)),
      scaler,
    });
  } catch (e) {
    if (!(e instanceof BudgetSpent)) throw e;
  } finally {
    optimizer.dispose();
  }
  const train = metrics.records.filter((r) => r.split === "train");
  const msOf = (r: MetricRecord) => (1000 * tokens) / (r as { tokens_per_s: number }).tokens_per_s;
  const stepMs = train.slice(o.warmup).map(msOf);
  const sorted = [...stepMs].sort((a, b) => a - b);
  const med = sorted.length % 2 ? sorted[sorted.length >> 1] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  let trainable = 0;
  for (const t of prepared.trainable.values()) trainable += t.size;
  const skippedSteps = train.filter((r) => (r as { skipped?: boolean }).skipped).length;
  return { tokensPerS: (1000 * tokens) / med, stepMs, warmupMs: train.slice(0, o.warmup).map(msOf), losses, trainable, recompute, peakBytes, skippedSteps };
}
