// The WASM SIMD fused kernels (dropout, SwiGLU, decode attention) against their TypeScript references,
// sizes and counter offsets chosen to hit the 4-lane tails, the chunk edges and a 2^32 counter boundary.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { uniformAt } from "@lowrank/tensor";
import { ElementwiseWasm } from "../src/wasm/elementwise.ts";
import { dropoutKernel, ropeKernel, swigluBackwardKernel, swigluKernel } from "../src/kernels/fused-nn.ts";
import { attentionDecodeKernel } from "../src/kernels/attention-decode.ts";
import { DecodeWasm } from "../src/wasm/attention-decode.ts";
import { copyView } from "../src/kernels/strided.ts";
import { crossEntropyBackwardRows, crossEntropyRowsKernel } from "../src/kernels/fused.ts";

const ew = ElementwiseWasm.create();
const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => 8 * uniformAt(s, i) - 4);

test("WASM dropout equals the TypeScript kernel bit for bit", { skip: ew ? false : "no WASM SIMD here" }, () => {
  for (const [n, p, seed, offset] of [
    [1027, 0.1, 3, 0],
    [9001, 0.5, 0xdeadbeef, 4294967296 - 4097],
    [4096 * 3 + 5, 0.9, 1, 2 ** 40 + 7],
  ]) {
    const x = rnd(n, 1);
    const [a, b] = [new Float32Array(n), new Float32Array(n)];
    assert.ok(ew!.dropout(x, a, p, seed, offset));
    dropoutKernel(x, p, seed, offset, b);
    assert.deepEqual(a, b, `n ${n} p ${p} offset ${offset}`);
    for (let i = 0; i < n; i += 97) assert.equal(a[i] !== 0, uniformAt(seed, offset + i) >= p, `element ${i}`);
  }
});

test("WASM dropout's keep mask, applied to another tensor, gives what dropout gives it, bit for bit", { skip: ew ? false : "no WASM SIMD here" }, () => {
  for (const [n, p, seed, offset] of [
    [1027, 0.1, 3, 0],
    [9001, 0.5, 0xdeadbeef, 4294967296 - 4097],
  ]) {
    const [x, x2] = [rnd(n, 1), rnd(n, 2)];
    const mask = new Uint8Array(n);
    assert.ok(ew!.dropout(x, new Float32Array(n), p, seed, offset, mask));
    const [a, b] = [new Float32Array(n).fill(NaN), new Float32Array(n)];
    assert.ok(ew!.maskApply(x2, mask, p, a));
    dropoutKernel(x2, p, seed, offset, b);
    assert.deepEqual(a, b, `n ${n} p ${p}`);
    assert.ok(
      mask.every((m, i) => m === (uniformAt(seed, offset + i) >= p ? 0xff : 0)),
      "mask bytes",
    );
  }
});

test(
  "WASM RoPE (rotate-half) equals the TypeScript kernel bit for bit, through strided head views and block splits",
  { skip: ew ? false : "no WASM SIMD here" },
  () => {
    // [lead, H, T, D] views: q as a head view of [B, T, H, D] (T split in blocks), contiguous heads
    // (heads split in groups), rank 3, an offset view, and a head size of 12 (declined: not 8k).
    const cases: { shape: number[]; strides: number[]; offset: number; length: number; declined?: boolean }[] = [
      { shape: [2, 8, 300, 64], strides: [300 * 8 * 64, 64, 8 * 64, 1], offset: 0, length: 2 * 300 * 8 * 64 },
      { shape: [1, 4, 512, 64], strides: [4 * 512 * 64, 512 * 64, 64, 1], offset: 0, length: 4 * 512 * 64 },
      { shape: [3, 40, 16], strides: [40 * 16, 16, 1], offset: 0, length: 3 * 40 * 16 },
      { shape: [2, 3, 33, 32], strides: [2 * 3 * 33 * 32, 32, 3 * 32, 1], offset: 3 * 33 * 32, length: 4 * 3 * 33 * 32 },
      { shape: [2, 4, 64, 12], strides: [4 * 64 * 12, 64 * 12, 12, 1], offset: 0, length: 2 * 4 * 64 * 12, declined: true },
    ];
    for (const c of cases) {
      const [T, D] = c.shape.slice(-2);
      const x = rnd(c.length, 31),
        cos = rnd((T * D) / 2, 32),
        sin = rnd((T * D) / 2, 33);
      const n = c.shape.reduce((a, b) => a * b, 1);
      for (const sign of [1, -1] as const) {
        const [a, b] = [new Float32Array(n).fill(NaN), new Float32Array(n)];
        const view = { shape: c.shape, strides: c.strides, offset: c.offset };
        assert.equal(ew!.rope(x, view, cos, sin, sign, a), !c.declined, `${c.shape}: taken`);
        if (c.declined) continue;
        ropeKernel(x, view, cos, sin, false, sign, b);
        assert.deepEqual(a, b, `${c.shape} sign ${sign}`);
      }
    }
  },
);

