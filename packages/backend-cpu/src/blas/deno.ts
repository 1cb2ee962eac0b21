/**
 * FFI edge for Deno: Deno.dlopen (needs --allow-ffi; `deno test -A` grants it). Every symbol is
 * optional, so one dlopen tells which of them the library exports.
 */
import { type Bound, type FfiEdge, type FfiType, SYMBOLS, type SymbolName } from "./ffi.ts";

const DENO_TYPES: Record<FfiType, string> = { i32: "i32", i64: "i64", f32: "f32", buffer: "buffer", cstring: "pointer", void: "void" };

/** The part of the Deno namespace this edge uses (tsc here has no Deno types). */
interface DenoFfi {
  version: { deno: string };
  dlopen(
    path: string,
    symbols: Record<string, { parameters: string[]; result: string; optional?: boolean }>,
  ): { symbols: Record<string, ((...a: unknown[]) => unknown) | null> };
  UnsafePointerView: { getCString(p: unknown): string };
}

export function denoEdge(): FfiEdge {
  const deno = (globalThis as { Deno?: DenoFfi }).Deno;
  if (!deno?.dlopen) throw new Error("Deno.dlopen is missing");
  return {
    via: `Deno.dlopen (Deno ${deno.version.deno})`,
    open(path) {
      const defs = Object.fromEntries(
        Object.entries(SYMBOLS).map(([sym, s]) => [sym, { parameters: s.args.map((t) => DENO_TYPES[t]), result: DENO_TYPES[s.result], optional: true }]),
      );
      const lib = deno.dlopen(path, defs);
      const bound: Bound = {};
      for (const [sym, spec] of Object.entries(SYMBOLS)) {
        const fn = lib.symbols[sym];
        if (!fn) continue;
        bound[sym as SymbolName] =
          spec.result === "cstring"
            ? () => {
                const p = fn();
                return p ? deno.UnsafePointerView.getCString(p) : "";
              }
            : fn;
      }
      return bound;
    },
  };
}
