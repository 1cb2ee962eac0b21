/**
 * `lowrank serve --model <dir> [--port 8080] [--host 127.0.0.1] [--home <dir>]`: thin; the server
 * lives in @lowrank/server. Runs until SIGINT/SIGTERM, then shuts down gracefully (running
 * fine-tunes checkpoint and resume on the next start).
 */
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { type BackendChoice, selectBackend } from "./backends.ts";
import { resolveDataDir, resolveModelDir } from "./data-dir.ts";

type Env = Record<string, string | undefined>;

export const SERVE_USAGE = "lowrank serve --model <dir> [--port 8080] [--host 127.0.0.1] [--home ~/.lowrank]";

const SERVE_HELP = `Usage: ${SERVE_USAGE}

Serves one base model over HTTP (OpenAPI document at /openapi.json):
  POST /v1/completions, /v1/chat/completions   OpenAI-compatible; model "<base>:<adapter>[@<version>]" or an alias
  /v1/adapters, /v1/aliases                    versioned adapter registry, A/B aliases, download, merged export
  /v1/datasets, /v1/fine-tunes                 training jobs (progress over SSE, cancel, resume after restart)

Options:
  --model <dir>        Hugging Face model directory (or a name under <data dir>/models)
  --port <n>           default 8080; 0 picks a free port
  --host <addr>        default 127.0.0.1
  --home <dir>         registry database, adapters, datasets, job outputs (default $LOWRANK_HOME, else ~/.lowrank)
  --backend <b>        compute backend (default $LOWRANK_BACKEND, else auto)
  --data-dir <dir>     where --model names are looked up

The admin API key is $LOWRANK_API_KEY; without it one is generated into <home>/admin.key (mode 0600)
and printed once. Requests without a valid key get 401.`;

/** Parse serve's flags and run it; `usage` prints a usage error and returns its exit code. */
export async function serveCli(argv: string[], env: Env, usage: (message: string) => number): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        help: { type: "boolean", short: "h" },
        model: { type: "string" },
        port: { type: "string" },
        host: { type: "string" },
        home: { type: "string" },
        backend: { type: "string" },
        "data-dir": { type: "string" },
      },
    }));
  } catch (e) {
    return usage(`serve: ${(e as Error).message}`);
  }
  if (values.help) {
    console.log(SERVE_HELP);
    return 0;
  }
  try {
    return await serveCommand(
      { model: values.model, port: values.port, host: values.host, home: values.home, backend: values.backend, dataDir: values["data-dir"] },
      env,
    );
  } catch (e) {
    if (e instanceof ServeUsageError) return usage(`serve: ${e.message}`);
    if ((e as Error).name === "BackendError" || (e as Error).name === "BlasError") {
      console.error(`lowrank: ${(e as Error).message}`);
      return (e as { usage?: boolean }).usage ? 2 : 1;
    }
    throw e;
  }
}

export interface ServeFlags {
  model?: string;
  port?: string;
  host?: string;
  home?: string;
  backend?: string;
  dataDir?: string;
}

export class ServeUsageError extends Error {
  override readonly name = "ServeUsageError";
}

export function parsePort(s: string | undefined): number {
  if (s === undefined) return 8080;
  if (!/^\d{1,5}$/.test(s) || Number(s) > 65535) throw new ServeUsageError(`--port ${s}: expected a port number 0-65535 (0 picks a free port)`);
  return Number(s);
}

/** Resolves when a SIGINT or SIGTERM arrives. */
function untilSignal(): Promise<string> {
  return new Promise((done) => {
    const on = (sig: string) => () => done(sig);
    process.once("SIGINT", on("SIGINT"));
    process.once("SIGTERM", on("SIGTERM"));
  });
}

export async function serveCommand(flags: ServeFlags, env: Env, stop: Promise<string> = untilSignal()): Promise<number> {
  if (!flags.model) throw new ServeUsageError("serve needs --model <dir> (a Hugging Face model directory)");
  const port = parsePort(flags.port);
  const host = flags.host ?? "127.0.0.1";
  const home = resolve(flags.home ?? (env.LOWRANK_HOME || join(homedir(), ".lowrank")));
  let modelDir: string;
  try {
    modelDir = await resolveModelDir(flags.model, resolveDataDir(flags.dataDir, env).path, process.cwd(), env);
  } catch (e) {
    console.error(`lowrank: serve: ${(e as Error).message}`);
    return 1;
  }
  const sel = await selectBackend(flags.backend as BackendChoice | undefined, env);
  const { startServer } = await import("@lowrank/server");
  let server;
  try {
    server = await startServer({ modelDir, home, host, port, backend: sel.backend, env, log: (l) => console.error(`lowrank serve: ${l}`) });
  } catch (e) {
    sel.backend.dispose();
    console.error(`lowrank: serve: ${(e as Error).message}`);
    return 1;
  }
  console.log(`lowrank serve: ${server.modelId} on ${server.url} (backend ${sel.name}; home ${server.home.root})`);
  if (server.admin.source === "generated") {
    console.log(`admin API key (shown once; stored in ${server.admin.path}, mode 0600): ${server.admin.token}`);
  } else {
    console.log(`admin API key: ${server.admin.source === "env" ? "from LOWRANK_API_KEY" : `in ${server.admin.path}`}`);
  }
  if (!["127.0.0.1", "localhost", "::1"].includes(host))
    console.error(`lowrank serve: warning: listening on ${host} over plain HTTP; API keys cross the network unencrypted`);
  if (server.recoveredJobs) console.log(`lowrank serve: resuming ${server.recoveredJobs} fine-tuning job(s) from their checkpoints`);
  console.log(`try: curl -H "Authorization: Bearer $KEY" ${server.url}/v1/models`);
  const sig = await stop;
  console.log(`lowrank serve: ${sig}: shutting down (running fine-tunes checkpoint and resume on the next start)`);
  await server.shutdown();
  sel.backend.dispose();
  console.log("lowrank serve: stopped");
  return 0;
}
