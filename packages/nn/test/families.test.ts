/**
 * The families' switches on their own: the real published configs parse to what transformers
 * builds from them, configs survive a save, sliding-window attention equals a plain masked
 * softmax in every path (blocks, cache, half precision, gradients), and dynamic NTK RoPE.
 * Logits against an independent reference are in golden-families.test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Rng, type Tensor, noGrad, scope, softmax, tensor, where } from "@lowrank/tensor";
import {
  LlamaForCausalLM,
  generateIds,
  llamaConfigToHf,
  loadHfModel,
  parseLlamaConfig,
  randomInit,
  ropeInvFreq,
  saveHfModel,
  slidingWindowAttention,
} from "../src/node.ts";
import { maxAbsDiff, tinyConfig, tinyModel, withTempDir } from "./helpers.ts";

const CONFIGS = join(fileURLToPath(new URL(".", import.meta.url)), "fixtures", "configs");

test("the published configs of SmolLM2, Qwen2.5, Qwen3, Llama 3.2, TinyLlama and Mistral parse as transformers reads them", async () => {
  const want: Record<string, Partial<Record<string, unknown>>> = {
    "SmolLM2-135M.json": { model_type: "llama", head_dim: 64, num_key_value_heads: 3, tie_word_embeddings: true, qkv_bias: false, sliding_window: null },
    "Qwen2.5-0.5B.json": { model_type: "qwen2", head_dim: 64, qkv_bias: true, o_proj_bias: false, tie_word_embeddings: true, sliding_window: null },
    "Qwen3-0.6B.json": { model_type: "qwen3", head_dim: 128, qk_norm: true, qkv_bias: false, tie_word_embeddings: true, sliding_window: null },
    "Llama-3.2-1B.json": { model_type: "llama", head_dim: 64, rope_theta: 500000, tie_word_embeddings: true, eos_token_id: [128001] },
    "TinyLlama-1.1B.json": { model_type: "llama", head_dim: 64, num_key_value_heads: 4, rope_scaling: null, tie_word_embeddings: false },
    "Mistral-7B-v0.1.json": { model_type: "mistral", head_dim: 128, sliding_window: 4096, qkv_bias: false, tie_word_embeddings: false },
  };
  const files = (await readdir(CONFIGS)).filter((f) => f.endsWith(".json")).sort();
  assert.deepEqual(files, Object.keys(want).sort());
  for (const f of files) {
    const cfg = parseLlamaConfig(JSON.parse(await readFile(join(CONFIGS, f), "utf8")), f);
    for (const [k, v] of Object.entries(want[f])) assert.deepEqual(cfg[k as keyof typeof cfg], v, `${f}: ${k}`);
    const slides = cfg.layer_types.filter((t) => t === "sliding_attention").length;
    assert.equal(slides, f.startsWith("Mistral") ? cfg.num_hidden_layers : 0, `${f}: sliding layers`);
    assert.deepEqual(parseLlamaConfig(llamaConfigToHf(cfg), f), cfg, `${f}: config.json round trip`);
  }
  const llama3 = parseLlamaConfig(JSON.parse(await readFile(join(CONFIGS, "Llama-3.2-1B.json"), "utf8")));
  assert.deepEqual(llama3.rope_scaling, { rope_type: "llama3", factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 });
  // Qwen3 declares head_dim 128 with hidden 1024 over 16 heads (64): q_proj is 1024 -> 2048.
  const q3 = parseLlamaConfig(JSON.parse(await readFile(join(CONFIGS, "Qwen3-0.6B.json"), "utf8")));
  assert.equal(q3.num_attention_heads * q3.head_dim, 2048);
});

test("sliding layers: Mistral all (4096 when absent, none when null), Qwen layers >= max_window_layers, layer_types wins", () => {
  const base = { model_type: "mistral", vocab_size: 10, hidden_size: 8, intermediate_size: 12, num_hidden_layers: 3, num_attention_heads: 2 };
  const types = (over: Record<string, unknown>) => {
    const c = parseLlamaConfig({ ...base, ...over });
    return [c.sliding_window, c.layer_types.map((t) => (t === "sliding_attention" ? "S" : "F")).join("")];
  };
  assert.deepEqual(types({}), [4096, "SSS"]);
  assert.deepEqual(types({ sliding_window: null }), [null, "FFF"]);
  assert.deepEqual(types({ sliding_window: 16 }), [16, "SSS"]);
  assert.deepEqual(types({ model_type: "qwen2", sliding_window: 16 }), [null, "FFF"]); // use_sliding_window defaults to false
  assert.deepEqual(types({ model_type: "qwen2", use_sliding_window: true, sliding_window: 16, max_window_layers: 1 }), [16, "FSS"]);
  assert.deepEqual(types({ model_type: "qwen3", use_sliding_window: true, sliding_window: 16, max_window_layers: 3 }), [null, "FFF"]);
  assert.deepEqual(types({ model_type: "qwen3", sliding_window: 16, layer_types: ["sliding_attention", "full_attention", "sliding_attention"] }), [16, "SFS"]);
  assert.deepEqual(types({ model_type: "llama", sliding_window: 16 }), [null, "FFF"]); // transformers' Llama ignores the key
  const m = new LlamaForCausalLM(parseLlamaConfig({ ...base, model_type: "qwen2", use_sliding_window: true, sliding_window: 5, max_window_layers: 2 }));
  assert.deepEqual(
    [...m.model.layers].map((l) => l.self_attn.window),
    [null, null, 5],
  );
  m.dispose();
});

test("Qwen3 has q_norm/k_norm of head_dim under self_attn, with HF's state-dict names", () => {
  const m = tinyModel({ model_type: "qwen3", head_dim: 6, num_attention_heads: 4, num_key_value_heads: 2 });
  const names = [...m.namedParameters()].map(([n, p]) => `${n} ${p.shape.join("x")}`);
  assert.ok(names.includes("model.layers.1.self_attn.q_norm.weight 6"), names.join("\n"));
  assert.ok(names.includes("model.layers.1.self_attn.k_norm.weight 6"));
  assert.ok(names.includes("model.layers.0.self_attn.q_proj.weight 24x16"));
  assert.ok(!names.some((n) => n.includes("bias")));
  m.dispose();
});

/** The definition: softmax over keys p - window < j <= p, everything else -inf (GQA by repeating kv heads). */
function naiveWindow(q: Tensor, k: Tensor, v: Tensor, window: number): Tensor {
  return scope(() => {
    const [B, Hq, T, D] = q.shape;
    const [, Hkv, S] = k.shape;
    const m = new Uint8Array(T * S);
    for (let t = 0; t < T; t++) for (let j = 0; j < S; j++) m[t * S + j] = Number(j <= S - T + t && j > S - T + t - window);
    const rep = (x: Tensor) =>
      x
        .reshape([B, Hkv, 1, S, D])
        .expand([B, Hkv, Hq / Hkv, S, D])
        .reshape([B, Hq, S, D]);
    const scores = where(tensor(m, { shape: [T, S], dtype: "u8" }), q.matmul(rep(k).transpose(-2, -1)).mul(1 / Math.sqrt(D)), -Infinity);
    return softmax(scores, -1).matmul(rep(v));
  });
}

