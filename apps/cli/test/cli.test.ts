/** The lowrank command end to end: spawned under Node (bin), Bun and Deno (src/main.ts). */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI_DIR, type Result, command, lowrank } from "./spawn-cli.ts";

const VERSION = (JSON.parse(readFileSync(join(CLI_DIR, "package.json"), "utf8")) as { version: string }).version;

const show = (r: Result): string => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

test("--help lists the commands that exist", async () => {
  const r = await lowrank("node", ["--help"]);
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /^Usage: lowrank <command>/m);
  assert.match(r.stdout, /^ {2}backends /m);
  assert.match(r.stdout, /--backend <auto\|cpu\|webgpu>/);
  assert.match(r.stdout, /^ {2}merge /m);
  assert.match(r.stdout, /^ {2}quantize /m);
  assert.match(r.stdout, /^ {2}dequantize /m);
  assert.match(r.stdout, /^ {2}generate /m);
  assert.match(r.stdout, /^ {2}bench /m);
  assert.match(r.stdout, /^ {2}plan /m);
});

test("--version prints the CLI package version", async () => {
  const r = await lowrank("node", ["--version"]);
  assert.equal(r.code, 0, show(r));
  assert.equal(r.stdout.trim(), VERSION);
});

for (const runtime of ["node", "bun", "deno"] as const) {
  test(`backends under ${runtime}: cpu, webgpu adapter or reason, auto choice`, async (t) => {
    if (!command(runtime)) return t.skip(`${runtime} is not installed (npm install at the repository root)`);
    const r = await lowrank(runtime, ["backends"]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, new RegExp(`^lowrank ${VERSION.replace(/\./g, "\\.")} on ${runtime} `, "m"), show(r));
    assert.match(r.stdout, /^ {2}cpu {5}cpu \(/m, show(r));
    // The matmul library and why: a BLAS with its path, or none with the reason.
    assert.match(r.stdout, /^ {2}blas {4}(\S.* at \S+ via .+: .+|none, matmul on the WASM kernel: .+)$/m, show(r));
    assert.match(r.stdout, /^ {2}webgpu {2}(\S.* via .*|unavailable: .+)$/m, show(r));
    // auto names its choice and why (software adapters such as llvmpipe are skipped for the cpu).
    assert.match(
      r.stdout,
      /^auto: (cpu \((webgpu adapter .+ is a software rasterizer.*|webgpu unavailable.*)\)|webgpu \(webgpu adapter .+ found\))$/m,
      show(r),
    );
    // Probing the adapter prints only our reason: the Node edge filters Dawn's native limit warnings.
    if (runtime === "node") assert.doesNotMatch(r.rawStderr, /artificially reduced/, show(r));
    t.diagnostic(r.stdout.split("\n").find((l) => l.startsWith("  webgpu")) ?? "");
  });
}

test("backends --json is machine-readable", async () => {
  const r = await lowrank("node", ["backends", "--json"]);
  assert.equal(r.code, 0, show(r));
  const j = JSON.parse(r.stdout) as { runtime: string; auto: { name: string }; selected: { name: string }; webgpu: { available: boolean } };
  assert.equal(j.runtime, "node");
  assert.equal(j.auto.name, "cpu");
  assert.equal(j.selected.name, "cpu");
  assert.equal(typeof j.webgpu.available, "boolean");
});

test("LOWRANK_BLAS=off and a bad LOWRANK_BLAS path show on the cpu line; the bad path fails without a stack", async () => {
  const off = await lowrank("node", ["backends"], { LOWRANK_BLAS: "off" });
  assert.equal(off.code, 0, show(off));
  assert.match(off.stdout, /^ {2}cpu {5}cpu \(\d+ threads?, wasm-simd( fma)?; no BLAS: LOWRANK_BLAS=off\)$/m, show(off));
  assert.match(off.stdout, /^ {2}blas {4}none, matmul on the WASM kernel: LOWRANK_BLAS=off$/m, show(off));
  const bad = await lowrank("node", ["backends", "--backend", "cpu"], { LOWRANK_BLAS: "/nonexistent/libblas.so.3" });
  assert.equal(bad.code, 1, show(bad));
  assert.match(bad.stdout, /^ {2}cpu {5}error: LOWRANK_BLAS=\/nonexistent\/libblas\.so\.3: cannot load \/nonexistent\/libblas\.so\.3 via /m, show(bad));
  assert.match(bad.stdout, /^selected: error: LOWRANK_BLAS=\/nonexistent\/libblas\.so\.3: cannot load/m, show(bad));
  assert.doesNotMatch(bad.stdout + bad.stderr, /^\s+at /m, show(bad));
});

test("LOWRANK_BACKEND=bogus is a clear usage error", async () => {
  const r = await lowrank("node", ["backends"], { LOWRANK_BACKEND: "bogus" });
  assert.equal(r.code, 2, show(r));
  assert.match(r.stderr, /LOWRANK_BACKEND=bogus is not a backend: use one of auto, cpu, webgpu/);
});

test("--backend overrides LOWRANK_BACKEND", async () => {
  const r = await lowrank("node", ["backends", "--backend", "cpu"], { LOWRANK_BACKEND: "bogus" });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /^selected: cpu \(requested by --backend cpu\)$/m);
});

test("LOWRANK_BACKEND=webgpu selects the webgpu backend when an adapter exists, else fails with the reason", async () => {
  const r = await lowrank("node", ["backends"], { LOWRANK_BACKEND: "webgpu" });
  if (/^ {2}webgpu {2}unavailable/m.test(r.stdout)) {
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, /^selected: error: LOWRANK_BACKEND=webgpu: the webgpu backend cannot run: .+Use --backend cpu/m);
  } else {
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^selected: webgpu \(requested by LOWRANK_BACKEND=webgpu\)$/m, show(r));
  }
});

test("unknown commands and options are usage errors", async () => {
  for (const args of [["frobnicate"], ["--frobnicate"]]) {
    const r = await lowrank("node", args);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /see lowrank --help/);
  }
});

test("without a Vulkan driver, webgpu is unavailable with the fix and auto picks cpu", async (t) => {
  if (process.platform !== "linux") return t.skip("VK_ICD_FILENAMES hides the drivers only on Linux");
  const r = await lowrank("node", ["backends"], { VK_ICD_FILENAMES: "/nonexistent/icd.json" });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /^ {2}webgpu {2}unavailable: WebGPU unavailable \(node, no-adapter\): .*scripts\/install-system\.sh/m, show(r));
  assert.match(r.stdout, /^auto: cpu \(webgpu unavailable \(no-adapter\)\)$/m, show(r));
});
