/**
 * PEFT's adapter directory: adapter_config.json + adapter_model.safetensors with PEFT's key
 * names (base_model.model.<path>.lora_A.weight [r, in], .lora_B.weight [out, r], F32, no adapter
 * name), modules_to_save under their plain names, DoRA magnitudes as `.lora_magnitude_vector`.
 * A non-"default" adapter is saved in the subfolder <dir>/<adapter>, as PEFT's save_pretrained does.
 */
import { type Backend, type DType, type Tensor, fromF32, tensor, toF32 } from "@lowrank/tensor";
import type { Module } from "@lowrank/nn";
import { type SafetensorsFile, type TensorInput, exists, joinPath, openSafetensors, serializeSafetensors, storage, toTypedArray } from "@lowrank/safetensors";
import { type LoraConfig, configFromJson, configToJson, show } from "./config.ts";
import { ModulesToSaveWrapper } from "./modules-to-save.ts";
import { PeftModel, type PeftOptions, biasParameters } from "./model.ts";
import { type InjectionPlan, planInjection } from "./targets.ts";

export const ADAPTER_CONFIG_NAME = "adapter_config.json";
export const ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors";
/** Every PEFT key starts with this (PeftModel.base_model -> LoraModel.model). */
export const PEFT_PREFIX = "base_model.model.";

const ST_DTYPE: Partial<Record<DType, "F32" | "F16" | "BF16">> = { f32: "F32", f16: "F16", bf16: "BF16" };

/** The tensors an adapter saves, by PEFT key (live tensors, not copies). */
export function adapterStateDict(peft: PeftModel, adapterName: string): Map<string, Tensor> {
  const config = peft.peftConfig.get(adapterName);
  if (!config) throw new Error(`no adapter '${adapterName}' (adapters: ${[...peft.peftConfig.keys()].join(", ") || "none"})`);
  const out = new Map<string, Tensor>();
  for (const [path, l] of peft.loraLayers()) {
    if (!l.r.has(adapterName)) continue;
    out.set(`${PEFT_PREFIX}${path}.lora_A.weight`, l.lora_A.get(adapterName).weight);
    out.set(`${PEFT_PREFIX}${path}.lora_B.weight`, l.lora_B.get(adapterName).weight);
    // PEFT drops ".weight" from the DoRA key to keep its pre-refactor file format.
    if (l.lora_magnitude_vector.has(adapterName)) out.set(`${PEFT_PREFIX}${path}.lora_magnitude_vector`, l.lora_magnitude_vector.get(adapterName).weight);
  }
  for (const [path, w] of peft.modulesToSaveWrappers()) {
    if (!w.adapters().includes(adapterName)) continue;
    for (const [n, t] of w.modules_to_save.get(adapterName).namedParameters()) out.set(`${PEFT_PREFIX}${path}.${n}`, t);
  }
  for (const [n, t] of biasParameters(peft, config.bias)) out.set(`${PEFT_PREFIX}${n}`, t);
  return out;
}

export interface SaveAdapterOptions {
  /** The adapter to save (default: every adapter; "default" goes to `dir`, others to `dir/<name>`). */
  adapterName?: string;
  /** base_model_name_or_path to record when the config has none (PEFT takes the model's _name_or_path). */
  baseModelNameOrPath?: string;
}

/** An adapter's two PEFT files in memory: adapter_config.json's text and adapter_model.safetensors' bytes. */
export interface AdapterBytes {
  config: string;
  weights: Uint8Array;
}

export interface AdapterToBytesOptions {
  /** base_model_name_or_path to record when the config has none. */
  baseModelNameOrPath?: string;
}

/** adapter_config.json and adapter_model.safetensors of one adapter, as saveAdapter writes them (no file system). */
export async function adapterToBytes(peft: PeftModel, adapterName: string, opts: AdapterToBytesOptions = {}): Promise<AdapterBytes> {
  return adapterBytes(peft, adapterName, opts.baseModelNameOrPath, "adapterToBytes");
}

