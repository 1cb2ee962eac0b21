/**
 * What a runtime's FFI edge (node.ts: koffi, bun.ts: bun:ffi, deno.ts: Deno.dlopen) must bind:
 * cblas_sgemm (and cblas_sgemv) plus the optional thread and version calls of OpenBLAS, MKL and BLIS, declared once
 * here in abstract types that each edge maps to its own notation.
 */

/** buffer: a typed array passed by pointer (no copy); cstring: a returned `const char *`. */
export type FfiType = "i32" | "i64" | "f32" | "buffer" | "cstring" | "void";

export interface SymbolSpec {
  readonly args: readonly FfiType[];
  readonly result: FfiType;
}

export const SYMBOLS = {
  // void cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
  cblas_sgemm: { args: ["i32", "i32", "i32", "i32", "i32", "i32", "f32", "buffer", "i32", "buffer", "i32", "f32", "buffer", "i32"], result: "void" },
  // void cblas_sgemv(order, trans, M, N, alpha, A, lda, x, incx, beta, y, incy)
  cblas_sgemv: { args: ["i32", "i32", "i32", "i32", "f32", "buffer", "i32", "buffer", "i32", "f32", "buffer", "i32"], result: "void" },
  openblas_set_num_threads: { args: ["i32"], result: "void" },
  openblas_get_num_threads: { args: [], result: "i32" },
  openblas_get_config: { args: [], result: "cstring" },
  openblas_get_corename: { args: [], result: "cstring" },
  /** 0 sequential, 1 pthreads, 2 OpenMP. */
  openblas_get_parallel: { args: [], result: "i32" },
  MKL_Set_Num_Threads: { args: ["i32"], result: "void" },
  MKL_Get_Max_Threads: { args: [], result: "i32" },
  /** void MKL_Get_Version_String(char *buf, int len) */
  MKL_Get_Version_String: { args: ["buffer", "i32"], result: "void" },
  /** BLIS's dim_t is 64-bit in its default build. */
  bli_thread_set_num_threads: { args: ["i64"], result: "void" },
  bli_info_get_version_str: { args: [], result: "cstring" },
} as const satisfies Record<string, SymbolSpec>;

export type SymbolName = keyof typeof SYMBOLS;

// Loosely typed on purpose: each edge returns plain JS functions; library.ts gives them shapes.
export type Bound = Partial<Record<SymbolName, (...args: never[]) => unknown>>;

/** A runtime's way to open a shared library. */
export interface FfiEdge {
  /** "koffi", "bun:ffi", "Deno.dlopen": named in reasons and errors. */
  readonly via: string;
  /** The symbols of SYMBOLS that `path` exports. Throws (dlopen's message) if it cannot be opened. */
  open(path: string): Bound;
}
