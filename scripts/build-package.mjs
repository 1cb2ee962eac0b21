#!/usr/bin/env node
// `npm run build` in a publishable package: dist/ from src/ (ES modules, .d.ts, source maps) with
// the TypeScript compiler and the package's tsconfig.build.json. dist/ is emptied first so a
// renamed or deleted module never ships stale from an earlier build.
import { spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const cwd = process.cwd();
if (!existsSync(join(cwd, "tsconfig.build.json"))) {
  console.error(`build-package: ${join(cwd, "tsconfig.build.json")} not found (run it from a package directory, as npm run build does)`);
  process.exit(2);
}
rmSync(join(cwd, "dist"), { recursive: true, force: true });
const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
const r = spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd, stdio: "inherit" });
process.exit(r.status ?? 1);