test(
  "WASM row copies equal copyView's own loop and keep NaN payloads: head permutes, far-apart rows, i32; short, long and mixed-type rows declined",
  { skip: ew ? false : "no WASM SIMD here" },
  () => {
    // Quiet NaNs with payloads (a JS loop quiets a signaling one; WASM and set() copy bits).
    const nan = new Float32Array(new Int32Array([0x7fc01234, 0xffc00001]).buffer);
    const cases: { shape: number[]; strides: number[]; offset: number; length: number; i32?: boolean; taken: boolean }[] = [
      { shape: [8, 128, 4, 64], strides: [32768, 64, 8192, 1], offset: 0, length: 8 * 4 * 128 * 64, taken: true }, // [B, H, T, D] -> [B, T, H, D]
      { shape: [3, 40, 5, 16], strides: [3200, 16, 640, 1], offset: 0, length: 3 * 5 * 40 * 16, i32: true, taken: true },
      { shape: [300, 8], strides: [70001, 1], offset: 5, length: 300 * 70001, taken: true }, // rows far apart: copied one by one
      { shape: [1, 256, 9, 64], strides: [147456, 64, 16384, 1], offset: 0, length: 147456, taken: true }, // SmolLM2's heads: one span past 64k floats
      { shape: [2, 700, 3, 2], strides: [4200, 2, 1400, 1], offset: 0, length: 8400, taken: false }, // rows of 2
      { shape: [4, 2, 1100], strides: [1100, 4400, 1], offset: 0, length: 8800, taken: false }, // rows of 1,100: set() is fast there
    ];
    for (const c of cases) {
      const n = c.shape.reduce((a, b) => a * b, 1);
      const src = c.i32 ? Int32Array.from(rnd(c.length, 41), (v) => Math.round(v * 1e6)) : rnd(c.length, 41);
      if (!c.i32) src.set(nan, 7);
      const make = () => (c.i32 ? new Int32Array(n) : new Float32Array(n));
      const [a, b] = [make(), make()];
      let called = 0;
      const copier = { copyRows: (...args: Parameters<ElementwiseWasm["copyRows"]>) => (called++, ew!.copyRows(...args)) };
      const dv = { shape: c.shape, strides: c.shape.map((_, d) => c.shape.slice(d + 1).reduce((x, y) => x * y, 1)), offset: 0 };
      copyView(src, { shape: c.shape, strides: c.strides, offset: c.offset }, a, dv, copier);
      copyView(src, { shape: c.shape, strides: c.strides, offset: c.offset }, b, dv);
      // Values equal (a JS loop may canonicalize a NaN's payload: Bun's does), and the WASM copy keeps bits.
      for (let i = 0; i < n; i++) assert.ok(Object.is(a[i], b[i]) || (Number.isNaN(a[i]) && Number.isNaN(b[i])), `${c.shape} [${i}]: ${a[i]} vs ${b[i]}`);
      if (!c.i32 && c.taken) {
        const bits = new Int32Array(src.buffer);
        const at = (i: number) => new Int32Array(a.buffer)[i];
        for (let i = 0; i < n; i++) if (Number.isNaN(a[i])) assert.ok(bits.includes(at(i)), `${c.shape} [${i}]: NaN payload kept`);
      }
      if (c.taken) assert.equal(called, 1, `${c.shape}: staged through WASM`);
    }
    assert.equal(ew!.copyRows(new Float32Array(4096), new Int32Array(64), 64, new Int32Array(4096), 0), false, "mixed types");
  },
);

