/**
 * Gathers a model's files in memory (fetched from the page's bundled copy or picked by the user)
 * and builds the model and tokenizer with nn's loadHfModelFromFiles: the same loader, checks and
 * conversions as loadHfModel on a directory.
 */
import { type HfModelFiles, type HfTokenizer, type LlamaForCausalLM, loadHfModelFromFiles, quantizationConfigOf } from "@lowrank/nn";
import type { Backend } from "@lowrank/tensor";
import type { ModelSource } from "../protocol.ts";

/** A Hugging Face model directory held in memory. */
export interface ModelFiles {
  name: string;
  files: HfModelFiles & { tokenizer: Blob };
}

const INDEX = "model.safetensors.index.json";

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

function fromNamedFiles(name: string, files: Map<string, Blob>): ModelFiles {
  const need = (f: string, what: string): Blob => {
    const b = files.get(f);
    if (!b) throw new Error(`${f} is missing (${what}); a model folder needs config.json, tokenizer.json and model.safetensors (or a sharded index)`);
    return b;
  };
  const config = need("config.json", "the model's config");
  const tokenizer = need("tokenizer.json", "the Hugging Face tokenizer");
  const index = files.get(INDEX);
  if (!index) need("model.safetensors", "the weights");
  // The loader takes model.safetensors, or the shards the index names, from these.
  const weights = new Map([...files].filter(([f]) => f.endsWith(".safetensors")));
  return { name, files: { config, tokenizer, tokenizerConfig: files.get("tokenizer_config.json"), index, weights } };
}

/** A fresh f32 model on `backend` with the checkpoint's weights, and (withTokenizer) its tokenizer. */
async function load(m: ModelFiles, backend: Backend, withTokenizer: boolean): Promise<{ model: LlamaForCausalLM; tokenizer: HfTokenizer | null }> {
  const { tokenizer, tokenizerConfig, ...rest } = m.files;
  const loaded = await loadHfModelFromFiles(withTokenizer ? m.files : rest, { backend, dtype: "f32" });
  if (quantizationConfigOf(loaded.model)) {
    loaded.model.dispose();
    throw new Error("config.json: a bitsandbytes 4-bit checkpoint; the page loads dense (F32/F16/BF16) checkpoints; pick method qlora to quantize on load");
  }
  return loaded;
}

export async function buildModel(m: ModelFiles, backend: Backend): Promise<LlamaForCausalLM> {
  return (await load(m, backend, false)).model;
}

export async function buildModelAndTokenizer(m: ModelFiles, backend: Backend): Promise<{ model: LlamaForCausalLM; tokenizer: HfTokenizer }> {
  const { model, tokenizer } = await load(m, backend, true);
  return { model, tokenizer: tokenizer! };
}
