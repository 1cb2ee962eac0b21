/**
 * A consumer's web page: Vite bundles a module from the consumer project (its @lowrank imports
 * resolve to the installed tarballs), then headless Chromium (apps/web/test/chromium.ts, the web
 * app tests' launch and server) opens it from 127.0.0.1 and reports what the page wrote.
 */
import { join } from "node:path";
import { launchChromium, serveDir } from "../../apps/web/test/chromium.ts";

export { chromiumPath } from "../../apps/web/test/chromium.ts";

/** Errors end up in the title, so the test can tell a failed page from a slow one. */
const HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>running</title>
<script>
  addEventListener("error", (e) => { document.title = "error: " + e.message; });
  addEventListener("unhandledrejection", (e) => { document.title = "error: " + (e.reason && e.reason.stack || e.reason); });
</script>
<script type="module" src="./main.js"></script></head><body></body></html>
`;

/** index.html + main.js (the module under test) in dir, built with Vite into outDir. */
export async function buildPage(dir: string, outDir: string, main: string): Promise<void> {
  const { writeFileSync } = await import("node:fs");
  writeFileSync(join(dir, "index.html"), HTML);
  writeFileSync(join(dir, "main.js"), main);
  const { build } = await import("vite");
  await build({
    configFile: false,
    root: dir,
    base: "./",
    logLevel: "error",
    build: { outDir, emptyOutDir: true, target: "es2022" }, // top-level await
  });
}

/**
 * Opens the built page and waits for it to write its body (or fail). Returns the body text, or
 * throws with the page's error and console.
 */
export async function runPage(outDir: string, timeoutMs = 60_000): Promise<string> {
  const { server, url } = await serveDir(outDir, false);
  const browser = await launchChromium();
  const log: string[] = [];
  try {
    const page = await browser.newPage();
    page.on("console", (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
    await page.goto(url);
    // Vite's index.html may leave whitespace in <body>: wait for text.
    await page.waitForFunction(() => (document.body.textContent ?? "").trim() !== "" || document.title.startsWith("error"), null, { timeout: timeoutMs });
    const title = await page.title();
    if (title.startsWith("error")) throw new Error(`${url}: ${title}\n${log.join("\n")}`);
    return ((await page.textContent("body")) ?? "").trim();
  } catch (err) {
    if (err instanceof Error && !err.message.includes(url)) err.message += `\npage console:\n${log.join("\n")}`;
    throw err;
  } finally {
    await browser.close();
    await new Promise((done) => server.close(done));
  }
}
