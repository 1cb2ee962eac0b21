/**
 * bitsandbytes 4-bit Hugging Face directories: config.json's quantization_config and the
 * per-layer quant-state tensors (docs/nf4-format.md section 4). loadHfModel calls in here when
 * the config says `quant_method: "bitsandbytes"` with 4-bit loading; saveHfModel writes the same.
 */
import { BnbFormatError, type BnbTensors, type QuantDtype, type QuantType, fromBnbTensors } from "@lowrank/nf4";
import type { ShardedSafetensors } from "@lowrank/safetensors";
import type { Backend, DType } from "@lowrank/tensor";
import { Embedding, Linear } from "../layers.ts";
import type { Module, TensorSpec } from "../module.ts";
import { setQuantizationConfig } from "../quantize-model.ts";
import { type ComputeDtype, QuantizedLinear } from "../quantized.ts";

/** What a bnb-4bit config.json says (the tensors themselves are authoritative per layer). */
export interface BnbConfig {
  quantType: QuantType;
  doubleQuant: boolean;
  skipModules: string[] | null;
  computeDtype: QuantDtype;
}

/**
 * The 4-bit bitsandbytes settings of a config.json object, or null when it has no
 * quantization_config or one that is not bnb 4-bit (parseLlamaConfig rejects those by name).
 */
export function parseBnbConfig(json: unknown, file: string): BnbConfig | null {
  if (typeof json !== "object" || json === null || Array.isArray(json)) return null;
  const q = (json as Record<string, unknown>).quantization_config;
  if (typeof q !== "object" || q === null) return null;
  const c = q as Record<string, unknown>;
  if (c.quant_method !== "bitsandbytes" || !(c.load_in_4bit === true || c._load_in_4bit === true)) return null;
  const bad = (field: string, why: string) => new Error(`${file}: quantization_config.${field} = ${JSON.stringify(c[field])} ${why}`);
  // transformers' BitsAndBytesConfig defaults: fp4, no double quant, float32 compute.
  const quantType = c.bnb_4bit_quant_type ?? "fp4";
  if (quantType !== "nf4" && quantType !== "fp4") throw bad("bnb_4bit_quant_type", 'is not supported (expected "nf4" or "fp4")');
  const dq = c.bnb_4bit_use_double_quant ?? false;
  if (typeof dq !== "boolean") throw bad("bnb_4bit_use_double_quant", "must be true or false");
  const storage = c.bnb_4bit_quant_storage ?? "uint8";
  if (storage !== "uint8") throw bad("bnb_4bit_quant_storage", 'is not supported (only "uint8" packing)');
  const compute = c.bnb_4bit_compute_dtype ?? "float32";
  if (compute !== "float32" && compute !== "float16" && compute !== "bfloat16") throw bad("bnb_4bit_compute_dtype", "must be float32, float16 or bfloat16");
  const skip = c.llm_int8_skip_modules ?? null;
  if (skip !== null && !(Array.isArray(skip) && skip.every((s) => typeof s === "string")))
    throw bad("llm_int8_skip_modules", "must be null or a list of module names");
  return { quantType, doubleQuant: dq, skipModules: skip as string[] | null, computeDtype: compute };
}

/** The config without quantization_config (what the architecture parser should see). */
export function withoutQuantizationConfig(json: unknown): unknown {
  const { quantization_config: _, ...rest } = json as Record<string, unknown>;
  return rest;
}

const QUANT_STATE = /^(?:(.*)\.)?weight\.quant_state\.bitsandbytes__(nf4|fp4)$/;

/**
 * Turn every Linear that the checkpoint stores in 4-bit into a QuantizedLinear built from its
 * tensors (fromBnbTensors validates dtypes, shapes and the quant-state JSON). Returns the
 * checkpoint names consumed, with their specs, so the dense loader skips them. Biases stay
 * parameters of the new layer and load with the dense tensors.
 */
export async function loadBnbLayers(
  model: Module,
  ckpt: ShardedSafetensors,
  where: (name: string) => string,
  cfg: BnbConfig,
  opts: { backend: Backend; dtype: DType },
): Promise<Map<string, TensorSpec>> {
  const consumed = new Map<string, TensorSpec>();
  const embeddings = new Set(
    model
      .namedModules()
      .filter(([, m]) => m instanceof Embedding)
      .map(([, m]) => (m as Embedding).weight),
  );
  const computeDtype: ComputeDtype = opts.dtype === "f16" || opts.dtype === "bf16" ? opts.dtype : "f32";
  for (const name of ckpt.names) {
    const match = QUANT_STATE.exec(name);
    if (!match) continue;
    const path = match[1] ?? "";
    const prefix = path ? `${path}.` : "";
    const file = where(name);
    let target: Module;
    try {
      target = model.getSubmodule(path);
    } catch {
      throw new Error(`${file}: tensor "${name}": the model has no module "${path}"`);
    }
    if (!(target instanceof Linear)) throw new Error(`${file}: tensor "${name}": "${path}" is not a Linear; only Linear layers can be 4-bit`);
    if (embeddings.has(target.weight)) throw new Error(`${file}: tensor "${name}": "${path}" is tied to the input embeddings and cannot be 4-bit`);
    if (match[2] !== cfg.quantType) {
      throw new Error(`${file}: tensor "${name}" is ${match[2]} but config.json's quantization_config.bnb_4bit_quant_type is "${cfg.quantType}"`);
    }
    const keys = ckpt.names.filter((k) => k === `${prefix}weight` || k.startsWith(`${prefix}weight.`));
    const tensors: BnbTensors = {};
    for (const k of keys) {
      const t = await ckpt.read(k);
      if (t.dtype !== "U8" && t.dtype !== "F32") throw new Error(`${where(k)}: tensor "${k}" has dtype ${t.dtype}; bitsandbytes 4-bit tensors are U8 or F32`);
      tensors[k] = { dtype: t.dtype, shape: [...t.shape], data: t.data };
    }
    let state;
    try {
      state = fromBnbTensors(prefix, tensors);
    } catch (e) {
      if (e instanceof BnbFormatError) throw new Error(`${file}: ${e.message}`, { cause: e });
      throw e;
    }
    const [out, inF] = state.shape;
    if (state.shape.length !== 2 || out !== target.outFeatures || inF !== target.inFeatures) {
      throw new Error(
        `${file}: tensor "${name}": shape [${state.shape.join(", ")}] does not match ${path} = Linear(in ${target.inFeatures}, out ${
          target.outFeatures
        }), expected [${target.outFeatures}, ${target.inFeatures}]`,
      );
    }
    // The JSON bytes are kept as stored, so a file written by Python's bnb re-saves byte for byte.
    const q = new QuantizedLinear(state, { backend: opts.backend, computeDtype, bias: target.bias, stateJson: tensors[name].data });
    model.setSubmodule(path, q);
    target.weight.dispose(); // the placeholder
    for (const k of keys) {
      const info = ckpt.tensors[k];
      consumed.set(k, { shape: info.shape, dtype: info.dtype === "U8" ? "u8" : "f32" });
    }
  }
  if (consumed.size === 0)
    throw new Error(`config.json says bitsandbytes 4-bit, but the checkpoint has no "*.weight.quant_state.bitsandbytes__${cfg.quantType}" tensors`);
  setQuantizationConfig(model, { quantType: cfg.quantType, doubleQuant: cfg.doubleQuant, skipModules: cfg.skipModules, computeDtype: cfg.computeDtype });
  return consumed;
}
