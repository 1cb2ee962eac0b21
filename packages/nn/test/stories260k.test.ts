/**
 * stories260K (Karpathy's tinyllamas) loaded from the llama2.c file and from the HF directory
 * must reproduce reference_vectors.json (an independent NumPy re-implementation of run.c).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { crossEntropy, noGrad, scope, tensor } from "@lowrank/tensor";
import {
  type LlamaForCausalLM,
  type TextTokenizer,
  generate,
  generateIds,
  loadHfModel,
  loadLlama2c,
  loadLlama2cTokenizer,
  loadTokenizer,
  streamText,
} from "../src/node.ts";
import { maxAbsDiff, noData, storiesDir, storiesHfDir } from "./helpers.ts";

interface Reference {
  greedy_no_prompt: { generated_ids: number[]; generated_text: string };
  greedy_with_prompt: { prompt: string; prompt_ids: number[]; steps: number; generated_ids: number[]; generated_text: string };
  logits_after_bos_pos0: number[];
  logits_after_prompt_last_token: { position: number; logits: number[] };
  encode: { text: string; ids: number[] }[];
  teacher_forced_loss: { ids: number[]; per_position_cross_entropy: number[]; mean_cross_entropy_nats: number };
}

const skip = noData;
const ref: Reference | null = storiesDir ? JSON.parse(await readFile(join(storiesDir, "reference_vectors.json"), "utf8")) : null;
const R = () => ref as Reference;

const models: Record<string, () => Promise<LlamaForCausalLM>> = {
  "llama2.c stories260K.bin": () => loadLlama2c(join(storiesDir as string, "stories260K.bin")),
  "HF stories260K-hf": () => loadHfModel(storiesHfDir as string),
};
const loaded = new Map<string, Promise<LlamaForCausalLM>>();
const model = (name: string) => {
  if (!loaded.has(name)) loaded.set(name, models[name]());
  return loaded.get(name) as Promise<LlamaForCausalLM>;
};

/** Logits (V) at `position` after running `ids`. */
function logitsAt(m: LlamaForCausalLM, ids: number[], position: number): Float32Array {
  return noGrad(() =>
    scope(() => {
      const out = m.forward(tensor([ids], { dtype: "i32" })); // (1, T, V)
      return out.narrow(1, position, 1).readSync() as Float32Array;
    }),
  );
}

for (const name of Object.keys(models)) {
  test(`${name}: logits after BOS and after the prompt match the reference within 1e-4`, { skip }, async (t) => {
    const m = await model(name);
    const bos = maxAbsDiff(logitsAt(m, [1], 0), R().logits_after_bos_pos0);
    const { position, logits } = R().logits_after_prompt_last_token;
    const prompt = maxAbsDiff(logitsAt(m, R().greedy_with_prompt.prompt_ids, position), logits);
    t.diagnostic(`max |logit diff|: after BOS ${bos.toExponential(2)}, after prompt ${prompt.toExponential(2)}`);
    assert.ok(bos < 1e-4, `after BOS: ${bos}`);
    assert.ok(prompt < 1e-4, `after prompt: ${prompt}`);
  });

  test(`${name}: greedy continuation of "Once upon a time" (60 tokens) is identical`, { skip, timeout: 60_000 }, async () => {
    const m = await model(name);
    const g = R().greedy_with_prompt;
    const ids = await generateIds(m, g.prompt_ids, { maxNewTokens: g.steps - g.prompt_ids.length + 1 });
    assert.deepEqual(ids, g.generated_ids);
  });

  test(`${name}: greedy from BOS (256 tokens) is identical`, { skip, timeout: 120_000 }, async (t) => {
    const m = await model(name);
    const t0 = performance.now();
    const ids = await generateIds(m, [1], { maxNewTokens: 256 });
    t.diagnostic(`256 tokens in ${(performance.now() - t0).toFixed(0)} ms`);
    assert.deepEqual(ids, R().greedy_no_prompt.generated_ids);
  });

  test(`${name}: per-token teacher-forced loss within 1e-4`, { skip }, async (t) => {
    const m = await model(name);
    const { ids, per_position_cross_entropy: want, mean_cross_entropy_nats: mean } = R().teacher_forced_loss;
    const [perToken, avg] = noGrad(() =>
      scope(() => {
        const logits = m.forward(tensor([ids.slice(0, -1)], { dtype: "i32" }));
        const targets = tensor([ids.slice(1)], { dtype: "i32" });
        return [crossEntropy(logits, targets, { reduction: "none" }).readSync(), crossEntropy(logits, targets).readSync()[0]];
      }),
    );
    const d = maxAbsDiff(perToken, want);
    t.diagnostic(`max |loss diff| ${d.toExponential(2)}; mean ${avg.toFixed(6)} vs ${mean.toFixed(6)}`);
    assert.ok(d < 1e-4, `per-token loss diff ${d}`);
    assert.ok(Math.abs(avg - mean) < 1e-4);
  });
}

