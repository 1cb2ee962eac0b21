import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { SafetensorsError, type SafetensorsErrorCode } from "../src/node.ts";

/** LOWRANK_DATA_DIR, else ../shared/data next to the repository root. */
export function dataDir(): string {
  const fromEnv = process.env.LOWRANK_DATA_DIR;
  if (fromEnv !== undefined && fromEnv !== "") return resolve(fromEnv);
  const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
  return resolve(repoRoot, "../shared/data");
}

export const STORIES_HF = join(dataDir(), "models/stories260K-hf/model.safetensors");
export const STORIES_BIN = join(dataDir(), "models/stories260K/stories260K.bin");

/** A skip reason for node:test's `skip` option when the shared data is absent, else false. */
export function skipWithoutFile(path: string): string | false {
  return existsSync(path) ? false : `test data not found: ${path} (set LOWRANK_DATA_DIR to the shared data directory)`;
}

/** Runs `fn` with a fresh temporary directory that is removed afterwards. */
export async function withTmpDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "lowrank-safetensors-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Builds a file from an arbitrary header (object or raw JSON text) and a data buffer; no validation. */
export function rawFile(header: unknown, data: Uint8Array | number = 0, headerLength?: bigint): Uint8Array {
  const text = typeof header === "string" ? header : JSON.stringify(header);
  const json = new TextEncoder().encode(text);
  const body = typeof data === "number" ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.byteLength + body.byteLength);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(body, 8 + json.byteLength);
  return out;
}

/** Awaits a rejection and checks it is a SafetensorsError with the given code and fields. */
export async function rejectsWith(
  promise: Promise<unknown>,
  code: SafetensorsErrorCode,
  expect: { file?: string; tensor?: string; message?: RegExp } = {},
): Promise<SafetensorsError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `expected a SafetensorsError ${code}, but nothing was thrown`);
  assert.ok(caught instanceof SafetensorsError, `expected SafetensorsError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (expect.file !== undefined) {
    assert.equal(caught.file, expect.file);
    assert.ok(caught.message.startsWith(`${expect.file}:`), caught.message);
  }
  if (expect.tensor !== undefined) {
    assert.equal(caught.tensor, expect.tensor);
    assert.ok(caught.message.includes(JSON.stringify(expect.tensor)), caught.message);
  }
  if (expect.message !== undefined) assert.match(caught.message, expect.message);
  return caught;
}

/** Deterministic PRNG (mulberry32) so failures reproduce. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

/** The 47 tensor names and shapes of stories260K in HF Llama naming. */
export function storiesShapes(): Map<string, number[]> {
  const m = new Map<string, number[]>([["model.embed_tokens.weight", [512, 64]]]);
  for (let l = 0; l < 5; l++) {
    const p = `model.layers.${l}`;
    m.set(`${p}.input_layernorm.weight`, [64]);
    m.set(`${p}.post_attention_layernorm.weight`, [64]);
    m.set(`${p}.self_attn.q_proj.weight`, [64, 64]);
    m.set(`${p}.self_attn.k_proj.weight`, [32, 64]);
    m.set(`${p}.self_attn.v_proj.weight`, [32, 64]);
    m.set(`${p}.self_attn.o_proj.weight`, [64, 64]);
    m.set(`${p}.mlp.gate_proj.weight`, [172, 64]);
    m.set(`${p}.mlp.up_proj.weight`, [172, 64]);
    m.set(`${p}.mlp.down_proj.weight`, [64, 172]);
  }
  m.set("model.norm.weight", [64]);
  return m;
}
