/**
 * Job orchestration with Effect. Each job is one fiber:
 *
 *   wait for a training slot (Semaphore) -> running -> acquireUseRelease(spawn worker, await exit,
 *   stop worker) -> register the adapter -> succeeded
 *
 * Typed failures pick the final state: WorkerFailed -> failed, WorkerStopped -> back to queued
 * (it resumes from its checkpoint), interruption -> cancelled, or queued when the server is
 * shutting down. The release step owns the child process: on cancel it kills it; on shutdown it
 * asks for a graceful stop and waits (bounded) for the checkpoint before killing.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Data, Effect, Exit, Fiber, Semaphore } from "effect";
import type { ModelHost } from "../inference/host.ts";
import { CONFIG_FILE, type Registry, WEIGHTS_FILE } from "../registry/registry.ts";
import { JobEvents } from "./events.ts";
import { EXIT_DONE, EXIT_STOPPED, type WorkerEvent, type WorkerSpec } from "./spec.ts";
import { type Job, type JobResult, type JobStore, TERMINAL } from "./store.ts";

export class WorkerFailed extends Data.TaggedError("WorkerFailed")<{ message: string; exitCode: number | null }> {}
export class WorkerStopped extends Data.TaggedError("WorkerStopped")<{ step: number | null }> {}
export class RegisterFailed extends Data.TaggedError("RegisterFailed")<{ message: string }> {}

export interface RunnerOptions {
  jobsDir: string;
  /** Training jobs at a time (default 1: they compete with inference for the same cores). */
  maxConcurrent?: number;
  /** How long a graceful stop may take before the worker is killed (default 30 s). */
  stopGraceMs?: number;
  /** argv prefix that runs a TypeScript file on this runtime (default: detected). */
  command?: string[];
  log?: (line: string) => void;
}

const WORKER = fileURLToPath(new URL("./worker.ts", import.meta.url));

/** How to run worker.ts on the current runtime. */
export function workerCommand(): string[] {
  const g = globalThis as { Bun?: unknown; Deno?: { execPath(): string } };
  if (g.Deno) return [g.Deno.execPath(), "run", "-A"];
  if (g.Bun) return [process.execPath];
  return [process.execPath, "--import", import.meta.resolve("tsx")];
}

export class JobRunner {
  readonly events = new JobEvents();
  readonly #fibers = new Map<string, Fiber.Fiber<void, never>>();
  readonly #slots: Semaphore.Semaphore;
  readonly #opts: Required<Omit<RunnerOptions, "log">> & { log: (l: string) => void };
  #shuttingDown = false;

