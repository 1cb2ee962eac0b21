/**
 * `run(spec, options)`: one fine-tuning run, the same for every edge (`lowrank finetune`, the
 * server's job worker, the web page's worker). It is runtime-free: the model directory, the data
 * file and the output directory are paths in the registered storage (`@lowrank/safetensors`'
 * storage(): the Node file system through the `./node` edges, or memoryStorage() in a browser).
 *
 * Order matters: the config, the model and method (target modules, ranks), and the dataset are
 * all checked before the first step, so mistakes fail fast. Then: eval + sample before,
 * (resume), the loop, eval + sample after, the adapter (or model) plus training_args.json,
 * metrics.jsonl and eval_report.json. The options are the sinks: a reporter for messages and
 * progress, `onMetric` for every metrics.jsonl record, `shouldStop` to end the run between steps,
 * `checkpoints: false` to keep no training state (the page), `keepModel` to get the trained model back.
 */
import { type HfTokenizer, loadHfModel, loadTokenizer } from "@lowrank/nn";
import type { Backend, Tensor } from "@lowrank/tensor";
import { joinPath as join, storage } from "@lowrank/safetensors";
import { type LoadedCheckpoint, listCheckpoints, loadCheckpoint, restoreParams, saveCheckpoint, type SaveOptions, type TrainerState } from "./checkpoint.ts";
import { ConfigError, type FinetuneConfig, computeDtype, resolveConfig, resumeFingerprint } from "./config.ts";
import { buildDataset, type Dataset } from "./data/dataset.ts";
import { BatchLoader } from "./data/loader.ts";
import { DatasetError } from "./data/records.ts";
import { type EvalResult, evaluate, greedySample } from "./evaluate.ts";
import { dropoutStreamMap, recomputeLayers } from "./recompute-layers.ts";
import { INIT_LOSS_SCALE, type LossScaler, trainLoop } from "./loop.ts";
import { type PreparedModel, prepareModel } from "./methods.ts";
import { type MetricRecord, MetricsLog, type Reporter, silentReporter } from "./metrics.ts";
import { AdamW, type Optimizer, SGD, namedParams } from "./optim.ts";
import { type ScheduleOptions, warmupSteps } from "./schedule.ts";

/** The run's spec: the trainer config; model, data and output are paths in the registered storage. */
export type RunSpec = Partial<FinetuneConfig> & Pick<FinetuneConfig, "model" | "data" | "output">;
/** @deprecated the old name of RunSpec. */
export type FinetuneInput = RunSpec;

export interface RunOptions {
  backend: Backend;
  reporter?: Reporter;
  /** Once everything is checked and before the first evaluation: what will be trained. */
  onStart?: (info: RunStart) => void;
  /** Every metrics.jsonl record, as it is written (the page's live chart, the server's event stream). */
  onMetric?: (r: MetricRecord) => void | Promise<void>;
  /** Asked after every step (after onMetric): true ends the run there, as a completed one but with fewer steps. */
  shouldStop?: () => boolean;
  /** Write checkpoints (default true). The page keeps no training state. */
  checkpoints?: boolean;
  /** Return the trained model (adapters attached) instead of disposing it; the caller disposes it. */
  keepModel?: boolean;
  /** Stop after this many steps (the schedule still spans the full run): for interrupt/resume tests. */
  stopAt?: number;
  /** Skip the before/after samples (tests). */
  skipSamples?: boolean;
  /** Checkpoint test hook (see SaveOptions.beforeCommit). */
  beforeCommit?: SaveOptions["beforeCommit"];
  /** Loop hook: after backward of each 0-based step. */
  afterBackward?: (step: number, trainable: ReadonlyMap<string, Tensor>) => void;
}
export interface RunStart {
  summary: string;
  totalSteps: number;
  train: number;
  eval: number;
  tokens: number;
}

/** @deprecated the old name of RunOptions. */
export type FinetuneIO = RunOptions;

