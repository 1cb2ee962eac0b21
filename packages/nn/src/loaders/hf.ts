/**
 * Hugging Face model directories: config.json plus model.safetensors or a sharded
 * model.safetensors.index.json. Every failure names the file and the problem.
 */
import { type Backend, type DType, fromF32, getDefaultBackend, scope } from "@lowrank/tensor";
import { type LazyTensorInput, SafetensorsError, type ShardedSafetensors, openShardedSafetensors, writeShardedSafetensors } from "@lowrank/safetensors";
import { LlamaForCausalLM, llamaConfigToHf, parseLlamaConfig } from "../models/llama.ts";
import type { TensorSpec } from "../module.ts";
import { quantizationConfigOf } from "../quantize-model.ts";
import { loadBnbLayers, parseBnbConfig, withoutQuantizationConfig } from "./bnb.ts";
import { SOURCE_FLOATS, type SourceFloat, joinPath, readJson, tensorFromBytes } from "./files.ts";

export interface LoadOptions {
  backend?: Backend;
  /** Parameter dtype; F16/BF16/F32 weights are converted to it (default "f32"). */
  dtype?: DType;
}

/** Buffers old checkpoints saved that the model recomputes (transformers ignores them too). */
const IGNORED = /(^|\.)rotary_emb\.inv_freq$/;

export async function loadHfModel(dir: string, opts: LoadOptions = {}): Promise<LlamaForCausalLM> {
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") throw new TypeError(`loadHfModel: dtype must be f32, f16 or bf16, got ${dtype}`);
  const configPath = await joinPath(dir, "config.json");
  const raw = await readJson(configPath, "the model's config.json");
  const quant = parseBnbConfig(raw, configPath); // bitsandbytes 4-bit: Linear layers load as QuantizedLinear
  const config = parseLlamaConfig(quant ? withoutQuantizationConfig(raw) : raw, configPath);

  const ckpt = await openCheckpoint(dir);
  const model = new LlamaForCausalLM(config, { backend, dtype });
  try {
    const shardPaths = new Map<string, string>();
    for (const shard of ckpt.shards.keys()) shardPaths.set(shard, await joinPath(dir, shard));
    const where = (name: string) => shardPaths.get(ckpt.tensors[name].shard) as string;
    const consumed = quant ? await loadBnbLayers(model, ckpt, where, quant, { backend, dtype }) : new Map<string, TensorSpec>();
    const given = new Map<string, TensorSpec>(consumed);
    const badDtype: string[] = [];
    for (const name of ckpt.names) {
      if (IGNORED.test(name) || consumed.has(name)) continue;
      const info = ckpt.tensors[name];
      if (!SOURCE_FLOATS.includes(info.dtype)) badDtype.push(`${where(name)}: tensor "${name}" has dtype ${info.dtype}, expected a float weight (F32, F16 or BF16)`);
      given.set(name, { shape: info.shape, dtype }); // dtype is converted on read, so only names and shapes are compared here
    }
    if (badDtype.length) throw new Error(badDtype.join("\n"));
    const source = ckpt.index ?? [...shardPaths.values()][0];
    model.checkStateDict(given, { source });

    for (const name of given.keys()) {
      const target = model.tensorAt(name);
      if (!target || consumed.has(name)) continue;
      const data = await ckpt.read(name).catch((e: unknown) => {
        throw explain(e);
      });
      scope(() => target.assign(tensorFromBytes(data.data, data.dtype as SourceFloat, data.shape, dtype, backend)));
    }
  } catch (e) {
    model.dispose();
    throw explain(e);
  } finally {
    await ckpt.close().catch(() => {});
  }
  return model;
}

async function openCheckpoint(dir: string): Promise<ShardedSafetensors> {
  try {
    return await openShardedSafetensors(dir);
  } catch (e) {
    throw explain(e);
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
  const fs = await import("node:fs/promises");
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
  await fs.mkdir(dir, { recursive: true });
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
