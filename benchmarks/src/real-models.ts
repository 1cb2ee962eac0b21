/**
 * `lowrank bench models`: the real configs of SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B
 * (shared/data/configs/), each written as a random-weight checkpoint the way the Hub publishes
 * them (bf16, sharded, model.safetensors.index.json) into a temporary directory, then per method
 * (LoRA, QLoRA) on a fresh CPU backend:
 *   load      loadHfModel on the directory (bf16 widened to f32, the trainer's compute dtype)
 *   prepare   the trainer's prepareModel (qlora: NF4 + double quant of every linear but the head)
 *   steps     3 optimizer steps of batch x seq synthetic tokens through trainLoop (the first is
 *             not timed: it creates AdamW's state); step s = the median of the other two
 *   peak      the largest per-step backend.memory().peakBytes (everything live on the backend),
 *             next to `lowrank plan`'s total for the same shape, method, batch and sequence
 *   adapter   the trainer's writeOutput (saveAdapter): adapter_model.safetensors' keys, shapes and
 *             dtypes against the keys PEFT writes for that shape (built here from the config, not
 *             from the model), adapter_config.json's target_modules against PEFT's expansion of
 *             all-linear, and its keys against a real PEFT 0.18.1 adapter_config.json when the data
 *             directory has one (peft/smollm2-135m-recallclear)
 *   generate  greedy tokens from a fixed prompt with the KV cache, with the trained adapter on
 * --quick runs the same path on the same configs shrunk (2 layers, vocab 512, head size 8; the
 * heads, kv heads, biases, tying and RoPE scaling kept) in seconds, for the test suite.
 */
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { type LlamaForCausalLM, generateIds, loadHfModel } from "@lowrank/nn/node";
import { type LazyTensorInput, openSafetensors, writeShardedSafetensors } from "@lowrank/safetensors/node";
import { type Machine, log, machine, median } from "./common.ts";
import { type PlanMethod, type PlanShape, estimate } from "@lowrank/trainer";
import { type MethodSpec, applyMethod, timeSteps } from "./step.ts";

export const MODELS_SCHEMA = 1;

export interface RealModel {
  name: string;
  /** File name in <data dir>/configs/. */
  config: string;
  /** Where the config comes from (recorded in the results). */
  source: string;
}

export const REAL_MODELS: RealModel[] = [
  { name: "SmolLM2-135M", config: "SmolLM2-135M.json", source: "HuggingFaceTB/SmolLM2-135M config.json" },
  { name: "Qwen2.5-0.5B", config: "Qwen2.5-0.5B.json", source: "Qwen/Qwen2.5-0.5B config.json" },
  { name: "Llama-3.2-1B", config: "Llama-3.2-1B.json", source: "meta-llama/Llama-3.2-1B config.json" },
];

/** The linear layers PEFT's "all-linear" expands to on these families (every nn.Linear but the output layer). */
export const ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
const ATTN = new Set(["q_proj", "k_proj", "v_proj", "o_proj"]);
/** A real adapter_config.json written by PEFT 0.18.1 (all-linear LoRA on SmolLM2-135M-Instruct), in the data directory. */
export const PEFT_REFERENCE = "peft/smollm2-135m-recallclear/adapter_config.json";

export interface ModelsConfig {
  quick: boolean;
  batch: number;
  seq: number;
  rank: number;
  alpha: number;
  targets: "all-linear";
  dropout: number;
  lr: number;
  /** Optimizer steps per method; the first is not timed. */
  steps: number;
  /** Greedy tokens generated after training. */
  generateTokens: number;
  /** Shards per checkpoint (maxShardBytes = total bytes / shards, so every checkpoint is sharded). */
  shards: number;
  seed: number;
}

export const modelsConfig = (quick: boolean): ModelsConfig => ({
  quick,
  batch: 1,
  seq: quick ? 16 : 64,
  rank: 8,
  alpha: 16,
  targets: "all-linear",
  dropout: 0.05,
  lr: 1e-4,
  steps: 3,
  generateTokens: quick ? 4 : 8,
  shards: 3,
  seed: 0,
});