test("slidingWindowAttention equals the masked definition: prefill, cache steps, blocks of any size, grads", () => {
  const rng = new Rng(7);
  const rand = (shape: number[]) =>
    tensor(
      Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal()),
      { shape },
    );
  for (const [T, S, window, block] of [
    [12, 12, 4, 4],
    [12, 12, 4, 5],
    [12, 12, 4, 64],
    [3, 15, 5, 2],
    [1, 15, 5, 64],
    [6, 6, 8, 64],
    [9, 9, 1, 3],
    [6, 8, 5, 2],
    [40, 40, 7, 128],
  ]) {
    const q = rand([2, 4, T, 6]);
    const k = rand([2, 2, S, 6]);
    const v = rand([2, 2, S, 6]);
    const got = noGrad(() => slidingWindowAttention(q, k, v, window, { block }));
    const want = noGrad(() => naiveWindow(q, k, v, window));
    const d = maxAbsDiff(got.readSync(), want.readSync());
    assert.ok(d < 1e-5, `T ${T} S ${S} window ${window} block ${block}: ${d}`);
  }
  // Gradients through the blocked path equal the definition's.
  const [q, k, v] = [rand([1, 2, 10, 4]), rand([1, 1, 10, 4]), rand([1, 1, 10, 4])].map((t) => t.setRequiresGrad());
  const g = rand([1, 2, 10, 4]);
  const grads = (f: () => Tensor) => {
    for (const t of [q, k, v]) t.grad = null;
    f().mul(g).sum().backward();
    return [q, k, v].map((t) => (t.grad as Tensor).readSync());
  };
  const a = grads(() => slidingWindowAttention(q, k, v, 3, { block: 4 }));
  const b = grads(() => naiveWindow(q, k, v, 3));
  for (let i = 0; i < 3; i++) assert.ok(maxAbsDiff(a[i], b[i]) < 1e-5, `grad ${i}`);
});