async function adapterBytes(peft: PeftModel, name: string, baseModel: string | undefined, fn: string): Promise<AdapterBytes> {
  const config = peft.peftConfig.get(name);
  if (!config) throw new Error(`${fn}: no adapter '${name}' (adapters: ${[...peft.peftConfig.keys()].join(", ")})`);
  const merged = peft.loraLayers().filter(([, l]) => l.mergedAdapters.includes(name));
  if (merged.length)
    throw new Error(
      `${fn}: adapter '${name}' is merged into ${merged[0][0]}${
        merged.length > 1 ? ` and ${merged.length - 1} more` : ""
      }; unmerge() first (its A and B are still right, but the base weights are not the ones it was trained on)`,
    );
  const tensors = new Map<string, TensorInput>();
  for (const [key, t] of adapterStateDict(peft, name)) {
    const st = ST_DTYPE[t.dtype];
    if (!st) throw new Error(`${fn}: ${key} is ${t.dtype}; only float tensors are saved`);
    tensors.set(key, { dtype: st, shape: [...t.shape], data: t.dtype === "f32" ? await t.read() : fromF32(t.dtype, (await t.read()) as Float32Array) });
  }
  const weights = serializeSafetensors(tensors, { format: "pt" }, { label: ADAPTER_WEIGHTS_NAME });
  const json = configToJson({ ...config, base_model_name_or_path: config.base_model_name_or_path ?? baseModel ?? null });
  return { config: JSON.stringify(json, null, 2) + "\n", weights };
}

/**
 * Write adapter_config.json and adapter_model.safetensors (adapterToBytes' bytes). Each file is
 * written to a temporary name, fsynced and renamed into place (weights first, config last), so
 * a crash never leaves a half-written file. Returns the written file paths.
 */
export async function saveAdapter(peft: PeftModel, dir: string, opts: SaveAdapterOptions = {}): Promise<string[]> {
  const join = joinPath;
  const fs = storage();
  const names = opts.adapterName !== undefined ? [opts.adapterName] : [...peft.peftConfig.keys()];
  if (names.length === 0) throw new Error("saveAdapter: the model has no adapters");
  const written: string[] = [];
  for (const name of names) {
    const bytes = await adapterBytes(peft, name, opts.baseModelNameOrPath, "saveAdapter");
    const out = name === "default" ? dir : join(dir, name);
    await fs.mkdir(out);
    const weights = join(out, ADAPTER_WEIGHTS_NAME);
    await writeAtomic(weights, bytes.weights);
    const cfgPath = join(out, ADAPTER_CONFIG_NAME);
    await writeAtomic(cfgPath, bytes.config);
    written.push(weights, cfgPath);
  }
  return written;
}

async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const fs = storage();
  const tmp = `${path}.tmp-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  try {
    const fh = await fs.openWrite(tmp, "w");
    try {
      await fh.write(typeof data === "string" ? new TextEncoder().encode(data) : data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, path);
  } catch (e) {
    await fs.rm(tmp);
    throw e;
  }
}

export interface LoadAdapterOptions extends PeftOptions {
  /** Leave the loaded adapter trainable (PEFT is_trainable; default false: frozen, for inference or merging). */
  isTrainable?: boolean;
  /** The base model's name or directory; refused if the adapter names a different base_model_name_or_path. */
  baseModel?: string;
  /** Skip the base_model_name_or_path check (shapes are still checked). */
  ignoreBaseModel?: boolean;
}

/** Read and validate an adapter directory's config. */
export async function readAdapterConfig(dir: string): Promise<{ config: LoraConfig; dir: string }> {
  const join = joinPath;
  const path = join(dir, ADAPTER_CONFIG_NAME);
  let text: string;
  try {
    text = await storage().readText(path);
  } catch (e) {
    if ((e as { code?: string }).code !== "ENOENT") throw new Error(`${path}: cannot read (${(e as Error).message})`, { cause: e });
    const bin = await exists(join(dir, "adapter_model.bin"));
    throw new Error(`${path}: not found; ${dir} is not a PEFT adapter directory${bin ? " (adapter_model.bin without a config?)" : ""}`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  return { config: configFromJson(json, path), dir };
}

/**
 * Load a PEFT adapter directory onto `target` (a plain model: it is wrapped; a PeftModel: the
 * adapter is added next to the others, inactive). Every check runs before the model changes:
 * the config must fit the model, the file must hold exactly the expected keys with the expected
 * shapes (r, in/out features), and base_model_name_or_path must match `opts.baseModel`.
 */
export async function loadAdapter<M extends Module>(
  target: M | PeftModel<M>,
  dir: string,
  adapterName = "default",
  opts: LoadAdapterOptions = {},
): Promise<PeftModel<M>> {
  const join = joinPath;
  let where = dir;
  const inSub = join(dir, adapterName);
  // saveAdapter puts a non-default adapter in <dir>/<name>; the parent of a save is accepted too.
  if (adapterName !== "default" && (await exists(join(inSub, ADAPTER_CONFIG_NAME)))) where = inSub;
  const { config } = await readAdapterConfig(where);
  const weightsPath = join(where, ADAPTER_WEIGHTS_NAME);
  if (!(await exists(weightsPath))) {
    const bin = await exists(join(where, "adapter_model.bin"));
    throw new Error(`${weightsPath}: not found${bin ? "; adapter_model.bin (pickle) is not supported: re-save it with safe_serialization=True" : ""}`);
  }
  return applyAdapter(target, config, () => openSafetensors(weightsPath), weightsPath, where, adapterName, opts);
}

export interface AdapterInput {
  /** adapter_config.json: its text, bytes, or the parsed object. */
  config: string | Uint8Array | object;
  /** adapter_model.safetensors. */
  weights: Blob | Uint8Array | ArrayBuffer;
}

export interface LoadAdapterFromBytesOptions extends LoadAdapterOptions {
  /** Names of the two files in error messages (default adapter_config.json, adapter_model.safetensors). */
  configLabel?: string;
  weightsLabel?: string;
}

/** loadAdapter for in-memory files (no file system): the same checks, the same result. */
export async function loadAdapterFromBytes<M extends Module>(
  target: M | PeftModel<M>,
  files: AdapterInput,
  adapterName = "default",
  opts: LoadAdapterFromBytesOptions = {},
): Promise<PeftModel<M>> {
  const configLabel = opts.configLabel ?? ADAPTER_CONFIG_NAME;
  const weightsLabel = opts.weightsLabel ?? ADAPTER_WEIGHTS_NAME;
  let json: unknown = files.config;
  if (typeof json === "string" || json instanceof Uint8Array) {
    const text = typeof json === "string" ? json : new TextDecoder().decode(json);
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new Error(`${configLabel}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
  }
  const config = configFromJson(json, configLabel);
  return applyAdapter(target, config, () => openSafetensors(files.weights, { label: weightsLabel }), weightsLabel, configLabel, adapterName, opts);
}

