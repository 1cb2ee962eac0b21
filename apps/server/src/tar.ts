/**
 * A small streaming ustar (POSIX.1-1988) writer, enough to ship a directory of files: regular
 * files and directories, names up to 255 bytes (prefix + name split), sizes beyond 8 GiB in the
 * GNU base-256 form that GNU tar, bsdtar and Python's tarfile all read.
 */
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";

const BLOCK = 512;
const enc = new TextEncoder();

export interface TarEntry {
  /** Path inside the archive, '/'-separated; a trailing '/' makes a directory. */
  name: string;
  size: number;
  mode?: number;
  mtime?: Date;
  read?: () => AsyncIterable<Uint8Array>;
}

export function bytesEntry(name: string, data: Uint8Array | string, mtime = new Date()): TarEntry {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  return {
    name,
    size: bytes.length,
    mtime,
    read: async function* () {
      yield bytes;
    },
  };
}

export async function fileEntry(path: string, name: string): Promise<TarEntry> {
  const s = await stat(path);
  return { name, size: s.size, mtime: s.mtime, mode: 0o644, read: () => createReadStream(path, { highWaterMark: 1 << 20 }) as AsyncIterable<Uint8Array> };
}

/** Every regular file directly in `dir`, under `prefix/` in the archive, sorted by name. */
export async function dirEntries(dir: string, prefix: string): Promise<TarEntry[]> {
  const out: TarEntry[] = [{ name: `${prefix}/`, size: 0, mode: 0o755 }];
  for (const n of (await readdir(dir)).sort()) {
    const p = join(dir, n);
    if ((await stat(p)).isFile()) out.push(await fileEntry(p, `${prefix}/${n}`));
  }
  return out;
}

function writeString(buf: Uint8Array, offset: number, length: number, s: string, field: string): void {
  const b = enc.encode(s);
  if (b.length > length) throw new Error(`tar: ${field} ${JSON.stringify(s)} is longer than ${length} bytes`);
  buf.set(b, offset);
}

function writeOctal(buf: Uint8Array, offset: number, length: number, value: number): void {
  const digits = value.toString(8);
  if (digits.length <= length - 1) {
    writeString(buf, offset, length, `${digits.padStart(length - 1, "0")}\0`, "number");
    return;
  }
  // GNU base-256: high bit of the first byte set, big-endian two's complement in the rest.
  let v = BigInt(value);
  for (let i = length - 1; i > 0; i--) {
    buf[offset + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  buf[offset] = 0x80;
}

/** Split a long path into ustar's prefix (<= 155 bytes) and name (<= 100 bytes) at a '/'. */
function splitName(path: string): [string, string] {
  if (enc.encode(path).length <= 100) return ["", path];
  for (let i = path.indexOf("/"); i >= 0; i = path.indexOf("/", i + 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (enc.encode(prefix).length <= 155 && enc.encode(name).length <= 100 && name.length) return [prefix, name];
  }
  throw new Error(`tar: path ${JSON.stringify(path)} does not fit ustar's 155 + 100 byte name fields`);
}

export function tarHeader(e: TarEntry): Uint8Array {
  const h = new Uint8Array(BLOCK);
  const dir = e.name.endsWith("/");
  const [prefix, name] = splitName(e.name);
  writeString(h, 0, 100, name, "name");
  writeOctal(h, 100, 8, e.mode ?? (dir ? 0o755 : 0o644));
  writeOctal(h, 108, 8, 0);
  writeOctal(h, 116, 8, 0);
  writeOctal(h, 124, 12, dir ? 0 : e.size);
  writeOctal(h, 136, 12, Math.floor((e.mtime ?? new Date()).getTime() / 1000));
  h.fill(0x20, 148, 156); // checksum field counts as spaces
  h[156] = (dir ? "5" : "0").charCodeAt(0);
  writeString(h, 257, 6, "ustar\0", "magic");
  writeString(h, 263, 2, "00", "version");
  writeString(h, 265, 32, "lowrank", "uname");
  writeString(h, 297, 32, "lowrank", "gname");
  writeString(h, 345, 155, prefix, "prefix");
  let sum = 0;
  for (const b of h) sum += b;
  writeString(h, 148, 8, `${sum.toString(8).padStart(6, "0")}\0 `, "checksum");
  return h;
}

/** The archive as chunks: header, data, zero padding to 512 bytes per entry, then two zero blocks. */
export async function* tarChunks(entries: Iterable<TarEntry> | AsyncIterable<TarEntry>): AsyncGenerator<Uint8Array> {
  for await (const e of entries) {
    yield tarHeader(e);
    if (e.name.endsWith("/")) continue;
    let n = 0;
    if (e.read) {
      for await (const chunk of e.read()) {
        n += chunk.length;
        if (n > e.size) throw new Error(`tar: ${e.name} grew while it was being archived`);
        yield chunk;
      }
    }
    if (n !== e.size) throw new Error(`tar: ${e.name} is ${n} bytes, ${e.size} were announced`);
    const pad = (BLOCK - (n % BLOCK)) % BLOCK;
    if (pad) yield new Uint8Array(pad);
  }
  yield new Uint8Array(2 * BLOCK);
}

/** tarChunks as a web stream; `onClose` runs when it ends, fails or the client goes away. */
export function tarStream(entries: TarEntry[], onClose?: () => void | Promise<void>): ReadableStream<Uint8Array> {
  const it = tarChunks(entries);
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await onClose?.();
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done } = await it.next();
        if (done) {
          controller.close();
          await close();
        } else controller.enqueue(value);
      } catch (e) {
        controller.error(e);
        await close();
      }
    },
    async cancel() {
      await it.return(undefined);
      await close();
    },
  });
}

/** The total size of a finished archive, for Content-Length. */
export function tarSize(entries: TarEntry[]): number {
  let n = 2 * BLOCK;
  for (const e of entries) n += BLOCK + (e.name.endsWith("/") ? 0 : Math.ceil(e.size / BLOCK) * BLOCK);
  return n;
}
