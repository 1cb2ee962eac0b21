import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { type TensorInput, dtypeSize, openSafetensors, openShardedSafetensors, writeSafetensors, writeShardedSafetensors } from "../src/node.ts";
import { STORIES_HF, prng, randomBytes, rejectsWith, withTmpDir } from "./helpers.ts";

/** The stories260K tensors when the shared data is present, else synthetic ones of the same sizes. */
async function checkpointTensors(): Promise<Map<string, TensorInput>> {
  const out = new Map<string, TensorInput>();
  if (existsSync(STORIES_HF)) {
    const f = await openSafetensors(STORIES_HF);
    for await (const [name, t] of f.entries()) out.set(name, { dtype: t.dtype, shape: t.shape, data: t.data });
    await f.close();
    return out;
  }
  const rand = prng(7);
  for (let i = 0; i < 12; i++) {
    const shape = [1 + (i % 5), 16 + i];
    out.set(`layer.${i}.weight`, { dtype: "F32", shape, data: randomBytes(rand, shape[0] * shape[1] * dtypeSize("F32")) });
  }
  return out;
}

async function assertSameTensors(dir: string, tensors: Map<string, TensorInput>): Promise<void> {
  const ckpt = await openShardedSafetensors(dir);
  try {
    assert.deepEqual([...ckpt.names].sort(), [...tensors.keys()].sort());
    for (const [name, t] of tensors) {
      const got = await ckpt.read(name);
      assert.equal(got.dtype, t.dtype);
      assert.deepEqual(got.shape, t.shape);
      assert.deepEqual(got.data, t.data, name);
    }
  } finally {
    await ckpt.close();
  }
}

test("sharded round trip: shards, index and every tensor byte-exact", async () => {
  const tensors = await checkpointTensors();
  const total = [...tensors.values()].reduce((s, t) => s + t.data.byteLength, 0);
  await withTmpDir(async (dir) => {
    const written = await writeShardedSafetensors(dir, tensors, { maxShardBytes: Math.ceil(total / 4), metadata: { format: "pt" } });
    const shards = written.filter((f) => f.endsWith(".safetensors"));
    assert.ok(shards.length >= 4, `expected >= 4 shards, got ${shards.length}`);
    shards.forEach((f, i) => assert.equal(f, `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`));
    assert.equal(written.at(-1), "model.safetensors.index.json");
    assert.deepEqual((await readdir(dir)).sort(), [...written].sort());

    const index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8")) as {
      metadata: { total_size: number };
      weight_map: Record<string, string>;
    };
    assert.equal(index.metadata.total_size, total);
    assert.deepEqual(Object.keys(index.weight_map).sort(), [...tensors.keys()].sort());
    for (const shard of shards) {
      const f = await openSafetensors(join(dir, shard));
      assert.deepEqual({ ...f.metadata }, { format: "pt" });
      await f.close();
    }

    const ckpt = await openShardedSafetensors(dir);
    assert.equal(ckpt.index, join(dir, "model.safetensors.index.json"));
    assert.equal(ckpt.metadata.total_size, total);
    assert.equal(ckpt.shards.size, shards.length);
    for (const name of ckpt.names) assert.equal(ckpt.tensors[name].shard, index.weight_map[name]);
    await ckpt.close();
    await assertSameTensors(dir, tensors);
    // The index file itself can be passed too.
    const viaIndex = await openShardedSafetensors(join(dir, "model.safetensors.index.json"));
    assert.equal(viaIndex.names.length, tensors.size);
    await viaIndex.close();
  });
});

test("everything in one shard is written as a single model.safetensors, like transformers", async () => {
  const tensors = await checkpointTensors();
  await withTmpDir(async (dir) => {
    assert.deepEqual(await writeShardedSafetensors(dir, tensors), ["model.safetensors"]);
    const ckpt = await openShardedSafetensors(dir);
    assert.equal(ckpt.index, undefined);
    await ckpt.close();
    await assertSameTensors(dir, tensors);
    // alwaysIndex forces an index even for one shard, and the stale single file is removed.
    assert.deepEqual(await writeShardedSafetensors(dir, tensors, { alwaysIndex: true }), ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]);
    assert.deepEqual((await readdir(dir)).sort(), ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]);
    await assertSameTensors(dir, tensors);
  });
});

