/**
 * The WASM matmul engine behind CpuBackend.matmul where no BLAS is used (blas/engine.ts is the other):
 * packed row-major f32 C[M,N] = A[M,K]·B[K,N].
 *
 * Data layout: tensors stay plain typed arrays; the WASM heap is a packed scratch area. Each call
 * copies A and B into a WebAssembly.Memory (grown as needed), packs B once, runs the SIMD kernel
 * (assembly/matmul.ts) and copies C out. Large products use a shared memory, where worker threads
 * run the same kernel and claim chunks (rows x column blocks) as they go; products the caller runs
 * alone use an unshared one, into which copies are 2-3x faster. Problems
 * larger than the heap are split by rows of A and, if B alone is too big, by columns of B.
 * kernels/matmul.ts holds the TypeScript kernels used when WASM SIMD is unavailable.
 */
import { matmulBlocked } from "./kernels/matmul.ts";
import { transposeInto } from "./kernels/strided.ts";
import { firstBuild } from "./wasm/relaxed.ts";
import { tryRelaxed } from "./wasm/simd.ts";
import { MATMUL_WASM_PLAIN, MATMUL_WASM_PLAIN_RELAXED, MATMUL_WASM_SHARED, MATMUL_WASM_SHARED_RELAXED } from "./wasm/matmul-wasm.ts";
import {
  COPIED,
  FAIL,
  FINISHED,
  type GemmPacked,
  JOB,
  MAX_CHUNKS,
  NEXT,
  READY,
  SEQ,
  SLOT,
  TMP,
  type WorkerHandle,
  availableCores,
  canBlock,
  canShare,
  claimChunks,
  jobTag,
  startWorkers,
} from "./wasm/threads.ts";

export interface MatmulEngine {
  /**
   * C[M,N] = A[M,K]·B[K,N], packed row-major; with transB, B holds Bᵀ as [N, K] (a weight W for
   * x·Wᵀ), read in that layout rather than transposed first.
   */
  matmul(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number, transB?: boolean): void;
  describe(): string;
  dispose(): void;
}

export interface MatmulEngineOptions {
  /** Worker threads besides the caller (default: available cores - 1; 0 = calling thread only). */
  threads?: number;
  /** Use the WASM SIMD kernel when the runtime supports it (default true); false = TypeScript kernel. */
  wasm?: boolean;
  /**
   * Use the relaxed-SIMD build (fused multiply-add) where the runtime validates it (default: true
   * unless LOWRANK_SIMD=plain; Chrome >= 114, Deno 2, Bun and Node >= 22 do, Node 20 once
   * wasm/relaxed.ts turns its V8 flag on). Measured 256³ single thread, kernel alone:
   * Deno 2.9 32 -> 40 GFLOP/s, Node 20 with --experimental-wasm-relaxed-simd 42 -> 53.
   */
  relaxed?: boolean;
  /** Cap on the WASM heap in bytes (default and maximum: the 4 GiB wasm32 limit); tests lower it to exercise splitting. */
  maxHeapBytes?: number;
  /** Problems with fewer FLOPs (2·M·N·K) run on the calling thread only (default PARALLEL_MIN_FLOPS). */
  parallelMinFlops?: number;
}

/** What createMatmulEngine returns: a MatmulEngine that can also report when its workers are up. */
export interface WasmMatmulEngine extends MatmulEngine {
  /** Starts the workers (otherwise started by the first large matmul) and resolves once each runs or has failed. */
  ready(): Promise<void>;
  /** Threads a large matmul uses right now (caller + running workers). */
  readonly activeThreads: number;
  /** Whether the relaxed-SIMD (fused multiply-add) build runs. */
  readonly relaxed: boolean;
}

/**
 * Below this a worker round trip costs more than it saves. Measured on the 2-core Zen 5 VM
 * (Node 20, n³ matmuls, threads 1 vs 0): 64: 0.5x, 128: 0.9-1.2x, 256: 1.3-1.6x, 512: 1.5-1.8x.
 */
