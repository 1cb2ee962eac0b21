/**
 * QuantizedLinear (bnb Linear4bit) on real NF4/FP4 states from @lowrank/nf4: forward against
 * dequantize-then-matmul, gradients for x only, bnb state-dict layout, quantizeModel defaults,
 * save -> reload as a bnb-4bit directory, loader errors, and the memory report formula.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { type Backend, Rng, type Tensor, matmul4bit, noGrad, scope, tensor } from "@lowrank/tensor";
import { gradcheck, withoutFused } from "@lowrank/tensor/testing";
import { type LazyTensorInput, openSafetensors, writeSafetensors } from "@lowrank/safetensors/node";
import { bitsPerParam, bnbQuantizationConfig, dequantize4bit, quantize4bit, toBnbTensors } from "@lowrank/nf4";
import {
  Linear,
  type LlamaForCausalLM,
  Module,
  QuantizedLinear,
  loadHfModel,
  quantizeModel,
  quantizedMemoryReport,
  randomInit,
  saveHfModel,
} from "../src/node.ts";
import { backend, maxAbsDiff, tinyModel, withTempDir } from "./helpers.ts";

function weights(out: number, inF: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: out * inF }, () => rng.normal() * 0.05);
}

/** f64 x [rows, K] · op(W) with W from nf4's own dequantize4bit. */
function ref(x: Float32Array, rows: number, W: Float32Array, out: number, inF: number, transpose: boolean): Float64Array {
  const [K, N] = transpose ? [out, inF] : [inF, out];
  const y = new Float64Array(rows * N);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[r * K + k] * (transpose ? W[k * inF + j] : W[j * inF + k]);
      y[r * N + j] = s;
    }
  return y;
}

const ids = [1, 3, 8, 20, 5, 11, 2, 9];
const logits = (m: LlamaForCausalLM) => noGrad(() => scope(() => m.forward(tensor([ids], { dtype: "i32" })).readSync() as Float32Array));

// [out, in, blocksize, double quant]: odd element counts, tails, blocks spanning rows.
const CASES: [number, number, number, boolean][] = [
  [37, 50, 64, true],
  [23, 41, 128, false],
  [64, 96, 64, false],
  [300, 60, 128, true],
  [5, 129, 64, true],
];

for (const [label, be] of [
  ["cpu kernel", backend],
  ["primitive path", withoutFused(backend)],
] as [string, Backend][]) {
  test(`matmul4bit = nf4 dequantize4bit then matmul, both transposes, rows 1/2/9 (${label})`, async () => {
    for (const [out, inF, bs, dq] of CASES) {
      for (const quantType of ["nf4", "fp4"] as const) {
        const state = quantize4bit(weights(out, inF, out * inF), { shape: [out, inF], blocksize: bs, doubleQuant: dq, quantType });
        const W = dequantize4bit(state);
        const q = new QuantizedLinear(state, { backend: be });
        assert.deepEqual(await q.dequantizeWeight().read(), W, "dequantizeWeight is bit-identical to nf4's dequantize4bit");
        for (const transpose of [false, true]) {
          const K = transpose ? out : inF;
          for (const rows of [1, 2, 9]) {
            const x = Float32Array.from({ length: rows * K }, (_, i) => Math.sin(i * 1.7 + rows));
            const y = noGrad(() => matmul4bit(tensor(x, { shape: [rows, K], backend: be }), q.weight, transpose));
            const got = await y.read();
            const want = ref(x, rows, W, out, inF, transpose);
            const err = maxAbsDiff(got, want);
            assert.ok(err < 1e-5, `${quantType} [${out}, ${inF}] bs ${bs}${dq ? " DQ" : ""} transpose=${transpose} rows=${rows}: max err ${err}`);
            y.dispose();
          }
        }
        q.dispose();
      }
    }
  });

  test(`QuantizedLinear: gradient for x only (gradcheck), none for the weight, bias trains (${label})`, async () => {
    const state = quantize4bit(weights(7, 45, 3), { shape: [7, 45] });
    const bias = tensor(
      Array.from({ length: 7 }, (_, i) => i / 10),
      { backend: be, requiresGrad: true },
    );
    const q = new QuantizedLinear(state, { backend: be, bias });
    const x0 = Float32Array.from({ length: 2 * 3 * 45 }, (_, i) => Math.cos(i));
    const r = await gradcheck(be, (x) => q.forward(x), [{ data: x0, shape: [2, 3, 45] }]);
    assert.ok(r.ok, `gradcheck: ${r.maxAbsErr} at ${r.worst}`);
    const x = tensor(x0, { shape: [2, 3, 45], backend: be, requiresGrad: true });
    const loss = q.forward(x).square().sum();
    loss.backward();
    assert.ok(x.grad, "x has a gradient");
    assert.ok(q.bias?.grad, "the dense bias has a gradient");
    for (const [name, t] of q.stateDict()) if (name !== "bias") assert.equal(t.grad, null, `${name} gets no gradient`);
    assert.deepEqual(q.parameters(), [bias], "the 4-bit weight is not a parameter (buffers only)");
    q.dispose();
  });
}