export interface RunResult {
  config: FinetuneConfig;
  output: string;
  steps: number;
  totalSteps: number;
  skipped: number;
  /** True when shouldStop() ended the run early. */
  stopped: boolean;
  trainSeconds: number;
  summary: string;
  dataset: Dataset["stats"] & { train: number; eval: number; format: string };
  before: EvalResult | null;
  after: EvalResult | null;
  samples: { prompt: string; before: string; after: string } | null;
  /** Train loss of every step from 1 (a resumed run includes the steps before the interruption). */
  losses: number[];
  checkpoint: string | null;
  outputFiles: string[];
  peakBytes: number;
  /** With keepModel: the trained model and what was trained. */
  model?: PreparedModel;
}
/** @deprecated the old name of RunResult. */
export type FinetuneResult = RunResult;

/** Thrown through trainLoop by the metrics sink when shouldStop() says so; caught by run(). */
class StopRequested extends Error {
  constructor(readonly step: number) {
    super(`stopped at step ${step}`);
  }
}

export async function run(input: RunSpec, io: RunOptions): Promise<RunResult> {
  const { mkdir, writeFile } = storage();
  const cfg = resolveConfig(input);
  const { backend } = io;
  const rep = io.reporter ?? silentReporter;
  const dtype = checkPrecision(cfg, backend);
  const loraOnly: string[] = (["rank", "alpha", "dropout", "targetModules"] as const).filter((k) => input[k] !== undefined);
  if (Object.keys(cfg.lora).length) loraOnly.push(`lora config (${Object.keys(cfg.lora).join(", ")})`);
  if (cfg.method === "full" && loraOnly.length)
    rep.info(`warning: ${loraOnly.join(", ")} apply to lora and qlora; --method full trains every weight and ignores them`);

  // ---- model, method, data: every check before training ----
  const { tokenizer, prepared } = await loadModel(cfg, backend, dtype, rep);
  const model = prepared.model;
  let kept = false;
  try {
    const { data, padId, loader, totalSteps, schedule, params, optimizer } = await setUp(cfg, prepared, tokenizer, backend.name, rep);
    // A resumed run must match the checkpoint's settings; checked before any work.
    const resume = cfg.resume ? await loadCheckpoint(cfg.resume) : null;
    if (resume) checkResume(resume, cfg, totalSteps);
    io.onStart?.({ summary: prepared.summary, totalSteps, train: data.train.length, eval: data.eval.length, tokens: data.stats.tokens });

    // ---- before ----
    const evalOpts = { batchSize: cfg.batchSize, padId, maxBatches: cfg.evalBatches };
    const hasEval = data.eval.length > 0;
    const before = hasEval ? await evaluate(model, data.eval, evalOpts) : null;
    if (before) rep.info(`eval before: loss ${before.loss.toFixed(4)}, perplexity ${before.perplexity.toFixed(2)} (${before.tokens} tokens)`);
    const promptIds = cfg.samplePrompt !== undefined ? tokenizer.encode(cfg.samplePrompt) : data.samplePrompt;
    const sampleBefore = io.skipSamples || !cfg.sampleTokens ? null : await greedySample(model, tokenizer, promptIds, cfg.sampleTokens);

    // ---- resume (after the "before" eval, which always measures the base model) ----
    let startStep = 0;
    const losses: number[] = [];
    const scaler: LossScaler | undefined = cfg.mixedPrecision === "fp16" ? { scale: INIT_LOSS_SCALE, goodSteps: 0 } : undefined;
    if (resume) {
      startStep = restore(resume, prepared, optimizer, loader, scaler, losses);
      rep.info(`resumed from ${resume.dir} at step ${startStep}`);
    }

    // ---- output dir, metrics ----
    await mkdir(cfg.output);
    await writeFile(
      join(cfg.output, "training_args.json"),
      `${JSON.stringify({ ...cfg, total_steps: totalSteps, warmup_steps: schedule.warmupSteps, backend: backend.name }, null, 2)}\n`,
    );
    const metrics = new SinkMetrics(join(cfg.output, "metrics.jsonl"), io);
    await metrics.reset(cfg.resume ? startStep : null);
    if (before && !cfg.resume) await metrics.write({ step: 0, split: "eval", eval_loss: before.loss, perplexity: before.perplexity });

    let lastCheckpoint: string | null = null;
    const save = async (step: number) => {
      if (io.checkpoints === false) return;
      const dropout = Object.fromEntries([...dropoutStreamMap(model)].map(([k, s]) => [k, { seed: s.seed, counter: s.counter }]));
      const state: TrainerState = {
        version: 1,
        global_step: step,
        total_steps: totalSteps,
        loader: loader.state(),
        dropout,
        fingerprint: resumeFingerprint(cfg),
        losses: [...losses],
        ...(scaler ? { loss_scale: { scale: scaler.scale, good_steps: scaler.goodSteps } } : {}),
      };
      lastCheckpoint = await saveCheckpoint(
        cfg.output,
        {
          step,
          params: prepared.trainable,
          paramsFile: prepared.paramsFile,
          optimizer: await optimizer.state(),
          state,
        },
        { keep: cfg.saveTotalLimit, beforeCommit: io.beforeCommit },
      );
    };
    const evalAt = async (step: number) => {
      if (!hasEval) return;
      const r = await evaluate(model, data.eval, evalOpts);
      rep.info(`eval at step ${step}: loss ${r.loss.toFixed(4)}, perplexity ${r.perplexity.toFixed(2)}`);
      await metrics.write({ step, split: "eval", eval_loss: r.loss, perplexity: r.perplexity });
    };

    // ---- train ----
    let stopAt = Math.min(io.stopAt ?? totalSteps, totalSteps);
    let peakBytes = 0;
    let stopped = false;
    let loop = { steps: 0, skipped: 0, seconds: 0 };
    const t0 = performance.now();
    try {
      loop = await trainLoop({
        model,
        params,
        optimizer,
        loader,
        schedule,
        gradAccum: cfg.gradAccum,
        maxGradNorm: cfg.maxGradNorm,
        startStep,
        stopAt,
        evalEvery: cfg.evalEvery,
        saveEvery: cfg.saveEvery,
        evaluate: evalAt,
        save,
        metrics,
        reporter: rep,
        losses,
        scaler,
        afterBackward: io.afterBackward ? (s) => io.afterBackward!(s, prepared.trainable) : undefined,
        onPeak: (b) => (peakBytes = Math.max(peakBytes, b)),
      });
    } catch (e) {
      if (!(e instanceof StopRequested)) throw e;
      rep.end();
      rep.info(`stopped at step ${e.step} of ${totalSteps}`);
      [stopped, stopAt] = [true, e.step];
      loop = { steps: e.step - startStep, skipped: 0, seconds: (performance.now() - t0) / 1000 };
    }

    // ---- after ----
    const after = hasEval ? await evaluate(model, data.eval, evalOpts) : null;
    if (after) {
      await metrics.write({ step: stopAt, split: "eval", eval_loss: after.loss, perplexity: after.perplexity });
      rep.info(
        `eval after:  loss ${after.loss.toFixed(4)}, perplexity ${after.perplexity.toFixed(2)}` +
          (before ? ` (before: ${before.loss.toFixed(4)}, ${before.perplexity.toFixed(2)})` : ""),
      );
    }
    const sampleAfter = sampleBefore === null ? null : await greedySample(model, tokenizer, promptIds, cfg.sampleTokens);
    const samples = sampleBefore === null ? null : { prompt: tokenizer.decode(promptIds), before: sampleBefore, after: sampleAfter as string };
    if (io.checkpoints !== false && (loop.steps > 0 || !(await listCheckpoints(cfg.output)).includes(stopAt))) await save(stopAt);
    const outputFiles = stopAt === totalSteps || stopped ? await prepared.writeOutput(cfg.output) : [];
    const result: RunResult = {
      config: cfg,
      output: cfg.output,
      steps: stopAt,
      totalSteps,
      skipped: loop.skipped,
      stopped,
      trainSeconds: loop.seconds,
      summary: prepared.summary,
      dataset: { ...data.stats, train: data.train.length, eval: data.eval.length, format: data.format },
      before,
      after,
      samples,
      losses,
      checkpoint: lastCheckpoint,
      outputFiles,
      peakBytes,
    };
    await writeFile(join(cfg.output, "eval_report.json"), `${JSON.stringify(reportOf(result), null, 2)}\n`);
    optimizer.dispose();
    if (io.keepModel) {
      model.eval();
      result.model = prepared;
      kept = true;
    }
    return result;
  } finally {
    if (!kept) model.dispose();
  }
}

