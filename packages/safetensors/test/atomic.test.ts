import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { openSafetensors, writeSafetensors } from "../src/node.ts";
import { rejectsWith, withTmpDir } from "./helpers.ts";

const old = { keep: { dtype: "U8" as const, shape: [3], data: new Uint8Array([1, 2, 3]) } };

test("a data source that throws mid-write leaves the old file intact and no temp file", async () => {
  await withTmpDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await writeSafetensors(path, old);
    const before = await readFile(path);
    let sawTemp = false;
    const boom = new Error("source failed");
    await assert.rejects(
      writeSafetensors(path, {
        // 8 MiB of F64 written before the failing tensor, so bytes really hit the temp file.
        a: { dtype: "F64", shape: [1 << 20], data: new Float64Array(1 << 20).fill(1) },
        b: {
          dtype: "U8",
          shape: [4],
          data: async () => {
            const names = await readdir(dir);
            sawTemp = names.some((n) => n.startsWith(".model.safetensors.") && n.endsWith(".tmp"));
            // The target is untouched while the new file is being written.
            assert.deepEqual(await readFile(path), before);
            throw boom;
          },
        },
      }),
      (e: unknown) => e === boom,
    );
    assert.ok(sawTemp, "the writer should write to a temporary file first");
    assert.deepEqual(await readFile(path), before);
    assert.deepEqual(await readdir(dir), ["model.safetensors"]);
    const f = await openSafetensors(path);
    assert.deepEqual([...(await f.read("keep")).data], [1, 2, 3]);
    await f.close();
  });
});

test("a lazy source returning the wrong size aborts the write with a typed error", async () => {
  await withTmpDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await writeSafetensors(path, old);
    const before = await readFile(path);
    await rejectsWith(writeSafetensors(path, { w: { dtype: "F32", shape: [4], data: () => new Float32Array(3) } }), "size_mismatch", {
      file: path,
      tensor: "w",
    });
    assert.deepEqual(await readFile(path), before);
    assert.deepEqual(await readdir(dir), ["model.safetensors"]);
  });
});

test("writing into a missing directory fails with an io error and creates nothing", async () => {
  await withTmpDir(async (dir) => {
    const path = join(dir, "missing", "model.safetensors");
    await rejectsWith(writeSafetensors(path, old), "io", { file: path });
    assert.deepEqual(await readdir(dir), []);
  });
});

test("a successful write replaces the old file completely", async () => {
  await withTmpDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await writeSafetensors(path, { big: { dtype: "U8", shape: [1000], data: new Uint8Array(1000).fill(7) } }, { v: "1" });
    await writeSafetensors(path, old, { v: "2" }, { fsync: false });
    const f = await openSafetensors(path);
    assert.deepEqual(f.names, ["keep"]);
    assert.deepEqual({ ...f.metadata }, { v: "2" });
    assert.equal(f.size, (await readFile(path)).byteLength);
    await f.close();
    assert.deepEqual(await readdir(dir), ["model.safetensors"]);
  });
});
