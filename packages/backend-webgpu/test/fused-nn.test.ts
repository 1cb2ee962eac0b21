/**
 * The fused transformer kernels (dropout, SwiGLU, RoPE, flash attention, AdamW) called directly
 * on the backend and checked against plain double-precision loops written here, plus their
 * dispatch counts and their chunking when operands span several storage bindings.
 */
import { test } from "node:test";
import {
  type AdamWHyper,
  type DType,
  type FusedKernels,
  type Input,
  FUSED_PAIRS,
  checkFusedPairs,
  contiguousStrides,
  fromF32,
  toF32,
  uniformAt,
} from "@lowrank/tensor";
import { type GpuStorage, type WebGpuBackend, createWebGpuBackend } from "../src/backend.ts";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;
const gpu = got as WebGpuBackend;
const t = (name: string, fn: () => Promise<void>) => test(name, { skip, timeout: TIMEOUT_MS }, fn);
const fused = () => gpu.fused as FusedKernels<GpuStorage>;

/** Deterministic values in [lo, hi). */
const vals = (n: number, seed: number, lo = -1, hi = 1) => Array.from({ length: n }, (_, i) => lo + (hi - lo) * uniformAt(seed, i));

/** Upload `data` as `dtype`; `values` are what the device holds (rounded), for the references. */
function up(be: WebGpuBackend, data: number[], shape: number[], dtype: DType = "f32", view?: { strides: number[]; offset: number }) {
  const stored = fromF32(dtype, data);
  const handle = be.upload(stored, dtype);
  const input: Input<GpuStorage> = { handle, dtype, view: { shape, strides: view?.strides ?? contiguousStrides(shape), offset: view?.offset ?? 0 } };
  return { input, values: Array.from(toF32(dtype, stored)) };
}

async function down(be: WebGpuBackend, h: GpuStorage, dtype: DType, n: number): Promise<number[]> {
  return Array.from(toF32(dtype, await be.read(h, dtype, n)));
}

function close(what: string, actual: number[], expected: number[], atol: number, rtol: number): void {
  if (actual.length !== expected.length) throw new Error(`${what}: ${actual.length} values, expected ${expected.length}`);
  expected.forEach((y, i) => {
    const x = actual[i];
    if (!(Math.abs(x - y) <= atol + rtol * Math.abs(y))) throw new Error(`${what}: element ${i} is ${x}, expected ${y} (atol ${atol}, rtol ${rtol})`);
  });
}

/** Tolerances for a result rounded once into `dtype`. */
const TOL: Record<string, [number, number]> = { f32: [1e-5, 1e-4], f16: [2e-3, 4e-3], bf16: [1e-2, 2e-2] };

async function dispatches(be: WebGpuBackend, expected: number, what: string, fn: () => unknown): Promise<void> {
  const before = be.engine.counters.dispatches;
  fn();
  const n = be.engine.counters.dispatches - before;
  if (n !== expected) throw new Error(`${what}: ${n} dispatches, expected ${expected}`);
}

t("checkFusedPairs passes and every new kernel is present", async () => {
  checkFusedPairs(gpu);
  for (const [fwd, bwd] of FUSED_PAIRS) {
    if (fwd === "matmul4bit") continue;
    for (const k of [fwd, bwd]) if (k && typeof gpu.fused[k] !== "function") throw new Error(`missing fused kernel ${k}`);
  }
});