/** The shared part of loadAdapter and loadAdapterFromBytes: check everything, then add and fill the adapter. */
async function applyAdapter<M extends Module>(
  target: M | PeftModel<M>,
  config: LoraConfig,
  open: () => Promise<SafetensorsFile>,
  weightsLabel: string,
  where: string,
  adapterName: string,
  opts: LoadAdapterOptions,
): Promise<PeftModel<M>> {
  const peft = target instanceof PeftModel ? target : null;
  const model = (peft ? peft.model : target) as M;
  checkBaseModel(config, peft, opts, where);

  const plan = planInjection(model, config, { strictEntries: false });
  const file = await open();
  try {
    checkAdapterFile(file, expectedSpecs(model, plan), plan, weightsLabel);
    const result = peft ?? new PeftModel(model, opts);
    result.addAdapter(adapterName, config, { ...opts, zeroInit: true, strictTargets: false });
    const live = adapterStateDict(result, adapterName);
    for (const [key, t] of live) await assignFromFile(file, key, t);
    if (!opts.isTrainable) {
      for (const t of live.values()) t.setRequiresGrad(false);
      model.eval(); // as PEFT's load_adapter: an inference load runs without dropout
    }
    return result;
  } finally {
    await file.close();
  }
}

interface Spec {
  shape: number[];
  why: string;
}

/** key -> expected shape, derived from the plan (what addAdapter would create) before injecting. */
function expectedSpecs(model: Module, plan: InjectionPlan): Map<string, Spec> {
  const out = new Map<string, Spec>();
  const c = plan.config;
  for (const t of plan.targets) {
    const p = `${PEFT_PREFIX}${t.name}`;
    out.set(`${p}.lora_A.weight`, { shape: [t.r, t.inFeatures], why: `r = ${t.r}${t.r !== c.r ? " (rank_pattern)" : ""}, in_features = ${t.inFeatures}` });
    out.set(`${p}.lora_B.weight`, { shape: [t.outFeatures, t.r], why: `out_features = ${t.outFeatures}, r = ${t.r}` });
    if (c.use_dora) out.set(`${p}.lora_magnitude_vector`, { shape: [t.outFeatures], why: `DoRA magnitude, out_features = ${t.outFeatures}` });
  }
  for (const { name, module } of plan.modulesToSave) {
    const src = module instanceof ModulesToSaveWrapper ? module.original_module : module;
    for (const [n, t] of src.namedParameters()) out.set(`${PEFT_PREFIX}${name}.${n}`, { shape: [...t.shape], why: `modules_to_save ${name}` });
  }
  if (c.bias !== "none") {
    const targets = new Set(plan.targets.map((t) => t.name));
    const saved = new Set(plan.modulesToSave.map((m) => m.name));
    for (const [n, t] of model.namedParameters()) {
      if (!/(^|\.)bias$/.test(n) || /(^|\.)lora_/.test(n)) continue;
      const mod = n.slice(0, -".bias".length).replace(/\.base_layer$/, "");
      if ([...saved].some((s) => mod === s || mod.startsWith(`${s}.`))) continue;
      if (c.bias === "lora_only" && !targets.has(mod)) continue;
      const key = targets.has(mod) ? `${mod}.base_layer.bias` : n;
      out.set(`${PEFT_PREFIX}${key}`, { shape: [...t.shape], why: "bias" });
    }
  }
  return out;
}

