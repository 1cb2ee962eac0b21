/**
 * Admission checks for fine-tuning jobs, before anything is stored or started:
 *
 * - memory: the job's planned peak (`lowrank plan`'s estimate, @lowrank/trainer's `estimate`, on
 *   the served model's shape) plus the worker's fixed overhead must fit the server's job memory
 *   budget; otherwise 400 with the planned figure and the largest batch_size that would fit;
 * - queue: at most `maxQueued` jobs waiting; beyond that 429 with Retry-After (the running jobs'
 *   shortest ETA, else a minute).
 *
 * Kept apart from the runner so the job lifecycle code does not change.
 */
import { totalmem } from "node:os";
import { type PlanEstimate, estimate, planShapeOf } from "@lowrank/trainer/node";
import { invalid, rateLimited } from "../errors.ts";
import type { JobParams, JobStore } from "./store.ts";

/** A worker process before its first step: the runtime, the tokenizer, the dataset's token ids, the backend. */
export const WORKER_OVERHEAD_BYTES = 160 * 2 ** 20;

type ModelConfig = Parameters<typeof planShapeOf>[0];

export interface AdmissionOptions {
  /** Bytes one job may plan to use (default: half the machine's memory, split between concurrent jobs). */
  budgetBytes: number;
  /** Jobs allowed to wait in the queue (default 16). */
  maxQueued: number;
}

export function defaultJobBudget(maxConcurrent: number): number {
  return Math.floor(totalmem() / 2 / Math.max(1, maxConcurrent));
}

const MiB = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

export function planJob(p: Pick<JobParams, "method" | "rank" | "target_modules" | "batch_size" | "seq_len" | "dropout">, config: ModelConfig): PlanEstimate {
  return estimate({
    shape: planShapeOf(config),
    method: p.method,
    rank: p.rank,
    targets: p.target_modules,
    batch: p.batch_size,
    seq: p.seq_len,
    dropout: p.dropout,
  });
}

/** 400 when the planned peak does not fit the budget; returns the planned bytes otherwise. */
export function checkJobMemory(p: JobParams, config: ModelConfig, budgetBytes: number): number {
  const planned = planJob(p, config).totalBytes + WORKER_OVERHEAD_BYTES;
  if (planned <= budgetBytes) return planned;
  let fit = 0;
  for (let lo = 1, hi = p.batch_size - 1; lo <= hi; ) {
    const mid = (lo + hi) >> 1;
    if (planJob({ ...p, batch_size: mid }, config).totalBytes + WORKER_OVERHEAD_BYTES <= budgetBytes) {
      fit = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  const hint = fit > 0 ? `; batch_size ${fit} fits at seq_len ${p.seq_len}` : "; even batch_size 1 does not fit at this seq_len: lower seq_len or rank";
  const field = fit > 0 ? "batch_size" : "seq_len";
  throw invalid(
    `this job plans to use ${MiB(planned)} (lowrank plan --method ${p.method} --rank ${p.rank} --batch-size ${p.batch_size} --seq-len ${
      p.seq_len
    } on the served model, plus ${MiB(WORKER_OVERHEAD_BYTES)} for the worker); the server's job memory budget is ${MiB(budgetBytes)}${hint}`,
    field,
  );
}

/** 429 with Retry-After when `maxQueued` jobs already wait. */
export function checkJobQueue(store: JobStore, maxQueued: number): void {
  const waiting = store.list({ status: "queued", limit: maxQueued + 1 }).length;
  if (waiting < maxQueued) return;
  const etas = store
    .list({ status: "running", limit: 100 })
    .map((j) => j.progress?.eta_s)
    .filter((x): x is number => typeof x === "number" && x > 0);
  const retry = etas.length ? Math.min(3600, Math.ceil(Math.min(...etas))) : 60;
  throw rateLimited(`${waiting} fine-tuning jobs are already queued (limit ${maxQueued}); retry after ${retry} s or cancel a queued job`, retry);
}
