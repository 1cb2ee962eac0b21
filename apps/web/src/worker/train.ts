/**
 * One training run in the worker: @lowrank/trainer's run(), the same function `lowrank finetune`
 * and the server's jobs call, on an in-memory storage. The model files are mounted (Blobs, not
 * copied), the text is written beside them, and the run's output (metrics.jsonl, the adapter) stays
 * in memory (metrics.jsonl is kept for the export). Progress goes to the page after every step; a cancel ends the run between steps.
 */
import type { HfTokenizer, LlamaForCausalLM } from "@lowrank/nn";
import type { PeftModel } from "@lowrank/lora";
import { type FileStorage, memoryStorage, setStorage } from "@lowrank/safetensors";
import type { Backend } from "@lowrank/tensor";
import { DatasetError, type RunSpec, run } from "@lowrank/trainer";
import type { FromWorker, TrainSettings } from "../protocol.ts";
import type { ModelFiles } from "./model-loader.ts";

/** The result of a run: the model it trained (adapters still attached) and how. */
export interface Trained {
  model: LlamaForCausalLM;
  /** Null for method "full". */
  peft: PeftModel<LlamaForCausalLM> | null;
  settings: TrainSettings;
  losses: number[];
  /** The run's metrics.jsonl, the same records `lowrank finetune` writes; offered with the export. */
  metrics: string;
}

export interface RunContext {
  backend: Backend;
  files: ModelFiles;
  /** Kept for the page's generation; run() loads its own from the mounted files. */
  tokenizer?: HfTokenizer;
  post: (m: FromWorker) => void;
  isCancelled: () => boolean;
}

export const OUTPUT_DIR = "/run";

/** Where the model's files are mounted: its name, relative, so the adapter's base_model_name_or_path is that name. */
export function modelPath(name: string): string {
  return name.replace(/[\\/]/g, "_").replace(/^\.+/, "") || "model";
}

/** The page's settings as run()'s spec (the fields the page does not show keep the trainer's defaults). */
export function runSpec(s: TrainSettings, modelName: string, evalFraction = 0.1): RunSpec {
  return {
    model: modelPath(modelName),
    data: `/data/${s.textName.replace(/[\\/]/g, "_") || "text"}`,
    output: OUTPUT_DIR,
    method: s.method,
    rank: s.rank,
    alpha: s.alpha,
    dropout: s.dropout,
    targetModules: s.targets,
    seed: s.seed,
    steps: s.steps,
    lr: s.lr,
    batchSize: s.batchSize,
    seqLen: s.seqLen,
    warmup: s.warmup,
    evalFraction,
    evalBatches: 8,
    sampleTokens: 0,
  };
}

/** A fresh in-memory storage holding the model files and the text, registered for the libraries. */
export async function stage(files: ModelFiles, spec: RunSpec, text: string): Promise<FileStorage> {
  const mem = memoryStorage();
  const f = files.files;
  const named: [string, unknown][] = [
    ["config.json", f.config],
    ["tokenizer.json", f.tokenizer],
    ["tokenizer_config.json", f.tokenizerConfig],
    ["model.safetensors.index.json", f.index],
    ...[...f.weights],
  ];
  await mem.mkdir(spec.model);
  for (const [name, v] of named) {
    if (v === undefined) continue;
    const blob =
      v instanceof Blob ? v : new Blob([typeof v === "string" || v instanceof ArrayBuffer || v instanceof Uint8Array ? (v as BlobPart) : JSON.stringify(v)]);
    await mem.mount(`${spec.model}/${name}`, blob);
  }
  await mem.mkdir("/data");
  await mem.writeFile(spec.data, text);
  setStorage(mem);
  return mem;
}

/** Yield to the worker's event loop so a "cancel" message can arrive (CPU reads resolve synchronously). */
const macrotask = () => new Promise<void>((r) => setTimeout(r, 0));

export async function runTraining(ctx: RunContext, s: TrainSettings): Promise<{ trained: Trained; cancelled: boolean; seconds: number; storage: FileStorage }> {
  try {
    return await attempt(ctx, s, 0.1, []);
  } catch (e) {
    // Too little text to hold out an eval split: train on all of it.
    if (!(e instanceof DatasetError) || !/eval split/.test(e.message)) throw e;
    return attempt(ctx, s, 0, ["too little text for a held-out split: no eval loss"]);
  }
}

async function attempt(ctx: RunContext, s: TrainSettings, evalFraction: number, warnings: string[]) {
  const spec = runSpec(s, ctx.files.name, evalFraction);
  const storage = await stage(ctx.files, spec, s.text);
  const t0 = performance.now();
  let trainStart = 0;
  const r = await run(spec, {
    backend: ctx.backend,
    checkpoints: false,
    keepModel: true,
    skipSamples: true,
    reporter: {
      info: (m) => (m.startsWith("warning: ") ? warnings.push(m.slice(9)) : ctx.post({ type: "status", text: m })),
      progress: () => {},
      end: () => {},
    },
    onStart: (i) => {
      if (s.method === "qlora") ctx.post({ type: "status", text: "quantized the base to NF4" });
      ctx.post({ type: "train-start", summary: i.summary, totalSteps: i.totalSteps, train: i.train, eval: i.eval, tokens: i.tokens, warnings });
    },
    onMetric: async (m) => {
      if (m.split === "eval") {
        ctx.post({ type: "eval", when: m.step === 0 ? "before" : "after", loss: m.eval_loss, perplexity: m.perplexity });
        return;
      }
      if (m.step === 1) trainStart = performance.now();
      const elapsedS = (performance.now() - (trainStart || t0)) / 1000;
      ctx.post({
        type: "step",
        step: m.step,
        total: s.steps,
        loss: m.loss,
        lr: m.lr,
        gradNorm: m.grad_norm,
        tokensPerS: m.tokens_per_s,
        etaS: (elapsedS / m.step) * (s.steps - m.step),
        elapsedS,
        memory: { liveBytes: ctx.backend.memory().liveBytes, peakBytes: m.peak_bytes },
      });
      await macrotask();
    },
    shouldStop: ctx.isCancelled,
  });
  const prepared = r.model!;
  const metrics = await storage.readText(`${OUTPUT_DIR}/metrics.jsonl`);
  const trained: Trained = { model: prepared.model, peft: prepared.peft, settings: s, losses: r.losses, metrics };
  return { trained, cancelled: r.stopped, seconds: r.trainSeconds, storage };
}
