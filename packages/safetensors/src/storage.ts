/**
 * The one file-system seam of the libraries. Every library function that takes a path (the model
 * loaders, the PEFT and safetensors writers, the trainer's checkpoints) goes through `storage()`;
 * the libraries themselves import no runtime module. Under Node, Bun and Deno, importing any
 * package's `./node` edge (e.g. `@lowrank/safetensors/node`) registers the real file system; a
 * browser passes bytes or Blobs, or registers `memoryStorage()` (or its own OPFS-backed storage).
 *
 * Errors keep Node's shape: an object with `code` ("ENOENT", "EEXIST", ...) and a message, so
 * callers can tell a missing file from a failed read whatever the storage.
 */

/** Random-access read handle. */
export interface ReadHandle {
  readonly size: number;
  /** Up to `length` bytes at `position` into `into` (from offset 0); resolves to the count read (0 at the end). */
  read(into: Uint8Array, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

/** Sequential write handle ("w" truncates, "wx" fails when the file exists, "a" appends). */
export interface WriteHandle {
  write(bytes: Uint8Array): Promise<void>;
  /** Flush to stable storage (fsync) where the storage has such a thing. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface FileStat {
  size: number;
  isFile: boolean;
  isDirectory: boolean;
}

export interface FileStorage {
  /** "node", "memory", ...: for messages. */
  readonly name: string;
  openRead(path: string): Promise<ReadHandle>;
  openWrite(path: string, mode: "w" | "wx" | "a"): Promise<WriteHandle>;
  readFile(path: string): Promise<Uint8Array>;
  readText(path: string): Promise<string>;
  writeFile(path: string, data: string | Uint8Array): Promise<void>;
  appendFile(path: string, data: string): Promise<void>;
  /** Null when nothing is at `path`. */
  stat(path: string): Promise<FileStat | null>;
  /** Entry names (not paths); throws ENOENT for a missing directory. */
  readdir(path: string): Promise<string[]>;
  /** Creates the directory and its parents; no error when it exists. */
  mkdir(path: string): Promise<void>;
  /** Removes a file or a directory tree; no error when nothing is there. */
  rm(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  copyFile(from: string, to: string): Promise<void>;
  /** Makes a rename in `dir` durable where that means something (best effort). */
  syncDir(dir: string): Promise<void>;
  /** An absolute form of `path` (relative to the working directory where there is one). */
  resolve(path: string): string;
}

let current: FileStorage | null = null;

/** Register the storage every path-taking library function uses (the `./node` edges call this on import). */
export function setStorage(s: FileStorage | null): void {
  current = s;
}

/** The registered storage; a clear error when there is none. */
export function storage(): FileStorage {
  if (current) return current;
  throw new Error(
    "no file storage is registered, so paths cannot be read or written here: under Node, Bun or Deno import a package's " +
      '"./node" edge (e.g. "@lowrank/nn/node"), which registers the file system; in a browser pass bytes or Blobs, or call setStorage(memoryStorage())',
  );
}

/** True when something (file or directory) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  return (await storage().stat(path)) !== null;
}

// ---- paths: POSIX semantics, no runtime module ----

export function joinPath(...parts: string[]): string {
  return normalizePath(parts.filter((p) => p !== "").join("/"));
}

export function normalizePath(p: string): string {
  if (p === "") return ".";
  const abs = p.startsWith("/");
  const out: string[] = [];
  for (const seg of p.split("/")) {
    if (seg === "" || seg === ".") continue;
    if (seg === ".." && out.length && out[out.length - 1] !== "..") out.pop();
    else if (seg !== ".." || !abs) out.push(seg);
  }
  const s = out.join("/");
  return abs ? `/${s}` : s || ".";
}

export function dirname(p: string): string {
  const s = p.replace(/\/+$/, "");
  const i = s.lastIndexOf("/");
  if (i < 0) return ".";
  return i === 0 ? "/" : s.slice(0, i);
}

export function basename(p: string): string {
  const s = p.replace(/\/+$/, "");
  return s.slice(s.lastIndexOf("/") + 1);
}

export function isAbsolutePath(p: string): boolean {
  return p.startsWith("/") || /^[A-Za-z]:[\\/]/.test(p);
}

// ---- in memory ----

function fsError(code: string, op: string, path: string): Error {
  const messages: Record<string, string> = {
    ENOENT: "no such file or directory",
    EEXIST: "file already exists",
    EISDIR: "is a directory",
    ENOTDIR: "not a directory",
  };
  return Object.assign(new Error(`${code}: ${messages[code] ?? code}, ${op} '${path}'`), { code, path });
}

/**
 * A whole file system in memory (tests, the browser). Paths are POSIX; relative ones are taken
 * from "/". `mount(path, blob)` adds a read-only file backed by a Blob (a picked or fetched model
 * file) without copying it: reads slice the Blob.
 */
export function memoryStorage(): FileStorage & { files: Map<string, Uint8Array>; mount(path: string, blob: Blob): Promise<void> } {
  const files = new Map<string, Uint8Array>();
  const blobs = new Map<string, Blob>();
  const dirs = new Set<string>(["/"]);
  const abs = (p: string) => normalizePath(p.startsWith("/") ? p : `/${p}`);
  const needParent = (p: string, op: string) => {
    if (!dirs.has(dirname(p))) throw fsError("ENOENT", op, p);
  };
  const enc = new TextEncoder();
  const put = (path: string, bytes: Uint8Array, op: string) => {
    const p = abs(path);
    needParent(p, op);
    if (dirs.has(p)) throw fsError("EISDIR", op, path);
    files.set(p, bytes);
    blobs.delete(p);
  };
  const get = (path: string, op: string): Uint8Array => {
    const b = files.get(abs(path));
    if (!b) throw fsError(dirs.has(abs(path)) ? "EISDIR" : "ENOENT", op, path);
    return b;
  };
  const under = (p: string) => (k: string) => k === p || k.startsWith(p === "/" ? "/" : `${p}/`);
  const concat = (a: Uint8Array, b: Uint8Array) => {
    const out = new Uint8Array(a.byteLength + b.byteLength);
    out.set(a);
    out.set(b, a.byteLength);
    return out;
  };
  const mkdir = async (path: string) => {
    let p = abs(path);
    const chain: string[] = [];
    while (!dirs.has(p)) {
      if (files.has(p)) throw fsError("EEXIST", "mkdir", path);
      chain.push(p);
      p = dirname(p);
    }
    for (const d of chain) dirs.add(d);
  };
  const readFile = async (path: string) => {
    const blob = blobs.get(abs(path));
    return blob ? new Uint8Array(await blob.arrayBuffer()) : get(path, "open").slice();
  };
  // Methods never use `this`: callers destructure them (const { mkdir } = storage()).
  return {
    name: "memory",
    files,
    async mount(path, blob) {
      const p = abs(path);
      await mkdir(dirname(p));
      files.set(p, new Uint8Array(0));
      blobs.set(p, blob);
    },
    async openRead(path) {
      const blob = blobs.get(abs(path));
      if (blob) {
        return {
          size: blob.size,
          async read(into, length, position) {
            const got = new Uint8Array(await blob.slice(position, position + length).arrayBuffer());
            into.set(got);
            return got.byteLength;
          },
          async close() {},
        };
      }
      const b = get(path, "open");
      return {
        size: b.byteLength,
        async read(into, length, position) {
          const n = Math.max(0, Math.min(length, b.byteLength - position));
          into.set(b.subarray(position, position + n));
          return n;
        },
        async close() {},
      };
    },
    async openWrite(path, mode) {
      const p = abs(path);
      if (mode === "wx" && files.has(p)) throw fsError("EEXIST", "open", path);
      put(p, mode === "a" ? files.get(p) ?? new Uint8Array(0) : new Uint8Array(0), "open");
      return {
        async write(bytes) {
          files.set(p, concat(files.get(p) ?? new Uint8Array(0), bytes.slice()));
        },
        async sync() {},
        async close() {},
      };
    },
    readFile,
    async readText(path) {
      const blob = blobs.get(abs(path));
      return blob ? blob.text() : new TextDecoder().decode(get(path, "open"));
    },
    async writeFile(path, data) {
      put(path, typeof data === "string" ? enc.encode(data) : data.slice(), "open");
    },
    async appendFile(path, data) {
      const p = abs(path);
      put(p, concat(files.get(p) ?? new Uint8Array(0), enc.encode(data)), "open");
    },
    async stat(path) {
      const p = abs(path);
      const f = files.get(p);
      if (f) return { size: blobs.get(p)?.size ?? f.byteLength, isFile: true, isDirectory: false };
      return dirs.has(p) ? { size: 0, isFile: false, isDirectory: true } : null;
    },
    async readdir(path) {
      const p = abs(path);
      if (!dirs.has(p)) throw fsError(files.has(p) ? "ENOTDIR" : "ENOENT", "scandir", path);
      const names = new Set<string>();
      for (const k of [...files.keys(), ...dirs]) if (k !== p && dirname(k) === p) names.add(basename(k));
      return [...names].sort();
    },
    mkdir,
    async rm(path) {
      const p = abs(path);
      for (const k of [...files.keys()]) if (under(p)(k)) [files.delete(k), blobs.delete(k)];
      for (const d of [...dirs]) if (d !== "/" && under(p)(d)) dirs.delete(d);
    },
    async rename(from, to) {
      const [a, b] = [abs(from), abs(to)];
      needParent(b, "rename");
      if (files.has(a)) {
        files.set(b, files.get(a)!);
        files.delete(a);
        if (blobs.has(a)) [blobs.set(b, blobs.get(a)!), blobs.delete(a)];
        return;
      }
      if (!dirs.has(a)) throw fsError("ENOENT", "rename", from);
      if (dirs.has(b) && [...files.keys(), ...dirs].some((k) => k !== b && under(b)(k)))
        throw Object.assign(fsError("ENOTEMPTY", "rename", to), { code: "ENOTEMPTY" });
      for (const k of [...files.keys()])
        if (under(a)(k)) {
          files.set(b + k.slice(a.length), files.get(k)!);
          files.delete(k);
        }
      for (const d of [...dirs])
        if (under(a)(d)) {
          dirs.delete(d);
          dirs.add(b + d.slice(a.length));
        }
    },
    async copyFile(from, to) {
      put(to, await readFile(from), "copyfile");
    },
    async syncDir() {},
    resolve: abs,
  };
}
