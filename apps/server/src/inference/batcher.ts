/**
 * Continuous batching over one base model (S-LoRA's serving loop): requests join between steps,
 * and each step is one forward over every active sequence (LlamaForCausalLM.stepSegments): a new
 * sequence brings its whole prompt, the others one token each; one base matmul per layer covers
 * them all, and each token's LoRA branch comes from its own sequence's adapter
 * (PeftModel.setRowAdapters: all adapters' factors stacked, each row masked to its own). A finished sequence leaves at once. Each sequence has its
 * own KV cache; the batch is bounded by a count, by the bytes its caches can reach, and by the
 * tokens one step takes in. Sampling, stop tokens and length are those of nn's generate().
 */
import { type KVCache, type LlamaForCausalLM, sampleNext } from "@lowrank/nn/node";
import { Rng, type Tensor, noGrad } from "@lowrank/tensor";

/** What the batcher needs from the host: the model, adapter switching, and the model's lock. */
export interface BatchModel {
  readonly model: LlamaForCausalLM;
  /** Make `adapter` (internal name) the one a prefill runs with; null = the base. */
  useAdapter(adapter: string | null): void;
  /** Per-row adapters for a step (null ends them); they stay set until changed (unchanged: cheap). */
  useRowAdapters(rows: (string | null)[] | null): void;
  /** Whether the adapter can share a decode step with others (plain LoRA). */
  rowBatchable(adapter: string): boolean;
  /** Run `fn` holding the model (no adapter load or unload meanwhile). */
  locked<T>(fn: () => Promise<T>): Promise<T>;
}

export interface SequenceSpec {
  /** Internal adapter name, null for the base. */
  adapter: string | null;
  promptIds: readonly number[];
  maxNewTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  repetitionPenalty: number;
  seed: number;
  stopTokens: ReadonlySet<number>;
  signal?: AbortSignal;
  /** Each new token, as chosen; return false to end the sequence (a stop string was found). */
  onToken(id: number): boolean;
  /** Called once when the sequence leaves the batch (finished, stopped or failed), holding the model. */
  onEnd?(): void;
}

/** A request whose KV cache alone would pass the batch's budget: the client's to shrink. */
export class KvBudgetError extends RangeError {
  override readonly name = "KvBudgetError";
}

export interface BatcherOptions {
  /** Sequences decoded together (default 32). */
  maxBatch?: number;
  /** Bytes the active sequences' KV caches may hold, each sized for its prompt plus max new tokens (default 256 MiB). */
  kvBudgetBytes?: number;
  /** Tokens one step takes in, prompts of joining sequences included (default 2048; one prompt may exceed it alone). */
  maxStepTokens?: number;
}

interface Active {
  spec: SequenceSpec;
  cache: KVCache;
  ids: number[];
  generated: number;
  rng: Rng;
  /** What the next step feeds in: the prompt, then each new token. */
  pending: number[];
  kvBytes: number;
  done: (r: { completion: number; stopped: boolean }) => void;
  fail: (e: unknown) => void;
}

interface Waiting {
  spec: SequenceSpec;
  kvBytes: number;
  resolve: (r: { completion: number; stopped: boolean }) => void;
  reject: (e: unknown) => void;
}

export class Batcher {
  readonly #m: BatchModel;
  readonly #maxBatch: number;
  readonly #kvBudget: number;
  readonly #stepTokens: number;
  readonly #waiting: Waiting[] = [];
  readonly #active: Active[] = [];
  #running = false;
  /** Decode steps run and the rows they carried (for the load test and /v1/cache). */
  readonly stats = { steps: 0, rows: 0, maxRows: 0 };

  constructor(m: BatchModel, o: BatcherOptions = {}) {
    this.#m = m;
    this.#maxBatch = o.maxBatch ?? 32;
    this.#kvBudget = o.kvBudgetBytes ?? 256 * 2 ** 20;
    this.#stepTokens = o.maxStepTokens ?? 2048;
  }

  /** Sequences waiting to join plus those decoding. */
  get size(): number {
    return this.#waiting.length + this.#active.length;
  }

