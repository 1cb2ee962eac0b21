/**
 * One training run in the worker, assembled from @lowrank/trainer's node-free pieces (dataset,
 * BatchLoader, AdamW, schedule, trainLoop, evaluate) the way its finetune() does, minus files:
 * progress goes to the page after every step, and a cancel flag stops the loop between steps.
 */
import { type HfTokenizer, type LlamaForCausalLM, quantizeModel } from "@lowrank/nn";
import { type PeftModel, getPeftModel } from "@lowrank/lora";
import { type Backend, type Tensor, isFloat } from "@lowrank/tensor";
import {
  AdamW, BatchLoader, DatasetError, type MetricRecord, type MetricsLog, type ScheduleOptions, buildDataset, enableGradientCheckpointing,
  evaluate, namedParams, paramSummary, trainLoop, warmupSteps,
} from "@lowrank/trainer";
import type { FromWorker, TrainSettings } from "../protocol.ts";
import { type ModelFiles, buildModel } from "./model-loader.ts";

/** The result of a run: the model it trained (adapters still attached) and how. */
export interface Trained {
  model: LlamaForCausalLM;
  /** Null for method "full". */
  peft: PeftModel<LlamaForCausalLM> | null;
  settings: TrainSettings;
  losses: number[];
}

export class Cancelled extends Error {
  override readonly name = "Cancelled";
}

export interface RunContext {
  backend: Backend;
  files: ModelFiles;
  tokenizer: HfTokenizer;
  post: (m: FromWorker) => void;
  isCancelled: () => boolean;
}

/** Yield to the worker's event loop so a "cancel" message can arrive (CPU reads resolve synchronously). */
const macrotask = () => new Promise<void>((r) => setTimeout(r, 0));

async function prepare(ctx: RunContext, s: TrainSettings, warn: (m: string) => void): Promise<{ model: LlamaForCausalLM; peft: PeftModel<LlamaForCausalLM> | null; trainable: Map<string, Tensor>; summary: string }> {
  const model = await buildModel(ctx.files, ctx.backend);
  try {
    if (s.method === "full") {
      model.setRequiresGrad(true);
      const trainable = new Map(model.namedParameters().filter(([, t]) => isFloat(t.dtype)));
      return { model, peft: null, trainable, summary: paramSummary(model, trainable) };
    }
    if (s.method === "qlora") {
      // As trainer's methods.ts: NF4 + double quant, lm_head dense, the rest frozen.
      ctx.post({ type: "status", text: "quantizing the base to NF4..." });
      await quantizeModel(model, { quantType: "nf4", blocksize: 64, doubleQuant: true, skipModules: ["lm_head"], computeDtype: "f32" });
      model.setRequiresGrad(false);
    }
    const peft = getPeftModel(model, {
      r: s.rank, lora_alpha: s.alpha, lora_dropout: s.dropout, target_modules: s.targets, task_type: "CAUSAL_LM", base_model_name_or_path: ctx.files.name,
    }, "default", { seed: s.seed, warn });
    return { model, peft, trainable: new Map(peft.namedTrainableParameters()), summary: peft.printTrainableParameters(() => {}) };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

export async function runTraining(ctx: RunContext, s: TrainSettings): Promise<{ trained: Trained; cancelled: boolean; seconds: number }> {
  const warnings: string[] = [];
  const data = (() => {
    const opts = { seqLen: s.seqLen, evalFraction: 0.1, seed: s.seed };
    try {
      return buildDataset(s.textName, s.text, ctx.tokenizer, opts);
    } catch (e) {
      // Too little text to hold out an eval split: train on all of it.
      if (!(e instanceof DatasetError) || !/eval split/.test(e.message)) throw e;
      warnings.push("too little text for a held-out split: no eval loss");
      return buildDataset(s.textName, s.text, ctx.tokenizer, { ...opts, evalFraction: 0 });
    }
  })();
  const { model, peft, trainable, summary } = await prepare(ctx, s, (m) => warnings.push(m));
  const trained: Trained = { model, peft, settings: s, losses: [] };
  try {
    if (s.method === "qlora") enableGradientCheckpointing(model); // QLoRA's default, as in the CLI
    if (s.seqLen > model.config.max_position_embeddings) throw new Error(`seq len ${s.seqLen} exceeds the model's max_position_embeddings (${model.config.max_position_embeddings})`);
    const padId = ctx.tokenizer.eosTokenId ?? 0;
    const loader = new BatchLoader(data.train, s.batchSize, s.seed, padId);
    const schedule: ScheduleOptions = { name: "cosine", lr: s.lr, totalSteps: s.steps, warmupSteps: warmupSteps(s.warmup, s.steps) };
    const optimizer = new AdamW(namedParams(trainable), { weightDecay: 0 });
    ctx.post({ type: "train-start", summary, totalSteps: s.steps, train: data.train.length, eval: data.eval.length, tokens: data.stats.tokens, warnings });

    const evalOpts = { batchSize: s.batchSize, padId, maxBatches: 8 };
    const evalAt = async (when: "before" | "after") => {
      if (!data.eval.length) return;
      const r = await evaluate(model, data.eval, evalOpts);
      ctx.post({ type: "eval", when, loss: r.loss, perplexity: r.perplexity });
    };
    await evalAt("before");

    const t0 = performance.now();
    // trainLoop's metrics sink: the page gets every step; a cancel lands between steps.
    const metrics: MetricsLog = {
      path: "",
      reset: async () => {},
      write: async (r: MetricRecord) => {
        if (r.split !== "train") return;
        const elapsedS = (performance.now() - t0) / 1000;
        ctx.post({
          type: "step", step: r.step, total: s.steps, loss: r.loss, lr: r.lr, gradNorm: r.grad_norm, tokensPerS: r.tokens_per_s,
          etaS: (elapsedS / r.step) * (s.steps - r.step), elapsedS, memory: { liveBytes: ctx.backend.memory().liveBytes, peakBytes: r.peak_bytes },
        });
        await macrotask();
        if (ctx.isCancelled()) throw new Cancelled("cancelled");
      },
    };
    let cancelled = false;
    try {
      await trainLoop({
        model, params: optimizer.params, optimizer, loader, schedule, gradAccum: 1, maxGradNorm: 1, startStep: 0, evalEvery: 0, saveEvery: 0,
        evaluate: async () => {}, save: async () => {}, metrics, losses: trained.losses,
        reporter: { info: (m) => ctx.post({ type: "status", text: m }), progress: () => {}, end: () => {} },
      });
    } catch (e) {
      if (!(e instanceof Cancelled)) throw e;
      cancelled = true;
    } finally {
      optimizer.dispose();
    }
    const seconds = (performance.now() - t0) / 1000;
    await evalAt("after");
    model.eval();
    return { trained, cancelled, seconds };
  } catch (e) {
    model.dispose();
    throw e;
  }
}
