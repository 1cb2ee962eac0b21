/** generation_config.json as transformers' GenerationConfig reads it: stop tokens and default sampling. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultSampling, loadGenerationConfig, parseGenerationConfig } from "../src/node.ts";
import { withTempDir } from "./helpers.ts";

test("Llama 3 instruct's file: a list of stop tokens and sampling on", () => {
  // meta-llama/Llama-3.2-1B-Instruct generation_config.json (its published values).
  const g = parseGenerationConfig({
    bos_token_id: 128000,
    do_sample: true,
    eos_token_id: [128001, 128008, 128009],
    temperature: 0.6,
    top_p: 0.9,
    transformers_version: "4.45.0",
  });
  assert.deepEqual(g.eos_token_id, [128001, 128008, 128009]);
  assert.deepEqual(defaultSampling(g), { temperature: 0.6, topK: 50, topP: 0.9, repetitionPenalty: 1 });
});

test("one stop token, no sampling: greedy whatever the temperature says (transformers ignores it then)", () => {
  const g = parseGenerationConfig({ eos_token_id: 2, temperature: 0.3, repetition_penalty: 1.1 });
  assert.deepEqual(g.eos_token_id, [2]);
  assert.equal(g.do_sample, false);
  assert.deepEqual(defaultSampling(g), { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1.1 });
  assert.deepEqual(defaultSampling(null), { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 });
});

test("bad fields name the file, the field and what was expected", () => {
  assert.throws(() => parseGenerationConfig([], "g.json"), /^Error: g\.json: expected a JSON object/);
  assert.throws(() => parseGenerationConfig({ eos_token_id: "2" }, "g.json"), /g\.json: eos_token_id = "2": expected a token id or a list of token ids/);
  assert.throws(() => parseGenerationConfig({ top_p: 0 }, "g.json"), /g\.json: top_p = 0: expected a number in \(0, 1\]/);
  assert.throws(() => parseGenerationConfig({ do_sample: "yes" }, "g.json"), /g\.json: do_sample = "yes": expected true or false/);
});

test("a directory without the file gives null; with it, the parsed file named by its path", async () => {
  await withTempDir(async (dir) => {
    assert.equal(await loadGenerationConfig(dir), null);
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [7, 9], do_sample: true, top_k: 20 }));
    const g = await loadGenerationConfig(dir);
    assert.deepEqual(g?.eos_token_id, [7, 9]);
    assert.equal(g?.top_k, 20);
    assert.equal(g?.file, join(dir, "generation_config.json"));
  });
});
