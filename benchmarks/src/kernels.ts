/**
 * The kernel table (`lowrank bench kernels`): f32 matmul, the fused 4-bit (NF4 + double quant)
 * matmul and causal attention, on every backend this runtime offers, in GFLOP/s and as a share
 * of that backend's peak measured in the same run. Shapes are the ones a training step of the
 * peer-baseline model (d256, batch 8 x 128 tokens) runs, plus square matmuls for the peak.
 * The CPU backend runs twice: cpu-blas (matmul on the system BLAS, when one is found) and
 * cpu-wasm (blas: "off"); PyTorch's matmul on the same shapes (kernels_torch.py, threads as in
 * configs/peer.json) gives each matmul row a "% of PyTorch".
 *
 * Peak = the best f32 matmul GFLOP/s this run measured on that backend (square 512³ / 1024³).
 * It is the best the backend's own fastest kernel reaches here, not a hardware roofline; a JS
 * scalar multiply-add loop is reported too. Every call goes through the Tensor API (allocation
 * included); a sample is a batch of calls followed by backend.sync().
 */
import { type Backend, type Quant4bitWeight, type Tensor, attention, matmul4bit, noGrad, tensor } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { quantize4bit } from "@lowrank/nf4";
import { join } from "node:path";
import { CONFIGS_DIR, type Machine, log, machine, median } from "./common.ts";
import { loadPeerConfig } from "./peer.ts";
import { type TorchKernels, mergeTorchRuns, torchKernels } from "./kernels-torch.ts";
import { randomF32 } from "./timing.ts";

export interface KernelRow {
  kernel: "matmul" | "matmul4bit" | "attention";
  name: string;
  flops: number;
  /** Per backend name: median ms per call, GFLOP/s, % of that backend's peak, % of PyTorch's GFLOP/s on this row. */
  results: Record<string, { ms: number; gflops: number; pctPeak: number; pctTorch?: number }>;
  /** PyTorch's matmul on the same shape in the same run (matmul rows, when torch ran). */
  torch?: { ms: number; gflops: number; runs?: number[] };
}

export interface KernelsResult {
  config: { command: string; date: string; machine: Machine; quick: boolean };
  backends: { name: string; device: string }[];
  /** Per backend: GFLOP/s of its best square matmul, and which one. */
  peak: Record<string, { gflops: number; from: string }>;
  /** A JS scalar f64 multiply-add loop on one thread (reference point). */
  scalarLoopGflops: number;
  /** The PyTorch run the matmul rows are compared with (null: skipped, the reason is in `skipped`). */
  torch?: Omit<TorchKernels, "results"> | null;
  rows: KernelRow[];
  skipped: { backend: string; reason: string }[];
  wall_seconds: number;
}

/** Median ms per call: batches of `reps` calls, each batch followed by one sync. */
export async function timeCall(be: Backend, fn: () => void, targetMs: number, samples: number): Promise<number> {
  fn();
  await be.sync();
  const t0 = performance.now();
  fn();
  await be.sync();
  const once = performance.now() - t0;
  const reps = Math.max(1, Math.min(200, Math.round(targetMs / Math.max(once, 0.01))));
  const per: number[] = [];
  for (let s = 0; s < samples; s++) {
    const t = performance.now();
    for (let r = 0; r < reps; r++) fn();
    await be.sync();
    per.push((performance.now() - t) / reps);
  }
  return median(per);
}

function scalarLoop(): number {
  const n = 2e7;
  let a = 0.5,
    b = 0.25,
    c = 0.125,
    d = 0.0625;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    a = a * 0.999999 + 1e-7;
    b = b * 0.999999 + 1e-7;
    c = c * 0.999999 + 1e-7;
    d = d * 0.999999 + 1e-7;
  }
  const ms = performance.now() - t0;
  if (a + b + c + d === 42) log("(unreachable)"); // keep the loop live
  return (8 * n) / ms / 1e6;
}

export interface Case {
  kernel: KernelRow["kernel"];
  name: string;
  flops: number;
  /** Matmul operands, for the PyTorch side. */
  matmul?: { M: number; K: number; N: number; transposeA?: boolean; transposeB?: boolean };
  /** Build operands on `be`; returns the call and a cleanup. */
  setup(be: Backend): { run: () => void; dispose: () => void };
  peak?: boolean;
}

const mat = (be: Backend, r: number, c: number, seed: number, dtype: "f32" | "f16" = "f32") =>
  tensor(randomF32(r * c, seed), { shape: [r, c], backend: be, dtype });