export interface AdapterCheck {
  files: string[];
  bytes: number;
  keys: number;
  expected_keys: number;
  /** Keys PEFT would write that the file lacks, keys it would not write, wrong shapes or dtypes (empty: identical). */
  key_problems: string[];
  target_modules: string[];
  target_problems: string[];
  /** adapter_config.json keys that PEFT 0.18.1's own file does not have (null: no reference file). */
  unknown_config_keys: string[] | null;
  ok: boolean;
}

export interface ModelRun {
  method: PlanMethod;
  status: "ok" | "failed";
  error?: string;
  load_s?: number;
  prepare_s?: number;
  /** Every step's seconds (the first includes creating the optimizer state). */
  step_seconds?: number[];
  /** Median of the steps after the first. */
  step_s?: number;
  losses?: number[];
  trainable?: number;
  recompute?: boolean;
  peak_bytes?: number;
  plan_bytes?: number;
  /** peak_bytes / plan_bytes (the target is within 10%: 0.9 to 1.1). */
  peak_vs_plan?: number;
  adapter?: AdapterCheck;
  generate?: { prompt: number[]; ids: number[]; seconds: number; tokens_per_s: number };
  /** The process's resident set after the run, and its maximum so far (cumulative over the suite). */
  rss_bytes?: number;
  max_rss_bytes?: number;
}

export interface ModelEntry {
  name: string;
  source: string;
  config_file: string;
  model_type: string;
  params: number;
  shape: PlanShape & { head_dim: number };
  checkpoint: { dtype: "BF16"; files: string[]; shards: number; bytes: number; write_s: number; where: string };
  /** Why the plan's shape may differ from the model (q/k/v biases, head_dim), empty when it does not. */
  plan_notes: string[];
  runs: ModelRun[];
}

export interface ModelsResult {
  suite: "models";
  schema: number;
  config: ModelsConfig & { command: string; date: string; machine: Machine; data_dir: string; peft_reference: string | null };
  models: ModelEntry[];
  wall_seconds: number;
}

type Json = Record<string, unknown>;

/** The config --quick uses: 2 layers, vocab 512, head size 8, the rest of the family's config kept. */
export function quickModelConfig(cfg: Json): Json {
  const heads = cfg.num_attention_heads as number;
  return { ...cfg, num_hidden_layers: 2, vocab_size: 512, hidden_size: heads * 8, head_dim: 8, intermediate_size: heads * 24, max_position_embeddings: 128 };
}

/** Reads and checks the fields this suite needs; errors name the file, the field and what was expected. */
export function readModelConfig(file: string): Json {
  if (!existsSync(file))
    throw new Error(
      `${file}: not found (expected a model's config.json; the data directory's configs/ holds SmolLM2-135M.json, Qwen2.5-0.5B.json, Llama-3.2-1B.json)`,
    );
  let cfg: unknown;
  try {
    cfg = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof cfg !== "object" || cfg === null || Array.isArray(cfg)) throw new Error(`${file}: expected a JSON object`);
  const c = cfg as Json;
  for (const k of ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]) {
    if (!Number.isSafeInteger(c[k]) || (c[k] as number) <= 0) throw new Error(`${file}: ${k} = ${JSON.stringify(c[k])}, expected a positive integer`);
  }
  return c;
}

interface Dims {
  type: string;
  V: number;
  C: number;
  I: number;
  L: number;
  nh: number;
  kv: number;
  hd: number;
  tied: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  qkNorm: boolean;
}

