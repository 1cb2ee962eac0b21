/** Sampling rules, stop tokens, seeding, streaming and per-token memory on a tiny random model. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng } from "@lowrank/tensor";
import { Llama2cTokenizer, argmax, generate, generateIds, sampleNext, streamText } from "../src/node.ts";
import { backend, tinyModel, tokBytes } from "./helpers.ts";

const logits = () => Float32Array.from([1, 3, 2, 3, -1, 0.5]);

test("greedy: argmax, first index on ties; temperature 0 ignores the rng", () => {
  assert.equal(argmax(logits()), 1);
  const rng = new Rng(1);
  assert.equal(sampleNext(logits(), [], {}, rng), 1);
  assert.equal(rng.counter, 0);
});

test("repetition penalty follows HF: divide positive logits, multiply negative ones", () => {
  const l = logits();
  sampleNext(l, [1, 4, 1], { repetitionPenalty: 2 }, new Rng(0));
  assert.deepEqual(Array.from(l), [1, 1.5, 2, 3, -2, 0.5]);
  assert.equal(sampleNext(logits(), [1], { repetitionPenalty: 2 }, new Rng(0)), 3);
});

test("top-k keeps the k best (ties at the k-th kept), top-p the smallest nucleus, sampling follows softmax", () => {
  const draw = (opts: object, n = 4000, seed = 3) => {
    const rng = new Rng(seed);
    const counts = new Array(6).fill(0);
    for (let i = 0; i < n; i++) counts[sampleNext(logits(), [], opts, rng)]++;
    return counts.map((c) => c / n);
  };
  const k1 = draw({ temperature: 1, topK: 1 });
  assert.deepEqual(
    k1.map((p) => p > 0),
    [false, true, false, true, false, false],
    "k=1 keeps both tied maxima",
  );
  const k3 = draw({ temperature: 1, topK: 3 });
  assert.deepEqual(
    k3.map((p) => p > 0),
    [false, true, true, true, false, false],
  );
  // Softmax of [1,3,2,3,-1,.5]: tokens 1 and 3 have ~0.38 each, 2 ~0.14.
  const z = [1, 3, 2, 3, -1, 0.5].map(Math.exp);
  const sum = z.reduce((a, b) => a + b);
  const full = draw({ temperature: 1 });
  full.forEach((p, i) => assert.ok(Math.abs(p - z[i] / sum) < 0.03, `token ${i}: ${p} vs ${z[i] / sum}`));
  const nucleus = draw({ temperature: 1, topP: 0.5 });
  assert.deepEqual(
    nucleus.map((p) => p > 0),
    [false, true, false, true, false, false],
    "0.38 + 0.38 reaches 0.5",
  );
  const cold = draw({ temperature: 0.05 });
  assert.ok(cold[1] + cold[3] > 0.999);
});

test("seeded sampling is reproducible and seed-dependent; stop tokens end generation", async () => {
  const m = tinyModel({}, 4, 0.6);
  const opts = { temperature: 1, maxNewTokens: 30, stopTokens: [] as number[] };
  const a = await generateIds(m, [1, 2, 3], { ...opts, seed: 1 });
  const b = await generateIds(m, [1, 2, 3], { ...opts, seed: 1 });
  const c = await generateIds(m, [1, 2, 3], { ...opts, seed: 2 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const stopAt = a[5];
  const stopped = await generateIds(m, [1, 2, 3], { ...opts, seed: 1, stopTokens: [stopAt] });
  assert.deepEqual(stopped, a.slice(0, a.indexOf(stopAt)), "the stop token ends generation and is not yielded");
  // A caller's rng advances one draw per sampled token, so a stream can be continued.
  const rng = new Rng(9);
  const first = await generateIds(m, [1], { ...opts, maxNewTokens: 3, rng });
  assert.equal(first.length, 3);
  assert.equal(rng.counter, 3);
  m.dispose();
});

test("generation stops at max_position_embeddings; abort and break free the cache", async () => {
  const m = tinyModel({ max_position_embeddings: 10 });
  const ids = await generateIds(m, [1, 2, 3], { maxNewTokens: 100, stopTokens: [] });
  assert.equal(ids.length, 8, "positions 0..9 processed, the token after the last one is still produced");
  const before = backend.memory().liveBuffers;
  const ctrl = new AbortController();
  let n = 0;
  for await (const _ of generate(m, [1], { maxNewTokens: 100, stopTokens: [], signal: ctrl.signal })) if (++n === 3) ctrl.abort();
  assert.equal(n, 3);
  for await (const _ of generate(m, [1], { maxNewTokens: 100, stopTokens: [] })) break;
  assert.equal(backend.memory().liveBuffers, before);
  await assert.rejects(generateIds(m, []), /at least one id/);
  m.dispose();
});

test("memory stays flat per token: the cache holds two tensors per layer, nothing else survives a step", async () => {
  const m = tinyModel({}, 2);
  const counts: number[] = [];
  let n = 0;
  const before = backend.memory().liveBuffers;
  for await (const _ of generate(m, [1, 5], { maxNewTokens: 40, stopTokens: [], temperature: 0.8 })) {
    if (++n % 8 === 0) counts.push(backend.memory().liveBuffers);
  }
  assert.equal(new Set(counts).size, 1, `${counts}`);
  assert.ok(counts[0] - before <= 2 * m.config.num_hidden_layers + 2, `${counts[0] - before} extra buffers`); // cache + rope tables
  m.dispose();
});

test("streamText decodes ids as text on a synthetic llama2.c vocabulary", async () => {
  // ASCII byte pieces plus whole-word pieces (so any sampled id decodes to valid UTF-8).
  const bytePiece = (i: number) => (i < 128 ? `<0x${i.toString(16).toUpperCase().padStart(2, "0")}>` : ` w${i}`);
  const pieces = ["<unk>", "\n<s>\n", "\n</s>\n", ...Array.from({ length: 256 }, (_, i) => bytePiece(i)), " "];
  const tok = Llama2cTokenizer.fromBytes(tokBytes(pieces, () => 0));
  const m = tinyModel({ vocab_size: 260 }, 6, 0.5);
  const want = await generateIds(m, tok.encode("hi"), { maxNewTokens: 12, stopTokens: [2] });
  let text = "";
  for await (const s of streamText(m, tok, "hi", { maxNewTokens: 12 })) text += s;
  assert.equal(text, tok.decode([...tok.encode("hi"), ...want]).slice("hi".length));
  m.dispose();
});
