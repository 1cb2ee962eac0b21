/**
 * Whole-model 4-bit quantization (transformers' `load_in_4bit` path, done on a loaded model):
 * every Linear except the skipped modules and a head tied to the embeddings becomes a
 * QuantizedLinear. Defaults are the QLoRA recipe, NF4 + double quantization at blocksize 64
 * (bnb and transformers default to fp4, and transformers to no double quant: see @lowrank/nf4).
 */
import { type BnbQuantizationConfigOptions, type QuantType, bnbQuantizationConfig } from "@lowrank/nf4";
import { byteSize } from "@lowrank/tensor";
import { Embedding, Linear } from "./layers.ts";
import type { Module } from "./module.ts";
import { type ComputeDtype, QuantizedLinear, quantDtypeOf } from "./quantized.ts";

export interface QuantizeModelOptions {
  /** Default "nf4". */
  quantType?: QuantType;
  /** Default 64. */
  blocksize?: number;
  /** Default true. */
  doubleQuant?: boolean;
  /**
   * Modules kept dense (transformers' `llm_int8_skip_modules`), matched against dotted names by
   * whole segments: "lm_head" skips `lm_head`, "mlp" skips every `...mlp.*_proj`. Default ["lm_head"].
   */
  skipModules?: string[];
  /** Forward dtype of the new layers (default: the weight's dtype when it is f16 and the backend has it, else f32). */
  computeDtype?: ComputeDtype;
  /** Called after each layer is quantized (progress). */
  onLayer?: (name: string, layer: QuantizedLinear) => void;
}

export interface QuantizeModelReport {
  /** Dotted names of the layers that are now QuantizedLinear. */
  quantized: string[];
  /** Linear layers left dense, with the reason. */
  skipped: { name: string; reason: string }[];
}

/** The settings a model was quantized or loaded with, for saving its config.json. */
const configs = new WeakMap<Module, BnbQuantizationConfigOptions>();

/** Whether `name` (dotted) matches one of `patterns` by whole segments. */
export function matchesModule(name: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => `.${name}.`.includes(`.${p}.`));
}

/**
 * Replace every Linear in `model` (except skipped ones and heads tied to an embedding) by a
 * QuantizedLinear, in place, through setSubmodule. The dense weights are freed. Biases move over.
 */
export async function quantizeModel(model: Module, opts: QuantizeModelOptions = {}): Promise<QuantizeModelReport> {
  const quantType = opts.quantType ?? "nf4";
  const blocksize = opts.blocksize ?? 64;
  const doubleQuant = opts.doubleQuant ?? true;
  const skipModules = opts.skipModules ?? ["lm_head"];
  const embeddings = new Set(
    model
      .namedModules()
      .filter(([, m]) => m instanceof Embedding)
      .map(([, m]) => (m as Embedding).weight),
  );
  const report: QuantizeModelReport = { quantized: [], skipped: [] };
  let computeDtype: ComputeDtype | undefined;
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof Linear)) continue;
    if (matchesModule(name, skipModules)) {
      report.skipped.push({ name, reason: "in skipModules" });
      continue;
    }
    if (embeddings.has(m.weight)) {
      report.skipped.push({ name, reason: "tied to the input embeddings" });
      continue;
    }
    const w = m.weight;
    const cd = opts.computeDtype ?? (w.dtype === "f16" && w.backend.dtypes.includes("f16") ? "f16" : "f32");
    const q = await QuantizedLinear.fromLinear(m, { quantType, blocksize, doubleQuant, computeDtype: cd, dtype: quantDtypeOf(w.dtype) });
    model.setSubmodule(name, q);
    w.dispose();
    computeDtype ??= cd;
    report.quantized.push(name);
    opts.onLayer?.(name, q);
  }
  const labels = { f32: "float32", f16: "float16", bf16: "bfloat16" } as const;
  setQuantizationConfig(model, { quantType, doubleQuant, skipModules, computeDtype: labels[computeDtype ?? "f32"] });
  return report;
}