function dims(c: Json): Dims {
  const type = String(c.model_type);
  const nh = c.num_attention_heads as number;
  const attnBias = type !== "mistral" && c.attention_bias === true;
  return {
    type,
    V: c.vocab_size as number,
    C: c.hidden_size as number,
    I: c.intermediate_size as number,
    L: c.num_hidden_layers as number,
    nh,
    kv: (c.num_key_value_heads as number | undefined) ?? nh,
    hd: (c.head_dim as number | undefined) ?? (c.hidden_size as number) / nh,
    tied: c.tie_word_embeddings === true,
    qkvBias: type === "qwen2" || attnBias,
    oBias: type !== "qwen2" && attnBias,
    mlpBias: type === "llama" && c.mlp_bias === true,
    qkNorm: type === "qwen3",
  };
}

/** [in, out] of each linear of a decoder layer. */
function linearDims(d: Dims): Record<(typeof ALL_LINEAR)[number], [number, number]> {
  return {
    q_proj: [d.C, d.nh * d.hd],
    k_proj: [d.C, d.kv * d.hd],
    v_proj: [d.C, d.kv * d.hd],
    o_proj: [d.nh * d.hd, d.C],
    gate_proj: [d.C, d.I],
    up_proj: [d.C, d.I],
    down_proj: [d.I, d.C],
  };
}

/** The tensors transformers saves for a Llama/Mistral/Qwen2/Qwen3 checkpoint, in state_dict order: [name, shape, kind]. */
export function hfTensorList(c: Json): [string, number[], "weight" | "norm" | "bias"][] {
  const d = dims(c);
  const out: [string, number[], "weight" | "norm" | "bias"][] = [["model.embed_tokens.weight", [d.V, d.C], "weight"]];
  const lin = linearDims(d);
  for (let l = 0; l < d.L; l++) {
    const p = `model.layers.${l}`;
    for (const m of ["q_proj", "k_proj", "v_proj", "o_proj"] as const) {
      const [fin, fout] = lin[m];
      out.push([`${p}.self_attn.${m}.weight`, [fout, fin], "weight"]);
      if (m === "o_proj" ? d.oBias : d.qkvBias) out.push([`${p}.self_attn.${m}.bias`, [fout], "bias"]);
    }
    if (d.qkNorm) out.push([`${p}.self_attn.q_norm.weight`, [d.hd], "norm"], [`${p}.self_attn.k_norm.weight`, [d.hd], "norm"]);
    for (const m of ["gate_proj", "up_proj", "down_proj"] as const) {
      const [fin, fout] = lin[m];
      out.push([`${p}.mlp.${m}.weight`, [fout, fin], "weight"]);
      if (d.mlpBias) out.push([`${p}.mlp.${m}.bias`, [fout], "bias"]);
    }
    out.push([`${p}.input_layernorm.weight`, [d.C], "norm"], [`${p}.post_attention_layernorm.weight`, [d.C], "norm"]);
  }
  out.push(["model.norm.weight", [d.C], "norm"]);
  if (!d.tied) out.push(["lm_head.weight", [d.V, d.C], "weight"]);
  return out;
}

/**
 * bf16 values, uniform with std 0.02 (norms 1, biases 0), from a xorshift stream seeded per tensor:
 * the distribution does not matter for speed or memory, and Box-Muller in JS would take minutes for 1B.
 */
function randomBf16(n: number, kind: "weight" | "norm" | "bias", seed: number): Uint16Array {
  const out = new Uint16Array(n);
  if (kind === "norm") return out.fill(0x3f80); // 1.0
  if (kind === "bias") return out;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const a = 0.02 * Math.sqrt(3);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    f[0] = (s / 2 ** 31 - 1) * a;
    out[i] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) >>> 16; // round to nearest even
  }
  return out;
}

/**
 * A random checkpoint as the Hub publishes it: config.json (the real one), bf16 shards and
 * model.safetensors.index.json. Tensors are made one at a time as the writer reaches them.
 */
