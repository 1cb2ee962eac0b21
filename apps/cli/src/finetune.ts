/**
 * `lowrank finetune`: flags named as TRL/PEFT users know them, turned into a trainer config.
 * Relative --model/--data paths that do not exist here are looked up in the data directory
 * (--data-dir, else LOWRANK_DATA_DIR, else ../shared/data beside the repository).
 */
import { readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { LoraConfigError, loraOptions } from "@lowrank/lora/node";
import {
  ConfigError,
  DATA_FORMATS,
  DatasetError,
  type FinetuneInput,
  type FinetuneResult,
  METHODS,
  SCHEDULERS,
  consoleReporter,
  run,
} from "@lowrank/trainer/node";
import { BACKEND_CHOICES, type BackendChoice, resolveChoice, selectBackend } from "./backends.ts";
import { locateInDataDir, resolveDataDir, resolveModelDir } from "./data-dir.ts";

type Env = Record<string, string | undefined>;

export const FINETUNE_HELP = `Usage: lowrank finetune --model <dir> --data <file> [options]

Fine-tune a Llama-family model (Hugging Face directory) with QLoRA, LoRA or full fine-tuning.

Model and data:
  --model <dir>              model directory (config.json, model.safetensors, tokenizer.json): a path,
                             or a name in the data dir or its models/; hf:org/name[@revision] downloads
                             that Hugging Face Hub repo into $LOWRANK_CACHE_DIR (default
                             ~/.cache/lowrank/hub; $HF_ENDPOINT, $HF_TOKEN apply)
  --data <file>              .txt, .jsonl or .json dataset
  --format <${DATA_FORMATS.join("|")}>  dataset format (default: from the file: "text", "instruction"/"output" or "messages" keys)
  --data-dir <dir>           where relative --model/--data paths are also looked up
                             (default: $LOWRANK_DATA_DIR, else ../shared/data beside the repo)
  --output <dir>             output directory (default: runs/<model>-<method>)
  --resume <dir>             a checkpoint-N directory, or an output directory (its latest checkpoint)
Method:
  --method <${METHODS.join("|")}>   (default qlora)
  --rank 8  --alpha 16  --dropout 0.05
  --target-modules q_proj,v_proj | all-linear      (default q_proj,v_proj)
  --lora-config <file.json>  PEFT LoraConfig fields (an adapter_config.json works); flags override
                             its fields, and an unknown field is an error naming it
  --use-dora  --use-rslora   DoRA (magnitude vector), rank-stabilized scaling alpha/sqrt(r)
  --modules-to-save lm_head,embed_tokens   modules trained in full and saved with the adapter
  --lora-bias none|all|lora_only           PEFT's bias: which existing biases train
  --exclude-modules a,b      --layers-to-transform 0,1,2
  --rank-pattern '{"q_proj":16}'  --alpha-pattern '{"down_proj":8}'   (JSON objects)
  --quant-type nf4|fp4  --blocksize 64  --no-double-quant          (qlora base)
  --recompute-activations / --no-recompute-activations   recompute each layer's activations in backward
                             instead of keeping them (default: on for qlora); transformers' names
                             --gradient-checkpointing / --no-gradient-checkpointing are accepted too
Optimisation:
  --lr 2e-4  --optimizer adamw|sgd  --momentum 0  --weight-decay 0
  --epochs N | --steps N     (default 1 epoch)
  --batch-size 8  --grad-accum 1  --seq-len 128
  --warmup 0.1|N             ratio of the steps (< 1) or a number of steps
  --scheduler <${SCHEDULERS.join("|")}>  (default cosine)
  --max-grad-norm 1.0        0 disables clipping
  --seed 0
  --bf16, --fp16             mixed precision (lora/qlora): base and activations in bf16/f16, adapters and
                             optimizer in f32; fp16 adds dynamic loss scaling (metrics.jsonl loss_scale)
Evaluation and saving:
  --eval-fraction 0.05  --eval-every N  --eval-batches N (0 = all)
  --save-every N  --save-total-limit 2  --log-every 10
  --prompt <text>            prompt of the before/after greedy samples (default: from the eval data)
  --sample-tokens 48         0 skips the samples
  --backend <${BACKEND_CHOICES.join("|")}>   (default: $LOWRANK_BACKEND, else auto)
  --json                     print the result as JSON on stdout`;

export class FinetuneUsageError extends Error {}

export const FINETUNE_OPTIONS = {
  help: { type: "boolean", short: "h" },
  model: { type: "string" },
  data: { type: "string" },
  format: { type: "string" },
  "data-dir": { type: "string" },
  output: { type: "string" },
  resume: { type: "string" },
  method: { type: "string" },
  rank: { type: "string" },
  alpha: { type: "string" },
  dropout: { type: "string" },
  "target-modules": { type: "string" },
  "lora-config": { type: "string" },
  "use-dora": { type: "boolean" },
  "use-rslora": { type: "boolean" },
  "modules-to-save": { type: "string" },
  "lora-bias": { type: "string" },
  "exclude-modules": { type: "string" },
  "layers-to-transform": { type: "string" },
  "rank-pattern": { type: "string" },
  "alpha-pattern": { type: "string" },
  "quant-type": { type: "string" },
  blocksize: { type: "string" },
  "no-double-quant": { type: "boolean" },
  "recompute-activations": { type: "boolean" },
  "no-recompute-activations": { type: "boolean" },
  // transformers' TrainingArguments name for the same switch
  "gradient-checkpointing": { type: "boolean" },
  "no-gradient-checkpointing": { type: "boolean" },
  lr: { type: "string" },
  optimizer: { type: "string" },
  momentum: { type: "string" },
  "weight-decay": { type: "string" },
  epochs: { type: "string" },
  steps: { type: "string" },
  "batch-size": { type: "string" },
  "grad-accum": { type: "string" },
  "seq-len": { type: "string" },
  warmup: { type: "string" },
  scheduler: { type: "string" },
  "max-grad-norm": { type: "string" },
  seed: { type: "string" },
  bf16: { type: "boolean" },
  fp16: { type: "boolean" },
  "eval-fraction": { type: "string" },
  "eval-every": { type: "string" },
  "eval-batches": { type: "string" },
  "save-every": { type: "string" },
  "save-total-limit": { type: "string" },
  "log-every": { type: "string" },
  prompt: { type: "string" },
  "sample-tokens": { type: "string" },
  backend: { type: "string" },
  json: { type: "boolean" },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof FINETUNE_OPTIONS; allowPositionals: true }>>["values"];

const list = (s: string) =>
  s
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);