  constructor(private readonly store: JobStore, private readonly registry: Registry, private readonly host: ModelHost, opts: RunnerOptions) {
    this.#opts = {
      jobsDir: opts.jobsDir,
      maxConcurrent: opts.maxConcurrent ?? 1,
      stopGraceMs: opts.stopGraceMs ?? 30_000,
      command: opts.command ?? workerCommand(),
      log: opts.log ?? (() => {}),
    };
    this.#slots = Semaphore.makeUnsafe(this.#opts.maxConcurrent);
  }

  jobDir(id: string): string {
    return join(this.#opts.jobsDir, id);
  }

  outputDir(id: string): string {
    return join(this.jobDir(id), "out");
  }

  /** Start (or restart after a crash/shutdown) every job that is queued or was running. */
  recover(): number {
    const jobs = this.store.unfinished();
    for (const j of jobs) {
      if (j.status === "running") this.store.transition(j.id, "queued");
      this.enqueue(j.id);
    }
    return jobs.length;
  }

  enqueue(id: string): void {
    if (this.#shuttingDown || this.#fibers.has(id)) return;
    const fiber = Effect.runFork(this.#lifecycle(id));
    this.#fibers.set(id, fiber);
    fiber.addObserver(() => this.#fibers.delete(id));
  }

  /** Cancel a queued or running job; resolves when it has stopped. */
  async cancel(id: string): Promise<Job> {
    const fiber = this.#fibers.get(id);
    if (fiber) await Effect.runPromise(Fiber.interrupt(fiber));
    const j = this.store.get(id) as Job;
    if (!TERMINAL.includes(j.status)) return this.#finish(id, "cancelled");
    return j;
  }

  /** Graceful shutdown: running workers checkpoint and stop; their jobs stay queued and resume on the next start. */
  async shutdown(): Promise<void> {
    this.#shuttingDown = true;
    await Promise.all([...this.#fibers.values()].map((f) => Effect.runPromise(Fiber.interrupt(f))));
  }

  #finish(id: string, to: "succeeded" | "failed" | "cancelled" | "queued", patch: { error?: string; result?: JobResult } = {}): Job {
    const j = this.store.transition(id, to, patch);
    this.events.publish(id, { type: "status", status: j.status, ...(j.error ? { error: j.error.message } : {}), ...(j.result ? { result: j.result } : {}) });
    if (TERMINAL.includes(j.status)) this.events.close(id);
    return j;
  }

  #lifecycle(id: string): Effect.Effect<void> {
    const self = this;
    const attempt = Effect.gen(function* () {
      const job = self.store.get(id) as Job;
      const spec = yield* Effect.tryPromise({
        try: () => self.#writeSpec(job),
        catch: (e) => new WorkerFailed({ message: (e as Error).message, exitCode: null }),
      });
      const resumed = yield* Effect.promise(() => latestCheckpoint(spec.output));
      const running = self.store.transition(id, "running", { resumedFrom: resumed });
      self.events.publish(id, { type: "status", status: running.status, attempt: running.attempts, resumed_from_step: resumed });
      yield* Effect.acquireUseRelease(
        Effect.sync(() => self.#spawn(spec)),
        (child) => self.#await(id, child, spec),
        (child, exit) => self.#stop(child, Exit.hasInterrupts(exit) && self.#shuttingDown),
      );
      const result = yield* self.#register(job, spec);
      self.#finish(id, "succeeded", { result });
    });
    return this.#slots
      .withPermits(1)(attempt)
      .pipe(
        Effect.catchTag("WorkerFailed", (e) => Effect.sync(() => void self.#finish(id, "failed", { error: e.message }))),
        Effect.catchTag("RegisterFailed", (e) =>
          Effect.sync(() => void self.#finish(id, "failed", { error: `training finished but the adapter could not be registered: ${e.message}` })),
        ),
        Effect.catchTag("WorkerStopped", (e) =>
          Effect.sync(() => {
            self.#opts.log(`job ${id}: stopped at step ${e.step ?? "?"}; it resumes on the next start`);
            self.#finish(id, "queued");
          }),
        ),
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            const j = self.store.get(id);
            if (!j || TERMINAL.includes(j.status)) return;
            if (self.#shuttingDown) {
              if (j.status === "running") self.#finish(id, "queued");
            } else self.#finish(id, "cancelled");
          }),
        ),
      );
  }

  async #writeSpec(job: Job): Promise<WorkerSpec> {
    const dir = this.jobDir(job.id);
    await mkdir(dir, { recursive: true });
    const dataset = this.registry.getDataset(job.dataset_id);
    if (!dataset) throw new Error(`job ${job.id}: dataset ${job.dataset_id} is gone`);
    const backend = this.host.backend.name === "webgpu" ? "webgpu" : "cpu";
    const spec: WorkerSpec = {
      jobId: job.id,
      backend,
      model: this.host.dir,
      data: this.registry.datasetPath(dataset),
      output: this.outputDir(job.id),
      params: job.hyperparameters,
    };
    await writeFile(join(dir, "spec.json"), `${JSON.stringify(spec, null, 2)}\n`);
    return spec;
  }

  #spawn(spec: WorkerSpec): ChildProcess {
    const [cmd, ...args] = this.#opts.command;
    // detached: its own process group, so a terminal's Ctrl-C reaches only the server, which stops the worker gracefully.
    const child = spawn(cmd, [...args, WORKER, join(this.jobDir(spec.jobId), "spec.json")], {
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
      env: { ...process.env, NO_COLOR: "1" },
    });
    child.stdin?.on("error", () => {}); // EPIPE after the worker exited
    return child;
  }

  /** Follow the worker's event lines until it exits; the exit code decides the typed outcome. */
  #await(id: string, child: ChildProcess, spec: WorkerSpec): Effect.Effect<void, WorkerFailed | WorkerStopped> {
    return Effect.callback<void, WorkerFailed | WorkerStopped>((resume) => {
      let lastError: string | null = null;
      let stoppedAt: number | null = null;
      let stderr = "";
      let buf = "";
      const metrics = new MetricsTail(join(spec.output, "metrics.jsonl"));
      let lastSaved = 0;
      child.stdout?.setEncoding("utf8");
      child.stdout?.on("data", (s: string) => {
        buf += s;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let ev: WorkerEvent;
          try {
            ev = JSON.parse(line) as WorkerEvent;
          } catch {
            continue; // stray output from a dependency
          }
          if (ev.type === "error") lastError = ev.message;
          else if (ev.type === "stopped") stoppedAt = ev.step;
          else if (ev.type === "progress") {
            const p = { step: ev.step, total: ev.total, loss: ev.loss, tokens_per_s: ev.tokens_per_s, eta_s: ev.eta_s };
            if (Date.now() - lastSaved > 500 || ev.step === ev.total) {
              this.store.setProgress(id, p);
              lastSaved = Date.now();
            }
            this.events.publish(id, { type: "progress", ...p });
            void metrics.poll().then((recs) => recs.forEach((r) => this.events.publish(id, { type: "metrics", ...r })));
            continue;
          }
          this.events.publish(id, ev as unknown as Record<string, unknown> & { type: string });
        }
      });
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", (s: string) => (stderr = (stderr + s).slice(-4000)));
      child.on("error", (e) => resume(Effect.fail(new WorkerFailed({ message: `cannot start the training worker: ${e.message}`, exitCode: null }))));
      child.on("exit", (code, signal) => {
        void metrics.poll().then((recs) => recs.forEach((r) => this.events.publish(id, { type: "metrics", ...r })));
        if (code === EXIT_DONE) resume(Effect.void);
        else if (code === EXIT_STOPPED) resume(Effect.fail(new WorkerStopped({ step: stoppedAt })));
        else {
          const why = lastError ?? (stderr.trim().split("\n").slice(-3).join(" | ") || `exit code ${code}${signal ? `, signal ${signal}` : ""}`);
          resume(Effect.fail(new WorkerFailed({ message: why, exitCode: code })));
        }
      });
    });
  }

  /** Release: graceful (stop at the next checkpoint, bounded wait) on shutdown; a kill otherwise. */
  #stop(child: ChildProcess, graceful: boolean): Effect.Effect<void> {
    if (child.exitCode !== null || child.signalCode !== null) return Effect.void;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    return Effect.promise(async () => {
      if (graceful) {
        child.stdin?.write("stop\n");
        const timer = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), this.#opts.stopGraceMs).unref());
        if ((await Promise.race([exited.then(() => "exited" as const), timer])) === "exited") return;
        this.#opts.log(`worker ${child.pid} did not stop within ${this.#opts.stopGraceMs} ms; killing it (it resumes from its last checkpoint)`);
      }
      child.kill("SIGKILL");
      await exited;
    });
  }

  /** Copy the finished adapter into the registry as <adapter_name>@<next version>. */
  #register(job: Job, spec: WorkerSpec): Effect.Effect<JobResult, RegisterFailed> {
    return Effect.tryPromise({
      try: async () => {
        const staged = this.registry.stagingDir(`job-${job.id}`);
        for (const f of [CONFIG_FILE, WEIGHTS_FILE]) await copyFile(join(spec.output, f), join(staged, f));
        const report = JSON.parse(await readFile(join(spec.output, "eval_report.json"), "utf8").catch(() => "{}")) as Record<string, unknown>;
        const evalMetrics = {
          before: report.before ?? null,
          after: report.after ?? null,
          final_train_loss: report.final_train_loss ?? null,
          train_seconds: report.train_seconds ?? null,
          steps: report.steps ?? null,
        };
        const dataset = this.registry.getDataset(job.dataset_id);
        const v = await this.registry.addVersion({
          name: job.adapter_name,
          stagedDir: staged,
          base_model: this.host.id,
          base_model_hash: this.host.hash,
          dataset_hash: dataset ? `sha256:${dataset.sha256}` : null,
          hyperparameters: { ...job.hyperparameters, dataset_id: job.dataset_id },
          eval_metrics: evalMetrics,
          source: `job:${job.id}`,
          description: job.hyperparameters.description,
        });
        return { adapter: v.ref, name: v.name, version: v.version, eval_metrics: evalMetrics };
      },
      catch: (e) => new RegisterFailed({ message: (e as Error).message ?? String(e) }),
    });
  }
}

async function latestCheckpoint(output: string): Promise<number | null> {
  const { listCheckpoints } = await import("@lowrank/trainer/node");
  const steps = await listCheckpoints(output);
  return steps.length ? steps[steps.length - 1] : null;
}

/** Reads the lines appended to metrics.jsonl since the last poll. */
class MetricsTail {
  #offset = 0;
  #busy: Promise<Record<string, unknown>[]> | null = null;
  constructor(readonly path: string) {}

  poll(): Promise<Record<string, unknown>[]> {
    // One read at a time, so two polls never return the same lines.
    this.#busy = (this.#busy ?? Promise.resolve([])).then(() => this.#read());
    return this.#busy;
  }

  async #read(): Promise<Record<string, unknown>[]> {
    const text = await readFile(this.path, "utf8").catch(() => "");
    if (text.length < this.#offset) this.#offset = 0; // the trainer rewrote it (resume)
    const end = text.lastIndexOf("\n") + 1;
    if (end <= this.#offset) return [];
    const lines = text
      .slice(this.#offset, end)
      .split("\n")
      .filter((l) => l.trim());
    this.#offset = end;
    return lines.flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }
}
