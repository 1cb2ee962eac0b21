/**
 * Checks an uploaded adapter on disk before it enters the registry, without loading it:
 *
 * - adapter_config.json parses with lora's configFromJson, and its scaling is sane (lora_alpha
 *   finite, |lora_alpha / r| and every alpha_pattern entry at most MAX_SCALING);
 * - adapter_model.safetensors has a valid header (@lowrank/safetensors), float tensors with PEFT
 *   keys, exactly the shapes the base model needs for that config (lora's planInjection: the same
 *   plan loadAdapter follows), and only finite values of a sane magnitude.
 *
 * The values are scanned in CHUNK-byte reads, so memory stays a few MiB whatever the file's size.
 * Every error names the form field (and the tensor or config key) the client has to fix.
 */
import { open } from "node:fs/promises";
import type { Module } from "@lowrank/nn/node";
import { type LoraConfig, configFromJson, planInjection } from "@lowrank/lora/node";
import { openSafetensors } from "@lowrank/safetensors/node";
import { errorMessage, invalid } from "../errors.ts";
import { parseJson } from "../http/validate.ts";

export const CONFIG_FIELD = "adapter_config.json";
export const WEIGHTS_FIELD = "adapter_model.safetensors";
/** Largest |lora_alpha / r| (or / sqrt(r) with use_rslora) accepted; typical adapters use 0.1-64. */
export const MAX_SCALING = 1000;
/** Largest |weight| accepted: LoRA factors live around 1e-3..10; beyond this the delta overflows f32 at inference. */
export const MAX_ABS_WEIGHT = 1e6;
const CHUNK = 4 << 20;
const PEFT_PREFIX = "base_model.model.";

export function checkConfigText(text: string): { json: Record<string, unknown>; config: LoraConfig } {
  const json = parseJson(text, CONFIG_FIELD) as Record<string, unknown>;
  let config: LoraConfig;
  try {
    config = configFromJson(json, CONFIG_FIELD);
  } catch (e) {
    throw invalid(errorMessage(e), CONFIG_FIELD);
  }
  const scale = (alpha: number, r: number) => (config.use_rslora ? alpha / Math.sqrt(r) : alpha / r);
  const bad = (key: string, alpha: number, r: number) =>
    invalid(
      `${CONFIG_FIELD}: ${key} = ${alpha} with r = ${r} scales the adapter by ${scale(alpha, r).toExponential(
        3,
      )}; the limit is ${MAX_SCALING} in magnitude (typical adapters use lora_alpha between r/4 and 4r)`,
      `${CONFIG_FIELD}.${key.split("[")[0]}`,
    );
  if (!Number.isFinite(config.lora_alpha) || Math.abs(scale(config.lora_alpha, config.r)) > MAX_SCALING) throw bad("lora_alpha", config.lora_alpha, config.r);
  for (const [k, a] of Object.entries(config.alpha_pattern ?? {})) {
    const r = config.rank_pattern?.[k] ?? config.r;
    if (!Number.isFinite(a) || Math.abs(scale(a, r)) > MAX_SCALING) throw bad(`alpha_pattern[${JSON.stringify(k)}]`, a, r);
  }
  return { json, config };
}

/** Whether the header-only shape check covers this config (else the caller does a trial load). */
export function headerCheckCovers(config: LoraConfig): boolean {
  return config.bias === "none" && !config.modules_to_save?.length;
}

/**
 * Validate the weights file against the config and the base model. Returns the tensor count.
 * `model` is the served base (its module tree is only read).
 */
export async function checkWeightsFile(path: string, config: LoraConfig, model: Module | null): Promise<number> {
  let file;
  try {
    file = await openSafetensors(path, { label: WEIGHTS_FIELD });
  } catch (e) {
    throw invalid(`${WEIGHTS_FIELD} is not a valid safetensors file: ${errorMessage(e)}`, WEIGHTS_FIELD);
  }
  try {
    if (!file.names.length) throw invalid(`${WEIGHTS_FIELD} holds no tensors`, WEIGHTS_FIELD);
    for (const n of file.names) {
      const t = file.tensors[n];
      if (!["F32", "F16", "BF16", "F64"].includes(t.dtype))
        throw invalid(`${WEIGHTS_FIELD}: tensor ${n} is ${t.dtype}; adapter weights are float tensors`, WEIGHTS_FIELD);
      if (!n.startsWith(PEFT_PREFIX)) throw invalid(`${WEIGHTS_FIELD}: tensor ${n} is not a PEFT key (they start with "${PEFT_PREFIX}")`, WEIGHTS_FIELD);
    }
    if (model && headerCheckCovers(config)) checkShapes(file.tensors, config, model);
    const fh = await open(path, "r");
    try {
      for (const n of file.names) await scanTensor(fh, n, file.tensors[n]);
    } finally {
      await fh.close();
    }
    return file.names.length;
  } finally {
    await file.close();
  }
}

