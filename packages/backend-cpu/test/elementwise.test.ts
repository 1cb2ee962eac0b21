// Elementwise, where, cast, copy, reduce and concat kernels (TypeScript fast paths and WASM SIMD)
// against a naive per-element reference on random strided views: permuted, sliced with offsets,
// broadcast (stride 0), ranks 0-5, zero-size, every dtype. Results must match bit for bit
// (NaN payloads aside), except sums, whose WASM path may add in another (fixed) order.
// Runs unchanged under `node --import tsx --test`, `bun test` and `deno test -A --no-check`.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  type BinaryOp,
  type DType,
  type HostArray,
  type Input,
  type UnaryOp,
  type View,
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  hostArray,
  numel,
} from "@lowrank/tensor";
import { readFileSync } from "node:fs";
import { type CpuHandle, createCpuBackend } from "../src/index.ts";
import { decodeHalf, encodeHalf } from "../src/kernels/half.ts";
import { ElementwiseWasm } from "../src/wasm/elementwise.ts";

// ---- random views ----

type Rand = () => number;
function rng(seed: number): Rand {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}
const int = (r: Rand, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));

/** A view of `shape` onto a fresh storage: some dims broadcast, the rest sliced from a larger base laid out in a random dim order. */
function randomView(r: Rand, shape: number[], bcast = 0.25): { view: View; size: number } {
  const real = shape.map((n) => n !== 0 && r() >= bcast);
  const base = shape.map((n, d) => (real[d] ? n + int(r, 0, 2) : 1));
  const order = shape.map((_, d) => d).sort(() => r() - 0.5);
  const strides = new Array<number>(shape.length).fill(0);
  let s = 1;
  for (let k = order.length - 1; k >= 0; k--) {
    const d = order[k];
    if (!real[d]) continue;
    strides[d] = s;
    s *= base[d];
  }
  let offset = int(r, 0, 3);
  shape.forEach((n, d) => {
    if (real[d]) offset += int(r, 0, base[d] - n) * strides[d];
  });
  return { view: { shape, strides, offset }, size: int(r, 0, 3) + s + int(r, 0, 3) + 4 };
}

function randomShape(r: Rand, maxRank = 5, maxDim = 5): number[] {
  const rank = int(r, 0, maxRank);
  return Array.from({ length: rank }, () => (r() < 0.05 ? 0 : int(r, 1, maxDim)));
}

/** Storage of `n` random values of `dtype`, with some NaN, infinities, zeros of both signs and repeats. */
function randomData(r: Rand, dtype: DType, n: number): HostArray {
  const special = [NaN, Infinity, -Infinity, 0, -0, 1, -1, 0.5];
  const v = Array.from({ length: n }, () => (r() < 0.1 ? special[int(r, 0, special.length - 1)] : (r() - 0.5) * 8));
  const out = hostArray(dtype, n);
  for (let i = 0; i < n; i++) {
    const x = v[i];
    if (dtype === "f16") out[i] = f32ToF16Bits(x);
    else if (dtype === "bf16") out[i] = f32ToBf16Bits(x);
    else if (dtype === "i32") out[i] = Number.isFinite(x) ? Math.round(x * 3) : 7;
    else if (dtype === "u8") out[i] = Number.isFinite(x) ? Math.abs(Math.round(x * 40)) % 256 : 3;
    else out[i] = x;
  }
  return out;
}

// ---- the naive reference (the semantics the kernels had before their fast paths) ----

