/** The storage seam: memoryStorage behaves like the file system where the libraries rely on it, and paths. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { basename, dirname, joinPath, memoryStorage, nodeStorage, openSafetensors, setStorage, storage, writeSafetensors } from "../src/node.ts";

test("memoryStorage: files, directories, rename of a tree, rm, Node-style error codes", async () => {
  const m = memoryStorage();
  await assert.rejects(m.writeFile("/a/b.txt", "x"), (e: { code?: string }) => e.code === "ENOENT");
  await m.mkdir("/a/b");
  await m.writeFile("/a/b/c.txt", "hello");
  await m.appendFile("/a/b/c.txt", " world");
  assert.equal(await m.readText("/a/b/c.txt"), "hello world");
  assert.deepEqual(await m.stat("/a/b/c.txt"), { size: 11, isFile: true, isDirectory: false });
  assert.equal((await m.stat("/a/b"))?.isDirectory, true);
  assert.equal(await m.stat("/nope"), null);
  assert.deepEqual(await m.readdir("/a"), ["b"]);
  await assert.rejects(m.readdir("/nope"), (e: { code?: string }) => e.code === "ENOENT");
  const w = await m.openWrite("/a/new.bin", "wx");
  await w.write(new Uint8Array([1, 2]));
  await w.write(new Uint8Array([3]));
  await w.close();
  await assert.rejects(m.openWrite("/a/new.bin", "wx"), (e: { code?: string }) => e.code === "EEXIST");
  const r = await m.openRead("/a/new.bin");
  const buf = new Uint8Array(2);
  assert.equal(await r.read(buf, 2, 1), 2);
  assert.deepEqual([...buf], [2, 3]);
  await m.rename("/a/b", "/a/renamed");
  assert.equal(await m.readText("/a/renamed/c.txt"), "hello world");
  assert.equal(await m.stat("/a/b"), null);
  await m.copyFile("/a/renamed/c.txt", "/a/copy.txt");
  await m.rm("/a/renamed");
  assert.deepEqual(await m.readdir("/a"), ["copy.txt", "new.bin"]);
  await m.mount("/blobs/x.txt", new Blob(["from a blob"]));
  assert.equal(await m.readText("/blobs/x.txt"), "from a blob");
  assert.equal((await m.stat("/blobs/x.txt"))?.size, 11);
});

test("safetensors written and read through a memoryStorage; without a storage, a path is a clear error", async () => {
  const m = memoryStorage();
  setStorage(m);
  try {
    await m.mkdir("/w");
    await writeSafetensors("/w/t.safetensors", { a: { dtype: "F32", shape: [2], data: new Float32Array([1.5, -2]) } });
    assert.deepEqual(await m.readdir("/w"), ["t.safetensors"], "no temporary file left");
    const f = await openSafetensors("/w/t.safetensors");
    assert.deepEqual(Array.from(new Float32Array((await f.read("a")).data.slice().buffer)), [1.5, -2]);
    await f.close();
    setStorage(null);
    assert.throws(() => storage(), /no file storage is registered.*"\.\/node" edge/);
  } finally {
    setStorage(nodeStorage);
  }
});

test("paths are POSIX and need no runtime module", () => {
  assert.equal(joinPath("/a", "b/", "../c", "d.txt"), "/a/c/d.txt");
  assert.equal(joinPath("rel", "x"), "rel/x");
  assert.equal(dirname("/a/b/c.txt"), "/a/b");
  assert.equal(dirname("c.txt"), ".");
  assert.equal(basename("/a/b/c.txt"), "c.txt");
});
