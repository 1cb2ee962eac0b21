/**
 * Hugging Face model directories: config.json plus model.safetensors or a sharded
 * model.safetensors.index.json. Every failure names the file and the problem.
 */
import { type Backend, type DType, fromF32, getDefaultBackend, scope } from "@lowrank/tensor";
import {
  type LazyTensorInput,
  SafetensorsError,
  type SafetensorsFile,
  ShardedSafetensors,
  type ShardedTensorInfo,
  openSafetensors,
  openShardedSafetensors,
  writeShardedSafetensors,
  storage,
} from "@lowrank/safetensors";
import { LlamaForCausalLM, llamaConfigToHf, parseLlamaConfig } from "../models/llama.ts";
import type { TensorSpec } from "../module.ts";
import { quantizationConfigOf } from "../quantize-model.ts";
import { loadBnbLayers, parseBnbConfig, withoutQuantizationConfig } from "./bnb.ts";
import { SOURCE_FLOATS, type SourceFloat, joinPath, readJson, tensorFromBytes } from "./files.ts";
import { type HfTokenizer, tokenizerFromJson } from "./tokenizer.ts";

export interface LoadOptions {
  backend?: Backend;
  /** Parameter dtype; F16/BF16/F32 weights are converted to it (default "f32"). */
  dtype?: DType;
  /** Told once when half-precision weights are widened to f32 (what, and the bytes it costs). */
  log?: (line: string) => void;
}

/** Buffers old checkpoints saved that the model recomputes (transformers ignores them too). */
const IGNORED = /(^|\.)rotary_emb\.inv_freq$/;

export async function loadHfModel(dir: string, opts: LoadOptions = {}): Promise<LlamaForCausalLM> {
  checkDtype("loadHfModel", opts);
  const configPath = await joinPath(dir, "config.json");
  const raw = await readJson(configPath, "the model's config.json");
  const shardPath = (shard: string) => joinPath(dir, shard);
  return loadHfCore(raw, configPath, () => openShardedSafetensors(dir), shardPath, opts);
}

/** Anything a file's bytes can be held in: a Blob (File), bytes, or an ArrayBuffer. */
export type FileBytes = Blob | Uint8Array | ArrayBuffer;
/** A JSON file: its bytes or text, or the already parsed value. */
export type JsonFile = FileBytes | string | object;

/** A Hugging Face model directory held in memory (fetched, or picked in a browser). */
export interface HfModelFiles {
  /** config.json. */
  config: JsonFile;
  /** Safetensors files by file name: model.safetensors, or the shards model.safetensors.index.json names (other entries are ignored). */
  weights: ReadonlyMap<string, FileBytes>;
  /** model.safetensors.index.json of a sharded checkpoint. */
  index?: JsonFile;
  /** tokenizer.json: when given, the tokenizer is built too. */
  tokenizer?: JsonFile;
  /** tokenizer_config.json (optional). */
  tokenizerConfig?: JsonFile;
}

export interface LoadedHfModel {
  model: LlamaForCausalLM;
  /** Built when `files.tokenizer` is given, else null. */
  tokenizer: HfTokenizer | null;
}

/**
 * loadHfModel for in-memory files (no file system: works in a browser). Same checks, same
 * conversions, bitsandbytes 4-bit included; errors name the files by their names in `files`.
 */
export async function loadHfModelFromFiles(files: HfModelFiles, opts: LoadOptions = {}): Promise<LoadedHfModel> {
  checkDtype("loadHfModelFromFiles", opts);
  const raw = await jsonOf(files.config, "config.json");
  let tokenizer: HfTokenizer | null = null;
  if (files.tokenizer !== undefined) {
    const json = await jsonOf(files.tokenizer, "tokenizer.json");
    const config = files.tokenizerConfig !== undefined ? await jsonOf(files.tokenizerConfig, "tokenizer_config.json") : {};
    tokenizer = tokenizerFromJson(json, config, "tokenizer.json");
  }
  const model = await loadHfCore(
    raw,
    "config.json",
    () => openCheckpointFiles(files),
    (shard) => shard,
    opts,
  );
  return { model, tokenizer };
}

function checkDtype(fn: string, opts: LoadOptions): void {
  const dtype = opts.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") throw new TypeError(`${fn}: dtype must be f32, f16 or bf16, got ${dtype}`);
}

