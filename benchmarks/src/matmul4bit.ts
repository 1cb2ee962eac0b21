/**
 * The fused 4-bit matmul (NF4 + double quant, blocksize 64) against the dense f32 matmul on the
 * CPU backend, measured in the same run on the same weight, samples alternating between the two (the dense one is the 4-bit weight
 * dequantized, so both compute the same product and the results are compared):
 * prefill x [512, 4096] · Wᵀ, its input gradient g · W, and decode x [1, 4096] · Wᵀ, W [4096, 4096].
 *
 *   node --import tsx benchmarks/src/matmul4bit.ts [--quick] [--out <file.json>]
 *
 * "bytes moved" counts each operand once: the weight as stored (4-bit: packed codes + absmax
 * codes + nested absmax; dense: 4 bytes per element), x read and y written in f32.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { availableParallelism, cpus, loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { quantize4bit, quantizedBytes } from "@lowrank/nf4";
import { type Backend, type Quant4bitWeight, type Tensor, dequantize4bitWeight, matmul4bit, noGrad, tensor } from "@lowrank/tensor";
import { withoutFused } from "@lowrank/tensor/testing";
import { fmt, median, randomF32, table, time } from "./timing.ts";

/**
 * Median ms per call of `a` and `b`, sampled alternately (a, b, a, b, ...) so both see the same
 * machine load; each sample repeats the call to last about `sampleMs`.
 */
function timePair(a: () => void, b: () => void, samples = 7, sampleMs = 300): [number, number] {
  const reps = [a, b].map((fn) => {
    fn();
    const t0 = performance.now();
    fn();
    return Math.max(1, Math.ceil(sampleMs / Math.max(performance.now() - t0, 1e-3)));
  });
  const ms: [number[], number[]] = [[], []];
  for (let s = 0; s < samples; s++) {
    [a, b].forEach((fn, i) => {
      const t0 = performance.now();
      for (let r = 0; r < reps[i]; r++) fn();
      ms[i].push((performance.now() - t0) / reps[i]);
    });
  }
  return [median(ms[0]), median(ms[1])];
}

