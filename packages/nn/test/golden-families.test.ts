/**
 * Each model family against an independent reference: scripts/golden/reference.py (plain PyTorch,
 * float64, written from transformers' modeling code) built a small random checkpoint per family
 * and recorded its logits and a greedy continuation (fixtures/golden/<family>/). Here the project's
 * loader reads each checkpoint and the model must give every position's logits within 1e-4 and
 * the same greedy ids (KV cache on), on the CPU backend and, where this runtime has a WebGPU
 * adapter, on WebGPU (skipped, saying why, when it has none).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Backend, noGrad, scope, tensor } from "@lowrank/tensor";
import { type LlamaForCausalLM, generateIds, loadHfModel } from "../src/node.ts";
import { acquireWebGpu, backend as cpu, maxAbsDiff } from "./helpers.ts";

const FIXTURES = join(fileURLToPath(new URL(".", import.meta.url)), "fixtures", "golden");

/** Family fixture -> what it exercises (the config.json beside the weights says how). */
export const FAMILIES: Record<string, string> = {
  llama3: "Llama 3.x: GQA, head_dim != hidden/heads, llama3 RoPE scaling, eos list",
  "llama-linear": "Llama 1/2: linear RoPE scaling, attention_bias and mlp_bias",
  "llama-dynamic": "Llama: dynamic NTK RoPE past max_position_embeddings",
  smollm2: "SmolLM2: tied head absent from the file, 3 heads over 1 kv head",
  mistral: "Mistral: sliding window 8 under 20 positions, and in cached generation",
  qwen2: "Qwen2/2.5: q/k/v biases, tied head, use_sliding_window on layers >= max_window_layers",
  qwen3: "Qwen3: q_norm/k_norm per head before RoPE, head_dim from the config, tied head",
};

interface Golden {
  input_ids: number[];
  logits_shape: [number, number];
  logits: number[];
  greedy: { prompt_ids: number[]; new_tokens: number; generated_ids: number[] };
}

const golden = (family: string): Promise<Golden> => readFile(join(FIXTURES, family, "golden.json"), "utf8").then(JSON.parse);

async function logits(m: LlamaForCausalLM, ids: number[]): Promise<Float32Array> {
  const t = noGrad(() => scope(() => m.forward(tensor([ids], { dtype: "i32", backend: m.backend }))));
  try {
    return (await t.read()) as Float32Array;
  } finally {
    t.dispose();
  }
}

/** Logits max |diff| and greedy ids for one family on one backend (the model is freed after). */
export async function checkFamily(family: string, backend: Backend): Promise<{ diff: number; ids: number[]; want: number[] }> {
  const g = await golden(family);
  const m = await loadHfModel(join(FIXTURES, family), { backend });
  try {
    const got = await logits(m, g.input_ids);
    assert.equal(got.length, g.logits_shape[0] * g.logits_shape[1]);
    const diff = maxAbsDiff(got, g.logits);
    // No stop tokens: the reference generated a fixed number of ids whatever they are.
    const ids = await generateIds(m, g.greedy.prompt_ids, { maxNewTokens: g.greedy.new_tokens, stopTokens: [] });
    return { diff, ids, want: g.greedy.generated_ids };
  } finally {
    m.dispose();
  }
}

for (const [family, what] of Object.entries(FAMILIES)) {
  test(`cpu golden ${family} (${what}): logits within 1e-4, greedy ids identical`, async (t) => {
    const r = await checkFamily(family, cpu);
    t.diagnostic(`max |logit diff| ${r.diff.toExponential(2)}`);
    assert.ok(r.diff <= 1e-4, `${family}: max |logit diff| ${r.diff} > 1e-4`);
    assert.deepEqual(r.ids, r.want, `${family}: greedy ids`);
  });
}

const gpu = await acquireWebGpu();
const skip = typeof gpu === "string" ? gpu : false;

for (const [family, what] of Object.entries(FAMILIES)) {
  test(`webgpu golden ${family} (${what}): logits within 1e-4, greedy ids identical`, { skip, timeout: 300_000 }, async (t) => {
    const r = await checkFamily(family, gpu as Backend);
    t.diagnostic(`${(gpu as Backend).device}: max |logit diff| ${r.diff.toExponential(2)}`);
    assert.ok(r.diff <= 1e-4, `${family}: max |logit diff| ${r.diff} > 1e-4`);
    assert.deepEqual(r.ids, r.want, `${family}: greedy ids`);
  });
}

test("webgpu: release the device", { skip }, () => {
  (gpu as Backend).dispose();
});
