/**
 * PEFT files in memory, through lora's adapterToBytes / loadAdapterFromBytes (the same files and
 * checks as saveAdapter / loadAdapter). A full fine-tune is written with @lowrank/safetensors'
 * serializeSafetensors as transformers' save_pretrained would.
 */
import { type LlamaForCausalLM, llamaConfigToHf } from "@lowrank/nn";
import { ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, type PeftModel, adapterToBytes, loadAdapterFromBytes } from "@lowrank/lora";
import { type Dtype, type TensorInput, serializeSafetensors } from "@lowrank/safetensors";
import { type DType, type Tensor, fromF32 } from "@lowrank/tensor";
import type { DownloadFile } from "../protocol.ts";

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
  const { config, weights } = await adapterToBytes(peft, "default", { baseModelNameOrPath: baseName });
  return [
    { name: ADAPTER_CONFIG_NAME, mime: "application/json", bytes: new TextEncoder().encode(config) },
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
  const peft = await loadAdapterFromBytes(model, { config: await cfgFile.text(), weights: wFile }, "default", {
    ignoreBaseModel: true,
    configLabel: cfgFile.name,
    weightsLabel: wFile.name,
  });
  const config = peft.peftConfig.get("default")!;
  const targets = Array.isArray(config.target_modules) ? config.target_modules.join(", ") : String(config.target_modules);
  const summary =
    `r ${config.r}, alpha ${config.lora_alpha}, ${peft.loraLayers().length} layers (${targets})` +
    (config.base_model_name_or_path ? `, trained on ${config.base_model_name_or_path}` : "");
  return { peft, summary };
}