function checkAdapterFile(file: SafetensorsFile, expected: Map<string, Spec>, plan: InjectionPlan, path: string): void {
  const missing = [...expected.keys()].filter((k) => !file.has(k));
  const unexpected = file.names.filter((k) => !expected.has(k));
  const problems: string[] = [];
  for (const [k, spec] of expected) {
    if (!file.has(k)) continue;
    const info = file.tensors[k];
    if (!["F32", "F16", "BF16", "F64"].includes(info.dtype)) problems.push(`${k}: dtype ${info.dtype}, expected a float tensor (F32, F16, BF16)`);
    if (info.shape.length !== spec.shape.length || info.shape.some((d, i) => d !== spec.shape[i])) {
      problems.push(`${k}: shape [${info.shape.join(", ")}] in the file, expected [${spec.shape.join(", ")}] (${spec.why})`);
    }
  }
  if (!missing.length && !unexpected.length && !problems.length) return;
  const lines = [...missing.map((k) => `missing: ${k}`), ...unexpected.map((k) => `unexpected: ${k}`), ...problems];
  const hints: string[] = [];
  const rs = new Set(file.names.filter((k) => k.endsWith(".lora_A.weight")).map((k) => file.tensors[k].shape[0]));
  if (problems.some((p) => p.includes(".lora_A.weight: shape")) && rs.size === 1 && ![...rs].includes(plan.config.r)) {
    hints.push(`the file's rank is ${[...rs][0]} but adapter_config.json says r = ${plan.config.r}`);
  }
  if (unexpected.length && missing.length)
    hints.push("the target modules in adapter_config.json do not match the modules in the file, or the adapter was trained on another architecture");
  else if (problems.length && !hints.length) hints.push("the adapter was trained on a base model with other layer sizes");
  if (unexpected.some((k) => !k.startsWith(PEFT_PREFIX))) hints.push(`PEFT keys start with "${PEFT_PREFIX}"`);
  const counts = [
    missing.length && `${missing.length} missing`,
    unexpected.length && `${unexpected.length} unexpected`,
    problems.length && `${problems.length} mismatched`,
  ]
    .filter(Boolean)
    .join(", ");
  throw new Error(
    `${path}: adapter does not match the model (${counts}${hints.length ? `; ${hints.join("; ")}` : ""}):\n  ${lines.slice(0, 40).join("\n  ")}${
      lines.length > 40 ? `\n  ... and ${lines.length - 40} more` : ""
    }`,
  );
}

async function assignFromFile(file: SafetensorsFile, key: string, target: Tensor): Promise<void> {
  const data = await file.read(key);
  const raw = toTypedArray(data);
  let f32: Float32Array;
  if (data.dtype === "F32") f32 = raw as Float32Array;
  else if (data.dtype === "F64") f32 = Float32Array.from(raw as Float64Array);
  else f32 = toF32(data.dtype === "F16" ? "f16" : "bf16", raw as Uint16Array);
  const t = tensor(f32, { shape: target.shape, dtype: target.dtype, backend: target.backend as Backend });
  target.assign(t);
  t.dispose();
}

/** The adapter's base_model_name_or_path against the model being adapted (same string, or same last path component, case-insensitive). */
function checkBaseModel(config: LoraConfig, peft: PeftModel | null, opts: LoadAdapterOptions, where: string): void {
  if (opts.ignoreBaseModel || !config.base_model_name_or_path) return;
  const others = peft ? [...peft.peftConfig.values()].map((c) => c.base_model_name_or_path).filter((n): n is string => !!n) : [];
  const expected = opts.baseModel ? [opts.baseModel] : others.slice(0, 1);
  for (const e of expected) {
    if (!sameModelName(e, config.base_model_name_or_path)) {
      throw new Error(
        `${where}: adapter was trained on base_model_name_or_path ${show(config.base_model_name_or_path)}, but the model is ${show(
          e,
        )}; pass ignoreBaseModel (CLI: --ignore-base-model) if they are the same weights`,
      );
    }
  }
}

export function sameModelName(a: string, b: string): boolean {
  const last = (s: string) =>
    s
      .replace(/[\\/]+$/, "")
      .split(/[\\/]/)
      .pop()!
      .toLowerCase();
  return a === b || last(a) === last(b);
}