/** The tokenizer and the model prepared for the method; nothing is left allocated on failure. */
async function loadModel(
  cfg: FinetuneConfig,
  backend: Backend,
  dtype: "f32" | "f16" | "bf16",
  rep: Reporter,
): Promise<{ tokenizer: HfTokenizer; prepared: PreparedModel }> {
  const tokenizer = await loadTokenizer(cfg.model);
  // Mixed precision: the frozen base (and so every activation) in the compute dtype, without
  // widening a bf16/f16 checkpoint to f32; adapters and optimizer state stay f32 (PEFT's autocast_adapter_dtype).
  const base = await loadHfModel(cfg.model, { backend, dtype, log: (m) => rep.info(`${m} (--bf16 or --fp16 trains on the half-precision weights)`) });
  try {
    const maxPos = base.config.max_position_embeddings;
    if (cfg.seqLen > maxPos) throw new ConfigError(`seq len ${cfg.seqLen} exceeds the model's max_position_embeddings (${maxPos})`);
    return { tokenizer, prepared: await prepareModel(base, cfg, cfg.model, (m) => rep.info(`warning: ${m}`)) };
  } catch (e) {
    base.dispose();
    throw e;
  }
}

/** Activation recomputation, the dataset, the batches, the schedule and the optimizer; reports what will be trained. */
async function setUp(cfg: FinetuneConfig, prepared: PreparedModel, tokenizer: HfTokenizer, backendName: string, rep: Reporter) {
  const again = cfg.recomputeActivations ?? cfg.method === "qlora";
  if (again) recomputeLayers(prepared.model);
  const text = await storage()
    .readText(cfg.data)
    .catch((e: { code?: string; message: string }) => {
      throw new DatasetError(cfg.data, null, null, e.code === "ENOENT" ? "no such file" : e.message);
    });
  const data = buildDataset(cfg.data, text, tokenizer, {
    format: cfg.format,
    seqLen: cfg.seqLen,
    evalFraction: cfg.evalFraction,
    seed: cfg.seed,
    warn: (m) => rep.info(`warning: ${m}`),
  });
  const padId = tokenizer.eosTokenId ?? 0;
  const loader = new BatchLoader(data.train, cfg.batchSize, cfg.seed, padId);
  const totalSteps = cfg.steps ?? Math.max(1, Math.ceil(((cfg.epochs as number) * loader.batchesPerEpoch) / cfg.gradAccum));
  const schedule: ScheduleOptions = { name: cfg.scheduler, lr: cfg.lr, totalSteps, warmupSteps: warmupSteps(cfg.warmup, totalSteps) };
  const params = namedParams(prepared.trainable);
  const optimizer: Optimizer =
    cfg.optimizer === "sgd"
      ? new SGD(params, { momentum: cfg.momentum, weightDecay: cfg.weightDecay })
      : new AdamW(params, { betas: cfg.betas, eps: cfg.eps, weightDecay: cfg.weightDecay });
  const st = data.stats;
  rep.info(
    `data: ${cfg.data} (${data.format}): ${st.records} record(s), ${st.tokens.toLocaleString("en-US")} tokens -> ${data.train.length} train / ${
      data.eval.length
    } eval examples of <= ${cfg.seqLen} tokens` +
      (st.truncated ? `; ${st.truncated} truncated` : "") +
      (st.noTargets ? `; ${st.noTargets} dropped (no response tokens)` : ""),
  );
  rep.info(`model: ${cfg.model} (${cfg.method}${again ? ", activations recomputed in backward" : ""}): ${prepared.summary}`);
  rep.info(
    `training: ${totalSteps} steps of ${cfg.batchSize} x ${cfg.gradAccum} sequences, ${cfg.optimizer} lr ${cfg.lr} (${cfg.scheduler}, ${schedule.warmupSteps} warmup), backend ${backendName}`,
  );
  return { data, padId, loader, totalSteps, schedule, params, optimizer };
}

