/**
 * The three ways to fine-tune: `full` (every weight trains), `lora` (PEFT LoRA on a frozen base)
 * and `qlora` (the base quantized to 4 bits on load, then LoRA, prepared as PEFT's
 * prepare_model_for_kbit_training does). Each returns the trained parameters by name and how to
 * write the result.
 */
import { type LlamaForCausalLM, quantizeModel, saveHfModel } from "@lowrank/nn";
import { type Tensor, isFloat } from "@lowrank/tensor";
import { type PeftModel, getPeftModel, saveAdapter } from "@lowrank/lora";
import { joinPath, storage } from "@lowrank/safetensors";
import { type FinetuneConfig, computeDtype } from "./config.ts";

export interface PreparedModel {
  model: LlamaForCausalLM;
  /** The PEFT wrapper (null for a full fine-tune). */
  peft: PeftModel<LlamaForCausalLM> | null;
  /** Trained parameters by their in-memory name. */
  trainable: Map<string, Tensor>;
  /** "trainable params: N || all params: M || trainable%: P" */
  summary: string;
  /** Where a checkpoint keeps the trained weights: full runs write a loadable model.safetensors. */
  paramsFile: "trainable.safetensors" | "model.safetensors";
  /** Write the final result (a PEFT adapter, or a full HF model directory) into `dir`. */
  writeOutput(dir: string): Promise<string[]>;
}

export async function prepareModel(
  model: LlamaForCausalLM,
  cfg: FinetuneConfig,
  modelDir: string,
  warn: (m: string) => void = () => {},
): Promise<PreparedModel> {
  if (cfg.method === "full") return prepareFull(model, modelDir);
  if (cfg.method === "qlora") await quantizeBase(model, cfg);
  return prepareLora(model, cfg, modelDir, warn);
}

/**
 * QLoRA's base, as prepare_model_for_kbit_training leaves it: linear weights in 4 bits (NF4 +
 * double quant by default; the head stays dense, as transformers keeps lm_head out of
 * quantization), every other parameter f32 and frozen. Activation recomputation is switched on
 * by the caller (default for qlora); input gradients need no hook (see recompute-layers.ts).
 */
async function quantizeBase(model: LlamaForCausalLM, cfg: FinetuneConfig): Promise<void> {
  const dtype = computeDtype(cfg.mixedPrecision);
  await quantizeModel(model, {
    quantType: cfg.quantType,
    blocksize: cfg.blocksize,
    doubleQuant: cfg.doubleQuant,
    skipModules: ["lm_head"],
    computeDtype: dtype,
  });
  // prepare_model_for_kbit_training: every float parameter left dense (norms, embeddings, head)
  // frozen, in f32 (or, mixed precision, the compute dtype the model was loaded in).
  for (const [name, t] of model.namedParameters()) {
    if (isFloat(t.dtype) && t.dtype !== dtype) throw new Error(`qlora: ${name} is ${t.dtype}; the base must be loaded in ${dtype}`);
  }
  model.setRequiresGrad(false);
}

function prepareLora(model: LlamaForCausalLM, cfg: FinetuneConfig, modelDir: string, warn: (m: string) => void): PreparedModel {
  const peft = getPeftModel(
    model,
    {
      ...cfg.lora,
      r: cfg.rank,
      lora_alpha: cfg.alpha,
      lora_dropout: cfg.dropout,
      target_modules: cfg.targetModules === "all-linear" ? "all-linear" : [...cfg.targetModules],
      task_type: "CAUSAL_LM",
      base_model_name_or_path: modelDir,
    },
    "default",
    { seed: cfg.seed, warn },
  );
  const trainable = new Map(peft.namedTrainableParameters());
  return {
    model,
    peft,
    trainable,
    // PEFT's count: a 4-bit base counts its logical weights, not its packed bytes.
    summary: peft.printTrainableParameters(() => {}),
    paramsFile: "trainable.safetensors",
    async writeOutput(dir) {
      await storage().mkdir(dir);
      const files = await saveAdapter(peft, dir);
      return [...files.map((f) => f.slice(f.lastIndexOf("/") + 1)), ...(await copyTokenizer(modelDir, dir))];
    },
  };
}

function prepareFull(model: LlamaForCausalLM, modelDir: string): PreparedModel {
  model.setRequiresGrad(true);
  const trainable = new Map(model.namedParameters().filter(([, t]) => isFloat(t.dtype)));
  return {
    model,
    peft: null,
    trainable,
    summary: paramSummary(model, trainable),
    paramsFile: "model.safetensors",
    async writeOutput(dir) {
      await storage().mkdir(dir);
      const files = await saveHfModel(model, dir);
      return [...files, ...(await copyTokenizer(modelDir, dir))];
    },
  };
}

/** PEFT's print_trainable_parameters line (elements, tied weights counted once). */
export function paramSummary(model: LlamaForCausalLM, trainable: ReadonlyMap<string, Tensor>): string {
  let all = 0;
  for (const [, t] of model.namedParameters()) all += t.size;
  let n = 0;
  for (const t of trainable.values()) n += t.size;
  return `trainable params: ${n.toLocaleString("en-US")} || all params: ${all.toLocaleString("en-US")} || trainable%: ${((100 * n) / Math.max(1, all)).toFixed(
    4,
  )}`;
}

/** Copy tokenizer.json and tokenizer_config.json next to the result, so the directory is self-contained. */
export async function copyTokenizer(modelDir: string, dir: string): Promise<string[]> {
  const { copyFile } = storage();
  const out: string[] = [];
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    const ok = await copyFile(joinPath(modelDir, f), joinPath(dir, f)).then(
      () => true,
      () => false,
    );
    if (ok) out.push(f);
  }
  return out;
}