function jsonFlag(flag: string, raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch (e) {
    throw new FinetuneUsageError(`--${flag} ${raw}: not valid JSON (${(e as Error).message})`);
  }
}

/**
 * PEFT LoraConfig fields from --lora-config <file> and the flags for the common ones (flags win).
 * Values are checked by the trainer (unknown fields and bad values name the field and the file).
 */
export function loraFields(v: Values, cwd = process.cwd()): Record<string, unknown> | undefined {
  let fields: Record<string, unknown> = {};
  if (v["lora-config"] !== undefined) {
    const path = resolve(cwd, v["lora-config"]);
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (e) {
      throw new FinetuneUsageError(`--lora-config ${path}: ${(e as { code?: string }).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new FinetuneUsageError(`--lora-config ${path}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof json !== "object" || json === null || Array.isArray(json))
      throw new FinetuneUsageError(`--lora-config ${path}: expected a JSON object of PEFT LoraConfig fields`);
    fields = { ...(json as Record<string, unknown>) };
  }
  if (v["use-dora"]) fields.use_dora = true;
  if (v["use-rslora"]) fields.use_rslora = true;
  if (v["modules-to-save"] !== undefined) fields.modules_to_save = list(v["modules-to-save"]);
  if (v["lora-bias"] !== undefined) fields.bias = v["lora-bias"];
  if (v["exclude-modules"] !== undefined) fields.exclude_modules = list(v["exclude-modules"]);
  if (v["layers-to-transform"] !== undefined) {
    fields.layers_to_transform = list(v["layers-to-transform"]).map((x) => {
      const n = Number(x);
      if (!Number.isInteger(n) || n < 0)
        throw new FinetuneUsageError(`--layers-to-transform ${v["layers-to-transform"]}: "${x}" is not a layer index (0, 1, ...)`);
      return n;
    });
  }
  if (v["rank-pattern"] !== undefined) fields.rank_pattern = jsonFlag("rank-pattern", v["rank-pattern"]);
  if (v["alpha-pattern"] !== undefined) fields.alpha_pattern = jsonFlag("alpha-pattern", v["alpha-pattern"]);
  if (!Object.keys(fields).length) return undefined;
  // Checked here too, so a mistake names the file: unknown fields, bad values, unsupported options.
  try {
    loraOptions(fields, v["lora-config"] !== undefined ? `--lora-config ${resolve(cwd, v["lora-config"])}` : "the LoRA flags");
  } catch (e) {
    throw new FinetuneUsageError((e as Error).message);
  }
  return fields;
}

/** Flags -> trainer input. Throws FinetuneUsageError for malformed values. */
export function finetuneInput(v: Values, env: Env, cwd = process.cwd()): FinetuneInput {
  const num = (flag: keyof Values): number | undefined => {
    const raw = v[flag];
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(n)) throw new FinetuneUsageError(`--${flag} ${raw}: not a number`);
    return n;
  };
  if (!v.model) throw new FinetuneUsageError("--model <dir> is required");
  if (!v.data) throw new FinetuneUsageError("--data <file> is required");
  const recomputeOn = v["recompute-activations"] || v["gradient-checkpointing"];
  const recomputeOff = v["no-recompute-activations"] || v["no-gradient-checkpointing"];
  if (recomputeOn && recomputeOff)
    throw new FinetuneUsageError(
      "--recompute-activations and --no-recompute-activations (or --gradient-checkpointing and --no-gradient-checkpointing) contradict each other",
    );
  if (v.bf16 && v.fp16) throw new FinetuneUsageError("--bf16 and --fp16 contradict each other");
  const dataDir = resolveDataDir(v["data-dir"], env).path;
  const locate = (p: string) => locateInDataDir(p, dataDir, cwd);
  const model = locate(v.model);
  const method = v.method ?? "qlora";
  const tm = v["target-modules"];
  return {
    model,
    data: locate(v.data),
    format: v.format as FinetuneInput["format"],
    output: resolve(cwd, v.output ?? join("runs", `${basename(model)}-${method}`)),
    resume: v.resume === undefined ? undefined : resolve(cwd, v.resume),
    method: method as FinetuneInput["method"],
    rank: num("rank"),
    alpha: num("alpha"),
    dropout: num("dropout"),
    targetModules: tm === undefined ? undefined : tm === "all-linear" ? "all-linear" : list(tm),
    lora: loraFields(v, cwd) as FinetuneInput["lora"],
    quantType: v["quant-type"] as FinetuneInput["quantType"],
    blocksize: num("blocksize"),
    doubleQuant: v["no-double-quant"] ? false : undefined,
    recomputeActivations: recomputeOn ? true : recomputeOff ? false : undefined,
    lr: num("lr"),
    optimizer: v.optimizer as FinetuneInput["optimizer"],
    momentum: num("momentum"),
    weightDecay: num("weight-decay"),
    epochs: num("epochs"),
    steps: num("steps"),
    batchSize: num("batch-size"),
    gradAccum: num("grad-accum"),
    seqLen: num("seq-len"),
    warmup: num("warmup"),
    scheduler: v.scheduler as FinetuneInput["scheduler"],
    maxGradNorm: num("max-grad-norm"),
    seed: num("seed"),
    mixedPrecision: v.bf16 ? "bf16" : v.fp16 ? "fp16" : undefined,
    evalFraction: num("eval-fraction"),
    evalEvery: num("eval-every"),
    evalBatches: num("eval-batches"),
    saveEvery: num("save-every"),
    saveTotalLimit: num("save-total-limit"),
    logEvery: num("log-every"),
    samplePrompt: v.prompt,
    sampleTokens: num("sample-tokens"),
  };
}