export const PARALLEL_MIN_FLOPS = 8e6;
/** How long the caller spins for workers to finish before it sleeps in Atomics.wait. */
const MAIN_SPIN_MS = 1;
/**
 * Depth and width of a packed B block (KC·NC·4 = 256 KiB, fits L2). Re-measured with the panel
 * kernel (1024³, gemmPacked alone, 1 thread, best of 12 on the shared 2-core VM), GFLOP/s by KC x NC:
 * 128: 25/31/29 (NC 128/256/512), 256: 32/38/38, 384: 34/38/38, 512: 35/36/34.
 */
const KC = 256,
  NC = 256;
const PAGE = 65536,
  MAX_PAGES = 65536;
/** Chunks per thread a parallel job is cut into, so a thread that gets less CPU time takes fewer. */
const CHUNKS_PER_THREAD = 8;
/** How long a first large matmul may wait for workers to boot (they normally take 20-60 ms). */
const START_TIMEOUT_MS = 5000;

interface Kernel {
  gemmPacked: GemmPacked;
  packB(b: number, ldb: number, k: number, n: number, dst: number, kc: number, nc: number): void;
  packBT(bt: number, ldbt: number, k: number, n: number, dst: number, kc: number, nc: number): void;
  heapBase(): number;
  scratchBytes(kc: number): number;
}

const align64 = (n: number) => Math.ceil(n / 64) * 64;

/** A WebAssembly memory that may grow to the 4 GiB limit, or 1 GiB where address space is short. */
function createMemory(shared: boolean): { memory: WebAssembly.Memory; maxBytes: number } | null {
  for (const maximum of [MAX_PAGES, 16384]) {
    try {
      return { memory: new WebAssembly.Memory({ initial: 1, maximum, shared } as WebAssembly.MemoryDescriptor), maxBytes: maximum * PAGE };
    } catch {
      // try a smaller reservation
    }
  }
  return null;
}

/** B [K, N] from its transpose bt [N, K] (the TypeScript kernel reads B row-major). */
function transposed(bt: Float32Array, N: number, K: number): Float32Array {
  const b = new Float32Array(K * N);
  transposeInto(bt, N, K, b, N, 0);
  return b;
}

function typescriptEngine(): WasmMatmulEngine {
  return {
    matmul: (A, B, C, M, N, K, transB) => matmulBlocked(A, transB ? transposed(B, N, K) : B, C, M, N, K),
    describe: () => "1 thread, typescript",
    dispose: () => {},
    ready: async () => {},
    activeThreads: 1,
    relaxed: false,
  };
}

export function createMatmulEngine(opts: MatmulEngineOptions = {}): WasmMatmulEngine {
  if (opts.wasm === false || typeof WebAssembly !== "object") return typescriptEngine();
  const relaxed = tryRelaxed(opts.relaxed); // a bad LOWRANK_SIMD is an error, not a silent fallback
  try {
    const engine = new WasmEngine({ ...opts, relaxed });
    return engine.usable ? engine : typescriptEngine();
  } catch {
    return typescriptEngine();
  }
}

/**
 * One WebAssembly memory with the kernel instantiated on it: per-thread scratch (edge tile + packed
 * A panel) from tmpBase, tmpStride apart (slot 0 for the caller), then the operands from opBase.
 */
class KernelHeap {
  readonly kernel: Kernel;
  heap = new Float32Array(0);
  readonly tmpBase: number;
  readonly tmpStride: number;
  readonly opBase: number;

  constructor(readonly bytes: Uint8Array, readonly memory: WebAssembly.Memory, private limit: number, slots: number) {
    this.kernel = new WebAssembly.Instance(new WebAssembly.Module(bytes as BufferSource), { env: { memory } }).exports as unknown as Kernel;
    this.tmpBase = align64(this.kernel.heapBase());
    this.tmpStride = align64(this.kernel.scratchBytes(KC));
    this.opBase = this.tmpBase + slots * this.tmpStride;
    if (!this.ensure(this.opBase)) throw new Error("WASM heap too small for the scratch area");
  }