test(
  "WASM cross-entropy rows (lse, gradient) agree with the f64 TypeScript kernel: vocabularies off the vector width and past one staged block, -inf logits, ignored rows",
  { skip: ew ? false : "no WASM SIMD here" },
  () => {
    for (const [rows, V] of [
      [37, 515],
      [3, 70001],
    ]) {
      const x = rnd(rows * V, 51);
      x.fill(-Infinity, 5, 9); // masked logits in row 0
      const targets = Int32Array.from({ length: rows }, (_, r) => (r === 1 ? -100 : (r * 7919) % V));
      const g = rnd(rows, 52);
      const [lossT, lseT, lossW, lseW] = [0, 0, 0, 0].map(() => new Float32Array(rows));
      crossEntropyRowsKernel(x, targets, rows, V, -100, lossT, lseT);
      assert.equal(ew!.crossEntropyRows(x, rows, V, lseW), true);
      crossEntropyRowsKernel(x, targets, rows, V, -100, lossW, lseW, true);
      for (let r = 0; r < rows; r++) {
        assert.ok(Math.abs(lseW[r] - lseT[r]) <= 2e-6 * (1 + Math.abs(lseT[r])), `V ${V} lse[${r}] ${lseW[r]} vs ${lseT[r]}`);
        assert.ok(Math.abs(lossW[r] - lossT[r]) <= 2e-6 * (1 + Math.abs(lseT[r])), `V ${V} loss[${r}] ${lossW[r]} vs ${lossT[r]}`);
      }
      const [gT, gW] = [new Float32Array(rows * V), new Float32Array(rows * V).fill(NaN)];
      crossEntropyBackwardRows(x, targets, lseT, g, rows, V, -100, gT);
      assert.equal(ew!.crossEntropyRows(x, rows, V, lseT, { g, out: gW }), true);
      crossEntropyBackwardRows(x, targets, lseT, g, rows, V, -100, gW, true);
      for (let i = 0; i < gT.length; i++)
        assert.ok(Math.abs(gW[i] - gT[i]) <= 2e-6 * Math.abs(g[Math.floor(i / V)]) + 1e-7 * Math.abs(gT[i]), `V ${V} grad[${i}] ${gW[i]} vs ${gT[i]}`);
      assert.ok(
        gW.subarray(V, 2 * V).every((v) => v === 0),
        "an ignored row has a zero gradient",
      );
    }
  },
);

test("WASM SwiGLU forward and backward within 4 ulp of the TypeScript kernels", { skip: ew ? false : "no WASM SIMD here" }, () => {
  for (const n of [1024, 4099, 4096 * 2 + 3]) {
    const [g, u, gy] = [rnd(n, 2), rnd(n, 3), rnd(n, 4)];
    const close = (a: Float32Array, b: Float32Array, what: string) => {
      for (let i = 0; i < n; i++) assert.ok(Math.abs(a[i] - b[i]) <= 4e-7 * Math.max(1, Math.abs(b[i])) * 4, `${what}[${i}] ${a[i]} vs ${b[i]}`);
    };
    const [y1, y2] = [new Float32Array(n), new Float32Array(n)];
    assert.ok(ew!.swiglu(g, u, y1));
    swigluKernel(g, u, y2);
    close(y1, y2, `swiglu n ${n}`);
    const [ga, ua, gb, ub] = [new Float32Array(n), new Float32Array(n), new Float32Array(n), new Float32Array(n)];
    assert.ok(ew!.swigluBackward(g, u, gy, ga, ua));
    swigluBackwardKernel(g, u, gy, gb, ub);
    close(ga, gb, `dgate n ${n}`);
    close(ua, ub, `dup n ${n}`);
  }
});