/** Exit code: 0 ok, 1 failed, 2 usage (bad flags, bad config, targets that do not fit). */
export async function finetuneCommand(argv: string[], env: Env): Promise<number> {
  let v: Values;
  try {
    const parsed = parseArgs({ args: argv, options: FINETUNE_OPTIONS, allowPositionals: true });
    if (parsed.positionals.length) throw new FinetuneUsageError(`unexpected argument "${parsed.positionals[0]}"`);
    v = parsed.values;
  } catch (e) {
    return fail(2, `${(e as Error).message}; see lowrank finetune --help`);
  }
  if (v.help) {
    console.log(FINETUNE_HELP);
    return 0;
  }
  let input: FinetuneInput;
  try {
    input = finetuneInput(v, env);
    resolveChoice(v.backend, env);
  } catch (e) {
    return fail(2, `${(e as Error).message}; see lowrank finetune --help`);
  }
  try {
    // A local directory (a missing one is an error here), or hf:org/name from the Hugging Face Hub.
    input.model = await resolveModelDir(v.model as string, resolveDataDir(v["data-dir"], env).path, process.cwd(), env);
  } catch (e) {
    return fail(1, `${(e as Error).message}`);
  }
  const sel = await selectBackend(v.backend as BackendChoice | undefined, env);
  const stderr = (s: string) => void process.stderr.write(s);
  const reporter = consoleReporter({ tty: process.stderr.isTTY === true, write: stderr, every: input.logEvery ?? 10 });
  reporter.info(`backend: ${sel.name} (${sel.reason}): ${sel.backend.device}`);
  const t0 = performance.now();
  try {
    const r = await run(input, { backend: sel.backend, reporter });
    const wall = (performance.now() - t0) / 1000;
    if (v.json) console.log(JSON.stringify({ ...r, wallSeconds: wall }, null, 2));
    else console.log(summary(r, wall));
    return 0;
  } catch (e) {
    reporter.end();
    const usage = e instanceof ConfigError || e instanceof LoraConfigError;
    const what = e instanceof DatasetError ? "dataset error" : usage ? "configuration error" : "failed";
    return fail(usage ? 2 : 1, `${what}: ${(e as Error).message}`);
  } finally {
    sel.backend.dispose();
  }
}