  /** Grow the memory to hold `end` bytes; false when that would pass the heap limit or the grow fails. */
  ensure(end: number): boolean {
    const memory = this.memory;
    if (end > this.limit) return false;
    const have = memory.buffer.byteLength;
    if (end > have) {
      try {
        memory.grow(Math.ceil((end - have) / PAGE));
      } catch {
        this.limit = have;
        return false;
      }
    }
    if (this.heap.buffer !== memory.buffer || this.heap.length * 4 !== memory.buffer.byteLength) this.heap = new Float32Array(memory.buffer);
    return true;
  }

  /**
   * Block sizes (rows mb of A, columns nb of B) and heap offsets so one block of each fits:
   * packed B (pb, k x nb rounded up to 8), A rows, and one region that first receives raw B
   * (packed from there) and then holds C. Null when not even one row of A and 8 columns of B fit.
   */
  plan(M: number, N: number, K: number): Plan | null {
    const avail = this.limit - this.opBase - 256;
    const bytes = (mb: number, nb: number) => 4 * (K * Math.ceil(nb / 8) * 8 + mb * K + Math.max(K * nb, mb * nb));
    let nb = N,
      mb = M;
    if (bytes(M, N) > avail) {
      // Keep B whole when it (packed and raw) takes at most half the heap, else split its columns.
      if (bytes(0, N) > avail / 2) nb = Math.min(N, Math.max(8, Math.floor(avail / 2 / (8 * K) / 8) * 8));
      mb = Math.floor((avail - bytes(0, nb) + 4 * K * nb) / (4 * (K + nb))); // assumes C is the larger region
      if (mb < K) mb = Math.floor((avail - bytes(0, nb)) / (4 * K)); // raw B is: A alone gets the rest
      if (mb >= 8) mb -= mb % 4;
      mb = Math.min(M, mb);
      if (mb < 1 || bytes(mb, nb) > avail) return null;
    }
    const pb = this.opBase;
    const a = align64(pb + K * Math.ceil(nb / 8) * 32);
    const x = align64(a + mb * K * 4);
    return { mb, nb, pb, a, x, end: x + Math.max(K * nb, mb * nb) * 4 };
  }
}

interface Plan {
  mb: number;
  nb: number;
  pb: number;
  a: number;
  x: number;
  end: number;
}

class WasmEngine implements WasmMatmulEngine {
  /** The shared memory the workers run on (null without threads). */
  private readonly shared: KernelHeap | null = null;
  /**
   * An unshared memory for products the caller runs alone: V8 copies into and out of a
   * SharedArrayBuffer with relaxed-atomic word moves, measured 67 µs per MiB against 25 unshared,
   * which for LoRA's x·Aᵀ [1024×256]·[256×8] is as long as its arithmetic. Made on first use.
   */
  private plain: KernelHeap | null | undefined;
  private readonly maxHeapBytes: number;
  private readonly ctl: Int32Array = new Int32Array(SLOT);
  private readonly workers: (WorkerHandle | null)[] = [];
  private readonly nWorkers: number;
  private started: Promise<void> | null = null;
  private startDeadline = 0;
  private readonly minFlops: number;
  private readonly useRelaxed: boolean;
  private seq = 0;
  private disposed = false;
  relaxed = false;

  constructor(opts: MatmulEngineOptions) {
    const requested = Math.max(0, Math.floor(opts.threads ?? availableCores() - 1));
    this.minFlops = opts.parallelMinFlops ?? PARALLEL_MIN_FLOPS;
    this.maxHeapBytes = opts.maxHeapBytes ?? Infinity;
    this.useRelaxed = opts.relaxed !== false;
    // Threads need a shared build (threads feature, SharedArrayBuffer, a caller that may block);
    // otherwise an unshared one runs on the calling thread alone.
    const build = requested > 0 && canShare() && canBlock() ? this.pick(MATMUL_WASM_SHARED_RELAXED, MATMUL_WASM_SHARED) : null;
    const mem = build ? createMemory(true) : null;
    this.nWorkers = mem ? requested : 0;
    if (mem) {
      this.relaxed = build!.relaxed;
      this.shared = new KernelHeap(build!.bytes, mem.memory, Math.min(this.maxHeapBytes, mem.maxBytes), this.nWorkers + 1);
      this.ctl = new Int32Array(new SharedArrayBuffer((this.nWorkers + 1) * SLOT * 4));
    } else this.plainHeap();
  }