export async function writeRandomCheckpoint(cfg: Json, dir: string, shards: number, seed = 0): Promise<{ files: string[]; bytes: number }> {
  const list = hfTensorList(cfg);
  const bytes = list.reduce((a, [, shape]) => a + 2 * shape.reduce((x, y) => x * y, 1), 0);
  const tensors = new Map<string, LazyTensorInput>();
  list.forEach(([name, shape, kind], i) => {
    tensors.set(name, {
      dtype: "BF16",
      shape,
      data: () =>
        randomBf16(
          shape.reduce((x, y) => x * y, 1),
          kind,
          seed * 7919 + i + 1,
        ),
    });
  });
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "config.json"), `${JSON.stringify({ ...cfg, torch_dtype: "bfloat16" }, null, 2)}\n`);
  const files = await writeShardedSafetensors(dir, tensors, { maxShardBytes: Math.ceil(bytes / shards), metadata: { format: "pt" }, alwaysIndex: true });
  return { files: ["config.json", ...files], bytes };
}

/** PEFT minimizes an expanded target list to name suffixes only from this many entries on (peft.utils.constants). */
export const MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20;

/**
 * adapter_config.json's target_modules for all-linear, as PEFT writes it: every linear module's
 * full name but the output layer's (_maybe_include_all_linear_layers), replaced by the minimal
 * suffixes (here the 7 projection names) when there are 20 or more (inject_adapter).
 */
export function expectedTargetModules(c: Json): string[] {
  const full: string[] = [];
  for (let l = 0; l < dims(c).L; l++) for (const m of ALL_LINEAR) full.push(`model.layers.${l}.${ATTN.has(m) ? "self_attn" : "mlp"}.${m}`);
  return full.length >= MIN_TARGET_MODULES_FOR_OPTIMIZATION ? [...ALL_LINEAR] : full;
}

/** The adapter keys and shapes PEFT writes for LoRA on `targets` of this config (from the config alone). */
export function expectedAdapterKeys(c: Json, targets: readonly string[], rank: number): Map<string, number[]> {
  const d = dims(c);
  const lin = linearDims(d);
  const out = new Map<string, number[]>();
  for (let l = 0; l < d.L; l++) {
    for (const m of targets as (typeof ALL_LINEAR)[number][]) {
      const [fin, fout] = lin[m];
      const p = `base_model.model.model.layers.${l}.${ATTN.has(m) ? "self_attn" : "mlp"}.${m}`;
      out.set(`${p}.lora_A.weight`, [rank, fin]);
      out.set(`${p}.lora_B.weight`, [fout, rank]);
    }
  }
  return out;
}

