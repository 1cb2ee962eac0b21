/**
 * End to end in a real browser: build the page with Vite, serve it cross-origin isolated from
 * 127.0.0.1, drive headless Chromium (playwright-core) through a short LoRA run, check the loss
 * falls, download the adapter and check it is a PEFT adapter, load it back through the file
 * picker and check it generates what the trained adapter generates. Then the same run on the
 * CPU backend (same losses) and a cancelled run. Screenshot in test/artifacts/.
 */
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { Page } from "playwright-core";
import { openSafetensors } from "@lowrank/safetensors";
import { type PageHost, download, finished, openPage, pageData, pageSkip, startPage } from "./page.ts";

const webRoot = fileURLToPath(new URL("..", import.meta.url));
const artifacts = join(webRoot, "test", "artifacts");
const data = pageData;
const skip = pageSkip();

const started = Date.now();
/** What ran and what it measured, as test diagnostics (the spec reporter prints them). */
let diagnostic: (line: string) => void = () => {};
const say = (line: string) => diagnostic(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${line}`);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

let host: PageHost | null = null;

before(async () => {
  if (skip) return;
  mkdirSync(artifacts, { recursive: true });
  host = await startPage();
  say(`built the page with vite into ${host.outDir}`);
});

after(async () => {
  await host?.close();
});

/** A fresh page with the given backend preference; fails the test on page errors. */
const open = (backend: string) => openPage(host!, `backend=${backend}`, say);

const TEXT = () => readFileSync(join(data.dir!, "datasets/tinyshakespeare/input.txt"), "utf8").slice(0, 6000);

/** Fill in the form as a person would and press Train. */
async function startTraining(page: Page, steps: number): Promise<void> {
  await page.fill("#text", TEXT());
  for (const [id, v] of [
    ["steps", String(steps)],
    ["lr", "0.01"],
    ["batch", "4"],
    ["seq-len", "32"],
    ["rank", "8"],
    ["alpha", "16"],
    ["warmup", "0"],
  ])
    await page.fill(`#${id}`, v);
  await page.selectOption("#method", "lora");
  await page.fill("#prompt", "ROMEO:");
  await page.fill("#max-tokens", "24");
  await page.click("#train");
  await page.waitForSelector('#train-state[data-state="training"]');
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
  say(
    `train loss ${await page.textContent("#loss-first")} -> ${await page.textContent("#loss-last")} (mean of the first 3 steps ${mean(ls.slice(0, 3)).toFixed(
      4,
    )}, last 3 ${mean(ls.slice(-3)).toFixed(4)}); eval loss ${evalBefore} -> ${evalAfter}`,
  );
  say(
    `${ls.length} steps on ${backend}; tokens/s ${await page.textContent("#tps")}; memory ${await page.textContent(
      "#memory",
    )}; a frame during training took ${pingMs} ms`,
  );
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
  for (const name of ["adapter_config.json", "adapter_model.safetensors"]) {
    saved[name] = join(artifacts, name);
    await download(page, name, saved[name]);
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