/** transposeA/transposeB: the operand is a transposed view of a row-major matrix, as Linear's x·Wᵀ and the weight gradient xᵀ·g read them. */
export function matmulCase(
  name: string,
  M: number,
  K: number,
  N: number,
  opts: { peak?: boolean; transposeA?: boolean; transposeB?: boolean; dtype?: "f32" | "f16" } = {},
): Case {
  return {
    kernel: "matmul",
    name,
    flops: 2 * M * N * K,
    peak: opts.peak,
    matmul: { M, K, N, transposeA: opts.transposeA, transposeB: opts.transposeB },
    setup(be) {
      const a = opts.transposeA ? mat(be, K, M, 1, opts.dtype) : mat(be, M, K, 1, opts.dtype);
      const b = opts.transposeB ? mat(be, N, K, 2, opts.dtype) : mat(be, K, N, 2, opts.dtype);
      const A = opts.transposeA ? a.T : a;
      const B = opts.transposeB ? b.T : b;
      return { run: () => noGrad(() => A.matmul(B).dispose()), dispose: () => [a, b].forEach((t) => t.dispose()) };
    },
  };
}

export function nf4Case(name: string, M: number, K: number, N: number): Case {
  const state = quantize4bit(
    randomF32(N * K, 3).map((v) => v * 0.02),
    { shape: [N, K] },
  );
  const a = state.absmax as Exclude<typeof state.absmax, Float32Array>;
  return {
    kernel: "matmul4bit",
    name,
    flops: 2 * M * N * K,
    setup(be) {
      const u8 = (d: Uint8Array) => tensor(d, { dtype: "u8", backend: be });
      const f32 = (d: Float32Array) => tensor(d, { backend: be });
      const w: Quant4bitWeight = {
        packed: u8(state.packed),
        absmax: u8(a.qabsmax),
        code: f32(state.quantMap),
        nested: { absmax: f32(a.nestedAbsmax), code: f32(a.nestedCode), offset: a.nestedOffset, blocksize: 256 },
        blocksize: 64,
        outFeatures: N,
        inFeatures: K,
      };
      const x = mat(be, M, K, 4);
      const all: Tensor[] = [x, w.packed, w.absmax, w.code, w.nested!.absmax, w.nested!.code];
      return { run: () => noGrad(() => matmul4bit(x, w).dispose()), dispose: () => all.forEach((t) => t.dispose()) };
    },
  };
}

export function attentionCase(B: number, H: number, T: number, D: number, backward: boolean): Case {
  const fwd = 4 * B * H * T * T * D; // QKᵀ and PV over the full T x T (the CPU kernel skips most of the masked half: an effective rate)
  return {
    kernel: "attention",
    name: `causal attention ${backward ? "fwd+bwd" : "fwd"} B${B} heads ${H} T${T} hs${D}`,
    flops: backward ? 3 * fwd : fwd,
    setup(be) {
      const mk = (seed: number) => tensor(randomF32(B * H * T * D, seed), { shape: [B, H, T, D], backend: be, requiresGrad: backward });
      const [q, k, v] = [mk(5), mk(6), mk(7)];
      const run = backward
        ? () => {
            const y = attention(q, k, v).sum();
            y.backward();
            y.dispose();
            for (const t of [q, k, v]) t.zeroGrad();
          }
        : () => noGrad(() => attention(q, k, v).dispose());
      return { run, dispose: () => [q, k, v].forEach((t) => t.dispose()) };
    },
  };
}

export function kernelCases(quick: boolean): Case[] {
  const cases: Case[] = [
    matmulCase("square 512³", 512, 512, 512, { peak: true }),
    matmulCase("square 1024³", 1024, 1024, 1024, { peak: true }),
    matmulCase("q_proj x·Wᵀ [1024×256]·W[256×256]ᵀ", 1024, 256, 256, { transposeB: true }),
    matmulCase("MLP up x·Wᵀ [1024×256]·W[688×256]ᵀ", 1024, 256, 688, { transposeB: true }),
    matmulCase("MLP down weight grad gᵀ·h [1024×256]ᵀ·[1024×688]", 256, 1024, 688, { transposeA: true }),
    matmulCase("LoRA A x·Aᵀ [1024×256]·A[8×256]ᵀ", 1024, 256, 8, { transposeB: true }),
    matmulCase("LoRA B h·Bᵀ [1024×8]·B[256×8]ᵀ", 1024, 8, 256, { transposeB: true }),
    nf4Case("NF4 MLP up x·Wᵀ [1024×256]·W[688×256]", 1024, 256, 688),
    nf4Case("NF4 x·Wᵀ [512×1024]·W[1024×1024]", 512, 1024, 1024),
    attentionCase(8, 4, 128, 64, false),
    attentionCase(8, 4, 128, 64, true),
  ];
  return quick ? cases.filter((c) => !c.name.includes("[512×1024]")) : cases;
}

