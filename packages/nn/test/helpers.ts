/** Shared test setup: the CPU backend, the data directory (read from the environment here, at the edge), tiny configs. */
import process from "node:process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Backend, Rng, setDefaultBackend } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { LlamaForCausalLM, type LlamaConfig, parseLlamaConfig, randomInit, resolveDataDir } from "../src/node.ts";

export const backend = createCpuBackend({ threads: 0 });
setDefaultBackend(backend);

export const dataDir = await resolveDataDir({ env: process.env });
export const storiesDir = dataDir ? join(dataDir, "models", "stories260K") : null;
export const storiesHfDir = dataDir ? join(dataDir, "models", "stories260K-hf") : null;
/** Reason to skip data-dependent tests, or false. */
export const noData = dataDir ? false : "data dir not found: set LOWRANK_DATA_DIR or put shared/data beside the repo (see packages/nn/README.md)";

/** A small GQA config that exercises every code path in milliseconds. */
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

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "lowrank-nn-"));
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

/** llama2.c tokenizer file bytes for pieces and scores. */
export function tokBytes(pieces: string[], score: (i: number) => number): Uint8Array {
  const enc = new TextEncoder();
  const chunks: number[] = [];
  const push32 = (v: number, f = false) => {
    const b = new Uint8Array(4);
    if (f) new DataView(b.buffer).setFloat32(0, v, true);
    else new DataView(b.buffer).setInt32(0, v, true);
    chunks.push(...b);
  };
  push32(Math.max(...pieces.map((p) => enc.encode(p).length)));
  pieces.forEach((p, i) => {
    const b = enc.encode(p);
    push32(score(i), true);
    push32(b.length);
    chunks.push(...b);
  });
  return Uint8Array.from(chunks);
}

/** A WebGPU backend through the runtime's edge, or the reason there is none (tests skip with it). */
export async function acquireWebGpu(): Promise<Backend | string> {
  try {
    const edge = "Deno" in globalThis ? await import("@lowrank/backend-webgpu/deno") : await import("@lowrank/backend-webgpu/node");
    const { createWebGpuBackend } = await import("@lowrank/backend-webgpu");
    return createWebGpuBackend(await edge.requestWebGpu());
  } catch (err) {
    return `no WebGPU backend here: ${err instanceof Error ? err.message : String(err)}`;
  }
}