  /** Generate one sequence; resolves with how many tokens it produced and whether onToken stopped it. */
  run(spec: SequenceSpec): Promise<{ completion: number; stopped: boolean }> {
    const cfg = this.#m.model.config;
    const perPosition = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4;
    const kvBytes = perPosition * (spec.promptIds.length + spec.maxNewTokens);
    if (kvBytes > this.#kvBudget) {
      return Promise.reject(
        new KvBudgetError(`the prompt and max_tokens need ${kvBytes} bytes of KV cache, more than the server's budget of ${this.#kvBudget}; lower max_tokens`),
      );
    }
    const p = new Promise<{ completion: number; stopped: boolean }>((resolve, reject) => this.#waiting.push({ spec, kvBytes, resolve, reject }));
    if (!this.#running) void this.#loop();
    return p;
  }

  async #loop(): Promise<void> {
    this.#running = true;
    try {
      while (this.#waiting.length || this.#active.length) {
        await this.#m.locked(() => this.#tick());
        // Let the event loop run (new requests, streamed chunks, aborts) between steps.
        await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.#running = false;
    }
  }

  async #tick(): Promise<void> {
    this.#admit();
    const live = [...this.#active].filter((a) => !a.spec.signal?.aborted || this.#finish(a, false));
    if (!live.length) return;
    // One forward for every sequence whose adapter can share it; a DoRA (or similar) adapter steps alone.
    const shared = live.filter((a) => a.spec.adapter === null || this.#m.rowBatchable(a.spec.adapter));
    const groups = [shared, ...live.filter((a) => !shared.includes(a)).map((a) => [a])].filter((g) => g.length);
    for (const g of groups) {
      let rows: Float32Array;
      try {
        rows = await this.#step(g);
      } catch (e) {
        for (const a of g) this.#fail(a, e);
        continue;
      }
      const V = rows.length / g.length;
      g.forEach((a, i) => this.#advance(a, rows.subarray(i * V, (i + 1) * V)));
    }
  }

  /** Let waiting requests join while the batch, the KV budget and this step's tokens have room. */
  #admit(): void {
    let bytes = this.#active.reduce((s, a) => s + a.kvBytes, 0);
    let tokens = this.#active.reduce((s, a) => s + a.pending.length, 0);
    while (this.#waiting.length && this.#active.length < this.#maxBatch) {
      const w = this.#waiting[0];
      const fits = bytes + w.kvBytes <= this.#kvBudget && tokens + w.spec.promptIds.length <= this.#stepTokens;
      if (!fits && this.#active.length) break;
      this.#waiting.shift();
      if (w.spec.signal?.aborted || w.spec.maxNewTokens <= 0) {
        w.spec.onEnd?.();
        w.resolve({ completion: 0, stopped: false });
        continue;
      }
      bytes += w.kvBytes;
      tokens += w.spec.promptIds.length;
      this.#active.push({
        // Room for every position it can reach, taken at its first step: exactly the kvBytes admitted.
        spec: w.spec,
        cache: this.#m.model.createCache({ capacity: w.spec.promptIds.length + w.spec.maxNewTokens }),
        ids: [...w.spec.promptIds],
        generated: 0,
        rng: new Rng(w.spec.seed),
        pending: [...w.spec.promptIds],
        kvBytes: w.kvBytes,
        done: w.resolve,
        fail: w.reject,
      });
    }
  }

  /** One forward of `g`: each sequence's pending tokens in, its next-token logits out (rows in order). */
  async #step(g: Active[]): Promise<Float32Array> {
    const first = g[0].spec.adapter;
    if (g.every((a) => a.spec.adapter === first)) {
      this.#m.useRowAdapters(null);
      this.#m.useAdapter(first);
    } else this.#m.useRowAdapters(g.flatMap((a) => a.pending.map(() => a.spec.adapter)));
    const t = noGrad(() =>
      this.#m.model.stepSegments(
        g.map((a) => a.pending),
        g.map((a) => a.cache),
      ),
    );
    this.stats.steps++;
    this.stats.rows += g.length;
    this.stats.maxRows = Math.max(this.stats.maxRows, g.length);
    return await readRow(t);
  }

  /** Sample the next token from `logits` (generate()'s rules: stop tokens end it unseen, then length). */
  #advance(a: Active, logits: Float32Array): void {
    const s = a.spec;
    const maxPos = this.#m.model.config.max_position_embeddings;
    // sampleNext rewrites the row it gets unless it is greedy without a penalty: only then no copy.
    const plain = !(s.temperature > 0) && s.repetitionPenalty === 1;
    const next = sampleNext(plain ? logits : Float32Array.from(logits), a.ids, s, a.rng);
    if (s.stopTokens.has(next)) return void this.#finish(a, false);
    a.ids.push(next);
    a.generated++;
    let keep: boolean;
    try {
      keep = s.onToken(next);
    } catch (e) {
      return this.#fail(a, e);
    }
    if (!keep) return void this.#finish(a, true);
    if (a.generated >= s.maxNewTokens || a.ids.length > maxPos || s.signal?.aborted) return void this.#finish(a, false);
    a.pending = [next];
  }

  #finish(a: Active, stopped: boolean): false {
    this.#remove(a);
    a.done({ completion: a.generated, stopped });
    return false;
  }

  #fail(a: Active, e: unknown): void {
    this.#remove(a);
    a.fail(e);
  }

  #remove(a: Active): void {
    const i = this.#active.indexOf(a);
    if (i >= 0) this.#active.splice(i, 1);
    a.cache.dispose();
    a.spec.onEnd?.();
  }

  /** Resolves once nothing waits or decodes. */
  async idle(): Promise<void> {
    while (this.#running) await new Promise<void>((r) => setImmediate(r));
  }
}

async function readRow(t: Tensor): Promise<Float32Array> {
  try {
    const v = await t.read(); // a fresh array: the batcher's to keep
    return v instanceof Float32Array ? v : Float32Array.from(v);
  } finally {
    t.dispose();
  }
}
