/**
 * The fine-tuning configuration: TRL/PEFT names where they exist, validated in one place so
 * every mistake is reported before any model or data is loaded.
 */
import { type LoraConfigInput, loraOptions } from "@lowrank/lora";
import { DATA_FORMATS, type DataFormat } from "./data/dataset.ts";
import { SCHEDULERS, type SchedulerName } from "./schedule.ts";

export const METHODS = ["qlora", "lora", "full"] as const;
export type Method = (typeof METHODS)[number];
export const OPTIMIZERS = ["adamw", "sgd"] as const;
export type OptimizerName = (typeof OPTIMIZERS)[number];
export const MIXED_PRECISION = ["no", "fp16", "bf16"] as const;
export type MixedPrecision = (typeof MIXED_PRECISION)[number];

/** The dtype a mixed-precision run stores the frozen base and the activations in ("no": f32). */
export function computeDtype(mp: MixedPrecision): "f32" | "f16" | "bf16" {
  return mp === "fp16" ? "f16" : mp === "bf16" ? "bf16" : "f32";
}

export interface FinetuneConfig {
  /** Hugging Face model directory (config.json, model.safetensors, tokenizer.json). */
  model: string;
  /** Dataset file. */
  data: string;
  format?: DataFormat;
  method: Method;
  // LoRA (PEFT names: r, lora_alpha, lora_dropout, target_modules)
  rank: number;
  alpha: number;
  dropout: number;
  targetModules: string[] | "all-linear";
  /**
   * The rest of PEFT's LoraConfig, under PEFT's names (use_dora, use_rslora, modules_to_save,
   * bias, exclude_modules, layers_to_transform, layers_pattern, rank_pattern, alpha_pattern,
   * init_lora_weights, ...): what `--lora-config <file>` and the flags for the common ones give.
   * r, lora_alpha, lora_dropout and target_modules here fill rank, alpha, dropout and
   * targetModules when those are not set (and must agree with them when they are).
   */
  lora: LoraConfigInput;
  // QLoRA base (bitsandbytes defaults for QLoRA: nf4, blocksize 64, double quant)
  quantType: "nf4" | "fp4";
  blocksize: number;
  doubleQuant: boolean;
  // optimisation
  optimizer: OptimizerName;
  lr: number;
  momentum: number;
  weightDecay: number;
  betas: [number, number];
  eps: number;
  /** Exactly one of epochs and steps decides the length; steps wins when both are set. */
  epochs?: number;
  steps?: number;
  batchSize: number;
  gradAccum: number;
  seqLen: number;
  /** Below 1: a ratio of the total steps; else a number of steps. */
  warmup: number;
  scheduler: SchedulerName;
  maxGradNorm: number;
  /**
   * Recompute each decoder layer's activations in backward instead of keeping them (transformers'
   * gradient_checkpointing). Default: on for qlora (as prepare_model_for_kbit_training), off otherwise.
   */
  recomputeActivations?: boolean;
  mixedPrecision: MixedPrecision;
  seed: number;
  // evaluation, logging, saving
  evalFraction: number;
  /** Evaluate every N steps (0: only before and after training). */
  evalEvery: number;
  /** Cap on eval batches per evaluation (0: the whole eval split). */
  evalBatches: number;
  /** Checkpoint every N steps (0: only at the end). */
  saveEvery: number;
  /** Keep at most this many checkpoints (oldest removed first; 0 keeps all). */
  saveTotalLimit: number;
  logEvery: number;
  output: string;
  resume?: string;
  /** Prompt for the before/after samples (default: the context of the first eval example). */
  samplePrompt?: string;
  sampleTokens: number;
}

