/**
 * The page: collects settings, starts the training worker and renders what it reports. Every
 * model computation happens in worker.ts, so the page stays responsive during a run.
 */
import type { DataManifest } from "./build/data-assets.ts";
import type { BackendPref, Column, FromWorker, Method, ModelSource, SimdPref, ToWorker, TrainSettings } from "./protocol.ts";
import { renderChart } from "./ui/chart.ts";
import { bytes, clock, count } from "./ui/format.ts";

function $<T extends Element = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} is missing from index.html`);
  return e as unknown as T;
}
const input = (id: string) => $<HTMLInputElement>(id);

const ui = {
  backend: $("backend"),
  backendPref: $<HTMLSelectElement>("backend-pref"),
  backendNote: $("backend-note"),
  error: $("error"),
  bundledLabel: $("bundled-label"),
  folderPick: $("folder-pick"),
  modelDir: input("model-dir"),
  modelFiles: input("model-files"),
  loadModel: $<HTMLButtonElement>("load-model"),
  modelInfo: $("model-info"),
  text: $<HTMLTextAreaElement>("text"),
  samples: $("samples"),
  textFile: input("text-file"),
  textStats: $("text-stats"),
  method: $<HTMLSelectElement>("method"),
  targets: $<HTMLFieldSetElement>("targets"),
  train: $<HTMLButtonElement>("train"),
  cancel: $<HTMLButtonElement>("cancel"),
  status: $("status"),
  trainState: $("train-state"),
  progress: $<HTMLProgressElement>("progress"),
  chart: $<SVGSVGElement>("chart"),
  step: $("step"),
  loss: $("loss"),
  tps: $("tps"),
  memory: $("memory"),
  elapsed: $("elapsed"),
  eta: $("eta"),
  lossFirst: $("loss-first"),
  lossLast: $("loss-last"),
  evalBefore: $("eval-before"),
  evalAfter: $("eval-after"),
  summary: $("summary"),
  prompt: input("prompt"),
  maxTokens: input("max-tokens"),
  generate: $<HTMLButtonElement>("generate"),
  colLoaded: $("col-loaded"),
  export: $<HTMLButtonElement>("export"),
  downloads: $("downloads"),
  adapterFiles: input("adapter-files"),
  adapterInfo: $("adapter-info"),
  log: $("log"),
};

const page = {
  worker: null as Worker | null,
  manifest: null as DataManifest | null,
  modelLoaded: false,
  training: false,
  generating: false,
  trained: false,
  losses: [] as number[],
  evals: [] as { step: number; loss: number }[],
  totalSteps: 0,
  /** Highest per-step peak of the current run. */
  peak: 0,
  textName: "pasted text",
  genId: 0,
  urls: [] as string[],
  /** ?simd=plain|relaxed|auto: the CPU backend's WASM SIMD build (tests pin "plain" to match Node). */
  simd: "auto" as SimdPref,
};

function send(m: ToWorker): void {
  page.worker?.postMessage(m);
}

function log(line: string): void {
  const t = new Date().toLocaleTimeString([], { hour12: false });
  ui.log.textContent = `${ui.log.textContent ?? ""}${t}  ${line}\n`.split("\n").slice(-200).join("\n");
  ui.log.scrollTop = ui.log.scrollHeight;
}

function showError(message: string | null): void {
  ui.error.hidden = !message;
  ui.error.textContent = message ?? "";
  if (message) log(`error: ${message}`);
}

function refresh(): void {
  const idle = !page.training;
  ui.loadModel.disabled = !idle;
  ui.train.disabled = !(page.modelLoaded && idle);
  ui.cancel.disabled = !page.training;
  ui.generate.disabled = !(page.modelLoaded && idle && !page.generating);
  ui.export.disabled = !(page.trained && idle);
  ui.adapterFiles.disabled = !(page.modelLoaded && idle);
  ui.backendPref.disabled = !idle;
  const full = ui.method.value === "full";
  for (const id of ["rank", "alpha", "dropout"]) input(id).disabled = full;
  ui.targets.disabled = full;
}

function setState(state: "idle" | "training" | "done" | "cancelled" | "failed"): void {
  ui.trainState.dataset.state = state;
  ui.trainState.textContent = state;
}

// ---- worker ----

function startWorker(pref: BackendPref): void {
  page.worker?.terminate();
  page.modelLoaded = page.training = page.generating = page.trained = false;
  refresh();
  ui.backend.textContent = "starting the worker…";
  ui.backend.dataset.kind = "";
  const w = new Worker(new URL("./worker.ts", import.meta.url), { type: "module", name: "lowrank-trainer" });
  w.onmessage = (e: MessageEvent<FromWorker>) => onMessage(e.data);
  w.onerror = (e) => showError(`the worker failed to start: ${e.message || "see the browser console"}`);
  page.worker = w;
  send({ type: "init", backend: pref, simd: page.simd });
}

function onMessage(m: FromWorker): void {
  switch (m.type) {
    case "ready": {
      const b = m.backend;
      ui.backend.dataset.kind = b.kind;
      ui.backend.dataset.simd = b.simd ?? "";
      ui.backend.textContent = b.kind === "webgpu" ? `WebGPU · ${b.adapter}` : `CPU · ${b.device}`;
      const notes = [
        b.fallback ? "WebGPU runs on a software fallback adapter here; the CPU backend may be faster (choose it on the right)." : "",
        b.note ? `Using the CPU: ${b.note}.` : "",
      ].filter(Boolean);
      ui.backendNote.hidden = !notes.length;
      ui.backendNote.textContent = notes.join(" ");
      log(`backend: ${ui.backend.textContent}${b.note ? ` (${b.note})` : ""}; cross-origin isolated: ${b.isolated}`);
      if (selectedSource() === "bundled" && page.manifest?.models.length) loadModel();
      return;
    }
    case "status":
      ui.status.textContent = m.text;
      log(m.text);
      return;
    case "model": {
      const i = m.info;
      page.modelLoaded = true;
      ui.status.textContent = "";
      ui.modelInfo.textContent = `${i.name}: ${count(i.params)} parameters, ${i.layers} layers, hidden ${i.hidden}, vocab ${i.vocab}`;
      ui.memory.textContent = `live ${bytes(m.memory.liveBytes)}`;
      fillTargets(i.linearNames);
      input("seq-len").max = String(i.maxPositions);
      log(`model loaded: ${ui.modelInfo.textContent}`);
      refresh();
      return;
    }
    case "train-start":
      page.totalSteps = m.totalSteps;
      ui.summary.textContent = `${m.summary} · ${count(m.tokens)} tokens → ${m.train} train / ${m.eval} eval windows`;
      for (const w of m.warnings) log(`warning: ${w}`);
      log(`training: ${ui.summary.textContent}`);
      draw();
      return;
    case "step":
      page.losses.push(m.loss);
      ui.progress.value = m.step / m.total;
      ui.step.textContent = `${m.step} / ${m.total}`;
      ui.loss.textContent = m.loss.toFixed(4);
      ui.tps.textContent = count(Math.round(m.tokensPerS));
      page.peak = Math.max(page.peak, m.memory.peakBytes);
      ui.memory.textContent = `live ${bytes(m.memory.liveBytes)} · peak ${bytes(m.memory.peakBytes)}`;
      ui.elapsed.textContent = clock(m.elapsedS);
      ui.eta.textContent = clock(m.etaS);
      ui.lossFirst.textContent = page.losses[0].toFixed(4);
      ui.lossLast.textContent = m.loss.toFixed(4);
      draw();
      return;
    case "eval":
      (m.when === "before" ? ui.evalBefore : ui.evalAfter).textContent = m.loss.toFixed(4);
      page.evals.push({ step: m.when === "before" ? 0 : page.losses.length, loss: m.loss });
      log(`eval loss ${m.when} training: ${m.loss.toFixed(4)} (perplexity ${m.perplexity.toFixed(2)})`);
      draw();
      return;
    case "train-end":
      page.training = false;
      page.trained = true;
      setState(m.cancelled ? "cancelled" : "done");
      ui.eta.textContent = "–";
      ui.memory.textContent = `live ${bytes(m.memory.liveBytes)} · run peak ${bytes(page.peak)}`;
      log(`training ${m.cancelled ? "cancelled" : "finished"}: ${m.steps} steps in ${m.seconds.toFixed(1)} s`);
      refresh();
      generate();
      return;
    case "generation":
      if (m.id !== page.genId) return;
      $(`label-${m.column}`).textContent = m.label;
      $(`out-${m.column}`).textContent = m.text;
      return;
    case "generation-end":
      page.generating = false;
      refresh();
      return;
    case "exported":
      showDownloads(m.files);
      return;
    case "adapter":
      ui.adapterInfo.textContent = `loaded: ${m.summary}`;
      ui.colLoaded.hidden = false;
      log(`adapter loaded: ${m.summary}`);
      generate();
      return;
    case "error":
      showError(`${m.during}: ${m.message}`);
      ui.status.textContent = "";
      if (m.during === "training") {
        page.training = false;
        setState("failed");
      }
      if (m.during === "generating") page.generating = false;
      refresh();
      return;
  }
}

// ---- model ----

function selectedSource(): "bundled" | "folder" {
  return (document.querySelector<HTMLInputElement>('input[name="model-source"]:checked')?.value as "bundled" | "folder") ?? "bundled";
}

function loadModel(): void {
  showError(null);
  let source: ModelSource;
  if (selectedSource() === "bundled") {
    const m = page.manifest?.models[0];
    if (!m) return showError(page.manifest?.note ?? "no model was bundled into this page");
    source = { kind: "url", name: m.name, base: new URL(m.path, document.baseURI).href };
  } else {
    const dir = [...(ui.modelDir.files ?? [])];
    const files = dir.length ? dir : [...(ui.modelFiles.files ?? [])];
    if (!files.length) return showError("choose a model folder (or its files) first");
    const rel = (files[0] as File & { webkitRelativePath?: string }).webkitRelativePath ?? "";
    source = { kind: "files", name: rel.includes("/") ? rel.slice(0, rel.indexOf("/")) : "local model", files };
  }
  page.modelLoaded = page.trained = false;
  ui.modelInfo.textContent = "loading…";
  refresh();
  send({ type: "load-model", source });
}

function fillTargets(names: string[]): void {
  ui.targets.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "target modules (all checked = all-linear)" }));
  for (const n of names) {
    const label = document.createElement("label");
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: n, checked: true, name: "target" });
    label.append(box, ` ${n}`);
    ui.targets.append(label);
  }
}

// ---- training ----

function num(id: string, opts: { int?: boolean; min?: number; max?: number } = {}): number {
  const el = input(id);
  const v = Number(el.value);
  const label = el.parentElement?.firstChild?.textContent?.trim() ?? id;
  if (el.value.trim() === "" || !Number.isFinite(v) || (opts.int && !Number.isInteger(v)) || v < (opts.min ?? -Infinity) || v > (opts.max ?? Infinity)) {
    throw new Error(
      `${label}: ${JSON.stringify(el.value)} is not ${opts.int ? "an integer" : "a number"}${opts.min !== undefined ? ` >= ${opts.min}` : ""}${
        opts.max !== undefined ? ` <= ${opts.max}` : ""
      }`,
    );
  }
  return v;
}

function settings(): TrainSettings {
  const text = ui.text.value;
  if (!text.trim()) throw new Error("paste or drop some training text first");
  const boxes = [...ui.targets.querySelectorAll<HTMLInputElement>('input[name="target"]')];
  const picked = boxes.filter((b) => b.checked).map((b) => b.value);
  const method = ui.method.value as Method;
  if (method !== "full" && !picked.length) throw new Error("check at least one target module");
  return {
    text,
    textName: page.textName,
    method,
    rank: num("rank", { int: true, min: 1 }),
    alpha: num("alpha", { min: 0 }),
    dropout: num("dropout", { min: 0, max: 0.95 }),
    targets: picked.length === boxes.length ? "all-linear" : picked,
    steps: num("steps", { int: true, min: 1 }),
    lr: num("lr", { min: 0 }),
    batchSize: num("batch", { int: true, min: 1 }),
    seqLen: num("seq-len", { int: true, min: 2 }),
    warmup: num("warmup", { min: 0 }),
    seed: num("seed", { int: true }),
  };
}

function train(): void {
  showError(null);
  let s: TrainSettings;
  try {
    s = settings();
  } catch (e) {
    return showError((e as Error).message);
  }
  page.training = true;
  page.trained = false;
  page.losses = [];
  page.evals = [];
  page.totalSteps = s.steps;
  page.peak = 0;
  for (const el of [ui.step, ui.loss, ui.tps, ui.elapsed, ui.eta, ui.lossFirst, ui.lossLast, ui.evalBefore, ui.evalAfter]) el.textContent = "–";
  ui.progress.value = 0;
  ui.summary.textContent = "";
  clearDownloads();
  setState("training");
  draw();
  refresh();
  send({ type: "train", settings: s });
}

function draw(): void {
  renderChart(ui.chart, { losses: page.losses, totalSteps: page.totalSteps, evals: page.evals });
}

// ---- generation and files ----

function generate(): void {
  if (!page.modelLoaded || page.training) return;
  page.genId++;
  page.generating = true;
  for (const c of ["base", "tuned", "loaded"] as Column[]) $(`out-${c}`).textContent = "…";
  if (!page.trained) $("out-tuned").textContent = "(train first)";
  refresh();
  send({ type: "generate", id: page.genId, prompt: ui.prompt.value, maxNewTokens: num("max-tokens", { int: true, min: 1, max: 400 }) });
}

function clearDownloads(): void {
  for (const u of page.urls) URL.revokeObjectURL(u);
  page.urls = [];
  ui.downloads.replaceChildren();
}

function showDownloads(files: { name: string; mime: string; bytes: Uint8Array }[]): void {
  clearDownloads();
  for (const f of files) {
    const url = URL.createObjectURL(new Blob([f.bytes as Uint8Array<ArrayBuffer>], { type: f.mime }));
    page.urls.push(url);
    const a = Object.assign(document.createElement("a"), {
      href: url,
      download: f.name,
      id: `dl-${f.name.replace(/[^a-z0-9]+/gi, "-")}`,
      className: "download",
    });
    a.textContent = `⤓ ${f.name} (${bytes(f.bytes.byteLength)})`;
    ui.downloads.append(a);
  }
  log(`ready to download: ${files.map((f) => f.name).join(", ")}`);
}

async function setText(text: string, name: string): Promise<void> {
  ui.text.value = text;
  page.textName = name;
  ui.textStats.textContent = `${count(text.length)} characters`;
}

// ---- wiring ----

async function readManifest(): Promise<void> {
  try {
    const res = await fetch(new URL("data/index.json", document.baseURI));
    page.manifest = res.ok ? ((await res.json()) as DataManifest) : null;
  } catch {
    page.manifest = null;
  }
  const model = page.manifest?.models[0];
  const bundled = document.querySelector<HTMLInputElement>('input[name="model-source"][value="bundled"]')!;
  if (model) ui.bundledLabel.textContent = `${model.name} (bundled with this page)`;
  else {
    ui.bundledLabel.textContent = `no bundled model (${page.manifest?.note ?? "data/index.json not found"})`;
    bundled.disabled = true;
    document.querySelector<HTMLInputElement>('input[name="model-source"][value="folder"]')!.checked = true;
    ui.folderPick.hidden = false;
  }
  for (const s of page.manifest?.samples ?? []) {
    const b = Object.assign(document.createElement("button"), { textContent: s.label, type: "button", className: "link" });
    b.dataset.sample = s.name;
    b.onclick = async () => {
      const res = await fetch(new URL(s.path, document.baseURI));
      await setText(await res.text(), `${s.name}.txt`);
      if (s.name === "tinyshakespeare" && ui.prompt.value === "Once upon a time") ui.prompt.value = "ROMEO:";
    };
    ui.samples.append(b);
  }
}

function wire(): void {
  for (const r of document.querySelectorAll<HTMLInputElement>('input[name="model-source"]')) {
    r.onchange = () => (ui.folderPick.hidden = selectedSource() !== "folder");
  }
  ui.modelDir.onchange = () => {
    ui.modelFiles.value = "";
    loadModel();
  };
  ui.modelFiles.onchange = () => {
    ui.modelDir.value = "";
    loadModel();
  };
  ui.loadModel.onclick = loadModel;
  ui.backendPref.onchange = () => startWorker(ui.backendPref.value as BackendPref);
  ui.method.onchange = refresh;
  ui.train.onclick = train;
  ui.cancel.onclick = () => {
    send({ type: "cancel" });
    ui.status.textContent = "cancelling after this step…";
  };
  ui.generate.onclick = generate;
  ui.prompt.onkeydown = (e) => {
    if (e.key === "Enter") generate();
  };
  ui.export.onclick = () => send({ type: "export" });
  ui.adapterFiles.onchange = () => {
    const files = [...(ui.adapterFiles.files ?? [])];
    if (!files.length) return;
    showError(null);
    ui.adapterInfo.textContent = "loading…";
    send({ type: "load-adapter", files });
  };
  ui.text.oninput = () => {
    page.textName = "pasted text";
    ui.textStats.textContent = `${count(ui.text.value.length)} characters`;
  };
  ui.textFile.onchange = async () => {
    const f = ui.textFile.files?.[0];
    if (f) await setText(await f.text(), f.name);
  };
  // Dropping a file anywhere on the text card reads it; dropped plain text is the browser's default.
  const card = ui.text.closest(".card") as HTMLElement;
  card.ondragover = (e) => {
    if (e.dataTransfer?.types.includes("Files")) e.preventDefault();
  };
  card.ondrop = async (e) => {
    const f = e.dataTransfer?.files[0];
    if (!f) return;
    e.preventDefault();
    await setText(await f.text(), f.name);
  };
}

wire();
refresh();
draw();
// ?backend=cpu|webgpu|auto preselects the backend (links, tests); ?simd=plain|relaxed|auto the CPU's SIMD build.
const query = new URLSearchParams(location.search);
const asked = query.get("backend");
if (asked === "cpu" || asked === "webgpu" || asked === "auto") ui.backendPref.value = asked;
const simd = query.get("simd");
if (simd === "plain" || simd === "relaxed" || simd === "auto") page.simd = simd;
await readManifest();
startWorker(ui.backendPref.value as BackendPref);
