/**
 * Relaxed SIMD (fused multiply-add) for the WASM kernels on Node 20. Chrome >= 114, Deno, Bun and
 * Node >= 22 validate it by default; Node 20's V8 (11.3) has the finished feature behind
 * --experimental-wasm-relaxed-simd (V8 11.4 shipped it unchanged). The flag is process-wide and read
 * when a module is validated, so turning it on before our first compile is enough for every thread.
 * Measured on the 2-core Zen 5 VM (createMatmulEngine alone, median of 15): 1024³ with 2 threads
 * 64 -> 77 GFLOP/s, 512³ 52 -> 84.
 *
 * Which build runs is chosen in simd.ts (`simd: "plain"` or LOWRANK_SIMD=plain keeps the plain ones).
 */

import { base64Bytes } from "./base64.ts";

type Proc = {
  versions?: Record<string, string | undefined>;
  getBuiltinModule?: (id: string) => unknown;
};

let tried = false;

/**
 * Validate `bytes` (a relaxed-SIMD build); on Node with V8 11 where it fails, turn the V8 flag on
 * once and validate again. Other runtimes are only asked, never changed.
 */
export function validateRelaxed(bytes: Uint8Array): boolean {
  if (WebAssembly.validate(bytes as BufferSource)) return true;
  if (tried) return false;
  tried = true;
  const proc = (globalThis as { process?: Proc }).process;
  const v = proc?.versions;
  // Only Node proper (Bun and Deno also set versions.node) on V8 11, where the flag exists and
  // means the final opcodes; an unknown flag would print V8's error on other versions.
  if (!v?.node || v.bun || v.deno || (globalThis as { Deno?: unknown }).Deno || !v.v8?.startsWith("11.")) return false;
  try {
    const v8 = proc?.getBuiltinModule?.("node:v8") as { setFlagsFromString(flags: string): void } | undefined;
    v8?.setFlagsFromString("--experimental-wasm-relaxed-simd");
  } catch {
    return false;
  }
  return WebAssembly.validate(bytes as BufferSource);
}

/**
 * The first of a module's two builds (base64) that this runtime validates and `make` accepts,
 * relaxed first when `relaxed` (simd.ts tryRelaxed), or null: how every WASM module here picks.
 */
export function firstBuild<T>(relaxedB64: string, plainB64: string, relaxed: boolean, make: (bytes: Uint8Array, relaxed: boolean) => T): T | null {
  for (const b64 of relaxed ? [relaxedB64, plainB64] : [plainB64]) {
    try {
      const bytes = base64Bytes(b64);
      const isRelaxed = b64 === relaxedB64;
      if (isRelaxed ? validateRelaxed(bytes) : WebAssembly.validate(bytes as BufferSource)) return make(bytes, isRelaxed);
    } catch {
      // try the next build
    }
  }
  return null;
}
