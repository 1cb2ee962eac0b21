/**
 * A BLAS opened through an FFI edge: which implementation it is (OpenBLAS, MKL, BLIS, Accelerate,
 * or an unknown/reference one), its version, its thread control, and a typed cblas_sgemm.
 */
import type { Bound } from "./ffi.ts";

const ROW_MAJOR = 101,
  NO_TRANS = 111,
  TRANS = 112;

export type BlasKind = "openblas" | "mkl" | "blis" | "accelerate" | "blas";

export interface BlasLibrary {
  readonly kind: BlasKind;
  /** "openblas 0.3.21 pthread", "mkl 2024.0.0", "blas (reference or unknown)". */
  readonly label: string;
  /** OpenBLAS's core (Haswell, Zen, ...) where it says. */
  readonly core: string | null;
  /** The file opened (symlinks resolved where the path was found on disk). */
  readonly path: string;
  /** The FFI that opened it. */
  readonly via: string;
  /** False where the library offers no call to set its threads (Accelerate, reference BLAS). */
  readonly canSetThreads: boolean;
  /** Set the (process-wide) thread count if it differs from the last request; returns what the library reports, 0 if it cannot be set. */
  useThreads(n: number): number;
  /** Row-major C[M,N] = op(A)·op(B) + beta·C (beta 0 by default); A, B, C start at their first element. */
  sgemm(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    A: Float32Array,
    lda: number,
    B: Float32Array,
    ldb: number,
    C: Float32Array,
    ldc: number,
    beta?: number,
  ): void;
  /** Row-major y[M or N] = op(A)·x + beta·y for A [M, N] (lda); null when the library lacks cblas_sgemv. */
  sgemv: ((trans: boolean, M: number, N: number, A: Float32Array, lda: number, x: Float32Array, y: Float32Array, beta?: number) => void) | null;
}

type Fn<A extends unknown[], R> = (...args: A) => R;

function mklVersion(get: Fn<[Uint8Array, number], void>): string {
  const buf = new Uint8Array(256);
  get(buf, buf.length);
  const end = buf.indexOf(0);
  const text = new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end));
  return /Version (\S+)/.exec(text)?.[1] ?? text.trim();
}

/** Give the bound functions their shapes and find out what the library is. Null when it has no cblas_sgemm. */
export function describeLibrary(bound: Bound, path: string, via: string): BlasLibrary | null {
  const sgemm = bound.cblas_sgemm as
    | Fn<[number, number, number, number, number, number, number, Float32Array, number, Float32Array, number, number, Float32Array, number], void>
    | undefined;
  if (!sgemm) return null;
  const sgemv = bound.cblas_sgemv as
    | Fn<[number, number, number, number, number, Float32Array, number, Float32Array, number, number, Float32Array, number], void>
    | undefined;
  const str = (f: unknown) => (f ? String((f as Fn<[], string>)()) : "");
  const int = (f: unknown) => (f ? Number((f as Fn<[], number>)()) : 0);
  let kind: BlasKind = "blas",
    version = "",
    core: string | null = null;
  let set: Fn<[number], void> | null = null,
    get: () => number = () => 0;
  if (bound.openblas_get_config) {
    kind = "openblas";
    const config = str(bound.openblas_get_config);
    const parallel = ["sequential", "pthread", "openmp"][int(bound.openblas_get_parallel)] ?? "";
    version = `${/OpenBLAS (\S+)/.exec(config)?.[1] ?? "?"}${parallel ? ` ${parallel}` : ""}`;
    core = str(bound.openblas_get_corename) || null;
    set = (bound.openblas_set_num_threads as Fn<[number], void>) ?? null;
    get = () => int(bound.openblas_get_num_threads);
  } else if (bound.MKL_Get_Version_String) {
    kind = "mkl";
    version = mklVersion(bound.MKL_Get_Version_String as Fn<[Uint8Array, number], void>);
    set = (bound.MKL_Set_Num_Threads as Fn<[number], void>) ?? null;
    get = () => int(bound.MKL_Get_Max_Threads);
  } else if (bound.bli_info_get_version_str) {
    kind = "blis";
    version = str(bound.bli_info_get_version_str);
    set = (bound.bli_thread_set_num_threads as Fn<[number], void>) ?? null;
  } else if (/Accelerate|vecLib/.test(path)) {
    kind = "accelerate";
  }
  const label = kind === "blas" ? "blas (reference or unknown)" : `${kind}${version ? ` ${version}` : ""}`;
  let requested = 0,
    current = 0;
  return {
    kind,
    label,
    core,
    path,
    via,
    canSetThreads: set !== null,
    useThreads(n) {
      if (!set) return 0;
      if (n !== requested) {
        set(n);
        requested = n;
        current = get() || n;
      }
      return current;
    },
    sgemm(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, beta = 0) {
      sgemm(ROW_MAJOR, transA ? TRANS : NO_TRANS, transB ? TRANS : NO_TRANS, M, N, K, 1, A, lda, B, ldb, beta, C, ldc);
    },
    sgemv: sgemv ? (trans, M, N, A, lda, x, y, beta = 0) => sgemv(ROW_MAJOR, trans ? TRANS : NO_TRANS, M, N, 1, A, lda, x, 1, beta, y, 1) : null,
  };
}