test("WASM RMSNorm forward and backward agree with the TypeScript kernels", { skip: ew ? false : "no WASM SIMD here" }, async () => {
  const { rmsNormRows, rmsNormBackwardRows } = await import("../src/kernels/fused.ts");
  for (const [rows, n] of [
    [64, 256],
    [33, 67],
    [5, 2048],
  ]) {
    const x = rnd(rows * n, 5),
      w = rnd(n, 6),
      gy = rnd(rows * n, 7);
    const [y1, y2, r1, r2] = [new Float32Array(rows * n), new Float32Array(rows * n), new Float32Array(rows), new Float32Array(rows)];
    assert.ok(ew!.rmsNorm(x, w, rows, n, 1e-5, y1, r1));
    rmsNormRows(x, w, rows, n, 1e-5, y2, r2);
    const [g1, g2, w1, w2] = [new Float32Array(rows * n), new Float32Array(rows * n), new Float64Array(n), new Float64Array(n)];
    assert.ok(ew!.rmsNormBackward(x, w, r2, gy, rows, n, g1, w1));
    rmsNormBackwardRows(x, w, r2, gy, rows, n, g2, w2);
    const close = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) => {
      for (let i = 0; i < b.length; i++)
        assert.ok(Math.abs(a[i] - b[i]) <= 1e-5 * (1 + Math.abs(b[i])), `${what}[${i}] ${a[i]} vs ${b[i]} (rows ${rows}, n ${n})`);
    };
    close(r1, r2, "rstd");
    close(y1, y2, "y");
    close(g1, g2, "gx");
    close(w1, w2, "gw");
  }
});

test("attention: the WASM row kernels and the TypeScript passes give the same values and gradients", async () => {
  const { createCpuBackend } = await import("../src/index.ts");
  const { attention, tensor } = await import("@lowrank/tensor");
  const run = async (opts: { wasm?: boolean; blas?: "off" | "auto" }) => {
    const backend = createCpuBackend({ threads: 0, ...opts });
    const [B, H, Hkv, T, S, D] = [2, 4, 2, 37, 45, 8];
    const mk = (n: number, seed: number, shape: number[]) => {
      const t = tensor(rnd(n, seed), { shape, backend });
      t.requiresGrad = true;
      return t;
    };
    const q = mk(B * H * T * D, 11, [B, H, T, D]),
      k = mk(B * Hkv * S * D, 12, [B, Hkv, S, D]),
      v = mk(B * Hkv * S * D, 13, [B, Hkv, S, D]);
    const y = attention(q, k, v);
    y.mul(y).sum().backward();
    const out = [await y.read(), await q.grad!.read(), await k.grad!.read(), await v.grad!.read()];
    backend.dispose();
    return out;
  };
  const ref = await run({ wasm: false, blas: "off" });
  // Where the runtime has relaxed SIMD (Deno, Bun), the WASM matmul fuses its multiply-adds: a
  // gradient summed over 37 queries then differs from the TypeScript one by up to about 2.5e-5.
  for (const opts of [{}, { blas: "off" as const }]) {
    const got = await run(opts);
    got.forEach((a, j) => {
      for (let i = 0; i < a.length; i++)
        assert.ok(Math.abs(a[i] - ref[j][i]) <= 5e-5 * (1 + Math.abs(ref[j][i])), `${JSON.stringify(opts)} output ${j}[${i}]: ${a[i]} vs ${ref[j][i]}`);
    });
  }
});

