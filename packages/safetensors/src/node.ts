/**
 * `@lowrank/safetensors/node`: the Node file system as the libraries' storage (also Bun and Deno,
 * through their Node compatibility). Importing this module registers it (see storage.ts); it also
 * re-exports the whole package, so `import { openSafetensors } from "@lowrank/safetensors/node"`
 * opens paths. This is the only file of the package that imports a runtime module.
 */
import * as fs from "node:fs/promises";
import { resolve } from "node:path";
import { type FileStorage, setStorage } from "./storage.ts";

export * from "./index.ts";

export const nodeStorage: FileStorage = {
  name: "node",
  async openRead(path) {
    const h = await fs.open(path, "r");
    let size: number;
    try {
      size = (await h.stat()).size;
    } catch (e) {
      await h.close().catch(() => {});
      throw e;
    }
    return {
      size,
      read: async (into, length, position) => (await h.read(into, 0, length, position)).bytesRead,
      close: () => h.close(),
    };
  },
  async openWrite(path, mode) {
    const h = await fs.open(path, mode);
    return {
      async write(bytes) {
        let done = 0;
        while (done < bytes.byteLength) done += (await h.write(bytes, done, bytes.byteLength - done)).bytesWritten;
      },
      sync: () => h.sync(),
      close: () => h.close(),
    };
  },
  readFile: async (path) => new Uint8Array(await fs.readFile(path)),
  readText: (path) => fs.readFile(path, "utf8"),
  writeFile: (path, data) => fs.writeFile(path, data),
  appendFile: (path, data) => fs.appendFile(path, data),
  async stat(path) {
    const s = await fs.stat(path).catch((e: { code?: string }) => {
      if (e.code === "ENOENT" || e.code === "ENOTDIR") return null;
      throw e;
    });
    return s && { size: s.size, isFile: s.isFile(), isDirectory: s.isDirectory() };
  },
  readdir: (path) => fs.readdir(path),
  mkdir: async (path) => void (await fs.mkdir(path, { recursive: true })),
  rm: (path) => fs.rm(path, { recursive: true, force: true }),
  rename: (from, to) => fs.rename(from, to),
  copyFile: (from, to) => fs.copyFile(from, to),
  async syncDir(dir) {
    try {
      const d = await fs.open(dir, "r");
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    } catch {
      // Durability of the directory entry is a bonus (not supported everywhere: Windows, some runtimes).
    }
  },
  resolve: (path) => resolve(path),
};

setStorage(nodeStorage);
