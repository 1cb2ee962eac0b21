/**
 * The same model code trains on the CPU and on WebGPU and the two loss curves agree within f32
 * tolerance: a 2-layer MLP and a tiny transformer block (embedding, RMSNorm, RoPE, GQA
 * attention, SwiGLU, cross-entropy), 20 Adam steps each. Also: memory returns to baseline.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type Backend,
  type Tensor,
  Rng,
  attention,
  crossEntropy,
  embedding,
  keep,
  noGrad,
  rmsNorm,
  rope,
  ropeTables,
  scope,
  silu,
  tensor,
  zeros,
} from "@lowrank/tensor";
import { testAdam, testParam } from "@lowrank/tensor/testing";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";
import { cpu } from "./helpers-cpu.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;
const STEPS = 20;

const param = testParam;
const adam = testAdam;

async function mlp(be: Backend): Promise<number[]> {
  const rng = new Rng(1);
  const X = tensor(
    Float32Array.from({ length: 64 * 4 }, () => rng.next() * 2 - 1),
    { shape: [64, 4], backend: be },
  );
  const Xv = await X.read();
  const yv = Float32Array.from({ length: 64 }, (_, i) => Math.sin(Xv[i * 4]) + Xv[i * 4 + 1] * Xv[i * 4 + 2] - 0.5 * Xv[i * 4 + 3]);
  const Y = tensor(yv, { shape: [64, 1], backend: be });
  const ps = [param(be, [4, 32], rng, 0.5), param(be, [32], rng, 0), param(be, [32, 1], rng, 0.2), param(be, [1], rng, 0)];
  const [W1, b1, W2, b2] = ps;
  const opt = adam(be, ps, 0.02);
  const losses: number[] = [];
  for (let i = 0; i < STEPS; i++) {
    const loss = scope(() => X.matmul(W1).add(b1).tanh().matmul(W2).add(b2).sub(Y).square().mean());
    loss.backward();
    losses.push((await loss.read())[0]);
    loss.dispose();
    opt.step();
  }
  opt.dispose();
  for (const t of [X, Y, ...ps]) t.dispose();
  return losses;
}

async function transformer(be: Backend): Promise<number[]> {
  const [V, T, D, H, Hkv, F, B] = [16, 8, 32, 4, 2, 64, 4];
  const hd = D / H;
  const rng = new Rng(2);
  const ones = () => keep(tensor(new Array(D).fill(1), { shape: [D], requiresGrad: true, backend: be }));
  const p = {
    emb: param(be, [V, D], rng, 0.5),
    n1: ones(),
    wq: param(be, [D, D], rng, 0.15),
    wk: param(be, [D, Hkv * hd], rng, 0.15),
    wv: param(be, [D, Hkv * hd], rng, 0.15),
    wo: param(be, [D, D], rng, 0.15),
    n2: ones(),
    wg: param(be, [D, F], rng, 0.15),
    wu: param(be, [D, F], rng, 0.15),
    wd: param(be, [F, D], rng, 0.1),
    head: param(be, [D, V], rng, 0.15),
  };
  const tables = ropeTables(hd, T, 10000, undefined, { backend: be });
  const seqs = Array.from({ length: B }, (_, b) => Array.from({ length: T + 1 }, (_, t) => (b * 3 + t * (b + 1)) % V));
  const ids = tensor(
    seqs.flatMap((s) => s.slice(0, T)),
    { shape: [B, T], dtype: "i32", backend: be },
  );
  const targets = tensor(
    seqs.flatMap((s) => s.slice(1)),
    { shape: [B, T], dtype: "i32", backend: be },
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
  const opt = adam(be, Object.values(p), 0.01);
  const losses: number[] = [];
  for (let i = 0; i < STEPS; i++) {
    const loss = scope(forward);
    loss.backward();
    losses.push((await loss.read())[0]);
    loss.dispose();
    opt.step();
  }
  opt.dispose();
  for (const t of [ids, targets, tables.cos, tables.sin, ...Object.values(p)]) t.dispose();
  return losses;
}

function compare(name: string, gpu: number[], ref: number[]): void {
  for (let i = 0; i < ref.length; i++) {
    // f32 rounding differs (FMA, summation order), and Adam amplifies it slowly: allow 1e-4 relative.
    assert.ok(Math.abs(gpu[i] - ref[i]) <= 1e-5 + 1e-4 * Math.abs(ref[i]), `${name} step ${i}: webgpu ${gpu[i]} vs cpu ${ref[i]}\n${gpu}\n${ref}`);
  }
  assert.ok(ref[ref.length - 1] < ref[0], `${name} did not train: ${ref[0]} -> ${ref[ref.length - 1]}`);
}

test("a 2-layer MLP trains to the same losses on WebGPU and CPU", { skip, timeout: TIMEOUT_MS }, async () => {
  const gpu = got as Backend;
  const before = gpu.memory().liveBytes;
  compare("mlp", await mlp(gpu), await mlp(cpu));
  assert.equal(gpu.memory().liveBytes, before, "MLP training leaked device memory");
});

test("a tiny transformer block trains to the same losses on WebGPU and CPU", { skip, timeout: TIMEOUT_MS }, async () => {
  const gpu = got as Backend;
  const before = gpu.memory().liveBytes;
  compare("transformer", await transformer(gpu), await transformer(cpu));
  await gpu.sync();
  assert.equal(gpu.memory().liveBytes, before, "transformer training leaked device memory");
});

test("dispose", { skip, timeout: TIMEOUT_MS }, () => (got as Backend).dispose());
