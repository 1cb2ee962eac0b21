/**
 * WebGPU matmul throughput: the register-tiled kernel vs the naive WGSL kernel (one output per
 * invocation), f16 inputs when the adapter has shader-f16, and the CPU backend on the same
 * shapes, all in one run so the ratios are measurements. Every call goes through the Backend
 * interface (matmul of device-resident operands; output allocation included), timed as a batch
 * of calls followed by one sync.
 *
 *   node --import tsx src/webgpu.ts [--quick] [--out <file>]      (Dawn; also `npx bun src/webgpu.ts`)
 *   deno run -A --unstable-webgpu src/webgpu.ts [--quick]          (Deno's navigator.gpu)
 *
 * Writes JSON to results/webgpu-<YYYY-MM-DD>.json (or --out). Exits with a SKIP line when there is
 * no adapter. `benchWebGpu()` / `webgpuTable()` are exported for run.ts.
 *
 * Also: dispatches, submits and host reads per LoRA training step on stories260K (webgpu-steps.ts),
 * against the count before issue 14's dispatch work.
 */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Backend, DType } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { describeAdapter, type WebGpuContext, WebGpuUnavailableError } from "@lowrank/backend-webgpu";
import { type WebGpuBackend, createWebGpuBackend } from "@lowrank/backend-webgpu";
import { fmt, median, randomF32, table } from "./timing.ts";
import { BEFORE, type StepCounts, stepCounts, stepCountsLine } from "./webgpu-steps.ts";

export interface WebGpuMatmulResult {
  name: string;
  M: number;
  K: number;
  N: number;
  /** GFLOP/s: tiled, naive (WGSL), tiledF16 (when shader-f16), cpu (CPU backend, default threads). */
  gflops: Record<string, number>;
  ms: Record<string, number>;
  samples: Record<string, string>;
  tiledOverNaive: number;
  webgpuOverCpu: number;
  /** max |tiled - cpu| / max |cpu|: guards against timing a wrong kernel. */
  relErr: number;
}

export interface WebGpuReport {
  adapter: string;
  features: string[];
  results: WebGpuMatmulResult[];
  /** Per LoRA training step on stories260K: now (`step`) and at BEFORE.commit (`stepBefore`). */
  step: StepCounts;
  stepBefore: typeof BEFORE;
}

const SHAPES: [string, number, number, number][] = [
  ["256³", 256, 256, 256],
  ["512³", 512, 512, 512],
  ["1024³", 1024, 1024, 1024],
  ["2048³", 2048, 2048, 2048],
  ["LoRA down x·A (M=512, K=4096, N=16)", 512, 4096, 16],
  ["LoRA up h·B (M=512, K=16, N=4096)", 512, 16, 4096],
];

type Handle = unknown;
const input = (handle: Handle, dtype: DType, r: number, c: number) => ({ handle, dtype, view: { shape: [r, c], strides: [c, 1], offset: 0 } });

interface Prepared {
  impl: string;
  be: Backend;
  run: () => Promise<void>;
  reps: number;
  per: number[];
  release: () => void;
}

/**
 * Upload operands, warm up (pipeline compile, pool) and size a batch of calls to ~targetMs.
 * A sample is one batch of `reps` matmuls followed by one sync().
 */
async function prepare(
  impl: string,
  be: Backend,
  dtype: DType,
  Ah: Float32Array,
  Bh: Float32Array,
  M: number,
  K: number,
  N: number,
  targetMs: number,
  maxReps: number,
): Promise<Prepared> {
  const conv = (x: Float32Array) => (dtype === "f32" ? x : Uint16Array.from(x, (v) => f16Bits(v)));
  const a = be.upload(conv(Ah), dtype);
  const b = be.upload(conv(Bh), dtype);
  const A = input(a, dtype, M, K);
  const B = input(b, dtype, K, N);
  const batch = async (reps: number) => {
    for (let r = 0; r < reps; r++) be.free(be.matmul(A, B));
    await be.sync();
  };
  const t0 = performance.now();
  await batch(1);
  const first = performance.now() - t0;
  const reps = Math.max(1, Math.min(maxReps, Math.round(targetMs / Math.max(first, 0.05))));
  return { impl, be, run: () => batch(reps), reps, per: [], release: () => [a, b].forEach((h) => be.free(h)) };
}

async function acquire(): Promise<WebGpuContext | string> {
  try {
    const edge = "Deno" in globalThis ? await import("@lowrank/backend-webgpu/deno") : await import("@lowrank/backend-webgpu/node");
    return await edge.requestWebGpu();
  } catch (err) {
    if (err instanceof WebGpuUnavailableError) return err.message;
    throw err;
  }
}