/** Checks a saved adapter directory against what PEFT writes (see the file comment). */
export async function checkAdapter(dir: string, c: Json, rank: number, peftReference: Json | null): Promise<AdapterCheck> {
  const files = (await readdir(dir)).sort();
  const weightsFile = join(dir, "adapter_model.safetensors");
  const configFile = join(dir, "adapter_config.json");
  const keyProblems: string[] = [];
  const targetProblems: string[] = [];
  if (!existsSync(weightsFile) || !existsSync(configFile)) {
    return {
      files,
      bytes: 0,
      keys: 0,
      expected_keys: 0,
      key_problems: [`${dir}: expected adapter_model.safetensors and adapter_config.json, found ${files.join(", ") || "nothing"}`],
      target_modules: [],
      target_problems: [],
      unknown_config_keys: null,
      ok: false,
    };
  }
  const json = JSON.parse(await readFile(configFile, "utf8")) as Json;
  const tm = json.target_modules;
  const targets = Array.isArray(tm) ? (tm as string[]) : [];
  const want = expectedTargetModules(c);
  const setOf = (xs: readonly string[]) => JSON.stringify([...xs].sort());
  if (!Array.isArray(tm) || setOf(targets) !== setOf(want)) {
    targetProblems.push(
      `${configFile}: target_modules = ${JSON.stringify(tm)}, expected the set ${setOf(want)} (PEFT's all-linear: every linear but the output layer${
        want.length < MIN_TARGET_MODULES_FOR_OPTIMIZATION ? `, full names as fewer than ${MIN_TARGET_MODULES_FOR_OPTIMIZATION}` : ", minimized to suffixes"
      })`,
    );
  }
  const refTargets = peftReference?.target_modules;
  if (Array.isArray(refTargets) && want.length === ALL_LINEAR.length && setOf(refTargets as string[]) !== setOf(targets)) {
    targetProblems.push(`${configFile}: target_modules ${setOf(targets)} differ from PEFT's own file (${PEFT_REFERENCE}): ${setOf(refTargets as string[])}`);
  }
  for (const [k, v] of [
    ["peft_type", "LORA"],
    ["task_type", "CAUSAL_LM"],
    ["r", rank],
  ] as const) {
    if (json[k] !== v) targetProblems.push(`${configFile}: ${k} = ${JSON.stringify(json[k])}, expected ${JSON.stringify(v)}`);
  }
  const unknown = peftReference ? Object.keys(json).filter((k) => !(k in peftReference)) : null;
  if (unknown?.length) targetProblems.push(`${configFile}: keys PEFT 0.18.1 does not write: ${unknown.join(", ")}`);

  const expected = expectedAdapterKeys(c, ALL_LINEAR, rank);
  const f = await openSafetensors(weightsFile);
  const nKeys = f.names.length;
  try {
    for (const [k, shape] of expected) {
      const t = f.tensors[k];
      if (!t) keyProblems.push(`missing ${k}`);
      else if (t.shape.join(",") !== shape.join(",") || t.dtype !== "F32")
        keyProblems.push(`${k}: ${t.dtype} [${t.shape.join(", ")}], expected F32 [${shape.join(", ")}]`);
    }
    for (const k of f.names) if (!expected.has(k)) keyProblems.push(`unexpected ${k}`);
    if (f.metadata.format !== "pt") keyProblems.push(`__metadata__.format = ${JSON.stringify(f.metadata.format)}, expected "pt"`);
  } finally {
    await f.close();
  }
  const bytes = (await stat(weightsFile)).size;
  return {
    files,
    bytes,
    keys: nKeys,
    expected_keys: expected.size,
    key_problems: keyProblems.slice(0, 20),
    target_modules: targets,
    target_problems: targetProblems,
    unknown_config_keys: unknown,
    ok: keyProblems.length === 0 && targetProblems.length === 0,
  };
}

const planShapeOf = (d: Dims): PlanShape => ({ vocab: d.V, dim: d.C, layers: d.L, heads: d.nh, kvHeads: d.kv, hidden: d.I, tied: d.tied });

