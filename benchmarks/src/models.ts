/**
 * Model shapes the benchmarks use, and how to build them: stories260K from its files, the other
 * Llama shapes with seeded random weights (N(0, 0.02), as HF's initializer_range), which is all a
 * memory or speed measurement needs.
 */
import { type Init, type LlamaForCausalLM, LlamaForCausalLM as Llama, loadHfModel, parseLlamaConfig, randomInit } from "@lowrank/nn/node";
import { type Backend, type DType, Rng } from "@lowrank/tensor";

export interface Shape {
  name: string;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  hidden: number;
  vocab: number;
  tied: boolean;
  maxPos: number;
  /** Where the shape comes from. */
  source: string;
}

export const SHAPES: Record<string, Shape> = {
  stories260K: {
    name: "stories260K",
    dim: 64,
    layers: 5,
    heads: 8,
    kvHeads: 4,
    hidden: 172,
    vocab: 512,
    tied: true,
    maxPos: 512,
    source: "shared/data/models/stories260K-hf/config.json (real weights)",
  },
  d256: {
    name: "d256",
    dim: 256,
    layers: 4,
    heads: 4,
    kvHeads: 4,
    hidden: 688,
    vocab: 512,
    tied: false,
    maxPos: 512,
    source: "the peer-baseline probe in shared/notes/environment.md section 4",
  },
  stories15M: {
    name: "stories15M",
    dim: 288,
    layers: 6,
    heads: 6,
    kvHeads: 6,
    hidden: 768,
    vocab: 32000,
    tied: true,
    maxPos: 256,
    source: "llama2.c stories15M (ModelArgs of train.py / the .bin header)",
  },
  stories42M: {
    name: "stories42M",
    dim: 512,
    layers: 8,
    heads: 8,
    kvHeads: 8,
    hidden: 1376,
    vocab: 32000,
    tied: true,
    maxPos: 1024,
    source: "llama2.c stories42M",
  },
  stories110M: {
    name: "stories110M",
    dim: 768,
    layers: 12,
    heads: 12,
    kvHeads: 12,
    hidden: 2048,
    vocab: 32000,
    tied: true,
    maxPos: 1024,
    source: "llama2.c stories110M",
  },
  "tinyllama-1.1B": {
    name: "tinyllama-1.1B",
    dim: 2048,
    layers: 22,
    heads: 32,
    kvHeads: 4,
    hidden: 5632,
    vocab: 32000,
    tied: false,
    maxPos: 2048,
    source: "TinyLlama-1.1B config.json",
  },
};

export function hfConfig(s: Shape): Record<string, unknown> {
  return {
    model_type: "llama",
    vocab_size: s.vocab,
    hidden_size: s.dim,
    intermediate_size: s.hidden,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    max_position_embeddings: s.maxPos,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: s.tied,
    bos_token_id: 1,
    eos_token_id: 2,
  };
}

/** Parameter count of a shape (tied head counted once), from the formula. */
export function paramCount(s: Shape): number {
  const hs = s.dim / s.heads;
  const attn = s.dim * s.dim * 2 + 2 * s.dim * s.kvHeads * hs;
  const mlp = 3 * s.dim * s.hidden;
  return s.vocab * s.dim * (s.tied ? 1 : 2) + s.layers * (attn + mlp + 2 * s.dim) + s.dim;
}

/** A model of this shape with seeded random weights on `backend`. */
export function randomModel(s: Shape, backend: Backend, seed = 0): LlamaForCausalLM {
  return randomModelFromConfig(hfConfig(s), `${s.name} (benchmark shape)`, backend, { seed });
}

/** Seeded random weights for an HF config.json (a real model's shape), in `dtype` (default f32); `init` overrides the N(0, 0.02) draws. */
export function randomModelFromConfig(
  config: Record<string, unknown>,
  name: string,
  backend: Backend,
  o: { seed?: number; dtype?: DType; init?: Init } = {},
): LlamaForCausalLM {
  return new Llama(parseLlamaConfig(config, name), { backend, dtype: o.dtype ?? "f32", init: o.init ?? randomInit(new Rng(o.seed ?? 0)) });
}

/** stories260K from the data directory, else a random model of the same shape. */
export async function loadShape(
  s: Shape,
  backend: Backend,
  dataDir: string | null,
  seed = 0,
): Promise<{ model: LlamaForCausalLM; weights: "real" | "random" }> {
  if (s.name === "stories260K" && dataDir) return { model: await loadHfModel(`${dataDir}/models/stories260K-hf`, { backend, dtype: "f32" }), weights: "real" };
  return { model: randomModel(s, backend, seed), weights: "random" };
}
