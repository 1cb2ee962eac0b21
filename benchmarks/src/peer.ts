/**
 * The PyTorch peer baseline (`lowrank bench peer`): the same training step (model shape, LoRA
 * config, batch, sequence length, AdamW, clipping) in Lowrank on each backend and in PyTorch on
 * the CPU (benchmarks/src/peer_torch.py under Debian's /usr/bin/python3 with OpenBLAS,
 * OPENBLAS_NUM_THREADS=2; scripts/install-peer.sh installs it), in one run:
 *   torch, then Lowrank on every backend, then torch again,
 * so a change in machine load between them shows up in torch's spread instead of in the ratio.
 * ratio = Lowrank tokens/s / PyTorch tokens/s (median step of each). Then one profiled Lowrank
 * run on the CPU splits its step by kernel (profile.ts), to show where the gap is.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Backend } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { BENCH_DIR, type Machine, log, machine, median } from "./common.ts";
import { tryWebGpu } from "./kernels.ts";
import { SHAPES, type Shape, randomModel } from "./models.ts";
import { type OpStat, profileBackend } from "./profile.ts";
import { type MethodSpec, TooSlowError, timeSteps } from "./step.ts";
import { type ProductRun, productRun } from "./product.ts";

export interface PeerCase {
  shape: string;
  batch: number;
  seq: number;
  steps: number;
  warmup: number;
  /** Backends to run Lowrank on ("cpu", "webgpu"). */
  backends: string[];
  /** Steps on a slow backend (software WebGPU): fewer, with a per-step limit. */
  slowSteps?: number;
  /** Also run `finetune()` on this case (CPU) and report metrics.jsonl's tokens/s (product.ts). */
  product?: boolean;
}

export interface PeerConfig {
  name: string;
  methods: ("lora" | "qlora")[];
  rank: number;
  alpha: number;
  targets: "all-linear" | string[];
  dropout: number;
  lr: number;
  cases: PeerCase[];
  torch: { python: string; env: Record<string, string>; threads: number };
  /** A Lowrank step slower than this is abandoned (reported as skipped, with the time). */
  maxStepSeconds: number;
  /** Profiled steps (after one warm-up) per method on the CPU. */
  profileSteps: number;
}

export interface TorchRun {
  tokens_per_s: number;
  step_s_all: number[];
  losses: number[];
  params: number;
  trainable_params: number;
  torch_version: string;
  blas_libraries: string[];
  torch_threads: number;
  openblas_num_threads: string | null;
  recompute: boolean;
}

export interface PeerRow {
  shape: string;
  method: "lora" | "qlora";
  backend: string;
  device: string;
  tokens_per_step: number;
  lowrank_tokens_per_s: number | null;
  torch_tokens_per_s: number | null;
  ratio: number | null;
  lowrank_step_ms: number[];
  /** Both torch runs' timed steps. */
  torch_step_ms: number[];
  lowrank_first_losses: number[];
  torch_first_losses: number[];
  trainable_params: { lowrank: number | null; torch: number | null };
  recompute: boolean | null;
  skipped?: string;
  /** `finetune()` on the same shape and config (product.ts): the CLI's own tokens/s from metrics.jsonl. */
  product?: ProductRun | { skipped: string };
}

export interface PeerProfile {
  shape: string;
  method: "lora" | "qlora";
  step_ms: number;
  /** Time inside backend calls (kernels) per step. */
  kernel_ms: number;
  /** step - kernels: autograd bookkeeping, views, scopes, loader, optimizer orchestration. */
  host_ms: number;
  ops: (OpStat & { ms_per_step: number; pct: number; gflops?: number })[];
}

export interface PeerResult {
  config: PeerConfig & { command: string; date: string; machine: Machine; torch_available: boolean; torch_reason?: string };
  /** The headline: the first case, LoRA, CPU. */
  backend: string;
  lowrank_tokens_per_s: number | null;
  torch_tokens_per_s: number | null;
  ratio: number | null;
  results: PeerRow[];
  torch_runs: Record<string, TorchRun[]>;
  profiles: PeerProfile[];
  wall_seconds: number;
}

export function runPython(python: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((done) => {
    const child = spawn(python, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d));
    child.stderr.on("data", (d: Buffer) => (err += d));
    child.on("error", (e) => done({ code: null, out, err: `${err}${e.message}` }));
    child.on("close", (code) => done({ code, out, err }));
  });
}

/** Whether the peer interpreter can import torch, and why not. */
export async function torchAvailable(python: string): Promise<{ ok: boolean; reason?: string }> {
  if (!existsSync(python)) return { ok: false, reason: `${python} not found (Debian's python3; run scripts/install-peer.sh as root)` };
  const r = await runPython(python, ["-c", "import torch; print(torch.__version__)"], {});
  if (r.code !== 0) return { ok: false, reason: `${python} cannot import torch (${r.err.trim().split("\n").pop()}); run scripts/install-peer.sh as root` };
  return { ok: true };
}