/** One method on one checkpoint, on a fresh CPU backend: load, prepare, steps, adapter, generate. */
async function runMethod(method: PlanMethod, dir: string, c: Json, cfg: ModelsConfig, peftRef: Json | null, name: string): Promise<ModelRun> {
  const backend = createCpuBackend();
  let model: LlamaForCausalLM | undefined;
  try {
    let t = performance.now();
    model = await loadHfModel(dir, { backend, dtype: "f32" });
    const load_s = (performance.now() - t) / 1000;
    const spec: MethodSpec = { method, rank: cfg.rank, alpha: cfg.alpha, targets: cfg.targets, dropout: cfg.dropout };
    t = performance.now();
    const applied = await applyMethod(model, spec, cfg.seed, `${name} (random bf16 checkpoint)`);
    const prepare_s = (performance.now() - t) / 1000;
    const steps = await timeSteps(model, spec, { batch: cfg.batch, seq: cfg.seq, steps: cfg.steps - 1, warmup: 1, lr: cfg.lr, seed: cfg.seed, applied });
    const d = dims(c);
    const e = estimate({
      shape: planShapeOf(d),
      method,
      rank: cfg.rank,
      targets: cfg.targets,
      batch: cfg.batch,
      seq: cfg.seq,
      dropout: cfg.dropout,
      recompute: steps.recompute,
    });
    const adapterDir = join(dir, `adapter-${method}`);
    await applied.prepared.writeOutput(adapterDir);
    const adapter = await checkAdapter(adapterDir, c, cfg.rank, peftRef);
    model.eval();
    const prompt = [(c.bos_token_id as number | undefined) ?? 1, 17, 42, 7, 99].map((x) => x % d.V);
    t = performance.now();
    const ids = await generateIds(model, prompt, { maxNewTokens: cfg.generateTokens, stopTokens: [] });
    const genS = (performance.now() - t) / 1000;
    if (ids.length !== cfg.generateTokens || !ids.every((x) => Number.isInteger(x) && x >= 0 && x < d.V)) {
      throw new Error(`generate: expected ${cfg.generateTokens} ids in [0, ${d.V}), got ${JSON.stringify(ids)}`);
    }
    if (!steps.losses.every(Number.isFinite)) throw new Error(`training: non-finite loss (${steps.losses.join(", ")})`);
    const step_seconds = [...steps.warmupMs, ...steps.stepMs].map((ms) => ms / 1000);
    return {
      method,
      status: adapter.ok ? "ok" : "failed",
      ...(adapter.ok ? {} : { error: `adapter does not match PEFT's: ${[...adapter.key_problems, ...adapter.target_problems].slice(0, 3).join("; ")}` }),
      load_s,
      prepare_s,
      step_seconds,
      step_s: median(steps.stepMs) / 1000,
      losses: steps.losses,
      trainable: steps.trainable,
      recompute: steps.recompute,
      peak_bytes: steps.peakBytes,
      plan_bytes: e.totalBytes,
      peak_vs_plan: steps.peakBytes / e.totalBytes,
      adapter,
      generate: { prompt, ids, seconds: genS, tokens_per_s: ids.length / genS },
      rss_bytes: process.memoryUsage().rss,
      max_rss_bytes: process.resourceUsage().maxRSS * 1024,
    };
  } catch (e) {
    return { method, status: "failed", error: (e as Error).message, max_rss_bytes: process.resourceUsage().maxRSS * 1024 };
  } finally {
    model?.dispose();
    backend.dispose();
  }
}

const paramsOfTensors = (c: Json) => hfTensorList(c).reduce((a, [, s]) => a + s.reduce((x, y) => x * y, 1), 0);

