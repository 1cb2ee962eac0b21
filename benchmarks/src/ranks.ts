/**
 * The rank sweep (`lowrank bench ranks [--quick]`): stories260K fine-tuned on each task of the
 * config (benchmarks/configs/ranks.json, ranks-quick.json) with LoRA and QLoRA at every rank and
 * target set, a fixed token budget and several seeds, plus full fine-tuning as the reference.
 *
 * Each run is finetune()'s pipeline without its file output: prepareModel (method, ranks),
 * activation recomputation (qlora default), AdamW, trainLoop, evaluate, then the adapter written
 * with the method's own writeOutput to measure its size. The dataset is tokenized once per task
 * and split with a fixed data seed, so every run is evaluated on the same held-out examples; the
 * run seed drives LoRA init, dropout and batch order. Runs go seed-major (every configuration at
 * seed 0, then seed 1, ...) so machine-load drift spreads over all configurations.
 *
 * quality = (base loss - method loss) / (base loss - full fine-tune loss), base = the dense
 * model (QLoRA's quantized-base loss is recorded next to it), full = the mean over its seeds.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Backend } from "@lowrank/tensor";
import { LoraConfigError } from "@lowrank/lora/node";
import { loadHfModel, loadTokenizer, quantizeModel } from "@lowrank/nn/node";
import {
  AdamW,
  type Batch,
  BatchLoader,
  type DataFormat,
  type Dataset,
  buildDataset,
  recomputeLayers,
  evaluate,
  namedParams,
  prepareModel,
  resolveConfig,
  silentReporter,
  trainLoop,
  warmupSteps,
} from "@lowrank/trainer/node";
import { type Machine, log, machine, mean, std } from "./common.ts";
import { MemoryMetrics } from "./step.ts";

export type Targets = "all-linear" | string[];
export type LoraMethod = "lora" | "qlora";

export interface TaskConfig {
  name: string;
  /** Relative to the data directory. */
  data: string;
  format?: DataFormat;
  seq_len: number;
  batch_size: number;
  steps: number;
  eval_fraction: number;
  /** Cap on evaluation batches (0: the whole eval split). */
  eval_batches: number;
  lr: { lora: number; qlora: number; full: number };
  /** Override the grid for this task. */
  ranks?: number[];
  targets?: Targets[];
  methods?: LoraMethod[];
}

export interface RanksConfig {
  name: string;
  /** Relative to the data directory. */
  model: string;
  ranks: number[];
  targets: Targets[];
  methods: LoraMethod[];
  seeds: number[];
  /** lora_alpha = alpha_over_rank * r, so alpha/r (the update scale) is the same at every rank. */
  alpha_over_rank: number;
  dropout: number;
  /** Seed of the train/eval split (fixed: every run sees the same eval set). */
  data_seed: number;
  scheduler: "cosine" | "linear" | "constant";
  warmup: number;
  max_grad_norm: number;
  tasks: TaskConfig[];
}

export interface SeedRun {
  seed: number;
  eval_loss: number;
  quality: number | null;
  tokens_per_s: number;
  train_seconds: number;
  peak_bytes: number;
  /** Train loss of every step. */
  train_losses: number[];
}

export interface RankRun {
  task: string;
  method: LoraMethod;
  rank: number;
  alpha: number;
  targets: string;
  status: "ok" | "rejected";
  /** Why a configuration could not run (the trainer's own error). */
  error?: string;
  trainable_params: number | null;
  adapter_bytes: number | null;
  peak_bytes: number | null;
  tokens_per_s: number | null;
  tokens_per_s_std: number | null;
  eval_loss: number | null;
  eval_loss_std: number | null;
  quality: number | null;
  quality_std: number | null;
  /** Mean train loss per step over the seeds. */
  loss_curve: number[] | null;
  seeds: SeedRun[];
}

export interface FullRun {
  trainable_params: number;
  /** Bytes of the saved model.safetensors (what a full fine-tune has to ship). */
  model_bytes: number;
  peak_bytes: number;
  tokens_per_s: number;
  tokens_per_s_std: number;
  eval_loss: number;
  eval_loss_std: number;
  lr: number;
  loss_curve: number[];
  seeds: SeedRun[];
}

export interface RanksResult {
  config: RanksConfig & { command: string; date: string; machine: Machine; backend: string; data_dir: string };
  base: Record<string, { eval_loss: number; quantized_eval_loss: number; eval_tokens: number; train_examples: number; eval_examples: number }>;
  full_ft: Record<string, FullRun>;
  runs: RankRun[];
  wall_seconds: number;
}

