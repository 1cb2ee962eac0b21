/**
 * Start and stop the server. Startup acquires resources in order (database, backend, model,
 * job runner, listener) inside an Effect Scope: if any step fails, everything acquired so far is
 * released in reverse order. Graceful shutdown stops accepting connections, lets queued
 * inference finish, checkpoints running jobs (they resume on the next start), then releases the
 * rest through the same scope.
 */
import { tmpdir } from "node:os";
import { basename, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Data, Effect, Exit, Scope } from "effect";
import { createCpuBackend } from "@lowrank/backend-cpu";
import type { Backend } from "@lowrank/tensor";
import { KeyStore, adminToken } from "./auth.ts";
import { redactPaths } from "./errors.ts";
import { type Home, ensureHome } from "./home.ts";
import { createApp } from "./http/app.ts";
import type { Limits, ServerContext } from "./http/context.ts";
import { ModelHost } from "./inference/host.ts";
import { defaultJobBudget } from "./jobs/admission.ts";
import { JobRunner } from "./jobs/runner.ts";
import { JobStore } from "./jobs/store.ts";
import { listen } from "./listen.ts";
import { TokenizerPool } from "./tokenize/pool.ts";
import { weightsHash } from "./registry/files.ts";
import { Registry } from "./registry/registry.ts";
import { openDb } from "./storage/db.ts";
import { migrate } from "./storage/schema.ts";

export interface ServerOptions {
  /** Hugging Face model directory (config.json, *.safetensors, tokenizer.json). */
  modelDir: string;
  /** Registry database, adapter files, datasets, job outputs, admin.key. */
  home: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Default: a new CPU backend, owned (disposed) by the server. */
  backend?: Backend;
  /** LOWRANK_API_KEY is read from here (default process.env). */
  env?: Record<string, string | undefined>;
  log?: (line: string) => void;
  limits?: Partial<Limits>;
  /** Adapter cache capacity in bytes (default 256 MiB). */
  cacheBytes?: number;
  maxQueue?: number;
  /** Requests decoded together by continuous batching (default 32). */
  maxBatch?: number;
  /** Bytes the batch's KV caches may reach (default 256 MiB); a request that alone needs more is refused. */
  kvBudgetBytes?: number;
  maxConcurrentJobs?: number;
  /** Fine-tuning jobs allowed to wait; beyond that POST /v1/fine-tunes is a 429 with Retry-After (default 16). */
  maxQueuedJobs?: number;
  /** Planned peak memory one job may use (`lowrank plan`'s estimate; default half the machine's memory / maxConcurrentJobs). */
  jobMemoryBytes?: number;
  /** How long a running job may take to reach a checkpoint at shutdown (default 30 s). */
  stopGraceMs?: number;
  /** How long open connections get at shutdown (default 10 s). */
  connectionGraceMs?: number;
  workerCommand?: string[];
}

export interface RunningServer {
  url: string;
  host: string;
  port: number;
  modelId: string;
  home: Home;
  /** The admin key and where it came from; `generated` means this start created it (print it once). */
  admin: { token: string; source: "env" | "file" | "generated"; path: string };
  /** Jobs restarted after a previous run stopped or crashed. */
  recoveredJobs: number;
  ctx: ServerContext;
  fetch: (req: Request) => Response | Promise<Response>;
  shutdown(): Promise<void>;
}

export class StartupError extends Data.TaggedError("StartupError")<{ message: string; step: string }> {}

/** The repository (or installed package) root: paths under it never reach a client either. */
const REPO_ROOT = fileURLToPath(new URL("../../..", import.meta.url));

const DEFAULT_LIMITS: Limits = { maxBodyBytes: 1 << 20, maxUploadBytes: 1 << 30, maxDatasetBytes: 64 << 20, maxTokens: 2048 };

