// bitsandbytes' safetensors layout for one quantized Linear weight (Linear4bit
// `_save_to_state_dict` + `QuantState.as_dict(packed=True)`), and its reader.

import { pythonJsonDumps, type PyJson } from "./python-repr.ts";
import {
  assertBlocksize,
  assertQuantDtype,
  checkState,
  isNested,
  NESTED_BLOCKSIZE,
  numBlocks,
  numelOf,
  type QuantDtype,
  type QuantState,
  type QuantType,
} from "./quantize.ts";

/** A raw tensor as safetensors stores it: little-endian bytes. */
export interface BnbTensor {
  dtype: "U8" | "F32";
  shape: number[];
  data: Uint8Array;
}

export type BnbTensors = Record<string, BnbTensor>;

/** Raised for malformed bitsandbytes tensors; the message names the key. */
export class BnbFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BnbFormatError";
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function f32Bytes(a: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) view.setFloat32(i * 4, a[i], true);
  return out;
}

function bytesToF32(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.byteLength / 4);
  // Copying also fixes alignment: safetensors data offsets need not be 4-aligned.
  if (LITTLE_ENDIAN) new Uint8Array(out.buffer).set(bytes);
  else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  }
  return out;
}

/** The quant-state dict's non-tensor fields, in `as_dict()` order. */
function quantStateDict(state: QuantState): Record<string, PyJson> {
  const d: Record<string, PyJson> = {
    quant_type: state.quantType,
    blocksize: state.blocksize,
    dtype: state.dtype,
    shape: [...state.shape],
  };
  if (isNested(state.absmax)) {
    d.nested_blocksize = state.absmax.nestedBlocksize;
    d.nested_dtype = "float32";
    // `self.offset.item()`: the float32 offset widened to a Python float.
    d.nested_offset = { float: state.absmax.nestedOffset };
  }
  return d;
}

/**
 * The exact JSON text bnb stores in `weight.quant_state.bitsandbytes__<type>`, e.g.
 * `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096],
 * "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012299999594688416}`.
 */
export function quantStateJson(state: QuantState): string {
  return pythonJsonDumps(quantStateDict(state));
}

/**
 * One quantized Linear weight as bnb's key set under `prefix` (e.g.
 * "model.layers.0.self_attn.q_proj."). Shares memory with `state` where the bytes are
 * already in place (packed codes, uint8 absmax, float32 arrays on little-endian hosts).
 * A bias, if any, is the caller's (`<prefix>bias`, unquantized).
 */
export function toBnbTensors(prefix: string, state: QuantState): BnbTensors {
  const n = checkState(state);
  const nb = numBlocks(n, state.blocksize);
  const w = `${prefix}weight`;
  const out: BnbTensors = {};
  out[w] = { dtype: "U8", shape: [(n + 1) >> 1, 1], data: state.packed };
  const a = state.absmax;
  if (isNested(a)) {
    out[`${w}.absmax`] = { dtype: "U8", shape: [nb], data: a.qabsmax };
    out[`${w}.quant_map`] = { dtype: "F32", shape: [16], data: f32Bytes(state.quantMap) };
    out[`${w}.nested_absmax`] = { dtype: "F32", shape: [a.nestedAbsmax.length], data: f32Bytes(a.nestedAbsmax) };
    out[`${w}.nested_quant_map`] = { dtype: "F32", shape: [256], data: f32Bytes(a.nestedCode) };
  } else {
    out[`${w}.absmax`] = { dtype: "F32", shape: [nb], data: f32Bytes(a) };
    out[`${w}.quant_map`] = { dtype: "F32", shape: [16], data: f32Bytes(state.quantMap) };
  }
  const json = new TextEncoder().encode(quantStateJson(state));
  out[`${w}.quant_state.bitsandbytes__${state.quantType}`] = { dtype: "U8", shape: [json.length], data: json };
  return out;
}