t("dropout: the mask is uniformAt(seed, offset + i) >= p bit for bit, also past 2^32 and at p on a draw", async () => {
  const n = 1001;
  const x = vals(n, 1, 0.5, 1.5);
  const seed = 1234;
  // Offsets past 2^32 exercise the carry into the high counter word.
  for (const offset of [0, 2 ** 32 - 300, 2 ** 40 + 7]) {
    // p exactly on a draw keeps it; p a hair above (less than f32's spacing) must drop it.
    const u5 = uniformAt(seed, offset + 5);
    for (const p of [0.3, 0.1, u5, u5 + 1e-9]) {
      for (const dtype of ["f32", "f16", "bf16"] as DType[]) {
        const xi = up(gpu, x, [n], dtype);
        let out!: GpuStorage;
        await dispatches(gpu, 1, "dropout", () => (out = fused().dropout(xi.input, p, seed, offset)));
        const y = await down(gpu, out, dtype, n);
        const want = xi.values.map((v, i) => (uniformAt(seed, offset + i) >= p ? v / (1 - p) : 0));
        y.forEach((v, i) => {
          if ((v !== 0) !== (want[i] !== 0))
            throw new Error(`dropout ${dtype} p=${p} offset ${offset}: element ${i} kept=${v !== 0}, uniformAt says ${want[i] !== 0}`);
        });
        close(`dropout ${dtype} values`, y, want, 0, TOL[dtype][1]);
        gpu.free(out);
        gpu.free(xi.input.handle);
      }
    }
  }
});

t("swiglu and its backward against double loops (f32, f16, bf16; odd length)", async () => {
  const n = 3 * 37;
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  for (const dtype of ["f32", "f16", "bf16"] as DType[]) {
    const [g, u, gy] = [vals(n, 2, -6, 6), vals(n, 3), vals(n, 4)].map((d) => up(gpu, d, [3, 37], dtype));
    let y!: GpuStorage;
    await dispatches(gpu, 1, "swiglu", () => (y = fused().swiglu(g.input, u.input)));
    const [atol, rtol] = TOL[dtype];
    close(
      `swiglu ${dtype}`,
      await down(gpu, y, dtype, n),
      g.values.map((a, i) => a * sig(a) * u.values[i]),
      atol,
      rtol,
    );
    let r!: { gGate: GpuStorage; gUp: GpuStorage };
    await dispatches(gpu, 2, "swigluBackward", () => (r = fused().swigluBackward(g.input, u.input, gy.input)));
    const s = g.values.map(sig);
    close(
      `swiglu gUp ${dtype}`,
      await down(gpu, r.gUp, dtype, n),
      g.values.map((a, i) => gy.values[i] * a * s[i]),
      atol,
      rtol,
    );
    close(
      `swiglu gGate ${dtype}`,
      await down(gpu, r.gGate, dtype, n),
      g.values.map((a, i) => gy.values[i] * u.values[i] * s[i] * (1 + a * (1 - s[i]))),
      atol,
      rtol,
    );
    for (const h of [y, r.gGate, r.gUp, g.input.handle, u.input.handle, gy.input.handle]) gpu.free(h);
  }
});

/** out[b, h, t, :] of rope on logical x (a function of the index), sign -1 for the backward. */
function ropeRef(
  x: (b: number, h: number, t: number, j: number) => number,
  B: number,
  H: number,
  T: number,
  D: number,
  cos: number[],
  sin: number[],
  interleaved: boolean,
  sign: number,
): number[] {
  const half = D / 2;
  const out: number[] = [];
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let t = 0; t < T; t++) {
        for (let j = 0; j < D; j++) {
          const i = interleaved ? j >> 1 : j % half;
          const first = interleaved ? j % 2 === 0 : j < half;
          const [p, q] = interleaved ? [2 * i, 2 * i + 1] : [i, i + half];
          const c = cos[t * half + i];
          const s = sign * sin[t * half + i];
          out.push(first ? x(b, h, t, p) * c - x(b, h, t, q) * s : x(b, h, t, q) * c + x(b, h, t, p) * s);
        }
      }
  return out;
}

