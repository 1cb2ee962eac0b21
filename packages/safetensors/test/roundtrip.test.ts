import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import {
  DTYPES,
  type Dtype,
  SafetensorsError,
  type TensorInput,
  dtypeSize,
  openSafetensors,
  serializeSafetensors,
  toTypedArray,
  writeSafetensors,
} from "../src/node.ts";
import { prng, randomBytes, rejectsWith, withTmpDir } from "./helpers.ts";

/** One tensor per (dtype, shape) combination, including 0-d and empty tensors. */
function allDtypeTensors(seed: number): Record<string, TensorInput> {
  const rand = prng(seed);
  const shapes: number[][] = [[], [0], [3, 0, 2], [1], [7], [3, 5], [2, 3, 4]];
  const out: Record<string, TensorInput> = {};
  for (const dtype of DTYPES) {
    shapes.forEach((shape, i) => {
      const numel = shape.reduce((a, b) => a * b, 1);
      out[`${dtype.toLowerCase()}.${i}`] = { dtype, shape, data: randomBytes(rand, numel * dtypeSize(dtype)) };
    });
  }
  return out;
}

test("write -> read is byte-exact for every dtype, including 0-d and empty tensors", async () => {
  await withTmpDir(async (dir) => {
    const tensors = allDtypeTensors(1);
    const path = join(dir, "all.safetensors");
    await writeSafetensors(path, tensors);
    const f = await openSafetensors(path);
    try {
      assert.deepEqual([...f.names].sort(), Object.keys(tensors).sort());
      for (const [name, t] of Object.entries(tensors)) {
        const got = await f.read(name);
        assert.equal(got.dtype, t.dtype, name);
        assert.deepEqual(got.shape, t.shape, name);
        assert.deepEqual(got.data, t.data, name);
      }
      assert.deepEqual(f.tensors["f32.0"].shape, []);
      assert.equal(f.tensors["f32.0"].byteLength, 4);
      assert.equal(f.tensors["bf16.2"].byteLength, 0);
    } finally {
      await f.close();
    }
    // serializeSafetensors produces the very same bytes as the file writer.
    assert.deepEqual(new Uint8Array(await readFile(path)), serializeSafetensors(tensors));
  });
});

test("metadata round-trips, and no metadata means an empty object and no __metadata__ key", async () => {
  const meta = { format: "pt", "lowrank.note": 'ünïcødé ✓ "quoted" \n newline', empty: "" };
  const bytes = serializeSafetensors({ x: { dtype: "U8", shape: [2], data: new Uint8Array([1, 2]) } }, meta);
  const f = await openSafetensors(bytes);
  assert.deepEqual({ ...f.metadata }, meta);
  const plain = serializeSafetensors({ x: { dtype: "U8", shape: [2], data: new Uint8Array([1, 2]) } });
  assert.ok(!new TextDecoder().decode(plain).includes("__metadata__"));
  assert.deepEqual({ ...(await openSafetensors(plain)).metadata }, {});
});

