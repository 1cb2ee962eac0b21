import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { SafetensorsError, openSafetensors, serializeSafetensors } from "../src/node.ts";
import { rawFile, rejectsWith, withTmpDir } from "./helpers.ts";

const F = "model.safetensors";
const open = (bytes: Uint8Array, options: { maxHeaderBytes?: number } = {}) => openSafetensors(bytes, { label: F, ...options });
const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

test("files shorter than the length prefix are truncated", async () => {
  for (const n of [0, 1, 7]) await rejectsWith(open(new Uint8Array(n)), "truncated", { file: F });
});

test("header length larger than the cap, or past the end of the file", async () => {
  await rejectsWith(open(rawFile({}, 0, 2n ** 64n - 1n)), "header_too_large", { file: F });
  await rejectsWith(open(rawFile({}, 0, 100_000_001n)), "header_too_large", { file: F });
  await rejectsWith(open(rawFile({}, 0, 1000n)), "truncated", { file: F, message: /header length 1000 runs past the end/ });
  const good = rawFile({ a: entry("U8", [100], [0, 100]) }, 100);
  await rejectsWith(open(good, { maxHeaderBytes: 16 }), "header_too_large", { file: F });
  await open(good, { maxHeaderBytes: 1 << 20 });
});

test("a file cut short in its data names the tensor that runs past the end", async () => {
  const full = serializeSafetensors({
    "model.layers.0.mlp.up_proj.weight": { dtype: "F32", shape: [4, 4], data: new Float32Array(16) },
  });
  await rejectsWith(open(full.subarray(0, full.length - 1)), "offsets_out_of_range", {
    file: F,
    tensor: "model.layers.0.mlp.up_proj.weight",
    message: /data_offsets \[0, 64\] run past the end of the 63-byte data buffer/,
  });
  // Cut inside the header.
  await rejectsWith(open(full.subarray(0, 20)), "truncated", { file: F });
});

test("the header must be UTF-8 JSON holding an object", async () => {
  const badUtf8 = rawFile("{}  ");
  badUtf8[10] = 0xff;
  await rejectsWith(open(badUtf8), "invalid_utf8", { file: F });
  const bom = rawFile("\ufeff{}");
  await rejectsWith(open(bom), "invalid_json", { file: F });
  await rejectsWith(open(rawFile('{"a":')), "invalid_json", { file: F });
  await rejectsWith(open(rawFile("[]")), "invalid_header", { file: F });
  await rejectsWith(open(rawFile("null")), "invalid_header", { file: F });
  await rejectsWith(open(rawFile("")), "invalid_json", { file: F });
  await rejectsWith(open(rawFile({ w: [1, 2] })), "invalid_header", { file: F, tensor: "w" });
  await rejectsWith(open(rawFile({ w: null })), "invalid_header", { file: F, tensor: "w" });
  // Padding with spaces (and other JSON whitespace) is fine.
  await open(rawFile("{}      "));
  await open(rawFile(" \n{} \t"));
});

test("unknown dtypes are rejected, naming the tensor and the dtype", async () => {
  const e = await rejectsWith(open(rawFile({ w: entry("F128", [1], [0, 16]) }, 16)), "unknown_dtype", { file: F, tensor: "w" });
  assert.match(e.message, /"F128"/);
  await rejectsWith(open(rawFile({ w: entry("f32", [1], [0, 4]) }, 4)), "unknown_dtype", { tensor: "w" });
  await rejectsWith(open(rawFile({ w: { shape: [1], data_offsets: [0, 4] } }, 4)), "unknown_dtype", { tensor: "w" });
});

test("shapes must be arrays of non-negative safe integers", async () => {
  for (const shape of [[-1], [1.5], ["2"], "2", null, [2 ** 53], [1e300], [2 ** 30, 2 ** 30, 2 ** 30], undefined]) {
    await rejectsWith(open(rawFile({ w: entry("U8", shape, [0, 2]) }, 2)), "invalid_shape", { file: F, tensor: "w" });
  }
});

test("data_offsets must be [begin, end] with 0 <= begin <= end", async () => {
  for (const offsets of [[0], [0, 1, 2], [-1, 1], [2, 1], ["0", "1"], [0.5, 1], null, { 0: 0, 1: 1 }]) {
    await rejectsWith(open(rawFile({ w: entry("U8", [1], offsets) }, 2)), "invalid_offsets", { file: F, tensor: "w" });
  }
});

