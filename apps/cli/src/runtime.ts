/** Which JavaScript runtime we are on, and its version. */
export type Runtime = "node" | "bun" | "deno";

export function detectRuntime(): Runtime {
  const g = globalThis as { Deno?: unknown; Bun?: unknown };
  if (g.Deno !== undefined) return "deno";
  if (g.Bun !== undefined) return "bun";
  return "node";
}

export function runtimeVersion(runtime: Runtime = detectRuntime()): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  if (runtime === "deno") return g.Deno!.version.deno;
  if (runtime === "bun") return g.Bun!.version;
  return process.versions.node;
}
