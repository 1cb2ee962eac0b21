// The system-BLAS matmul path: selection (auto, off, a path, LOWRANK_BLAS), errors, and matmul of
// transposed, row-strided, batched, broadcast and expanded views against the naive loop.
// Runs unchanged under `node --import tsx --test`, `bun test` and `deno test -A --no-check`.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { type Tensor, tensor, fromF32, toF32 } from "@lowrank/tensor";
import { rnd } from "@lowrank/tensor/testing";
import { BlasError, type CpuBackend, createCpuBackend, matmulNaive } from "../src/index.ts";
import { BlasEngine } from "../src/blas/engine.ts";
import { blasLayout, gemmViews } from "../src/kernels/gemm-views.ts";
import { availableCores } from "../src/wasm/threads.ts";

const OPENBLAS = ["/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0", "/usr/lib64/libopenblas.so.0"].find((p) =>
  existsSync(p),
);
const NOT_A_BLAS = process.platform === "darwin" ? "/usr/lib/libSystem.B.dylib" : "libc.so.6";

const backend = createCpuBackend({ threads: 1 });
const noBlas = backend.blas.active ? false : `no BLAS here: ${backend.blas.reason}`;

/** Run `fn` with LOWRANK_BLAS set to `value` (undefined: unset). */
function withEnv<T>(value: string | undefined, fn: () => T): T {
  const old = process.env.LOWRANK_BLAS;
  if (value === undefined) delete process.env.LOWRANK_BLAS;
  else process.env.LOWRANK_BLAS = value;
  try {
    return fn();
  } finally {
    if (old === undefined) delete process.env.LOWRANK_BLAS;
    else process.env.LOWRANK_BLAS = old;
  }
}

/** Deterministic values in [-1, 1) (the conformance suite's generator). */
const random = (n: number, seed: number): Float32Array => rnd(n, seed);

/** x·y by the naive loop on contiguous copies (copy() never touches the matmul engine). */
function reference(x: Tensor, y: Tensor): Float32Array {
  const xs = x.shape,
    ys = y.shape;
  const M = xs[xs.length - 2],
    K = xs[xs.length - 1],
    N = ys[ys.length - 1];
  const batch = xs.slice(0, -2).reduce((a, b) => a * b, 1);
  const a = x.contiguous().readSync() as Float32Array,
    b = y.contiguous().readSync() as Float32Array;
  const c = new Float32Array(batch * M * N);
  for (let i = 0; i < batch; i++) matmulNaive(a.subarray(i * M * K), b.subarray(i * K * N), c.subarray(i * M * N), M, N, K);
  return c;
}

function assertClose(got: Float32Array, want: Float32Array, what: string, tol = 1e-5): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let m = 0;
  for (const w of want) m = Math.max(m, Math.abs(w));
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= tol * (m || 1), `${what}: [${i}] ${got[i]} vs ${want[i]}`);
}