test("offsets out of range, size mismatch, overlaps and holes name file and tensor", async () => {
  await rejectsWith(open(rawFile({ w: entry("U8", [20], [0, 20]) }, 10)), "offsets_out_of_range", { file: F, tensor: "w" });
  await rejectsWith(open(rawFile({ w: entry("F32", [3], [0, 8]) }, 8)), "size_mismatch", {
    file: F,
    tensor: "w",
    message: /hold 8 bytes but F32 \[3\] needs 12/,
  });
  await rejectsWith(
    open(
      rawFile(
        {
          "model.layers.0.mlp.gate_proj.weight": entry("U8", [15], [0, 15]),
          "model.layers.0.mlp.up_proj.weight": entry("U8", [10], [10, 20]),
        },
        20,
      ),
    ),
    "overlap",
    {
      file: F,
      tensor: "model.layers.0.mlp.up_proj.weight",
      message:
        /^model\.safetensors: tensor "model\.layers\.0\.mlp\.up_proj\.weight": data_offsets \[10, 20\] overlap "model\.layers\.0\.mlp\.gate_proj\.weight"/,
    },
  );
  // The same tensor twice (identical offsets) is an overlap too.
  await rejectsWith(open(rawFile({ a: entry("U8", [4], [0, 4]), b: entry("U8", [4], [0, 4]) }, 4)), "overlap", { tensor: "b" });
  await rejectsWith(open(rawFile({ a: entry("U8", [4], [0, 4]), b: entry("U8", [4], [6, 10]) }, 10)), "hole", {
    file: F,
    tensor: "b",
    message: /leave bytes \[4, 6\)/,
  });
  await rejectsWith(open(rawFile({ a: entry("U8", [4], [2, 6]) }, 6)), "hole", { tensor: "a" });
  // Trailing bytes after the last tensor are a hole as well (the reference requires an exact fit).
  const trailing = await rejectsWith(open(rawFile({ a: entry("U8", [4], [0, 4]) }, 5)), "hole", { file: F });
  assert.equal(trailing.tensor, undefined);
  // A zero-length tensor inside another tensor's span is rejected like the reference does.
  await rejectsWith(open(rawFile({ a: entry("U8", [4], [0, 4]), z: entry("U8", [0], [2, 2]) }, 4)), "overlap", { tensor: "z" });
  // Zero-length tensors at the boundaries are fine.
  const ok = await open(rawFile({ z0: entry("U8", [0], [0, 0]), a: entry("U8", [4], [0, 4]), z1: entry("F32", [2, 0], [4, 4]) }, 4));
  assert.deepEqual(ok.names, ["z0", "a", "z1"]);
  // JSON "-0" is read as 0, never as a negative zero size or offset.
  const negZero = await open(rawFile('{"w":{"dtype":"F32","shape":[4,-0],"data_offsets":[-0,0]}}'));
  assert.ok(Object.is(negZero.tensors.w.byteLength, 0) && Object.is(negZero.tensors.w.shape[1], 0));
});

test("deeply nested or huge header values give short typed errors, not stack overflows", async () => {
  const deep = "[".repeat(100_000) + "]".repeat(100_000);
  const cases: [string, string][] = [
    [deep, "invalid_header"],
    [`{"w":{"dtype":"U8","shape":${deep},"data_offsets":[0,0]}}`, "invalid_shape"],
    [`{"w":{"dtype":"U8","shape":[0],"data_offsets":${deep}}}`, "invalid_offsets"],
    [`{"w":{"dtype":${deep},"shape":[0],"data_offsets":[0,0]}}`, "unknown_dtype"],
    [`{"__metadata__":{"k":${deep}}}`, "invalid_metadata"],
  ];
  for (const [text, code] of cases) {
    const e = await rejectsWith(open(rawFile(text)), code as "invalid_header", { file: F });
    assert.ok(e.message.length < 300, e.message);
  }
  const long = "x".repeat(100_000);
  const e = await rejectsWith(open(rawFile({ [long]: entry(long, [0], [0, 0]) })), "unknown_dtype");
  assert.equal(e.tensor, long);
  assert.ok(e.message.length < 400, `${e.message.length}`);
});

test("__metadata__ must map strings to strings", async () => {
  for (const meta of [{ a: 1 }, { a: null }, { a: ["x"] }, { a: { b: "c" } }, ["x"], "x", 3]) {
    await rejectsWith(open(rawFile({ __metadata__: meta })), "invalid_metadata", { file: F });
  }
  const f = await open(rawFile({ __metadata__: null }));
  assert.deepEqual({ ...f.metadata }, {});
});

test("errors from a path name the path; all are SafetensorsError instances with code/file/tensor", async () => {
  await withTmpDir(async (dir) => {
    const path = join(dir, "broken.safetensors");
    await writeFile(path, rawFile({ w: entry("U8", [4], [0, 5]) }, 5));
    const e = await rejectsWith(openSafetensors(path), "size_mismatch", { file: path, tensor: "w" });
    assert.ok(e instanceof Error);
    assert.equal(e.name, "SafetensorsError");
    await writeFile(path, new Uint8Array(5));
    await rejectsWith(openSafetensors(path), "truncated", { file: path });
  });
  assert.ok(new SafetensorsError("hole", "f", undefined, "x").message === "f: x");
});
