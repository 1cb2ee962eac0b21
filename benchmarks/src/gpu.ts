/**
 * `lowrank bench gpu` (benchmarks/gpu/run.sh runs it on a bare GPU machine): the WebGPU path
 * measured the first time real hardware is available. Cases, in order of value:
 *   backends      `lowrank backends --json` in a child process (what auto picks there)
 *   conformance   the backend conformance suite on a fresh device, in-process, within a budget
 *   kernels       matmul f32/f16 GFLOP/s and % of the device's published peak, fused NF4
 *                 matmul vs the dense one, attention fwd and fwd+bwd (kernels.ts cases)
 *   training      tokens/s, peak device bytes and dispatches/copies/submits/host reads per step
 *                 for stories260K LoRA, SmolLM2-135M and TinyLlama-1.1B QLoRA (random weights,
 *                 real configs in benchmarks/gpu/configs/), WebGPU f32 vs fp16 vs the CPU backend
 * Every case has a time budget against one deadline (8 minutes from run.sh's start); a case that
 * would not fit records why. The JSON is rewritten after every case, so a run killed at its limit
 * still leaves every finished case (and the one it was in, marked as not finished).
 * `--quick` runs the same cases with tiny shapes (lavapipe in CI, well under a minute).
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { type Backend, full, noGrad, tensor } from "@lowrank/tensor";
import type { Init } from "@lowrank/nn/node";
import { conformanceSuite } from "@lowrank/tensor/testing";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { type WebGpuBackend, type WebGpuContext, createWebGpuBackend, describeAdapter } from "@lowrank/backend-webgpu";
import { resolveConfig } from "@lowrank/trainer/node";
import { BENCH_DIR, type Machine, log, machine, writeJson } from "./common.ts";
import { type Case, attentionCase, matmulCase, nf4Case, timeCall } from "./kernels.ts";
import { randomModelFromConfig } from "./models.ts";
import { type MethodSpec, TooSlowError, timeSteps } from "./step.ts";

export const GPU_SCHEMA = 1;
/** The whole run, run.sh's set-up included, must end inside this (the issue's 8 minutes, less a margin to write). */
const FULL_BUDGET_S = 450;
// --quick checks the path, not speed: generous, so a loaded CI machine does not turn cases into skips.
const QUICK_BUDGET_S = 150;

/** Published dense peaks (TFLOP/s) by adapter name; fp16 "vector" is without tensor cores, which WGSL cannot reach. */
export const PEAKS: { match: RegExp; device: string; fp32: number; fp16: number; fp16Tensor: number; source: string }[] = [
  {
    match: /H200/i,
    device: "NVIDIA H200 SXM",
    fp32: 67,
    fp16: 133.8,
    fp16Tensor: 989.5,
    source:
      "NVIDIA H200 datasheet (FP32 67 TFLOPS; FP16 Tensor Core 1,979 TFLOPS with sparsity = 989.5 dense); FP16 non-tensor from the H100 SXM5 whitepaper (same GH100 SXM5 compute)",
  },
  {
    match: /H100.*PCIe/i,
    device: "NVIDIA H100 PCIe",
    fp32: 51.2,
    fp16: 102.4,
    fp16Tensor: 756,
    source: "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 PCIe column (FP32 51.2, FP16 non-tensor 102.4, FP16 tensor dense 756 TFLOPS)",
  },
  {
    match: /H100/i,
    device: "NVIDIA H100 SXM5",
    fp32: 66.9,
    fp16: 133.8,
    fp16Tensor: 989.4,
    source: "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 SXM5 column (FP32 66.9, FP16 non-tensor 133.8, FP16 tensor dense 989.4 TFLOPS)",
  },
  {
    match: /A100/i,
    device: "NVIDIA A100 SXM4",
    fp32: 19.5,
    fp16: 78,
    fp16Tensor: 312,
    source: "NVIDIA A100 Tensor Core GPU Architecture whitepaper (FP32 19.5, FP16 non-tensor 78, FP16 tensor dense 312 TFLOPS)",
  },
];