t("rope and ropeBackward: a head-permuted view of [B, T, H, D] at an odd offset, both pairings, table rows from a narrowed view", async () => {
  const [B, T, H, D, pos0, maxPos] = [2, 5, 3, 8, 2, 9];
  const half = D / 2;
  const angles = Array.from({ length: maxPos * half }, (_, k) => Math.floor(k / half) * 10000 ** (-(k % half) / half));
  const cosT = up(gpu, angles.map(Math.cos), [maxPos, half]);
  const sinT = up(gpu, angles.map(Math.sin), [maxPos, half]);
  // rows pos0..pos0+T-1 of the table, as the core narrows it
  const narrow = (c: typeof cosT) => ({ ...c.input, view: { shape: [T, half], strides: [half, 1], offset: pos0 * half } });
  const cos = cosT.values.slice(pos0 * half, (pos0 + T) * half);
  const sin = sinT.values.slice(pos0 * half, (pos0 + T) * half);
  const n = B * T * H * D;
  for (const dtype of ["f32", "f16"] as DType[]) {
    const [atol, rtol] = TOL[dtype];
    // q arrives as [B, T, H, D].permute(0, 2, 1, 3): strides [T*H*D, D, H*D, 1]; 3 leading junk elements
    const xs = up(gpu, [7, 7, 7, ...vals(n, 5)], [B, H, T, D], dtype, { strides: [T * H * D, D, H * D, 1], offset: 3 });
    const xAt = (b: number, h: number, t: number, j: number) => xs.values[3 + b * T * H * D + t * H * D + h * D + j];
    const gy = up(gpu, vals(n, 6), [B, H, T, D], dtype);
    const gAt = (b: number, h: number, t: number, j: number) => gy.values[((b * H + h) * T + t) * D + j];
    for (const interleaved of [false, true]) {
      let y!: GpuStorage;
      await dispatches(gpu, 1, "rope", () => (y = fused().rope(xs.input, narrow(cosT), narrow(sinT), interleaved)));
      close(`rope ${dtype} interleaved=${interleaved}`, await down(gpu, y, dtype, n), ropeRef(xAt, B, H, T, D, cos, sin, interleaved, 1), atol, rtol);
      let g!: GpuStorage;
      await dispatches(gpu, 1, "ropeBackward", () => (g = fused().ropeBackward(gy.input, narrow(cosT), narrow(sinT), interleaved)));
      close(`ropeBackward ${dtype} interleaved=${interleaved}`, await down(gpu, g, dtype, n), ropeRef(gAt, B, H, T, D, cos, sin, interleaved, -1), atol, rtol);
      gpu.free(y);
      gpu.free(g);
    }
    gpu.free(xs.input.handle);
    gpu.free(gy.input.handle);
  }
  gpu.free(cosT.input.handle);
  gpu.free(sinT.input.handle);
});

interface AttnCase {
  B: number;
  Hq: number;
  Hkv: number;
  T: number;
  S: number;
  D: number;
  causal: boolean;
  dtype: DType;
}

/** Dense double-precision attention and its gradients (the full probability matrix, on purpose). */
function attentionRef(c: AttnCase, q: number[], k: number[], v: number[], gy: number[], scale: number) {
  const { B, Hq, Hkv, T, S, D, causal } = c;
  const G = Hq / Hkv;
  const out = new Array<number>(B * Hq * T * D).fill(0);
  const lse = new Array<number>(B * Hq * T).fill(0);
  const gq = new Array<number>(q.length).fill(0);
  const gk = new Array<number>(k.length).fill(0);
  const gv = new Array<number>(v.length).fill(0);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++)
      for (let t = 0; t < T; t++) {
        const r = (b * Hq + h) * T + t;
        const kv = (b * Hkv + Math.floor(h / G)) * S;
        const seen = causal ? S - T + t + 1 : S;
        const sc = Array.from({ length: seen }, (_, s) => {
          let d = 0;
          for (let j = 0; j < D; j++) d += q[r * D + j] * k[(kv + s) * D + j];
          return d * scale;
        });
        const m = Math.max(...sc);
        const z = sc.reduce((a, x) => a + Math.exp(x - m), 0);
        lse[r] = m + Math.log(z);
        const p = sc.map((x) => Math.exp(x - lse[r]));
        p.forEach((ps, s) => {
          for (let j = 0; j < D; j++) out[r * D + j] += ps * v[(kv + s) * D + j];
        });
        const dp = p.map((_, s) => {
          let d = 0;
          for (let j = 0; j < D; j++) d += gy[r * D + j] * v[(kv + s) * D + j];
          return d;
        });
        const delta = p.reduce((a, ps, s) => a + ps * dp[s], 0);
        p.forEach((ps, s) => {
          const ds = ps * (dp[s] - delta) * scale;
          for (let j = 0; j < D; j++) {
            gq[r * D + j] += ds * k[(kv + s) * D + j];
            gk[(kv + s) * D + j] += ds * q[r * D + j];
            gv[(kv + s) * D + j] += ps * gy[r * D + j];
          }
        });
      }
  return { out, lse, gq, gk, gv };
}

