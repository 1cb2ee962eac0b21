/**
 * Directory-to-directory conversion between dense Hugging Face checkpoints and bitsandbytes
 * 4-bit ones (what `lowrank quantize` / `lowrank dequantize` run). Tensors stream through one at
 * a time: only the 4-bit results (about 1/8 of f32) are held until they are written.
 */
import {
  BnbFormatError,
  type QuantDtype,
  type QuantState,
  type QuantType,
  bitsPerParam,
  bnbQuantizationConfig,
  dequantize4bit,
  fromBnbTensors,
  quantize4bit,
  quantizedBytes,
  toBnbTensors,
} from "@lowrank/nf4";
import { type LazyTensorInput, openShardedSafetensors, writeShardedSafetensors } from "@lowrank/safetensors";
import { type Backend, fromF32, getDefaultBackend, toF32, viewBytes } from "@lowrank/tensor";
import { Embedding, Linear } from "../layers.ts";
import { LlamaForCausalLM, parseLlamaConfig } from "../models/llama.ts";
import { matchesModule } from "../quantize-model.ts";
import { parseBnbConfig, withoutQuantizationConfig } from "./bnb.ts";
import { joinPath, readJson } from "./files.ts";
import { storage } from "@lowrank/safetensors";

export interface ConvertOptions {
  /** Progress lines (one per tensor and file). Default: silent. */
  log?: (line: string) => void;
  /** Largest output shard in bytes (default 5e9, like transformers). */
  maxShardBytes?: number;
}

export interface QuantizeCheckpointOptions extends ConvertOptions {
  /** Default "nf4". */
  quantType?: QuantType;
  /** Default 64. */
  blocksize?: number;
  /** Default true. */
  doubleQuant?: boolean;
  /** Linear modules kept dense, matched by dotted-name segments (default ["lm_head"]). */
  skipModules?: string[];
  /** Builds the placeholder module tree that says which tensors are Linear weights (default: the default backend). */
  backend?: Backend;
}

export interface ConvertReport {
  /** Files written to the output directory (weights, config.json, copied tokenizer files). */
  files: string[];
  /** Linear weights converted. */
  layers: string[];
  /** Elements in the converted weights, and their bytes before and after (codes + absmax; dense). */
  params: number;
  bytesIn: number;
  bytesOut: number;
}

const WEIGHT_FILE = /(\.safetensors|\.safetensors\.index\.json|\.bin|\.pt|\.pth|\.ckpt|\.h5|\.msgpack|\.gguf)$/;
const FLOAT_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
const LABEL_OF: Record<string, QuantDtype> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

async function checkDirs(inDir: string, outDir: string): Promise<void> {
  const { resolve } = storage();
  if (resolve(inDir) === resolve(outDir)) throw new Error(`${outDir}: the output directory must differ from the input directory`);
}

/** Copy the tokenizer and other small files (everything but weights and config.json). */
async function copyAuxFiles(inDir: string, outDir: string, log: (s: string) => void): Promise<string[]> {
  const fs = storage();
  const copied: string[] = [];
  for (const name of await fs.readdir(inDir)) {
    if (name === "config.json" || WEIGHT_FILE.test(name) || !(await fs.stat(await joinPath(inDir, name)))?.isFile) continue;
    await fs.copyFile(await joinPath(inDir, name), await joinPath(outDir, name));
    log(`copy: ${name}`);
    copied.push(name);
  }
  return copied;
}

async function writeConfig(outDir: string, config: unknown): Promise<void> {
  await storage().writeFile(await joinPath(outDir, "config.json"), JSON.stringify(config, null, 2) + "\n");
}

/**
 * Write a bitsandbytes 4-bit copy of the HF model in `inDir` to `outDir`: every Linear weight
 * (except skipped modules and a tied head) becomes bnb's key set, everything else is copied
 * byte for byte, and config.json gains quantization_config. Defaults: NF4 + double quant, 64.
 */