  /** The first of the two builds that validates (relaxed SIMD first unless turned off). */
  private pick(relaxed: string, plain: string): { bytes: Uint8Array; relaxed: boolean } | null {
    return firstBuild(relaxed, plain, this.useRelaxed, (bytes, isRelaxed) => ({ bytes, relaxed: isRelaxed }));
  }

  /** The unshared heap, made on first call; null where it cannot be (then the shared one serves). */
  private plainHeap(): KernelHeap | null {
    if (this.plain === undefined) {
      this.plain = null;
      const build = this.pick(MATMUL_WASM_PLAIN_RELAXED, MATMUL_WASM_PLAIN);
      // Both heaps run the same arithmetic (one build family), so a product's bytes do not depend on its size.
      if (build && (!this.shared || build.relaxed === this.relaxed)) {
        const mem = createMemory(false);
        try {
          if (mem) this.plain = new KernelHeap(build.bytes, mem.memory, Math.min(this.maxHeapBytes, mem.maxBytes), 1);
        } catch {
          // the shared heap serves
        }
        if (this.plain && !this.shared) this.relaxed = build.relaxed;
      }
    }
    return this.plain;
  }

  /** Whether a WASM kernel runs (else createMatmulEngine falls back to TypeScript). */
  get usable(): boolean {
    return this.shared !== null || this.plain != null;
  }

  /** Start the workers on first need, so backends that never multiply large matrices spawn no threads. */
  private spawn(): Promise<void> {
    if (!this.started) {
      this.startDeadline = Date.now() + START_TIMEOUT_MS;
      const h = this.shared;
      if (h) for (let i = 1; i <= this.nWorkers; i++) this.ctl[i * SLOT + TMP] = h.tmpBase + i * h.tmpStride;
      const init = { bytes: h?.bytes ?? new Uint8Array(0), memory: h?.memory as WebAssembly.Memory, ctl: this.ctl };
      this.started =
        this.nWorkers > 0 && !this.disposed
          ? startWorkers(
              this.nWorkers,
              (index) => ({ ...init, index }),
              (i, h) => {
                this.workers[i - 1] = h;
                if (this.disposed) h.terminate(); // started after dispose(): its quit flag is already set
              },
            )
          : Promise.resolve();
    }
    return this.started;
  }

  get activeThreads(): number {
    if (this.disposed) return 1;
    let n = 1;
    for (let i = 1; i <= this.nWorkers; i++) if (Atomics.load(this.ctl, i * SLOT + READY) === 1) n++;
    return n;
  }

  describe(): string {
    let n = 1 + this.nWorkers;
    for (let i = 1; i <= this.nWorkers; i++) if (Atomics.load(this.ctl, i * SLOT + READY) === -1) n--;
    return `${n} thread${n === 1 ? "" : "s"}, wasm-simd${this.relaxed ? " fma" : ""}`;
  }