/** The shared loader: `raw` is config.json's value, `label` names a shard in errors. */
async function loadHfCore(
  raw: unknown,
  configPath: string,
  open: () => Promise<ShardedSafetensors>,
  label: (shard: string) => string | Promise<string>,
  opts: LoadOptions,
): Promise<LlamaForCausalLM> {
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? "f32";
  const quant = parseBnbConfig(raw, configPath); // bitsandbytes 4-bit: Linear layers load as QuantizedLinear
  const config = parseLlamaConfig(quant ? withoutQuantizationConfig(raw) : raw, configPath);

  const ckpt = await openCheckpoint(open);
  const model = new LlamaForCausalLM(config, { backend, dtype });
  try {
    const shardPaths = new Map<string, string>();
    for (const shard of ckpt.shards.keys()) shardPaths.set(shard, await label(shard));
    const where = (name: string) => shardPaths.get(ckpt.tensors[name].shard) as string;
    const consumed = quant ? await loadBnbLayers(model, ckpt, where, quant, { backend, dtype }) : new Map<string, TensorSpec>();
    const given = new Map<string, TensorSpec>(consumed);
    const badDtype: string[] = [];
    for (const name of ckpt.names) {
      if (IGNORED.test(name) || consumed.has(name)) continue;
      const info = ckpt.tensors[name];
      if (!SOURCE_FLOATS.includes(info.dtype))
        badDtype.push(`${where(name)}: tensor "${name}" has dtype ${info.dtype}, expected a float weight (F32, F16 or BF16)`);
      given.set(name, { shape: info.shape, dtype }); // dtype is converted on read, so only names and shapes are compared here
    }
    if (badDtype.length) throw new Error(badDtype.join("\n"));
    const source = ckpt.index ?? [...shardPaths.values()][0];
    model.checkStateDict(given, { source });

    const widened = new Map<string, number>(); // source dtype -> elements
    for (const name of given.keys()) {
      const target = model.tensorAt(name);
      if (!target || consumed.has(name)) continue;
      const info = ckpt.tensors[name];
      if (dtype === "f32" && (info.dtype === "BF16" || info.dtype === "F16"))
        widened.set(info.dtype, (widened.get(info.dtype) ?? 0) + info.shape.reduce((a, b) => a * b, 1));
      const data = await ckpt.read(name).catch((e: unknown) => {
        throw explain(e);
      });
      scope(() => target.assign(tensorFromBytes(data.data, data.dtype as SourceFloat, data.shape, dtype, backend)));
    }
    for (const [src, n] of widened) {
      const mib = (b: number) => (b / 2 ** 20).toFixed(1);
      opts.log?.(
        `${source}: ${n} ${src} weights widened to f32 at load (${mib(2 * n)} -> ${mib(4 * n)} MiB); load them as ${src.toLowerCase()} to keep their precision`,
      );
    }
  } catch (e) {
    model.dispose();
    throw explain(e);
  } finally {
    await ckpt.close().catch(() => {});
  }
  return model;
}

async function openCheckpoint(open: () => Promise<ShardedSafetensors>): Promise<ShardedSafetensors> {
  try {
    return await open();
  } catch (e) {
    throw explain(e);
  }
}

const INDEX_NAME = "model.safetensors.index.json";
const SINGLE_NAME = "model.safetensors";

