/**
 * PyTorch's f32 matmul on the kernel suite's shapes (kernels_torch.py under the peer interpreter,
 * with the peer config's threads and environment), so each matmul row has a reference measured in
 * the same run on the same machine.
 */
import { join } from "node:path";
import { BENCH_DIR } from "./common.ts";
import { type PeerConfig, runPython, torchAvailable } from "./peer.ts";

export interface TorchKernels {
  python: string;
  torch_version: string;
  /** torch.get_num_threads(); BLAS threads come from `env` (OPENBLAS_NUM_THREADS). */
  threads: number;
  env: Record<string, string>;
  /** Per case: the mean of the runs' median ms (and its GFLOP/s), and each run's GFLOP/s. */
  results: Record<string, { ms: number; gflops: number; runs: number[] }>;
}

export interface TorchMatmulCase {
  name: string;
  M: number;
  K: number;
  N: number;
  transposeA?: boolean;
  transposeB?: boolean;
}

/** The measurements, or why there are none. */
export async function torchKernels(
  cfg: PeerConfig["torch"],
  cases: TorchMatmulCase[],
  o: { targetMs: number; samples: number },
): Promise<TorchKernels | string> {
  const avail = await torchAvailable(cfg.python);
  if (!avail.ok) return avail.reason ?? "torch unavailable";
  const args = [
    join(BENCH_DIR, "src", "kernels_torch.py"),
    "--threads",
    `${cfg.threads}`,
    "--target-ms",
    `${o.targetMs}`,
    "--samples",
    `${o.samples}`,
    JSON.stringify(cases),
  ];
  const r = await runPython(cfg.python, args, cfg.env);
  if (r.code !== 0) return `kernels_torch.py failed (exit ${r.code}): ${r.err.trim().slice(-500)}`;
  const j = JSON.parse(r.out) as { torch_version: string; threads: number; results: Record<string, { ms: number; gflops: number }> };
  const results: TorchKernels["results"] = {};
  for (const [name, x] of Object.entries(j.results)) results[name] = { ...x, runs: [x.gflops] };
  return { python: cfg.python, torch_version: j.torch_version, threads: j.threads, env: cfg.env, results };
}

/** Two runs (before and after Lowrank's, so a change in machine load shows in torch's spread) as one. */
export function mergeTorchRuns(a: TorchKernels | string, b: TorchKernels | string): TorchKernels | string {
  if (typeof a === "string" || typeof b === "string") return typeof a === "string" ? a : b;
  const results: TorchKernels["results"] = {};
  for (const [name, x] of Object.entries(a.results)) {
    const y = b.results[name];
    if (!y) continue;
    const ms = (x.ms + y.ms) / 2;
    results[name] = { ms, gflops: (x.gflops * x.ms) / ms, runs: [...x.runs, ...y.runs] };
  }
  return { ...a, results };
}
