/**
 * A bf16 checkpoint, as real ones ship: saved with BF16 tensors, loaded without widening
 * (parameters stay bf16, half the bytes), and it generates the f32 copy's greedy tokens.
 *
 * Bound (docs/mixed-precision.md): bf16 keeps 8 significant bits, so each stored or computed
 * value is off by at most 2^-9 relative; through this 2-layer model the logits of the bf16 run
 * stay within 0.06 · max|logit| of the f32 run's (measured up to 0.042). The greedy tokens
 * are identical wherever the f32 run's best logit leads the second by more than twice that bound.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Rng, noGrad, scope, tensor } from "@lowrank/tensor";
import { LlamaForCausalLM, loadHfModel, randomInit, saveHfModel } from "../src/node.ts";
import { backend, tinyConfig, withTempDir } from "./helpers.ts";

/** Logits of the bf16 run stay within BOUND · max|logit| of the f32 run's (measured up to 0.042 on this random model). */
const BOUND = 0.06;

test("a bf16 safetensors checkpoint loads as bf16 (half the bytes) and generates the f32 copy's greedy tokens", async () => {
  await withTempDir(async (dir) => {
    const cfg = tinyConfig({ vocab_size: 64, hidden_size: 32, intermediate_size: 48 });
    // The bf16 checkpoint, and its exact f32 copy (the same values widened).
    const m16 = new LlamaForCausalLM(cfg, { dtype: "bf16", init: randomInit(new Rng(7), 0.3) });
    await saveHfModel(m16, join(dir, "bf16"));
    const m32 = new LlamaForCausalLM(cfg, { dtype: "f32", init: randomInit(new Rng(7), 0.3) });
    const src = new Map(m16.namedParameters());
    noGrad(() => {
      for (const [name, p] of m32.namedParameters()) scope(() => p.assign((src.get(name) as typeof p).cast("f32")));
    });
    await saveHfModel(m32, join(dir, "f32"));
    m16.dispose();
    m32.dispose();

    const header = readFileSync(join(dir, "bf16", "model.safetensors"));
    const meta = JSON.parse(header.subarray(8, 8 + Number(header.readBigUInt64LE(0))).toString("utf8"));
    assert.ok(
      Object.entries(meta).every(([k, v]) => k === "__metadata__" || (v as { dtype: string }).dtype === "BF16"),
      "every tensor is saved as BF16",
    );

    const a = await loadHfModel(join(dir, "bf16"), { backend, dtype: "bf16" });
    const b = await loadHfModel(join(dir, "f32"), { backend, dtype: "f32" });
    let bytes16 = 0,
      bytes32 = 0;
    for (const [, p] of a.namedParameters()) {
      assert.equal(p.dtype, "bf16");
      bytes16 += p.size * 2;
    }
    for (const [, p] of b.namedParameters()) bytes32 += p.size * 4;
    assert.equal(bytes16 * 2, bytes32);

    // Greedy decoding along the f32 run's tokens (teacher-forced, so one near-tie does not end
    // the comparison): every step's logits within the bound, and the same greedy token wherever
    // the f32 choice leads by more than twice the bound.
    const ids = [1, 5, 9, 17];
    let clear = 0,
      worst = 0;
    for (let step = 0; step < 32; step++) {
      const [la, lb] = noGrad(() =>
        [a, b].map((m) => {
          const out = m.forward(tensor([ids], { dtype: "i32", backend }), { lastOnly: true });
          return Float32Array.from(out.cast("f32").readSync() as Float32Array);
        }),
      );
      const scale = Math.max(...lb.map(Math.abs));
      let diff = 0;
      for (let i = 0; i < la.length; i++) diff = Math.max(diff, Math.abs(la[i] - lb[i]));
      worst = Math.max(worst, diff / scale);
      assert.ok(diff <= BOUND * scale, `step ${step}: logits differ by ${diff}, bound ${BOUND * scale}`);
      const order = [...lb.keys()].sort((i, j) => lb[j] - lb[i]);
      const next = (l: Float32Array) => l.indexOf(Math.max(...l));
      if (lb[order[0]] - lb[order[1]] > 2 * BOUND * scale) {
        clear++;
        assert.equal(next(la), next(lb), `step ${step}: greedy tokens differ with a clear margin`);
      }
      ids.push(next(lb));
    }
    assert.ok(clear >= 10, `only ${clear} of 32 steps had a clear margin`);
    a.dispose();
    b.dispose();
  });
});

test("a bf16 checkpoint loaded as f32 is widened with one line saying so; loaded as bf16 nothing is said", async () => {
  await withTempDir(async (dir) => {
    const cfg = tinyConfig({ vocab_size: 64, hidden_size: 32, intermediate_size: 48 });
    const m16 = new LlamaForCausalLM(cfg, { dtype: "bf16", init: randomInit(new Rng(3), 0.3) });
    const n = [...m16.namedParameters()].reduce((s, [, p]) => s + p.size, 0);
    await saveHfModel(m16, dir);
    m16.dispose();
    const lines: string[] = [];
    const wide = await loadHfModel(dir, { backend, dtype: "f32", log: (l) => lines.push(l) });
    wide.dispose();
    assert.equal(lines.length, 1, lines.join("\n"));
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    assert.ok(lines[0].includes(`${n} BF16 weights widened to f32 at load (${mib(2 * n)} -> ${mib(4 * n)} MiB)`), lines[0]);
    assert.ok(lines[0].startsWith(join(dir, "model.safetensors")), lines[0]);
    const kept = await loadHfModel(dir, { backend, dtype: "bf16", log: (l) => lines.push(l) });
    kept.dispose();
    assert.equal(lines.length, 1);
  });
});
