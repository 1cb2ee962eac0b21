/**
 * End to end in a real browser: build the page with Vite, serve it cross-origin isolated from
 * 127.0.0.1, drive headless Chromium (playwright-core) through a short LoRA run, check the loss
 * falls, download the adapter and check it is a PEFT adapter, load it back through the file
 * picker and check it generates what the trained adapter generates. Then the same run on the
 * CPU backend (same losses) and a cancelled run. Screenshot in test/artifacts/.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { openSafetensors } from "@lowrank/safetensors";
import { planDataAssets, resolveWebDataDir } from "../src/build/data-assets.ts";

const webRoot = fileURLToPath(new URL("..", import.meta.url));
const artifacts = join(webRoot, "test", "artifacts");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARGS = [
  "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
  "--disable-quic", "--disable-dev-shm-usage", "--enable-unsafe-webgpu",
];

const data = resolveWebDataDir({ argv: process.argv, env: process.env, repoRoot: join(webRoot, "..", "..") });
const bundled = planDataAssets(data).manifest;
const skip = !existsSync(chromiumPath)
  ? `no Chromium at ${chromiumPath} (install it with scripts/install-system.sh, or set CHROMIUM_PATH)`
  : !bundled.models.length
    ? `no model to bundle: ${bundled.note}`
    : false;

const started = Date.now();
/** What ran and what it measured, as test diagnostics (the spec reporter prints them). */
let diagnostic: (line: string) => void = () => {};
const say = (line: string) => diagnostic(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${line}`);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

const MIME: Record<string, string> = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".json": "application/json",
  ".txt": "text/plain; charset=utf-8", ".safetensors": "application/octet-stream", ".wasm": "application/wasm",
};

/** dist/ over http with the cross-origin isolation headers (COOP/COEP), like the dev and preview servers. */
function serve(dir: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = normalize(join(dir, path.endsWith("/") ? `${path}index.html` : path));
    if (!file.startsWith(dir + sep) || !existsSync(file)) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, {
      "Content-Type": MIME[extname(file)] ?? "application/octet-stream",
      "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Embedder-Policy": "require-corp",
      "Cache-Control": "no-store",
    });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    resolve({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/` });
  }));
}

const env: { outDir: string; server: Server | null; url: string; browser: Browser | null } = { outDir: "", server: null, url: "", browser: null };

before(async () => {
  if (skip) return;
  env.outDir = mkdtempSync(join(tmpdir(), "lowrank-web-dist-"));
  mkdirSync(artifacts, { recursive: true });
  const { build } = await import("vite");
  await build({ configFile: join(webRoot, "vite.config.ts"), logLevel: "error", build: { outDir: env.outDir, emptyOutDir: true } });
  say(`built the page with vite into ${env.outDir}`);
  Object.assign(env, await serve(env.outDir));
  const { chromium } = await import("playwright-core");
  env.browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ARGS });
});

after(async () => {
  await env.browser?.close();
  env.server?.close();
  if (env.outDir) rmSync(env.outDir, { recursive: true, force: true });
});

/** A fresh page with the given backend preference; fails the test on page errors. */
async function open(backend: string): Promise<{ page: Page; problems: string[]; backend: string }> {
  const context = await env.browser!.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  await page.goto(`${env.url}?backend=${backend}`);
  await page.waitForSelector('#backend[data-kind="webgpu"], #backend[data-kind="cpu"]', { timeout: 30_000 });
  const kind = (await page.textContent("#backend"))!.trim();
  const note = (await page.isVisible("#backend-note")) ? (await page.textContent("#backend-note"))!.trim() : "";
  say(`backend (${backend}): ${kind}${note ? ` | ${note}` : ""}`);
  await page.waitForFunction(() => document.querySelector("#model-info")?.textContent?.includes("parameters"), null, { timeout: 30_000 });
  assert.equal(await page.evaluate(() => crossOriginIsolated), true, "the page should be cross-origin isolated");
  return { page, problems, backend: kind };
}

const TEXT = () => readFileSync(join(data.dir!, "datasets/tinyshakespeare/input.txt"), "utf8").slice(0, 6000);