export const DEFAULTS: Omit<FinetuneConfig, "model" | "data" | "output"> = {
  method: "qlora",
  rank: 8,
  alpha: 16,
  dropout: 0.05,
  targetModules: ["q_proj", "v_proj"],
  lora: {},
  quantType: "nf4",
  blocksize: 64,
  doubleQuant: true,
  optimizer: "adamw",
  lr: 2e-4,
  momentum: 0,
  weightDecay: 0,
  betas: [0.9, 0.999],
  eps: 1e-8,
  batchSize: 8,
  gradAccum: 1,
  seqLen: 128,
  warmup: 0.1,
  scheduler: "cosine",
  maxGradNorm: 1.0,
  mixedPrecision: "no",
  seed: 0,
  evalFraction: 0.05,
  evalEvery: 0,
  evalBatches: 0,
  saveEvery: 0,
  saveTotalLimit: 2,
  logEvery: 10,
  sampleTokens: 48,
};

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** Fill defaults and check every field; all problems are reported in one error. */
export function resolveConfig(input: Partial<FinetuneConfig> & Pick<FinetuneConfig, "model" | "data" | "output">): FinetuneConfig {
  const given = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)) as Partial<FinetuneConfig>;
  const errors: string[] = [];
  const lora = { ...(loraOptions(given.lora ?? {}, "lora config") as Record<string, unknown>) };
  // PEFT's names for the four LoRA settings the trainer has its own fields for.
  for (const [peft, own] of [
    ["r", "rank"],
    ["lora_alpha", "alpha"],
    ["lora_dropout", "dropout"],
    ["target_modules", "targetModules"],
  ] as const) {
    if (!(peft in lora)) continue;
    const v = peft === "target_modules" && typeof lora[peft] === "string" && (lora[peft] as string).toLowerCase() === "all-linear" ? "all-linear" : lora[peft];
    if (given[own] === undefined) (given as Record<string, unknown>)[own] = v;
    else if (JSON.stringify(given[own]) !== JSON.stringify(v))
      errors.push(`lora config ${peft} = ${JSON.stringify(v)} contradicts ${own} ${JSON.stringify(given[own])}; give one of them`);
    delete lora[peft];
  }
  const c = { ...DEFAULTS, ...given, lora } as FinetuneConfig;
  const need = (ok: boolean, msg: string) => ok || errors.push(msg);
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  const nonNegInt = (v: unknown) => Number.isInteger(v) && (v as number) >= 0;
  need(METHODS.includes(c.method), `unknown method "${c.method}": use one of ${METHODS.join(", ")}`);
  need(OPTIMIZERS.includes(c.optimizer), `unknown optimizer "${c.optimizer}": use one of ${OPTIMIZERS.join(", ")}`);
  need(SCHEDULERS.includes(c.scheduler), `unknown scheduler "${c.scheduler}": use one of ${SCHEDULERS.join(", ")}`);
  need(c.format === undefined || DATA_FORMATS.includes(c.format), `unknown format "${c.format}": use one of ${DATA_FORMATS.join(", ")}`);
  need(MIXED_PRECISION.includes(c.mixedPrecision), `unknown mixed precision "${c.mixedPrecision}": use one of ${MIXED_PRECISION.join(", ")}`);
  need(typeof c.model === "string" && c.model.length > 0, "model: a model directory is required (--model)");
  need(typeof c.data === "string" && c.data.length > 0, "data: a dataset file is required (--data)");
  need(typeof c.output === "string" && c.output.length > 0, "output: an output directory is required (--output)");
  need(posInt(c.rank), `rank must be a positive integer, got ${c.rank}`);
  need(Number.isFinite(c.alpha) && c.alpha > 0, `alpha must be a positive number, got ${c.alpha}`);
  need(c.dropout >= 0 && c.dropout < 1, `dropout must be in [0, 1), got ${c.dropout}`);
  need(
    c.targetModules === "all-linear" || (Array.isArray(c.targetModules) && c.targetModules.length > 0 && c.targetModules.every((t) => /^[\w.]+$/.test(t))),
    `target modules must be "all-linear" or a comma-separated list of module names, got ${JSON.stringify(c.targetModules)}`,
  );
  need(c.quantType === "nf4" || c.quantType === "fp4", `quant type must be nf4 or fp4, got ${c.quantType}`);
  need(posInt(c.blocksize), `blocksize must be a positive integer, got ${c.blocksize}`);
  need(Number.isFinite(c.lr) && c.lr > 0, `lr must be a positive number, got ${c.lr}`);
  need(c.momentum >= 0 && c.momentum < 1, `momentum must be in [0, 1), got ${c.momentum}`);
  need(Number.isFinite(c.weightDecay) && c.weightDecay >= 0, `weight decay must be >= 0, got ${c.weightDecay}`);
  need(c.steps === undefined || posInt(c.steps), `steps must be a positive integer, got ${c.steps}`);
  need(c.epochs === undefined || (Number.isFinite(c.epochs) && c.epochs > 0), `epochs must be a positive number, got ${c.epochs}`);
  need(posInt(c.batchSize), `batch size must be a positive integer, got ${c.batchSize}`);
  need(posInt(c.gradAccum), `grad accum must be a positive integer, got ${c.gradAccum}`);
  need(Number.isInteger(c.seqLen) && c.seqLen >= 2, `seq len must be an integer >= 2, got ${c.seqLen}`);
  need(
    Number.isFinite(c.warmup) && c.warmup >= 0 && (c.warmup < 1 || Number.isInteger(c.warmup)),
    `warmup must be a ratio in [0, 1) or a whole number of steps, got ${c.warmup}`,
  );
  need(Number.isFinite(c.maxGradNorm) && c.maxGradNorm >= 0, `max grad norm must be >= 0 (0 disables clipping), got ${c.maxGradNorm}`);
  need(nonNegInt(c.seed) && c.seed < 2 ** 32, `seed must be an integer in [0, 2^32), got ${c.seed}`);
  need(c.evalFraction >= 0 && c.evalFraction < 1, `eval fraction must be in [0, 1), got ${c.evalFraction}`);
  for (const k of ["evalEvery", "evalBatches", "saveEvery", "saveTotalLimit", "sampleTokens"] as const)
    need(nonNegInt(c[k]), `${k} must be a whole number >= 0, got ${c[k]}`);
  need(posInt(c.logEvery), `logEvery must be a positive integer, got ${c.logEvery}`);
  if (errors.length) throw new ConfigError(errors.length === 1 ? errors[0] : `invalid configuration:\n  ${errors.join("\n  ")}`);
  if (c.epochs === undefined && c.steps === undefined) c.epochs = 1;
  return c;
}

/** What a resumed run must share with the run that wrote the checkpoint (the rest may change). */
export function resumeFingerprint(c: FinetuneConfig): Record<string, unknown> {
  const {
    method,
    rank,
    alpha,
    dropout,
    targetModules,
    lora,
    quantType,
    blocksize,
    doubleQuant,
    optimizer,
    seqLen,
    batchSize,
    gradAccum,
    seed,
    evalFraction,
    format,
    mixedPrecision,
  } = c;
  return {
    method,
    rank,
    alpha,
    dropout,
    targetModules,
    lora,
    quantType,
    blocksize,
    doubleQuant,
    optimizer,
    seqLen,
    batchSize,
    gradAccum,
    seed,
    evalFraction,
    format: format ?? null,
    mixedPrecision,
  };
}
