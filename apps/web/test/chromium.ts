/**
 * Headless Chromium for tests: where it is, how it is launched (playwright-core), and a static
 * server for a built folder on 127.0.0.1. The web app's page tests (page.ts) and the repository's
 * packed-tarball page (test/support/page.ts) share it.
 */
import { existsSync, readFileSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { extname, join, normalize, sep } from "node:path";
import type { Browser } from "playwright-core";

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

const MIME: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
  ".safetensors": "application/octet-stream",
  ".wasm": "application/wasm",
};

/** Headless Chromium at chromiumPath. */
export async function launchChromium(): Promise<Browser> {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: chromiumPath, headless: true, args: ARGS });
}

/**
 * `dir` over http on a free port of 127.0.0.1; `isolated` adds the cross-origin isolation headers
 * (COOP/COEP) that the web app's dev and preview servers send.
 */
export function serveDir(dir: string, isolated: boolean): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = normalize(join(dir, path.endsWith("/") ? `${path}index.html` : path));
    if (!file.startsWith(dir + sep) || !existsSync(file)) {
      res.writeHead(404).end("not found");
      return;
    }
    const isolation = isolated ? { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" } : {};
    res.writeHead(200, { "Content-Type": MIME[extname(file)] ?? "application/octet-stream", ...isolation, "Cache-Control": "no-store" });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      resolve({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/` });
    }),
  );
}
