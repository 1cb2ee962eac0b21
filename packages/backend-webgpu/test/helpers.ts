/** Spawning helpers for the child-process tests. */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const FIXTURE = join(PKG_DIR, "test", "fixtures", "roundtrip.ts");

/** Dawn prints these two harmless lines in every process. */
export const DAWN_NOISE = /^Warning: maxDynamic\w+ artificially reduced.*$\n?/gm;

/** A node_modules/.bin executable, searched upwards from this package (bun, deno). */
export function findBin(name: string): string | undefined {
  for (let dir = PKG_DIR; ; dir = dirname(dir)) {
    const p = join(dir, "node_modules", ".bin", name);
    if (existsSync(p)) return p;
    if (dirname(dir) === dir) return undefined;
  }
}

export interface ChildResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

/** Run a command; kill it after `timeoutMs`. Output has Dawn's noise removed. */
export function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<ChildResult> {
  return new Promise((done, fail) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: PKG_DIR, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.on("data", (d: Buffer) => (stdout += d));
    child.stderr.on("data", (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", fail);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr: stderr.replace(DAWN_NOISE, ""), ms: performance.now() - t0, timedOut });
    });
  });
}

/** The command line that runs the fixture under a runtime, or undefined when that runtime is not installed. */
export function fixtureCommand(runtime: "node" | "bun" | "deno", ...args: string[]): [string, string[]] | undefined {
  if (runtime === "node") {
    // Under bun/deno test runners process.execPath is not node; fall back to node on PATH.
    const node = "Bun" in globalThis || "Deno" in globalThis ? "node" : process.execPath;
    return [node, ["--expose-gc", "--import", "tsx", FIXTURE, ...args]];
  }
  const bin = findBin(runtime);
  if (!bin) return undefined;
  if (runtime === "bun") return [bin, [FIXTURE, ...args]];
  return [bin, ["run", "-A", "--unstable-webgpu", FIXTURE, ...args]];
}

export function describe(r: ChildResult): string {
  return `exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ""}${r.timedOut ? " (timed out)" : ""} after ${Math.round(r.ms)} ms\n--- stdout\n${
    r.stdout
  }\n--- stderr\n${r.stderr}`;
}