const decode = (dtype: DType, bits: number): number => (dtype === "f16" ? f16BitsToF32(bits) : dtype === "bf16" ? bf16BitsToF32(bits) : bits);
function* indices(shape: readonly number[]): Generator<number[]> {
  if (shape.some((n) => n === 0)) return;
  const idx = shape.map(() => 0);
  for (;;) {
    yield idx.slice();
    let d = shape.length - 1;
    for (; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}
const at = (v: View, idx: number[]) => idx.reduce((o, i, d) => o + i * v.strides[d], v.offset);
/** Storage offset of element k (row-major) of a view, by dividing k down the dims. */
function offsetOf(v: View, k: number): number {
  let o = v.offset;
  for (let d = v.shape.length - 1; d >= 0; d--) {
    o += (k % v.shape[d]) * v.strides[d];
    k = Math.floor(k / v.shape[d]);
  }
  return o;
}
/** The view's elements in row-major order: storage bits, or decoded numbers. */
const raw = (x: Input<CpuHandle>) => Array.from({ length: numel(x.view.shape) }, (_, k) => x.handle[offsetOf(x.view, k)]);
const vals = (x: Input<CpuHandle>) => raw(x).map((b) => decode(x.dtype, b));
/** Store numbers as `dtype` the old way: through an f32 scratch for f16/bf16. */
function store(dtype: DType, v: number[]): HostArray {
  if (dtype === "f16" || dtype === "bf16") {
    const f = Float32Array.from(v);
    return Uint16Array.from(f, (x) => (dtype === "f16" ? f32ToF16Bits(x) : f32ToBf16Bits(x)));
  }
  const out = hostArray(dtype, v.length);
  (out as Float32Array).set(v);
  return out;
}
const BIN: Record<BinaryOp, (p: number, q: number) => number> = {
  add: (p, q) => p + q,
  sub: (p, q) => p - q,
  mul: (p, q) => p * q,
  div: (p, q) => p / q,
  max: (p, q) => (p !== p || q !== q ? NaN : Math.max(p, q)),
  min: (p, q) => (p !== p || q !== q ? NaN : Math.min(p, q)),
  pow: Math.pow,
  lt: (p, q) => (p < q ? 1 : 0),
  eq: (p, q) => (p === q ? 1 : 0),
};
const UN: Record<UnaryOp, (v: number) => number> = {
  neg: (v) => -v,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  recip: (v) => 1 / v,
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  sigmoid: (v) => 1 / (1 + Math.exp(-v)),
  abs: Math.abs,
  relu: (v) => (v > 0 ? v : 0),
};
function reduceRef(op: "sum" | "max", x: Input<CpuHandle>, nReduce: number): number[] {
  const k = x.view.shape.length - nReduce;
  const outShape = x.view.shape.slice(0, k),
    inShape = x.view.shape.slice(k);
  const inner = numel(inShape);
  return Array.from({ length: numel(outShape) }, (_, o) => {
    let s = op === "sum" ? 0 : -Infinity;
    for (let i = 0; i < inner; i++) {
      const v = decode(x.dtype, x.handle[offsetOf(x.view, o * inner + i)]);
      if (op === "sum") s += v;
      else if (v > s || v !== v) s = v;
    }
    return s;
  });
}

// ---- comparison ----

/** Bitwise equality, any NaN equal to any NaN; for sums a relative tolerance instead when `tol` > 0. */
function assertSame(got: HostArray, want: HostArray, dtype: DType, what: string, tol = 0): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    const g = decode(dtype, got[i]),
      w = decode(dtype, want[i]);
    if (g !== g && w !== w) continue;
    if (tol > 0 && Number.isFinite(w)) {
      assert.ok(Math.abs(g - w) <= tol * Math.max(1, Math.abs(w)), `${what}: [${i}] = ${g}, expected ${w}`);
      continue;
    }
    assert.ok(got[i] === want[i] && Object.is(g, w), `${what}: [${i}] = ${g} (bits ${got[i]}), expected ${w} (bits ${want[i]})`);
  }
}

// ---- the tests, on the WASM and the TypeScript paths ----

const FLOATS: DType[] = ["f32", "f16", "bf16"];
const ALL: DType[] = ["f32", "f16", "bf16", "i32", "u8"];
const BACKENDS = [
  { name: "wasm", be: createCpuBackend({ threads: 0 }) },
  { name: "typescript", be: createCpuBackend({ threads: 0, wasm: false }) },
];
after(() => BACKENDS.forEach(({ be }) => be.dispose()));

