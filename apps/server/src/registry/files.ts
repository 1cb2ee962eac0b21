/** File hashing and sizes for registry metadata. */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Db } from "../storage/db.ts";

export interface FileInfo {
  name: string;
  size: number;
  sha256: string;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** name, size and sha256 of each regular file directly in `dir`, sorted by name. */
export async function describeFiles(dir: string): Promise<FileInfo[]> {
  const out: FileInfo[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const p = join(dir, name);
    const s = await stat(p);
    if (s.isFile()) out.push({ name, size: s.size, sha256: await sha256File(p) });
  }
  return out;
}

/**
 * The identity of a base model's weights: sha256 over the sorted (name, sha256) pairs of its
 * *.safetensors files. Hashing a multi-GB model takes seconds, so the result is cached in the
 * meta table under the file sizes and mtimes.
 */
export async function weightsHash(modelDir: string, db?: Db): Promise<string> {
  const names = (await readdir(modelDir)).filter((n) => n.endsWith(".safetensors")).sort();
  if (!names.length) throw new Error(`${modelDir}: no *.safetensors files`);
  const stats = await Promise.all(names.map((n) => stat(join(modelDir, n))));
  const key = `weights:${modelDir}:${names.map((n, i) => `${n}/${stats[i].size}/${stats[i].mtimeMs}`).join(",")}`;
  const cached = db?.get<{ value: string }>("SELECT value FROM meta WHERE key = ?", key);
  if (cached) return cached.value;
  const h = createHash("sha256");
  for (const n of names) h.update(`${n}\0${await sha256File(join(modelDir, n))}\n`);
  const value = `sha256:${h.digest("hex")}`;
  db?.run("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", key, value);
  return value;
}
