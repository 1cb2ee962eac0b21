/**
 * Several sequences stepped in one forward (continuous batching): prompts of different lengths
 * prefilled together, then decode steps in which a new sequence joins with its whole prompt between
 * others that add one token. Each sequence has its own KV cache, and every row's logits equal that
 * sequence run alone. Covers GQA, a sliding window shorter than the sequences, and Qwen3's q/k norms.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { KVCache, LlamaForCausalLM } from "../src/node.ts";
import { noGrad, scope, tensor } from "@lowrank/tensor";
import { backend, tinyModel } from "./helpers.ts";

async function alone(model: LlamaForCausalLM, cache: KVCache, ids: number[]): Promise<Float32Array> {
  const t = noGrad(() =>
    scope(() => model.forward(tensor(Int32Array.from(ids), { shape: [1, ids.length], dtype: "i32", backend }), { cache, lastOnly: true })),
  );
  const v = Float32Array.from(await t.read());
  t.dispose();
  return v;
}

for (const [name, over, capacity] of [
  ["llama (GQA)", {}, undefined],
  ["llama (GQA), caches grown while decoding", {}, 2],
  ["mistral, window 4", { model_type: "mistral", sliding_window: 4 }, undefined],
  ["qwen3 (q/k norm)", { model_type: "qwen3", head_dim: 8 }, undefined],
] as const) {
  test(`stepSegments: prompts and single tokens of several sequences in one forward equal each sequence alone: ${name}`, async () => {
    const model = tinyModel(over as Record<string, unknown>, 5);
    model.eval();
    const V = model.config.vocab_size;
    const prompts = [
      [1, 5, 9],
      [1, 7],
      [1, 3, 4, 8, 11, 12],
      [1, 20, 21, 22, 23],
    ];
    const late = [1, 30, 31, 32, 33, 34, 35]; // joins at step 2
    const batched = [...prompts, late].map(() => model.createCache({ capacity }));
    const single = [...prompts, late].map(() => model.createCache());
    let segs: number[][] = prompts.map((p) => [...p]);
    let active = prompts.map((_, i) => i);
    for (let step = 0; step < 5; step++) {
      if (step === 2) {
        // Joins second in the batch: the sequences decoding around it are not consecutive rows.
        segs.splice(1, 0, [...late]);
        active = [active[0], prompts.length, ...active.slice(1)];
      }
      const t = noGrad(() =>
        model.stepSegments(
          segs,
          active.map((i) => batched[i]),
        ),
      );
      assert.deepEqual(t.shape, [1, active.length, V]);
      const got = Float32Array.from(await t.read());
      t.dispose();
      for (let k = 0; k < active.length; k++) {
        const i = active[k];
        const want = await alone(model, single[i], segs[k]);
        for (let j = 0; j < V; j++) {
          assert.ok(
            Math.abs(got[k * V + j] - want[j]) <= 1e-5 * (1 + Math.abs(want[j])),
            `${name} step ${step} sequence ${i} logit ${j}: together ${got[k * V + j]}, alone ${want[j]}`,
          );
        }
        assert.equal(batched[i].length, single[i].length);
      }
      segs = active.map((i, k) => [(segs[k][segs[k].length - 1] * 3 + i + step) % V]);
    }
    for (const c of [...batched, ...single]) c.dispose();
    model.dispose();
  });
}

test("stepSegments refuses segments and caches of different counts, and empty segments", () => {
  const model = tinyModel({}, 5);
  assert.throws(() => model.stepSegments([[1], [2]], [model.createCache()]), /forwardSegments: 2 segments for 1 caches/);
  assert.throws(() => model.stepSegments([[]], [model.createCache()]), /a segment has no ids/);
  model.dispose();
});
