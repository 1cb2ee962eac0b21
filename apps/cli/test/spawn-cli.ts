/** Run the `lowrank` CLI in a child process under Node, Bun or Deno (shared by the CLI tests). */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

export const CLI_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = resolve(CLI_DIR, "../..");
export const BIN = join(CLI_DIR, "bin", "lowrank.mjs");
export const MAIN = join(CLI_DIR, "src", "main.ts");

export type Runtime = "node" | "bun" | "deno";

export interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  rawStderr: string;
}

/** The command line that starts the CLI under `runtime`, or undefined when that runtime is not installed. */
export function command(runtime: Runtime): [string, string[]] | undefined {
  if (runtime === "node") return ["Bun" in globalThis || "Deno" in globalThis ? "node" : process.execPath, [BIN]];
  const bin = join(ROOT, "node_modules", ".bin", runtime);
  if (!existsSync(bin)) return undefined;
  return runtime === "bun" ? [bin, [MAIN]] : [bin, ["run", "-A", "--unstable-webgpu", MAIN]];
}

/**
 * Run `lowrank args` from the repository root; LOWRANK_BACKEND is unset unless `env` sets it.
 * `rawStderr` keeps Dawn's two limit warnings, which the Node edge filters itself and Bun's and
 * Deno's runtimes still print; `stderr` drops them.
 */
export function lowrank(runtime: Runtime, args: string[], env: Record<string, string | undefined> = {}, timeoutMs = 120_000): Promise<Result> {
  const [cmd, pre] = command(runtime)!;
  return new Promise((done, fail) => {
    const child = spawn(cmd, [...pre, ...args], { cwd: ROOT, env: { ...process.env, LOWRANK_BACKEND: undefined, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d));
    child.stderr.on("data", (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr: stderr.replace(/^Warning: maxDynamic\w+ artificially reduced.*\n?/gm, ""), rawStderr: stderr });
    });
  });
}