/** Fill in the form as a person would and press Train. */
async function startTraining(page: Page, steps: number): Promise<void> {
  await page.fill("#text", TEXT());
  for (const [id, v] of [["steps", String(steps)], ["lr", "0.01"], ["batch", "4"], ["seq-len", "32"], ["rank", "8"], ["alpha", "16"], ["warmup", "0"]]) await page.fill(`#${id}`, v);
  await page.selectOption("#method", "lora");
  await page.fill("#prompt", "ROMEO:");
  await page.fill("#max-tokens", "24");
  await page.click("#train");
  await page.waitForSelector('#train-state[data-state="training"]');
}

async function finished(page: Page, timeout: number): Promise<string> {
  await page.waitForSelector('#train-state:is([data-state="done"], [data-state="failed"], [data-state="cancelled"])', { timeout });
  const error = (await page.isVisible("#error")) ? await page.textContent("#error") : null;
  const state = (await page.getAttribute("#train-state", "data-state"))!;
  assert.notEqual(state, "failed", `training failed: ${error}`);
  return state;
}

const losses = async (page: Page) => JSON.parse((await page.getAttribute("#chart", "data-losses"))!) as number[];
const generated = (page: Page) => page.waitForFunction(() => !(document.querySelector("#generate") as HTMLButtonElement).disabled, null, { timeout: 60_000 });
let firstRun: { backend: string; losses: number[] } | null = null;

test("the page fine-tunes stories260K, shows the loss falling and exports a PEFT adapter", { skip, timeout: 120_000 }, async (t) => {
  diagnostic = (line) => t.diagnostic(line);
  const { page, problems, backend } = await open(process.env.LOWRANK_WEB_BACKEND ?? "auto");
  await startTraining(page, 16);
  // The page stays responsive while the worker trains: a frame comes promptly.
  await page.waitForFunction(() => (document.querySelector("#step")?.textContent ?? "").includes("/"), null, { timeout: 60_000 });
  const ping = Date.now();
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(r)));
  const pingMs = Date.now() - ping;
  assert.equal(await finished(page, 100_000), "done");

  const ls = await losses(page);
  firstRun = { backend, losses: ls };
  const [evalBefore, evalAfter] = [Number(await page.textContent("#eval-before")), Number(await page.textContent("#eval-after"))];
  say(`train loss ${await page.textContent("#loss-first")} -> ${await page.textContent("#loss-last")} (mean of the first 3 steps ${mean(ls.slice(0, 3)).toFixed(4)}, last 3 ${mean(ls.slice(-3)).toFixed(4)}); eval loss ${evalBefore} -> ${evalAfter}`);
  say(`${ls.length} steps on ${backend}; tokens/s ${await page.textContent("#tps")}; memory ${await page.textContent("#memory")}; a frame during training took ${pingMs} ms`);
  assert.equal(ls.length, 16);
  assert.ok(ls.every(Number.isFinite));
  assert.ok(mean(ls.slice(-3)) < mean(ls.slice(0, 3)) - 0.1, `train loss should fall: ${ls.join(", ")}`);
  assert.ok(evalAfter < evalBefore, `eval loss should fall: ${evalBefore} -> ${evalAfter}`);
  assert.ok(pingMs < 2000, `the page was unresponsive for ${pingMs} ms during training`);

  // Greedy generation side by side runs on its own after training.
  await generated(page);
  const [base, tuned] = [(await page.textContent("#out-base"))!, (await page.textContent("#out-tuned"))!];
  say(`greedy "ROMEO:" base:  ${JSON.stringify(base)}`);
  say(`greedy "ROMEO:" tuned: ${JSON.stringify(tuned)}`);
  assert.ok(base && tuned && base !== "…" && tuned !== "…" && base !== tuned);

  // Download the adapter: two files in PEFT's layout.
  await page.click("#export");
  await page.waitForSelector("#dl-adapter-config-json");
  const saved: Record<string, string> = {};
  for (const [id, name] of [["dl-adapter-config-json", "adapter_config.json"], ["dl-adapter-model-safetensors", "adapter_model.safetensors"]]) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(`#${id}`)]);
    assert.equal(download.suggestedFilename(), name);
    saved[name] = join(artifacts, name);
    await download.saveAs(saved[name]);
  }
  const config = JSON.parse(readFileSync(saved["adapter_config.json"], "utf8"));
  assert.equal(config.peft_type, "LORA");
  assert.equal(config.r, 8);
  assert.equal(config.lora_alpha, 16);
  assert.equal(config.task_type, "CAUSAL_LM");
  assert.equal(config.base_model_name_or_path, "stories260K");
  const st = await openSafetensors(new Uint8Array(readFileSync(saved["adapter_model.safetensors"])));
  try {
    assert.equal(st.names.filter((k) => k.endsWith(".lora_A.weight")).length, 35, "all-linear on stories260K: 5 layers x 7 projections");
    for (const k of st.names) {
      assert.match(k, /^base_model\.model\.model\.layers\.[0-4]\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.lora_[AB]\.weight$/);
      assert.equal(st.tensors[k].dtype, "F32");
    }
    const q = "base_model.model.model.layers.0.self_attn.q_proj";
    assert.deepEqual(st.tensors[`${q}.lora_A.weight`].shape, [8, 64]); // [r, in]
    assert.deepEqual(st.tensors[`${q}.lora_B.weight`].shape, [64, 8]); // [out, r]
    assert.deepEqual(st.tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape, [32, 8]);
    assert.deepEqual(st.tensors["base_model.model.model.layers.4.mlp.down_proj.lora_A.weight"].shape, [8, 172]);
    assert.equal(st.metadata.format, "pt");
    say(`downloaded a PEFT adapter: ${st.names.length} tensors + adapter_config.json (peft_type ${config.peft_type}) into ${artifacts}`);
  } finally {
    await st.close();
  }

  // Load the downloaded adapter through the file picker: it must generate what the trained one did.
  await page.setInputFiles("#adapter-files", [saved["adapter_config.json"], saved["adapter_model.safetensors"]]);
  await page.waitForFunction(() => (document.querySelector("#adapter-info")?.textContent ?? "").startsWith("loaded:"), null, { timeout: 30_000 });
  await page.waitForFunction(() => !["", "…"].includes(document.querySelector("#out-loaded")?.textContent ?? ""), null, { timeout: 60_000 });
  await generated(page);
  assert.equal(await page.textContent("#out-loaded"), tuned);

  const shot = join(artifacts, "web-page.png");
  await page.screenshot({ path: shot, fullPage: true });
  say(`screenshot: ${shot}`);
  assert.deepEqual(problems, []);
  await page.context().close();
});

