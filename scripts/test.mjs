#!/usr/bin/env node
// The repository's test run (`npm test`):
//   1. typecheck (tsc -p tsconfig.json), the size budget (scripts/size-budget.mjs), the runtime
//      edges (scripts/check-edges.mjs: no node: import in packages/*/src outside the edge files),
//      the workspace source map (scripts/workspace-map.mjs --check: tsconfig.paths.json and
//      deno.json's imports match the packages' exports) and the
//      formatting (prettier --check, .prettierrc.json / .prettierignore);
//   2. every packages/* and apps/* directory with test/*.test.ts, then the repository's own test/
//      (packed tarballs, turbo, lockfiles), under Node (node --import tsx --test);
//   3. the core suites (CORE below) again under Bun (bun test) and Deno (deno test), so the core
//      provably runs on all three runtimes.
// Suites run one after another (2-core CI machines). Each prints one line; a failing suite also
// prints its full output. The last line is always exactly "N passed, N failed" (test counts parsed
// from each runner's summary; the four checks count as one test each). Exit code 1 if anything failed.
//
// Options (for fast local runs):
//   --only <pkg>[,<pkg>]     only these packages (directory name or package name); skips the checks
//   --runtimes <list>        comma-separated subset of node,bun,deno (default: all three)
//   --timeout <seconds>      per-suite limit (default 1200)
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BIN = join(ROOT, "node_modules", ".bin");
/** Packages whose suites must also pass under Bun and Deno. */
const CORE = ["packages/tensor", "packages/backend-cpu"];
// WebGPU under the other runtimes: the conformance suite and the fused kernels on Deno's own WebGPU
// (naga validates WGSL differently from Dawn), a smoke run on Bun (Dawn).
const EXTRA = [
  {
    runtime: "deno",
    rel: "packages/backend-webgpu",
    files: ["test/conformance.test.ts", "test/training.test.ts", "test/smoke.test.ts", "test/fused-nn.test.ts"],
    flags: ["--unstable-webgpu"],
  },
  { runtime: "bun", rel: "packages/backend-webgpu", files: ["test/smoke.test.ts"], flags: [] },
];
const RUNTIMES = ["node", "bun", "deno"];
/** Whether `npm test` fails on unformatted files (on since the tree was formatted in one commit, see .git-blame-ignore-revs). */
const CHECK_FORMAT = true;
/** Dawn prints these in every process that loads it; harmless. */
const DAWN_NOISE = /^Warning: maxDynamic\w+ artificially reduced.*$/;
const ANSI = /\x1b\[[0-9;]*m/g;

const { values: opts } = parseArgs({
  options: {
    only: { type: "string", multiple: true },
    runtimes: { type: "string" },
    timeout: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help) {
  console.log("usage: node scripts/test.mjs [--only <pkg>[,<pkg>]] [--runtimes node,bun,deno] [--timeout <seconds>]");
  process.exit(0);
}
const only = (opts.only ?? [])
  .flatMap((s) => s.split(","))
  .map((s) => s.trim())
  .filter(Boolean);
const runtimes = opts.runtimes ? opts.runtimes.split(",").map((s) => s.trim()) : RUNTIMES;
for (const r of runtimes) if (!RUNTIMES.includes(r)) fatal(`--runtimes: unknown runtime "${r}" (use ${RUNTIMES.join(",")})`);
const timeoutMs = Number(opts.timeout ?? 1200) * 1000;

function fatal(msg) {
  console.error(`test: ${msg}`);
  process.exit(2);
}

/** Workspace directories with test/*.test.ts, found by scanning so new packages join automatically. */
function testPackages() {
  const found = [];
  const dirs = ["packages", "apps"].flatMap((group) => {
    const base = join(ROOT, group);
    return existsSync(base)
      ? readdirSync(base)
          .sort()
          .map((name) => join(base, name))
      : [];
  });
  dirs.push(join(ROOT, "benchmarks")); // a workspace of its own at the root
  dirs.push(ROOT); // test/: the packed packages and the lockfiles, as a consumer and a fresh clone see them
  {
    for (const dir of dirs) {
      const name = relative(ROOT, dir);
      const testDir = join(dir, "test");
      if (!existsSync(join(dir, "package.json")) || !existsSync(testDir)) continue;
      const files = readdirSync(testDir)
        .filter((f) => f.endsWith(".test.ts"))
        .sort()
        .map((f) => `test/${f}`);
      if (!files.length) continue;
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
      found.push({ dir, rel: relative(ROOT, dir) || ".", name: dir === ROOT ? "repository" : pkg.name ?? name, files });
    }
  }
  return found;
}

function selected(pkg) {
  return !only.length || only.some((o) => o === pkg.name || o === basename(pkg.dir) || o === pkg.rel);
}

/** Run a command, capture stdout+stderr interleaved, drop Dawn's noise. */
function exec(cmd, args, cwd) {
  return new Promise((done) => {
    const t0 = performance.now();
    // NO_COLOR keeps the summaries parseable (Deno treats any FORCE_COLOR as "on", so drop it).
    const env = { ...process.env, NO_COLOR: "1" };
    delete env.FORCE_COLOR;
    delete env.NODE_TEST_CONTEXT; // we may itself run under node --test; children must not report to it
    const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let timedOut = false;
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      done({ code: null, out: `${out}\ncannot start ${cmd}: ${err.message}`, ms: performance.now() - t0, timedOut });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const clean = out
        .replace(ANSI, "")
        .split("\n")
        .filter((l) => !DAWN_NOISE.test(l))
        .join("\n");
      done({ code, signal, out: clean, ms: performance.now() - t0, timedOut });
    });
  });
}

const last = (text, re) => {
  let m = null;
  for (const x of text.matchAll(re)) m = x;
  return m ? Number(m[1]) : undefined;
};

/** Test counts from each runner's summary. */
const parsers = {
  // node --test (tap "# pass N" or spec "ℹ pass N")
  node: (o) => ({
    passed: last(o, /^[#ℹ] pass (\d+)$/gm),
    failed: (last(o, /^[#ℹ] fail (\d+)$/gm) ?? 0) + (last(o, /^[#ℹ] cancelled (\d+)$/gm) ?? 0),
    skipped: (last(o, /^[#ℹ] skipped (\d+)$/gm) ?? 0) + (last(o, /^[#ℹ] todo (\d+)$/gm) ?? 0),
    found: /^[#ℹ] pass \d+$/m.test(o),
  }),
  // bun test: " 3 pass" / " 1 skip" / " 0 fail"
  bun: (o) => ({
    passed: last(o, /^\s*(\d+) pass$/gm),
    failed: last(o, /^\s*(\d+) fail$/gm) ?? 0,
    skipped: (last(o, /^\s*(\d+) skip$/gm) ?? 0) + (last(o, /^\s*(\d+) todo$/gm) ?? 0),
    found: /^\s*\d+ pass$/m.test(o),
  }),
  // deno test: "ok | 5 passed (2 steps) | 0 failed | 1 ignored (12ms)"
  deno: (o) => ({
    passed: last(o, /^(?:ok|FAILED) \| (\d+) passed/gm),
    failed: last(o, /^(?:ok|FAILED) \|.*?\| (\d+) failed/gm) ?? 0,
    skipped: last(o, /^(?:ok|FAILED) \|.*?\| (\d+) ignored/gm) ?? 0,
    found: /^(?:ok|FAILED) \| \d+ passed/m.test(o),
  }),
};

function commandFor(runtime, files, flags = []) {
  if (runtime === "node") return [process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", ...files]];
  if (runtime === "bun") return [join(BIN, "bun"), ["test", ...flags, ...files.map((f) => `./${f}`)]];
  return [join(BIN, "deno"), ["test", "-A", "--no-check", ...flags, ...files]];
}

/** A process killed by a signal (SIGABRT) whose summary says every test passed. */
function abortedAfterPassing(r) {
  const s = parsers.deno(r.out);
  return r.code !== 0 && !r.timedOut && (r.signal === "SIGABRT" || r.code === 134) && s.found && s.failed === 0;
}

const results = [];
const fmtTime = (ms) => `${(ms / 1000).toFixed(1)}s`;

function report(label, r, summary, ok, detail) {
  results.push({ label, ok, ...summary });
  console.log(`${ok ? "ok  " : "FAIL"}  ${label.padEnd(36)} ${detail.padEnd(40)} ${fmtTime(r.ms)}`);
  if (!ok) {
    const why = r.timedOut ? `timed out after ${timeoutMs / 1000}s` : `exit ${r.code}${r.signal ? ` (${r.signal})` : ""}`;
    console.log(`----- ${label}: ${why}, full output -----\n${r.out.trimEnd()}\n----- end ${label} -----`);
  }
}

async function check(label, cmd, args) {
  const r = await exec(cmd, args, ROOT);
  const ok = r.code === 0;
  report(label, r, { passed: ok ? 1 : 0, failed: ok ? 0 : 1, skipped: 0 }, ok, ok ? "ok" : "failed");
}

async function suite(runtime, pkg) {
  const [cmd, args] = commandFor(runtime, pkg.files, pkg.flags);
  const label = `${runtime.padEnd(5)} ${pkg.name}`;
  if (runtime !== "node" && !existsSync(cmd)) {
    const r = { code: null, out: `${cmd} not found: run npm install at the repository root (bun and deno are devDependencies)`, ms: 0 };
    return report(label, r, { passed: 0, failed: 1, skipped: 0 }, false, "runtime missing");
  }
  let r = await exec(cmd, args, pkg.dir);
  if (runtime === "deno" && abortedAfterPassing(r)) {
    // Deno's WebGPU sometimes aborts in its native teardown ("double free or corruption",
    // "corrupted size vs. prev_size") after every test has passed: seen in about one run in five of
    // the WebGPU conformance suite since 2026-12-03's WebGPU changes, never in 6 runs before them;
    // not yet explained. Said out loud and run once more, so a real failure still fails.
    console.log(
      `note  ${`${runtime.padEnd(5)} ${pkg.name}`.padEnd(36)} aborted at exit after all tests passed (${r.out.trimEnd().split("\n").pop()}); running it again`,
    );
    r = await exec(cmd, args, pkg.dir);
  }
  const s = parsers[runtime](r.out);
  const counts = { passed: s.passed ?? 0, failed: s.failed, skipped: s.skipped };
  // A crash, load error or timeout can exit non-zero without any failed test in the summary.
  if ((r.code !== 0 || !s.found) && counts.failed === 0) counts.failed = 1;
  const ok = r.code === 0 && counts.failed === 0;
  const detail = `${counts.passed} passed, ${counts.failed} failed${counts.skipped ? `, ${counts.skipped} skipped` : ""}${s.found ? "" : " (no summary)"}`;
  report(label, r, counts, ok, detail);
}

const t0 = performance.now();
const pkgs = testPackages().filter(selected);
if (only.length && !pkgs.length) fatal(`--only ${only.join(",")}: no package with test/*.test.ts matches`);

if (!only.length) {
  await check("typecheck", join(BIN, "tsc"), ["-p", "tsconfig.json"]);
  await check("size-budget", process.execPath, [join(ROOT, "scripts", "size-budget.mjs")]);
  await check("check-edges", process.execPath, [join(ROOT, "scripts", "check-edges.mjs")]);
  if (CHECK_FORMAT) await check("format", join(BIN, "prettier"), ["--check", "."]);
  else console.log(`skip  ${"format".padEnd(36)} not enforced yet (CHECK_FORMAT in scripts/test.mjs; npm run format:check)`);
  await check("workspace-map", process.execPath, [join(ROOT, "scripts", "workspace-map.mjs"), "--check"]);
}
if (runtimes.includes("node")) for (const pkg of pkgs) await suite("node", pkg);
for (const runtime of runtimes.filter((r) => r !== "node")) {
  for (const pkg of pkgs.filter((p) => CORE.includes(p.rel))) await suite(runtime, pkg);
  for (const extra of EXTRA.filter((e) => e.runtime === runtime)) {
    const pkg = pkgs.find((p) => p.rel === extra.rel);
    if (pkg) await suite(runtime, { ...pkg, files: extra.files, flags: extra.flags, name: `${pkg.name} (${extra.files.length} files)` });
  }
}

const passed = results.reduce((a, r) => a + r.passed, 0);
const failed = results.reduce((a, r) => a + r.failed, 0);
const skipped = results.reduce((a, r) => a + r.skipped, 0);
const bad = results.filter((r) => !r.ok).map((r) => r.label.replace(/\s+/g, " "));
console.log(
  `\n${results.length} suites in ${fmtTime(performance.now() - t0)}${skipped ? `, ${skipped} tests skipped` : ""}${
    bad.length ? `; failed: ${bad.join("; ")}` : ""
  }`,
);
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed || bad.length ? 1 : 0;