export type Peak = Omit<(typeof PEAKS)[number], "match">;

export function peakFor(adapter: string): Peak | null {
  const p = PEAKS.find((x) => x.match.test(adapter));
  if (!p) return null;
  const { match: _, ...rest } = p;
  return rest;
}

export interface GpuCase {
  id: string;
  section: "backends" | "conformance" | "kernels" | "training";
  status: "ok" | "skipped" | "failed";
  /** ok: at least one finite number; a null is a figure that cannot exist here (e.g. % of an unknown peak). */
  metrics?: Record<string, number | null>;
  detail?: Record<string, unknown>;
  skipped?: string;
  error?: string;
  seconds: number;
}

export interface GpuResult {
  suite: "gpu";
  schema: number;
  config: { command: string; date: string; quick: boolean; machine: Machine; budget_s: number };
  /** run.sh's set-up log (runtime, Vulkan loader, driver); null when run without run.sh. */
  setup: Record<string, string> | null;
  adapter: { name: string; features: string[]; f16: boolean; peak: Peak | null } | null;
  cases: GpuCase[];
  wall_seconds: number;
  finished: boolean;
}

const TIMED_OUT = "did not finish: the run was stopped at its time limit during this case";

class Run {
  readonly cases: GpuCase[] = [];
  constructor(readonly result: GpuResult, readonly out: string, readonly deadline: number, readonly t0: number) {}
  left(): number {
    return (this.deadline - Date.now()) / 1000;
  }
  save(): void {
    this.result.wall_seconds = (performance.now() - this.t0) / 1000;
    writeJson(this.out, this.result);
  }
  skip(id: string, section: GpuCase["section"], reason: string): void {
    this.result.cases.push({ id, section, status: "skipped", skipped: reason, seconds: 0 });
    log(`gpu: ${id}: skipped (${reason})`);
    this.save();
  }
  /** Runs `fn` if `needS` seconds are left; records numbers, a skip (TooSlowError, Skip) or the error. */
  async case(id: string, section: GpuCase["section"], needS: number, fn: () => Promise<Pick<GpuCase, "metrics" | "detail">>): Promise<GpuCase> {
    const left = this.left();
    if (left < needS) {
      this.skip(id, section, `would not fit: needs about ${needS} s, ${Math.max(0, left).toFixed(0)} s left of the ${this.result.config.budget_s} s budget`);
      return this.result.cases[this.result.cases.length - 1];
    }
    const c: GpuCase = { id, section, status: "failed", error: TIMED_OUT, seconds: 0 };
    this.result.cases.push(c);
    this.save(); // a kill from here on leaves this case marked as not finished
    const t = performance.now();
    try {
      Object.assign(c, await fn(), { status: "ok", error: undefined });
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      if (e instanceof TooSlowError || e instanceof Skip) Object.assign(c, { status: "skipped", skipped: msg, error: undefined });
      else Object.assign(c, { status: "failed", error: msg });
    }
    c.seconds = (performance.now() - t) / 1000;
    log(`gpu: ${id}: ${c.status}${c.status === "ok" ? ` ${JSON.stringify(c.metrics)}` : ` (${c.skipped ?? c.error})`} in ${c.seconds.toFixed(1)} s`);
    this.save();
    return c;
  }
}

/** A case that cannot run here, with the reason. */
class Skip extends Error {}

/** `key<TAB>value` lines from run.sh. */
function readSetup(file: string | undefined): Record<string, string> | null {
  if (!file) return null;
  try {
    return Object.fromEntries(
      readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l.includes("\t"))
        .map((l) => [l.slice(0, l.indexOf("\t")), l.slice(l.indexOf("\t") + 1)]),
    );
  } catch (e) {
    return { error: `cannot read ${file}: ${(e as Error).message}` };
  }
}

