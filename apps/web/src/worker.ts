/**
 * The training worker (a module Web Worker). It owns the backend, the model files, the models
 * and the tokenizer; the page talks to it only through the typed messages of protocol.ts.
 * Requests run one at a time in arrival order; "cancel" is handled at once.
 */
import { type HfTokenizer, Linear, type LlamaForCausalLM } from "@lowrank/nn";
import type { PeftModel } from "@lowrank/lora";
import type { Backend } from "@lowrank/tensor";
import { greedySample } from "@lowrank/trainer";
import type { BackendPref, Column, FromWorker, MemoryInfo, ModelSource, SimdPref, ToWorker, TrainSettings } from "./protocol.ts";
import { adapterFiles, applyAdapterFiles, modelFiles } from "./worker/adapter-io.ts";
import { pickBackend } from "./worker/backend.ts";
import { type ModelFiles, buildModel, buildModelAndTokenizer, loadModelFiles } from "./worker/model-loader.ts";
import { type Trained, runTraining } from "./worker/train.ts";

interface Loaded {
  model: LlamaForCausalLM;
  peft: PeftModel<LlamaForCausalLM>;
}

const state: {
  backend: Backend | null;
  files: ModelFiles | null;
  tokenizer: HfTokenizer | null;
  /** The untouched base, for the "base" column when no adapter can be switched off. */
  base: LlamaForCausalLM | null;
  trained: Trained | null;
  loaded: Loaded | null;
  cancel: boolean;
} = { backend: null, files: null, tokenizer: null, base: null, trained: null, loaded: null, cancel: false };

const scope = self as unknown as { postMessage(m: FromWorker, transfer?: Transferable[]): void; onmessage: ((e: MessageEvent<ToWorker>) => void) | null };
const post = (m: FromWorker, transfer: Transferable[] = []) => scope.postMessage(m, transfer);

function memory(): MemoryInfo {
  const m = state.backend?.memory();
  return { liveBytes: m?.liveBytes ?? 0, peakBytes: m?.peakBytes ?? 0 };
}

function need<T>(v: T | null, what: string): T {
  if (v === null) throw new Error(what);
  return v;
}

function drop(key: "base" | "trained" | "loaded"): void {
  state[key]?.model.dispose();
  state[key] = null;
}

async function init(pref: BackendPref, simd: SimdPref): Promise<void> {
  const { backend, info } = await pickBackend(pref, simd);
  state.backend = backend;
  post({ type: "ready", backend: info });
}

async function loadModel(source: ModelSource): Promise<void> {
  const backend = need(state.backend, "the backend is not ready");
  for (const k of ["base", "trained", "loaded"] as const) drop(k);
  post({ type: "status", text: `loading ${source.name}...` });
  const files = await loadModelFiles(source);
  const { model: base, tokenizer } = await buildModelAndTokenizer(files, backend);
  base.setRequiresGrad(false);
  Object.assign(state, { files, tokenizer, base });
  const linear = new Set(
    base
      .namedModules()
      .filter(([n, m]) => m instanceof Linear && n !== "lm_head")
      .map(([n]) => n.slice(n.lastIndexOf(".") + 1)),
  );
  const c = base.config;
  const params = base.parameters().reduce((n, t) => n + t.size, 0);
  post({
    type: "model",
    info: {
      name: files.name,
      params,
      layers: c.num_hidden_layers,
      hidden: c.hidden_size,
      vocab: c.vocab_size,
      maxPositions: c.max_position_embeddings,
      linearNames: [...linear],
    },
    memory: memory(),
  });
}

async function train(settings: TrainSettings): Promise<void> {
  const backend = need(state.backend, "the backend is not ready");
  const files = need(state.files, "load a model first");
  drop("trained");
  state.cancel = false;
  const r = await runTraining({ backend, files, tokenizer: state.tokenizer!, post, isCancelled: () => state.cancel }, settings);
  state.trained = r.trained;
  post({ type: "train-end", steps: r.trained.losses.length, seconds: r.seconds, cancelled: r.cancelled, memory: memory() });
}

async function generate(id: number, prompt: string, maxNewTokens: number): Promise<void> {
  const tok = need(state.tokenizer, "load a model first");
  const ids = prompt ? tok.encode(prompt) : tok.bosTokenId !== null ? [tok.bosTokenId] : [];
  if (!ids.length) throw new Error("type a prompt");
  const run = async (column: Column, label: string, model: LlamaForCausalLM, wrap: (f: () => Promise<string>) => Promise<string> = (f) => f()) => {
    const text = await wrap(() => greedySample(model, tok, ids, maxNewTokens));
    post({ type: "generation", id, column, label, text });
  };
  const t = state.trained;
  if (t?.peft) {
    // The trained model with its adapter switched off is exactly the base it trained on.
    await run("base", t.settings.method === "qlora" ? "base (NF4, adapter off)" : "base (adapter off)", t.model, (f) => t.peft!.withAdaptersDisabled(f));
  } else if (state.base) {
    await run("base", "base", state.base);
  }
  if (t) await run("tuned", t.peft ? `fine-tuned (${t.settings.method}, r ${t.settings.rank})` : "fine-tuned (full)", t.model);
  if (state.loaded) await run("loaded", "loaded adapter", state.loaded.model);
  post({ type: "generation-end", id });
}

async function exportTrained(): Promise<void> {
  const t = need(state.trained, "train first: there is nothing to export");
  const files = t.peft ? await adapterFiles(t.peft, state.files!.name) : await modelFiles(t.model);
  files.push({ name: "metrics.jsonl", mime: "application/x-ndjson", bytes: new TextEncoder().encode(t.metrics) });
  post(
    { type: "exported", kind: t.peft ? "adapter" : "model", files },
    files.map((f) => f.bytes.buffer as ArrayBuffer),
  );
}

async function loadAdapter(picked: File[]): Promise<void> {
  const backend = need(state.backend, "the backend is not ready");
  const files = need(state.files, "load a model first");
  drop("loaded");
  const model = await buildModel(files, backend);
  try {
    const { peft, summary } = await applyAdapterFiles(model, picked);
    state.loaded = { model, peft };
    post({ type: "adapter", summary });
  } catch (e) {
    model.dispose();
    throw e;
  }
}

let queue: Promise<void> = Promise.resolve();

function enqueue(during: string, job: () => Promise<void>): void {
  queue = queue.then(job).catch((e: unknown) => {
    const err = e as Error;
    post({ type: "error", during, message: err?.message ?? String(e) });
  });
}

scope.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.type) {
    case "cancel":
      state.cancel = true;
      return;
    case "init":
      return enqueue("starting the backend", () => init(m.backend, m.simd));
    case "load-model":
      return enqueue("loading the model", () => loadModel(m.source));
    case "train":
      return enqueue("training", () => train(m.settings));
    case "generate":
      return enqueue("generating", () => generate(m.id, m.prompt, m.maxNewTokens));
    case "export":
      return enqueue("exporting", exportTrained);
    case "load-adapter":
      return enqueue("loading the adapter", () => loadAdapter(m.files));
  }
};