test("re-saving with fewer shards removes the old shard files; an oversized tensor gets its own shard", async () => {
  const t = (n: number): TensorInput => ({ dtype: "U8", shape: [n], data: new Uint8Array(n).fill(n % 251) });
  await withTmpDir(async (dir) => {
    await writeShardedSafetensors(
      dir,
      new Map([
        ["a", t(10)],
        ["b", t(10)],
        ["c", t(10)],
      ]),
      { maxShardBytes: 10 },
    );
    assert.equal((await readdir(dir)).length, 4);
    const tensors = new Map([
      ["a", t(3)],
      ["big", t(50)],
      ["c", t(4)],
      ["d", t(4)],
    ]);
    const written = await writeShardedSafetensors(dir, tensors, { maxShardBytes: 10 });
    assert.deepEqual(written, [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
    ]);
    assert.deepEqual((await readdir(dir)).sort(), written);
    const ckpt = await openShardedSafetensors(dir);
    assert.equal(ckpt.tensors.big.shard, "model-00002-of-00003.safetensors");
    assert.equal(ckpt.tensors.c.shard, ckpt.tensors.d.shard);
    await ckpt.close();
    await assertSameTensors(dir, tensors);
  });
});

test("a missing shard is an error naming the index and the missing file", async () => {
  const tensors = await checkpointTensors();
  await withTmpDir(async (dir) => {
    const total = [...tensors.values()].reduce((s, t) => s + t.data.byteLength, 0);
    const written = await writeShardedSafetensors(dir, tensors, { maxShardBytes: Math.ceil(total / 3) });
    const victim = written[1];
    await rm(join(dir, victim));
    const index = join(dir, "model.safetensors.index.json");
    const e = await rejectsWith(openShardedSafetensors(dir), "missing_shard", { file: index });
    assert.ok(e.message.includes(JSON.stringify(victim)), e.message);
    assert.ok(e.tensor !== undefined);
  });
});

test("bad indexes: unknown tensor in shard, path traversal, malformed JSON, empty directory", async () => {
  await withTmpDir(async (dir) => {
    await writeSafetensors(join(dir, "part.safetensors"), { a: { dtype: "U8", shape: [1], data: new Uint8Array([1]) } });
    const index = join(dir, "model.safetensors.index.json");
    const put = (v: unknown) => writeFile(index, typeof v === "string" ? v : JSON.stringify(v));

    await put({ weight_map: { a: "part.safetensors", ghost: "part.safetensors" } });
    await rejectsWith(openShardedSafetensors(dir), "invalid_index", { file: index, tensor: "ghost" });
    await put({ weight_map: { a: "../part.safetensors" } });
    await rejectsWith(openShardedSafetensors(dir), "invalid_index", { file: index, tensor: "a" });
    await put({ weight_map: { a: "/etc/passwd" } });
    await rejectsWith(openShardedSafetensors(dir), "invalid_index", { file: index, tensor: "a" });
    await put({ weight_map: { a: 3 } });
    await rejectsWith(openShardedSafetensors(dir), "invalid_index", { file: index, tensor: "a" });
    await put({ metadata: {} });
    await rejectsWith(openShardedSafetensors(dir), "invalid_index", { file: index });
    await put("{not json");
    await rejectsWith(openShardedSafetensors(dir), "invalid_index", { file: index });
    await put({ metadata: { total_size: 1 }, weight_map: { a: "part.safetensors" } });
    const ok = await openShardedSafetensors(dir);
    assert.deepEqual([...(await ok.read("a")).data], [1]);
    await rejectsWith(ok.read("b"), "tensor_not_found", { tensor: "b" });
    await ok.close();
    await rejectsWith(ok.read("a"), "closed", { tensor: "a" });

    await rm(index);
    await rejectsWith(openShardedSafetensors(dir), "not_found", { file: dir });
    await rejectsWith(openShardedSafetensors(join(dir, "nope")), "not_found");
  });
});
