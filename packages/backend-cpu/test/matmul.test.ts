// The matmul engine (WASM SIMD + workers, and the TypeScript fallback) against the naive loop.
// Runs unchanged under `node --import tsx --test`, `bun test` and `deno test -A --no-check`.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { tensor, setDefaultBackend } from "@lowrank/tensor";
import { SimdError, createCpuBackend, matmulNaive } from "../src/index.ts";
import { ElementwiseWasm } from "../src/wasm/elementwise.ts";
import { type MatmulEngineOptions, type WasmMatmulEngine, createMatmulEngine } from "../src/matmul.ts";

function random(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** max |got - want| relative to max |want|. */
function relErr(got: Float32Array, want: Float32Array): number {
  let d = 0,
    m = 0;
  for (let i = 0; i < want.length; i++) {
    d = Math.max(d, Math.abs(got[i] - want[i]));
    m = Math.max(m, Math.abs(want[i]));
  }
  return d / (m || 1);
}

/** Inputs and naive results per shape, computed once: the naive loop dominates the test time. */
const problems = new Map<string, { A: Float32Array; B: Float32Array; want: Float32Array }>();

function check(engine: WasmMatmulEngine, M: number, N: number, K: number): void {
  const key = `${M}x${N}x${K}`;
  let p = problems.get(key);
  if (!p) {
    p = { A: random(M * K, M * 7 + K), B: random(K * N, N * 13 + K), want: new Float32Array(M * N) };
    matmulNaive(p.A, p.B, p.want, M, N, K);
    problems.set(key, p);
  }
  const got = new Float32Array(M * N).fill(NaN);
  engine.matmul(p.A, p.B, got, M, N, K);
  const e = relErr(got, p.want);
  assert.ok(e <= 1e-4, `${M}x${K}·${K}x${N} on ${engine.describe()}: relative error ${e}`);
  // The same product with B given as Bᵀ [N, K] (x·Wᵀ with W as stored), packed from that layout.
  const Bt = new Float32Array(K * N);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) Bt[n * K + k] = p.B[k * N + n];
  got.fill(NaN);
  engine.matmul(p.A, Bt, got, M, N, K, true);
  const et = relErr(got, p.want);
  assert.ok(et <= 1e-4, `${M}x${K}·(${N}x${K})ᵀ on ${engine.describe()}: relative error ${et}`);
}

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [3, 3, 3],
  [17, 17, 17],
  [65, 65, 65],
  [130, 130, 130],
  [1, 17, 3],
  [17, 1, 65],
  [5, 130, 1],
  [256, 16, 4096],
  [256, 4096, 16],
  [300, 129, 257],
  [16, 4096, 256],
];

const CONFIGS: [string, MatmulEngineOptions][] = [
  ["wasm, threads 0", { threads: 0 }],
  ["wasm, threads 1", { threads: 1, parallelMinFlops: 0 }],
  ["wasm, threads 3 (more workers than cores here)", { threads: 3, parallelMinFlops: 0 }],
  ["wasm without relaxed SIMD, threads 1", { threads: 1, parallelMinFlops: 0, relaxed: false }],
  ["typescript, threads 0", { threads: 0, wasm: false }],
  ["typescript, threads 1", { threads: 1, wasm: false }],
];

const engines: WasmMatmulEngine[] = [];
after(() => {
  for (const e of engines) e.dispose();
});