for (const { name, be } of BACKENDS) {
  const input = (r: Rand, dtype: DType, shape: number[], bcast?: number): Input<CpuHandle> => {
    const { view, size } = randomView(r, shape, bcast);
    return { handle: be.upload(randomData(r, dtype, size), dtype), dtype, view };
  };
  const read = (h: CpuHandle, dtype: DType, shape: readonly number[]) => be.readSync(h, dtype, numel(shape));
  /** Small random shapes, plus some long enough for the WASM path (from 1024 elements). */
  const shapeFor = (r: Rand, i: number) =>
    i % 4 === 3 ? [int(r, 2, 4), int(r, 1100, 1500)] : i % 8 === 5 ? [int(r, 2, 40), int(r, 2, 40), int(r, 1, 9)] : randomShape(r);

  describe(`elementwise kernels (${name})`, () => {
    test("binary ops on random strided views match the reference", () => {
      const r = rng(1);
      for (let i = 0; i < 400; i++) {
        const op = (Object.keys(BIN) as BinaryOp[])[i % 9];
        const dtype = ALL[int(r, 0, 4)];
        const shape = shapeFor(r, i);
        const a = input(r, dtype, shape),
          b = input(r, dtype, shape);
        const outDtype = op === "lt" || op === "eq" ? "u8" : dtype;
        const av = vals(a),
          bv = vals(b);
        const want = store(
          outDtype,
          av.map((p, k) => BIN[op](p, bv[k])),
        );
        assertSame(read(be.binary(op, a, b), outDtype, shape), want, outDtype, `${op} ${dtype} [${shape}] ${JSON.stringify([a.view, b.view])}`);
      }
    });

    test("binary fast paths: scalar, row, column and mask broadcasts, both sides", () => {
      const r = rng(2);
      const B = [9, 301];
      const views: View[] = [
        { shape: B, strides: [0, 0], offset: 3 },
        { shape: B, strides: [0, 1], offset: 1 },
        { shape: B, strides: [1, 0], offset: 2 },
        { shape: B, strides: [301, 1], offset: 0 },
        { shape: B, strides: [1, 9], offset: 0 },
      ];
      for (const op of Object.keys(BIN) as BinaryOp[]) {
        for (const va of views) {
          for (const vb of views) {
            const dtype = FLOATS[int(r, 0, 2)];
            const a = { handle: be.upload(randomData(r, dtype, 9 * 301 + 4), dtype), dtype, view: va };
            const b = { handle: be.upload(randomData(r, dtype, 9 * 301 + 4), dtype), dtype, view: vb };
            const outDtype = op === "lt" || op === "eq" ? "u8" : dtype;
            const av = vals(a),
              bv = vals(b);
            assertSame(
              read(be.binary(op, a, b), outDtype, B),
              store(
                outDtype,
                av.map((p, k) => BIN[op](p, bv[k])),
              ),
              outDtype,
              `${op} ${dtype} ${JSON.stringify([va, vb])}`,
            );
          }
        }
      }
      // rows longer than a WASM chunk (4096): a broadcast row must be staged again for every block
      const L = [3, 4100];
      for (const [sa, sb] of [
        [
          [4100, 1],
          [0, 1],
        ],
        [
          [4100, 1],
          [1, 0],
        ],
        [
          [1, 3],
          [0, 0],
        ],
      ]) {
        const a = { handle: be.upload(randomData(r, "f32", 3 * 4100), "f32"), dtype: "f32" as const, view: { shape: L, strides: sa, offset: 0 } };
        const b = { handle: be.upload(randomData(r, "f32", 3 * 4100), "f32"), dtype: "f32" as const, view: { shape: L, strides: sb, offset: 0 } };
        const av = vals(a),
          bv = vals(b);
        assertSame(
          read(be.binary("sub", a, b), "f32", L),
          store(
            "f32",
            av.map((p, k) => p - bv[k]),
          ),
          "f32",
          `sub [3, 4100] ${sa} ${sb}`,
        );
      }
      // [B, nh, T, T] scores + a [T, T] mask
      const S = [2, 3, 16, 16];
      const s = input(r, "f32", S, 0),
        mask = { ...input(r, "f32", [16, 16], 0) };
      const m = { ...mask, view: { shape: S, strides: [0, 0, mask.view.strides[0], mask.view.strides[1]], offset: mask.view.offset } };
      const sv = vals(s),
        mv = vals(m);
      assertSame(
        read(be.binary("add", s, m), "f32", S),
        store(
          "f32",
          sv.map((p, k) => p + mv[k]),
        ),
        "f32",
        "scores + mask",
      );
    });

    test("unary ops on random views match the reference", () => {
      const r = rng(3);
      for (let i = 0; i < 220; i++) {
        const op = (Object.keys(UN) as UnaryOp[])[i % 11];
        const dtype = i % 5 === 4 ? "i32" : FLOATS[int(r, 0, 2)];
        const shape = shapeFor(r, i);
        const x = input(r, dtype, shape);
        // WASM exp is within 1 ulp of the rounded f64 result, sigmoid within 2 (measured over [-110, 90]).
        const tol = (op === "exp" || op === "sigmoid") && name === "wasm" && dtype === "f32" ? 3e-7 : 0;
        assertSame(read(be.unary(op, x), dtype, shape), store(dtype, vals(x).map(UN[op])), dtype, `${op} ${dtype} [${shape}]`, tol);
      }
    });

    test("where moves storage bits for every dtype; the condition may be broadcast", () => {
      const r = rng(4);
      for (let i = 0; i < 200; i++) {
        const dtype = ALL[i % 5];
        const shape = shapeFor(r, i);
        const c = input(r, "u8", shape),
          a = input(r, dtype, shape),
          b = input(r, dtype, shape);
        const cv = raw(c),
          av = raw(a),
          bv = raw(b);
        const want = hostArray(dtype, cv.length);
        cv.forEach((t, k) => (want[k] = t ? av[k] : bv[k]));
        assertSame(read(be.where(c, a, b), dtype, shape), want, dtype, `where ${dtype} [${shape}]`);
      }
    });

    test("cast between every pair of dtypes", () => {
      const r = rng(5);
      for (let i = 0; i < 250; i++) {
        const from = ALL[i % 5],
          to = ALL[Math.floor(i / 5) % 5];
        const shape = shapeFor(r, i);
        const x = input(r, from, shape);
        const want =
          from === to
            ? hostArray(to, 0)
            : store(
                to,
                vals(x).map((v) => (to === "i32" || to === "u8" ? Math.trunc(v) || 0 : v)),
              );
        const got = read(be.cast(x, to), to, shape);
        if (from === to) assert.deepEqual(got, hostArray(to, 0).constructor === got.constructor ? Object.assign(hostArray(to, got.length), raw(x)) : got);
        else assertSame(got, want, to, `cast ${from}->${to} [${shape}]`);
      }
    });

    test("copy: random views, permutes that take the tiled transpose, zero-size and rank 0", () => {
      const r = rng(6);
      const check = (x: Input<CpuHandle>, what: string) => {
        const want = hostArray(x.dtype, numel(x.view.shape));
        raw(x).forEach((v, k) => (want[k] = v));
        assertSame(read(be.copy(x), x.dtype, x.view.shape), want, x.dtype, what);
      };
      for (let i = 0; i < 200; i++) check(input(r, ALL[i % 5], shapeFor(r, i)), `copy ${i}`);
      const permute = (shape: number[], perm: number[], dtype: DType, offset = 0) => {
        const st = shape.map((_, d) => numel(shape.slice(d + 1)));
        const data = randomData(r, dtype, numel(shape) + offset);
        check(
          { handle: be.upload(data, dtype), dtype, view: { shape: perm.map((p) => shape[p]), strides: perm.map((p) => st[p]), offset } },
          `permute [${shape}] ${perm}`,
        );
      };
      permute([2, 40, 3, 33], [0, 2, 1, 3], "f32");
      permute([40, 37], [1, 0], "f32", 5);
      permute([33, 9, 40], [2, 1, 0], "bf16");
      permute([3, 50, 45], [0, 2, 1], "i32", 1);
      permute([64, 70], [1, 0], "u8");
      permute([2, 3, 4, 5, 6], [4, 2, 0, 3, 1], "f16");
      check({ handle: be.upload(Float32Array.of(1, 2, 3), "f32"), dtype: "f32", view: { shape: [], strides: [], offset: 2 } }, "rank 0");
      check({ handle: be.upload(Float32Array.of(1, 2, 3), "f32"), dtype: "f32", view: { shape: [3, 0, 2], strides: [0, 2, 1], offset: 0 } }, "zero-size");
    });

    test("sum and max over the last dims of random views (NaN wins max; -0 before 0 stays -0)", () => {
      const r = rng(7);
      for (let i = 0; i < 300; i++) {
        const op = i % 2 ? "max" : "sum";
        const dtype = ALL[int(r, 0, 4)];
        const shape = i % 4 === 3 ? [int(r, 1, 5), int(r, 200, 900)] : shapeFor(r, i);
        const nReduce = int(r, 0, shape.length);
        const x = input(r, dtype, shape);
        const outShape = shape.slice(0, shape.length - nReduce);
        const tol = op === "sum" && name === "wasm" && dtype !== "i32" && dtype !== "u8" ? 1e-6 : 0;
        assertSame(
          read(be.reduce(op, x, nReduce), dtype, outShape),
          store(dtype, reduceRef(op, x, nReduce)),
          dtype,
          `${op} ${dtype} [${shape}] last ${nReduce}`,
          tol,
        );
      }
      const z = be.reduce(
        "max",
        { handle: be.upload(Float32Array.of(-0, 0, 0, -0), "f32"), dtype: "f32", view: { shape: [2, 2], strides: [2, 1], offset: 0 } },
        1,
      );
      assert.ok(Object.is(read(z, "f32", [2])[0], -0) && Object.is(read(z, "f32", [2])[1], 0));
      // sum over axis 0 of a [R, C] matrix: the permuted view takes the column path
      const m = input(r, "f32", [300, 70], 0);
      const t = { ...m, view: { shape: [70, 300], strides: [m.view.strides[1], m.view.strides[0]], offset: m.view.offset } };
      assertSame(read(be.reduce("sum", t, 1), "f32", [70]), store("f32", reduceRef("sum", t, 1)), "f32", "sum axis 0");
    });

    test("concat along every axis of random views", () => {
      const r = rng(8);
      for (let i = 0; i < 150; i++) {
        const dtype = ALL[i % 5];
        const shape = randomShape(r, 4).map((n) => n || 1);
        if (!shape.length) continue;
        const axis = int(r, 0, shape.length - 1);
        const parts = [0, 1, 2].slice(0, int(r, 1, 3)).map(() =>
          input(
            r,
            dtype,
            shape.map((n, d) => (d === axis ? int(r, 0, 4) : n)),
          ),
        );
        const total = parts.reduce((s, p) => s + p.view.shape[axis], 0);
        const outShape = shape.map((n, d) => (d === axis ? total : n));
        const want = hostArray(dtype, numel(outShape));
        let k = 0;
        for (const o of indices(outShape)) {
          let j = o[axis],
            p = 0;
          while (j >= parts[p].view.shape[axis]) j -= parts[p++].view.shape[axis];
          want[k++] =
            parts[p].handle[
              at(
                parts[p].view,
                o.map((v, d) => (d === axis ? j : v)),
              )
            ];
        }
        assertSame(read(be.concat(parts, axis), dtype, outShape), want, dtype, `concat ${dtype} axis ${axis} of ${parts.map((p) => `[${p.view.shape}]`)}`);
      }
    });
  });
}