async function checkAttention(be: WebGpuBackend, c: AttnCase, counts: [number, number] | null, seed: number): Promise<void> {
  const { B, Hq, Hkv, T, S, D, dtype } = c;
  const what = `attention ${JSON.stringify(c)}`;
  const scale = 1 / Math.sqrt(D);
  const q = up(be, vals(B * Hq * T * D, seed, -2, 2), [B, Hq, T, D], dtype);
  const k = up(be, vals(B * Hkv * S * D, seed + 1, -2, 2), [B, Hkv, S, D], dtype);
  const v = up(be, vals(B * Hkv * S * D, seed + 2), [B, Hkv, S, D], dtype);
  const gy = up(be, vals(B * Hq * T * D, seed + 3), [B, Hq, T, D], dtype);
  const ref = attentionRef(c, q.values, k.values, v.values, gy.values, scale);
  const f = be.fused as FusedKernels<GpuStorage>;
  let fwd!: { out: GpuStorage; lse: GpuStorage };
  const run = () => (fwd = f.attention(q.input, k.input, v.input, c.causal, scale));
  if (counts) await dispatches(be, counts[0], `${what} forward`, run);
  else run();
  const [atol, rtol] = TOL[dtype];
  close(`${what} out`, await down(be, fwd.out, dtype, ref.out.length), ref.out, atol, rtol);
  close(`${what} lse`, await down(be, fwd.lse, "f32", ref.lse.length), ref.lse, 1e-5, 1e-5);
  const o: Input<GpuStorage> = { handle: fwd.out, dtype, view: q.input.view };
  const lse: Input<GpuStorage> = { handle: fwd.lse, dtype: "f32", view: { shape: [B, Hq, T], strides: contiguousStrides([B, Hq, T]), offset: 0 } };
  let g!: { gq: GpuStorage; gk: GpuStorage; gv: GpuStorage };
  const back = () => (g = f.attentionBackward(q.input, k.input, v.input, o, lse, gy.input, c.causal, scale));
  if (counts) await dispatches(be, counts[1], `${what} backward`, back);
  else back();
  // gradients sum many terms: a looser absolute floor for halves
  const gtol = dtype === "f32" ? 1e-5 : 4 * atol;
  close(`${what} gq`, await down(be, g.gq, dtype, ref.gq.length), ref.gq, gtol, rtol);
  close(`${what} gk`, await down(be, g.gk, dtype, ref.gk.length), ref.gk, gtol, rtol);
  close(`${what} gv`, await down(be, g.gv, dtype, ref.gv.length), ref.gv, gtol, rtol);
  for (const h of [fwd.out, fwd.lse, g.gq, g.gk, g.gv, q.input.handle, k.input.handle, v.input.handle, gy.input.handle]) be.free(h);
}