describe("matmul engine", () => {
  for (const [name, opts] of CONFIGS) {
    test(`${name}: matches matmulNaive`, async () => {
      const engine = createMatmulEngine(opts);
      engines.push(engine);
      await engine.ready();
      const threads = opts.threads ?? 0;
      if (opts.wasm === false) assert.equal(engine.describe(), "1 thread, typescript");
      else if (threads > 0) {
        assert.equal(engine.describe(), `${threads + 1} threads, wasm-simd${engine.relaxed ? " fma" : ""}`);
        assert.equal(engine.activeThreads, threads + 1, "a worker did not start");
      } else assert.equal(engine.describe(), `1 thread, wasm-simd${engine.relaxed ? " fma" : ""}`);
      if (opts.relaxed === false || opts.wasm === false) assert.equal(engine.relaxed, false);
      for (const [M, N, K] of SHAPES) check(engine, M, N, K);
    });
  }

  // The kernel reads A in place for blocks narrower than 32 columns and packs it otherwise; edge
  // tiles (rows past a multiple of 4, columns past a multiple of 8) and K past one 256-deep block
  // take other branches of each.
  test("odd and skinny shapes match matmulNaive on both A paths", async () => {
    for (const threads of [0, 1]) {
      const engine = createMatmulEngine({ threads, parallelMinFlops: 0 });
      engines.push(engine);
      await engine.ready();
      const odd = [1, 3, 7, 8, 9, 17, 255];
      for (const M of odd) for (const N of odd) for (const K of odd) check(engine, M, N, K);
      for (let s = 1; s <= 16; s++) {
        for (const M of [5, 64]) {
          check(engine, M, s, 300); // skinny N (LoRA x·Aᵀ), in place, two k blocks
          check(engine, M, 300, s); // skinny K (LoRA h·Bᵀ), packed
          check(engine, M, 31 + s, 513); // either side of the packing threshold, three k blocks
        }
      }
    }
  });

  test("default options use a worker per extra core", async () => {
    const engine = createMatmulEngine();
    engines.push(engine);
    await engine.ready();
    assert.match(engine.describe(), /^\d+ threads?, wasm-simd( fma)?$/);
    check(engine, 200, 180, 300);
  });

  test("K = 0 gives zeros; empty outputs are fine", () => {
    const engine = createMatmulEngine({ threads: 0 });
    engines.push(engine);
    const C = new Float32Array(6).fill(7);
    engine.matmul(new Float32Array(0), new Float32Array(0), C, 2, 3, 0);
    assert.deepEqual(Array.from(C), [0, 0, 0, 0, 0, 0]);
    engine.matmul(new Float32Array(0), new Float32Array(5), new Float32Array(0), 0, 5, 1);
  });

  test("problems bigger than the heap are split by rows and columns", async () => {
    for (const threads of [0, 1]) {
      // About 78 KB of operand space: B (133 KB raw, as much packed) is split by columns, A by rows.
      const engine = createMatmulEngine({ threads, parallelMinFlops: 0, maxHeapBytes: 80_000 });
      engines.push(engine);
      await engine.ready();
      check(engine, 300, 257, 129);
      check(engine, 201, 9, 120); // rows only
      // K too deep for even a sliver of the heap: the TypeScript kernel answers instead.
      check(engine, 2, 3, 40_000);
    }
  });

  test("workers start on the first large matmul, not before; dispose falls back to the caller", () => {
    const engine = createMatmulEngine({ threads: 1 });
    engines.push(engine);
    check(engine, 20, 20, 20); // below PARALLEL_MIN_FLOPS: no thread is started
    assert.equal(engine.activeThreads, 1);
    check(engine, 256, 256, 256); // node:worker_threads boots while the caller waits
    assert.equal(engine.activeThreads, 2);
    engine.dispose();
    assert.equal(engine.activeThreads, 1);
    check(engine, 256, 256, 256);
  });

  test("many back-to-back parallel jobs of changing shapes stay correct", async () => {
    const engine = createMatmulEngine({ threads: 3, parallelMinFlops: 0 });
    engines.push(engine);
    await engine.ready();
    let seed = 7;
    const next = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n) + 1;
    for (let i = 0; i < 150; i++) check(engine, next(70), next(600), next(40));
  });

  test("the worker and the caller reuse the memory across growing problems", async () => {
    const engine = createMatmulEngine({ threads: 1, parallelMinFlops: 0 });
    engines.push(engine);
    await engine.ready();
    for (const n of [8, 64, 300, 32]) check(engine, n, n + 3, n + 1);
  });
});

describe("child processes", () => {
  const here = fileURLToPath(new URL(".", import.meta.url));
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  const cmd = g.Deno ? ["run", "-A", "--no-check"] : g.Bun ? [] : ["--import", "tsx"];
  /** fixtures/exit-child.ts in a fresh process: it prints one line and must exit on its own. */
  const child = (mode: "dispose" | "keep", env: Record<string, string> = {}) => {
    const r = spawnSync(process.execPath, [...cmd, `${here}fixtures/exit-child.ts`, mode], {
      encoding: "utf8",
      timeout: 30_000,
      cwd: here,
      env: { ...process.env, ...env },
    });
    assert.equal(r.error, undefined, `child did not exit: ${r.error}`);
    assert.equal(r.status, 0, r.stderr);
    return r;
  };
  for (const mode of ["dispose", "keep"] as const) {
    test(`a process that used a threaded engine exits by itself (${mode})`, () => {
      assert.match(child(mode).stdout, /^ok 128 2 threads, wasm-simd( fma)? active=2/m);
    });
  }
  // Node 20 validates relaxed SIMD only after wasm/relaxed.ts sets V8's flag; Node >= 22, Bun and
  // Deno validate it anyway. Either way a fresh process runs the FMA builds, and the opt-out works
  // (the V8 flag and LOWRANK_SIMD are process-wide, so each case needs its own process).
  test("a fresh process runs the relaxed builds; LOWRANK_SIMD=plain keeps the plain ones", () => {
    const line = (env: Record<string, string>) => {
      const r = child("dispose", env);
      assert.equal(r.stderr, "", "nothing on stderr (an unknown V8 flag would print there)");
      return r.stdout.trim();
    };
    assert.match(line({ LOWRANK_SIMD: "" }), /^ok 128 2 threads, wasm-simd fma active=2 relaxed matmul=true elementwise=true$/);
    assert.match(line({ LOWRANK_SIMD: "plain" }), /^ok 128 2 threads, wasm-simd active=2 relaxed matmul=false elementwise=false$/);
  });
});

