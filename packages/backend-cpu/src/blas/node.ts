/**
 * FFI edge for Node: koffi (prebuilt N-API binaries per platform). Loaded through createRequire,
 * synchronously (CpuBackend's constructor is), and behind a specifier bundlers cannot see.
 */
import { type Bound, type FfiEdge, type FfiType, SYMBOLS, type SymbolName } from "./ffi.ts";

type Koffi = typeof import("koffi");

const KOFFI_TYPES: Record<FfiType, string> = { i32: "int", i64: "int64_t", f32: "float", buffer: "void *", cstring: "const char *", void: "void" };

export function nodeEdge(): FfiEdge {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  const mod = proc?.getBuiltinModule?.("node:module") as { createRequire(from: string): (id: string) => unknown } | undefined;
  if (!mod) throw new Error("koffi needs process.getBuiltinModule (Node >= 20.16)");
  const name = "koffi";
  const koffi = mod.createRequire(import.meta.url)(name) as Koffi;
  return {
    via: `koffi ${koffi.version}`,
    open(path) {
      const lib = koffi.load(path);
      const bound: Bound = {};
      for (const [sym, spec] of Object.entries(SYMBOLS)) {
        try {
          bound[sym as SymbolName] = lib.func(
            sym,
            KOFFI_TYPES[spec.result],
            spec.args.map((t) => KOFFI_TYPES[t]),
          );
        } catch {
          // not exported by this library
        }
      }
      return bound;
    },
  };
}
