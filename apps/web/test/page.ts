/**
 * The built page in headless Chromium, for tests: build it with Vite into a temporary folder, serve
 * it cross-origin isolated from 127.0.0.1, launch Chromium (playwright-core) and open the page with
 * a backend preference. browser.test.ts and the server's one-run test (the page as one edge of
 * "one spec, identical losses") share it.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { type DataDir, planDataAssets, resolveWebDataDir } from "../src/build/data-assets.ts";
import { chromiumPath, launchChromium, serveDir } from "./chromium.ts";

const webRoot = fileURLToPath(new URL("..", import.meta.url));
/** The data directory the page bundles its model from (as `vite build` finds it). */
export const pageData: DataDir = resolveWebDataDir({ argv: process.argv, env: process.env, repoRoot: join(webRoot, "..", "..") });

/** Why the page cannot be tested here (no Chromium, no model to bundle), or false. */
export function pageSkip(): string | false {
  if (!existsSync(chromiumPath)) return `no Chromium at ${chromiumPath} (install it with scripts/install-system.sh, or set CHROMIUM_PATH)`;
  const bundled = planDataAssets(pageData).manifest;
  return bundled.models.length ? false : `no model to bundle: ${bundled.note}`;
}

export interface PageHost {
  url: string;
  browser: Browser;
  /** Where the page was built. */
  outDir: string;
  close(): Promise<void>;
}

/** Build the page, serve it and launch Chromium. */
export async function startPage(): Promise<PageHost> {
  const outDir = mkdtempSync(join(tmpdir(), "lowrank-web-dist-"));
  const { build } = await import("vite");
  await build({ configFile: join(webRoot, "vite.config.ts"), logLevel: "error", build: { outDir, emptyOutDir: true } });
  const { server, url } = await serveDir(outDir, true);
  const browser = await launchChromium();
  return {
    url,
    browser,
    outDir,
    async close() {
      await browser.close();
      server.close();
      rmSync(outDir, { recursive: true, force: true });
    },
  };
}

export interface OpenPage {
  page: Page;
  /** Page errors and console errors seen so far. */
  problems: string[];
  /** The backend badge's text ("CPU · cpu (…)" or "WebGPU · …"). */
  backend: string;
}

/** A fresh page with `query` (e.g. "backend=cpu&simd=plain") once the worker is ready and the bundled model loaded. */
export async function openPage(host: PageHost, query: string, say: (line: string) => void = () => {}): Promise<OpenPage> {
  const context = await host.browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  await page.goto(`${host.url}?${query}`);
  await page.waitForSelector('#backend[data-kind="webgpu"], #backend[data-kind="cpu"]', { timeout: 30_000 });
  const backend = (await page.textContent("#backend"))!.trim();
  const note = (await page.isVisible("#backend-note")) ? (await page.textContent("#backend-note"))!.trim() : "";
  say(`backend (${query}): ${backend}${note ? ` | ${note}` : ""}`);
  await page.waitForFunction(() => document.querySelector("#model-info")?.textContent?.includes("parameters"), null, { timeout: 30_000 });
  assert.equal(await page.evaluate(() => crossOriginIsolated), true, "the page should be cross-origin isolated");
  return { page, problems, backend };
}

/** Wait for the run to end; fails the test when it failed. Returns "done" or "cancelled". */
export async function finished(page: Page, timeout: number): Promise<string> {
  await page.waitForSelector('#train-state:is([data-state="done"], [data-state="failed"], [data-state="cancelled"])', { timeout });
  const error = (await page.isVisible("#error")) ? await page.textContent("#error") : null;
  const state = (await page.getAttribute("#train-state", "data-state"))!;
  assert.notEqual(state, "failed", `training failed: ${error}`);
  return state;
}

/** Click the download link of `name` (shown after Export) and save the file to `path`. */
export async function download(page: Page, name: string, path: string): Promise<void> {
  const [file] = await Promise.all([page.waitForEvent("download"), page.click(`#dl-${name.replace(/[^a-z0-9]+/gi, "-")}`)]);
  assert.equal(file.suggestedFilename(), name);
  await file.saveAs(path);
}
