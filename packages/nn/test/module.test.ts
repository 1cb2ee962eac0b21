/** The module tree: names, traversal, state dicts, submodule replacement, layers. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type Tensor, noGrad, scope, tensor, zeros } from "@lowrank/tensor";
import { Embedding, Linear, LlamaForCausalLM, Module, ModuleList, RMSNorm, type TensorModule } from "../src/node.ts";
import { backend, maxAbsDiff, tinyConfig, tinyModel } from "./helpers.ts";

class Block extends Module {
  proj: TensorModule;
  norm: RMSNorm;
  constructor() {
    super();
    this.proj = this.registerModule("proj", new Linear(3, 2, { bias: true }));
    this.norm = this.registerModule("norm", new RMSNorm(2));
  }
  forward(x: Tensor): Tensor {
    return this.norm.forward(this.proj.forward(x));
  }
}

class Net extends Module {
  layers = this.registerModule("layers", new ModuleList([new Block(), new Block()]));
}

/** Stand-in for a LoRA wrapper: keeps the base layer as a child and adds to its output. */
class Wrapped extends Module {
  base: TensorModule;
  constructor(base: TensorModule) {
    super();
    this.base = this.registerModule("base", base);
  }
  forward(x: Tensor): Tensor {
    return scope(() => this.base.forward(x).add(100));
  }
}

test("dotted names: namedModules, namedParameters, parameters", () => {
  const net = new Net();
  assert.deepEqual(
    net.namedModules().map(([n]) => n),
    ["", "layers", "layers.0", "layers.0.proj", "layers.0.norm", "layers.1", "layers.1.proj", "layers.1.norm"],
  );
  assert.deepEqual(
    net.namedParameters().map(([n, t]) => `${n}:${t.shape}`),
    [
      "layers.0.proj.weight:2,3",
      "layers.0.proj.bias:2",
      "layers.0.norm.weight:2",
      "layers.1.proj.weight:2,3",
      "layers.1.proj.bias:2",
      "layers.1.norm.weight:2",
    ],
  );
  assert.equal(net.parameters().length, 6);
  assert.equal(net.getSubmodule("layers.1.proj"), net.layers.at(1).proj);
  assert.throws(() => net.getSubmodule("layers.7"), /no submodule 'layers.7': 'layers' has no child '7' \(children: 0, 1\)/);
  net.dispose();
});

test("Llama module names are exactly Hugging Face's", () => {
  const m = tinyModel({ tie_word_embeddings: false, attention_bias: true });
  const names = [...m.stateDict().keys()];
  assert.deepEqual(names.slice(0, 13), [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.v_proj.bias",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.self_attn.o_proj.bias",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
  ]);
  assert.deepEqual(names.slice(-3), ["model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"]);
  assert.equal(m.model.layers.at(0).self_attn.q_proj instanceof Linear, true);
  assert.equal((m.tensorAt("model.norm.weight") as Tensor).name, "model.norm.weight");
  m.dispose();
});

test("tied embeddings: one tensor, saved once, loadable under either name", () => {
  const m = tinyModel({ tie_word_embeddings: true });
  const lmHead = m.lm_head as Linear;
  assert.equal(lmHead.weight, m.model.embed_tokens.weight);
  assert.ok(!m.stateDict().has("lm_head.weight"));
  assert.ok(!m.namedParameters().some(([n]) => n === "lm_head.weight"));
  const sd = new Map(m.stateDict());
  const emb = sd.get("model.embed_tokens.weight") as Tensor;
  sd.delete("model.embed_tokens.weight");
  sd.set("lm_head.weight", emb); // a checkpoint that stored only the head's name
  const other = tinyModel({ tie_word_embeddings: true }, 2);
  other.loadStateDict(sd);
  assert.deepEqual(other.model.embed_tokens.weight.readSync(), emb.readSync());
  m.dispose();
  other.dispose();
});

