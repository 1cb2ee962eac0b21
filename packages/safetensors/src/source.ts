import { SafetensorsError, asIoError } from "./errors.ts";
import { type ReadHandle, storage } from "./storage.ts";

/** Random-access bytes: a file on disk, a Blob, or memory. */
export interface ByteSource {
  /** Names the source in error messages. */
  readonly label: string;
  readonly size: number;
  /** Exactly `length` bytes at `offset`; the caller guarantees offset + length <= size. */
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** What {@link openSafetensors} accepts. */
export type SafetensorsSource = string | URL | Blob | ArrayBuffer | ArrayBufferView;

export function isBlobLike(v: unknown): v is Blob {
  if (typeof Blob !== "undefined" && v instanceof Blob) return true;
  // Duck-typed so Blob polyfills and cross-realm Blobs work too.
  const b = v as Partial<Blob> | null;
  return typeof b === "object" && b !== null && typeof b.slice === "function" && typeof b.arrayBuffer === "function" && typeof b.size === "number";
}

/** Short read check shared by all sources: never hand back fewer bytes than promised. */
function checkLength(got: number, want: number, label: string, offset: number): void {
  if (got !== want) {
    throw new SafetensorsError(
      "truncated",
      label,
      undefined,
      `read ${got} of ${want} bytes at offset ${offset}; the file is shorter than expected (changed while open?)`,
    );
  }
}

export function bytesSource(data: ArrayBuffer | ArrayBufferView, label: string): ByteSource {
  const bytes = ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
  return {
    label,
    size: bytes.byteLength,
    // A view, not a copy: reading from memory should not double memory use.
    read: async (offset, length) => bytes.subarray(offset, offset + length),
    close: async () => {},
  };
}

export function blobSource(blob: Blob, label: string): ByteSource {
  return {
    label,
    size: blob.size,
    async read(offset, length) {
      let buf: ArrayBuffer;
      try {
        buf = await blob.slice(offset, offset + length).arrayBuffer();
      } catch (err) {
        throw asIoError(err, label, undefined, `reading ${length} bytes at offset ${offset} failed`);
      }
      checkLength(buf.byteLength, length, label, offset);
      return new Uint8Array(buf);
    },
    close: async () => {},
  };
}

/** Opens a file through the registered storage (see storage.ts: the `./node` edge registers Node's). */
export async function fileSource(path: string | URL, label: string): Promise<ByteSource> {
  let handle: ReadHandle;
  try {
    handle = await storage().openRead(typeof path === "string" ? path : decodeURIComponent(path.pathname));
  } catch (err) {
    throw asIoError(err, label, undefined, "cannot open");
  }
  const size = handle.size;
  let closed = false;
  return {
    label,
    size,
    async read(offset, length) {
      const out = new Uint8Array(length);
      let done = 0;
      try {
        // Positioned reads may return fewer bytes than asked; loop until filled or EOF.
        while (done < length) {
          const bytesRead = await handle.read(out.subarray(done), length - done, offset + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
      } catch (err) {
        throw asIoError(err, label, undefined, `reading ${length} bytes at offset ${offset} failed`);
      }
      checkLength(done, length, label, offset);
      return out;
    },
    async close() {
      if (closed) return;
      closed = true;
      await handle.close();
    },
  };
}

/** Picks the source kind for an input and a label for messages. */
export async function openSource(input: SafetensorsSource, label?: string): Promise<ByteSource> {
  if (typeof input === "string" || input instanceof URL) {
    const name = label ?? (typeof input === "string" ? input : decodeURIComponent(input.pathname));
    return fileSource(input, name);
  }
  if (isBlobLike(input)) {
    const fileName = (input as Partial<File>).name;
    return blobSource(input, label ?? (typeof fileName === "string" && fileName !== "" ? fileName : "<blob>"));
  }
  if (input instanceof ArrayBuffer || ArrayBuffer.isView(input) || isSharedArrayBuffer(input)) {
    return bytesSource(input, label ?? "<bytes>");
  }
  throw new TypeError("openSafetensors: expected a path, URL, Blob, ArrayBuffer or ArrayBufferView");
}

function isSharedArrayBuffer(v: unknown): v is ArrayBuffer {
  return typeof SharedArrayBuffer !== "undefined" && v instanceof SharedArrayBuffer;
}