test("QuantizedLinear state dict uses bitsandbytes' keys, dtypes and shapes, with toBnbTensors' bytes", async () => {
  for (const doubleQuant of [true, false]) {
    const state = quantize4bit(weights(37, 50, 4), { shape: [37, 50], doubleQuant });
    const q = new QuantizedLinear(state, { bias: tensor(new Float32Array(37)) });
    const want = toBnbTensors("", state);
    const sd = q.stateDict();
    assert.deepEqual([...sd.keys()].sort(), ["bias", ...Object.keys(want)].sort());
    for (const [key, t] of Object.entries(want)) {
      const got = sd.get(key)!;
      assert.equal(got.dtype, t.dtype === "U8" ? "u8" : "f32", key);
      assert.deepEqual(got.shape, t.shape, key);
      const bytes = await got.read();
      assert.deepEqual(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), t.data, `${key} bytes`);
    }
    assert.deepEqual(await q.quantState(), state, "quantState() reads back exactly what was stored");
    q.dispose();
  }
});

test("defaults are NF4 + double quantization at blocksize 64, lm_head and tied heads stay dense", async () => {
  const m = tinyModel({ hidden_size: 24, intermediate_size: 37, num_attention_heads: 4, num_key_value_heads: 2 });
  const report = await quantizeModel(m);
  assert.equal(report.quantized.length, 2 * 7, "7 projections per layer");
  assert.deepEqual(report.skipped, [{ name: "lm_head", reason: "in skipModules" }]);
  const q = m.getSubmodule("model.layers.0.mlp.down_proj") as QuantizedLinear;
  assert.ok(q instanceof QuantizedLinear);
  assert.equal(q.quantType, "nf4");
  assert.equal(q.blocksize, 64);
  assert.equal(q.doubleQuant, true);
  assert.ok(m.lm_head instanceof Linear);
  const lin = new Linear(8, 4, { init: randomInit(new Rng(1)) });
  const q2 = await QuantizedLinear.fromLinear(lin);
  assert.deepEqual([q2.quantType, q2.blocksize, q2.doubleQuant], ["nf4", 64, true]);
  m.dispose();

  const tied = tinyModel({ tie_word_embeddings: true });
  const r2 = await quantizeModel(tied, { skipModules: [] });
  assert.deepEqual(r2.skipped, [{ name: "lm_head", reason: "tied to the input embeddings" }]);
  const r3 = await quantizeModel(tinyModel(), { skipModules: ["mlp", "lm_head"] });
  assert.equal(r3.quantized.filter((n) => n.includes("mlp")).length, 0, "skip patterns match whole dotted segments");
  assert.equal(r3.quantized.length, 2 * 4);
  assert.deepEqual(bnbQuantizationConfig().bnb_4bit_quant_type, "nf4");
});

