/**
 * Worker threads for the WASM matmul: the control-block layout, the worker script and how to
 * start it on each runtime. Workers instantiate the same module on the same shared memory and
 * claim chunks of the job posted in the control block (Atomics, no messages), so the caller can
 * stay synchronous.
 */

/**
 * Control block: Int32Array over a SharedArrayBuffer, SLOT int32s per thread. Slot 0 holds the
 * current job, read by every thread; slot i >= 1 belongs to worker i. Pointers are stored as
 * int32 bit patterns (wasm32 addresses reach 4 GiB).
 */
export const SLOT = 16;
/**
 * Job fields: NEXT = job tag << 12 | next chunk (claimed by compare-exchange, so a thread that
 * wakes up late for a finished job cannot claim chunks of the next one), row chunks of A copied so
 * far, chunks finished, 1 if a worker trapped, then from JOB: a, pb, c, m, n, k, rows per chunk,
 * row chunks, column chunks, kc, nc, columns per chunk (a multiple of nc).
 */
export const NEXT = 0,
  COPIED = 1,
  FINISHED = 2,
  FAIL = 3,
  JOB = 4;
/** Worker fields: job counter (-1 = quit), 1 ready / -1 failed, its edge-tile scratch. */
export const SEQ = 0,
  READY = 1,
  TMP = 2;
/** Chunks per job fit in the low 12 bits of NEXT; the job tag is the low 20 bits of the job counter. */
export const MAX_CHUNKS = 4095;
export const jobTag = (seq: number): number => seq & 0xfffff;

/** What a worker receives at start. */
export interface WorkerInit {
  bytes: Uint8Array;
  memory: WebAssembly.Memory;
  ctl: Int32Array;
  index: number;
}

/**
 * Plain JavaScript (not TypeScript) so no loader is needed inside the worker. It runs either as a
 * CommonJS eval script of node:worker_threads (Node, Bun, Deno) or as a module Web Worker.
 */
export const WORKER_SOURCE = `
const SLOT = ${SLOT}, NEXT = ${NEXT}, COPIED = ${COPIED}, FINISHED = ${FINISHED}, FAIL = ${FAIL}, JOB = ${JOB};
const SEQ = ${SEQ}, READY = ${READY}, TMP = ${TMP};
// The same loop as claimChunks in threads.ts (kept as text: a bundler or coverage tool may rewrite functions).
function claimChunks(ctl, tag, gemm, tmp) {
  const a = ctl[JOB] >>> 0, pb = ctl[JOB + 1] >>> 0, c = ctl[JOB + 2] >>> 0, m = ctl[JOB + 3], n = ctl[JOB + 4], k = ctl[JOB + 5];
  const rc = ctl[JOB + 6], blocks = ctl[JOB + 8], total = ctl[JOB + 7] * blocks, kc = ctl[JOB + 9], nc = ctl[JOB + 10], cw = ctl[JOB + 11];
  for (;;) {
    const cur = Atomics.load(ctl, NEXT), i = cur & 0xfff;
    if (cur >>> 12 !== tag || i >= total) return;
    if (Atomics.compareExchange(ctl, NEXT, cur, cur + 1) !== cur) continue;
    const ri = Math.floor(i / blocks), ci = i - ri * blocks;
    let spins = 0, v = 0;
    while ((v = Atomics.load(ctl, COPIED)) <= ri) if (++spins > 4096) Atomics.wait(ctl, COPIED, v, 1);
    const r0 = ri * rc, r1 = Math.min(m, r0 + rc), j0 = ci * cw, j1 = Math.min(n, j0 + cw);
    try {
      gemm(a + r0 * k * 4, k, pb, c + r0 * n * 4, n, r1 - r0, n, k, j0, j1, kc, nc, tmp);
    } catch (e) {
      Atomics.store(ctl, FAIL, 1);
    }
    Atomics.add(ctl, FINISHED, 1);
    Atomics.notify(ctl, FINISHED);
  }
}
function run(d) {
  const ctl = d.ctl, base = d.index * SLOT;
  let gemm;
  try {
    gemm = new WebAssembly.Instance(new WebAssembly.Module(d.bytes), { env: { memory: d.memory } }).exports.gemmPacked;
  } catch (e) {
    Atomics.store(ctl, base + READY, -1);
    Atomics.notify(ctl, base + READY);
    return;
  }
  Atomics.store(ctl, base + READY, 1);
  Atomics.notify(ctl, base + READY);
  let seen = 0;
  for (;;) {
    Atomics.wait(ctl, base + SEQ, seen);
    const seq = Atomics.load(ctl, base + SEQ);
    if (seq === seen) continue;
    if (seq < 0) return;
    seen = seq;
    claimChunks(ctl, seq & 0xfffff, gemm, ctl[base + TMP]);
  }
}
if (typeof require === "function") run(require("node:worker_threads").workerData);
else self.onmessage = (e) => { self.onmessage = null; run(e.data); self.close(); };
`;