export async function quantizeHfCheckpoint(inDir: string, outDir: string, opts: QuantizeCheckpointOptions = {}): Promise<ConvertReport> {
  const log = opts.log ?? (() => {});
  const quantType = opts.quantType ?? "nf4";
  const blocksize = opts.blocksize ?? 64;
  const doubleQuant = opts.doubleQuant ?? true;
  const skipModules = opts.skipModules ?? ["lm_head"];
  await checkDirs(inDir, outDir);
  const configPath = await joinPath(inDir, "config.json");
  const raw = (await readJson(configPath, "the model's config.json")) as Record<string, unknown>;
  if (raw && typeof raw === "object" && raw.quantization_config != null) {
    throw new Error(`${configPath}: quantization_config is present: the model is already quantized (run lowrank dequantize first)`);
  }
  const config = parseLlamaConfig(raw, configPath);

  // Which checkpoint tensors are Linear weights: the module tree with one-element placeholders.
  const linears = new Map<string, { path: string; out: number; in: number }>();
  const shell = new LlamaForCausalLM(config, { backend: opts.backend ?? getDefaultBackend() });
  const tied = new Set(
    shell
      .namedModules()
      .filter(([, m]) => m instanceof Embedding)
      .map(([, m]) => (m as Embedding).weight),
  );
  for (const [path, m] of shell.namedModules()) {
    if (m instanceof Linear && !matchesModule(path, skipModules) && !tied.has(m.weight))
      linears.set(`${path}.weight`, { path, out: m.outFeatures, in: m.inFeatures });
  }
  shell.dispose();

  const ckpt = await openShardedSafetensors(inDir);
  try {
    const where = async (name: string) => joinPath(inDir, ckpt.tensors[name].shard);
    const tensors = new Map<string, LazyTensorInput>();
    const report: ConvertReport = { files: [], layers: [], params: 0, bytesIn: 0, bytesOut: 0 };
    for (const name of linears.keys())
      if (!ckpt.tensors[name])
        throw new Error(`${ckpt.index ?? (await joinPath(inDir, "model.safetensors"))}: no tensor "${name}" (the weight of Linear ${linears.get(name)!.path})`);
    for (const name of ckpt.names) {
      const info = ckpt.tensors[name];
      const lin = linears.get(name);
      if (!lin) {
        tensors.set(name, { dtype: info.dtype, shape: info.shape, data: async () => (await ckpt.read(name)).data });
        continue;
      }
      const file = await where(name);
      if (!(info.dtype in FLOAT_BYTES)) throw new Error(`${file}: tensor "${name}" has dtype ${info.dtype}; a Linear weight must be F32, F16 or BF16`);
      if (info.shape.length !== 2 || info.shape[0] !== lin.out || info.shape[1] !== lin.in) {
        throw new Error(`${file}: tensor "${name}" has shape [${info.shape.join(", ")}], expected [${lin.out}, ${lin.in}] for ${lin.path}`);
      }
      const bytes = (await ckpt.read(name)).data;
      const f32 = info.dtype === "F32" ? (viewBytes("f32", bytes) as Float32Array) : toF32(info.dtype === "F16" ? "f16" : "bf16", viewBytes("f16", bytes));
      const state = quantize4bit(f32, { quantType, blocksize, doubleQuant, shape: [lin.out, lin.in], dtype: LABEL_OF[info.dtype] });
      for (const [k, t] of Object.entries(toBnbTensors(`${lin.path}.`, state))) tensors.set(k, t);
      const n = lin.out * lin.in;
      report.layers.push(name);
      report.params += n;
      report.bytesIn += n * FLOAT_BYTES[info.dtype];
      report.bytesOut += quantizedBytes(state);
      log(
        `quantize: ${name} [${lin.out}, ${lin.in}] ${info.dtype} -> ${quantType}${doubleQuant ? " + double quant" : ""}, ${bitsPerParam(n, {
          blocksize,
          doubleQuant,
        }).toFixed(3)} bits/param (${report.layers.length}/${linears.size})`,
      );
    }
    await storage().mkdir(outDir);
    report.files.push(...(await writeShardedSafetensors(outDir, tensors, { maxShardBytes: opts.maxShardBytes, metadata: { format: "pt" } })));
    const torchDtype = raw.torch_dtype ?? raw.dtype;
    const computeDtype = torchDtype === "float16" || torchDtype === "bfloat16" ? torchDtype : "float32";
    await writeConfig(outDir, { ...raw, quantization_config: bnbQuantizationConfig({ quantType, doubleQuant, computeDtype, skipModules }) });
    report.files.push("config.json", ...(await copyAuxFiles(inDir, outDir, log)));
    log(`wrote ${outDir}: ${report.files.join(", ")}`);
    return report;
  } finally {
    await ckpt.close().catch(() => {});
  }
}