export async function runModels(o: { quick: boolean; dataDir: string; command: string; models?: RealModel[]; workDir?: string }): Promise<ModelsResult> {
  const t0 = performance.now();
  const cfg = modelsConfig(o.quick);
  const refPath = join(o.dataDir, PEFT_REFERENCE);
  const peftRef = existsSync(refPath) ? (JSON.parse(readFileSync(refPath, "utf8")) as Json) : null;
  const result: ModelsResult = {
    suite: "models",
    schema: MODELS_SCHEMA,
    config: {
      ...cfg,
      command: o.command,
      date: new Date().toISOString(),
      machine: machine(),
      data_dir: o.dataDir,
      peft_reference: peftRef ? PEFT_REFERENCE : null,
    },
    models: [],
    wall_seconds: 0,
  };
  const root = await mkdtemp(join(o.workDir ?? tmpdir(), "lowrank-bench-models-"));
  try {
    for (const m of o.models ?? REAL_MODELS) {
      const file = join(o.dataDir, "configs", m.config);
      const real = readModelConfig(file);
      const c = o.quick ? quickModelConfig(real) : real;
      const d = dims(c);
      const dir = join(root, m.name);
      let t = performance.now();
      const ck = await writeRandomCheckpoint(c, dir, cfg.shards, cfg.seed);
      const write_s = (performance.now() - t) / 1000;
      const notes: string[] = [];
      if (d.hd !== d.C / d.nh) notes.push(`head_dim ${d.hd} is not hidden/heads (${d.C / d.nh}); the plan assumes hidden/heads`);
      if (d.qkvBias || d.oBias || d.mlpBias) notes.push("the plan leaves out the linear biases (q/k/v: a few KiB per layer)");
      const entry: ModelEntry = {
        name: m.name,
        source: m.source,
        config_file: `configs/${m.config}`,
        model_type: d.type,
        params: paramsOfTensors(c),
        shape: { ...planShapeOf(d), head_dim: d.hd },
        checkpoint: {
          dtype: "BF16",
          files: ck.files,
          shards: ck.files.filter((f) => f.endsWith(".safetensors")).length,
          bytes: ck.bytes,
          write_s,
          where: "a temporary directory, removed after the run",
        },
        plan_notes: notes,
        runs: [],
      };
      result.models.push(entry);
      log(
        `models: ${m.name}${o.quick ? " (quick)" : ""}: ${(entry.params / 1e6).toFixed(1)}M params, wrote ${entry.checkpoint.shards} bf16 shards (${(
          ck.bytes /
          2 ** 20
        ).toFixed(0)} MiB) in ${write_s.toFixed(1)} s`,
      );
      for (const method of ["lora", "qlora"] as const) {
        t = performance.now();
        const r = await runMethod(method, dir, c, cfg, peftRef, m.name);
        entry.runs.push(r);
        log(
          r.status === "ok" || r.peak_bytes !== undefined
            ? `models: ${m.name} ${method}: load ${r.load_s?.toFixed(1)} s, prepare ${r.prepare_s?.toFixed(1)} s, step ${r.step_s?.toFixed(2)} s, peak ${(
                (r.peak_bytes ?? 0) /
                2 ** 20
              ).toFixed(0)} MiB vs plan ${((r.plan_bytes ?? 0) / 2 ** 20).toFixed(0)} MiB (x${r.peak_vs_plan?.toFixed(3)}), adapter ${
                r.adapter?.ok ? "matches PEFT" : "DIFFERS"
              }, generated ${r.generate?.ids.length} ids (${((performance.now() - t) / 1000).toFixed(0)} s)`
            : `models: ${m.name} ${method}: failed: ${r.error}`,
        );
      }
      await rm(dir, { recursive: true, force: true });
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  result.wall_seconds = (performance.now() - t0) / 1000;
  return result;
}

/** Problems with a results file (empty: fine); each names the field and what was expected. */
export function checkModelsSchema(r: unknown): string[] {
  const p: string[] = [];
  const x = r as Partial<ModelsResult>;
  if (x?.suite !== "models") p.push(`suite = ${JSON.stringify(x?.suite)}, expected "models"`);
  if (x?.schema !== MODELS_SCHEMA) p.push(`schema = ${JSON.stringify(x?.schema)}, expected ${MODELS_SCHEMA}`);
  if (typeof x?.config?.command !== "string") p.push("config.command: expected the command that wrote the file");
  if (!Array.isArray(x?.models) || x.models.length === 0) return [...p, "models: expected a non-empty array"];
  const num = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  for (const m of x.models) {
    if (!num(m.params) || !(m.checkpoint?.shards >= 2))
      p.push(`${m.name}: expected params and a sharded checkpoint (2 or more shards), got ${JSON.stringify(m.checkpoint?.shards)}`);
    const methods = (m.runs ?? []).map((r) => r.method).join(",");
    if (methods !== "lora,qlora") p.push(`${m.name}: runs are ${JSON.stringify(methods)}, expected "lora,qlora"`);
    for (const r of m.runs ?? []) {
      const id = `${m.name} ${r.method}`;
      if (r.status === "failed") {
        if (!r.error) p.push(`${id}: status failed but no error`);
        continue;
      }
      if (r.status !== "ok") p.push(`${id}: status ${JSON.stringify(r.status)} is not ok or failed`);
      for (const k of ["load_s", "prepare_s", "step_s", "peak_bytes", "plan_bytes", "peak_vs_plan"] as const)
        if (!num(r[k])) p.push(`${id}: ${k} = ${JSON.stringify(r[k])}, expected a finite number`);
      if (r.step_seconds?.length !== x.config?.steps) p.push(`${id}: ${r.step_seconds?.length ?? 0} step times, expected ${x.config?.steps}`);
      if (!r.adapter?.ok) p.push(`${id}: the adapter check did not pass`);
      if (!r.generate?.ids?.length) p.push(`${id}: no generated ids`);
    }
  }
  return p;
}
