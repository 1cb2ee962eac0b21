/**
 * Builds a model and tokenizer from in-memory files (fetched from the page's bundled copy or
 * picked by the user) with nn's public API: nn's loadHfModel and loadTokenizer take only a
 * directory path. Same checks: config parsed by parseLlamaConfig, every tensor name and shape
 * checked before any weight is assigned, F32/F16/BF16/F64 converted to f32.
 */
import { HfTokenizer, LlamaForCausalLM, type TensorSpec, parseBnbConfig, parseLlamaConfig } from "@lowrank/nn";
import { type SafetensorsFile, type TensorData, openSafetensors, toTypedArray } from "@lowrank/safetensors";
import { type Backend, scope, tensor, toF32 } from "@lowrank/tensor";
import type { ModelSource } from "../protocol.ts";

/** A Hugging Face model directory held in memory. */
export interface ModelFiles {
  name: string;
  config: unknown;
  tokenizer: object;
  tokenizerConfig: object;
  /** model.safetensors, or the shards named by model.safetensors.index.json. */
  weights: Map<string, Blob>;
  /** weight_map of a sharded checkpoint (tensor name -> shard file), else null. */
  weightMap: Record<string, string> | null;
}

const IGNORED = /(^|\.)rotary_emb\.inv_freq$/;

async function parseJson(blob: Blob, file: string): Promise<unknown> {
  const text = await blob.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** Fetch the bundled copy: `base` is the folder URL (ends with "/"). */
export async function fetchModelFiles(name: string, base: string): Promise<ModelFiles> {
  const get = async (file: string, optional = false): Promise<Blob | null> => {
    const res = await fetch(new URL(file, base));
    if (res.ok) return res.blob();
    if (optional && res.status === 404) return null;
    throw new Error(`${new URL(file, base).href}: HTTP ${res.status}`);
  };
  const files = new Map<string, Blob>();
  for (const f of ["config.json", "tokenizer.json", "model.safetensors"]) files.set(f, (await get(f))!);
  const tc = await get("tokenizer_config.json", true);
  if (tc) files.set("tokenizer_config.json", tc);
  return fromNamedFiles(name, files);
}

/** Files from <input type="file" webkitdirectory> or a multi-file pick, matched by base name. */
export async function pickedModelFiles(name: string, picked: readonly File[]): Promise<ModelFiles> {
  const files = new Map<string, Blob>();
  for (const f of picked) files.set(f.name, f);
  return fromNamedFiles(name, files);
}

export function loadModelFiles(source: ModelSource): Promise<ModelFiles> {
  return source.kind === "url" ? fetchModelFiles(source.name, source.base) : pickedModelFiles(source.name, source.files);
}

async function fromNamedFiles(name: string, files: Map<string, Blob>): Promise<ModelFiles> {
  const need = (f: string, what: string): Blob => {
    const b = files.get(f);
    if (!b) throw new Error(`${f} is missing (${what}); a model folder needs config.json, tokenizer.json and model.safetensors (or a sharded index)`);
    return b;
  };
  const config = await parseJson(need("config.json", "the model's config"), "config.json");
  const tokenizer = await parseJson(need("tokenizer.json", "the Hugging Face tokenizer"), "tokenizer.json");
  if (typeof tokenizer !== "object" || tokenizer === null || !("model" in tokenizer)) throw new Error(`tokenizer.json: not a tokenizer.json (no "model" section)`);
  const tcBlob = files.get("tokenizer_config.json");
  const tokenizerConfig = tcBlob ? ((await parseJson(tcBlob, "tokenizer_config.json")) as object) : {};
  const weights = new Map<string, Blob>();
  let weightMap: Record<string, string> | null = null;
  const index = files.get("model.safetensors.index.json");
  if (index) {
    const json = (await parseJson(index, "model.safetensors.index.json")) as { weight_map?: Record<string, string> };
    if (!json.weight_map || typeof json.weight_map !== "object") throw new Error("model.safetensors.index.json: no weight_map");
    weightMap = json.weight_map;
    for (const shard of new Set(Object.values(weightMap))) weights.set(shard, need(shard, "a shard named by model.safetensors.index.json"));
  } else {
    weights.set("model.safetensors", need("model.safetensors", "the weights"));
  }
  return { name, config, tokenizer, tokenizerConfig, weights, weightMap };
}

export function buildTokenizer(m: ModelFiles): HfTokenizer {
  try {
    return new HfTokenizer(m.tokenizer, m.tokenizerConfig);
  } catch (e) {
    throw new Error(`tokenizer.json: cannot build the tokenizer: ${(e as Error).message}`, { cause: e });
  }
}

/** A fresh f32 model on `backend` with the checkpoint's weights. */
export async function buildModel(m: ModelFiles, backend: Backend): Promise<LlamaForCausalLM> {
  if (parseBnbConfig(m.config, "config.json")) {
    throw new Error("config.json: a bitsandbytes 4-bit checkpoint; the page loads dense (F32/F16/BF16) checkpoints; pick method qlora to quantize on load");
  }
  const config = parseLlamaConfig(m.config, "config.json");
  const shards = new Map<string, SafetensorsFile>();
  const model = new LlamaForCausalLM(config, { backend, dtype: "f32" });
  try {
    for (const [file, blob] of m.weights) shards.set(file, await openSafetensors(blob, { label: file }));
    const where = new Map<string, SafetensorsFile>();
    for (const [file, f] of shards) {
      for (const n of f.names) if (!m.weightMap || m.weightMap[n] === file) where.set(n, f);
    }
    const given = new Map<string, TensorSpec>();
    const bad: string[] = [];
    for (const [n, f] of where) {
      if (IGNORED.test(n)) continue;
      const info = f.tensors[n];
      if (!["F32", "F16", "BF16", "F64"].includes(info.dtype)) bad.push(`${n}: dtype ${info.dtype}, expected a float weight (F32, F16 or BF16)`);
      given.set(n, { shape: info.shape, dtype: "f32" });
    }
    if (bad.length) throw new Error(bad.join("\n"));
    model.checkStateDict(given, { source: [...m.weights.keys()].join(", ") });
    for (const n of given.keys()) {
      const target = model.tensorAt(n);
      if (!target) continue;
      const f32 = toFloat32(await where.get(n)!.read(n));
      scope(() => target.assign(tensor(f32, { shape: target.shape, dtype: "f32", backend })));
    }
  } catch (e) {
    model.dispose();
    throw e;
  } finally {
    for (const f of shards.values()) await f.close().catch(() => {});
  }
  return model;
}

/** Raw little-endian tensor bytes from safetensors -> f32 values. */
export function toFloat32(data: TensorData): Float32Array {
  const raw = toTypedArray(data);
  if (data.dtype === "F32") return raw as Float32Array;
  if (data.dtype === "F64") return Float32Array.from(raw as Float64Array);
  if (data.dtype === "F16" || data.dtype === "BF16") return toF32(data.dtype === "F16" ? "f16" : "bf16", raw as Uint16Array);
  throw new Error(`dtype ${data.dtype} is not a float tensor`);
}
