/** Shared by the suites: where results go, machine description, atomic JSON writes, small stats. */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const BENCH_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const RESULTS_DIR = resolve(BENCH_DIR, "results");
export const CONFIGS_DIR = resolve(BENCH_DIR, "configs");

export const today = (): string => new Date().toISOString().slice(0, 10);

export function runtimeName(): string {
  const g = globalThis as { Bun?: { version: string }; Deno?: { version: { deno: string } } };
  return g.Bun ? `bun ${g.Bun.version}` : g.Deno ? `deno ${g.Deno.version.deno}` : `node ${process.versions.node}`;
}

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  runtime: string;
  /** 1-minute load average when the suite started: other jobs share this machine. */
  loadavg1: number;
}

export function machine(): Machine {
  const c = cpus();
  return { cpu: c[0]?.model ?? "unknown", cores: c.length, memoryGiB: Math.round(totalmem() / 2 ** 30), runtime: runtimeName(), loadavg1: loadavg()[0] };
}

/** Write JSON through a temporary file and a rename, so a crash never leaves half a results file. */
export function writeJson(file: string, value: unknown): void {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(tmp, file);
}

export function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Sample standard deviation (n - 1); 0 for a single value. */
export function std(xs: number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export const MiB = 2 ** 20;
export const fmtMiB = (b: number): string => (b / MiB).toFixed(b < 10 * MiB ? 2 : 1);

/** Progress lines go to stderr so stdout stays the result tables. */
export const log = (s: string): void => void process.stderr.write(`${s}\n`);
