/**
 * Autoregressive generation: the prompt is prefilled once into a KV cache, then one token per
 * step. Each step runs under noGrad inside a scope and only the last position's logits are read
 * back, so device memory grows by exactly the cache's new position per token. Sampling is on the
 * host, in Hugging Face's order: repetition penalty, temperature, top-k, top-p.
 */
import { type Backend, Rng, type Tensor, noGrad, scope, tensor } from "@lowrank/tensor";
import type { KVCache, KVCacheOptions } from "./kv-cache.ts";
import { TextStream, type TextTokenizer } from "./loaders/tokenizer.ts";

/** What generation needs from a model (LlamaForCausalLM, or anything wrapping it). */
export interface CausalLM {
  readonly config: { readonly max_position_embeddings: number; readonly eos_token_id: readonly number[] };
  readonly backend: Backend;
  forward(ids: Tensor, opts: { cache?: KVCache; positionOffset?: number; lastOnly?: boolean }): Tensor;
  createCache(opts?: KVCacheOptions): KVCache;
}

export interface SamplingOptions {
  /** 0 (default) is greedy argmax; above 0, logits are divided by it and sampled. */
  temperature?: number;
  /** Keep only the k most likely tokens (ties at the k-th value kept, like HF). 0 = off. */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p. 1 = off. */
  topP?: number;
  /** HF's CTRL-style penalty on every token already in the sequence (>1 discourages repeats). 1 = off. */
  repetitionPenalty?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** Default 128. Generation also stops at the model's max_position_embeddings. */
  maxNewTokens?: number;
  /** Ids that end generation (not yielded). Default: the config's eos_token_id. */
  stopTokens?: readonly number[];
  /** Seed of the sampling stream (default 0); or pass `rng` to continue a stream. */
  seed?: number;
  rng?: Rng;
  /** false recomputes the whole sequence every step (slow; a reference for the cached path). */
  useCache?: boolean;
  signal?: AbortSignal;
}

/** Yields new token ids as they are chosen. Breaking out of the loop frees the cache. */
export async function* generate(model: CausalLM, promptIds: readonly number[], opts: GenerateOptions = {}): AsyncGenerator<number, void, undefined> {
  if (promptIds.length === 0) throw new RangeError("generate: the prompt needs at least one id (e.g. BOS)");
  const maxNew = opts.maxNewTokens ?? 128;
  const maxPos = model.config.max_position_embeddings;
  const stop = new Set(opts.stopTokens ?? model.config.eos_token_id);
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const useCache = opts.useCache ?? true;
  const cache = useCache ? model.createCache({ capacity: promptIds.length + maxNew }) : undefined;
  const ids = [...promptIds];
  let pending = ids.slice(); // ids the cache has not seen yet
  try {
    for (let n = 0; n < maxNew && ids.length <= maxPos; n++) {
      if (opts.signal?.aborted) return;
      const input = useCache ? pending : ids;
      const last = noGrad(() =>
        scope(() => {
          const x = tensor(Int32Array.from(input), { shape: [1, input.length], dtype: "i32", backend: model.backend });
          return model.forward(x, { cache, lastOnly: true }); // (1, 1, V)
        }),
      );
      let logits: Float32Array;
      try {
        logits = Float32Array.from(await last.read());
      } finally {
        last.dispose();
      }
      const next = sampleNext(logits, ids, opts, rng);
      if (stop.has(next)) return;
      ids.push(next);
      pending = [next];
      yield next;
    }
  } finally {
    cache?.dispose();
  }
}

/** All new ids at once. */
export async function generateIds(model: CausalLM, promptIds: readonly number[], opts: GenerateOptions = {}): Promise<number[]> {
  const out: number[] = [];
  for await (const id of generate(model, promptIds, opts)) out.push(id);
  return out;
}

/**
 * Stream decoded text. The prompt is a string (encoded with BOS) or ids; the tokenizer's EOS
 * joins the config's stop tokens. Pieces of multi-byte characters are held back until complete.
 */
export async function* streamText(
  model: CausalLM,
  tokenizer: TextTokenizer,
  prompt: string | readonly number[],
  opts: GenerateOptions = {},
): AsyncGenerator<string, void, undefined> {
  const ids = typeof prompt === "string" ? tokenizer.encode(prompt) : [...prompt];
  const stopTokens = opts.stopTokens ?? [...model.config.eos_token_id, ...(tokenizer.eosTokenId === null ? [] : [tokenizer.eosTokenId])];
  const stream = new TextStream(tokenizer, ids);
  for await (const id of generate(model, ids, { ...opts, stopTokens })) {
    const text = stream.push(id);
    if (text) yield text;
  }
  const rest = stream.flush();
  if (rest) yield rest;
}

/** Pick the next id from one row of logits (modified in place) given the sequence so far. */
export function sampleNext(logits: Float32Array, history: readonly number[], opts: SamplingOptions, rng: Rng): number {
  const V = logits.length;
  const penalty = opts.repetitionPenalty ?? 1;
  if (penalty !== 1) {
    for (const id of new Set(history)) {
      if (id >= 0 && id < V) logits[id] = logits[id] < 0 ? logits[id] * penalty : logits[id] / penalty;
    }
  }
  const temperature = opts.temperature ?? 0;
  if (!(temperature > 0)) return argmax(logits);

  for (let i = 0; i < V; i++) logits[i] /= temperature;
  const topK = opts.topK ?? 0;
  if (topK > 0 && topK < V) {
    const kth = Float32Array.from(logits).sort()[V - topK]; // k-th largest
    for (let i = 0; i < V; i++) if (logits[i] < kth) logits[i] = -Infinity;
  }
  // softmax
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > max) max = logits[i];
  const probs = new Float64Array(V);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += probs[i] = Math.exp(logits[i] - max);
  for (let i = 0; i < V; i++) probs[i] /= sum;

  const topP = opts.topP ?? 1;
  let candidates: number[];
  if (topP < 1) {
    const order = Array.from({ length: V }, (_, i) => i).filter((i) => probs[i] > 0);
    order.sort((a, b) => probs[b] - probs[a] || a - b);
    let cum = 0;
    let keep = 0;
    while (keep < order.length && (keep === 0 || cum < topP)) cum += probs[order[keep++]];
    candidates = order.slice(0, keep);
  } else {
    candidates = [];
    for (let i = 0; i < V; i++) if (probs[i] > 0) candidates.push(i);
  }
  let total = 0;
  for (const i of candidates) total += probs[i];
  const u = rng.next() * total;
  let acc = 0;
  for (const i of candidates) {
    acc += probs[i];
    if (u < acc) return i;
  }
  return candidates[candidates.length - 1];
}

/** First index of the maximum (run.c and numpy pick the first on ties). */
export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}