export async function benchWebGpu(quick: boolean, log: (s: string) => void = console.log): Promise<WebGpuReport | string> {
  const ctx = await acquire();
  if (typeof ctx === "string") return ctx;
  const tiled = createWebGpuBackend(ctx);
  // A second backend on the same device for the naive kernel; only the first owns the device.
  const naive = createWebGpuBackend(ctx.device, { matmul: "naive", ownsDevice: false });
  const cpu = createCpuBackend();
  const f16 = tiled.hasF16;
  const results: WebGpuMatmulResult[] = [];
  try {
    for (const [name, M, K, N] of SHAPES) {
      const flops = 2 * M * N * K;
      const big = flops > 4e9;
      if (quick && big) continue;
      const Ah = randomF32(M * K, 1);
      const Bh = randomF32(K * N, 2);
      const r: WebGpuMatmulResult = { name, M, K, N, gflops: {}, ms: {}, samples: {}, tiledOverNaive: NaN, webgpuOverCpu: NaN, relErr: NaN };
      const impls: [string, Backend, DType][] = [
        ["tiled", tiled, "f32"],
        ["naive", naive, "f32"],
        ["cpu", cpu, "f32"],
      ];
      if (f16) impls.splice(1, 0, ["tiledF16", tiled, "f16"]);
      // The naive kernel is slow at 2048³: one call per sample, three samples.
      const prepared: Prepared[] = [];
      for (const [impl, be, dtype] of impls) {
        const slow = impl === "naive" && big;
        prepared.push(await prepare(impl, be, dtype, Ah, Bh, M, K, N, quick ? 60 : 200, slow ? 1 : 64));
      }
      // Samples are interleaved across implementations so a noisy neighbour hits them alike.
      const samples = quick ? 3 : 5;
      for (let s = 0; s < samples; s++) {
        for (const p of prepared) {
          if (p.impl === "naive" && big && s >= 3) continue;
          const t = performance.now();
          await p.run();
          p.per.push((performance.now() - t) / p.reps);
        }
      }
      for (const p of prepared) {
        const ms = median(p.per);
        r.ms[p.impl] = ms;
        r.gflops[p.impl] = flops / ms / 1e6;
        r.samples[p.impl] = `${p.per.length}x${p.reps}`;
        p.release();
      }
      r.relErr = await check(tiled, cpu, Ah, Bh, M, K, N);
      r.tiledOverNaive = r.gflops.tiled / r.gflops.naive;
      r.webgpuOverCpu = r.gflops.tiled / r.gflops.cpu;
      results.push(r);
      log(
        `  ${name}: ${impls.map(([i]) => `${i} ${fmt(r.gflops[i])}`).join(", ")} GFLOP/s; tiled/naive ${fmt(r.tiledOverNaive)}x, webgpu/cpu ${fmt(
          r.webgpuOverCpu,
        )}x`,
      );
    }
    const step = await stepCounts(tiled, { batch: 2, seq: 32, steps: quick ? 3 : 5 });
    log(`  ${stepCountsLine(step)}`);
    return { adapter: describeAdapter(ctx.adapterInfo), features: [...ctx.features], results, step, stepBefore: BEFORE };
  } finally {
    naive.dispose();
    tiled.dispose();
    cpu.dispose();
  }
}

async function check(gpu: WebGpuBackend, cpu: Backend, Ah: Float32Array, Bh: Float32Array, M: number, K: number, N: number): Promise<number> {
  const run = async (be: Backend) => {
    const a = be.upload(Ah, "f32");
    const b = be.upload(Bh, "f32");
    const c = be.matmul(input(a, "f32", M, K), input(b, "f32", K, N));
    const v = (await be.read(c, "f32", M * N)) as Float32Array;
    for (const h of [a, b, c]) be.free(h);
    return v;
  };
  const [g, c] = [await run(gpu), await run(cpu)];
  let d = 0;
  let m = 0;
  for (let i = 0; i < c.length; i++) {
    d = Math.max(d, Math.abs(g[i] - c[i]));
    m = Math.max(m, Math.abs(c[i]));
  }
  return d / (m || 1);
}

/** f32 -> f16 bits (round to nearest even is not needed for random benchmark data). */
function f16Bits(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const e = ((x >>> 23) & 0xff) - 112;
  if (e <= 0) return sign;
  return sign | (e << 10) | ((x >>> 13) & 0x3ff);
}

export function webgpuTable(results: WebGpuMatmulResult[]): string {
  const impls = ["tiled", "tiledF16", "naive", "cpu"].filter((i) => results.some((r) => i in r.gflops));
  return table(
    ["shape", ...impls.map((i) => `${i} GFLOP/s`), "tiled/naive", "webgpu/cpu", "rel err"],
    results.map((r) => [r.name, ...impls.map((i) => r.gflops[i] ?? NaN), r.tiledOverNaive, r.webgpuOverCpu, r.relErr.toExponential(1)]),
  );
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes("--quick");
  const outIdx = args.indexOf("--out");
  const date = new Date().toISOString().slice(0, 10);
  const here = dirname(fileURLToPath(import.meta.url));
  const out = outIdx >= 0 && args[outIdx + 1] ? resolve(args[outIdx + 1]) : resolve(here, "..", "results", `webgpu-${date}.json`);
  const g = globalThis as { Bun?: { version: string }; Deno?: { version: { deno: string } } };
  const runtime = g.Bun ? `bun ${g.Bun.version}` : g.Deno ? `deno ${g.Deno.version.deno}` : `node ${process.versions.node}`;
  const cpu = cpus();
  const machine = `${cpu[0]?.model ?? "unknown cpu"}, ${cpu.length} logical cores`;
  const command = `${g.Bun ? "bun" : g.Deno ? "deno run -A --unstable-webgpu" : "node --import tsx"} src/webgpu.ts ${args.join(" ")}`.trim();
  console.log(`WebGPU benchmarks${quick ? " (quick)" : ""}: ${runtime}, ${machine}`);
  const report = await benchWebGpu(quick);
  if (typeof report === "string") {
    console.log(`SKIP no WebGPU adapter: ${report}`);
    return;
  }
  console.log(`adapter: ${report.adapter}\n\n${webgpuTable(report.results)}\n\n${stepCountsLine(report.step)}\n`);
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ date, command, runtime, machine, quick, ...report }, null, 2) + "\n");
  renameSync(tmp, out);
  console.log(`wrote ${out}`);
}

if (/webgpu\.ts$/.test(process.argv[1] ?? "")) await main();