describe("CpuBackend matmul through the Tensor API", () => {
  test("transposed views and batches match the naive loop (WASM path)", async () => {
    const backend = createCpuBackend({ threads: 1, blas: "off" });
    setDefaultBackend(backend);
    try {
      const [M, K, N] = [33, 70, 45];
      const a = random(M * K, 1),
        b = random(K * N, 2);
      const at = new Float32Array(K * M);
      for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) at[k * M + i] = a[i * K + k];
      const bt = new Float32Array(N * K);
      for (let k = 0; k < K; k++) for (let j = 0; j < N; j++) bt[j * K + k] = b[k * N + j];
      const want = new Float32Array(M * N);
      matmulNaive(a, b, want, M, N, K);
      const A = tensor(a, { shape: [M, K] }),
        B = tensor(b, { shape: [K, N] });
      const AT = tensor(at, { shape: [K, M] }),
        BT = tensor(bt, { shape: [N, K] });
      for (const [x, y] of [
        [A, B],
        [AT.T, B],
        [A, BT.T],
        [AT.T, BT.T],
      ]) {
        const got = x.matmul(y);
        assert.deepEqual(got.shape, [M, N]);
        assert.ok(relErr(got.readSync() as Float32Array, want) <= 1e-4);
      }
      // Batch of 3 (a stacked copy of the same problem) through a permuted view.
      const batch = tensor(new Float32Array([...at, ...at, ...at]), { shape: [3, K, M] }).transpose(1, 2);
      const out = batch.matmul(tensor(new Float32Array([...b, ...b, ...b]), { shape: [3, K, N] })).readSync() as Float32Array;
      for (let i = 0; i < 3; i++) assert.ok(relErr(out.subarray(i * M * N, (i + 1) * M * N), want) <= 1e-4);
      assert.match(backend.device, /^cpu \(2 threads, wasm-simd( fma)?; no BLAS: blas: "off"\)$/);
    } finally {
      setDefaultBackend(null);
      backend.dispose();
    }
  });
});

describe("SIMD build", () => {
  /** Whether this runtime validates relaxed SIMD (Deno, Bun, Chrome, Node 22+; Node 20 once relaxed.ts sets V8's flag). */
  const hasRelaxed = ElementwiseWasm.create()?.relaxed === true;
  const withSimdEnv = <T>(value: string | undefined, fn: () => T): T => {
    const old = process.env.LOWRANK_SIMD;
    if (value === undefined) delete process.env.LOWRANK_SIMD;
    else process.env.LOWRANK_SIMD = value;
    try {
      return fn();
    } finally {
      if (old === undefined) delete process.env.LOWRANK_SIMD;
      else process.env.LOWRANK_SIMD = old;
    }
  };
  const simdOf = (opts: Parameters<typeof createCpuBackend>[0]) => {
    const b = createCpuBackend({ threads: 0, blas: "off", ...opts });
    const engine = b.engine as WasmMatmulEngine;
    b.dispose();
    return [b.simd, engine.relaxed];
  };

  test(`auto runs relaxed SIMD where the runtime has it (here: ${hasRelaxed}); plain never does; the option wins over LOWRANK_SIMD`, () => {
    withSimdEnv(undefined, () => {
      assert.deepEqual(simdOf({}), hasRelaxed ? ["relaxed", true] : ["plain", false]);
      assert.deepEqual(simdOf({ simd: "plain" }), ["plain", false]);
    });
    withSimdEnv("plain", () => {
      assert.deepEqual(simdOf({}), ["plain", false]);
      assert.deepEqual(simdOf({ simd: "auto" }), hasRelaxed ? ["relaxed", true] : ["plain", false]);
    });
    assert.deepEqual(simdOf({ wasm: false, simd: "plain" }), [null, false]);
  });

  test("relaxed where the runtime lacks it, or a value that names no build, is a SimdError saying where it came from", () => {
    withSimdEnv(undefined, () => {
      if (hasRelaxed) assert.deepEqual(simdOf({ simd: "relaxed" }), ["relaxed", true]);
      else
        assert.throws(
          () => simdOf({ simd: "relaxed" }),
          (e: Error) => e instanceof SimdError && e.message === 'simd: "relaxed": this runtime does not validate relaxed SIMD',
        );
      assert.throws(() => simdOf({ simd: "relaxed", wasm: false }), /simd: "relaxed": wasm: false runs no WASM/);
    });
    withSimdEnv("fma", () =>
      assert.throws(
        () => simdOf({}),
        (e: Error) => e instanceof SimdError && /^LOWRANK_SIMD=fma: unknown SIMD build "fma" \(use auto, relaxed, plain\)$/.test(e.message),
      ),
    );
  });
});

const asc = await import("assemblyscript/asc").catch(() => null);
describe("generated WASM", () => {
  test("rebuilding assembly/matmul.ts gives the committed bytes", { skip: asc ? false : "assemblyscript (asc) is not installed: cannot rebuild" }, async () => {
    const { buildWasm, OUTPUT } = await import("../scripts/build-wasm.mjs");
    const { text } = await buildWasm();
    const committed = readFileSync(new URL(`../${OUTPUT}`, import.meta.url), "utf8");
    assert.equal(text, committed, `${OUTPUT} is stale: run npm run build:wasm -w @lowrank/backend-cpu`);
  });
});