const QS_PREFIX = "quant_state.bitsandbytes__";
const TENSOR_KEYS = ["absmax", "quant_map", "nested_absmax", "nested_quant_map"];
const JSON_KEYS = ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"];

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function expectTensor(tensors: BnbTensors, key: string, dtype: "U8" | "F32", shape: number[]): BnbTensor {
  const t = tensors[key];
  if (!t) throw new BnbFormatError(`missing tensor "${key}" (expected ${dtype} [${shape.join(", ")}])`);
  if (t.dtype !== dtype || !sameShape(t.shape, shape)) {
    throw new BnbFormatError(`tensor "${key}" is ${t.dtype} [${t.shape.join(", ")}], expected ${dtype} [${shape.join(", ")}]`);
  }
  const bytes = numelOf(shape) * (dtype === "F32" ? 4 : 1);
  if (t.data.byteLength !== bytes) {
    throw new BnbFormatError(`tensor "${key}" holds ${t.data.byteLength} bytes, expected ${bytes} for ${dtype} [${shape.join(", ")}]`);
  }
  return t;
}

function parseQuantStateJson(key: string, bytes: Uint8Array): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new BnbFormatError(`tensor "${key}" is not UTF-8 JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new BnbFormatError(`tensor "${key}" must hold a JSON object`);
  }
  const obj = parsed as Record<string, unknown>;
  for (const k of Object.keys(obj)) {
    if (!JSON_KEYS.includes(k)) throw new BnbFormatError(`"${key}": unknown quant-state field "${k}" (expected ${JSON_KEYS.join(", ")})`);
  }
  return obj;
}

/**
 * Rebuild a QuantState from bnb's tensors under `prefix` (other keys, such as other
 * layers or `<prefix>bias`, are ignored). Validates like bnb's `QuantState.from_dict`
 * and additionally checks every dtype, shape and byte length.
 */
export function fromBnbTensors(prefix: string, tensors: BnbTensors): QuantState {
  const w = `${prefix}weight`;
  const qsKeys = Object.keys(tensors).filter((k) => k.startsWith(`${w}.quant_state`));
  if (qsKeys.length !== 1) {
    throw new BnbFormatError(
      `expected exactly one "${w}.${QS_PREFIX}{nf4|fp4}" tensor, found ${qsKeys.length}${qsKeys.length ? `: ${qsKeys.join(", ")}` : ""}`,
    );
  }
  const qsKey = qsKeys[0];
  const suffix = qsKey.slice(w.length + 1);
  if (suffix !== `${QS_PREFIX}nf4` && suffix !== `${QS_PREFIX}fp4`) {
    throw new BnbFormatError(`"${qsKey}": the quant-state key must end in ${QS_PREFIX}nf4 or ${QS_PREFIX}fp4`);
  }
  const keyType = suffix.slice(QS_PREFIX.length) as QuantType;
  const qsTensor = tensors[qsKey];
  if (qsTensor.dtype !== "U8" || qsTensor.shape.length !== 1 || qsTensor.shape[0] !== qsTensor.data.byteLength) {
    throw new BnbFormatError(`"${qsKey}" must be U8 [${qsTensor.data.byteLength}], got ${qsTensor.dtype} [${qsTensor.shape.join(", ")}]`);
  }
  const qs = parseQuantStateJson(qsKey, qsTensor.data);

  for (const k of Object.keys(tensors)) {
    if (!k.startsWith(`${w}.`) || k === qsKey) continue;
    const field = k.slice(w.length + 1);
    if (!TENSOR_KEYS.includes(field)) throw new BnbFormatError(`unexpected tensor "${k}" (valid: ${TENSOR_KEYS.map((t) => `${w}.${t}`).join(", ")})`);
  }

  if (qs.quant_type !== keyType) {
    throw new BnbFormatError(`"${qsKey}": quant_type is ${JSON.stringify(qs.quant_type)} but the key says "${keyType}"`);
  }
  const blocksize = qs.blocksize;
  if (typeof blocksize !== "number") throw new BnbFormatError(`"${qsKey}": blocksize must be a number, got ${JSON.stringify(blocksize)}`);
  try {
    assertBlocksize(blocksize);
    assertQuantDtype(String(qs.dtype));
  } catch (e) {
    throw new BnbFormatError(`"${qsKey}": ${(e as Error).message}`);
  }
  const dtype = qs.dtype as QuantDtype;
  const shape = qs.shape;
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new BnbFormatError(`"${qsKey}": shape must be a non-empty list of positive integers, got ${JSON.stringify(shape)}`);
  }
  const n = numelOf(shape as number[]);
  const nb = numBlocks(n, blocksize);

  const weight = expectTensor(tensors, w, "U8", [(n + 1) >> 1, 1]);
  const quantMap = bytesToF32(expectTensor(tensors, `${w}.quant_map`, "F32", [16]).data);
  const nested = `${w}.nested_absmax` in tensors;
  const nestedFields = ["nested_blocksize", "nested_dtype", "nested_offset"].filter((k) => k in qs);
  if (nested !== nestedFields.length > 0 || (nested && nestedFields.length !== 3)) {
    throw new BnbFormatError(
      `"${qsKey}": nested_blocksize, nested_dtype and nested_offset must be present exactly when "${w}.nested_absmax" is ` +
        `(tensor ${nested ? "present" : "absent"}, fields: ${nestedFields.join(", ") || "none"})`,
    );
  }

  let absmax: QuantState["absmax"];
  if (nested) {
    if (qs.nested_blocksize !== NESTED_BLOCKSIZE) {
      throw new BnbFormatError(
        `"${qsKey}": nested_blocksize must be ${NESTED_BLOCKSIZE} (the only size bnb implements), got ${JSON.stringify(qs.nested_blocksize)}`,
      );
    }
    if (qs.nested_dtype !== "float32") throw new BnbFormatError(`"${qsKey}": nested_dtype must be "float32", got ${JSON.stringify(qs.nested_dtype)}`);
    const offset = qs.nested_offset;
    if (typeof offset !== "number" || !Number.isFinite(offset)) {
      throw new BnbFormatError(`"${qsKey}": nested_offset must be a finite number, got ${JSON.stringify(offset)}`);
    }
    absmax = {
      qabsmax: expectTensor(tensors, `${w}.absmax`, "U8", [nb]).data.slice(),
      nestedAbsmax: bytesToF32(expectTensor(tensors, `${w}.nested_absmax`, "F32", [numBlocks(nb, NESTED_BLOCKSIZE)]).data),
      nestedOffset: Math.fround(offset),
      nestedBlocksize: NESTED_BLOCKSIZE,
      nestedCode: bytesToF32(expectTensor(tensors, `${w}.nested_quant_map`, "F32", [256]).data),
    };
  } else {
    if (`${w}.nested_quant_map` in tensors) throw new BnbFormatError(`"${w}.nested_quant_map" is present without "${w}.nested_absmax"`);
    absmax = bytesToF32(expectTensor(tensors, `${w}.absmax`, "F32", [nb]).data);
  }

  return { packed: weight.data.slice(), absmax, quantMap, quantType: keyType, blocksize, shape: shape as number[], dtype };
}

export interface BnbQuantizationConfigOptions {
  /** Default "nf4" (transformers' own default is "fp4"). */
  quantType?: QuantType;
  /** Default true (transformers' own default is false). */
  doubleQuant?: boolean;
  /** Default "bfloat16". */
  computeDtype?: QuantDtype;
  /** Modules kept dense (`llm_int8_skip_modules`); default null. */
  skipModules?: string[] | null;
}

/**
 * The `quantization_config` block of an HF config.json for a bnb 4-bit model, keys in
 * the order transformers writes them. `llm_int8_threshold` is the float 6.0; JSON.stringify
 * writes it as 6, which transformers reads back the same.
 */
export function bnbQuantizationConfig(options: BnbQuantizationConfigOptions = {}): Record<string, unknown> {
  const quantType = options.quantType ?? "nf4";
  if (quantType !== "nf4" && quantType !== "fp4") throw new RangeError(`quantType must be "nf4" or "fp4", got ${JSON.stringify(quantType)}`);
  const computeDtype = options.computeDtype ?? "bfloat16";
  assertQuantDtype(computeDtype);
  return {
    quant_method: "bitsandbytes",
    _load_in_4bit: true,
    _load_in_8bit: false,
    load_in_4bit: true,
    load_in_8bit: false,
    bnb_4bit_quant_type: quantType,
    bnb_4bit_use_double_quant: options.doubleQuant ?? true,
    bnb_4bit_compute_dtype: computeDtype,
    bnb_4bit_quant_storage: "uint8",
    llm_int8_skip_modules: options.skipModules ? [...options.skipModules] : null,
    llm_int8_threshold: 6.0,
    llm_int8_has_fp16_weight: false,
    llm_int8_enable_fp32_cpu_offload: false,
  };
}
