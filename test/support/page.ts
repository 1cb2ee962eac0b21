/**
 * A consumer's web page: Vite bundles a module from the consumer project (its @lowrank imports
 * resolve to the installed tarballs), then headless Chromium (playwright-core, the same launch as
 * apps/web/test/browser.test.ts) opens it from 127.0.0.1 and reports what the page wrote.
 */
import { existsSync, readFileSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { extname, join, normalize, sep } from "node:path";

export const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARGS = [
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  "--disable-dev-shm-usage",
  "--enable-unsafe-webgpu",
];
const MIME: Record<string, string> = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".wasm": "application/wasm" };

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

function serve(dir: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = normalize(join(dir, path.endsWith("/") ? `${path}index.html` : path));
    if (!file.startsWith(dir + sep) || !existsSync(file)) return void res.writeHead(404).end("not found");
    res.writeHead(200, { "Content-Type": MIME[extname(file)] ?? "application/octet-stream", "Cache-Control": "no-store" }).end(readFileSync(file));
  });
  return new Promise((done) => server.listen(0, "127.0.0.1", () => done({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/` })));
}

/**
 * Opens the built page and waits for it to write its body (or fail). Returns the body text, or
 * throws with the page's error and console.
 */
export async function runPage(outDir: string, timeoutMs = 60_000): Promise<string> {
  const { server, url } = await serve(outDir);
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ARGS });
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
