/**
 * PEFT files in memory: lora's saveAdapter/loadAdapter go through node:fs, so the page builds
 * the same files from lora's public pieces (adapterStateDict, configToJson, configFromJson)
 * and @lowrank/safetensors' serializeSafetensors / openSafetensors(Blob).
 */
import { type LlamaForCausalLM, llamaConfigToHf } from "@lowrank/nn";
import {
  ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, type PeftModel, adapterStateDict, configFromJson, configToJson, getPeftModel,
} from "@lowrank/lora";
import { type Dtype, type TensorInput, openSafetensors, serializeSafetensors } from "@lowrank/safetensors";
import { type DType, type Tensor, fromF32, tensor } from "@lowrank/tensor";
import type { DownloadFile } from "../protocol.ts";
import { toFloat32 } from "./model-loader.ts";

const ST: Partial<Record<DType, Dtype>> = { f32: "F32", f16: "F16", bf16: "BF16" };

async function tensorInput(name: string, t: Tensor): Promise<TensorInput> {
  const dtype = ST[t.dtype];
  if (!dtype) throw new Error(`${name} is ${t.dtype}; only float tensors are saved`);
  const values = await t.read();
  return { dtype, shape: [...t.shape], data: t.dtype === "f32" ? values : fromF32(t.dtype, values as Float32Array) };
}

const json = (v: unknown) => new TextEncoder().encode(`${JSON.stringify(v, null, 2)}\n`);

/** adapter_config.json + adapter_model.safetensors of the "default" adapter, as PEFT's save_pretrained writes them. */
export async function adapterFiles(peft: PeftModel, baseName: string): Promise<DownloadFile[]> {
  const config = peft.peftConfig.get("default");
  if (!config) throw new Error("the model has no 'default' adapter");
  const tensors = new Map<string, TensorInput>();
  for (const [key, t] of adapterStateDict(peft, "default")) tensors.set(key, await tensorInput(key, t));
  const weights = serializeSafetensors(tensors, { format: "pt" }, { label: ADAPTER_WEIGHTS_NAME });
  const cfg = configToJson({ ...config, base_model_name_or_path: config.base_model_name_or_path ?? baseName });
  return [
    { name: ADAPTER_CONFIG_NAME, mime: "application/json", bytes: json(cfg) },
    { name: ADAPTER_WEIGHTS_NAME, mime: "application/octet-stream", bytes: weights },
  ];
}

/** A full fine-tune: config.json + model.safetensors (tied weights once), as transformers' save_pretrained. */
export async function modelFiles(model: LlamaForCausalLM): Promise<DownloadFile[]> {
  const tensors = new Map<string, TensorInput>();
  for (const [name, t] of model.stateDict()) tensors.set(name, await tensorInput(name, t));
  const weights = serializeSafetensors(tensors, { format: "pt" }, { label: "model.safetensors" });
  const config = { ...llamaConfigToHf(model.config), torch_dtype: "float32" };
  return [
    { name: "config.json", mime: "application/json", bytes: json(config) },
    { name: "model.safetensors", mime: "application/octet-stream", bytes: weights },
  ];
}

/**
 * Wrap `model` (a fresh base) with the adapter in `files` (adapter_config.json +
 * adapter_model.safetensors). Every key and shape is checked before a weight is assigned.
 */
export async function applyAdapterFiles(model: LlamaForCausalLM, files: readonly File[]): Promise<{ peft: PeftModel<LlamaForCausalLM>; summary: string }> {
  const cfgFile = files.find((f) => f.name === ADAPTER_CONFIG_NAME) ?? files.find((f) => f.name.endsWith(".json"));
  const wFile = files.find((f) => f.name === ADAPTER_WEIGHTS_NAME) ?? files.find((f) => f.name.endsWith(".safetensors"));
  if (!cfgFile || !wFile) {
    const bin = files.some((f) => f.name.endsWith(".bin")) ? " (adapter_model.bin is a pickle: re-save it with safe_serialization=True)" : "";
    throw new Error(`pick both ${ADAPTER_CONFIG_NAME} and ${ADAPTER_WEIGHTS_NAME}${bin}; got ${files.map((f) => f.name).join(", ") || "nothing"}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(await cfgFile.text());
  } catch (e) {
    throw new Error(`${cfgFile.name}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  const config = configFromJson(raw, cfgFile.name);
  const file = await openSafetensors(wFile, { label: wFile.name });
  try {
    const peft = getPeftModel(model, config, "default", { zeroInit: true, strictTargets: false });
    const live = adapterStateDict(peft, "default");
    const problems = [...live.keys()].filter((k) => !file.has(k)).map((k) => `missing: ${k}`);
    problems.push(...file.names.filter((k) => !live.has(k)).map((k) => `unexpected: ${k}`));
    for (const [k, t] of live) {
      const info = file.has(k) ? file.tensors[k] : null;
      if (info && (info.shape.length !== t.shape.length || info.shape.some((d, i) => d !== t.shape[i]))) {
        problems.push(`${k}: shape [${info.shape.join(", ")}] in the file, the model needs [${t.shape.join(", ")}]`);
      }
    }
    if (problems.length) {
      throw new Error(`${wFile.name}: the adapter does not fit this model (${problems.length} problem(s)):\n  ${problems.slice(0, 12).join("\n  ")}${problems.length > 12 ? `\n  ... and ${problems.length - 12} more` : ""}`);
    }
    for (const [k, target] of live) {
      const t = tensor(toFloat32(await file.read(k)), { shape: target.shape, dtype: "f32", backend: target.backend });
      target.assign(t);
      t.dispose();
      target.setRequiresGrad(false);
    }
    model.eval(); // as PEFT's from_pretrained: an inference load runs without dropout
    const targets = Array.isArray(config.target_modules) ? config.target_modules.join(", ") : String(config.target_modules);
    const summary = `r ${config.r}, alpha ${config.lora_alpha}, ${peft.loraLayers().length} layers (${targets})` +
      (config.base_model_name_or_path ? `, trained on ${config.base_model_name_or_path}` : "");
    return { peft, summary };
  } finally {
    await file.close();
  }
}