async function jsonOf(v: JsonFile, file: string): Promise<unknown> {
  let text: string;
  if (typeof v === "string") text = v;
  else if (v instanceof Uint8Array || v instanceof ArrayBuffer) text = new TextDecoder().decode(v);
  else if (typeof Blob !== "undefined" && v instanceof Blob) text = await v.text();
  else return v;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** openShardedSafetensors for in-memory files: the index's shards (or model.safetensors) as one checkpoint. */
async function openCheckpointFiles(files: HfModelFiles): Promise<ShardedSafetensors> {
  if (files.index === undefined) {
    const bytes = files.weights.get(SINGLE_NAME);
    if (bytes === undefined)
      throw new SafetensorsError("not_found", SINGLE_NAME, undefined, `not among the given files (${[...files.weights.keys()].join(", ") || "none"})`);
    const shard = SINGLE_NAME;
    const file = await openSafetensors(bytes, { label: shard });
    const tensors: Record<string, ShardedTensorInfo> = Object.create(null);
    for (const name of file.names) tensors[name] = Object.freeze({ ...file.tensors[name], shard });
    return new ShardedSafetensors(undefined, { ...file.metadata }, new Map([[shard, file]]), tensors, [...file.names]);
  }
  const json = await jsonOf(files.index, INDEX_NAME);
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObject(json) || !isObject(json.weight_map))
    throw new SafetensorsError("invalid_index", INDEX_NAME, undefined, 'index is not an object with a "weight_map" object');
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(json.weight_map)) {
    if (typeof shard !== "string" || shard === "")
      throw new SafetensorsError("invalid_index", INDEX_NAME, name, `weight_map value ${JSON.stringify(shard)} is not a shard file name`);
    const list = byShard.get(shard);
    if (list) list.push(name);
    else byShard.set(shard, [name]);
  }
  const shardFiles = [...byShard.keys()].sort();
  for (const shard of shardFiles) {
    if (!files.weights.has(shard)) {
      const users = byShard.get(shard)!;
      throw new SafetensorsError(
        "missing_shard",
        INDEX_NAME,
        users[0],
        `shard file ${JSON.stringify(shard)} is not among the given files (needed by ${users.length} tensor${users.length === 1 ? "" : "s"})`,
      );
    }
  }
  const opened = new Map<string, SafetensorsFile>();
  try {
    const tensors: Record<string, ShardedTensorInfo> = Object.create(null);
    const names: string[] = [];
    for (const shard of shardFiles) {
      const file = await openSafetensors(files.weights.get(shard)!, { label: shard });
      opened.set(shard, file);
      const wanted = new Set(byShard.get(shard));
      for (const name of wanted) {
        if (!file.has(name))
          throw new SafetensorsError(
            "invalid_index",
            INDEX_NAME,
            name,
            `weight_map says the tensor is in ${JSON.stringify(shard)} but that file has no such tensor`,
          );
      }
      for (const name of file.names) {
        if (!wanted.has(name)) continue;
        tensors[name] = Object.freeze({ ...file.tensors[name], shard });
        names.push(name);
      }
    }
    const meta = json.metadata;
    return new ShardedSafetensors(INDEX_NAME, isObject(meta) ? { ...meta } : {}, opened, tensors, names);
  } catch (err) {
    for (const f of opened.values()) await f.close().catch(() => {});
    throw err;
  }
}

export interface SaveOptions {
  /** Largest shard in bytes; above it the checkpoint is sharded with an index, like transformers (default 5e9). */
  maxShardBytes?: number;
}

/**
 * Write `dir/config.json` and `dir/model.safetensors` (or shards plus an index) the way
 * transformers' save_pretrained does: HF names, tied weights saved once, __metadata__ format "pt".
 * A model with QuantizedLinear layers is written as a bitsandbytes 4-bit directory (bnb's keys
 * plus config.json's quantization_config).
 */
export async function saveHfModel(model: LlamaForCausalLM, dir: string, opts: SaveOptions = {}): Promise<string[]> {
  const fs = storage();
  const tensors = new Map<string, LazyTensorInput>();
  for (const [name, t] of model.stateDict()) {
    const st = ({ f32: "F32", f16: "F16", bf16: "BF16", u8: "U8" } as const)[t.dtype as "f32" | "f16" | "bf16" | "u8"];
    if (!st) throw new TypeError(`saveHfModel: ${name} is ${t.dtype}; only float parameters and 4-bit (u8) buffers are saved`);
    // read() decodes halves to f32; re-encoding them is exact.
    const data = async () => {
      const v = await t.read();
      return t.dtype === "f32" || t.dtype === "u8" ? v : fromF32(t.dtype, v as Float32Array);
    };
    tensors.set(name, { dtype: st, shape: t.shape, data });
  }
  await fs.mkdir(dir);
  const configPath = await joinPath(dir, "config.json");
  const quantization = quantizationConfigOf(model); // QuantizedLinear layers: a bnb-4bit directory
  const hfConfig = { ...llamaConfigToHf(model.config), torch_dtype: { f32: "float32", f16: "float16", bf16: "bfloat16" }[model.dtype as "f32"] };
  await fs.writeFile(configPath, JSON.stringify(quantization ? { ...hfConfig, quantization_config: quantization } : hfConfig, null, 2) + "\n");
  const files = await writeShardedSafetensors(dir, tensors, { maxShardBytes: opts.maxShardBytes, metadata: { format: "pt" } });
  return ["config.json", ...files];
}

/** Adds what a safetensors error most likely means for a model directory. */
function explain(e: unknown): unknown {
  if (!(e instanceof SafetensorsError)) return e;
  const hints: Partial<Record<string, string>> = {
    truncated: "the file is truncated (an interrupted download?)",
    offsets_out_of_range: "the file is truncated or its header is corrupt",
    size_mismatch: "the header is corrupt",
    missing_shard: "a shard of the sharded checkpoint is missing",
    not_found: "no weights: expected model.safetensors or model.safetensors.index.json",
  };
  const hint = hints[e.code];
  return hint ? new Error(`${e.message} (${hint})`, { cause: e }) : e;
}
