// Shared test helpers (not a test file: runners only pick up *.test.ts).
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** Deterministic PRNG (mulberry32) so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n samples of N(0, std^2) as float32 (Box-Muller). */
export function normal(n: number, std: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - r();
    const v = r();
    const m = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** The next float32 above a float32 value (x > 0 or x < 0, not 0). */
export function nextUpF32(x: number): number {
  const f = new Float32Array([x]);
  const u = new Int32Array(f.buffer);
  u[0] += x > 0 ? 1 : -1;
  return f[0];
}

/** shared/data: $LOWRANK_DATA_DIR, else ../shared/data next to the repo root. */
export function dataDir(): string {
  const env = process.env.LOWRANK_DATA_DIR;
  if (env) return resolve(env);
  const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
  return join(repoRoot, "..", "shared", "data");
}

/** Path to a data file, or undefined when it is not present. */
export function dataFile(rel: string): string | undefined {
  const p = join(dataDir(), rel);
  return existsSync(p) ? p : undefined;
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
