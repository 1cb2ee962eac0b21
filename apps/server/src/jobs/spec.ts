/** What the server hands a training worker, and its mapping onto the trainer's configuration. */
import type { RunSpec } from "@lowrank/trainer/node";
import type { JobParams } from "./store.ts";

export interface WorkerSpec {
  jobId: string;
  /** The backend the server was started with; the worker trains on the same kind (default "cpu"). */
  backend?: "cpu" | "webgpu";
  model: string;
  data: string;
  output: string;
  params: JobParams;
}

/** Messages a worker prints, one JSON object per stdout line. */
export type WorkerEvent =
  | { type: "info"; message: string }
  | { type: "resumed"; step: number }
  | { type: "progress"; step: number; total: number; loss: number; tokens_per_s: number; eta_s: number }
  | { type: "stopped"; step: number }
  | { type: "result"; steps: number; total_steps: number; files: string[] }
  | { type: "error"; kind: "config" | "data" | "runtime"; message: string };

/** Exit codes: done, stopped at a checkpoint (resume later), failed, bad configuration. */
export const EXIT_DONE = 0;
export const EXIT_STOPPED = 75;
export const EXIT_FAILED = 1;
export const EXIT_CONFIG = 2;

export function finetuneInput(spec: Pick<WorkerSpec, "model" | "data" | "output" | "params">, resume?: string): RunSpec {
  const p = spec.params;
  return {
    model: spec.model,
    data: spec.data,
    output: spec.output,
    method: p.method,
    rank: p.rank,
    alpha: p.alpha,
    dropout: p.dropout,
    targetModules: p.target_modules,
    ...(p.lora && Object.keys(p.lora).length ? { lora: p.lora } : {}),
    seed: p.seed,
    ...(p.steps !== null ? { steps: p.steps } : {}),
    ...(p.epochs !== null ? { epochs: p.epochs } : {}),
    lr: p.learning_rate,
    batchSize: p.batch_size,
    seqLen: p.seq_len,
    warmup: p.warmup,
    saveEvery: p.checkpoint_every,
    saveTotalLimit: 2,
    evalFraction: p.eval_fraction,
    ...(p.data_format !== null ? { format: p.data_format } : {}),
    sampleTokens: 0,
    ...(resume ? { resume } : {}),
  };
}