test("stateDict round trip reproduces the outputs; parameters stay the same objects", () => {
  const a = tinyModel({}, 1);
  const b = tinyModel({}, 2);
  const ids = tensor([[1, 5, 7, 3]], { dtype: "i32" });
  const ya = noGrad(() => a.forward(ids));
  const yb = noGrad(() => b.forward(ids));
  assert.ok(maxAbsDiff(ya.readSync(), yb.readSync()) > 1e-3);
  const before = b.parameters();
  const report = b.loadStateDict(a.stateDict());
  assert.deepEqual(report, { missingKeys: [], unexpectedKeys: [] });
  assert.ok(b.parameters().every((p, i) => p === before[i]));
  const yb2 = noGrad(() => b.forward(ids));
  assert.deepEqual(yb2.readSync(), ya.readSync());
  // Record form, and sharing storage is safe: disposing one model leaves the other intact.
  a.dispose();
  const yb3 = noGrad(() => b.forward(ids));
  assert.deepEqual(yb3.readSync(), ya.readSync());
  for (const t of [ids, ya, yb, yb2, yb3]) t.dispose();
  b.dispose();
});

test("strict loadStateDict lists every missing and unexpected key and mismatch in one error, and changes nothing", () => {
  const m = tinyModel();
  const sd = new Map(m.stateDict());
  sd.delete("model.norm.weight");
  sd.delete("model.layers.1.mlp.up_proj.weight");
  sd.set("model.layers.9.mlp.extra.weight", zeros([2]));
  sd.set("lm_head.bias", zeros([40]));
  sd.set("model.embed_tokens.weight", zeros([41, 16]));
  sd.set("model.layers.0.input_layernorm.weight", zeros([16], { dtype: "f16" }));
  const keep = m.model.layers.at(0).self_attn.o_proj instanceof Linear ? (m.model.layers.at(0).self_attn.o_proj as Linear).weight.readSync() : null;
  let message = "";
  try {
    m.loadStateDict(sd);
  } catch (e) {
    message = (e as Error).message;
  }
  for (const piece of [
    "2 missing keys, 2 unexpected keys, 2 mismatches",
    "missing: model.norm.weight",
    "missing: model.layers.1.mlp.up_proj.weight",
    "unexpected: model.layers.9.mlp.extra.weight",
    "unexpected: lm_head.bias",
    "shape mismatch for model.embed_tokens.weight: checkpoint [41, 16], model [40, 16]",
    "dtype mismatch for model.layers.0.input_layernorm.weight: checkpoint f16, model f32",
  ]) {
    assert.ok(message.includes(piece), `missing "${piece}" in:\n${message}`);
  }
  assert.deepEqual((m.model.layers.at(0).self_attn.o_proj as Linear).weight.readSync(), keep);

  // Non-strict: keys are reported, mismatches still throw.
  const ok = new Map(m.stateDict());
  ok.delete("model.norm.weight");
  ok.set("extra", zeros([1]));
  assert.deepEqual(m.loadStateDict(ok, { strict: false }), { missingKeys: ["model.norm.weight"], unexpectedKeys: ["extra"] });
  ok.set("model.embed_tokens.weight", zeros([1, 16]));
  assert.throws(() => m.loadStateDict(ok, { strict: false }), /shape mismatch for model.embed_tokens.weight/);
  m.dispose();
});

test("setSubmodule swaps a layer in its parent (LoRA injection) and forward uses it", () => {
  const net = new Net();
  const x = tensor([[1, 2, 3]]);
  const old = net.layers.at(0).proj;
  const before = noGrad(() => old.forward(x));
  net.setSubmodule("layers.0.proj", new Wrapped(old));
  assert.ok(net.layers.at(0).proj instanceof Wrapped);
  assert.equal(net.getSubmodule("layers.0.proj.base"), old);
  assert.ok(net.namedParameters().some(([n]) => n === "layers.0.proj.base.weight"));
  const after = noGrad(() => net.layers.at(0).proj.forward(x));
  assert.ok(
    maxAbsDiff(
      after.readSync(),
      Array.from(before.readSync(), (v) => v + 100),
    ) < 1e-5,
  );
  assert.throws(() => net.setSubmodule("layers.0.nope", old), /'layers.0.nope' does not exist/);
  // Replacing a whole list entry works too.
  const fresh = new Block();
  net.setSubmodule("layers.1", fresh);
  assert.equal(net.layers.at(1), fresh);
  for (const t of [x, before, after]) t.dispose();
  net.dispose();
});