function torchArgs(s: Shape, c: PeerCase, cfg: PeerConfig, method: string): string[] {
  const a = [
    join(BENCH_DIR, "src", "peer_torch.py"),
    "--method",
    method,
    "--dim",
    `${s.dim}`,
    "--layers",
    `${s.layers}`,
    "--heads",
    `${s.heads}`,
    "--kv-heads",
    `${s.kvHeads}`,
    "--hidden",
    `${s.hidden}`,
    "--vocab",
    `${s.vocab}`,
    "--batch",
    `${c.batch}`,
    "--seq",
    `${c.seq}`,
    "--rank",
    `${cfg.rank}`,
    "--alpha",
    `${cfg.alpha}`,
    "--dropout",
    `${cfg.dropout}`,
    "--lr",
    `${cfg.lr}`,
    "--steps",
    `${c.steps}`,
    "--warmup",
    `${c.warmup}`,
    "--threads",
    `${cfg.torch.threads}`,
    "--targets",
    cfg.targets === "all-linear" ? "all-linear" : cfg.targets.join(","),
  ];
  if (s.tied) a.push("--tied");
  return a;
}

async function torchRun(s: Shape, c: PeerCase, cfg: PeerConfig, method: string): Promise<TorchRun> {
  const r = await runPython(cfg.torch.python, torchArgs(s, c, cfg, method), cfg.torch.env);
  if (r.code !== 0) throw new Error(`peer_torch.py failed (exit ${r.code}): ${r.err.trim().slice(-2000)}`);
  return JSON.parse(r.out.trim().split("\n").pop() as string) as TorchRun;
}

async function backendFor(name: string): Promise<Backend | string> {
  if (name === "cpu") return createCpuBackend();
  if (name === "webgpu") return await tryWebGpu();
  return `unknown backend ${name}`;
}

