/**
 * Vite config of the page. `npm run dev|build|preview -w @lowrank/web` (scripts/vite.mjs) also
 * accept --data-dir; the test calls build() with this file.
 */
import { fileURLToPath } from "node:url";
import { type Rolldown, defineConfig } from "vite";
import { dataAssets, resolveWebDataDir } from "./src/build/data-assets.ts";

const root = fileURLToPath(new URL(".", import.meta.url));
// Cross-origin isolation: SharedArrayBuffer for the CPU backend's threaded WASM matmul.
const isolation = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };
// The packages import node: built-ins only lazily, inside their file-system functions, which the
// page never calls; Vite externalizes them to an empty module, and its note about it is expected.
const quiet: Pick<Rolldown.InputOptions, "onLog"> = {
  onLog(level, log, handler) {
    if (/Module "node:[^"]+" has been externalized for browser compatibility/.test(log.message)) return;
    handler(level, log);
  },
};

export default defineConfig({
  root,
  base: "./",
  // @lowrank imports resolve to their TypeScript sources through the repository's tsconfig paths
  // (tsconfig.paths.json); the packages' default export is a dist/ that only a build makes.
  resolve: { tsconfigPaths: true },
  plugins: [dataAssets(resolveWebDataDir({ argv: process.argv, env: process.env, repoRoot: fileURLToPath(new URL("../..", import.meta.url)) }))],
  worker: { format: "es", rolldownOptions: quiet },
  server: { headers: isolation, host: "127.0.0.1" },
  preview: { headers: isolation, host: "127.0.0.1" },
  build: { target: "es2022", chunkSizeWarningLimit: 1024, rolldownOptions: quiet },
});
