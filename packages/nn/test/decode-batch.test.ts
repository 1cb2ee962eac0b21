/**
 * A batched decode step (continuous batching): N sequences at different positions, each with its
 * own KV cache, advance one token in one forward, and every row's logits equal that sequence's
 * own cached step. Covers GQA, a sliding window shorter than the sequences, and Qwen3's q/k norms.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type KVCache, type LlamaForCausalLM } from "../src/index.ts";
import { noGrad, scope, tensor } from "@lowrank/tensor";
import { backend, tinyModel } from "./helpers.ts";

async function stepAlone(model: LlamaForCausalLM, cache: KVCache, id: number): Promise<Float32Array> {
  const t = noGrad(() => scope(() => model.forward(tensor(Int32Array.of(id), { shape: [1, 1], dtype: "i32", backend }), { cache, lastOnly: true })));
  const v = Float32Array.from(await t.read());
  t.dispose();
  return v;
}

for (const [name, over] of [
  ["llama (GQA)", {}],
  ["mistral, window 4", { model_type: "mistral", sliding_window: 4 }],
  ["qwen3 (q/k norm)", { model_type: "qwen3", head_dim: 8 }],
] as const) {
  test(`decodeStep over sequences of different lengths equals each sequence's own step: ${name}`, async () => {
    const model = tinyModel(over as Record<string, unknown>, 5);
    model.eval();
    const prompts = [[1, 5, 9], [1, 7], [1, 3, 4, 8, 11, 12], [1, 20, 21, 22, 23]];
    const prefill = (cache: KVCache, ids: number[]) =>
      noGrad(() => scope(() => void model.forward(tensor(Int32Array.from(ids), { shape: [1, ids.length], dtype: "i32", backend }), { cache, lastOnly: true })));
    const batched = prompts.map(() => model.createCache());
    const alone = prompts.map(() => model.createCache());
    prompts.forEach((p, i) => { prefill(batched[i], p); prefill(alone[i], p); });
    const V = model.config.vocab_size;
    let next = prompts.map((p) => (p[p.length - 1] * 7) % V);
    for (let step = 0; step < 5; step++) {
      const t = noGrad(() => model.decodeStep(next, batched));
      assert.deepEqual(t.shape, [1, prompts.length, V]);
      const got = Float32Array.from(await t.read());
      t.dispose();
      for (let i = 0; i < prompts.length; i++) {
        const want = await stepAlone(model, alone[i], next[i]);
        for (let j = 0; j < V; j++) {
          assert.ok(Math.abs(got[i * V + j] - want[j]) <= 1e-5 * (1 + Math.abs(want[j])), `${name} step ${step} sequence ${i} logit ${j}: batched ${got[i * V + j]}, alone ${want[j]}`);
        }
        assert.equal(batched[i].length, alone[i].length);
      }
      next = next.map((n, i) => (n * 3 + i + step) % V);
    }
    for (const c of [...batched, ...alone]) c.dispose();
    model.dispose();
  });
}

test("decodeStep refuses ids and caches of different counts", () => {
  const model = tinyModel({}, 5);
  assert.throws(() => model.decodeStep([1, 2], [model.createCache()]), /forwardDecode: 2 ids for 1 caches/);
  model.dispose();
});