/** Record the settings to write as config.json's quantization_config (loaders call this too). */
export function setQuantizationConfig(model: Module, cfg: BnbQuantizationConfigOptions): void {
  configs.set(model, { ...cfg });
}

/**
 * The config.json `quantization_config` block for a model holding QuantizedLinear layers, or
 * null when it has none. Layers must agree on quant type and double quant (one config covers all).
 */
export function quantizationConfigOf(model: Module): Record<string, unknown> | null {
  const layers = model.namedModules().filter(([, m]) => m instanceof QuantizedLinear) as [string, QuantizedLinear][];
  if (layers.length === 0) return null;
  const [first, q0] = layers[0];
  for (const [name, q] of layers) {
    if (q.quantType !== q0.quantType || q.doubleQuant !== q0.doubleQuant) {
      throw new Error(
        `quantization_config: ${name} is ${q.quantType}${q.doubleQuant ? " + double quant" : ""} but ${first} is ` +
          `${q0.quantType}${q0.doubleQuant ? " + double quant" : ""}; one config.json cannot describe both`,
      );
    }
  }
  const recorded = configs.get(model);
  return bnbQuantizationConfig({ ...recorded, quantType: q0.quantType, doubleQuant: q0.doubleQuant });
}

export interface QuantizedLayerMemory {
  name: string;
  shape: [number, number];
  blocksize: number;
  doubleQuant: boolean;
  /** Packed codes + absmax (+ nested absmax): nf4's quantizedBytes accounting. */
  bytes: number;
  bitsPerParam: number;
}

export interface QuantizedMemoryReport {
  layers: QuantizedLayerMemory[];
  /** Σ out·in over the quantized layers. */
  quantizedParams: number;
  /** Σ bytes over the quantized layers (codes + scales). */
  quantizedBytes: number;
  /** quantizedBytes · 8 / quantizedParams: 4.127 with double quant at blocksize 64, 4.5 without. */
  bitsPerParam: number;
  /** Constant-size per-layer tables: quant_map, nested_quant_map and the quant-state JSON. */
  tableBytes: number;
  /** Everything else in the state dict (embeddings, norms, untied head, biases). */
  denseParams: number;
  denseBytes: number;
  /** All stored bytes: quantizedBytes + tableBytes + denseBytes. */
  totalBytes: number;
  /** The same model with every parameter in f32. */
  f32Bytes: number;
}

/** Bytes of the stored base model, split into the 4-bit part and the rest. */
export function quantizedMemoryReport(model: Module): QuantizedMemoryReport {
  const layers: QuantizedLayerMemory[] = [];
  const owned = new Set<string>();
  let tableBytes = 0;
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof QuantizedLinear)) continue;
    const prefix = name ? `${name}.` : "";
    let bytes = 0;
    for (const [key, t] of m.stateDict()) {
      if (key === "bias") continue; // dense
      owned.add(prefix + key);
      const b = t.size * byteSize(t.dtype);
      if (key === "weight" || key === "weight.absmax" || key === "weight.nested_absmax") bytes += b;
      else tableBytes += b;
    }
    const n = m.outFeatures * m.inFeatures;
    layers.push({ name, shape: [m.outFeatures, m.inFeatures], blocksize: m.blocksize, doubleQuant: m.doubleQuant, bytes, bitsPerParam: (bytes * 8) / n });
  }
  let denseParams = 0;
  let denseBytes = 0;
  for (const [key, t] of model.stateDict()) {
    if (owned.has(key)) continue;
    denseParams += t.size;
    denseBytes += t.size * byteSize(t.dtype);
  }
  const quantizedParams = layers.reduce((s, l) => s + l.shape[0] * l.shape[1], 0);
  const quantizedBytes = layers.reduce((s, l) => s + l.bytes, 0);
  return {
    layers,
    quantizedParams,
    quantizedBytes,
    bitsPerParam: quantizedParams ? (quantizedBytes * 8) / quantizedParams : 0,
    tableBytes,
    denseParams,
    denseBytes,
    totalBytes: quantizedBytes + tableBytes + denseBytes,
    f32Bytes: 4 * (quantizedParams + denseParams),
  };
}