async function requestGpu(): Promise<WebGpuContext | string> {
  try {
    const edge = "Deno" in globalThis ? await import("@lowrank/backend-webgpu/deno") : await import("@lowrank/backend-webgpu/node");
    return await edge.requestWebGpu();
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/** `node <cli> backends --json` (LOWRANK_GPU_CLI: the bundle's lowrank.mjs; default this checkout's bin). */
function backendsJson(env: Record<string, string | undefined>, timeoutMs: number): Promise<{ json: Record<string, unknown>; ms: number }> {
  const cli = env.LOWRANK_GPU_CLI ?? resolve(BENCH_DIR, "..", "apps", "cli", "bin", "lowrank.mjs");
  return new Promise((done, fail) => {
    const t = performance.now();
    const child = spawn(process.execPath, [cli, "backends", "--json"], { stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", fail);
    child.on("close", (code, signal) => {
      if (code !== 0) return fail(new Error(`\`${cli} backends --json\` exited ${code ?? signal}: ${err.trim().slice(-400)}`));
      try {
        done({ json: JSON.parse(out), ms: performance.now() - t });
      } catch {
        fail(new Error(`\`lowrank backends --json\` printed no JSON: ${out.slice(0, 200)}`));
      }
    });
  });
}

/** The conformance suite on its own device; tests run one after another until the budget is spent. */
async function conformance(budgetS: number): Promise<Pick<GpuCase, "metrics" | "detail">> {
  const ctx = await requestGpu();
  if (typeof ctx === "string") throw new Skip(`no WebGPU adapter: ${ctx}`);
  const be = createWebGpuBackend(ctx);
  const tests: { name: string; fn: () => Promise<void> | void }[] = [];
  conformanceSuite({ backend: be, test: (name, fn) => tests.push({ name, fn }) });
  const failures: { name: string; error: string }[] = [];
  const end = performance.now() + budgetS * 1000;
  let passed = 0;
  let ran = 0;
  try {
    for (const t of tests) {
      if (performance.now() > end) break;
      ran++;
      try {
        await t.fn();
        passed++;
      } catch (e) {
        failures.push({ name: t.name, error: (e instanceof Error ? e.message : String(e)).slice(0, 300) });
      }
    }
  } finally {
    be.dispose();
  }
  const notRun = tests.length - ran;
  return {
    metrics: { total: tests.length, passed, failed: failures.length, not_run: notRun },
    detail: {
      failures,
      ...(notRun ? { not_run_reason: `the case's ${budgetS} s budget was spent after ${ran} tests (the rest run in npm test's conformance suite)` } : {}),
    },
  };
}

interface KernelPlan {
  matmul: [number, number, number][];
  nf4: [number, number, number];
  attention: [number, number, number, number];
}

const KERNELS: Record<"quick" | "full", KernelPlan> = {
  quick: {
    matmul: [
      [128, 128, 128],
      [256, 256, 256],
    ],
    nf4: [64, 256, 256],
    attention: [1, 2, 32, 16],
  },
  // TinyLlama's MLP up for 2048 tokens; attention at its heads (32 x 64) and 512 tokens.
  full: {
    matmul: [
      [1024, 1024, 1024],
      [2048, 2048, 2048],
      [4096, 4096, 4096],
    ],
    nf4: [2048, 2048, 5632],
    attention: [4, 32, 512, 64],
  },
};

async function timeCase(be: Backend, c: Case, quick: boolean): Promise<{ ms: number; gflops: number }> {
  const { run, dispose } = c.setup(be);
  try {
    const ms = await timeCall(be, run, quick ? 40 : 200, quick ? 3 : 5);
    return { ms, gflops: c.flops / ms / 1e6 };
  } finally {
    dispose();
  }
}

const pct = (gflops: number, tflops: number | undefined) => (tflops === undefined ? null : (100 * gflops) / (tflops * 1000));

/**
 * Seconds a timed kernel case takes at `gflops` (warm-up, calibration and 5 samples: at least 7
 * calls, each sample ~200 ms), so a shape far too large for this device is skipped, not waited for.
 */
function kernelSeconds(flops: number, gflops: number | undefined): number {
  if (!gflops) return 0;
  const callS = flops / (gflops * 1e9);
  return 7 * callS + 1.2;
}

async function kernels(run: Run, gpu: WebGpuBackend, cpu: Backend, peak: Peak | null, quick: boolean): Promise<Record<string, number>> {
  const plan = KERNELS[quick ? "quick" : "full"];
  const best: Record<string, number> = {};
  const maxS = quick ? 20 : 25;
  /** Runs the case unless the rate measured so far says it would take over maxS seconds. */
  const measure = async (
    id: string,
    needS: number,
    c: Case,
    be: Backend,
    rate: number | undefined,
    fn: (r: { ms: number; gflops: number }) => Pick<GpuCase, "metrics" | "detail">,
  ) => {
    const est = kernelSeconds(c.flops, rate);
    if (est > maxS)
      return run.skip(
        id,
        "kernels",
        `would not fit: about ${est.toFixed(0)} s at the ${rate!.toFixed(1)} GFLOP/s measured on a smaller case, over the ${maxS} s a kernel case may take`,
      );
    await run.case(id, "kernels", needS, async () => fn(await timeCase(be, c, quick)));
  };
  for (const [M, K, N] of plan.matmul) {
    for (const dtype of ["f32", "f16"] as const) {
      const id = `matmul ${dtype} ${M}x${K}x${N} webgpu`;
      if (dtype === "f16" && !gpu.hasF16) {
        run.skip(id, "kernels", "the adapter has no shader-f16");
        continue;
      }
      await measure(id, quick ? 2 : 8, matmulCase(id, M, K, N, { dtype }), gpu, best[`webgpu-${dtype}`], (r) => {
        best[`webgpu-${dtype}`] = Math.max(best[`webgpu-${dtype}`] ?? 0, r.gflops);
        return {
          metrics: {
            gflops: r.gflops,
            ms: r.ms,
            pct_peak: pct(r.gflops, dtype === "f32" ? peak?.fp32 : peak?.fp16),
            ...(dtype === "f16" ? { pct_tensor_peak: pct(r.gflops, peak?.fp16Tensor) } : {}),
          },
        };
      });
    }
  }
  // The CPU backend on one shape: the reference, and the rate the training fit estimates use.
  const [cm, ck, cn] = plan.matmul[quick ? 1 : 0];
  await run.case(`matmul f32 ${cm}x${ck}x${cn} cpu`, "kernels", quick ? 2 : 10, async () => {
    const r = await timeCase(cpu, matmulCase("cpu", cm, ck, cn), quick);
    best.cpu = r.gflops;
    return { metrics: { gflops: r.gflops, ms: r.ms }, detail: { device: cpu.device } };
  });
  const [M, K, N] = plan.nf4;
  const f32 = best["webgpu-f32"];
  let dense = NaN;
  await measure(`matmul dense f32 x·Wᵀ ${M}x${K} · ${N}x${K} webgpu`, quick ? 2 : 8, matmulCase("dense", M, K, N, { transposeB: true }), gpu, f32, (r) => {
    dense = r.gflops;
    return { metrics: { gflops: r.gflops, ms: r.ms, pct_peak: pct(r.gflops, peak?.fp32) } };
  });
  // The fused 4-bit kernel and attention backward run well below the dense rate: estimate at a tenth.
  await measure(`matmul4bit NF4+DQ x·Wᵀ ${M}x${K} · ${N}x${K} webgpu`, quick ? 3 : 15, nf4Case("nf4", M, K, N), gpu, f32 && f32 / 10, (r) => ({
    metrics: { gflops: r.gflops, ms: r.ms, over_dense: Number.isFinite(dense) ? r.gflops / dense : null, pct_peak: pct(r.gflops, peak?.fp32) },
  }));
  const [B, H, T, D] = plan.attention;
  for (const backward of [false, true]) {
    const c = attentionCase(B, H, T, D, backward);
    await measure(`${c.name} webgpu`, quick ? 2 : 10, c, gpu, f32 && f32 / 10, (r) => ({
      metrics: { gflops: r.gflops, ms: r.ms, pct_peak: pct(r.gflops, peak?.fp32) },
    }));
  }
  return best;
}

interface ModelPlan {
  name: string;
  config: string;
  method: "lora" | "qlora";
  batch: number;
  seq: number;
  /** Seconds per row (model build included). */
  budgetS: number;
}

const MODELS: Record<"quick" | "full", ModelPlan[]> = {
  quick: [
    { name: "stories260K", config: "stories260K.json", method: "lora", batch: 1, seq: 16, budgetS: 8 },
    { name: "SmolLM2-135M", config: "SmolLM2-135M.json", method: "qlora", batch: 1, seq: 16, budgetS: 8 },
    { name: "TinyLlama-1.1B", config: "TinyLlama-1.1B.json", method: "qlora", batch: 1, seq: 16, budgetS: 8 },
  ],
  full: [
    { name: "stories260K", config: "stories260K.json", method: "lora", batch: 8, seq: 256, budgetS: 10 },
    { name: "SmolLM2-135M", config: "SmolLM2-135M.json", method: "qlora", batch: 4, seq: 512, budgetS: 40 },
    { name: "TinyLlama-1.1B", config: "TinyLlama-1.1B.json", method: "qlora", batch: 2, seq: 512, budgetS: 150 },
  ],
};

/**
 * --quick: the same model family at toy size (one layer, vocab 512, hidden sizes shrunk, the heads
 * and the kv-head ratio kept), so lavapipe runs every row in seconds.
 */
export function quickConfig(cfg: Record<string, unknown>): Record<string, unknown> {
  const heads = cfg.num_attention_heads as number;
  const hd = 8;
  return {
    ...cfg,
    num_hidden_layers: 1,
    vocab_size: 512,
    hidden_size: heads * hd,
    head_dim: hd,
    intermediate_size: heads * hd * 3,
    max_position_embeddings: 64,
    tie_word_embeddings: cfg.tie_word_embeddings ?? false,
  };
}

export function loadModelConfig(p: ModelPlan, quick: boolean, dir: string): Record<string, unknown> {
  const cfg = JSON.parse(readFileSync(join(dir, p.config), "utf8")) as Record<string, unknown>;
  return quick && p.name !== "stories260K" ? quickConfig(cfg) : cfg;
}

/** Parameters of a Llama config (tied head once). */
export function configParams(c: Record<string, unknown>): number {
  const d = c.hidden_size as number,
    L = c.num_hidden_layers as number,
    V = c.vocab_size as number,
    I = c.intermediate_size as number;
  const hd = (c.head_dim as number | undefined) ?? d / (c.num_attention_heads as number);
  const kv = (c.num_key_value_heads as number) * hd;
  return V * d * (c.tie_word_embeddings ? 1 : 2) + L * (2 * d * (c.num_attention_heads as number) * hd + 2 * d * kv + 3 * d * I + 2 * d) + d;
}

/** Why fp16 training cannot run on `be`, or null when it can (the trainer and the backend both accept it). */
export function fp16Unsupported(be: Backend): string | null {
  try {
    const cfg = resolveConfig({ model: "(probe)", data: "(probe)", output: "(probe)", method: "lora", mixedPrecision: "fp16" } as Parameters<
      typeof resolveConfig
    >[0]);
    if ((cfg as { mixedPrecision?: string }).mixedPrecision !== "fp16") return "this trainer has no mixedPrecision option";
  } catch (e) {
    return `the trainer refuses mixedPrecision "fp16": ${(e as Error).message}`;
  }
  if (!be.dtypes.includes("f16")) return `the ${be.name} backend cannot store f16`;
  if ("hasF16" in be && !(be as WebGpuBackend).hasF16) return "the adapter has no shader-f16";
  return null;
}

/**
 * Weights uniform with std 0.02 rather than normal (speed does not depend on their distribution,
 * and Box-Muller in JS took about 75 ns a weight here, 80 s for 1.1B), drawn in f32 and cast on
 * the backend (tensor() widens an f16 upload through a JS array, about 3x slower).
 */
function fastInit(seed: number): Init {
  let s = seed >>> 0 || 1;
  const a = 0.02 * Math.sqrt(3);
  return (shape, role, dtype, backend) => {
    if (role !== "weight") return full(shape, role === "norm" ? 1 : 0, { dtype, backend });
    const data = new Float32Array(shape.reduce((x, y) => x * y, 1));
    for (let i = 0; i < data.length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      data[i] = (s / 2 ** 31 - 1) * a;
    }
    const t = tensor(data, { shape: [...shape], backend });
    if (dtype === "f32") return t;
    const h = noGrad(() => t.cast(dtype));
    t.dispose();
    return h;
  };
}

type Counts = { dispatches: number; copies: number; submits: number; reads: number };

/** One training row: build the random model, time steps until the row's budget, count engine work per step. */
async function trainRow(
  be: Backend,
  p: ModelPlan,
  cfg: Record<string, unknown>,
  precision: "f32" | "fp16",
  budgetS: number,
  quick: boolean,
): Promise<Pick<GpuCase, "metrics" | "detail">> {
  const t0 = performance.now();
  const model = randomModelFromConfig(cfg, `${p.name} (random weights)`, be, { dtype: precision === "fp16" ? "f16" : "f32", init: fastInit(1) });
  const buildS = (performance.now() - t0) / 1000;
  const counters = "engine" in be ? (be as WebGpuBackend).engine.counters : null;
  const snaps: Counts[] = [];
  let readyS: number | null = null;
  const spec: MethodSpec = {
    method: p.method,
    rank: 8,
    alpha: 16,
    targets: "all-linear",
    dropout: 0.05,
    mixedPrecision: precision === "fp16" ? "fp16" : undefined,
  };
  try {
    // Quantizing the base (qlora) happens inside timeSteps, before its first step: the deadline is absolute.
    const left = budgetS * 1000 - (performance.now() - t0);
    const t = await timeSteps(model, spec, {
      batch: p.batch,
      seq: p.seq,
      steps: quick ? 2 : 20,
      warmup: 1,
      lr: 1e-4,
      stopAt: t0 + budgetS * 800,
      maxStepMs: quick ? undefined : Math.max(1000, left),
      onStep: () =>
        (readyS ??= (performance.now() - t0) / 1000) &&
        counters &&
        snaps.push({ dispatches: counters.dispatches, copies: counters.copies, submits: counters.submits, reads: counters.reads }),
    });
    const per = (k: keyof Counts) => {
      const d = snaps
        .slice(1)
        .map((s, i) => s[k] - snaps[i][k])
        .sort((a, b) => a - b);
      return d.length ? d[d.length >> 1] : null;
    };
    if (!t.losses.every(Number.isFinite) && !t.skippedSteps) throw new Error(`non-finite loss: ${t.losses.join(", ")}`);
    return {
      metrics: {
        tokens_per_s: t.tokensPerS,
        step_ms: t.stepMs.length ? t.stepMs.slice().sort((a, b) => a - b)[t.stepMs.length >> 1] : null,
        timed_steps: t.stepMs.length,
        peak_bytes: t.peakBytes,
        build_s: buildS,
        ready_s: readyS,
        first_loss: t.losses[0] ?? null,
        last_loss: t.losses[t.losses.length - 1] ?? null,
        skipped_steps: t.skippedSteps,
        ...(counters
          ? { dispatches_per_step: per("dispatches"), copies_per_step: per("copies"), submits_per_step: per("submits"), reads_per_step: per("reads") }
          : {}),
      },
      detail: {
        params: configParams(cfg),
        trainable: t.trainable,
        recompute: t.recompute,
        batch: p.batch,
        seq: p.seq,
        method: `${p.method} r8 all-linear dropout 0.05`,
        device: be.device,
        ...(quick && p.name !== "stories260K" ? { scaled: "quick: 1 layer, vocab 512, head size 8 (same heads and kv heads)" } : {}),
      },
    };
  } finally {
    model.dispose();
  }
}

/** Seconds one step would take at `gflops`: 6 FLOP per parameter and token, x4/3 with recomputation. */
export function estimateStepS(params: number, tokens: number, method: "lora" | "qlora", gflops: number): number {
  return (6 * params * tokens * (method === "qlora" ? 4 / 3 : 1)) / (gflops * 1e9);
}

export async function runGpu(o: { quick: boolean; out: string; command: string; env?: Record<string, string | undefined> }): Promise<GpuResult> {
  const env = o.env ?? process.env;
  const t0 = performance.now();
  const budget = Number(env.LOWRANK_GPU_BUDGET_S ?? (o.quick ? QUICK_BUDGET_S : FULL_BUDGET_S));
  // run.sh passes its start time, so its own set-up counts against the same deadline.
  const start = Number(env.LOWRANK_GPU_T0 ?? Date.now());
  const result: GpuResult = {
    suite: "gpu",
    schema: GPU_SCHEMA,
    config: { command: o.command, date: new Date().toISOString(), quick: o.quick, machine: machine(), budget_s: budget },
    setup: readSetup(env.LOWRANK_GPU_SETUP),
    adapter: null,
    cases: [],
    wall_seconds: 0,
    finished: false,
  };
  const run = new Run(result, o.out, start + budget * 1000, t0);
  run.save();
  await run.case("lowrank backends --json", "backends", 5, async () => {
    const { json, ms } = await backendsJson(env, 60_000);
    return { metrics: { seconds: ms / 1000, webgpu_available: (json.webgpu as { available?: boolean } | undefined)?.available ? 1 : 0 }, detail: json };
  });
  const ctx = await requestGpu();
  const cpu = createCpuBackend();
  const configs = env.LOWRANK_GPU_CONFIGS ?? join(BENCH_DIR, "gpu", "configs");
  let gpu: WebGpuBackend | null = null;
  try {
    if (typeof ctx === "string") {
      for (const s of ["conformance", "kernels"] as const) run.skip(`${s} (webgpu)`, s, `no WebGPU adapter: ${ctx}`);
    } else {
      const name = describeAdapter(ctx.adapterInfo);
      gpu = createWebGpuBackend(ctx);
      result.adapter = { name, features: [...ctx.features], f16: gpu.hasF16, peak: peakFor(name) };
      log(`gpu: adapter ${name}; peak ${result.adapter.peak ? result.adapter.peak.device : "unknown (no entry in PEAKS)"}`);
      const confBudget = o.quick ? 6 : 30;
      await run.case("conformance suite (webgpu)", "conformance", o.quick ? 3 : 20, () =>
        conformance(Math.min(confBudget, Math.max(1, run.left() - (o.quick ? 30 : 300)))),
      );
    }
    const rates = gpu ? await kernels(run, gpu, cpu, result.adapter?.peak ?? null, o.quick) : {};
    // GPU rows first (the figures that do not exist yet), the CPU comparison after.
    const rows: { p: ModelPlan; be: Backend | null; target: "webgpu" | "cpu"; precision: "f32" | "fp16" }[] = [];
    for (const p of MODELS[o.quick ? "quick" : "full"]) {
      rows.push({ p, be: gpu, target: "webgpu", precision: "f32" }, { p, be: gpu, target: "webgpu", precision: "fp16" });
      if (p.name === "stories260K") rows.push({ p, be: cpu, target: "cpu", precision: "f32" });
    }
    for (const p of MODELS[o.quick ? "quick" : "full"].slice(1)) rows.push({ p, be: cpu, target: "cpu", precision: "f32" });
    const ready = new Map<string, { perParam: number; from: string }>();
    for (const { p, be, target, precision } of rows) {
      const id = `train ${p.name} ${p.method} ${target} ${precision} batch ${p.batch}x${p.seq}`;
      if (!be) {
        run.skip(id, "training", `no WebGPU adapter: ${typeof ctx === "string" ? ctx : "unavailable"}`);
        continue;
      }
      const no16 = precision === "fp16" ? fp16Unsupported(be) : null;
      if (no16) {
        run.skip(id, "training", no16);
        continue;
      }
      const cfg = loadModelConfig(p, o.quick, configs);
      const params = configParams(cfg);
      const rate = rates[target === "cpu" ? "cpu" : `webgpu-${precision === "fp16" ? "f16" : "f32"}`];
      // Two steps (warm-up and one timed) at the measured matmul rate, plus building and quantizing
      // at the seconds per parameter the previous row of this backend and precision took, must fit.
      const stepS = rate ? estimateStepS(params, p.batch * p.seq, p.method, rate) : 0;
      const prev = ready.get(`${target} ${precision}`);
      const buildS = prev ? prev.perParam * params : 0;
      if (2 * stepS + buildS > p.budgetS) {
        const why = [`two steps need about ${(2 * stepS).toFixed(0)} s at the ${rate.toPrecision(3)} GFLOP/s this run measured for ${target} matmul`];
        if (prev)
          why.push(
            `building and preparing the model about ${buildS.toFixed(0)} s (${prev.from} took ${(prev.perParam * 1e8).toFixed(1)} s per 100M parameters)`,
          );
        run.skip(id, "training", `would not fit: ${why.join(", ")}, over the row's ${p.budgetS} s budget`);
        continue;
      }
      const c = await run.case(id, "training", p.budgetS, () => trainRow(be, p, cfg, precision, Math.min(p.budgetS, run.left()), o.quick));
      const r = c.metrics?.ready_s;
      // Only a large model's set-up time scales with its parameters (a small one's is pipeline compiles).
      if (typeof r === "number" && params >= 5e7) ready.set(`${target} ${precision}`, { perParam: Math.max(0, r - 2 * stepS) / params, from: p.name });
    }
  } finally {
    gpu?.dispose();
    cpu.dispose();
  }
  result.finished = true;
  run.save();
  return result;
}

/** Problems with a result file (empty when it is well formed); each says what was expected. */
export function checkGpuSchema(r: unknown): string[] {
  const p: string[] = [];
  const o = r as Partial<GpuResult>;
  if (!o || typeof o !== "object") return ["expected a JSON object"];
  if (o.suite !== "gpu") p.push(`suite: expected "gpu", got ${JSON.stringify(o.suite)}`);
  if (o.schema !== GPU_SCHEMA) p.push(`schema: expected ${GPU_SCHEMA}, got ${JSON.stringify(o.schema)}`);
  if (typeof o.config?.quick !== "boolean" || typeof o.config?.command !== "string") p.push("config: expected { command: string, quick: boolean, ... }");
  if (typeof o.wall_seconds !== "number") p.push("wall_seconds: expected a number");
  if (!Array.isArray(o.cases) || !o.cases.length) return [...p, "cases: expected a non-empty array"];
  for (const c of o.cases) {
    const at = `case ${JSON.stringify(c.id)}`;
    if (!["backends", "conformance", "kernels", "training"].includes(c.section))
      p.push(`${at}: section ${JSON.stringify(c.section)} is not one of backends, conformance, kernels, training`);
    if (c.status === "ok") {
      const vals = Object.values(c.metrics ?? {});
      if (!vals.some((v) => typeof v === "number" && Number.isFinite(v)))
        p.push(`${at}: status ok but no finite number in metrics (${JSON.stringify(c.metrics)})`);
      for (const [k, v] of Object.entries(c.metrics ?? {}))
        if (v !== null && (typeof v !== "number" || !Number.isFinite(v)))
          p.push(`${at}: metrics.${k} is ${JSON.stringify(v)}, expected a finite number or null`);
    } else if (c.status === "skipped") {
      if (typeof c.skipped !== "string" || !c.skipped) p.push(`${at}: status skipped but no reason in "skipped"`);
    } else if (c.status === "failed") {
      if (typeof c.error !== "string" || !c.error) p.push(`${at}: status failed but no "error"`);
    } else p.push(`${at}: status ${JSON.stringify(c.status)} is not ok, skipped or failed`);
  }
  return p;
}