/** WebGPU through this runtime's edge, or the reason there is none. */
export async function tryWebGpu(): Promise<Backend | string> {
  try {
    const edge = "Deno" in globalThis ? await import("@lowrank/backend-webgpu/deno") : await import("@lowrank/backend-webgpu/node");
    const { createWebGpuBackend } = await import("@lowrank/backend-webgpu");
    return createWebGpuBackend(await edge.requestWebGpu());
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/** cpu-blas (when a BLAS is found) and cpu-wasm, named apart since both are backend "cpu". */
function cpuTargets(skipped: KernelsResult["skipped"]): { name: string; be: Backend }[] {
  const out: { name: string; be: Backend }[] = [];
  try {
    const be = createCpuBackend();
    if (be.blas.active) out.push({ name: "cpu-blas", be });
    else {
      skipped.push({ backend: "cpu-blas", reason: `no BLAS: ${be.blas.reason}` });
      be.dispose();
    }
  } catch (e) {
    skipped.push({ backend: "cpu-blas", reason: e instanceof Error ? e.message : String(e) });
  }
  out.push({ name: "cpu-wasm", be: createCpuBackend({ blas: "off" }) });
  return out;
}

export async function runKernels(o: { quick: boolean; command: string; webgpu: boolean }): Promise<KernelsResult> {
  const t0 = performance.now();
  const skipped: KernelsResult["skipped"] = [];
  const targets = cpuTargets(skipped);
  if (o.webgpu) {
    const g = await tryWebGpu();
    if (typeof g === "string") skipped.push({ backend: "webgpu", reason: g });
    else targets.push({ name: "webgpu", be: g });
  } else skipped.push({ backend: "webgpu", reason: "--no-webgpu" });
  const cases = kernelCases(o.quick);
  const rows: KernelRow[] = cases.map((c) => ({ kernel: c.kernel, name: c.name, flops: c.flops, results: {} }));
  // PyTorch before and after the backends (which are idle then: no BLAS or WASM threads compete).
  const matmuls = cases.filter((c) => c.matmul).map((c) => ({ name: c.name, ...c.matmul! }));
  const torchCfg = loadPeerConfig(join(CONFIGS_DIR, "peer.json")).torch;
  const torchOpts = { targetMs: o.quick ? 60 : 250, samples: o.quick ? 3 : 5 };
  const torchBefore = await torchKernels(torchCfg, matmuls, torchOpts);
  const scalar = scalarLoop();
  try {
    for (const { name, be } of targets) {
      // A software WebGPU adapter is ~10x slower: shorter samples keep the suite's time bounded.
      const target = be.name === "cpu" ? (o.quick ? 60 : 250) : o.quick ? 100 : 400;
      for (const [i, c] of cases.entries()) {
        const { run, dispose } = c.setup(be);
        const ms = await timeCall(be, run, target, o.quick ? 3 : 5);
        dispose();
        rows[i].results[name] = { ms, gflops: c.flops / ms / 1e6, pctPeak: NaN };
        log(`kernels: ${name} ${c.name}: ${(c.flops / ms / 1e6).toFixed(2)} GFLOP/s`);
      }
    }
  } finally {
    for (const { be } of targets) be.dispose();
  }
  const torch = typeof torchBefore === "string" ? torchBefore : mergeTorchRuns(torchBefore, await torchKernels(torchCfg, matmuls, torchOpts));
  if (typeof torch === "string") skipped.push({ backend: "pytorch", reason: torch });
  const { results: torchResults = {}, ...torchRun } = typeof torch === "string" ? {} : torch;
  const peak: KernelsResult["peak"] = {};
  for (const { name } of targets) {
    const best = cases
      .map((c, i) => ({ c, r: rows[i].results[name] }))
      .filter((x) => x.c.peak)
      .sort((a, b) => b.r.gflops - a.r.gflops)[0];
    peak[name] = { gflops: best.r.gflops, from: best.c.name };
    for (const row of rows) {
      const r = row.results[name];
      r.pctPeak = (100 * r.gflops) / best.r.gflops;
      const t = torchResults[row.name];
      if (t) {
        row.torch = t;
        r.pctTorch = (100 * r.gflops) / t.gflops;
        log(`kernels: ${name} ${row.name}: ${r.pctTorch.toFixed(0)}% of PyTorch (${t.gflops.toFixed(2)} GFLOP/s), ${r.pctPeak.toFixed(0)}% of peak`);
      }
    }
  }
  return {
    config: { command: o.command, date: new Date().toISOString(), machine: machine(), quick: o.quick },
    backends: targets.map(({ name, be }) => ({ name, device: be.device })),
    peak,
    scalarLoopGflops: scalar,
    torch: typeof torch === "string" ? null : (torchRun as Omit<TorchKernels, "results">),
    rows,
    skipped,
    wall_seconds: (performance.now() - t0) / 1000,
  };
}