t("attention forward and backward: GQA, causal with S > T, non-causal, rows past a workgroup, D = 128, halves, odd D", async () => {
  const base = { B: 2, Hq: 4, Hkv: 2, T: 5, S: 9, D: 16, dtype: "f32" as DType };
  await checkAttention(gpu, { ...base, causal: true }, [1, 2], 10);
  await checkAttention(gpu, { ...base, causal: false }, [1, 2], 20);
  await checkAttention(gpu, { B: 1, Hq: 2, Hkv: 2, T: 70, S: 70, D: 8, causal: true, dtype: "f32" }, [1, 2], 30);
  await checkAttention(gpu, { B: 1, Hq: 4, Hkv: 1, T: 3, S: 11, D: 128, causal: true, dtype: "f32" }, [1, 2], 40);
  await checkAttention(gpu, { B: 1, Hq: 4, Hkv: 2, T: 6, S: 10, D: 32, causal: true, dtype: "f16" }, [1, 2], 50);
  await checkAttention(gpu, { B: 1, Hq: 2, Hkv: 1, T: 4, S: 7, D: 24, causal: false, dtype: "bf16" }, [1, 2], 60);
  // odd D with halves: rows share words, so f32 results plus one cast per output
  await checkAttention(gpu, { B: 1, Hq: 2, Hkv: 1, T: 3, S: 5, D: 5, causal: true, dtype: "f16" }, [2, 5], 70);
});

/** One AdamW step in double precision, state rounded to f32 like the storages. */
function adamwRef(p: number[], g: number[], m: number[], v: number[], h: AdamWHyper): void {
  for (let i = 0; i < p.length; i++) {
    m[i] = Math.fround(h.beta1 * m[i] + (1 - h.beta1) * g[i]);
    v[i] = Math.fround(h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i]);
    const decayed = p[i] * (1 - h.lr * h.weightDecay);
    p[i] = Math.fround(decayed - ((h.lr / h.bc1) * m[i]) / (Math.sqrt(v[i]) / h.sqrtBc2 + h.eps));
  }
}

t("adamw: three in-place steps against the torch formula; g a view at an offset; a strided g is refused", async () => {
  const n = 1000;
  const p = vals(n, 80).map(Math.fround);
  const m = new Array<number>(n).fill(0);
  const v = new Array<number>(n).fill(0);
  const [ph, mh, vh] = [p, m, v].map((d) => gpu.upload(Float32Array.from(d), "f32"));
  const [b1, b2, lr] = [0.9, 0.999, 1e-2];
  for (let step = 1; step <= 3; step++) {
    const g = vals(n + 5, 90 + step).map(Math.fround);
    const gi = up(gpu, g, [n], "f32", { strides: [1], offset: 5 });
    const h: AdamWHyper = { lr, beta1: b1, beta2: b2, eps: 1e-8, weightDecay: 0.1, bc1: 1 - b1 ** step, sqrtBc2: Math.sqrt(1 - b2 ** step) };
    // adamw is held for merging (adamw.ts); drain records it so the count is this call's.
    await dispatches(gpu, 1, "adamw", () => (fused().adamw(ph, gi.input, mh, vh, n, h), gpu.engine.drain()));
    adamwRef(p, g.slice(5), m, v, h);
    gpu.free(gi.input.handle);
  }
  close("adamw m", await down(gpu, mh, "f32", n), m, 1e-7, 1e-5);
  close("adamw v", await down(gpu, vh, "f32", n), v, 1e-9, 1e-5);
  close("adamw p", await down(gpu, ph, "f32", n), p, 1e-6, 1e-5);
  const strided = up(gpu, vals(2 * n, 99), [n], "f32", { strides: [2], offset: 0 });
  const h: AdamWHyper = { lr, beta1: b1, beta2: b2, eps: 1e-8, weightDecay: 0, bc1: 0.1, sqrtBc2: 0.1 };
  let refused = false;
  try {
    fused().adamw(ph, strided.input, mh, vh, n, h);
  } catch (err) {
    refused = /contiguous/.test(String(err));
  }
  if (!refused) throw new Error("adamw accepted a strided gradient");
  for (const x of [ph, mh, vh, strided.input.handle]) gpu.free(x);
});

