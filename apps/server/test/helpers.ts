/** Test helpers: the stories260K model, throwaway adapters, a server on 127.0.0.1:0, and a tiny fetch client. */
import { existsSync, rmSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { getPeftModel, saveAdapter } from "@lowrank/lora/node";
import { loadHfModel } from "@lowrank/nn/node";
import { type RunningServer, type ServerOptions, startServer } from "../src/index.ts";

export const ADMIN = "test-admin-key-0123456789abcdef";

/** LOWRANK_DATA_DIR, else ../shared/data beside the repository. */
export function dataDir(): string | null {
  const env = process.env.LOWRANK_DATA_DIR;
  const dir = env ? resolve(env) : fileURLToPath(new URL("../../../../shared/data", import.meta.url));
  return existsSync(join(dir, "models", "stories260K-hf", "model.safetensors")) ? dir : null;
}

const data = dataDir();
export const STORIES = data ? join(data, "models", "stories260K-hf") : "";
export const TINYSTORIES = data ? join(data, "datasets", "tinystories", "tinystories_sample.txt") : "";
/** Pass as the `skip` option of a test that needs the model. */
export const NEED_MODEL: string | false = data ? false : "stories260K-hf not found: set LOWRANK_DATA_DIR or put shared/data beside the repository";

const made = new Set<string>();
// Every test file runs in its own process: whatever a test left in its temporary directories goes when it exits.
process.on("exit", () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `lowrank-server-${prefix}-`));
  made.add(dir);
  return dir;
}

/**
 * A PEFT adapter for stories260K with random A and B (init_lora_weights false), so each seed
 * changes the output visibly. `scale` shrinks B to keep the text story-like.
 */
export async function makeAdapter(dir: string, seed: number, opts: { r?: number; targets?: string[]; scale?: number } = {}): Promise<string> {
  const backend = createCpuBackend();
  const model = await loadHfModel(STORIES, { backend });
  try {
    const peft = getPeftModel(
      model,
      {
        r: opts.r ?? 4,
        lora_alpha: 8,
        target_modules: opts.targets ?? ["q_proj", "v_proj"],
        init_lora_weights: false,
        base_model_name_or_path: STORIES,
      },
      "default",
      { seed },
    );
    if (opts.scale !== undefined) {
      for (const [, layer] of peft.loraLayers()) {
        const B = layer.lora_B.get("default").weight;
        const scaled = B.mul(opts.scale);
        B.assign(scaled);
        scaled.dispose();
      }
    }
    await saveAdapter(peft, dir);
    return dir;
  } finally {
    model.dispose();
    backend.dispose();
  }
}

export interface TestServer extends RunningServer {
  logs: string[];
  close(): Promise<void>;
}

export async function startTestServer(opts: Partial<ServerOptions> = {}): Promise<TestServer> {
  const home = opts.home ?? (await tempDir("home"));
  const logs: string[] = [];
  const s = await startServer({
    modelDir: STORIES,
    home,
    host: "127.0.0.1",
    port: 0,
    env: { LOWRANK_API_KEY: ADMIN },
    log: (l) => logs.push(l),
    stopGraceMs: 20_000,
    connectionGraceMs: 2000,
    ...opts,
  });
  return Object.assign(s, {
    logs,
    async close() {
      await s.shutdown();
      if (!opts.home) await rm(home, { recursive: true, force: true });
    },
  });
}

export interface Res {
  status: number;
  headers: Headers;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- test assertions read arbitrary fields
}

export async function call(
  base: string,
  method: string,
  path: string,
  opts: { key?: string | null; body?: unknown; raw?: BodyInit; headers?: Record<string, string> } = {},
): Promise<Res> {
  const headers: Record<string, string> = { ...opts.headers };
  const key = opts.key === undefined ? ADMIN : opts.key;
  if (key !== null) headers.authorization = `Bearer ${key}`;
  let body: BodyInit | undefined = opts.raw;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers["content-type"] ??= "application/json";
  }
  const r = await fetch(`${base}${path}`, { method, headers, body });
  const text = await r.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // SSE, tar, or an empty body
  }
  return { status: r.status, headers: r.headers, text, json };
}

/** Upload a PEFT directory as a new version of `name`. */
export async function upload(
  base: string,
  name: string,
  dir: string,
  opts: { key?: string; extra?: Record<string, string>; weights?: Uint8Array; config?: string } = {},
): Promise<Res> {
  const form = new FormData();
  form.set("name", name);
  form.set("adapter_config.json", new Blob([opts.config ?? (await readFile(join(dir, "adapter_config.json"), "utf8"))]), "adapter_config.json");
  form.set(
    "adapter_model.safetensors",
    new Blob([new Uint8Array(opts.weights ?? (await readFile(join(dir, "adapter_model.safetensors"))))]),
    "adapter_model.safetensors",
  );
  for (const [k, v] of Object.entries(opts.extra ?? {})) form.set(k, v);
  return call(base, "POST", "/v1/adapters", { key: opts.key, raw: form });
}

/** Parse an SSE body into {event, data} records ("message" when unnamed). */
export function parseSse(text: string): { event: string; data: string }[] {
  return text
    .split("\n\n")
    .filter((b) => b.trim() && !b.startsWith(":"))
    .map((block) => {
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      return { event, data: data.join("\n") };
    });
}

export function completion(model: string, prompt: string, extra: Record<string, unknown> = {}) {
  return { model, prompt, max_tokens: 24, temperature: 0, ...extra };
}