describe("WASM elementwise engine", () => {
  const ew = ElementwiseWasm.create();
  const r = rng(9);
  const f = (n: number) => Float32Array.from({ length: n }, () => r() - 0.5);
  const B = [9, 301];
  const v = (strides: number[], offset = 0): View => ({ shape: B, strides, offset });

  test("is available on this runtime (WASM SIMD)", () => assert.ok(ew));

  test("exp and sigmoid of the plain and the relaxed-SIMD (FMA) builds stay within 1 and 2 ulp", () => {
    const x = Float32Array.from({ length: 1 << 16 }, (_, i) => -110 + (200 * i) / (1 << 16));
    x.set([NaN, Infinity, -Infinity, 0, -0, 88.72283, 88.7229, -103.97]);
    const u = new Uint32Array(1),
      f = new Float32Array(u.buffer);
    const bits = (v: number) => ((f[0] = v), u[0]);
    for (const build of [ElementwiseWasm.create({ relaxed: false })!, ew!]) {
      for (const [op, ulps, ref] of [
        ["exp", 1, Math.exp],
        ["sigmoid", 2, (v: number) => 1 / (1 + Math.exp(-v))],
      ] as const) {
        const out = new Float32Array(x.length);
        assert.ok(build.unary(op, x, out));
        x.forEach((v, i) => {
          const want = Math.fround(ref(v));
          if (want !== want) assert.ok(out[i] !== out[i], `${op}(${v})`);
          else assert.ok(Math.abs(bits(out[i]) - bits(want)) <= ulps, `${op}(${v}) = ${out[i]}, expected ${want} (${build.relaxed ? "relaxed" : "plain"})`);
        });
      }
    }
  });

  test("takes dense, broadcast-row, column and scalar operands; leaves other strides, small and rank-3 loops to TypeScript", () => {
    const a = f(4000),
      b = f(4000),
      out = new Float32Array(9 * 301);
    for (const s of [
      [301, 1],
      [0, 1],
      [1, 0],
      [0, 0],
    ]) {
      assert.equal(ew!.binary("mul", a, v([301, 1], 5), b, v(s, 7), out), true, `strides ${s}`);
      const want = a.subarray(5, 5 + 2709).map((x, k) => Math.fround(x * b[7 + Math.floor(k / 301) * s[0] + (k % 301) * s[1]]));
      assert.deepEqual(out, want, `mul by strides ${s}`);
    }
    assert.equal(ew!.binary("mul", a, v([1, 9]), b, v([301, 1]), out), false, "transposed operand");
    assert.equal(ew!.binary("pow", a, v([301, 1]), b, v([301, 1]), out), false, "pow");
    assert.equal(
      ew!.binary("add", a, { shape: [3, 3], strides: [3, 1], offset: 0 }, b, { shape: [3, 3], strides: [3, 1], offset: 0 }, new Float32Array(9)),
      false,
      "small",
    );
    const S = [4, 30, 40];
    assert.equal(
      ew!.binary("add", a, { shape: S, strides: [0, 40, 1], offset: 0 }, b, { shape: S, strides: [1, 0, 4], offset: 0 }, new Float32Array(4800)),
      false,
      "rank 3 after coalescing",
    );
    const c = Uint8Array.from({ length: 4000 }, () => (r() < 0.5 ? 1 : 0)),
      o = new Int32Array(9 * 301);
    const bits = (x: Float32Array) => new Int32Array(x.buffer);
    assert.equal(ew!.where(c, v([1, 0]), bits(a), v([301, 1]), bits(b), v([0, 0], 3), o), true, "where");
    assert.deepEqual(
      o,
      Int32Array.from({ length: 2709 }, (_, k) => (c[Math.floor(k / 301)] ? bits(a)[k] : bits(b)[3])),
    );
    const cols = new Float32Array(301),
      colsTs = new Float32Array(301);
    const inner = Int32Array.from({ length: 9 }, (_, j) => j * 310);
    assert.equal(ew!.sumColumns(a, 2, 301, inner, cols), true, "column sums");
    for (let o = 0; o < 301; o++) colsTs[o] = inner.reduce((t, j) => t + a[2 + j + o], 0);
    assert.deepEqual(cols, colsTs, "column sums add in the same order as TypeScript");
    const sums = new Float32Array(9);
    assert.equal(
      ew!.sumRuns(
        a,
        Int32Array.from({ length: 9 }, (_, i) => i * 400),
        301,
        sums,
      ),
      true,
      "sum rows with gaps between them",
    );
    sums.forEach((s, i) => assert.ok(Math.abs(s - a.subarray(i * 400, i * 400 + 301).reduce((t, x) => t + x, 0)) < 1e-5));
  });
});

