/** AdamW and SGD against f64 references computed here from the formulas; schedules; clipping; state. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type Tensor, keep, setDefaultBackend, tensor } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { AdamW, SGD, clipGradients, globalGradNorm, learningRate, lrFactor, namedParams, warmupSteps } from "../src/node.ts";

const backend = createCpuBackend({ threads: 0 });
setDefaultBackend(backend);

const close = (a: ArrayLike<number>, b: ArrayLike<number>, rel = 2e-6, abs = 1e-7) => {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= abs + rel * Math.abs(b[i]), `[${i}] ${a[i]} vs ${b[i]}`);
};

/** Gradients that change every step: g_t = sin(i + t) * 0.1 * (t + 1) + 0.01 * p. */
const gradAt = (p: number[], t: number) => p.map((x, i) => Math.sin(i + t) * 0.1 * (t + 1) + 0.01 * x);

function setGrad(p: Tensor, g: number[]) {
  p.zeroGrad();
  p.grad = keep(tensor(g, { shape: [...p.shape] }));
}

test("AdamW matches the f64 reference (decoupled decay, bias correction) for 3 steps", () => {
  const init = [0.5, -1.25, 2, 0.001, -0.3, 1.5];
  const w = keep(tensor(init, { shape: [2, 3], requiresGrad: true })); // decays (matrix)
  const b = keep(tensor([0.1, -0.2], { requiresGrad: true })); // no decay (vector)
  const [b1, b2, eps, wd] = [0.8, 0.95, 1e-6, 0.1];
  const lrs = [0.1, 0.05, 0.02];
  const opt = new AdamW(
    namedParams([
      ["w", w],
      ["b", b],
    ]),
    { betas: [b1, b2], eps, weightDecay: wd },
  );
  // reference in f64
  const ref = (p0: number[], decay: boolean) => {
    let p = [...p0];
    const m = p.map(() => 0);
    const v = p.map(() => 0);
    const out: number[][] = [];
    for (let t = 1; t <= 3; t++) {
      const g = gradAt(p, t);
      const lr = lrs[t - 1];
      p = p.map((x, i) => {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        const xd = decay ? x * (1 - lr * wd) : x;
        const mhat = m[i] / (1 - b1 ** t);
        const vhat = v[i] / (1 - b2 ** t);
        return xd - (lr * mhat) / (Math.sqrt(vhat) + eps);
      });
      out.push(p);
    }
    return out;
  };
  const rw = ref(init, true);
  const rb = ref([0.1, -0.2], false);
  for (let t = 1; t <= 3; t++) {
    setGrad(w, gradAt(Array.from(w.readSync()), t));
    setGrad(b, gradAt(Array.from(b.readSync()), t));
    const before = w;
    opt.step(lrs[t - 1]);
    assert.equal(w, before, "the parameter object is kept (assign)");
    close(w.readSync(), rw[t - 1]);
    close(b.readSync(), rb[t - 1]);
  }
  assert.equal(opt.stepCount, 3);
  opt.dispose();
});

test("AdamW state round-trips: a restored optimizer continues bit-identically", async () => {
  const mk = () => keep(tensor([1, 2, 3, 4], { shape: [2, 2], requiresGrad: true }));
  const a = mk();
  const oa = new AdamW(namedParams([["p", a]]), { weightDecay: 0.01 });
  for (let t = 0; t < 2; t++) {
    setGrad(a, gradAt(Array.from(a.readSync()), t));
    oa.step(0.1);
  }
  const b = mk();
  b.assign(tensor(a.readSync(), { shape: [2, 2] }));
  const ob = new AdamW(namedParams([["p", b]]), { weightDecay: 0.01 });
  const state = await oa.state();
  assert.deepEqual([...state.tensors.keys()], ["p.exp_avg", "p.exp_avg_sq"]);
  ob.loadState(state);
  for (const [p, o] of [
    [a, oa],
    [b, ob],
  ] as const) {
    setGrad(p, gradAt(Array.from(p.readSync()), 2));
    o.step(0.1);
  }
  assert.deepEqual(Array.from(b.readSync()), Array.from(a.readSync()));
  assert.throws(() => new AdamW(namedParams([["q", b]])).loadState(state), /no parameter "p"/);
});

test("SGD with momentum and weight decay matches torch's formula", () => {
  const p = keep(tensor([1, -2], { shape: [1, 2], requiresGrad: true }));
  const opt = new SGD(namedParams([["p", p]]), { momentum: 0.9, weightDecay: 0.1 });
  let ref = [1, -2];
  let buf: number[] | null = null;
  for (let t = 0; t < 3; t++) {
    const g = gradAt(ref, t);
    setGrad(p, g);
    opt.step(0.5);
    const gd = g.map((x, i) => x + 0.1 * ref[i]);
    buf = buf === null ? gd : buf.map((x, i) => 0.9 * x + gd[i]);
    ref = ref.map((x, i) => x - 0.5 * buf![i]);
    close(p.readSync(), ref);
  }
});

test("schedules: HF's constant/linear/cosine with warmup", () => {
  const o = { totalSteps: 10, warmupSteps: 2 };
  assert.deepEqual(
    [0, 1, 2, 5, 9].map((s) => lrFactor(s, { ...o, name: "constant" })),
    [0, 0.5, 1, 1, 1],
  );
  close(
    [0, 1, 2, 6, 10].map((s) => lrFactor(s, { ...o, name: "linear" })),
    [0, 0.5, 1, 0.5, 0],
  );
  close(
    [0, 1, 2, 6, 10].map((s) => lrFactor(s, { ...o, name: "cosine" })),
    [0, 0.5, 1, 0.5, 0],
  );
  close(
    [4].map((s) => lrFactor(s, { ...o, name: "cosine" })),
    [0.5 * (1 + Math.cos(Math.PI * 0.25))],
  );
  assert.equal(learningRate(1, { name: "linear", lr: 2e-4, ...o }), 1e-4);
  assert.equal(lrFactor(0, { name: "cosine", totalSteps: 5, warmupSteps: 0 }), 1);
  assert.equal(warmupSteps(0.1, 25), 3); // ceil, like warmup_ratio
  assert.equal(warmupSteps(7, 25), 7);
  assert.equal(warmupSteps(0, 25), 0);
  assert.throws(() => warmupSteps(2.5, 25), /not an integer/);
});

test("global-norm clipping scales every gradient by maxNorm / (norm + 1e-6)", async () => {
  const a = keep(tensor([3, 0], { requiresGrad: true }));
  const b = keep(tensor([[0, 4]], { requiresGrad: true }));
  setGrad(a, [3, 0]);
  setGrad(b, [0, 4]);
  const norm = await globalGradNorm([a, b]);
  assert.equal(norm, 5);
  assert.equal(clipGradients([a, b], 10, norm), false, "under the limit: unchanged");
  assert.equal(clipGradients([a, b], 1, norm), true);
  const c = 1 / (5 + 1e-6);
  close(a.grad!.readSync(), [3 * c, 0]);
  close(b.grad!.readSync(), [0, 4 * c]);
  setGrad(a, [NaN, 1]);
  assert.ok(Number.isNaN(await globalGradNorm([a, b])), "a NaN gradient gives a NaN norm (the trainer skips that step)");
  assert.equal(clipGradients([a, b], 1, NaN), false);
});
