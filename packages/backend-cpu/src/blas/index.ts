/**
 * BLAS selection for CpuBackend: the `blas` option, else LOWRANK_BLAS, else "auto".
 *   auto    the first of the known libraries (candidates below) that loads and has cblas_sgemm;
 *           none, or no FFI in this runtime (browser), means the WASM kernel, with the reason kept.
 *   off     the WASM kernel.
 *   a path  that library, or a BlasError naming the path and what failed.
 * Runtime-specific loading sits in node.ts (koffi), bun.ts (bun:ffi) and deno.ts (Deno.dlopen).
 */
import { bunEdge } from "./bun.ts";
import { denoEdge } from "./deno.ts";
import type { FfiEdge } from "./ffi.ts";
import { type BlasLibrary, describeLibrary } from "./library.ts";
import { nodeEdge } from "./node.ts";

export type { BlasLibrary } from "./library.ts";

/** A bad explicit BLAS choice; the message names the library and what was missing. */
export class BlasError extends Error {
  override readonly name = "BlasError";
}

export interface BlasSelection {
  lib: BlasLibrary | null;
  /** Why this library, or why none: "auto: found libopenblas.so.0", "LOWRANK_BLAS=off". */
  reason: string;
}

interface Candidate {
  name: string;
  /** Skip it when it turns out to be a reference (unoptimized) BLAS: slower than the WASM kernel. */
  optimizedOnly?: boolean;
}

type Proc = {
  platform?: string;
  arch?: string;
  env?: Record<string, string | undefined>;
  versions?: Record<string, string | undefined>;
  getBuiltinModule?: (id: string) => unknown;
};
const proc = (): Proc | undefined => (globalThis as { process?: Proc }).process;

function candidates(): Candidate[] {
  const p = proc();
  if (p?.platform === "darwin") {
    return [
      { name: "/System/Library/Frameworks/Accelerate.framework/Accelerate" },
      { name: "/opt/homebrew/opt/openblas/lib/libopenblas.dylib" },
      { name: "/usr/local/opt/openblas/lib/libopenblas.dylib" },
      { name: "libmkl_rt.dylib" },
    ];
  }
  if (p?.platform === "win32") return [{ name: "libopenblas.dll" }, { name: "mkl_rt.2.dll" }];
  const triple = p?.arch === "arm64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
  return [
    { name: "libopenblas.so.0" },
    { name: `/usr/lib/${triple}/openblas-pthread/libblas.so.3` },
    { name: "libblas.so.3", optimizedOnly: true },
    { name: "libmkl_rt.so" },
    { name: "libmkl_rt.so.2" },
    { name: "libblis.so.4" },
  ];
}

/** Where the loader would find a bare soname (LD_LIBRARY_PATH, then the system dirs), symlinks resolved; else the name itself. */
function locate(name: string): string {
  const p = proc();
  const fs = p?.getBuiltinModule?.("node:fs") as { existsSync(p: string): boolean; realpathSync(p: string): string } | undefined;
  if (!fs) return name;
  try {
    if (name.includes("/")) return fs.existsSync(name) ? fs.realpathSync(name) : name;
    const triple = p?.arch === "arm64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
    const dirs = [
      ...(p?.env?.LD_LIBRARY_PATH ?? "").split(":").filter(Boolean),
      `/usr/local/lib`,
      `/usr/lib/${triple}`,
      `/lib/${triple}`,
      "/usr/lib64",
      "/usr/lib",
    ];
    for (const dir of dirs) if (fs.existsSync(`${dir}/${name}`)) return fs.realpathSync(`${dir}/${name}`);
  } catch {
    // no read permission (Deno without --allow-read): let the loader search
  }
  return name;
}

let edge: FfiEdge | string | undefined;
/** This runtime's FFI, or why there is none. */
function ffi(): FfiEdge | string {
  if (edge === undefined) {
    const g = globalThis as { Deno?: unknown };
    try {
      if (g.Deno) edge = denoEdge();
      else if (proc()?.versions?.bun) edge = bunEdge();
      else if (proc()?.versions?.node) edge = nodeEdge();
      else edge = "no FFI in this runtime";
    } catch (err) {
      edge = `no FFI: ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  return edge;
}

const opened = new Map<string, BlasLibrary | null | Error>();
/** Open `path` once per process: the library, null if it lacks cblas_sgemm, or the load error. */
function open(f: FfiEdge, path: string): BlasLibrary | null | Error {
  let lib = opened.get(path);
  if (lib === undefined) {
    try {
      lib = describeLibrary(f.open(path), path, f.via);
    } catch (err) {
      lib = err instanceof Error ? err : new Error(String(err));
    }
    opened.set(path, lib);
  }
  return lib;
}

function auto(): BlasSelection {
  const f = ffi();
  if (typeof f === "string") return { lib: null, reason: f };
  const tried: string[] = [];
  for (const c of candidates()) {
    const lib = open(f, locate(c.name));
    if (lib instanceof Error && /allow-ffi/.test(lib.message)) return { lib: null, reason: "Deno runs without --allow-ffi" };
    if (lib instanceof Error || lib === null) tried.push(c.name);
    else if (c.optimizedOnly && lib.kind === "blas") tried.push(`${c.name} (reference BLAS, skipped)`);
    else return { lib, reason: `auto: found ${c.name}` };
  }
  return { lib: null, reason: `auto found none of ${tried.join(", ")}` };
}

/** LOWRANK_BLAS, where the environment can be read. */
function envChoice(): string | undefined {
  try {
    return proc()?.env?.LOWRANK_BLAS || undefined;
  } catch {
    return undefined; // Deno without --allow-env
  }
}

/** Pick the BLAS: `option` (CpuBackendOptions.blas) wins over LOWRANK_BLAS; both default to auto. */
export function selectBlas(option?: string): BlasSelection {
  const env = envChoice();
  const value = option ?? env ?? "auto";
  const where = option !== undefined ? `blas: "${option}"` : env !== undefined ? `LOWRANK_BLAS=${env}` : "";
  if (value === "off") return { lib: null, reason: where };
  if (value === "auto") {
    const s = auto();
    return where ? { ...s, reason: `${s.reason} (${where})` } : s;
  }
  const f = ffi();
  if (typeof f === "string") throw new BlasError(`${where}: cannot load ${value}: ${f}`);
  const path = locate(value);
  const lib = open(f, path);
  if (lib instanceof Error) throw new BlasError(`${where}: cannot load ${path} via ${f.via}: ${lib.message}`);
  if (!lib) throw new BlasError(`${where}: ${path} has no cblas_sgemm (not a BLAS with the CBLAS interface)`);
  return { lib, reason: where };
}