function fail(code: number, message: string): number {
  console.error(`lowrank finetune: ${message}`);
  return code;
}

/** The human-readable result on stdout. */
export function summary(r: FinetuneResult, wallSeconds: number): string {
  const lines = [`${r.config.method} fine-tune: ${r.steps} steps in ${r.trainSeconds.toFixed(0)} s of training (${wallSeconds.toFixed(0)} s in all)`];
  if (r.before && r.after) {
    lines.push(
      `eval loss ${r.before.loss.toFixed(4)} -> ${r.after.loss.toFixed(4)}, perplexity ${r.before.perplexity.toFixed(2)} -> ${r.after.perplexity.toFixed(
        2,
      )} (${r.after.tokens.toLocaleString("en-US")} held-out tokens)`,
    );
  }
  if (r.samples) {
    const q = (s: string) => JSON.stringify(s);
    lines.push(`greedy sample, prompt ${q(r.samples.prompt)}`, `  before: ${q(r.samples.before)}`, `  after:  ${q(r.samples.after)}`);
  }
  if (r.skipped)
    lines.push(
      `${r.skipped} step(s) skipped (non-finite loss or gradients${r.config.mixedPrecision === "fp16" ? ", or fp16 overflow: the loss scale backed off" : ""})`,
    );
  const files = r.outputFiles.length ? ` (${r.outputFiles.join(", ")})` : "";
  lines.push(
    `saved to ${r.output}${files}; metrics.jsonl, eval_report.json, training_args.json and ${r.checkpoint ? basename(r.checkpoint) : "checkpoints"} beside`,
  );
  return lines.join("\n");
}