export const targetsLabel = (t: Targets): string => (t === "all-linear" ? t : t.join(","));

export function loadRanksConfig(file: string): RanksConfig {
  return JSON.parse(readFileSync(file, "utf8")) as RanksConfig;
}

/** A loader that also counts the positions it hands out (B x T per batch, padding included). */
class CountingLoader extends BatchLoader {
  positions = 0;
  override next(): Batch {
    const b = super.next();
    this.positions += b.B * b.T;
    return b;
  }
}

interface Ctx {
  backend: Backend;
  cfg: RanksConfig;
  modelDir: string;
  tmp: string;
  runIndex: number;
}

interface RunSpec {
  task: TaskConfig;
  data: Dataset;
  method: LoraMethod | "full";
  rank: number;
  targets: Targets;
  seed: number;
}

interface RunOutput extends SeedRun {
  trainable: number;
  fileBytes: number;
}

/** One fine-tuning run; throws the trainer's error for an invalid configuration (e.g. r > min(in, out)). */
async function trainRun(ctx: Ctx, s: RunSpec, padId: number): Promise<RunOutput> {
  const { backend, cfg } = ctx;
  const t = s.task;
  const lr = t.lr[s.method];
  const fc = resolveConfig({
    model: ctx.modelDir,
    data: t.data,
    output: ctx.tmp,
    method: s.method,
    ...(s.method === "full" ? {} : { rank: s.rank, alpha: cfg.alpha_over_rank * s.rank }),
    dropout: cfg.dropout,
    targetModules: s.targets,
    seed: s.seed,
    lr,
    steps: t.steps,
    batchSize: t.batch_size,
    seqLen: t.seq_len,
    warmup: cfg.warmup,
    scheduler: cfg.scheduler,
    maxGradNorm: cfg.max_grad_norm,
  });
  const model = await loadHfModel(ctx.modelDir, { backend, dtype: "f32" });
  try {
    const prepared = await prepareModel(model, fc, ctx.modelDir);
    if (fc.recomputeActivations ?? s.method === "qlora") recomputeLayers(model);
    const params = namedParams(prepared.trainable);
    const optimizer = new AdamW(params, { betas: fc.betas, eps: fc.eps, weightDecay: fc.weightDecay });
    const loader = new CountingLoader(s.data.train, t.batch_size, s.seed, padId);
    const metrics = new MemoryMetrics();
    const losses: number[] = [];
    let peak = 0;
    const loop = await trainLoop({
      model,
      params,
      optimizer,
      loader,
      schedule: { name: fc.scheduler, lr, totalSteps: t.steps, warmupSteps: warmupSteps(fc.warmup, t.steps) },
      gradAccum: 1,
      maxGradNorm: fc.maxGradNorm,
      startStep: 0,
      evalEvery: 0,
      saveEvery: 0,
      evaluate: async () => {},
      save: async () => {},
      metrics,
      reporter: silentReporter,
      losses,
      onPeak: (b) => (peak = Math.max(peak, b)),
    });
    optimizer.dispose();
    const ev = await evaluate(model, s.data.eval, { batchSize: t.batch_size, padId, maxBatches: t.eval_batches });
    const dir = join(ctx.tmp, `run-${ctx.runIndex++}`);
    await prepared.writeOutput(dir);
    const fileBytes = statSync(join(dir, s.method === "full" ? "model.safetensors" : "adapter_model.safetensors")).size;
    rmSync(dir, { recursive: true, force: true });
    let trainable = 0;
    for (const p of prepared.trainable.values()) trainable += p.size;
    return {
      seed: s.seed,
      eval_loss: ev.loss,
      quality: null,
      tokens_per_s: loader.positions / loop.seconds,
      train_seconds: loop.seconds,
      peak_bytes: peak,
      train_losses: losses,
      trainable,
      fileBytes,
    };
  } finally {
    model.dispose();
  }
}

/** Held-out loss of the base model, dense and NF4-quantized (QLoRA's starting point). */
async function baseLosses(ctx: Ctx, task: TaskConfig, data: Dataset, padId: number) {
  const opts = { batchSize: task.batch_size, padId, maxBatches: task.eval_batches };
  const model = await loadHfModel(ctx.modelDir, { backend: ctx.backend, dtype: "f32" });
  try {
    const dense = await evaluate(model, data.eval, opts);
    await quantizeModel(model, { skipModules: ["lm_head"], computeDtype: "f32" });
    const quant = await evaluate(model, data.eval, opts);
    return {
      eval_loss: dense.loss,
      quantized_eval_loss: quant.loss,
      eval_tokens: dense.tokens,
      train_examples: data.train.length,
      eval_examples: data.eval.length,
    };
  } finally {
    model.dispose();
  }
}