test("a quantized model saves as a bnb-4bit directory and reloads with identical logits", async () => {
  for (const opts of [{}, { quantType: "fp4" as const, doubleQuant: false, blocksize: 128 }]) {
    const cfg = { hidden_size: 24, intermediate_size: 37, num_attention_heads: 4, num_key_value_heads: 2, attention_bias: true };
    const dense = tinyModel(cfg);
    const originals = new Map<string, Float32Array>();
    for (const [name, t] of dense.stateDict()) if (/_proj\.weight$/.test(name)) originals.set(name, (await t.read()) as Float32Array);
    await quantizeModel(dense, opts);
    const want = logits(dense);
    // The same model kept dense but with every projection set to its dequantized weight.
    const reference = tinyModel(cfg);
    for (const name of originals.keys()) {
      const q = dense.getSubmodule(name.slice(0, -".weight".length)) as QuantizedLinear;
      reference.tensorAt(name)!.assign(q.dequantizeWeight());
    }
    assert.ok(maxAbsDiff(want, logits(reference)) < 1e-4, `4-bit forward = dense forward on the dequantized weights (${maxAbsDiff(want, logits(reference))})`);
    reference.dispose();
    await withTempDir(async (dir) => {
      await saveHfModel(dense, dir);
      const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
      assert.deepEqual(
        config.quantization_config,
        bnbQuantizationConfig({
          quantType: opts.quantType ?? "nf4",
          doubleQuant: opts.doubleQuant ?? true,
          computeDtype: "float32",
          skipModules: ["lm_head"],
        }),
      );
      const f = await openSafetensors(join(dir, "model.safetensors"));
      for (const [name, w] of originals) {
        const prefix = name.slice(0, -"weight".length);
        const layer = dense.getSubmodule(prefix.slice(0, -1)) as QuantizedLinear;
        const expect = toBnbTensors(prefix, quantize4bit(w, { ...opts, shape: [layer.outFeatures, layer.inFeatures] }));
        for (const [key, t] of Object.entries(expect)) {
          const got = await f.read(key);
          assert.equal(got.dtype, t.dtype, key);
          assert.deepEqual(got.shape, t.shape, key);
          assert.deepEqual(got.data, t.data, `${key}: saved bytes equal toBnbTensors`);
        }
        assert.ok(f.has(`${prefix}bias`) === /(q|k|v|o)_proj/.test(prefix), `${prefix}bias`);
      }
      await f.close();
      const back = await loadHfModel(dir);
      assert.ok(back.getSubmodule("model.layers.1.self_attn.k_proj") instanceof QuantizedLinear);
      assert.deepEqual(logits(back), want, "identical logits after the round trip");
      back.dispose();
    });
    dense.dispose();
  }
});

async function rewrite(path: string, edit: (t: Map<string, LazyTensorInput>) => void): Promise<void> {
  const f = await openSafetensors(path);
  const tensors = new Map<string, LazyTensorInput>();
  for (const name of f.names) {
    const d = await f.read(name);
    tensors.set(name, { dtype: d.dtype, shape: d.shape, data: d.data.slice() });
  }
  await f.close();
  edit(tensors);
  await writeSafetensors(path, tensors, { format: "pt" }, { fsync: false });
}

async function errorOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as Error).message;
  }
  assert.fail("expected an error");
}

test("loading a broken bnb-4bit directory names the file, the tensor and the field", async () => {
  const m = tinyModel();
  await quantizeModel(m);
  await withTempDir(async (dir) => {
    await saveHfModel(m, dir);
    const file = join(dir, "model.safetensors");
    const qs = "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4";
    await rewrite(file, (t) => t.delete("model.layers.0.mlp.up_proj.weight.absmax"));
    assert.match(await errorOf(loadHfModel(dir)), /model\.safetensors: missing tensor "model\.layers\.0\.mlp\.up_proj\.weight\.absmax"/);
    await saveHfModel(m, dir);
    await rewrite(file, (t) => {
      const json = new TextEncoder().encode(new TextDecoder().decode(t.get(qs)!.data as Uint8Array).replace("[24, 16]", "[16, 24]"));
      t.set(qs, { dtype: "U8", shape: [json.length], data: json });
    });
    assert.match(
      await errorOf(loadHfModel(dir)),
      /model\.safetensors: tensor "model\.layers\.0\.mlp\.up_proj\.weight\.quant_state\.bitsandbytes__nf4": shape \[16, 24\] does not match/,
    );
    await saveHfModel(m, dir);
    const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    config.quantization_config.bnb_4bit_quant_storage = "bfloat16";
    const { writeFile } = await import("node:fs/promises");
    await writeFile(join(dir, "config.json"), JSON.stringify(config));
    assert.match(await errorOf(loadHfModel(dir)), /config\.json: quantization_config\.bnb_4bit_quant_storage = "bfloat16" is not supported/);
  });
  m.dispose();
});

