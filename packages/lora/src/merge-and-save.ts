/**
 * `mergeAndSave`: base model directory + PEFT adapter directory -> a plain Hugging Face model
 * directory with the adapter folded into the weights (what `lowrank merge` runs). The result
 * loads with transformers or loadHfModel and needs no PEFT.
 */
import { type Backend, type DType, getDefaultBackend } from "@lowrank/tensor";
import { loadHfModel, saveHfModel } from "@lowrank/nn";
import { joinPath, storage } from "@lowrank/safetensors";
import type { MergeInfo } from "./layer.ts";
import { loadAdapter } from "./peft-io.ts";

export interface MergeAndSaveOptions {
  backend?: Backend;
  /** Weight dtype of the output (default: the source config's torch_dtype, else f32). The merge itself runs in f32. */
  dtype?: DType;
  /** Adapter name inside the directory (default "default"). */
  adapterName?: string;
  /** Reject NaN/Inf in merged weights (default true). */
  safe?: boolean;
  /** Skip the base_model_name_or_path check. */
  ignoreBaseModel?: boolean;
  /** Largest output shard in bytes (default 5e9, as transformers). */
  maxShardBytes?: number;
  /**
   * For a bitsandbytes 4-bit base: write dense dequant(W) + ΔW (in `dtype`) instead of
   * requantizing the merged weights (the choice QLoRA practice recommends; see docs/peft-format.md).
   */
  dequantize?: boolean;
}

export interface MergeAndSaveResult {
  /** Files written in the output directory. */
  files: string[];
  merged: MergeInfo[];
  dtype: DType;
}

/** Tokenizer and generation files copied unchanged next to the merged weights. */
const COPY_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "generation_config.json",
  "chat_template.jinja",
  "chat_template.json",
];

const TORCH_DTYPE: Record<string, DType> = { float32: "f32", float16: "f16", bfloat16: "bf16" };
const TORCH_NAME: Partial<Record<DType, string>> = { f32: "float32", f16: "float16", bf16: "bfloat16" };

export async function mergeAndSave(modelDir: string, adapterDir: string, outDir: string, opts: MergeAndSaveOptions = {}): Promise<MergeAndSaveResult> {
  const fs = storage();
  const [join, resolve] = [joinPath, fs.resolve];
  if (resolve(outDir) === resolve(modelDir))
    throw new Error(`mergeAndSave: the output directory is the model directory (${modelDir}); write the merged model somewhere else`);
  const configPath = join(modelDir, "config.json");
  const original = JSON.parse(await fs.readText(configPath)) as Record<string, unknown>;
  const srcDtype = TORCH_DTYPE[String(original.torch_dtype ?? original.dtype ?? "float32")] ?? "f32";
  const dtype = opts.dtype ?? srcDtype;
  if (!TORCH_NAME[dtype]) throw new Error(`mergeAndSave: dtype must be f32, f16 or bf16, got ${dtype}`);

  const backend = opts.backend ?? getDefaultBackend();
  const model = await loadHfModel(modelDir, { backend, dtype });
  try {
    const peft = await loadAdapter(model, adapterDir, opts.adapterName ?? "default", {
      baseModel: modelDir,
      ignoreBaseModel: opts.ignoreBaseModel,
      warn: () => {},
    });
    const { merged } = await peft.mergeAndUnload({ safe: opts.safe ?? true, dequantize: opts.dequantize, dtype });
    const files = await saveHfModel(model, outDir, { maxShardBytes: opts.maxShardBytes });
    // The source config keeps fields nn does not model (transformers_version, pad_token_id, ...);
    // the dtype and quantization_config are what was actually written.
    const written = JSON.parse(await fs.readText(join(outDir, "config.json"))) as Record<string, unknown>;
    const config: Record<string, unknown> = { ...original, torch_dtype: TORCH_NAME[dtype] };
    if ("dtype" in original) config.dtype = TORCH_NAME[dtype];
    if (written.quantization_config) config.quantization_config = written.quantization_config;
    else delete config.quantization_config;
    // A trained copy of lm_head or embed_tokens (modules_to_save) unties them: both are saved, so say so.
    if (config.tie_word_embeddings === true && (model.lm_head as { weight?: unknown }).weight !== model.model.embed_tokens.weight)
      config.tie_word_embeddings = false;
    await fs.writeFile(join(outDir, "config.json"), JSON.stringify(config, null, 2) + "\n");
    for (const f of COPY_FILES) {
      const ok = await fs.copyFile(join(modelDir, f), join(outDir, f)).then(
        () => true,
        (e: { code?: string }) => {
          if (e.code === "ENOENT") return false;
          throw e;
        },
      );
      if (ok) files.push(f);
    }
    return { files, merged, dtype };
  } finally {
    model.dispose();
  }
}