t("adamw over many tensors: one dispatch per group of slots, each tensor equal to the torch formula; held work keeps its order", async () => {
  const slots = Math.min(6, Math.floor(gpu.gpuDevice.limits.maxStorageBuffersPerShaderStage / 4));
  const sizes = [1, 7, 64, 300, 1000, 65, 3, 129, 2048];
  const dts: ("f32" | "f16")[] = sizes.map((_, i) => (i === 4 ? "f16" : "f32"));
  const st = sizes.map((n, i) => ({ p: vals(n, 10 + i).map(Math.fround), m: new Array<number>(n).fill(0), v: new Array<number>(n).fill(0) }));
  const hs = st.map((s) => [s.p, s.m, s.v].map((d) => gpu.upload(Float32Array.from(d), "f32")));
  const [b1, b2, lr] = [0.9, 0.999, 1e-2];
  for (let step = 1; step <= 2; step++) {
    const base: AdamWHyper = { lr, beta1: b1, beta2: b2, eps: 1e-8, weightDecay: 0, bc1: 1 - b1 ** step, sqrtBc2: Math.sqrt(1 - b2 ** step) };
    const gs = sizes.map((n, i) => up(gpu, vals(n + 3, 50 * step + i), [n], dts[i], { strides: [1], offset: 3 }));
    const before = gpu.engine.counters.dispatches;
    gs.forEach((gi, i) => {
      // Odd tensors decay, even ones do not (per-slot factor).
      const h = { ...base, weightDecay: i % 2 ? 0.1 : 0 };
      fused().adamw(hs[i][0], gi.input, hs[i][1], hs[i][2], sizes[i], h);
      adamwRef(st[i].p, gi.values.slice(3), st[i].m, st[i].v, h);
    });
    // The gradients go back to the pool while the update is still held: the next upload must not overtake it.
    for (const gi of gs) gpu.free(gi.input.handle);
    const later = gpu.upload(new Float32Array(4096).fill(123), "f32");
    const n = gpu.engine.counters.dispatches - before;
    const want = Math.ceil(sizes.length / slots);
    if (n !== want) throw new Error(`adamw over ${sizes.length} tensors: ${n} dispatches, expected ${want} (${slots} slots)`);
    gpu.free(later);
  }
  for (let i = 0; i < sizes.length; i++) {
    const tol = dts[i] === "f16" ? 1e-5 : 1e-6;
    close(`adamw[${i}] m`, await down(gpu, hs[i][1], "f32", sizes[i]), st[i].m, 1e-7, 1e-5);
    close(`adamw[${i}] v`, await down(gpu, hs[i][2], "f32", sizes[i]), st[i].v, 1e-9, 1e-5);
    close(`adamw[${i}] p`, await down(gpu, hs[i][0], "f32", sizes[i]), st[i].p, tol, 1e-5);
  }
  for (const x of hs.flat()) gpu.free(x);
});