/** Put a checkpoint's weights, optimizer, data position, dropout streams and loss scale back; returns its step. */
function restore(
  resume: LoadedCheckpoint,
  prepared: PreparedModel,
  optimizer: Optimizer,
  loader: BatchLoader,
  scaler: LossScaler | undefined,
  losses: number[],
): number {
  restoreParams(prepared.trainable, resume.params, resume.dir);
  optimizer.loadState(resume.optimizer);
  loader.load(resume.state.loader);
  const streams = dropoutStreamMap(prepared.model);
  for (const [k, v] of Object.entries(resume.state.dropout)) {
    const s = streams.get(k);
    if (!s) throw new Error(`--resume ${resume.dir}: dropout stream ${k} does not exist in this model`);
    s.seed = v.seed;
    s.counter = v.counter;
  }
  if (scaler && resume.state.loss_scale) [scaler.scale, scaler.goodSteps] = [resume.state.loss_scale.scale, resume.state.loss_scale.good_steps];
  losses.push(...resume.state.losses);
  return resume.state.global_step;
}

/** @deprecated the old name of run(). */
export const finetune = run;

/** The compute dtype, or a ConfigError when the backend or the method cannot train in it. */
function checkPrecision(cfg: FinetuneConfig, backend: Backend): "f32" | "f16" | "bf16" {
  const dtype = computeDtype(cfg.mixedPrecision);
  if (dtype !== "f32" && !backend.dtypes.includes(dtype)) {
    throw new ConfigError(
      `--${cfg.mixedPrecision}: the ${backend.name} backend cannot compute in ${dtype}; train in fp32 (drop --${cfg.mixedPrecision}) or choose a backend that can`,
    );
  }
  if (dtype !== "f32" && cfg.method === "full") {
    throw new ConfigError(
      `--${cfg.mixedPrecision} with --method full: a full fine-tune would need f32 master copies of every weight, which this trainer does not keep; use --method lora or qlora, or train in fp32`,
    );
  }
  return dtype;
}