export interface Matmul4bitResult {
  name: string;
  M: number;
  K: number;
  N: number;
  transpose: boolean;
  /** Median ms per call. */
  ms: { fused4bit: number; denseF32: number; primitive4bit?: number };
  gflops: { fused4bit: number; denseF32: number };
  /** Bytes each call reads and writes (weight as stored + x + y). */
  bytes: { fused4bit: number; denseF32: number };
  /** Bytes of the weight alone: what stays resident per layer. */
  weightBytes: { fused4bit: number; denseF32: number };
  /** bytes / time in GB/s. */
  gbps: { fused4bit: number; denseF32: number };
  /** denseF32 ms / fused4bit ms (> 1: the 4-bit kernel is faster). */
  speedup: number;
  /** max |fused - dense| / max |dense|. */
  relErr: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: "boolean" }, out: { type: "string" } } });
  const quick = values.quick ?? false;
  const O = quick ? 1024 : 4096,
    I = quick ? 1024 : 4096;
  const backend = createCpuBackend();
  const log = (s: string) => console.log(s);
  const wHost = randomF32(O * I, 3).map((v) => v * 0.02);
  const t0 = performance.now();
  const state = quantize4bit(wHost, { shape: [O, I] }); // NF4 + DQ, 64
  log(`quantize4bit [${O}, ${I}]: ${(performance.now() - t0).toFixed(0)} ms`);
  const a = state.absmax as Exclude<typeof state.absmax, Float32Array>;
  const weightOn = (be: Backend): Quant4bitWeight => {
    const u8 = (d: Uint8Array) => tensor(d, { dtype: "u8", backend: be });
    const f32 = (d: Float32Array) => tensor(d, { backend: be });
    return {
      packed: u8(state.packed),
      absmax: u8(a.qabsmax),
      code: f32(state.quantMap),
      nested: { absmax: f32(a.nestedAbsmax), code: f32(a.nestedCode), offset: a.nestedOffset, blocksize: 256 },
      blocksize: 64,
      outFeatures: O,
      inFeatures: I,
    };
  };
  const w = weightOn(backend);
  const W = dequantize4bitWeight(w); // dense f32 [O, I]: the same values the kernel uses
  const WT = W.T.contiguous(); // x · Wᵀ with a packed right operand, so the dense path does no transposing copy per call
  const weight4 = quantizedBytes(state);
  const weight32 = 4 * O * I;

  const cases: [string, number, boolean][] = [
    [`prefill x [512, ${I}] · Wᵀ`, quick ? 128 : 512, false],
    [`input gradient g [512, ${O}] · W`, quick ? 128 : 512, true],
    [`decode x [1, ${I}] · Wᵀ`, 1, false],
    [`decode input gradient g [1, ${O}] · W`, 1, true],
  ];
  const results: Matmul4bitResult[] = [];
  const plain = withoutFused(backend);
  for (const [name, M, transpose] of cases) {
    const [K, N] = transpose ? [O, I] : [I, O];
    const x = tensor(randomF32(M * K, 7), { shape: [M, K], backend });
    const run = (fn: () => Tensor) => () => noGrad(() => fn().dispose());
    const fused = () => matmul4bit(x, w, transpose);
    const dense = () => x.matmul(transpose ? W : WT);
    const [tfMs, tdMs] = timePair(run(fused), run(dense));
    const tf = { ms: tfMs },
      td = { ms: tdMs };
    let tp: number | undefined;
    if (!quick && M === 1 && !transpose) {
      // The primitive path a backend without the kernel takes (dequantize everything, then matmul).
      const xp = tensor(randomF32(M * K, 7), { shape: [M, K], backend: plain });
      const wp = weightOn(plain);
      tp = time(
        run(() => matmul4bit(xp, wp, transpose)),
        { samples: 3, maxReps: 1, sampleMs: 1 },
      ).ms;
      for (const t of [xp, wp.packed, wp.absmax, wp.code, wp.nested!.absmax, wp.nested!.code]) t.dispose();
    }
    const yf = noGrad(fused),
      yd = noGrad(dense);
    const [vf, vd] = [yf.readSync(), yd.readSync()];
    let maxd = 0,
      err = 0;
    for (let i = 0; i < vd.length; i++) {
      maxd = Math.max(maxd, Math.abs(vd[i]));
      err = Math.max(err, Math.abs(vf[i] - vd[i]));
    }
    yf.dispose();
    yd.dispose();
    x.dispose();
    const io = 4 * (M * K + M * N);
    const flops = 2 * M * N * K;
    const r: Matmul4bitResult = {
      name,
      M,
      K,
      N,
      transpose,
      ms: { fused4bit: tf.ms, denseF32: td.ms, ...(tp !== undefined ? { primitive4bit: tp } : {}) },
      gflops: { fused4bit: flops / tf.ms / 1e6, denseF32: flops / td.ms / 1e6 },
      bytes: { fused4bit: weight4 + io, denseF32: weight32 + io },
      weightBytes: { fused4bit: weight4, denseF32: weight32 },
      gbps: { fused4bit: (weight4 + io) / tf.ms / 1e6, denseF32: (weight32 + io) / td.ms / 1e6 },
      speedup: td.ms / tf.ms,
      relErr: err / maxd,
    };
    results.push(r);
  }
  log(
    table(
      ["case", "4-bit ms", "f32 ms", "f32/4-bit", "4-bit GFLOP/s", "f32 GFLOP/s", "4-bit MB", "f32 MB", "4-bit GB/s", "f32 GB/s", "rel err"],
      results.map((r) => [
        r.name,
        r.ms.fused4bit,
        r.ms.denseF32,
        r.speedup,
        r.gflops.fused4bit,
        r.gflops.denseF32,
        r.bytes.fused4bit / 1e6,
        r.bytes.denseF32 / 1e6,
        r.gbps.fused4bit,
        r.gbps.denseF32,
        r.relErr.toExponential(1),
      ]),
    ),
  );
  for (const r of results)
    if (r.ms.primitive4bit !== undefined) log(`${r.name}: without the fused kernel (primitive dequantize + matmul) ${fmt(r.ms.primitive4bit)} ms`);
  log(`weight: 4-bit ${weight4} B (${((weight4 * 8) / (O * I)).toFixed(3)} bits/param) vs f32 ${weight32} B`);
  const engine = backend.engine.describe();
  backend.dispose();

  const date = new Date().toISOString().slice(0, 10);
  const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
  const out = values.out ?? join(root, "results", `matmul4bit-${date}.json`);
  await mkdir(dirname(out), { recursive: true });
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  await writeFile(
    out,
    JSON.stringify(
      {
        date,
        command: `node --import tsx benchmarks/src/matmul4bit.ts${quick ? " --quick" : ""}`,
        runtime: `node ${process.versions.node}`,
        machine: `${cpu}, ${availableParallelism()} logical cores`,
        loadAverage: loadavg().map((v) => Number(v.toFixed(2))),
        engine,
        quick,
        weight: { shape: [O, I], quantType: "nf4", doubleQuant: true, blocksize: 64 },
        results,
      },
      null,
      2,
    ) + "\n",
  );
  log(`wrote ${out}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
