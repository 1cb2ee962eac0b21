/**
 * Rows with different adapters in one batch (batched multi-adapter serving): every row's logits
 * equal the same row run alone with its adapter set, and adapters that cannot share a batch
 * (DoRA) are refused by name.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { quantizeModel } from "@lowrank/nn";
import { getPeftModel } from "../src/node.ts";
import { logits, maxAbsDiff, randomizeAdapter, tinyModel } from "./helpers.ts";

const quiet = { warn: () => {} };

/**
 * Runs `seqs` (3 ids each) as one batch, sequence i on adapters[i] (null: the base), and checks each
 * sequence's logits against the same sequence run alone with setAdapter. Returns the batch's logits.
 */
function batchedEqualsAlone(
  model: Parameters<typeof logits>[0],
  peft: ReturnType<typeof getPeftModel>,
  seqs: number[][],
  adapters: readonly (string | null)[],
): Float32Array {
  peft.setRowAdapters(seqs.flatMap((s, i) => s.map(() => adapters[i])));
  const batched = logits(model, seqs);
  peft.setRowAdapters(null);
  const V = batched.length / (seqs.length * 3);
  seqs.forEach((s, i) => {
    peft.setAdapter(adapters[i] ?? []);
    const alone = logits(model, [s]);
    const got = batched.subarray(i * 3 * V, (i + 1) * 3 * V);
    assert.ok(maxAbsDiff(got, alone) < 1e-5, `sequence ${i} (adapter ${adapters[i]}): max diff ${maxAbsDiff(got, alone)}`);
  });
  return batched;
}

for (const [label, adapters] of [
  ["adapters interleaved", ["a", "b", null, "a", "c"]],
  ["adapters adjacent, a base row between", ["a", "a", "b", null, "c"]],
] as const)
  test(`setRowAdapters: each row takes its own adapter (or none), equal to running it alone: ${label}`, () => {
    const model = tinyModel();
    const peft = getPeftModel(model, { target_modules: ["q_proj", "v_proj", "down_proj"], r: 4, lora_alpha: 8 }, "a", quiet);
    peft.addAdapter("b", { target_modules: "all-linear", r: 2, lora_alpha: 8 });
    peft.addAdapter("c", { target_modules: ["o_proj"], r: 8, lora_alpha: 4, use_rslora: true });
    for (const [n, seed] of [
      ["a", 1],
      ["b", 2],
      ["c", 3],
    ] as const)
      randomizeAdapter(peft, n, seed);
    model.eval();
    // Batch of 5 sequences, 3 positions each: rows are (sequence, position) flattened.
    const seqs = [
      [1, 5, 9],
      [2, 7, 3],
      [4, 4, 8],
      [6, 1, 2],
      [3, 9, 9],
    ];
    const batched = batchedEqualsAlone(model, peft, seqs, adapters);
    const V = batched.length / (seqs.length * 3);
    // The adapters really differ: a row run with another adapter gives other logits.
    peft.setAdapter("b");
    assert.ok(maxAbsDiff(logits(model, [seqs[0]]), batched.subarray(0, 3 * V)) > 1e-3);
    // Every row on one adapter still matches.
    peft.setRowAdapters(seqs.flatMap((s) => s.map(() => "b")));
    const allB = logits(model, seqs);
    peft.setRowAdapters(null);
    peft.setAdapter("b");
    assert.ok(maxAbsDiff(allB, logits(model, seqs)) < 1e-5);
  });

test("setRowAdapters refuses an adapter that cannot share a batch, naming it", () => {
  const model = tinyModel();
  const peft = getPeftModel(model, { target_modules: ["q_proj"], r: 4 }, "plain", quiet);
  peft.addAdapter("dora", { target_modules: ["q_proj"], r: 4, use_dora: true });
  assert.equal(peft.rowBatchable("plain"), true);
  assert.equal(peft.rowBatchable("dora"), false);
  assert.throws(() => peft.setRowAdapters(["plain", "dora"]), /adapter 'dora' cannot share a batch with others/);
  assert.throws(() => peft.setRowAdapters(["nope"]), /no adapter 'nope'/);
});

test("setRowAdapters over 4-bit bases: each row equals running it alone with its adapter", async () => {
  const model = tinyModel({ hidden_size: 32, intermediate_size: 64, num_attention_heads: 4, num_key_value_heads: 2 });
  await quantizeModel(model, { blocksize: 32 });
  const peft = getPeftModel(model, { target_modules: ["q_proj", "down_proj"], r: 4, lora_alpha: 8 }, "a", quiet);
  peft.addAdapter("b", { target_modules: "all-linear", r: 2, lora_alpha: 8 });
  randomizeAdapter(peft, "a", 1);
  randomizeAdapter(peft, "b", 2);
  model.eval();
  batchedEqualsAlone(
    model,
    peft,
    [
      [1, 5, 9],
      [2, 7, 3],
      [4, 4, 8],
    ],
    ["b", null, "a"],
  );
});

test("setRowAdapters: sequences joining and leaving keep each row on its adapter, and an adapter deleted and added again under its name is stacked anew", () => {
  const model = tinyModel();
  const peft = getPeftModel(model, { target_modules: ["q_proj", "v_proj"], r: 4, lora_alpha: 8 }, "a", quiet);
  peft.addAdapter("b", { target_modules: ["q_proj", "v_proj"], r: 2, lora_alpha: 4 });
  randomizeAdapter(peft, "a", 1);
  randomizeAdapter(peft, "b", 2);
  model.eval();
  const alone = (seq: number[], adapter: string) => {
    peft.setRowAdapters(null);
    peft.setAdapter(adapter);
    return logits(model, [seq]);
  };
  // Row assignments in turn without ending row adapters between them (as the server's steps do).
  const batched = (seqs: number[][], adapters: string[]) => {
    peft.setRowAdapters(seqs.flatMap((s, i) => s.map(() => adapters[i])));
    return logits(model, seqs);
  };
  const seqs = [
    [1, 5, 9],
    [2, 7, 3],
    [4, 4, 8],
  ];
  const check = (got: Float32Array, adapters: string[], what: string) => {
    const V = got.length / (adapters.length * 3);
    const want = adapters.map((a, i) => alone(seqs[i], a));
    want.forEach((w, i) => assert.ok(maxAbsDiff(got.subarray(i * 3 * V, (i + 1) * 3 * V), w) < 1e-5, `${what}: sequence ${i} on ${adapters[i]}`));
  };
  const first = batched(seqs, ["b", "a", "b"]);
  const second = batched(seqs.slice(0, 2), ["a", "b"]); // one left, the others swapped: the same two adapters
  check(first, ["b", "a", "b"], "three sequences");
  check(second, ["a", "b"], "after one left");
  batched(seqs, ["b", "a", "b"]);
  peft.deleteAdapter("b");
  peft.addAdapter("b", { target_modules: ["q_proj", "v_proj"], r: 2, lora_alpha: 4 });
  randomizeAdapter(peft, "b", 3);
  check(batched(seqs, ["b", "a", "b"]), ["b", "a", "b"], "b replaced");
  peft.setRowAdapters(null);
});