function checkResume(resume: LoadedCheckpoint, cfg: FinetuneConfig, totalSteps: number): void {
  const want = resumeFingerprint(cfg);
  const had: Record<string, unknown> = { lora: {}, ...resume.state.fingerprint }; // checkpoints from before the lora field trained plain LoRA
  const diff = Object.keys(want).filter((k) => JSON.stringify(want[k]) !== JSON.stringify(had[k]));
  if (diff.length)
    throw new ConfigError(
      `--resume ${resume.dir}: the checkpoint was trained with different settings (${diff
        .map((k) => `${k}: ${JSON.stringify(had[k])} there, ${JSON.stringify(want[k])} now`)
        .join("; ")})`,
    );
  if (resume.state.total_steps !== totalSteps)
    throw new ConfigError(
      `--resume ${resume.dir}: the checkpoint's run has ${resume.state.total_steps} steps, this one ${totalSteps}; the schedule would differ`,
    );
}

/** metrics.jsonl plus the run's sinks: onMetric gets every record, shouldStop is asked after each step. */
class SinkMetrics extends MetricsLog {
  constructor(path: string, private readonly io: RunOptions) {
    super(path);
  }

  override async write(r: MetricRecord): Promise<void> {
    await super.write(r);
    await this.io.onMetric?.(r);
    if (r.split === "train" && this.io.shouldStop?.()) throw new StopRequested(r.step);
  }
}

function reportOf(r: RunResult) {
  return {
    method: r.config.method,
    model: r.config.model,
    data: r.config.data,
    steps: r.steps,
    total_steps: r.totalSteps,
    skipped_steps: r.skipped,
    train_seconds: r.trainSeconds,
    trainable: r.summary,
    peak_bytes: r.peakBytes,
    before: r.before && { eval_loss: r.before.loss, perplexity: r.before.perplexity, tokens: r.before.tokens },
    after: r.after && { eval_loss: r.after.loss, perplexity: r.after.perplexity, tokens: r.after.tokens },
    samples: r.samples,
    final_train_loss: r.losses[r.losses.length - 1] ?? null,
  };
}