test("attention takes its outputs and scratch from the output pool and overwrites every stale value", async () => {
  const { createCpuBackend } = await import("../src/index.ts");
  const { attention, tensor } = await import("@lowrank/tensor");
  const [B, H, T, D] = [2, 2, 64, 32];
  const run = async (blas: "off" | "auto", poison: boolean) => {
    const backend = createCpuBackend({ threads: 0, blas });
    // Poisoned: every array handed out by the pool is NaN-filled, as a recycled one may hold anything.
    const take = backend.pool.take.bind(backend.pool);
    if (poison) backend.pool.take = (n: number) => take(n).fill(NaN);
    const mk = (seed: number) => tensor(rnd(B * H * T * D, seed), { shape: [B, H, T, D], backend, requiresGrad: true });
    const [q, k, v] = [mk(21), mk(22), mk(23)];
    const y = attention(q, k, v);
    y.mul(y).sum().backward();
    const out = [await y.read(), await q.grad!.read(), await k.grad!.read(), await v.grad!.read()];
    backend.dispose();
    return out;
  };
  for (const blas of ["auto", "off"] as const) {
    const [clean, stale] = [await run(blas, false), await run(blas, true)];
    stale.forEach((a, j) => assert.deepEqual(a, clean[j], `blas ${blas}: output ${j} depends on what the pool held`));
  }
});
test(
  "WASM decode attention equals the TypeScript kernel: GQA, head sizes of 1 to 4 vectors past the 4-vector blocks (one not of whole vectors: declined), caches laid out [Hkv, C, D] and [C, Hkv, D], new rows as a head permute",
  { skip: DecodeWasm.create() ? false : "no WASM SIMD here" },
  () => {
    const dw = DecodeWasm.create()!;
    for (const [Hq, Hkv, D, layout] of [
      [8, 4, 8, "head-major"],
      [4, 1, 64, "head-major"],
      [6, 2, 20, "position-major"],
      [2, 2, 12, "head-major"],
      [4, 2, 6, "head-major"],
    ] as const) {
      const lengths = [3, 0, 17, 9];
      const N = lengths.length,
        C = 20;
      // q, kNew, vNew: [H, N, D] views; q and kNew contiguous, vNew a permute of [N, H, D] (as a projection's heads).
      const dense = (H: number, seed: number) => ({ data: rnd(H * N * D, seed), offset: 0, s0: N * D, s1: D });
      const [q, kNew] = [dense(Hq, 5), dense(Hkv, 6)];
      const vNew = { data: rnd(N * Hkv * D, 7), offset: 0, s0: D, s1: Hkv * D };
      // Per sequence: a storage of C positions, strides by layout.
      const caches = () =>
        lengths.map((_, i) =>
          [rnd(Hkv * C * D, 10 + i), rnd(Hkv * C * D, 20 + i)].map((data) =>
            layout === "head-major" ? { data, offset: 0, s0: C * D, s1: D } : { data, offset: 0, s0: D, s1: Hkv * D },
          ),
        );
      const [a, b] = [caches(), caches()];
      const [ya, yb] = [new Float32Array(N * Hq * D), new Float32Array(N * Hq * D)];
      const shape = { N, Hq, Hkv, D, scale: 1 / Math.sqrt(D) };
      const ran = dw.run(
        shape,
        q,
        kNew,
        vNew,
        a.map((c) => c[0]),
        a.map((c) => c[1]),
        lengths,
        ya,
      );
      attentionDecodeKernel(
        shape,
        q,
        kNew,
        vNew,
        b.map((c) => c[0]),
        b.map((c) => c[1]),
        lengths,
        yb,
      );
      if (D % 4 !== 0) {
        assert.equal(ran, false, `D ${D}: the WASM kernel declines`);
        continue;
      }
      assert.ok(ran, `D ${D}`);
      for (let i = 0; i < ya.length; i++)
        assert.ok(Math.abs(ya[i] - yb[i]) <= 2e-6 * Math.max(1, Math.abs(yb[i])), `Hq ${Hq} Hkv ${Hkv} D ${D} ${layout}: out[${i}] ${ya[i]} vs ${yb[i]}`);
      a.forEach((c, i) =>
        c.forEach((x, j) => assert.deepEqual(x.data, b[i][j].data, `${layout} D ${D}: sequence ${i} ${j ? "values" : "keys"} appended alike`)),
      );
      // Sequence 2's new value sits at its row 17: element [h, 2, d] of the permuted vNew.
      const v2 = a[2][1];
      for (let h = 0; h < Hkv; h++) for (let d = 0; d < D; d++) assert.equal(v2.data[h * v2.s0 + 17 * v2.s1 + d], vNew.data[2 * vNew.s1 + h * D + d]);
    }
  },
);

const asc = await import("assemblyscript/asc").catch(() => null);
test(
  "rebuilding assembly/attention-decode.ts gives the committed bytes",
  { skip: asc ? false : "assemblyscript (asc) is not installed: cannot rebuild" },
  async () => {
    const { buildWasm, TARGETS } = await import("../scripts/build-wasm.mjs");
    const { text } = await buildWasm("attentionDecode");
    const committed = readFileSync(new URL(`../${TARGETS.attentionDecode.output}`, import.meta.url), "utf8");
    assert.equal(text, committed, `${TARGETS.attentionDecode.output} is stale: run npm run build:wasm -w @lowrank/backend-cpu`);
  },
);