test("train/eval propagate; setRequiresGrad freezes and unfreezes", () => {
  const net = new Net();
  net.eval();
  assert.ok(net.namedModules().every(([, m]) => !m.training));
  net.train();
  assert.ok(net.namedModules().every(([, m]) => m.training));
  net.setRequiresGrad(false);
  assert.ok(net.parameters().every((p) => !p.requiresGrad));
  net.setRequiresGrad(true);
  assert.ok(net.parameters().every((p) => p.requiresGrad));
  net.dispose();
});

test("Linear uses the transposed view of W [out, in] and adds the bias; Embedding and RMSNorm match by hand", () => {
  const lin = new Linear(3, 2, { bias: true });
  lin.loadStateDict({
    weight: tensor([
      [1, 0, -1],
      [2, 1, 0],
    ]),
    bias: tensor([0.5, -0.5]),
  });
  const y = lin.forward(tensor([[[1, 2, 3]], [[0, 1, 0]]])); // (2, 1, 3) -> (2, 1, 2)
  assert.deepEqual(y.shape, [2, 1, 2]);
  assert.deepEqual(Array.from(y.readSync()), [-1.5, 3.5, 0.5, 0.5]);
  assert.equal(lin.weight.isContiguous, true, "the weight itself is never transposed in place");

  const emb = new Embedding(4, 2);
  emb.loadStateDict({
    weight: tensor([
      [0, 1],
      [2, 3],
      [4, 5],
      [6, 7],
    ]),
  });
  assert.deepEqual(Array.from(emb.forward(tensor([[3, 0]], { dtype: "i32" })).readSync()), [6, 7, 0, 1]);

  const norm = new RMSNorm(2, { eps: 0 });
  norm.loadStateDict({ weight: tensor([1, 2]) });
  const r = norm.forward(tensor([[3, 4]])).readSync();
  const rms = Math.sqrt((9 + 16) / 2);
  assert.ok(maxAbsDiff(r, [3 / rms, (2 * 4) / rms]) < 1e-6);
  for (const m of [lin, emb, norm]) m.dispose();
});

test("gradients reach Linear parameters through the module", () => {
  const lin = new Linear(2, 1, { bias: true });
  lin.loadStateDict({ weight: tensor([[2, 3]]), bias: tensor([1]) });
  lin.setRequiresGrad(true);
  const loss = scope(() =>
    lin
      .forward(
        tensor([
          [1, 2],
          [3, 4],
        ]),
      )
      .sum(),
  );
  loss.backward();
  assert.deepEqual(Array.from(lin.weight.grad!.readSync()), [4, 6]);
  assert.deepEqual(Array.from(lin.bias!.grad!.readSync()), [2]);
  loss.dispose();
  lin.dispose();
});

test("placeholder parameters cost one element each until loaded; dispose frees everything", () => {
  const before = backend.memory();
  const m = new LlamaForCausalLM(tinyConfig());
  const params = m.parameters().length;
  assert.equal(backend.memory().liveBuffers - before.liveBuffers, params);
  assert.equal(backend.memory().liveBytes - before.liveBytes, params * 4);
  assert.deepEqual(Array.from(m.model.norm.weight.readSync()).slice(0, 3), [1, 1, 1], "norm gains start at one");
  m.dispose();
  assert.equal(backend.memory().liveBuffers, before.liveBuffers);
});
