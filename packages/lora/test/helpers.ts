/** Shared test setup: the CPU backend, the data directory (read from the environment here, at the edge), small models. */
import process from "node:process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Tensor, Rng, noGrad, scope, setDefaultBackend, tensor } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { LlamaForCausalLM, type LlamaConfig, parseLlamaConfig, randomInit, resolveDataDir } from "@lowrank/nn/node";
import type { PeftModel } from "../src/node.ts";

export const backend = createCpuBackend({ threads: 0 });
setDefaultBackend(backend);

export const dataDir = await resolveDataDir({ env: process.env });
export const storiesHfDir = dataDir ? join(dataDir, "models", "stories260K-hf") : null;
export const peftConfigPath = dataDir ? join(dataDir, "peft", "smollm2-135m-recallclear", "adapter_config.json") : null;
/** Reason to skip data-dependent tests, or false. */
export const noData = dataDir ? false : "data dir not found: set LOWRANK_DATA_DIR or put shared/data beside the repo (see packages/nn/README.md)";

/** stories260K-hf/config.json, inline: its module names and shapes without reading the data dir. */
export const STORIES_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 5,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 8,
  vocab_size: 512,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  hidden_act: "silu",
  tie_word_embeddings: true,
  bos_token_id: 1,
  eos_token_id: 2,
};

/** stories260K's architecture with placeholder weights (names and shapes only; costs no memory). */
export function storiesShapedModel(): LlamaForCausalLM {
  return new LlamaForCausalLM(parseLlamaConfig(STORIES_CONFIG));
}

export function tinyConfig(over: Record<string, unknown> = {}): LlamaConfig {
  return parseLlamaConfig({
    model_type: "llama",
    vocab_size: 40,
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: false,
    eos_token_id: 2,
    bos_token_id: 1,
    ...over,
  });
}

export function tinyModel(over: Record<string, unknown> = {}, seed = 1, std = 0.3): LlamaForCausalLM {
  return new LlamaForCausalLM(tinyConfig(over), { init: randomInit(new Rng(seed), std) });
}

export const IDS = [[1, 5, 9, 3, 7, 11, 2, 4]];

/** Logits of `ids` as host floats (no graph). */
export function logits(model: { forward(ids: Tensor): Tensor }, ids: number[][] = IDS): Float32Array {
  return noGrad(() => scope(() => model.forward(tensor(ids, { dtype: "i32" })).readSync() as Float32Array));
}

/** Fill every adapter weight of `name` with seeded random values (a "trained" adapter). */
export function randomizeAdapter(peft: PeftModel, name = "default", seed = 7, std = 0.2): void {
  const rng = new Rng(seed);
  for (const [, l] of peft.loraLayers()) {
    for (const t of l.adapterParameters(name)) {
      const v = Float32Array.from({ length: t.size }, () => rng.normal() * std);
      if (t.rank === 1) for (let i = 0; i < v.length; i++) v[i] = 1 + v[i]; // DoRA magnitudes stay near their init scale
      const src = tensor(v, { shape: t.shape, backend: t.backend });
      t.assign(src);
      src.dispose();
    }
  }
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "lowrank-lora-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function snapshot(t: Tensor): Float32Array {
  return Float32Array.from(t.readSync() as Float32Array);
}
