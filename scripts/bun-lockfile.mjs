#!/usr/bin/env node
// bun.lockb from package-lock.json, so `bun install` and `npm ci` install the same versions.
// Bun migrates package-lock.json when it finds no lockfile of its own; this does that in a
// scratch copy of the manifests (the checkout's node_modules is not touched) and copies the
// result back. Run it after any change to package-lock.json (npm install / npm ci write only
// that); `bun install --frozen-lockfile` fails on a stale bun.lockb (test/bun-lockfile.test.ts).
// Usage: node scripts/bun-lockfile.mjs
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const bun = join(ROOT, "node_modules", ".bin", "bun");
if (!existsSync(bun)) {
  console.error(`bun-lockfile: ${bun} not found (bun is a devDependency: run npm ci first)`);
  process.exit(2);
}
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
const dirs = pkg.workspaces.flatMap((w) => {
  if (!w.endsWith("/*")) return [w];
  const parent = w.slice(0, -2);
  return spawnSync("git", ["ls-files", "--", `${parent}/*/package.json`], { cwd: ROOT, encoding: "utf8" })
    .stdout.split("\n")
    .filter((f) => f.split("/").length === 3)
    .map((f) => dirname(f));
});
const tmp = mkdtempSync(join(tmpdir(), "lowrank-bun-lockfile-"));
try {
  for (const f of ["package.json", "package-lock.json", "bunfig.toml", ...dirs.map((d) => `${d}/package.json`)]) {
    mkdirSync(dirname(join(tmp, f)), { recursive: true });
    copyFileSync(join(ROOT, f), join(tmp, f));
  }
  // --lockfile-only: resolve and write the lockfile, download and install nothing.
  const r = spawnSync(bun, ["install", "--lockfile-only", "--ignore-scripts"], { cwd: tmp, encoding: "utf8" });
  const out = `${r.stdout}${r.stderr}`;
  if (r.status !== 0 || !/migrated lockfile from package-lock\.json/.test(out) || !existsSync(join(tmp, "bun.lockb"))) {
    console.error(`bun-lockfile: bun install --lockfile-only in ${tmp} did not migrate package-lock.json to bun.lockb:\n${out}`);
    process.exit(1);
  }
  copyFileSync(join(tmp, "bun.lockb"), join(ROOT, "bun.lockb"));
  chmodSync(join(ROOT, "bun.lockb"), 0o644); // bun writes it executable (it prints itself when run)
  console.log(`bun-lockfile: wrote bun.lockb (${out.match(/\((\d+) packages\)/)?.[1] ?? "?"} packages) from package-lock.json`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