test("quant-state JSON bytes from a file (another writer's formatting) survive load -> save unchanged", async () => {
  const m = tinyModel();
  await quantizeModel(m);
  await withTempDir(async (dir) => {
    await saveHfModel(m, dir);
    const qs = "model.layers.1.self_attn.o_proj.weight.quant_state.bitsandbytes__nf4";
    const saved = await openSafetensors(join(dir, "model.safetensors"));
    // JSON.stringify's compact separators instead of Python's ", " and ": ".
    const odd = new TextEncoder().encode(JSON.stringify(JSON.parse(new TextDecoder().decode((await saved.read(qs)).data))));
    await saved.close();
    await rewrite(join(dir, "model.safetensors"), (t) => t.set(qs, { dtype: "U8", shape: [odd.length], data: odd }));
    const back = await loadHfModel(dir);
    assert.deepEqual(logits(back), logits(m));
    await saveHfModel(back, join(dir, "again"));
    const f = await openSafetensors(join(dir, "again", "model.safetensors"));
    assert.deepEqual((await f.read(qs)).data, odd);
    await f.close();
    back.dispose();
  });
  m.dispose();
});

test("requantize stores exactly what quantize4bit gives for the new weight", async () => {
  const state = quantize4bit(weights(12, 64, 8), { shape: [12, 64], blocksize: 128, quantType: "fp4" });
  const q = new QuantizedLinear(state);
  const w2 = weights(12, 64, 9);
  await q.requantize(tensor(w2, { shape: [12, 64] }));
  assert.deepEqual(await q.quantState(), quantize4bit(w2, { shape: [12, 64], blocksize: 128, quantType: "fp4" }));
  q.dispose();
});

class TwoLayers extends Module {
  a: Module;
  b: Module;
  constructor(dims: [number, number][]) {
    super();
    const init = randomInit(new Rng(2));
    this.a = this.registerModule("a", new Linear(dims[0][1], dims[0][0], { init }));
    this.b = this.registerModule("b", new Linear(dims[1][1], dims[1][0], { init, bias: true }));
  }
}

test("quantizedMemoryReport: 4.127 bits/param with double quant at 64, 4.5 without (the formula)", async () => {
  for (const [doubleQuant, expected] of [
    [true, 4 + 8 / 64 + 32 / (64 * 256)],
    [false, 4.5],
  ] as const) {
    const m = new TwoLayers([
      [256, 256],
      [512, 1024],
    ]);
    await quantizeModel(m, { doubleQuant, skipModules: [] });
    const r = quantizedMemoryReport(m);
    assert.equal(r.quantizedParams, 256 * 256 + 512 * 1024);
    assert.equal(r.bitsPerParam, expected, `${r.bitsPerParam} bits/param`);
    for (const l of r.layers) assert.equal(l.bitsPerParam, bitsPerParam(l.shape[0] * l.shape[1], { doubleQuant }));
    assert.equal(r.denseParams, 512, "the bias stays dense");
    assert.equal(r.denseBytes, 512 * 4);
    assert.equal(
      r.tableBytes,
      2 * (64 + (doubleQuant ? 1024 : 0)) +
        (
          await Promise.all(
            (m.namedModules().filter(([, x]) => x instanceof QuantizedLinear) as [string, QuantizedLinear][]).map(
              async ([, q]) => q.stateDict().get(`weight.quant_state.bitsandbytes__nf4`)!.size,
            ),
          )
        ).reduce((a, b) => a + b, 0),
    );
    assert.equal(r.totalBytes, r.quantizedBytes + r.tableBytes + r.denseBytes);
    assert.ok(r.totalBytes < r.f32Bytes / 7, `${r.totalBytes} B vs ${r.f32Bytes} B in f32`);
    console.log(
      `# ${doubleQuant ? "NF4 + DQ" : "NF4"}: ${r.bitsPerParam.toFixed(4)} bits/param (formula ${expected.toFixed(4)}), ${r.totalBytes} B vs ${
        r.f32Bytes
      } B f32`,
    );
    m.dispose();
  }
});

test("f16 compute where the backend has it: quantizeModel on an f16 model computes in f16", async () => {
  const m = new TwoLayers([
    [16, 64],
    [8, 16],
  ]);
  const f16 = new Linear(64, 16, { dtype: "f16", init: randomInit(new Rng(3)) });
  m.setSubmodule("a", f16);
  await quantizeModel(m, { skipModules: ["b"] });
  const q = m.getSubmodule("a") as QuantizedLinear;
  assert.equal(q.computeDtype, "f16");
  assert.equal(q.weightDtype, "float16");
  const y: Tensor = noGrad(() => q.forward(tensor(new Float32Array(64).fill(0.5), { shape: [1, 64], dtype: "f16" })));
  assert.equal(y.dtype, "f16");
  m.dispose();
});
