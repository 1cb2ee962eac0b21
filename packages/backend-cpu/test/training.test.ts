/**
 * End-to-end autograd checks on the CPU backend: small models train to near-zero loss, the graph
 * is released after backward, and a long training loop does not grow memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  type Tensor,
  Rng,
  attention,
  crossEntropy,
  keep,
  noGrad,
  rmsNorm,
  rope,
  ropeTables,
  scope,
  setDefaultBackend,
  silu,
  tensor,
  embedding,
  zeros,
} from "@lowrank/tensor";
import { testAdam, testParam } from "@lowrank/tensor/testing";
import { createCpuBackend } from "../src/index.ts";

const backend = createCpuBackend({ threads: 0 });
setDefaultBackend(backend);

const param = (shape: number[], rng: Rng, scale: number): Tensor => testParam(backend, shape, rng, scale);
const adam = (params: Tensor[], lr: number) => testAdam(backend, params, lr).step;

test("2-layer MLP fits a synthetic regression to near-zero loss", async () => {
  const rng = new Rng(1);
  const X = tensor(
    Float32Array.from({ length: 64 * 4 }, () => rng.next() * 2 - 1),
    { shape: [64, 4] },
  );
  const Xv = await X.read();
  const yv = Float32Array.from({ length: 64 }, (_, i) => Math.sin(Xv[i * 4]) + Xv[i * 4 + 1] * Xv[i * 4 + 2] - 0.5 * Xv[i * 4 + 3]);
  const Y = tensor(yv, { shape: [64, 1] });
  const W1 = param([4, 32], rng, 0.5),
    b1 = param([32], rng, 0.0),
    W2 = param([32, 1], rng, 0.2),
    b2 = param([1], rng, 0);
  const step = adam([W1, b1, W2, b2], 0.02);
  let first = 0,
    last = 0;
  for (let i = 0; i < 400; i++) {
    const loss = scope(() => X.matmul(W1).add(b1).tanh().matmul(W2).add(b2).sub(Y).square().mean());
    loss.backward();
    last = (await loss.read())[0];
    if (i === 0) first = last;
    loss.dispose();
    step();
  }
  assert.ok(last < 1e-3 && last < first / 100, `MLP loss ${first} -> ${last}`);
});

test("a small transformer block (RMSNorm, RoPE, GQA attention, SwiGLU) fits a sequence task", async () => {
  const [V, T, D, H, Hkv, F] = [16, 8, 32, 4, 2, 64];
  const hd = D / H;
  const rng = new Rng(2);
  const p = {
    emb: param([V, D], rng, 0.5),
    n1: keep(tensor(new Array(D).fill(1), { shape: [D], requiresGrad: true })),
    wq: param([D, D], rng, 0.15),
    wk: param([D, Hkv * hd], rng, 0.15),
    wv: param([D, Hkv * hd], rng, 0.15),
    wo: param([D, D], rng, 0.15),
    n2: keep(tensor(new Array(D).fill(1), { shape: [D], requiresGrad: true })),
    wg: param([D, F], rng, 0.15),
    wu: param([D, F], rng, 0.15),
    wd: param([F, D], rng, 0.1),
    head: param([D, V], rng, 0.15),
  };
  const tables = ropeTables(hd, T);
  // Sequences counting up by a per-sequence stride: the next token depends on the previous two.
  const B = 4;
  const seqs = Array.from({ length: B }, (_, b) => Array.from({ length: T + 1 }, (_, t) => (b * 3 + t * (b + 1)) % V));
  const ids = tensor(
    seqs.flatMap((s) => s.slice(0, T)),
    { shape: [B, T], dtype: "i32" },
  );
  const targets = tensor(
    seqs.flatMap((s) => s.slice(1)),
    { shape: [B, T], dtype: "i32" },
  );
  const forward = () => {
    const x = embedding(p.emb, ids);
    const h = rmsNorm(x, p.n1);
    const heads = (t: Tensor, n: number) => t.reshape([B, T, n, hd]).permute(0, 2, 1, 3);
    const q = rope(heads(h.matmul(p.wq), H), tables);
    const k = rope(heads(h.matmul(p.wk), Hkv), tables);
    const v = heads(h.matmul(p.wv), Hkv);
    const a = attention(q, k, v).permute(0, 2, 1, 3).reshape([B, T, D]).matmul(p.wo);
    const x2 = x.add(a);
    const h2 = rmsNorm(x2, p.n2);
    const m = silu(h2.matmul(p.wg)).mul(h2.matmul(p.wu)).matmul(p.wd);
    return crossEntropy(x2.add(m).matmul(p.head), targets);
  };
  const step = adam(Object.values(p), 0.01);
  let first = 0,
    last = 0;
  for (let i = 0; i < 150; i++) {
    const loss = scope(forward);
    loss.backward();
    last = (await loss.read())[0];
    if (i === 0) first = last;
    loss.dispose();
    step();
  }
  assert.ok(first > 2 && last < 0.05, `transformer loss ${first} -> ${last}`);
});

test("the graph is released after backward; a second backward fails clearly", () => {
  const w = tensor([1, 2, 3], { requiresGrad: true });
  const loss = w.square().sum();
  loss.backward();
  assert.deepEqual(Array.from(w.grad!.readSync()), [2, 4, 6]);
  assert.equal(loss._node, null);
  assert.throws(() => loss.backward(), /already released/);
  assert.deepEqual(Array.from(w.grad!.readSync()), [2, 4, 6]);
  const kept = w.mul(w).sum();
  kept.backward(undefined, { retainGraph: true });
  kept.backward();
  assert.deepEqual(Array.from(w.grad!.readSync()), [6, 12, 18]);
});

test("gradients accumulate across backward calls until zeroGrad; noGrad and detach record nothing", () => {
  const w = tensor([1, -1], { requiresGrad: true });
  w.mul(3).sum().backward();
  w.mul(3).sum().backward();
  assert.deepEqual(Array.from(w.grad!.readSync()), [6, 6]);
  w.zeroGrad();
  assert.equal(w.grad, null);
  const y = noGrad(() => w.mul(2));
  assert.equal(y.requiresGrad, false);
  assert.equal(w.detach().mul(2).requiresGrad, false);
  assert.throws(() => tensor([1, 2], { dtype: "i32" }).setRequiresGrad(), /float tensor/);
  assert.throws(() => tensor([1, 2]).sum().backward(), /does not require grad/);
});

test("a 1,000-step training loop does not grow memory", async () => {
  const rng = new Rng(3);
  const X = tensor(
    Float32Array.from({ length: 32 * 8 }, () => rng.next()),
    { shape: [32, 8] },
  );
  const W = param([8, 8], rng, 0.3);
  const b = param([8], rng, 0);
  const step = adam([W, b], 1e-3);
  let at10 = { liveBytes: 0, liveBuffers: 0 };
  for (let i = 0; i < 1000; i++) {
    const loss = scope(() => crossEntropy(rmsNorm(X.matmul(W).add(b), tensor(new Array(8).fill(1))), tensor(new Array(32).fill(1), { dtype: "i32" })));
    loss.backward();
    if (i % 100 === 0) await loss.read();
    loss.dispose();
    step();
    if (i === 10) at10 = backend.memory();
  }
  const end = backend.memory();
  assert.equal(end.liveBuffers, at10.liveBuffers, `live buffers grew from ${at10.liveBuffers} to ${end.liveBuffers}`);
  assert.equal(end.liveBytes, at10.liveBytes, `live bytes grew from ${at10.liveBytes} to ${end.liveBytes}`);
});

test("recompute: same gradients for parameters inside the block, fewer live bytes before backward", async () => {
  const { recompute } = await import("@lowrank/tensor");
  const rng = new Rng(4);
  const x = tensor(
    Float32Array.from({ length: 64 * 32 }, () => rng.next()),
    { shape: [64, 32] },
  ); // frozen input
  const W1 = param([32, 128], rng, 0.2),
    W2 = param([128, 32], rng, 0.2);
  const block = (h: Tensor) => silu(h.matmul(W1)).matmul(W2).tanh().add(h);
  const run = (again: boolean) => {
    const base = backend.memory().liveBytes;
    const loss = scope(() => {
      let h = x;
      for (let i = 0; i < 4; i++) h = again ? recompute(block, h) : block(h);
      return h.square().mean();
    });
    const held = backend.memory().liveBytes - base;
    loss.backward();
    const grads = [W1.grad!.readSync().slice(), W2.grad!.readSync().slice()];
    W1.zeroGrad();
    W2.zeroGrad();
    loss.dispose();
    return { held, grads };
  };
  const plain = run(false);
  const re = run(true);
  for (let k = 0; k < 2; k++) {
    const a = plain.grads[k],
      b = re.grads[k];
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 + 1e-5 * Math.abs(a[i]), `grad ${k}[${i}] ${a[i]} vs ${b[i]}`);
  }
  assert.ok(re.held * 3 < plain.held, `the recomputed graph holds ${re.held} bytes vs ${plain.held}`);
});