type Header = Readonly<Record<string, { dtype: string; shape: readonly number[]; byteOffset: number; byteLength: number }>>;

/** The keys and shapes loadAdapter would expect, from lora's injection plan; mismatches named. */
function checkShapes(tensors: Header, config: LoraConfig, model: Module): void {
  let plan;
  try {
    plan = planInjection(model, config, { strictEntries: false });
  } catch (e) {
    throw invalid(`${CONFIG_FIELD} does not fit the served base model: ${errorMessage(e)}`, CONFIG_FIELD);
  }
  const expected = new Map<string, number[]>();
  for (const t of plan.targets) {
    const p = `${PEFT_PREFIX}${t.name}`;
    expected.set(`${p}.lora_A.weight`, [t.r, t.inFeatures]);
    expected.set(`${p}.lora_B.weight`, [t.outFeatures, t.r]);
    if (plan.config.use_dora) expected.set(`${p}.lora_magnitude_vector`, [t.outFeatures]);
  }
  const problems: string[] = [];
  for (const [k, shape] of expected) {
    const t = tensors[k];
    if (!t) problems.push(`missing: ${k}`);
    else if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
      problems.push(`${k}: shape [${t.shape.join(", ")}], expected [${shape.join(", ")}]`);
  }
  for (const k of Object.keys(tensors)) if (!expected.has(k)) problems.push(`unexpected: ${k}`);
  if (problems.length) {
    throw invalid(
      `the adapter does not fit base model weights (${problems.length} problem${problems.length > 1 ? "s" : ""}; r = ${config.r}): ${problems
        .slice(0, 8)
        .join("; ")}${problems.length > 8 ? `; ... and ${problems.length - 8} more` : ""}`,
      WEIGHTS_FIELD,
    );
  }
}

/** Refuse NaN, +-Inf and values beyond MAX_ABS_WEIGHT, naming the tensor and the first bad element. */
async function scanTensor(fh: import("node:fs/promises").FileHandle, name: string, t: Header[string]): Promise<void> {
  const size = t.dtype === "F64" ? 8 : t.dtype === "F32" ? 4 : 2;
  const step = CHUNK - (CHUNK % size);
  const buf = new Uint8Array(Math.min(step, Math.max(size, t.byteLength)));
  for (let off = 0; off < t.byteLength; off += step) {
    const len = Math.min(step, t.byteLength - off);
    const { bytesRead } = await fh.read(buf, 0, len, t.byteOffset + off);
    if (bytesRead !== len) throw invalid(`${WEIGHTS_FIELD}: tensor ${name} is truncated`, WEIGHTS_FIELD);
    const bad = firstBad(buf.subarray(0, len), t.dtype);
    if (bad) {
      const index = off / size + bad.index;
      throw invalid(
        `${WEIGHTS_FIELD}: tensor ${name} has ${bad.what} at element ${index}; adapter weights must be finite and at most ${MAX_ABS_WEIGHT} in magnitude`,
        WEIGHTS_FIELD,
      );
    }
  }
}

function firstBad(bytes: Uint8Array, dtype: string): { index: number; what: string } | null {
  const describe = (v: number) => (Number.isNaN(v) ? "NaN" : !Number.isFinite(v) ? (v > 0 ? "+Inf" : "-Inf") : `the value ${v.toExponential(3)}`);
  if (dtype === "F32" || dtype === "F64") {
    const a =
      dtype === "F32" ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : new Float64Array(bytes.buffer, bytes.byteOffset, bytes.length / 8);
    for (let i = 0; i < a.length; i++) {
      const v = a[i];
      if (!(v <= MAX_ABS_WEIGHT && v >= -MAX_ABS_WEIGHT)) return { index: i, what: describe(v) };
    }
    return null;
  }
  // Half precision: exponent all ones is Inf/NaN; f16's largest finite value (65504) is below the limit.
  const h = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
  const bf16 = dtype === "BF16";
  const expMask = bf16 ? 0x7f80 : 0x7c00;
  const manMask = bf16 ? 0x007f : 0x03ff;
  const limitBits = bf16 ? bf16Bits(MAX_ABS_WEIGHT) : 0x7bff;
  for (let i = 0; i < h.length; i++) {
    const x = h[i] & 0x7fff;
    if ((x & expMask) === expMask) return { index: i, what: x & manMask ? "NaN" : h[i] & 0x8000 ? "-Inf" : "+Inf" };
    if (bf16 && x > limitBits) return { index: i, what: describe(new Float32Array(new Uint32Array([x << 16]).buffer)[0] * (h[i] & 0x8000 ? -1 : 1)) };
  }
  return null;
}

function bf16Bits(v: number): number {
  return (new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16) & 0x7fff;
}