  async ready(): Promise<void> {
    await this.spawn();
    while (!this.disposed && Date.now() < this.startDeadline) {
      let pending = false;
      for (let i = 1; i <= this.nWorkers; i++) if (Atomics.load(this.ctl, i * SLOT + READY) === 0) pending = true;
      if (!pending) return;
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    // Workers sit in Atomics.wait; tell them to leave their loop before terminating them.
    for (let i = 1; i <= this.nWorkers; i++) {
      Atomics.store(this.ctl, i * SLOT + SEQ, -1);
      Atomics.notify(this.ctl, i * SLOT + SEQ);
    }
    for (const w of this.workers) w?.terminate();
    this.workers.length = 0;
  }

  matmul(A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number, transB = false): void {
    if (M === 0 || N === 0) return;
    if (K === 0) {
      C.fill(0, 0, M * N);
      return;
    }
    // Products the caller runs alone go to the unshared heap (cheaper copies), the rest to the shared one.
    const alone = !this.shared || 2 * M * N * K < this.minFlops;
    const heap = (alone ? this.plainHeap() : null) ?? this.shared!;
    for (;;) {
      const plan = heap.plan(M, N, K);
      // Only an absurdly deep K (one row of A plus 8 columns of B overflow the heap) does not fit.
      if (!plan) return matmulBlocked(A, transB ? transposed(B, N, K) : B, C, M, N, K);
      if (heap.ensure(plan.end)) return this.run(heap, A, B, C, M, N, K, plan, transB);
      // The grow failed below the limit: the heap's limit now equals what it has; plan again within it.
    }
  }

  private run(h: KernelHeap, A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number, p: Plan, transB: boolean): void {
    const heap = h.heap;
    const a4 = p.a / 4,
      x4 = p.x / 4;
    for (let c0 = 0; c0 < N; c0 += p.nb) {
      const nb = Math.min(p.nb, N - c0);
      if (transB) {
        // Bᵀ's rows c0..c0+nb are this block's columns, already contiguous.
        heap.set(B.subarray(c0 * K, (c0 + nb) * K), x4);
        h.kernel.packBT(p.x, K, K, nb, p.pb, KC, NC);
      } else {
        if (nb === N) heap.set(B.subarray(0, K * N), x4);
        else for (let k = 0; k < K; k++) heap.set(B.subarray(k * N + c0, k * N + c0 + nb), x4 + k * nb);
        h.kernel.packB(p.x, nb, K, nb, p.pb, KC, NC);
      }
      for (let r0 = 0; r0 < M; r0 += p.mb) {
        const mb = Math.min(p.mb, M - r0);
        // Row ranges are relative to this block of rows r0..r0+mb; C's block has row stride nb.
        const copyA = (s: number, e: number) => heap.set(A.subarray((r0 + s) * K, (r0 + e) * K), a4 + s * K);
        const copyC = (s: number, e: number, j0: number, j1: number) => {
          if (j0 === 0 && j1 === N) C.set(heap.subarray(x4 + s * N, x4 + e * N), (r0 + s) * N);
          else for (let i = s; i < e; i++) C.set(heap.subarray(x4 + i * nb + j0, x4 + i * nb + j1), (r0 + i) * N + c0 + j0);
        };
        this.gemm(h, p.a, p.pb, p.x, mb, nb, K, copyA, copyC);
      }
    }
  }

  /** Worker slots (1-based) that can take a job now; waits (bounded) for booting ones. */
  private liveWorkers(): number[] {
    const live: number[] = [];
    if (this.nWorkers > 0) void this.spawn();
    for (let i = 1; i <= this.nWorkers && !this.disposed; i++) {
      const ready = i * SLOT + READY;
      let state = Atomics.load(this.ctl, ready);
      const h = this.workers[i - 1];
      if (state === 0 && h?.blocking && !h.failed) {
        const left = this.startDeadline - Date.now();
        if (left > 0) Atomics.wait(this.ctl, ready, 0, left);
        state = Atomics.load(this.ctl, ready);
      }
      if (state === 1) live.push(i);
    }
    return live;
  }

  /**
   * C[m,n] = A[m,k]·B[k,n] with B packed at pb, split over the caller and the live workers.
   * copyA/copyC move rows [s, e) (C: columns [j0, j1)) between the arrays and the heap. The job
   * is cut into chunks that threads claim as they go; the caller publishes A chunk by chunk so
   * workers start at once, copies out its own chunks of C while the workers finish theirs, and
   * waits only for chunks actually claimed (a worker that never got CPU time costs nothing).
   */
  private gemm(
    h: KernelHeap,
    a: number,
    pb: number,
    c: number,
    m: number,
    n: number,
    k: number,
    copyA: (s: number, e: number) => void,
    copyC: (s: number, e: number, j0: number, j1: number) => void,
  ): void {
    const kernel = h.kernel,
      ctl = this.ctl;
    const workers = h === this.shared && 2 * m * n * k >= this.minFlops && Math.ceil(n / NC) <= MAX_CHUNKS ? this.liveWorkers() : [];
    if (workers.length === 0) {
      copyA(0, m);
      kernel.gemmPacked(a, k, pb, c, n, m, n, k, 0, n, KC, NC, h.tmpBase);
      copyC(0, m, 0, n);
      return;
    }
    // Full-width row chunks when there are rows enough (C then copies out contiguously), else
    // also cut the columns into NC-wide blocks (few, wide rows: M=16, N=4096).
    const target = Math.min(CHUNKS_PER_THREAD * (workers.length + 1), MAX_CHUNKS);
    const cw = Math.ceil(m / 4) >= target ? n : NC;
    const blocks = Math.ceil(n / cw);
    const rowChunks = Math.max(1, Math.min(Math.ceil(m / 4), Math.floor(target / blocks)));
    const rc = Math.ceil(m / rowChunks / 4) * 4;
    const total = Math.ceil(m / rc) * blocks;
    const seq = (this.seq = this.seq >= 0x3fffffff ? 1 : this.seq + 1);
    const tag = jobTag(seq);
    // Retag NEXT first: from here on, a late worker still holding the previous job claims nothing.
    Atomics.store(ctl, NEXT, (tag << 12) | 0);
    const job = [a, pb, c, m, n, k, rc, Math.ceil(m / rc), blocks, KC, NC, cw];
    for (let i = 0; i < job.length; i++) ctl[JOB + i] = job[i];
    Atomics.store(ctl, COPIED, 0);
    Atomics.store(ctl, FINISHED, 0);
    Atomics.store(ctl, FAIL, 0);
    for (const w of workers) {
      Atomics.store(ctl, w * SLOT + SEQ, seq);
      Atomics.notify(ctl, w * SLOT + SEQ);
    }
    const mine = new Set<number>();
    try {
      for (let r = 0; r < m; r += rc) {
        copyA(r, Math.min(m, r + rc));
        Atomics.store(ctl, COPIED, r / rc + 1);
        // A worker that claimed this chunk early sleeps in Atomics.wait (1 ms timeout) after a short
        // spin; nothing woke it before, so a late copy cost it the whole millisecond.
        Atomics.notify(ctl, COPIED);
      }
      claimChunks(ctl, tag, kernel.gemmPacked, h.tmpBase, (r0, r1, j0, j1) => {
        copyC(r0, r1, j0, j1);
        mine.add(r0 * blocks + j0 / cw);
      });
    } finally {
      // If the caller failed part-way: release workers waiting for A, take the unclaimed chunks
      // off the table, and still let claimed ones finish before the heap is reused.
      Atomics.store(ctl, COPIED, 0x7fffffff);
      Atomics.notify(ctl, COPIED);
      for (let cur = Atomics.load(ctl, NEXT); (cur & 0xfff) < total; cur = Atomics.load(ctl, NEXT)) {
        if (Atomics.compareExchange(ctl, NEXT, cur, (tag << 12) | total) === cur) Atomics.add(ctl, FINISHED, total - (cur & 0xfff));
      }
      this.join(total);
    }
    if (Atomics.load(ctl, FAIL)) throw new Error("matmul: a WASM worker trapped");
    for (let r0 = 0; r0 < m; r0 += rc) {
      for (let j0 = 0; j0 < n; j0 += cw) if (!mine.has(r0 * blocks + j0 / cw)) copyC(r0, Math.min(m, r0 + rc), j0, Math.min(n, j0 + cw));
    }
  }

  /** Wait until `total` chunks are finished. */
  private join(total: number): void {
    const ctl = this.ctl;
    // Spin briefly before sleeping: a caller that sleeps tends to be woken onto the worker's core
    // (measured: threads 1 gained 1.0-1.5x at 512 without this, 1.5-1.8x with it).
    const until = performance.now() + MAIN_SPIN_MS;
    while (Atomics.load(ctl, FINISHED) !== total && performance.now() < until);
    let d: number;
    while ((d = Atomics.load(ctl, FINISHED)) !== total) Atomics.wait(ctl, FINISHED, d);
  }
}
