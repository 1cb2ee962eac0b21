/** Fine-tuning jobs in the database: the state machine's only writer. */
import { randomUUID } from "node:crypto";
import { conflict } from "../errors.ts";
import type { Db } from "../storage/db.ts";
import { now } from "../storage/schema.ts";

export const JOB_STATES = ["queued", "running", "succeeded", "failed", "cancelled"] as const;
export type JobStatus = (typeof JOB_STATES)[number];
export const TERMINAL: readonly JobStatus[] = ["succeeded", "failed", "cancelled"];

/** Allowed transitions; running -> queued is a shutdown (the job resumes from its checkpoint later). */
const NEXT: Record<JobStatus, readonly JobStatus[]> = {
  queued: ["running", "cancelled", "failed"],
  running: ["succeeded", "failed", "cancelled", "queued"],
  succeeded: [],
  failed: [],
  cancelled: [],
};

/** What `POST /v1/fine-tunes` accepted, after validation and defaults. */
export interface JobParams {
  adapter_name: string;
  method: "lora" | "qlora";
  rank: number;
  alpha: number;
  dropout: number;
  target_modules: string[] | "all-linear";
  /** The other PEFT LoraConfig fields of the request (use_dora, use_rslora, modules_to_save, ...); absent in older jobs. */
  lora?: Record<string, unknown>;
  seed: number;
  steps: number | null;
  epochs: number | null;
  learning_rate: number;
  batch_size: number;
  seq_len: number;
  warmup: number;
  checkpoint_every: number;
  eval_fraction: number;
  data_format: "text" | "jsonl" | "alpaca" | "chat" | null;
  description: string | null;
}

export interface JobProgress {
  step: number;
  total: number;
  loss: number;
  tokens_per_s: number;
  eta_s: number;
}

export interface JobResult {
  adapter: string;
  name: string;
  version: number;
  eval_metrics: Record<string, unknown>;
}

export interface Job {
  id: string;
  object: "fine_tuning.job";
  status: JobStatus;
  adapter_name: string;
  dataset_id: string;
  hyperparameters: JobParams;
  created_by: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  error: { message: string } | null;
  result: JobResult | null;
  progress: JobProgress | null;
  attempts: number;
  /** The checkpoint step the latest attempt resumed from (null: started fresh). */
  resumed_from_step: number | null;
}

interface Row {
  id: string;
  status: JobStatus;
  adapter_name: string;
  params: string;
  dataset_id: string;
  created_by: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  error: string | null;
  result: string | null;
  progress: string | null;
  attempts: number;
  resumed_from: number | null;
}

export class JobStore {
  constructor(private readonly db: Db) {}

  create(params: JobParams, datasetId: string, createdBy: string | null): Job {
    const id = `ftjob-${randomUUID().replaceAll("-", "").slice(0, 20)}`;
    this.db.run(
      "INSERT INTO jobs (id, status, adapter_name, params, dataset_id, created_by, created_at) VALUES (?, 'queued', ?, ?, ?, ?, ?)",
      id,
      params.adapter_name,
      JSON.stringify(params),
      datasetId,
      createdBy,
      now(),
    );
    return this.get(id) as Job;
  }

  get(id: string): Job | undefined {
    const r = this.db.get<Row>("SELECT * FROM jobs WHERE id = ?", id);
    return r ? toJob(r) : undefined;
  }

  list(opts: { status?: JobStatus; limit?: number } = {}): Job[] {
    const rows = opts.status
      ? this.db.all<Row>("SELECT * FROM jobs WHERE status = ? ORDER BY created_at DESC, id LIMIT ?", opts.status, opts.limit ?? 100)
      : this.db.all<Row>("SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?", opts.limit ?? 100);
    return rows.map(toJob);
  }

  /** Jobs to (re)start after a restart, oldest first. */
  unfinished(): Job[] {
    return this.db.all<Row>("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id").map(toJob);
  }

  /** Move to `to`; refuses transitions the state machine does not have. */
  transition(id: string, to: JobStatus, patch: { error?: string | null; result?: JobResult; resumedFrom?: number | null } = {}): Job {
    return this.db.transaction(() => {
      const j = this.get(id);
      if (!j) throw new Error(`job ${id} vanished`);
      if (!NEXT[j.status].includes(to)) throw conflict(`job ${id} is ${j.status}; it cannot become ${to}`, "id");
      const t = now();
      if (to === "running") {
        this.db.run(
          "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), attempts = attempts + 1, resumed_from = ?, error = NULL WHERE id = ?",
          to,
          t,
          patch.resumedFrom ?? null,
          id,
        );
      } else if (to === "queued") {
        this.db.run("UPDATE jobs SET status = ? WHERE id = ?", to, id);
      } else {
        this.db.run(
          "UPDATE jobs SET status = ?, finished_at = ?, error = ?, result = ? WHERE id = ?",
          to,
          t,
          patch.error ?? null,
          patch.result ? JSON.stringify(patch.result) : null,
          id,
        );
      }
      return this.get(id) as Job;
    });
  }

  setResumedFrom(id: string, step: number | null): void {
    this.db.run("UPDATE jobs SET resumed_from = ? WHERE id = ?", step, id);
  }

  setProgress(id: string, p: JobProgress): void {
    this.db.run("UPDATE jobs SET progress = ? WHERE id = ?", JSON.stringify(p), id);
  }
}

function toJob(r: Row): Job {
  return {
    id: r.id,
    object: "fine_tuning.job",
    status: r.status,
    adapter_name: r.adapter_name,
    dataset_id: r.dataset_id,
    hyperparameters: JSON.parse(r.params) as JobParams,
    created_by: r.created_by,
    created_at: r.created_at,
    started_at: r.started_at,
    finished_at: r.finished_at,
    error: r.error ? { message: r.error } : null,
    result: r.result ? (JSON.parse(r.result) as JobResult) : null,
    progress: r.progress ? (JSON.parse(r.progress) as JobProgress) : null,
    attempts: r.attempts,
    resumed_from_step: r.resumed_from,
  };
}