describe("selection", () => {
  test(
    "auto takes the installed OpenBLAS and reports library, threads, path and reason",
    { skip: OPENBLAS && !process.env.LOWRANK_BLAS ? false : "no OpenBLAS at the usual paths, or LOWRANK_BLAS set" },
    () => {
      const be = withEnv(undefined, () => createCpuBackend());
      try {
        assert.ok(be.blas.active, `auto found no BLAS although ${OPENBLAS} exists: ${be.blas.reason}`);
        assert.match(be.blas.library, /^openblas \d+\.\d+\.\d+/);
        assert.equal(be.blas.reason, "auto: found libopenblas.so.0");
        assert.equal(be.blas.threads, availableCores());
        assert.match(be.device, /^cpu \(openblas \d+\.\d+\.\d+ \w+, \d+ threads?, \/\S+\.so\S*\)$/);
      } finally {
        be.dispose();
      }
    },
  );

  test("off, by option or LOWRANK_BLAS, says so in the device; the option wins over the env", () => {
    const off = withEnv("off", () => createCpuBackend({ threads: 0 }));
    assert.deepEqual(off.blas, { active: false, reason: "LOWRANK_BLAS=off" });
    assert.match(off.device, /^cpu \(1 thread, wasm-simd( fma)?; no BLAS: LOWRANK_BLAS=off\)$/);
    const opt = withEnv("/nonexistent/libblas.so.3", () => createCpuBackend({ threads: 0, blas: "off" }));
    assert.deepEqual(opt.blas, { active: false, reason: 'blas: "off"' });
    [off, opt].forEach((b) => b.dispose());
  });

  test("a path that does not load, or has no cblas_sgemm, is an error naming it", () => {
    assert.throws(
      () => withEnv("/nonexistent/libblas.so.3", () => createCpuBackend()),
      (err: unknown) => {
        assert.ok(err instanceof BlasError);
        assert.match(err.message, /^LOWRANK_BLAS=\/nonexistent\/libblas\.so\.3: cannot load \/nonexistent\/libblas\.so\.3 via /);
        return true;
      },
    );
    assert.throws(
      () => createCpuBackend({ blas: NOT_A_BLAS }),
      (err: unknown) => {
        assert.ok(err instanceof BlasError);
        assert.match(err.message, /^blas: ".*": \S+ has no cblas_sgemm \(not a BLAS with the CBLAS interface\)$/);
        return true;
      },
    );
  });

  test("an explicit path loads that library", { skip: OPENBLAS ? false : "no OpenBLAS at the usual paths" }, () => {
    const be = createCpuBackend({ threads: 0, blas: OPENBLAS });
    assert.ok(be.blas.active);
    assert.equal(be.blas.reason, `blas: "${OPENBLAS}"`);
    assert.equal(be.blas.threads, 1);
    assert.match(be.device, /^cpu \(openblas .*, 1 thread, \//);
    be.dispose();
  });
});

describe("blasLayout", () => {
  test("row-major, transposed, single rows and columns, and views BLAS cannot read", () => {
    assert.deepEqual(blasLayout(4, 3, 3, 1), { trans: false, ld: 3 });
    assert.deepEqual(blasLayout(4, 3, 10, 1), { trans: false, ld: 10 }); // narrowed columns
    assert.deepEqual(blasLayout(4, 3, 1, 4), { trans: true, ld: 4 }); // x.T
    assert.deepEqual(blasLayout(1, 3, 0, 1), { trans: false, ld: 3 }); // one row: its stride is free
    assert.deepEqual(blasLayout(4, 1, 5, 0), { trans: false, ld: 5 }); // one column
    assert.deepEqual(blasLayout(1, 3, 0, 7), { trans: true, ld: 7 }); // a strided row
    assert.equal(blasLayout(4, 3, 0, 1), null); // expanded rows
    assert.equal(blasLayout(4, 3, 6, 2), null); // strided both ways
    assert.equal(blasLayout(4, 3, 2, 1), null); // rows overlap
  });
});

describe("matmul on the BLAS path", { skip: noBlas }, () => {
  const [M, K, N] = [33, 70, 45];
  const t = (data: Float32Array, shape: number[]) => tensor(data, { shape, backend });
  const cases: [string, () => [Tensor, Tensor]][] = [
    ["plain", () => [t(random(M * K, 1), [M, K]), t(random(K * N, 2), [K, N])]],
    ["A.T", () => [t(random(K * M, 3), [K, M]).T, t(random(K * N, 2), [K, N])]],
    ["B.T (x·Wᵀ)", () => [t(random(M * K, 1), [M, K]), t(random(N * K, 4), [N, K]).T]],
    ["A.T·B.T", () => [t(random(K * M, 3), [K, M]).T, t(random(N * K, 4), [N, K]).T]],
    [
      "row-strided slices",
      () => [
        t(random(M * (K + 10), 5), [M, K + 10]).narrow(1, 3, K),
        t(random((K + 5) * (N + 7), 6), [K + 5, N + 7])
          .narrow(1, 2, N)
          .narrow(0, 5, K),
      ],
    ],
    ["transposed slice", () => [t(random(K * (M + 9), 7), [K, M + 9]).narrow(1, 4, M).T, t(random(K * N, 2), [K, N])]],
    ["batched through a permuted view", () => [t(random(3 * K * M, 8), [3, K, M]).transpose(1, 2), t(random(3 * K * N, 9), [3, K, N])]],
    ["broadcast batch", () => [t(random(2 * 3 * M * K, 10), [2, 3, M, K]), t(random(K * N, 2), [K, N]).expand(2, 3, K, N)]],
    ["expanded rows (packed first)", () => [t(random(K, 11), [1, K]).expand(M, K), t(random(K * N, 2), [K, N])]],
    // Skinny products (N or K <= 16, more than 128 rows) run in row blocks, a transposed B with small K copied.
    ["skinny x·Aᵀ (LoRA A)", () => [t(random(300 * K, 20), [300, K]), t(random(8 * K, 21), [8, K]).T]],
    ["skinny h·Bᵀ (LoRA B)", () => [t(random(300 * 8, 22), [300, 8]), t(random(N * 8, 23), [N, 8]).T]],
    ["skinny h·Bᵀ with strided B", () => [t(random(300 * 8, 22), [300, 8]), t(random(N * 12, 24), [N, 12]).narrow(1, 2, 8).T]],
    ["skinny transposed x", () => [t(random(K * 300, 25), [K, 300]).T, t(random(K * 8, 26), [K, 8])]],
    ["skinny strided x and C", () => [t(random(300 * (K + 6), 27), [300, K + 6]).narrow(1, 6, K), t(random(K * 16, 28), [K, 16])]],
    // Transposed-A products with a skinny side and a deep sum (LoRA's gA, gB) sum over blocks of rows.
    ["skinny deep ghᵀ·x (LoRA gA)", () => [t(random(600 * 8, 29), [600, 8]).T, t(random(600 * 40, 30), [600, 40])]],
    ["skinny deep gyᵀ·h (LoRA gB)", () => [t(random(600 * 40, 31), [600, 40]).T, t(random(600 * 8, 32), [600, 8])]],
    ["skinny deep, strided", () => [t(random(600 * 50, 33), [600, 50]).narrow(1, 5, 40).T, t(random(600 * 12, 34), [600, 12]).narrow(1, 1, 8)]],
    // One row goes through cblas_sgemv (decoding a token), W as stored or B as given, strided rows too.
    ["row vector", () => [t(random(K, 12), [1, K]), t(random(K * N, 2), [K, N])]],
    ["row vector · Wᵀ", () => [t(random(K, 12), [1, K]), t(random(N * K, 4), [N, K]).T]],
    ["row vector · strided Wᵀ", () => [t(random(K, 12), [1, K]), t(random(N * (K + 3), 14), [N, K + 3]).narrow(1, 3, K).T]],
    ["row vector · row-strided B", () => [t(random(K, 12), [1, K]), t(random(K * (N + 5), 15), [K, N + 5]).narrow(1, 0, N)]],
    ["column result", () => [t(random(M * K, 1), [M, K]), t(random(K, 13), [K, 1])]],
  ];
  for (const [name, make] of cases) {
    test(`${name} matches the naive loop`, () => {
      const [x, y] = make();
      const got = x.matmul(y);
      assertClose(got.readSync() as Float32Array, reference(x, y), name);
    });
  }

  test("skinny deep products accumulate into C with beta = 1 and ignore C's old values with beta = 0", () => {
    const engine = backend.engine as BlasEngine;
    for (const [M, N] of [
      [8, 40],
      [40, 8],
    ]) {
      const K = 600;
      const A = random(K * M, 35),
        B = random(K * N, 36),
        C0 = random(M * N, 37);
      const want = new Float32Array(M * N);
      for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) want[i * N + j] += A[k * M + i] * B[k * N + j];
      const fresh = new Float32Array(M * N).fill(NaN);
      engine.gemm(true, false, M, N, K, A, M, B, N, fresh, N, 0);
      assertClose(fresh, want, `${M}x${N} beta 0`);
      const acc = C0.slice();
      engine.gemm(true, false, M, N, K, A, M, B, N, acc, N, 1);
      assertClose(
        acc,
        want.map((v, i) => v + C0[i]),
        `${M}x${N} beta 1`,
      );
    }
  });

  test("transposed and strided views reach cblas_sgemm without a copy", () => {
    const engine = backend.engine as BlasEngine;
    assert.ok(engine instanceof BlasEngine);
    let packs = 0;
    const pack = () => (packs++, new Float32Array(M * K));
    const a = random(K * (M + 9), 7),
      b = random(N * K, 4);
    const C = new Float32Array(M * N);
    gemmViews(
      engine,
      { values: a, view: { shape: [M, K], strides: [1, M + 9], offset: 4 } },
      { values: b, view: { shape: [K, N], strides: [1, K], offset: 0 } },
      C,
      pack,
    );
    assert.equal(packs, 0);
    gemmViews(
      engine,
      { values: a, view: { shape: [M, K], strides: [0, 1], offset: 0 } },
      { values: b, view: { shape: [K, N], strides: [1, K], offset: 0 } },
      C,
      pack,
    );
    assert.equal(packs, 1);
  });

  test("zero-size products: K = 0 gives zeros, empty outputs are fine", async () => {
    assert.deepEqual(
      await t(new Float32Array(0), [2, 0])
        .matmul(t(new Float32Array(0), [0, 3]))
        .toArray(),
      [
        [0, 0, 0],
        [0, 0, 0],
      ],
    );
    assert.deepEqual(t(new Float32Array(0), [0, 4]).matmul(t(random(12, 1), [4, 3])).shape, [0, 3]);
    assert.deepEqual(t(new Float32Array(0), [0, 2, 4]).matmul(t(new Float32Array(0), [0, 4, 3])).shape, [0, 2, 3]);
  });

  test("recycled outputs are fully overwritten (stale values never leak into a result)", async () => {
    for (const be of [backend, createCpuBackend({ threads: 0, blas: "off" })]) {
      // 256 x 128 f32 = 128 KiB: large enough for the output pool.
      const x = tensor(random(256 * 64, 18), { shape: [256, 64], backend: be }),
        y = tensor(random(64 * 128, 19), { shape: [64, 128], backend: be });
      const first = x.matmul(y);
      assertClose(first.readSync() as Float32Array, reference(x, y), `${be.device} first`);
      first.dispose();
      const zeros = tensor(new Float32Array(0), { shape: [256, 0], backend: be }).matmul(tensor(new Float32Array(0), { shape: [0, 128], backend: be }));
      assert.ok(
        (zeros.readSync() as Float32Array).every((v) => v === 0),
        `${be.device}: K = 0 after a recycled output`,
      );
      zeros.dispose();
      const again = x.transpose(0, 1).transpose(0, 1).matmul(y.mul(2));
      assertClose(again.readSync() as Float32Array, reference(x, y.mul(2)), `${be.device} again`);
      if (be !== backend) be.dispose();
    }
  });

  for (const dtype of ["f16", "bf16"] as const) {
    test(`${dtype}: decoded to f32, multiplied, rounded on store, as on the WASM path`, () => {
      const wasm = createCpuBackend({ threads: 0, blas: "off" });
      try {
        const a = random(M * K, 14),
          b = random(N * K, 15);
        const run = (be: CpuBackend) => tensor(a, { shape: [M, K], backend: be, dtype }).matmul(tensor(b, { shape: [N, K], backend: be, dtype }).T);
        const got = run(backend),
          want = run(wasm);
        assert.equal(got.dtype, dtype);
        // Summation order differs between the kernels: allow a rounding step or two of the dtype.
        const step = dtype === "f16" ? 2 ** -10 : 2 ** -7;
        const g = got.readSync() as Float32Array;
        // Stored rounded: every value is representable in the dtype.
        assert.deepEqual(toF32(dtype, fromF32(dtype, g)), g);
        assertClose(g, want.readSync() as Float32Array, dtype, 2 * step);
      } finally {
        wasm.dispose();
      }
    });
  }

  test("backends with different thread counts share the process-wide BLAS setting correctly", () => {
    const one = createCpuBackend({ threads: 0 }),
      all = createCpuBackend();
    try {
      assert.match(one.device, /, 1 thread, /);
      for (const be of [one, all, one]) {
        const x = tensor(random(300 * 200, 16), { shape: [300, 200], backend: be }),
          y = tensor(random(200 * 100, 17), { shape: [200, 100], backend: be });
        assertClose(x.matmul(y).readSync() as Float32Array, reference(x, y), be.device);
      }
    } finally {
      one.dispose();
      all.dispose();
    }
  });
});