export async function runPeer(cfg: PeerConfig, o: { command: string; quick: boolean; webgpu?: boolean; dataDir?: string | null }): Promise<PeerResult> {
  const t0 = performance.now();
  const avail = await torchAvailable(cfg.torch.python);
  if (!avail.ok) log(`peer: PyTorch unavailable: ${avail.reason}; Lowrank is measured alone, ratios are null`);
  const results: PeerRow[] = [];
  const torchRuns: Record<string, TorchRun[]> = {};
  const profiles: PeerProfile[] = [];
  for (const c of cfg.cases) {
    const shape = SHAPES[c.shape];
    const steps = o.quick ? Math.min(c.steps, 2) : c.steps;
    const cc = { ...c, steps, warmup: o.quick ? 1 : c.warmup };
    for (const method of cfg.methods) {
      const key = `${c.shape}/${method}`;
      const torch: TorchRun[] = [];
      if (avail.ok) torch.push(await torchRun(shape, cc, cfg, method));
      const spec: MethodSpec = { method, rank: cfg.rank, alpha: cfg.alpha, targets: cfg.targets, dropout: cfg.dropout };
      const rows: PeerRow[] = [];
      // --no-webgpu: the rows of other backends are left out, not reported as skipped.
      for (const bname of c.backends.filter((b) => b === "cpu" || o.webgpu !== false)) {
        const be = await backendFor(bname);
        const row: PeerRow = {
          shape: c.shape,
          method,
          backend: bname,
          device: typeof be === "string" ? "" : be.device,
          tokens_per_step: c.batch * c.seq,
          lowrank_tokens_per_s: null,
          torch_tokens_per_s: null,
          ratio: null,
          lowrank_step_ms: [],
          torch_step_ms: [],
          lowrank_first_losses: [],
          torch_first_losses: [],
          trainable_params: { lowrank: null, torch: null },
          recompute: null,
        };
        rows.push(row);
        if (typeof be === "string") {
          row.skipped = `no ${bname} backend: ${be}`;
          continue;
        }
        const slow = bname !== "cpu";
        const model = randomModel(shape, be, 0);
        try {
          const t = await timeSteps(model, spec, {
            batch: c.batch,
            seq: c.seq,
            steps: slow ? Math.min(steps, c.slowSteps ?? steps) : steps,
            warmup: slow ? 1 : cc.warmup,
            lr: cfg.lr,
            maxStepMs: 1000 * cfg.maxStepSeconds,
          });
          Object.assign(row, {
            lowrank_tokens_per_s: t.tokensPerS,
            lowrank_step_ms: t.stepMs,
            lowrank_first_losses: t.losses.slice(0, 3),
            recompute: t.recompute,
          });
          row.trainable_params.lowrank = t.trainable;
          log(`peer: ${key} lowrank ${bname}: ${Math.round(t.tokensPerS)} tok/s (steps ${t.stepMs.map((x) => Math.round(x)).join(", ")} ms)`);
        } catch (e) {
          if (!(e instanceof TooSlowError)) throw e;
          row.skipped = `${bname}: ${e.message}; not timed further`;
          log(`peer: ${key} lowrank ${bname}: skipped: ${row.skipped}`);
        } finally {
          model.dispose();
        }
        try {
          if (bname === "cpu" && c.product && row.lowrank_tokens_per_s !== null) {
            if (!o.dataDir) row.product = { skipped: "no data directory (stories260K's tokenizer and Tiny Shakespeare)" };
            else {
              row.product = await productRun(be, shape, spec, { batch: c.batch, seq: c.seq, steps, warmup: cc.warmup, lr: cfg.lr, dataDir: o.dataDir });
              log(`peer: ${key} lowrank finetune (metrics.jsonl): ${Math.round(row.product.tokens_per_s)} tok/s`);
            }
          }
        } finally {
          be.dispose();
        }
      }
      if (avail.ok) torch.push(await torchRun(shape, cc, cfg, method));
      torchRuns[key] = torch;
      if (avail.ok) {
        const stepMs = torch.flatMap((r) => r.step_s_all.map((x) => 1000 * x));
        const tps = (1000 * c.batch * c.seq) / median(stepMs);
        log(`peer: ${key} torch: ${Math.round(tps)} tok/s (runs ${torch.map((r) => Math.round(r.tokens_per_s)).join(", ")})`);
        for (const row of rows) {
          Object.assign(row, { torch_tokens_per_s: tps, torch_step_ms: stepMs, torch_first_losses: torch[0].losses.slice(0, 3) });
          row.trainable_params.torch = torch[0].trainable_params;
          if (row.lowrank_tokens_per_s !== null) row.ratio = row.lowrank_tokens_per_s / tps;
        }
      }
      results.push(...rows);
      if (cfg.profileSteps > 0 && c.backends.includes("cpu")) profiles.push(await profileCpu(shape, c, spec, cfg, o.quick ? 1 : cfg.profileSteps));
    }
  }
  const head = results.find((r) => r.backend === "cpu" && r.method === "lora") ?? results[0];
  return {
    config: {
      ...cfg,
      command: o.command,
      date: new Date().toISOString(),
      machine: machine(),
      torch_available: avail.ok,
      ...(avail.reason ? { torch_reason: avail.reason } : {}),
    },
    backend: head.backend,
    lowrank_tokens_per_s: head.lowrank_tokens_per_s,
    torch_tokens_per_s: head.torch_tokens_per_s,
    ratio: head.ratio,
    results,
    torch_runs: torchRuns,
    profiles,
    wall_seconds: (performance.now() - t0) / 1000,
  };
}

/** One warm-up step, then `steps` steps through the profiling proxy; per-op time per step. */
async function profileCpu(shape: Shape, c: PeerCase, spec: MethodSpec, cfg: PeerConfig, steps: number): Promise<PeerProfile> {
  const cpu = createCpuBackend();
  const prof = profileBackend(cpu);
  const model = randomModel(shape, prof.backend, 0);
  let t0 = 0;
  try {
    await timeSteps(model, spec, {
      batch: c.batch,
      seq: c.seq,
      steps,
      warmup: 1,
      lr: cfg.lr,
      onStep: (i) => {
        if (i === 0) {
          prof.reset();
          t0 = performance.now();
        }
      },
    });
  } finally {
    model.dispose();
    cpu.dispose();
  }
  const stepMs = (performance.now() - t0) / steps;
  const kernelMs = prof.totalMs() / steps;
  const ops = prof.stats().map((s) => ({
    ...s,
    ms_per_step: s.ms / steps,
    pct: (100 * s.ms) / steps / stepMs,
    ...(s.flops ? { gflops: s.flops / s.ms / 1e6 } : {}),
  }));
  log(`peer: profile ${shape.name}/${spec.method}: ${stepMs.toFixed(0)} ms/step, kernels ${kernelMs.toFixed(0)} ms, host ${(stepMs - kernelMs).toFixed(0)} ms`);
  return { shape: shape.name, method: spec.method as "lora" | "qlora", step_ms: stepMs, kernel_ms: kernelMs, host_ms: stepMs - kernelMs, ops };
}

export function loadPeerConfig(file: string): PeerConfig {
  return JSON.parse(readFileSync(file, "utf8")) as PeerConfig;
}