test("byte-identical to the reference implementation's own test vectors", () => {
  const floats = new Float32Array([0, 1, 2, 3, 4, 5]);
  // safetensors tensor.rs test_serialization: {"attn.0": F32 [1, 2, 3]}.
  const expected = [
    64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97,
    112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0,
    0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
  ];
  assert.deepEqual([...serializeSafetensors({ "attn.0": { dtype: "F32", shape: [1, 2, 3], data: floats } })], expected);
  // test_empty: no tensors, with and without metadata.
  assert.deepEqual([...serializeSafetensors({})], [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
  const withMeta = [...serializeSafetensors({}, { framework: "pt" })];
  assert.deepEqual(withMeta.slice(0, 8), [40, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(new TextDecoder().decode(new Uint8Array(withMeta.slice(8))), '{"__metadata__":{"framework":"pt"}}     ');
  // test_serialization_forced_alignement: a shorter name forces 7 padding spaces.
  const aligned = serializeSafetensors({ attn0: { dtype: "F32", shape: [1, 1, 2, 3], data: floats } });
  assert.equal(aligned[0], 72);
  assert.deepEqual([...aligned.subarray(8 + 65, 80)], [32, 32, 32, 32, 32, 32, 32]);
});

test("entries are ordered like the reference: dtype alignment descending, then name", async () => {
  const t = (dtype: Dtype, n = 1): TensorInput => ({ dtype, shape: [n], data: new Uint8Array(n * dtypeSize(dtype)) });
  const bytes = serializeSafetensors({
    b: t("U8", 3),
    a: t("U8", 1),
    "10": t("F32"),
    "2": t("F32"),
    z: t("F64"),
    y: t("I64"),
    h: t("BF16"),
    g: t("F16"),
    bool: t("BOOL", 5),
    "é": t("I32"),
    "😀": t("I32"),
    "\uffff": t("I32"),
  });
  const f = await openSafetensors(bytes);
  // Surrogate pairs (U+1F600) sort after U+FFFF, as in UTF-8 byte order.
  assert.deepEqual(f.names, ["y", "z", "10", "2", "é", "\uffff", "😀", "h", "g", "a", "b", "bool"]);
  // The header order matches the data order.
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const keys = Object.keys(JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as object);
  // (JSON.parse moves integer-like keys first, so compare without them.)
  assert.deepEqual(
    keys.filter((k) => !/^\d+$/.test(k)),
    f.names.filter((k) => !/^\d+$/.test(k)),
  );
  assert.ok(new TextDecoder().decode(bytes.subarray(8, 8 + n)).startsWith('{"y":'));
  // Sorting by alignment keeps every tensor aligned to its element size.
  for (const name of f.names) {
    const info = f.tensors[name];
    assert.equal(info.byteOffset % dtypeSize(info.dtype), 0, name);
  }
});

test("typed arrays are accepted as data and toTypedArray returns matching values", async () => {
  const f32 = new Float32Array([1.5, -2, 3.25, Infinity]);
  const i64 = new BigInt64Array([-1n, 2n ** 62n, 0n]);
  const u64 = new BigUint64Array([2n ** 64n - 1n]);
  const i32 = new Int32Array([-7, 8]);
  const bf16 = new Uint16Array([0x3f80, 0xc000]);
  const f64 = new Float64Array([Math.PI]);
  const i8 = new Int8Array([-128, 127]);
  const bytes = serializeSafetensors({
    f32: { dtype: "F32", shape: [2, 2], data: f32 },
    i64: { dtype: "I64", shape: [3], data: i64 },
    u64: { dtype: "U64", shape: [], data: u64 },
    i32: { dtype: "I32", shape: [2], data: i32 },
    bf16: { dtype: "BF16", shape: [2], data: bf16 },
    f64: { dtype: "F64", shape: [1], data: f64 },
    i8: { dtype: "I8", shape: [2], data: i8 },
    bool: { dtype: "BOOL", shape: [3], data: new Uint8Array([1, 0, 1]) },
    c64: { dtype: "C64", shape: [1], data: new Float32Array([1, -1]) },
  });
  const f = await openSafetensors(bytes);
  assert.deepEqual(toTypedArray(await f.read("f32")), f32);
  assert.deepEqual(toTypedArray(await f.read("i64")), i64);
  assert.deepEqual(toTypedArray(await f.read("u64")), u64);
  assert.deepEqual(toTypedArray(await f.read("i32")), i32);
  assert.deepEqual(toTypedArray(await f.read("bf16")), bf16);
  assert.deepEqual(toTypedArray(await f.read("f64")), f64);
  assert.deepEqual(toTypedArray(await f.read("i8")), i8);
  assert.deepEqual(toTypedArray(await f.read("bool")), new Uint8Array([1, 0, 1]));
  assert.deepEqual(toTypedArray(await f.read("c64")), new Float32Array([1, -1]));
  // Unaligned input (odd byte offset) still yields an aligned copy.
  const raw = new Uint8Array(9);
  raw.set(new Uint8Array(new Float64Array([2.5]).buffer), 1);
  const out = toTypedArray({ dtype: "F64", data: raw.subarray(1) });
  assert.ok(out instanceof Float64Array);
  assert.equal(out[0], 2.5);
  assert.throws(() => toTypedArray({ dtype: "F32", data: new Uint8Array(3) }), RangeError);
});

test("writer rejects bad input with typed errors before touching the disk", async () => {
  const ok = { dtype: "F32" as const, shape: [2], data: new Float32Array(2) };
  const cases: [Record<string, unknown>, string, string][] = [
    [{ w: { dtype: "F32", shape: [3], data: new Float32Array(2) } }, "size_mismatch", "w"],
    [{ w: { dtype: "F16", shape: [2], data: new Float32Array(1) } }, "size_mismatch", "w"],
    [{ w: { dtype: "F17", shape: [2], data: new Uint8Array(2) } }, "unknown_dtype", "w"],
    [{ w: { dtype: "U8", shape: [-1], data: new Uint8Array(0) } }, "invalid_shape", "w"],
    [{ w: { dtype: "U8", shape: [1.5], data: new Uint8Array(0) } }, "invalid_shape", "w"],
    [{ w: { dtype: "U8", shape: [2 ** 40, 2 ** 40], data: new Uint8Array(0) } }, "invalid_shape", "w"],
    [{ w: { dtype: "U8", shape: [1], data: [1] } }, "invalid_data", "w"],
    [{ __metadata__: ok }, "invalid_name", "__metadata__"],
    [{ "bad\ud800": ok }, "invalid_name", "bad\ud800"],
  ];
  for (const [tensors, code, tensor] of cases) {
    assert.throws(
      () => serializeSafetensors(tensors as Record<string, TensorInput>),
      (e: unknown) => e instanceof SafetensorsError && e.code === code && e.tensor === tensor,
      `${code} ${tensor}`,
    );
  }
  assert.throws(
    () => serializeSafetensors({ ok }, { n: 1 } as unknown as Record<string, string>),
    (e: unknown) => e instanceof SafetensorsError && e.code === "invalid_metadata",
  );
  await withTmpDir(async (dir) => {
    const path = join(dir, "bad.safetensors");
    await rejectsWith(writeSafetensors(path, { w: { dtype: "F32", shape: [3], data: new Float32Array(2) } }), "size_mismatch", {
      file: path,
      tensor: "w",
    });
    await assert.rejects(readFile(path));
  });
});

test("a tensor named __proto__ or with integer-like names round-trips", async () => {
  const tensors = new Map<string, TensorInput>([
    ["__proto__", { dtype: "U8", shape: [1], data: new Uint8Array([9]) }],
    ["0", { dtype: "U8", shape: [1], data: new Uint8Array([7]) }],
    ["constructor", { dtype: "U8", shape: [1], data: new Uint8Array([5]) }],
  ]);
  const f = await openSafetensors(serializeSafetensors(tensors));
  assert.deepEqual(f.names, ["0", "__proto__", "constructor"]);
  assert.equal((await f.read("__proto__")).data[0], 9);
  assert.equal((await f.read("0")).data[0], 7);
  assert.equal((await f.read("constructor")).data[0], 5);
  assert.equal(f.has("toString"), false);
});

test("lazy data sources are called once each, in file order", async () => {
  await withTmpDir(async (dir) => {
    const calls: string[] = [];
    const lazy = (name: string, value: number) => () => {
      calls.push(name);
      return Promise.resolve(new Float32Array([value, value]));
    };
    const path = join(dir, "lazy.safetensors");
    await writeSafetensors(path, {
      b: { dtype: "F32", shape: [2], data: lazy("b", 2) },
      a: { dtype: "F32", shape: [2], data: lazy("a", 1) },
    });
    assert.deepEqual(calls, ["a", "b"]);
    const f = await openSafetensors(path);
    assert.deepEqual(toTypedArray(await f.read("b")), new Float32Array([2, 2]));
    await f.close();
  });
});
