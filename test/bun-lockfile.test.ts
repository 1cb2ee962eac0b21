/**
 * Bun's lockfile: bun.lockb (binary; bunfig.toml's saveTextLockfile = false) at the top level,
 * with exactly package-lock.json's versions, and `bun install --frozen-lockfile` succeeds on a
 * fresh clone. The clone installs from the registry (or Bun's cache): without either it skips
 * and says so; a stale lockfile fails.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { BIN, ROOT, cleanEnv } from "./support/pack.ts";

const bun = join(BIN, "bun");
const noBun = existsSync(bun) ? false : `${bun} not found (bun is a devDependency: run npm ci)`;

test("bun.lockb is the top-level lockfile, binary, beside bunfig.toml's saveTextLockfile = false", () => {
  assert.ok(existsSync(join(ROOT, "bun.lockb")), "bun.lockb missing at the top level: run node scripts/bun-lockfile.mjs");
  assert.ok(!existsSync(join(ROOT, "bun.lock")), "bun.lock (Bun's text lockfile) exists: delete it; this repository keeps bun.lockb");
  assert.match(
    readFileSync(join(ROOT, "bunfig.toml"), "utf8"),
    /^\[install\][^[]*^saveTextLockfile\s*=\s*false\s*$/m,
    "bunfig.toml: [install] saveTextLockfile = false",
  );
  assert.equal(
    readFileSync(join(ROOT, "bun.lockb")).subarray(0, 38).toString("latin1"),
    "#!/usr/bin/env bun\nbun-lockfile-format",
    "bun.lockb is not Bun's binary lockfile",
  );
});

/** name@version of every registry package a lockfile pins. */
function npmVersions(): Set<string> {
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")).packages as Record<string, { version?: string; link?: boolean }>;
  const out = new Set<string>();
  for (const [key, e] of Object.entries(lock)) {
    if (!key.includes("node_modules/") || e.link || !e.version) continue;
    out.add(`${key.slice(key.lastIndexOf("node_modules/") + 13)}@${e.version}`);
  }
  return out;
}

/** The same from bun.lockb, which `bun bun.lockb` prints in yarn.lock v1 form. */
function bunVersions(): Set<string> {
  const r = spawnSync(bun, ["bun.lockb"], { cwd: ROOT, encoding: "utf8", env: cleanEnv() });
  assert.equal(r.status, 0, `bun bun.lockb failed: ${r.stderr}`);
  const out = new Set<string>();
  let name: string | null = null;
  for (const line of r.stdout.split("\n")) {
    const head = /^"?(@?[^@"\s]+)@/.exec(line);
    if (head && line.endsWith(":")) name = head[1];
    const v = /^ {2}version "([^"]+)"$/.exec(line);
    if (v && name && !v[1].startsWith("workspace:")) out.add(`${name}@${v[1]}`);
  }
  return out;
}

test("bun.lockb pins the versions package-lock.json pins", { skip: noBun }, () => {
  const npm = npmVersions();
  const bunSet = bunVersions();
  const onlyNpm = [...npm].filter((x) => !bunSet.has(x)).sort();
  const onlyBun = [...bunSet].filter((x) => !npm.has(x)).sort();
  assert.deepEqual({ onlyNpm, onlyBun }, { onlyNpm: [], onlyBun: [] }, "bun.lockb differs from package-lock.json: run node scripts/bun-lockfile.mjs");
  assert.ok(npm.size > 100, `only ${npm.size} packages in package-lock.json`);
});

test(
  "bun install --frozen-lockfile succeeds on a fresh clone",
  { skip: noBun || (existsSync(join(ROOT, ".git")) ? false : `${ROOT} is not a git checkout`) },
  (t) => {
    const dir = mkdtempSync(join(tmpdir(), "lowrank-bun-clone-"));
    try {
      const clone = spawnSync("git", ["clone", "--quiet", ROOT, dir], { encoding: "utf8" });
      assert.equal(clone.status, 0, `git clone ${ROOT}: ${clone.stderr}`);
      const t0 = performance.now();
      // --ignore-scripts: the check is the lockfile; postinstalls would only repeat work npm ci did.
      const r = spawnSync(bun, ["install", "--frozen-lockfile", "--ignore-scripts"], { cwd: dir, encoding: "utf8", env: cleanEnv() });
      const out = `${r.stdout}\n${r.stderr}`;
      if (
        r.status !== 0 &&
        /ConnectionRefused|FailedToOpenSocket|ENOTFOUND|getaddrinfo|ECONNRESET|NetworkUnreachable|timed? ?out/i.test(out) &&
        !/lockfile had changes|frozen/i.test(out)
      ) {
        t.skip(`the registry is unreachable and Bun's cache lacks packages: ${out.trim().split("\n").slice(-2).join(" / ")}`);
        return;
      }
      assert.equal(
        r.status,
        0,
        `bun install --frozen-lockfile in a fresh clone failed (run node scripts/bun-lockfile.mjs if package-lock.json changed):\n${out}`,
      );
      t.diagnostic(`bun install --frozen-lockfile: ${((performance.now() - t0) / 1000).toFixed(1)} s, ${out.match(/(\d+) packages installed/)?.[0] ?? "?"}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