test("on the CPU backend: a model folder from the picker, the same losses, and Cancel", { skip, timeout: 60_000 }, async (t) => {
  diagnostic = (line) => t.diagnostic(line);
  const { page, problems } = await open("cpu");
  // The same model, this time from a folder chosen with the directory picker.
  await page.check('input[name="model-source"][value="folder"]');
  await page.setInputFiles("#model-dir", join(data.dir!, "models/stories260K-hf"));
  await page.waitForFunction(() => document.querySelector("#model-info")?.textContent?.startsWith("stories260K-hf:"), null, { timeout: 30_000 });
  say(`from the folder picker: ${await page.textContent("#model-info")}`);
  await startTraining(page, 16);
  assert.equal(await finished(page, 50_000), "done");
  const ls = await losses(page);
  if (firstRun) {
    const worst = Math.max(...ls.map((l, i) => Math.abs(l - firstRun!.losses[i])));
    say(`cpu vs ${firstRun.backend}: max loss difference over 16 steps ${worst.toExponential(2)}`);
    assert.ok(worst < 2e-3, `losses differ by ${worst}`);
  }
  await generated(page);

  await startTraining(page, 500);
  await page.waitForFunction(() => /^[2-9]\d* \//.test(document.querySelector("#step")?.textContent ?? ""), null, { timeout: 30_000 });
  await page.click("#cancel");
  assert.equal(await finished(page, 20_000), "cancelled");
  const n = (await losses(page)).length;
  say(`cancelled after ${n} of 500 steps`);
  assert.ok(n >= 2 && n < 500);
  await generated(page);
  assert.equal(await page.isEnabled("#export"), true, "a cancelled run can still be exported");
  assert.deepEqual(problems, []);
  await page.context().close();
});