describe("half codecs", () => {
  test("the WASM bf16 codec is bit-identical to the per-element one (every pattern, ties, NaN payloads, odd tails)", (t) => {
    const ew = ElementwiseWasm.create();
    if (!ew) return t.skip("no WASM SIMD in this runtime");
    const all = Uint16Array.from({ length: 65536 + 5 }, (_, i) => i & 0xffff);
    const dec = new Float32Array(all.length);
    assert.equal(ew.decodeBf16(all, dec), true);
    const decBits = new Uint32Array(dec.buffer);
    for (let i = 0; i < all.length; i++) assert.equal(decBits[i], (all[i] << 16) >>> 0, `decode ${all[i]}`);
    const r = rng(11);
    const bits = Uint32Array.from({ length: 100003 }, (_, i) => ((i & 0x1ff) << 23) ^ Math.floor(r() * 0x800000));
    bits.set([0x7f800000, 0xff800000, 0x7fc00001, 0x7f800001, 0xffffffff, 0x00008000, 0x00018000, 0x7f7fffff, 0x3f808000, 0x3f818000]);
    const enc = new Uint16Array(bits.length);
    assert.equal(ew.encodeBf16(new Float32Array(bits.buffer), enc), true);
    for (let i = 0; i < bits.length; i++) {
      const x = bits[i];
      const want = (x & 0x7fffffff) > 0x7f800000 ? ((x >>> 16) | 0x40) & 0xffff : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
      assert.equal(enc[i], want, `encode bits ${x.toString(16)}`);
    }
  });

  test("decode every f16/bf16 bit pattern and encode f32 bit patterns as @lowrank/tensor does", () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f16 = decodeHalf("f16", all),
      bf16 = decodeHalf("bf16", all);
    for (let h = 0; h < 65536; h++) {
      assert.ok(Object.is(f16[h], Math.fround(f16BitsToF32(h))), `f16 ${h}`);
      assert.ok(Object.is(bf16[h], bf16BitsToF32(h)) || (bf16[h] !== bf16[h] && bf16BitsToF32(h) !== bf16BitsToF32(h)), `bf16 ${h}`);
    }
    // every exponent with random mantissas and both signs, plus the edges
    const r = rng(10);
    const bits = Uint32Array.from({ length: 200000 }, (_, i) => ((i & 0x1ff) << 23) ^ Math.floor(r() * 0x800000));
    bits.set([
      0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001, 0x387fe000, 0x38800000, 0x33000000, 0x33000001, 0x477fefff, 0x477ff000,
    ]);
    const f = new Float32Array(bits.buffer);
    const e16 = encodeHalf("f16", f),
      eb16 = encodeHalf("bf16", f);
    for (let i = 0; i < f.length; i++) {
      // A NaN's sign and payload may not survive a JS number on every engine (JSC makes it canonical).
      if (f[i] !== f[i]) {
        assert.ok((e16[i] & 0x7fff) > 0x7c00 && (eb16[i] & 0x7fff) > 0x7f80, `NaN bits ${bits[i].toString(16)}`);
        continue;
      }
      assert.equal(e16[i], f32ToF16Bits(f[i]), `f16 of bits ${bits[i].toString(16)}`);
      assert.equal(eb16[i], f32ToBf16Bits(f[i]), `bf16 of bits ${bits[i].toString(16)}`);
    }
  });
});

const asc = await import("assemblyscript/asc").catch(() => null);
describe("generated WASM", () => {
  test(
    "rebuilding assembly/elementwise.ts gives the committed bytes",
    { skip: asc ? false : "assemblyscript (asc) is not installed: cannot rebuild" },
    async () => {
      const { buildWasm, TARGETS } = await import("../scripts/build-wasm.mjs");
      const { text } = await buildWasm("elementwise");
      const committed = readFileSync(new URL(`../${TARGETS.elementwise.output}`, import.meta.url), "utf8");
      assert.equal(text, committed, `${TARGETS.elementwise.output} is stale: run npm run build:wasm -w @lowrank/backend-cpu`);
    },
  );
});