const QUANT_STATE = /^(?:(.*)\.)?weight\.quant_state\.bitsandbytes__(nf4|fp4)$/;

/**
 * Write a dense copy of the bitsandbytes 4-bit HF model in `inDir` to `outDir`: each 4-bit
 * weight is dequantized to the dtype its quant state records (float32, float16, bfloat16),
 * other tensors are copied byte for byte, and quantization_config is dropped from config.json.
 */
export async function dequantizeHfCheckpoint(inDir: string, outDir: string, opts: ConvertOptions = {}): Promise<ConvertReport> {
  const log = opts.log ?? (() => {});
  await checkDirs(inDir, outDir);
  const configPath = await joinPath(inDir, "config.json");
  const raw = await readJson(configPath, "the model's config.json");
  if (!parseBnbConfig(raw, configPath)) throw new Error(`${configPath}: no bitsandbytes 4-bit quantization_config: the model is not quantized`);

  const ckpt = await openShardedSafetensors(inDir);
  try {
    const where = async (name: string) => joinPath(inDir, ckpt.tensors[name].shard);
    // The 4-bit states are small: read them all, dequantize one at a time while writing.
    const states = new Map<string, QuantState>();
    const owned = new Set<string>();
    for (const name of ckpt.names) {
      const m = QUANT_STATE.exec(name);
      if (!m) continue;
      const prefix = m[1] ? `${m[1]}.` : "";
      const keys = ckpt.names.filter((k) => k === `${prefix}weight` || k.startsWith(`${prefix}weight.`));
      const tensors: Record<string, { dtype: "U8" | "F32"; shape: number[]; data: Uint8Array }> = {};
      for (const k of keys) {
        const t = await ckpt.read(k);
        if (t.dtype !== "U8" && t.dtype !== "F32")
          throw new Error(`${await where(k)}: tensor "${k}" has dtype ${t.dtype}; bitsandbytes 4-bit tensors are U8 or F32`);
        tensors[k] = { dtype: t.dtype, shape: [...t.shape], data: t.data };
        owned.add(k);
      }
      try {
        states.set(`${prefix}weight`, fromBnbTensors(prefix, tensors));
      } catch (e) {
        if (e instanceof BnbFormatError) throw new Error(`${await where(name)}: ${e.message}`, { cause: e });
        throw e;
      }
    }
    if (states.size === 0)
      throw new Error(`${inDir}: config.json says bitsandbytes 4-bit, but no tensor ends in ".weight.quant_state.bitsandbytes__nf4" or "__fp4"`);

    const tensors = new Map<string, LazyTensorInput>();
    const report: ConvertReport = { files: [], layers: [], params: 0, bytesIn: 0, bytesOut: 0 };
    for (const name of ckpt.names) {
      const state = states.get(name);
      if (state) {
        const dtype = state.dtype === "float32" ? "F32" : state.dtype === "float16" ? "F16" : "BF16";
        const n = state.shape.reduce((a, b) => a * b, 1);
        tensors.set(name, {
          dtype,
          shape: state.shape,
          data: () => {
            const w = dequantize4bit(state);
            log(`dequantize: ${name} [${state.shape.join(", ")}] ${state.quantType} -> ${dtype} (${report.layers.indexOf(name) + 1}/${states.size})`);
            return dtype === "F32" ? w : fromF32(dtype === "F16" ? "f16" : "bf16", w);
          },
        });
        report.layers.push(name);
        report.params += n;
        report.bytesIn += quantizedBytes(state);
        report.bytesOut += n * FLOAT_BYTES[dtype];
      } else if (!owned.has(name)) {
        const info = ckpt.tensors[name];
        tensors.set(name, { dtype: info.dtype, shape: info.shape, data: async () => (await ckpt.read(name)).data });
      }
    }
    await storage().mkdir(outDir);
    report.files.push(...(await writeShardedSafetensors(outDir, tensors, { maxShardBytes: opts.maxShardBytes, metadata: { format: "pt" } })));
    await writeConfig(outDir, withoutQuantizationConfig(raw));
    report.files.push("config.json", ...(await copyAuxFiles(inDir, outDir, log)));
    log(`wrote ${outDir}: ${report.files.join(", ")}`);
    return report;
  } finally {
    await ckpt.close().catch(() => {});
  }
}
