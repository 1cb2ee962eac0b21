/** The Llama-family model on small random weights: configs, RoPE scaling, the KV cache, batching, dtypes, gradients. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng, crossEntropy, noGrad, scope, tensor } from "@lowrank/tensor";
import { LlamaForCausalLM, type Linear, generateIds, parseLlamaConfig, randomInit, ropeInvFreq } from "../src/node.ts";
import { maxAbsDiff, tinyConfig, tinyModel } from "./helpers.ts";

const base = { model_type: "llama", vocab_size: 10, hidden_size: 8, intermediate_size: 12, num_hidden_layers: 1, num_attention_heads: 2 };

test("config: defaults, head_dim, GQA, tied embeddings, Qwen2 and Llama biases", () => {
  const c = parseLlamaConfig(base);
  assert.equal(c.head_dim, 4);
  assert.equal(c.num_key_value_heads, 2);
  assert.equal(c.rope_theta, 10000);
  assert.equal(c.tie_word_embeddings, false);
  assert.deepEqual([c.qkv_bias, c.o_proj_bias], [false, false]);
  assert.equal(parseLlamaConfig({ ...base, head_dim: 6 }).head_dim, 6);
  assert.equal(parseLlamaConfig({ ...base, head_dim: null }).head_dim, 4);
  assert.deepEqual(parseLlamaConfig({ ...base, eos_token_id: [128001, 128009] }).eos_token_id, [128001, 128009]);
  const qwen = parseLlamaConfig({ ...base, model_type: "qwen2", use_sliding_window: false, sliding_window: 32768 });
  assert.deepEqual([qwen.qkv_bias, qwen.o_proj_bias], [true, false]);
  const llamaBias = parseLlamaConfig({ ...base, attention_bias: true });
  assert.deepEqual([llamaBias.qkv_bias, llamaBias.o_proj_bias], [true, true]);
  assert.equal(parseLlamaConfig({ ...base, model_type: "mistral", sliding_window: null }).model_type, "mistral");
  // transformers v5 keeps theta under rope_parameters
  assert.equal(parseLlamaConfig({ ...base, rope_parameters: { rope_type: "default", rope_theta: 500000 } }).rope_theta, 500000);

  const m = new LlamaForCausalLM(parseLlamaConfig({ ...base, model_type: "qwen2" }));
  const attn = m.model.layers.at(0).self_attn;
  assert.ok((attn.q_proj as Linear).bias && (attn.k_proj as Linear).bias && (attn.v_proj as Linear).bias);
  assert.equal((attn.o_proj as Linear).bias, null);
  m.dispose();
});

test("config: unsupported settings fail naming the file, the field and the value", () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...base, model_type: "gpt2" }, /cfg\/config\.json: model_type = "gpt2" is not supported/],
    [{ ...base, model_type: undefined }, /cfg\/config\.json: required field "model_type" is missing/],
    [{ ...base, model_type: "mistral", sliding_window: 0 }, /cfg\/config\.json: sliding_window = 0 must be a positive integer or null/],
    [{ ...base, model_type: "qwen2", use_sliding_window: "yes" }, /cfg\/config\.json: use_sliding_window = "yes" must be true or false/],
    [
      { ...base, model_type: "qwen3", use_sliding_window: true, max_window_layers: -1 },
      /cfg\/config\.json: max_window_layers = -1 must be a non-negative integer/,
    ],
    [
      { ...base, model_type: "mistral", layer_types: ["full_attention", "sliding_attention"] },
      /cfg\/config\.json: layer_types = .* must list "full_attention" or "sliding_attention" for each of the 1 layers/,
    ],
    [{ ...base, layer_types: ["sliding_attention"], sliding_window: 8 }, /cfg\/config\.json: layer_types = .* transformers' Llama has no sliding window/],
    [{ ...base, rope_scaling: { type: "yarn", factor: 4 } }, /cfg\/config\.json: rope_scaling\.type = "yarn" is not supported/],
    [{ ...base, rope_scaling: { rope_type: "dynamic", factor: 0.5 } }, /cfg\/config\.json: rope_scaling\.factor = 0\.5 must be at least 1/],
    [
      { ...base, rope_scaling: { rope_type: "longrope", factor: 2 } },
      /cfg\/config\.json: rope_scaling\.rope_type = "longrope" is not supported \(supported: default, linear, dynamic, llama3\)/,
    ],
    [{ ...base, rope_scaling: { rope_type: "llama3", factor: 8 } }, /cfg\/config\.json: rope_scaling\.low_freq_factor = undefined must be a positive number/],
    [{ ...base, hidden_act: "gelu" }, /cfg\/config\.json: hidden_act = "gelu" is not supported/],
    [{ ...base, hidden_size: undefined }, /cfg\/config\.json: required field "hidden_size" is missing/],
    [{ ...base, num_key_value_heads: 3 }, /cfg\/config\.json: num_key_value_heads = 3 must divide num_attention_heads/],
    [{ ...base, quantization_config: { quant_method: "gptq" } }, /cfg\/config\.json: quantization_config is present \("gptq"\)/],
  ];
  for (const [json, re] of cases) assert.throws(() => parseLlamaConfig(json, "cfg/config.json"), re);
});

test("llama3 rope scaling reproduces transformers' _compute_llama3_parameters (Llama 3.1 8B settings)", () => {
  const cfg = parseLlamaConfig({
    ...base,
    hidden_size: 4096,
    num_attention_heads: 32,
    rope_theta: 500000,
    rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  });
  const inv = ropeInvFreq(cfg);
  assert.equal(inv.length, 64);
  // Values from a float32 NumPy transcription of the transformers function.
  const expected: [number, number][] = [
    [0, 1.0],
    [20, 0.016560440883040428],
    [30, 0.0013718936825171113],
    [35, 9.556212899042293e-5],
    [40, 3.428102354519069e-5],
    [45, 1.2297638932068367e-5],
    [50, 4.411534519022098e-6],
    [63, 3.068925877869333e-7],
  ];
  for (const [i, v] of expected) assert.ok(Math.abs(inv[i] - v) <= 1e-5 * v, `inv_freq[${i}] = ${inv[i]}, expected ${v}`);
  const linear = ropeInvFreq({ head_dim: 4, rope_theta: 100, rope_scaling: { rope_type: "linear", factor: 2 } });
  assert.deepEqual(Array.from(linear), [0.5, Math.fround(0.05)]);
});

for (const capacity of [undefined, 1, 5, 11])
  test(`KV cache: prefill + one token at a time gives the same logits as a full forward (capacity ${capacity ?? "default"})`, () => {
    const m = tinyModel();
    const ids = [1, 7, 3, 12, 9, 30, 4, 4, 18, 2, 25];
    const full = noGrad(() => m.forward(tensor([ids], { dtype: "i32" }))); // (1, 11, V)
    const V = m.config.vocab_size;
    const want = full.readSync();
    const cache = m.createCache({ capacity });
    const got: number[] = [];
    noGrad(() => {
      const step = (chunk: number[]) => scope(() => Array.from(m.forward(tensor([chunk], { dtype: "i32" }), { cache }).readSync()));
      got.push(...step(ids.slice(0, 4)));
      for (const id of ids.slice(4, 6)) got.push(...step([id]));
      got.push(...step(ids.slice(6))); // a multi-token chunk after cached positions (T < S)
    });
    assert.equal(cache.length, ids.length);
    assert.deepEqual(cache.layer(0)![0].shape, [1, 2, ids.length, 4]);
    // Held in place, it grew by doubling from the capacity asked for (1 -> 4 at the prefill -> 8 -> 16).
    if (capacity === 1) assert.equal(cache.capacity, 16);
    // Asked for exactly what it holds (as the server sizes a request's cache): never grown, nothing spare.
    if (capacity === 11) assert.equal(cache.capacity, ids.length);
    assert.ok(maxAbsDiff(got, want) < 1e-5, `max diff ${maxAbsDiff(got, want)}`);
    // lastOnly computes just the final row
    const last = noGrad(() => m.forward(tensor([ids], { dtype: "i32" }), { lastOnly: true }));
    assert.deepEqual(last.shape, [1, 1, V]);
    assert.ok(maxAbsDiff(last.readSync(), want.subarray((ids.length - 1) * V)) < 1e-6);
    cache.dispose();
    full.dispose();
    last.dispose();
    m.dispose();
  });

test("KV-cache generation equals no-cache full recompute (greedy and sampled)", async () => {
  const m = tinyModel({}, 3, 0.5);
  const prompt = [1, 5, 9];
  for (const opts of [{}, { temperature: 0.9, topK: 10, topP: 0.9, seed: 7 }, { temperature: 1.3, repetitionPenalty: 1.3, seed: 3 }]) {
    const cached = await generateIds(m, prompt, { maxNewTokens: 20, stopTokens: [], ...opts });
    const recomputed = await generateIds(m, prompt, { maxNewTokens: 20, stopTokens: [], ...opts, useCache: false });
    assert.equal(cached.length, 20);
    assert.deepEqual(cached, recomputed, JSON.stringify(opts));
  }
  m.dispose();
});

test("batched forward equals per-sequence forwards; positionOffset shifts RoPE", () => {
  const m = tinyModel();
  const a = [1, 4, 6, 8];
  const b = [1, 9, 2, 33];
  const both = noGrad(() => m.forward(tensor([a, b], { dtype: "i32" }))).readSync();
  const one = (ids: number[], positionOffset = 0) => noGrad(() => scope(() => m.forward(tensor([ids], { dtype: "i32" }), { positionOffset }).readSync()));
  const half = both.length / 2;
  assert.ok(maxAbsDiff(both.subarray(0, half), one(a)) < 1e-5);
  assert.ok(maxAbsDiff(both.subarray(half), one(b)) < 1e-5);
  // RoPE makes attention depend on relative positions only, so shifting every position is a no-op.
  assert.ok(maxAbsDiff(one(a, 5), one(a)) < 1e-4);
  assert.throws(() => one(a, 62), /positions up to 66 exceed max_position_embeddings \(64\)/);
  m.dispose();
});

test("f16 and bf16 parameters run and stay close to f32", () => {
  const ids = tensor([[1, 4, 6, 8, 3]], { dtype: "i32" });
  const ref = tinyModel();
  const want = noGrad(() => ref.forward(ids)).readSync();
  for (const [dtype, tol] of [
    ["f16", 0.02],
    ["bf16", 0.1],
  ] as const) {
    const m = new LlamaForCausalLM(tinyConfig(), { dtype, init: randomInit(new Rng(1), 0.3) });
    assert.equal(m.dtype, dtype);
    const got = noGrad(() => m.forward(ids)).readSync();
    assert.ok(maxAbsDiff(got, want) < tol, `${dtype}: max diff ${maxAbsDiff(got, want)}`);
    m.dispose();
  }
  ref.dispose();
  ids.dispose();
});

test("training path: the loss reaches every parameter, frozen ones get nothing", () => {
  const m = tinyModel({ tie_word_embeddings: true });
  m.setRequiresGrad(true);
  m.model.norm.weight.setRequiresGrad(false);
  const ids = [1, 4, 6, 8, 3, 9];
  const loss = scope(() => {
    const logits = m.forward(tensor([ids.slice(0, -1)], { dtype: "i32" }));
    return crossEntropy(logits, tensor([ids.slice(1)], { dtype: "i32" }));
  });
  loss.backward();
  for (const [name, p] of m.namedParameters()) {
    if (name === "model.norm.weight") assert.equal(p.grad, null);
    else {
      assert.ok(p.grad, `${name} has no grad`);
      assert.ok(Array.from(p.grad.readSync()).every(Number.isFinite), `${name} grad not finite`);
    }
  }
  loss.dispose();
  m.dispose();
});