t("operands wider than one storage binding: rope, adamw and attention split into runs", async () => {
  // A second backend on the same device rather than a second device: one Deno run that made its own
  // device here crashed at exit (heap corruption in teardown), after every test had passed.
  const small = createWebGpuBackend(gpu.gpuDevice, { maxBindingBytes: 4096, ownsDevice: false });
  try {
    const before = small.engine.counters.dispatches;
    await checkAttention(small, { B: 2, Hq: 4, Hkv: 2, T: 20, S: 24, D: 16, causal: true, dtype: "f32" }, null, 100);
    if (small.engine.counters.dispatches - before < 6) throw new Error("attention was not split into runs");
    const [B, H, T, D] = [2, 3, 40, 16];
    const n = B * H * T * D;
    const x = up(small, vals(n, 110), [B, H, T, D]);
    const tab = vals((T * D) / 2, 111, -3, 3);
    const [c, s] = [up(small, tab.map(Math.cos), [T, D / 2]), up(small, tab.map(Math.sin), [T, D / 2])];
    let y!: GpuStorage;
    const b0 = small.engine.counters.dispatches;
    y = (small.fused as FusedKernels<GpuStorage>).rope(x.input, c.input, s.input, false);
    if (small.engine.counters.dispatches - b0 < 2) throw new Error("rope was not split into runs");
    const xAt = (b: number, h: number, t: number, j: number) => x.values[((b * H + h) * T + t) * D + j];
    close("rope in runs", await down(small, y, "f32", n), ropeRef(xAt, B, H, T, D, c.values, s.values, false, 1), 1e-5, 1e-4);
    const p = vals(3000, 112).map(Math.fround);
    const g = vals(3000, 113);
    const [ph, mh, vh] = [p.map(Math.fround), new Array<number>(3000).fill(0), new Array<number>(3000).fill(0)].map((d) =>
      small.upload(Float32Array.from(d), "f32"),
    );
    const h: AdamWHyper = { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.01, bc1: 0.1, sqrtBc2: Math.sqrt(0.01) };
    (small.fused as FusedKernels<GpuStorage>).adamw(ph, up(small, g, [3000]).input, mh, vh, 3000, h);
    const [m, v] = [new Array<number>(3000).fill(0), new Array<number>(3000).fill(0)];
    adamwRef(p, g.map(Math.fround), m, v, h);
    close("adamw in runs", await down(small, ph, "f32", 3000), p, 1e-6, 1e-5);
  } finally {
    await small.sync();
    small.dispose();
  }
});

t("loraLinear: two dispatches forward and two backward; operands wider than one binding take separate kernels, same numbers", async () => {
  const small = createWebGpuBackend(gpu.gpuDevice, { maxBindingBytes: 4096, ownsDevice: false });
  try {
    const [N, inF, outF, r] = [24, 32, 40, 4]; // W [40, 32]: 1280 words, past small's 1024
    const drop = { p: 0.3, seed: 5, offset: 17 };
    const run = async (be: WebGpuBackend) => {
      const f = be.fused as FusedKernels<GpuStorage>;
      const [x, w, b, a, bb, gy] = [[N, inF], [outF, inF], [outF], [r, inF], [outF, r], [N, outF]].map((shape, i) =>
        up(
          be,
          vals(
            shape.reduce((m, k) => m * k),
            120 + i,
          ),
          shape,
        ),
      );
      const d0 = be.engine.counters.dispatches;
      const fw = f.loraLinear(x.input, w.input, b.input, a.input, bb.input, 1.5, drop);
      const d1 = be.engine.counters.dispatches;
      const h = { handle: fw.h, dtype: "f32" as const, view: { shape: [N, r], strides: [r, 1], offset: 0 } };
      const bw = f.loraLinearBackward(x.input, w.input, a.input, bb.input, h, gy.input, 1.5, drop);
      const d2 = be.engine.counters.dispatches;
      const out = [
        [fw.y, N * outF],
        [fw.h, N * r],
        [bw.gx, N * inF],
        [bw.gA, r * inF],
        [bw.gB, outF * r],
      ] as const;
      return { vals: await Promise.all(out.map(([hd, n]) => down(be, hd, "f32", n))), fwd: d1 - d0, bwd: d2 - d1 };
    };
    const [fusedRun, split] = [await run(gpu), await run(small)];
    if (fusedRun.fwd !== 2 || fusedRun.bwd !== 2) throw new Error(`fused loraLinear took ${fusedRun.fwd} + ${fusedRun.bwd} dispatches, expected 2 + 2`);
    if (split.fwd <= 2) throw new Error("an operand past the binding limit did not take the separate kernels");
    ["y", "h", "gx", "gA", "gB"].forEach((name, i) => close(`loraLinear ${name}: fused vs separate kernels`, split.vals[i], fusedRun.vals[i], 1e-5, 1e-4));
  } finally {
    await small.sync();
    small.dispose();
  }
});

t("dispose", async () => {
  await gpu.sync();
  gpu.dispose();
});
