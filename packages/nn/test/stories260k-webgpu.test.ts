/**
 * The same reference vectors as stories260k.test.ts, on the WebGPU backend: logits and per-token
 * loss within 1e-4, greedy ids identical to the reference (and so to the CPU backend).
 * Skips, saying why, when this runtime has no WebGPU adapter.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { type Backend, crossEntropy, noGrad, scope, tensor } from "@lowrank/tensor";
import { type LlamaForCausalLM, generateIds, loadHfModel, loadLlama2c } from "../src/node.ts";
import { acquireWebGpu, maxAbsDiff, noData, storiesDir, storiesHfDir } from "./helpers.ts";

interface Reference {
  greedy_with_prompt: { prompt_ids: number[]; steps: number; generated_ids: number[] };
  logits_after_bos_pos0: number[];
  logits_after_prompt_last_token: { position: number; logits: number[] };
  teacher_forced_loss: { ids: number[]; per_position_cross_entropy: number[] };
}

const gpu = noData ? noData : await acquireWebGpu();
const skip = typeof gpu === "string" ? gpu : false;
const ref: Reference | null = !skip && storiesDir ? JSON.parse(await readFile(join(storiesDir, "reference_vectors.json"), "utf8")) : null;
let model: Promise<LlamaForCausalLM> | null = null;
const load = () => (model ??= loadHfModel(storiesHfDir as string, { backend: gpu as Backend }));

async function logitsAt(m: LlamaForCausalLM, ids: number[], position: number): Promise<Float32Array> {
  const t = noGrad(() =>
    scope(() =>
      m
        .forward(tensor([ids], { dtype: "i32", backend: m.backend }))
        .narrow(1, position, 1)
        .contiguous(),
    ),
  );
  try {
    return (await t.read()) as Float32Array;
  } finally {
    t.dispose();
  }
}

test("webgpu: logits after BOS and after the prompt match the reference within 1e-4", { skip, timeout: 300_000 }, async (t) => {
  const m = await load();
  const r = ref as Reference;
  const bos = maxAbsDiff(await logitsAt(m, [1], 0), r.logits_after_bos_pos0);
  const prompt = maxAbsDiff(
    await logitsAt(m, r.greedy_with_prompt.prompt_ids, r.logits_after_prompt_last_token.position),
    r.logits_after_prompt_last_token.logits,
  );
  t.diagnostic(`${m.backend.device}: max |logit diff| after BOS ${bos.toExponential(2)}, after prompt ${prompt.toExponential(2)}`);
  assert.ok(bos < 1e-4 && prompt < 1e-4, `${bos}, ${prompt}`);
});

test("webgpu: greedy continuation of the prompt is identical to the reference", { skip, timeout: 300_000 }, async () => {
  const m = await load();
  const g = (ref as Reference).greedy_with_prompt;
  assert.deepEqual(await generateIds(m, g.prompt_ids, { maxNewTokens: g.steps - g.prompt_ids.length + 1 }), g.generated_ids);
});

test("webgpu: per-token teacher-forced loss within 1e-4", { skip, timeout: 300_000 }, async (t) => {
  const m = await load();
  const { ids, per_position_cross_entropy: want } = (ref as Reference).teacher_forced_loss;
  const loss = noGrad(() =>
    scope(() => {
      const logits = m.forward(tensor([ids.slice(0, -1)], { dtype: "i32", backend: m.backend }));
      return crossEntropy(logits, tensor([ids.slice(1)], { dtype: "i32", backend: m.backend }), { reduction: "none" });
    }),
  );
  const d = maxAbsDiff((await loss.read()) as Float32Array, want);
  loss.dispose();
  t.diagnostic(`max |loss diff| ${d.toExponential(2)}`);
  assert.ok(d < 1e-4, `per-token loss diff ${d}`);
});

test("webgpu: the llama2.c file gives the same logits as the HF directory", { skip, timeout: 300_000 }, async (t) => {
  const m2 = await loadLlama2c(join(storiesDir as string, "stories260K.bin"), { backend: gpu as Backend });
  const ids = (ref as Reference).greedy_with_prompt.prompt_ids;
  const d = maxAbsDiff(await logitsAt(m2, ids, ids.length - 1), await logitsAt(await load(), ids, ids.length - 1));
  m2.dispose();
  t.diagnostic(`max |logit diff| llama2.c vs HF on webgpu ${d.toExponential(2)}`);
  assert.ok(d < 1e-5, `${d}`);
});

test("webgpu: release the device", { skip }, async () => {
  (await load()).dispose();
  (gpu as Backend).dispose();
});
