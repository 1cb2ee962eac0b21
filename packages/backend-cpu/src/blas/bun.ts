/**
 * FFI edge for Bun: bun:ffi, required synchronously behind a specifier bundlers cannot see.
 * Bun's dlopen fails on any missing symbol, so each optional one is opened on its own.
 */
import { type Bound, type FfiEdge, type FfiType, SYMBOLS, type SymbolName } from "./ffi.ts";

type BunFfi = typeof import("bun:ffi");

const BUN_TYPES: Record<FfiType, string> = { i32: "i32", i64: "i64", f32: "f32", buffer: "ptr", cstring: "cstring", void: "void" };

export function bunEdge(): FfiEdge {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown; versions?: Record<string, string | undefined> } }).process;
  const mod = proc?.getBuiltinModule?.("node:module") as { createRequire(from: string): (id: string) => unknown };
  const name = "bun:ffi";
  const ffi = mod.createRequire(import.meta.url)(name) as BunFfi;
  return {
    via: `bun:ffi (Bun ${proc?.versions?.bun ?? "?"})`,
    open(path) {
      const bound: Bound = {};
      for (const [sym, spec] of Object.entries(SYMBOLS)) {
        let lib;
        try {
          lib = ffi.dlopen(path, { [sym]: { args: spec.args.map((t) => BUN_TYPES[t]), returns: BUN_TYPES[spec.result] } } as Parameters<BunFfi["dlopen"]>[1]);
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err);
          if (/^Symbol .* not found/.test(message)) continue;
          throw new Error(message); // the library itself did not open
        }
        const fn = lib.symbols[sym] as (...a: never[]) => unknown;
        // A returned CString is a String object; callers want the primitive.
        bound[sym as SymbolName] = spec.result === "cstring" ? (...a: never[]) => String(fn(...a)) : fn;
      }
      return bound;
    },
  };
}