const meanCurve = (runs: SeedRun[]): number[] => runs[0].train_losses.map((_, i) => mean(runs.map((r) => r.train_losses[i])));

export async function runRanks(cfg: RanksConfig, o: { backend: Backend; dataDir: string; command: string }): Promise<RanksResult> {
  const t0 = performance.now();
  const modelDir = join(o.dataDir, cfg.model);
  const tmp = mkdtempSync(join(tmpdir(), "lowrank-bench-ranks-"));
  const ctx: Ctx = { backend: o.backend, cfg, modelDir, tmp, runIndex: 0 };
  const tokenizer = await loadTokenizer(modelDir);
  const padId = tokenizer.eosTokenId ?? 0;
  const result: RanksResult = {
    config: { ...cfg, command: o.command, date: new Date().toISOString(), machine: machine(), backend: o.backend.device, data_dir: o.dataDir },
    base: {},
    full_ft: {},
    runs: [],
    wall_seconds: 0,
  };
  try {
    // Every (task, configuration) in a fixed order; seeds outermost.
    const datasets = new Map<string, Dataset>();
    for (const task of cfg.tasks) {
      const file = join(o.dataDir, task.data);
      const data = buildDataset(file, readFileSync(file, "utf8"), tokenizer, {
        format: task.format,
        seqLen: task.seq_len,
        evalFraction: task.eval_fraction,
        seed: cfg.data_seed,
      });
      datasets.set(task.name, data);
      result.base[task.name] = await baseLosses(ctx, task, data, padId);
      log(
        `ranks: ${task.name}: ${data.train.length} train / ${data.eval.length} eval examples; base eval loss ${result.base[task.name].eval_loss.toFixed(
          4,
        )} (NF4 base ${result.base[task.name].quantized_eval_loss.toFixed(4)})`,
      );
    }
    type Slot = { task: TaskConfig; method: LoraMethod | "full"; rank: number; targets: Targets; seeds: RunOutput[]; error?: string };
    const slots: Slot[] = [];
    for (const task of cfg.tasks) {
      slots.push({ task, method: "full", rank: 0, targets: "all-linear", seeds: [] });
      for (const method of task.methods ?? cfg.methods) {
        for (const targets of task.targets ?? cfg.targets) for (const rank of task.ranks ?? cfg.ranks) slots.push({ task, method, rank, targets, seeds: [] });
      }
    }
    const total = slots.length * cfg.seeds.length;
    let done = 0;
    for (const seed of cfg.seeds) {
      for (const slot of slots) {
        done++;
        if (slot.error) continue;
        const label = `${slot.task.name} ${slot.method}${slot.method === "full" ? "" : ` r=${slot.rank} ${targetsLabel(slot.targets)}`} seed ${seed}`;
        try {
          const r = await trainRun(
            ctx,
            { task: slot.task, data: datasets.get(slot.task.name) as Dataset, method: slot.method, rank: slot.rank, targets: slot.targets, seed },
            padId,
          );
          slot.seeds.push(r);
          log(`[${done}/${total}] ${label}: eval loss ${r.eval_loss.toFixed(4)}, ${Math.round(r.tokens_per_s)} tok/s, ${r.train_seconds.toFixed(1)} s`);
        } catch (e) {
          // The trainer rejects r > min(in_features, out_features) of a target; record it and skip the other seeds.
          if (!(e instanceof LoraConfigError || e instanceof RangeError) || slot.method === "full") throw e;
          slot.error = summarize(e.message);
          log(`[${done}/${total}] ${label}: rejected: ${slot.error}`);
        }
      }
    }
    for (const task of cfg.tasks) {
      const full = slots.find((s) => s.task === task && s.method === "full") as Slot;
      const base = result.base[task.name].eval_loss;
      const fullLoss = mean(full.seeds.map((r) => r.eval_loss));
      const quality = (loss: number) => (base - loss) / (base - fullLoss);
      for (const r of full.seeds) r.quality = quality(r.eval_loss);
      result.full_ft[task.name] = {
        trainable_params: full.seeds[0].trainable,
        model_bytes: full.seeds[0].fileBytes,
        peak_bytes: Math.max(...full.seeds.map((r) => r.peak_bytes)),
        tokens_per_s: mean(full.seeds.map((r) => r.tokens_per_s)),
        tokens_per_s_std: std(full.seeds.map((r) => r.tokens_per_s)),
        eval_loss: fullLoss,
        eval_loss_std: std(full.seeds.map((r) => r.eval_loss)),
        lr: task.lr.full,
        loss_curve: meanCurve(full.seeds),
        seeds: full.seeds.map(strip),
      };
      for (const s of slots.filter((x) => x.task === task && x.method !== "full")) {
        const method = s.method as LoraMethod;
        const common = { task: task.name, method, rank: s.rank, alpha: cfg.alpha_over_rank * s.rank, targets: targetsLabel(s.targets) };
        if (s.error) {
          result.runs.push({
            ...common,
            status: "rejected",
            error: s.error,
            trainable_params: null,
            adapter_bytes: null,
            peak_bytes: null,
            tokens_per_s: null,
            tokens_per_s_std: null,
            eval_loss: null,
            eval_loss_std: null,
            quality: null,
            quality_std: null,
            loss_curve: null,
            seeds: [],
          });
          continue;
        }
        for (const r of s.seeds) r.quality = quality(r.eval_loss);
        const q = s.seeds.map((r) => r.quality as number);
        result.runs.push({
          ...common,
          status: "ok",
          trainable_params: s.seeds[0].trainable,
          adapter_bytes: s.seeds[0].fileBytes,
          peak_bytes: Math.max(...s.seeds.map((r) => r.peak_bytes)),
          tokens_per_s: mean(s.seeds.map((r) => r.tokens_per_s)),
          tokens_per_s_std: std(s.seeds.map((r) => r.tokens_per_s)),
          eval_loss: mean(s.seeds.map((r) => r.eval_loss)),
          eval_loss_std: std(s.seeds.map((r) => r.eval_loss)),
          quality: mean(q),
          quality_std: std(q),
          loss_curve: meanCurve(s.seeds),
          seeds: s.seeds.map(strip),
        });
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  result.wall_seconds = (performance.now() - t0) / 1000;
  return result;
}

/** The trainer's multi-line error (one line per layer) as one line: the first layer and a count. */
function summarize(msg: string): string {
  const lines = msg
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  if (lines.length <= 2) return lines.join(" ");
  return `${lines[0]} ${lines[1]} (and ${lines.length - 2} more layer(s) alike)`;
}

const strip = (r: RunOutput): SeedRun => ({
  seed: r.seed,
  eval_loss: r.eval_loss,
  quality: r.quality,
  tokens_per_s: r.tokens_per_s,
  train_seconds: r.train_seconds,
  peak_bytes: r.peak_bytes,
  train_losses: r.train_losses,
});

/** Structural check of a ranks result (the CI test and `bench ranks` after writing); returns problems. */
export function checkRanksSchema(r: unknown): string[] {
  const errs: string[] = [];
  const obj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  const num = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  if (!obj(r)) return ["result is not an object"];
  for (const k of ["config", "full_ft", "runs", "base"]) if (!(k in r)) errs.push(`missing "${k}"`);
  if (!obj(r.config) || !Array.isArray((r.config as Record<string, unknown>).tasks)) errs.push("config.tasks is not an array");
  if (obj(r.full_ft)) {
    for (const [task, f] of Object.entries(r.full_ft)) {
      if (!obj(f)) errs.push(`full_ft.${task} is not an object`);
      else
        for (const k of ["trainable_params", "model_bytes", "peak_bytes", "tokens_per_s", "eval_loss"])
          if (!num(f[k])) errs.push(`full_ft.${task}.${k} is not a number`);
    }
  } else errs.push("full_ft is not an object");
  if (!Array.isArray(r.runs) || r.runs.length === 0) return [...errs, "runs is empty or not an array"];
  r.runs.forEach((run: unknown, i: number) => {
    if (!obj(run)) return void errs.push(`runs[${i}] is not an object`);
    for (const k of ["method", "rank", "targets", "trainable_params", "adapter_bytes", "peak_bytes", "tokens_per_s", "eval_loss", "quality", "seeds"]) {
      if (!(k in run)) errs.push(`runs[${i}] lacks "${k}"`);
    }
    if (run.method !== "lora" && run.method !== "qlora") errs.push(`runs[${i}].method = ${JSON.stringify(run.method)}`);
    if (run.status === "ok") {
      for (const k of ["trainable_params", "adapter_bytes", "peak_bytes", "tokens_per_s", "eval_loss", "quality"])
        if (!num(run[k])) errs.push(`runs[${i}].${k} is not a number`);
      if (!Array.isArray(run.seeds) || run.seeds.length === 0) errs.push(`runs[${i}].seeds is empty`);
    } else if (run.status !== "rejected" || typeof run.error !== "string") errs.push(`runs[${i}] is neither ok nor rejected with an error`);
  });
  return errs;
}