export type GemmPacked = (
  a: number,
  lda: number,
  pb: number,
  c: number,
  ldc: number,
  m: number,
  n: number,
  k: number,
  j0: number,
  j1: number,
  kc: number,
  nc: number,
  tmp: number,
) => void;

/**
 * Claim chunks of job `tag` in slot 0 until none are left and compute each: chunk i is row chunk
 * floor(i / column chunks) x column chunk (i mod column chunks), so a thread that gets less CPU
 * time simply claims fewer. Waits until the caller has copied that chunk's rows of A, and counts
 * each finished chunk in FINISHED even when it throws. `done` receives each finished chunk.
 * The worker script carries the same loop as text (WORKER_SOURCE).
 */
export function claimChunks(ctl: Int32Array, tag: number, gemm: GemmPacked, tmp: number, done: (r0: number, r1: number, j0: number, j1: number) => void): void {
  const a = ctl[JOB] >>> 0,
    pb = ctl[JOB + 1] >>> 0,
    c = ctl[JOB + 2] >>> 0,
    m = ctl[JOB + 3],
    n = ctl[JOB + 4],
    k = ctl[JOB + 5];
  const rc = ctl[JOB + 6],
    blocks = ctl[JOB + 8],
    total = ctl[JOB + 7] * blocks,
    kc = ctl[JOB + 9],
    nc = ctl[JOB + 10],
    cw = ctl[JOB + 11];
  for (;;) {
    const cur = Atomics.load(ctl, NEXT),
      i = cur & 0xfff;
    if (cur >>> 12 !== tag || i >= total) return;
    if (Atomics.compareExchange(ctl, NEXT, cur, cur + 1) !== cur) continue;
    const ri = Math.floor(i / blocks),
      ci = i - ri * blocks;
    let spins = 0,
      v = 0;
    while ((v = Atomics.load(ctl, COPIED)) <= ri) if (++spins > 4096) Atomics.wait(ctl, COPIED, v, 1);
    const r0 = ri * rc,
      r1 = Math.min(m, r0 + rc),
      j0 = ci * cw,
      j1 = Math.min(n, j0 + cw);
    try {
      gemm(a + r0 * k * 4, k, pb, c + r0 * n * 4, n, r1 - r0, n, k, j0, j1, kc, nc, tmp);
      done(r0, r1, j0, j1);
    } finally {
      Atomics.add(ctl, FINISHED, 1);
    }
  }
}

/** A started worker. `blocking`: the caller may Atomics.wait for it to become ready (it boots on its own thread). */
export interface WorkerHandle {
  readonly blocking: boolean;
  failed: boolean;
  terminate(): void;
}

interface NodeWorker {
  unref(): void;
  on(event: "error", fn: (e: unknown) => void): void;
  terminate(): unknown;
}
type NodeWorkerCtor = new (code: string, opts: { eval: true; workerData: WorkerInit }) => NodeWorker;

function nodeProcess(): { getBuiltinModule?: (id: string) => unknown; versions?: Record<string, string | undefined> } | undefined {
  return (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown; versions?: Record<string, string | undefined> } }).process;
}

/**
 * node:worker_threads when the runtime has it. Preferred on Node, Bun and Deno: an eval worker
 * needs no file, starts while the caller blocks in Atomics.wait, and unref() lets the process exit.
 * (Measured: a Deno 2.9.6 Web Worker blocked in Atomics.wait keeps the process alive even after
 * terminate(); a Bun 1.4.5 Web Worker does not start while the caller blocks.)
 */
