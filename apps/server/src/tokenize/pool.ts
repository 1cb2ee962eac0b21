/**
 * The server side of the tokenizer thread (worker.ts): one worker, started on first use and
 * restarted if it dies, with a bounded number of requests in flight (503 beyond). Under Node the
 * worker loads tsx first (the sources are TypeScript); Bun and Deno run them as they are.
 */
import { Worker } from "node:worker_threads";
import { errorMessage, invalid, unavailable } from "../errors.ts";

export type TokenRequest =
  | { id: number; op: "dataset"; path: string; label: string; format?: string; seqLen: number }
  | { id: number; op: "encode"; text: string };

export type TokenReply =
  | { id: number; ok: true; ids: number[] }
  | { id: number; ok: true; format: string; examples: number; tokens: number }
  | { id: number; ok: false; kind: "invalid" | "error"; message: string };

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

type Pending = { resolve: (r: TokenReply) => void; reject: (e: unknown) => void };

const WORKER_URL = new URL("./worker.ts", import.meta.url);

export class TokenizerPool {
  #worker: Worker | null = null;
  #next = 1;
  readonly #pending = new Map<number, Pending>();

  constructor(private readonly modelDir: string, private readonly maxPending = 16) {}

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const g = globalThis as { Bun?: unknown; Deno?: unknown };
    const data = { modelDir: this.modelDir };
    const w =
      g.Bun !== undefined || g.Deno !== undefined
        ? new Worker(WORKER_URL, { workerData: data })
        : new Worker(
            `import(${JSON.stringify(import.meta.resolve("tsx/esm/api"))}).then((m) => { m.register(); return import(${JSON.stringify(WORKER_URL.href)}); })`,
            { eval: true, workerData: data },
          );
    w.unref();
    w.on("message", (r: TokenReply) => {
      const p = this.#pending.get(r.id);
      this.#pending.delete(r.id);
      p?.resolve(r);
    });
    const fail = (e: unknown) => {
      if (this.#worker === w) this.#worker = null;
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
    };
    w.on("error", fail);
    w.on("exit", (code) => fail(new Error(`the tokenizer thread exited (code ${code})`)));
    this.#worker = w;
    return w;
  }

  async #ask(req: DistributiveOmit<TokenRequest, "id">): Promise<TokenReply> {
    if (this.#pending.size >= this.maxPending) throw unavailable(`the tokenizer is busy (${this.#pending.size} uploads and prompts waiting); retry later`);
    const id = this.#next++;
    return new Promise<TokenReply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#start().postMessage({ ...req, id });
    });
  }

  /** Parse and tokenize a staged dataset file (format detection by `label`'s extension). 400 naming `field` when it does not parse. */
  async dataset(
    path: string,
    label: string,
    format: string | undefined,
    seqLen: number,
    field: string,
  ): Promise<{ format: string; examples: number; tokens: number }> {
    const r = await this.#ask({ op: "dataset", path, label, format, seqLen });
    if (!r.ok) {
      if (r.kind === "invalid") throw invalid(`the dataset does not parse: ${r.message}`, field);
      throw new Error(`dataset check failed: ${r.message}`);
    }
    if (!("examples" in r)) throw new Error("unexpected tokenizer reply");
    if (!r.examples) throw invalid("the dataset has no training examples", field);
    return r;
  }

  async encode(text: string): Promise<number[]> {
    const r = await this.#ask({ op: "encode", text });
    if (!r.ok || !("ids" in r)) throw new Error(`tokenizing failed: ${r.ok ? "unexpected reply" : r.message}`);
    return r.ids;
  }

  async close(): Promise<void> {
    const w = this.#worker;
    this.#worker = null;
    if (w) await w.terminate().catch((e: unknown) => errorMessage(e));
  }
}
