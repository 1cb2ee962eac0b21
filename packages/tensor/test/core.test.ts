/** Backend-free pieces of the core: dtype conversions, shapes, random streams, scopes. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  LOGITS_CHUNK_BYTES,
  logitsChunkRows,
  Rng,
  bf16BitsToF32,
  broadcastShapes,
  contiguousStrides,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  isContiguous,
  keep,
  scope,
  uniformAt,
} from "../src/index.ts";
import { track } from "../src/scope.ts";

test("f16: every non-NaN bit pattern round-trips through f32", () => {
  for (let h = 0; h < 0x10000; h++) {
    const v = f16BitsToF32(h);
    if (Number.isNaN(v)) continue;
    assert.equal(f32ToF16Bits(v), h, `pattern ${h.toString(16)} -> ${v}`);
  }
});

test("f16: rounding to nearest even, subnormals, overflow", () => {
  assert.equal(f16BitsToF32(f32ToF16Bits(1 + 2 ** -11)), 1); // tie -> even (down)
  assert.equal(f16BitsToF32(f32ToF16Bits(1 + 3 * 2 ** -11)), 1 + 2 ** -9); // tie -> even (up)
  assert.equal(f16BitsToF32(f32ToF16Bits(2 ** -24)), 2 ** -24); // smallest subnormal
  assert.equal(f16BitsToF32(f32ToF16Bits(2 ** -26)), 0); // underflow
  assert.equal(f16BitsToF32(f32ToF16Bits(65520)), Infinity); // rounds past max
  assert.equal(f16BitsToF32(f32ToF16Bits(65504)), 65504);
  assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN))));
});

test("bf16: every non-NaN pattern round-trips; rounding to nearest even", () => {
  for (let b = 0; b < 0x10000; b++) {
    const v = bf16BitsToF32(b);
    if (Number.isNaN(v)) continue;
    assert.equal(f32ToBf16Bits(v), b);
  }
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 2 ** -8)), 1);
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 3 * 2 ** -8)), 1 + 2 ** -6);
  assert.ok(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN))));
});

test("shapes: broadcasting, strides, contiguity", () => {
  assert.deepEqual(broadcastShapes([2, 1, 4], [3, 1]), [2, 3, 4]);
  assert.deepEqual(broadcastShapes([], [5]), [5]);
  assert.throws(() => broadcastShapes([2, 3], [4, 3]), /\[2,3\] and \[4,3\] do not broadcast/);
  assert.deepEqual(contiguousStrides([2, 3, 4]), [12, 4, 1]);
  assert.ok(isContiguous([2, 1, 4], [4, 99, 1]));
  assert.ok(!isContiguous([2, 3], [1, 2]));
});

test("random: counter-based stream is deterministic, seed-dependent and uniform", () => {
  const a = Array.from({ length: 10000 }, (_, i) => uniformAt(5, i));
  const b = Array.from({ length: 10000 }, (_, i) => uniformAt(5, i));
  const c = Array.from({ length: 10000 }, (_, i) => uniformAt(6, i));
  assert.deepEqual(a, b);
  assert.ok(a.some((v, i) => v !== c[i]));
  assert.ok(a.every((v) => v >= 0 && v < 1));
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  assert.ok(Math.abs(mean - 0.5) < 0.01, `mean ${mean}`);
  const r = new Rng(9);
  const first = [r.next(), r.next()];
  const resumed = new Rng(9, 1);
  assert.equal(resumed.next(), first[1]);
  const normals = Array.from({ length: 20000 }, () => r.normal());
  const m = normals.reduce((s, v) => s + v, 0) / normals.length;
  const sd = Math.sqrt(normals.reduce((s, v) => s + (v - m) ** 2, 0) / normals.length);
  assert.ok(Math.abs(m) < 0.03 && Math.abs(sd - 1) < 0.03, `normal mean ${m} sd ${sd}`);
});

test("scope disposes what it created except returned and kept values, also on throw", () => {
  const made: { disposed: boolean; dispose(): void }[] = [];
  const mkD = () => {
    const d = {
      disposed: false,
      dispose() {
        this.disposed = true;
      },
    };
    made.push(d);
    return track(d);
  };
  let kept: { disposed: boolean } | null = null;
  const out = scope(() => {
    mkD();
    kept = keep(mkD());
    return { result: mkD() };
  });
  assert.deepEqual(
    made.map((d) => d.disposed),
    [true, false, false],
  );
  assert.equal(out.result.disposed, false);
  assert.equal(kept!.disposed, false);
  assert.throws(
    () =>
      scope(() => {
        mkD();
        throw new Error("boom");
      }),
    /boom/,
  );
  assert.equal(made[3].disposed, true);
  // a returned value moves to the enclosing scope
  const inner = scope(() => scope(() => mkD()));
  assert.equal(inner.disposed, false);
});

test("logitsChunkRows: whole when the logits fit one chunk, else the fewest equal chunks that fit", () => {
  const V = 49152,
    most = Math.floor(LOGITS_CHUNK_BYTES / (4 * V));
  assert.equal(logitsChunkRows(30, V), 30);
  assert.equal(logitsChunkRows(1, 10 ** 7), 1);
  for (const N of [most, most + 1, 256, 1000, 4097]) {
    const rows = logitsChunkRows(N, V),
      chunks = Math.ceil(N / rows);
    assert.ok(rows <= most, `N ${N}: ${rows} rows per chunk, at most ${most}`);
    assert.equal(chunks, Math.ceil(N / most), `N ${N}: as few chunks as fit`);
    assert.ok(N - (chunks - 1) * rows > rows - chunks, `N ${N}: the last chunk (${N - (chunks - 1) * rows} rows) is not a sliver of ${rows}`);
  }
  assert.equal(logitsChunkRows(256, V), 37);
});