async function nodeWorkerCtor(): Promise<NodeWorkerCtor | null> {
  const proc = nodeProcess();
  if (!proc?.versions?.node) return null;
  try {
    const mod = (proc.getBuiltinModule?.("node:worker_threads") ?? (await import(/* @vite-ignore */ "node:" + "worker_threads"))) as {
      Worker?: NodeWorkerCtor;
    };
    return mod.Worker ?? null;
  } catch {
    return null;
  }
}

/** The same, synchronously where process.getBuiltinModule exists (Node >= 20.16, Bun, Deno). */
function nodeWorkerCtorSync(): NodeWorkerCtor | null | undefined {
  const proc = nodeProcess();
  if (!proc?.versions?.node) return null;
  if (!proc.getBuiltinModule) return undefined;
  try {
    return (proc.getBuiltinModule("node:worker_threads") as { Worker?: NodeWorkerCtor }).Worker ?? null;
  } catch {
    return null;
  }
}

function markFailed(init: WorkerInit, h: WorkerHandle): void {
  h.failed = true;
  const i = init.index * SLOT + READY;
  Atomics.store(init.ctl, i, -1);
  Atomics.notify(init.ctl, i);
}

function startNode(Ctor: NodeWorkerCtor, init: WorkerInit): WorkerHandle {
  const w = new Ctor(WORKER_SOURCE, { eval: true, workerData: init });
  w.unref();
  const h: WorkerHandle = { blocking: true, failed: false, terminate: () => void w.terminate() };
  // Without a listener a worker error would crash the process; a failed worker takes no more jobs.
  // (Traps inside gemm are caught in the worker and reported through FAIL instead.)
  w.on("error", () => markFailed(init, h));
  return h;
}

function startWeb(init: WorkerInit): WorkerHandle | null {
  if (typeof Worker !== "function" || typeof Blob !== "function" || typeof URL?.createObjectURL !== "function") return null;
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const w = new Worker(url, { type: "module" });
  (w as unknown as { unref?: () => void }).unref?.();
  // Nested workers may need the caller's event loop to start, so the engine never blocks on them.
  const h: WorkerHandle = {
    blocking: false,
    failed: false,
    terminate: () => {
      w.terminate();
      URL.revokeObjectURL(url);
    },
  };
  w.onerror = () => markFailed(init, h);
  w.postMessage(init);
  return h;
}

/**
 * Start `count` workers for slots 1..count; `onStart` receives each handle as it exists.
 * Synchronous where the runtime allows (so a first matmul can wait for them), else after an import.
 */
export function startWorkers(count: number, make: (index: number) => WorkerInit, onStart: (index: number, h: WorkerHandle) => void): Promise<void> {
  const start = (Ctor: NodeWorkerCtor | null) => {
    for (let i = 1; i <= count; i++) {
      const init = make(i);
      let h: WorkerHandle | null = null;
      try {
        h = Ctor ? startNode(Ctor, init) : startWeb(init);
      } catch {
        h = null;
      }
      if (h) onStart(i, h);
      else Atomics.store(init.ctl, i * SLOT + READY, -1);
    }
  };
  const sync = nodeWorkerCtorSync();
  if (sync !== undefined) {
    start(sync);
    return Promise.resolve();
  }
  return nodeWorkerCtor().then(start);
}

/** Whether this thread may block in Atomics.wait (a browser's main thread may not). */
export function canBlock(): boolean {
  try {
    return Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0) === "not-equal";
  } catch {
    return false;
  }
}

/** Whether SharedArrayBuffer is usable (browsers need cross-origin isolation). */
export function canShare(): boolean {
  if (typeof SharedArrayBuffer !== "function" || typeof Atomics !== "object") return false;
  return (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated !== false;
}

/** Logical cores: navigator.hardwareConcurrency, or os.availableParallelism() on Node 20. */
export function availableCores(): number {
  const nav = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator;
  if (nav?.hardwareConcurrency) return nav.hardwareConcurrency;
  try {
    const os = nodeProcess()?.getBuiltinModule?.("node:os") as { availableParallelism?: () => number; cpus?: () => unknown[] } | undefined;
    return os?.availableParallelism?.() ?? os?.cpus?.().length ?? 1;
  } catch {
    return 1;
  }
}