test("sliding window in a model: cached generation equals recomputation, a window wider than the sequence changes nothing, bf16 runs", async () => {
  const over = { model_type: "mistral", sliding_window: 3 };
  const m = tinyModel(over, 5, 0.5);
  const prompt = [1, 5, 9, 2, 7, 30];
  const cached = await generateIds(m, prompt, { maxNewTokens: 8, stopTokens: [] });
  const recomputed = await generateIds(m, prompt, { maxNewTokens: 8, stopTokens: [], useCache: false });
  assert.deepEqual(cached, recomputed);

  const ids = tensor([[...prompt, ...cached]], { dtype: "i32" });
  const windowed = noGrad(() => m.forward(ids)).readSync();
  const wide = tinyModel({ ...over, sliding_window: 64 }, 5, 0.5);
  const full = tinyModel({ ...over, sliding_window: null }, 5, 0.5);
  const [w, f] = [wide, full].map((x) => noGrad(() => x.forward(ids)).readSync());
  assert.ok(maxAbsDiff(w, f) < 1e-6, "a window of 64 over 14 positions is full attention");
  assert.ok(maxAbsDiff(windowed, f) > 1e-3, "a window of 3 must change the logits (else this test proves nothing)");

  const half = new LlamaForCausalLM(tinyConfig(over), { init: randomInit(new Rng(5), 0.5), dtype: "bf16" });
  const h = noGrad(() => half.forward(ids).cast("f32")).readSync();
  const scale = Math.max(...windowed.map(Math.abs));
  assert.ok(maxAbsDiff(h, windowed) < 0.03 * scale, `bf16 vs f32: ${maxAbsDiff(h, windowed)} on logits up to ${scale}`);
  for (const x of [m, wide, full, half]) x.dispose();
});

test("dynamic NTK RoPE: the plain schedule up to max_position_embeddings, a raised base past it; other types stop there", () => {
  const cfg = tinyConfig({ max_position_embeddings: 16, rope_scaling: { rope_type: "dynamic", factor: 2 } });
  assert.deepEqual(ropeInvFreq(cfg, 16), ropeInvFreq({ ...cfg, rope_scaling: null }));
  // transformers: base * (factor * 24 / 16 - (factor - 1)) ** (dim / (dim - 2)), dim 4
  const base = 10000 * ((2 * 24) / 16 - 1) ** 2;
  assert.ok(Math.abs(ropeInvFreq(cfg, 24)[1] - 1 / Math.sqrt(base)) < 1e-9);
  const ids = tensor([Array.from({ length: 20 }, (_, i) => (i * 7) % 40)], { dtype: "i32" });
  const m = tinyModel({ max_position_embeddings: 16, rope_scaling: { rope_type: "dynamic", factor: 2 } });
  assert.equal(noGrad(() => m.forward(ids)).shape[1], 20);
  const plain = tinyModel({ max_position_embeddings: 16 });
  assert.throws(() => noGrad(() => plain.forward(ids)), /positions up to 20 exceed max_position_embeddings \(16\)/);
  m.dispose();
  plain.dispose();
});

test("Qwen3 and sliding-window Qwen2/Mistral models save and load back to the same logits", async () => {
  const ids = tensor([[3, 9, 1, 22, 7, 5, 14, 2, 30, 11]], { dtype: "i32" });
  const variants: Record<string, unknown>[] = [
    { model_type: "qwen3", head_dim: 6, tie_word_embeddings: true },
    { model_type: "qwen2", use_sliding_window: true, sliding_window: 3, max_window_layers: 1 },
    { model_type: "mistral", sliding_window: 4 },
  ];
  for (const over of variants) {
    const m = tinyModel(over, 3, 0.4);
    const want = noGrad(() => m.forward(ids)).readSync();
    await withTempDir(async (dir) => {
      await saveHfModel(m, dir);
      const back = await loadHfModel(dir);
      assert.deepEqual(back.config, m.config, `${over.model_type}: config`);
      assert.ok(maxAbsDiff(noGrad(() => back.forward(ids)).readSync(), want) === 0, `${over.model_type}: logits`);
      back.dispose();
    });
    m.dispose();
  }
});

test("training through windowed layers and q/k norms: the loss reaches every parameter", () => {
  const m = tinyModel({ model_type: "qwen3", use_sliding_window: true, sliding_window: 3, max_window_layers: 1 }, 4, 0.4);
  const ids = tensor([[3, 9, 1, 22, 7, 5, 14, 2, 30, 11]], { dtype: "i32" });
  const labels = tensor([[9, 1, 22, 7, 5, 14, 2, 30, 11, 4]], { dtype: "i32" });
  for (const p of m.parameters()) p.setRequiresGrad();
  m.lossSum(ids, labels, -100).backward();
  for (const [name, p] of m.namedParameters()) {
    const g = p.grad?.readSync();
    assert.ok(g && g.some((x) => x !== 0) && g.every(Number.isFinite), `${name}: no finite nonzero gradient`);
  }
  m.dispose();
});