test("both loaders give bit-identical weights (the q/k permutation matches HF's converter)", { skip }, async () => {
  const a = (await model("llama2.c stories260K.bin")).stateDict();
  const b = (await model("HF stories260K-hf")).stateDict();
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [k, t] of a) assert.deepEqual(t.readSync(), (b.get(k) as typeof t).readSync(), k);
  assert.equal((await model("llama2.c stories260K.bin")).config.tie_word_embeddings, true);
});

const tokenizers: Record<string, () => Promise<TextTokenizer>> = {
  "llama2.c tok512.bin": () => loadLlama2cTokenizer(join(storiesDir as string, "tok512.bin")),
  "HF tokenizer.json": () => loadTokenizer(storiesHfDir as string),
};

for (const [name, load] of Object.entries(tokenizers)) {
  test(`${name}: encode matches the reference ids, decode gives the reference text`, { skip }, async () => {
    const tok = await load();
    assert.equal(tok.vocabSize, 512);
    assert.deepEqual([tok.bosTokenId, tok.eosTokenId], [1, 2]);
    for (const e of R().encode) assert.deepEqual(tok.encode(e.text), e.ids, JSON.stringify(e.text));
    assert.equal(tok.decode(R().greedy_no_prompt.generated_ids), R().greedy_no_prompt.generated_text);
    const g = R().greedy_with_prompt;
    const full = tok.decode([...g.prompt_ids, ...g.generated_ids]);
    assert.equal(full, g.prompt + g.generated_text);
  });

  test(`${name}: streamText yields the reference continuation piece by piece`, { skip, timeout: 60_000 }, async () => {
    const tok = await load();
    const m = await model("HF stories260K-hf");
    const g = R().greedy_with_prompt;
    const pieces: string[] = [];
    for await (const s of streamText(m, tok, g.prompt, { maxNewTokens: g.generated_ids.length })) pieces.push(s);
    assert.ok(pieces.length > 10);
    assert.equal(pieces.join(""), g.generated_text);
  });
}

test("llama2.c and HF tokenizers agree on TinyStories and Tiny Shakespeare text", { skip }, async () => {
  const [a, b] = await Promise.all([tokenizers["llama2.c tok512.bin"](), tokenizers["HF tokenizer.json"]()]);
  const dataDir = join(storiesDir as string, "..", "..", "datasets");
  const stories = (await readFile(join(dataDir, "tinystories", "tinystories_sample.txt"), "utf8")).split("<|endoftext|>");
  const shakespeare = await readFile(join(dataDir, "tinyshakespeare", "input.txt"), "utf8");
  const texts = [...stories, ...Array.from({ length: 10 }, (_, i) => shakespeare.slice(i * 5000, i * 5000 + 2000)), "naïve café — 東京 🎉\t\r\n  x"];
  for (const text of texts) assert.deepEqual(a.encode(text), b.encode(text), JSON.stringify(text.slice(0, 40)));
});

test("the loaded model's memory does not grow per generated token", { skip, timeout: 60_000 }, async () => {
  const m = await model("HF stories260K-hf");
  const backend = m.backend;
  const live: number[] = [];
  let n = 0;
  for await (const _ of generate(m, [1], { maxNewTokens: 40 })) {
    if (++n % 10 === 0) live.push(backend.memory().liveBuffers);
  }
  // The cache holds 2 tensors per layer whatever its length; nothing else survives a step.
  assert.equal(new Set(live).size, 1, `live buffers per 10 tokens: ${live}`);
  const after = backend.memory().liveBuffers;
  assert.equal(after, live[0] - 2 * m.config.num_hidden_layers, "the cache is freed when generation ends");
});