export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const log = o.log ?? ((l: string) => console.error(l));
  const hostname = o.host ?? "127.0.0.1";
  const limits: Limits = { ...DEFAULT_LIMITS, ...o.limits };
  const scope = Effect.runSync(Scope.make("sequential"));
  const step = <A>(name: string, acquire: () => Promise<A> | A, release?: (a: A) => Promise<void> | void) => {
    const get = Effect.tryPromise({
      try: async () => acquire(),
      catch: (e) => new StartupError({ step: name, message: `${name}: ${(e as Error).message ?? String(e)}` }),
    });
    return release ? Effect.acquireRelease(get, (a) => Effect.promise(async () => release(a))) : get;
  };

  const program = Effect.gen(function* () {
    const home = yield* step("home", () => ensureHome(o.home));
    const db = yield* step(
      "database",
      () => openDb(home.db),
      (d) => d.close(),
    );
    yield* step("schema", () => migrate(db));
    const registry = new Registry(db, home);
    const swept = yield* step("sweep", () => registry.sweep());
    if (swept.removed.length) log(`removed ${swept.removed.length} leftover file(s) from an interrupted run`);
    const admin = yield* step("admin key", () => adminToken(home.adminKey, o.env ?? process.env));
    const keys = new KeyStore(db, admin.token);
    const backend =
      o.backend ??
      (yield* step(
        "backend",
        () => createCpuBackend(),
        (b) => b.dispose(),
      ));
    const hash = yield* step("weights hash", () => weightsHash(o.modelDir, db));
    const modelId = basename(o.modelDir.replace(/[\\/]+$/, ""));
    const host = yield* step(
      "model",
      () =>
        ModelHost.load({
          modelDir: o.modelDir,
          backend,
          id: modelId,
          hash,
          cacheBytes: o.cacheBytes,
          maxQueue: o.maxQueue,
          maxBatch: o.maxBatch,
          kvBudgetBytes: o.kvBudgetBytes,
          log,
        }),
      (h) => h.close(),
    );
    log(`chat prompts (/v1/chat/completions): ${host.chatLayout}`);
    registry.onRemoved = (v) => void host.exclusive(async () => host.unload(v.id)).catch(() => {});
    const jobs = new JobStore(db);
    const runner = yield* step(
      "job runner",
      () =>
        new JobRunner(jobs, registry, host, {
          jobsDir: home.jobs,
          maxConcurrent: o.maxConcurrentJobs,
          stopGraceMs: o.stopGraceMs,
          command: o.workerCommand,
          log,
        }),
      (r) => r.shutdown(),
    );
    const roots = [home.root, o.modelDir, resolve(o.modelDir), tmpdir(), process.cwd(), REPO_ROOT];
    const admission = { budgetBytes: o.jobMemoryBytes ?? defaultJobBudget(o.maxConcurrentJobs ?? 1), maxQueued: o.maxQueuedJobs ?? 16 };
    const tokens = yield* step(
      "tokenizer thread",
      () => new TokenizerPool(o.modelDir),
      (t) => t.close(),
    );
    const ctx: ServerContext = {
      home,
      host,
      registry,
      keys,
      jobs,
      runner,
      limits,
      admission,
      tokens,
      startedAt: Date.now(),
      log,
      redact: (m) => redactPaths(m, roots),
    };
    const app = createApp(ctx);
    const listener = yield* step(
      "listen",
      () => listen(app.fetch, hostname, o.port ?? 8080, limits.maxUploadBytes),
      (l) => l.close(0),
    );
    const recoveredJobs = runner.recover();
    return { home, admin: { ...admin, path: home.adminKey }, ctx, app, listener, runner, host, recoveredJobs, modelId };
  });

  const exit = await Effect.runPromiseExit(Scope.provide(scope)(program));
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, exit));
    const err = Exit.findErrorOption(exit);
    throw err._tag === "Some" ? new Error(err.value.message) : new Error("server startup failed", { cause: exit.cause });
  }
  const r = exit.value;
  const urlHost = hostname.includes(":") ? `[${hostname}]` : hostname;
  let stopping: Promise<void> | null = null;
  const shutdown = () =>
    (stopping ??= (async () => {
      r.listener.stop();
      await Promise.all([r.runner.shutdown(), r.host.close()]);
      r.runner.events.closeAll();
      await r.listener.close(o.connectionGraceMs ?? 10_000);
      await Effect.runPromise(Scope.close(scope, Exit.void));
    })());
  return {
    url: `http://${urlHost}:${r.listener.port}`,
    host: hostname,
    port: r.listener.port,
    modelId: r.modelId,
    home: r.home,
    admin: r.admin,
    recoveredJobs: r.recoveredJobs,
    ctx: r.ctx,
    fetch: r.app.fetch,
    shutdown,
  };
}
