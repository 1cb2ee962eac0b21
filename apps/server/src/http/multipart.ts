/**
 * A streaming multipart/form-data reader: file parts go straight to disk as they arrive, text
 * fields are kept (each up to a cap), and nothing holds more than one network chunk plus the
 * boundary in memory. Hono's parseBody buffers the whole body, which made a 1 GiB adapter upload
 * cost several times its size; this one costs a few hundred KiB whatever the size.
 */
import { createWriteStream, type WriteStream } from "node:fs";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import { invalid, tooLarge } from "../errors.ts";

export interface UploadedFile {
  /** Where the part was written (inside the caller's directory). */
  path: string;
  size: number;
  /** The client's file name (only ever used for its extension). */
  filename: string;
}

export interface MultipartForm {
  fields: Record<string, string>;
  files: Record<string, UploadedFile>;
}

export interface MultipartOptions {
  /** Directory the file parts are written to, one file per field (named after the field). */
  dir: string;
  /** Field names accepted; anything else is a 400 naming it. */
  allowed: readonly string[];
  /** Fields that must be files (the rest must be text). */
  fileFields: readonly string[];
  /** Whole body (default: no limit beyond the route's). */
  maxBytes: number;
  /** Each text field (default 64 KiB). */
  maxFieldBytes?: number;
}

const CRLF = Buffer.from("\r\n");
const HEADER_END = Buffer.from("\r\n\r\n");

/** The boundary of a multipart/form-data content type, or null. */
export function boundaryOf(contentType: string): string | null {
  if (!/^multipart\/form-data\b/i.test(contentType)) return null;
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))/i.exec(contentType);
  return m ? m[1] ?? m[2] : null;
}

/** Read the body, writing file parts under `o.dir`. Throws ApiErrors (400/413) naming the field. */
export async function readMultipart(body: ReadableStream<Uint8Array> | null, contentType: string, o: MultipartOptions): Promise<MultipartForm> {
  const boundary = boundaryOf(contentType);
  if (!boundary) throw invalid("the multipart body has no boundary in its content-type");
  if (!body) throw invalid("the request body is empty");
  const maxField = o.maxFieldBytes ?? 64 * 1024;
  const delim = Buffer.from(`\r\n--${boundary}`);
  const form: MultipartForm = { fields: {}, files: {} };
  // The body starts with "--boundary" (no CRLF before it): prepend one so every delimiter looks alike.
  let buf: Buffer = Buffer.from(CRLF);
  let total = 0;
  let state: "preamble" | "headers" | "body" | "done" = "preamble";
  let part: { name: string; file: WriteStream | null; text: Buffer[]; size: number } | null = null;

  const write = async (chunk: Buffer) => {
    if (!part || !chunk.length) return;
    part.size += chunk.length;
    if (part.file) {
      if (!part.file.write(chunk))
        await new Promise<void>((r, j) => {
          part!.file!.once("drain", r);
          part!.file!.once("error", j);
        });
    } else {
      if (part.size > maxField) throw invalid(`${part.name} is longer than ${maxField} bytes`, part.name);
      part.text.push(chunk);
    }
  };
  const endPart = async () => {
    if (!part) return;
    const p = part;
    part = null;
    if (p.file) {
      const f = p.file;
      await new Promise<void>((r, j) => f.end((e?: Error | null) => (e ? j(e) : r())));
      form.files[p.name].size = p.size;
    } else form.fields[p.name] = Buffer.concat(p.text).toString("utf8");
  };
  const startPart = (headers: string) => {
    const disp = /^content-disposition:\s*form-data\s*;(.*)$/im.exec(headers);
    if (!disp) throw invalid("a multipart part has no content-disposition: form-data header");
    const name = /\bname="([^"]*)"/i.exec(disp[1])?.[1] ?? /\bname=([^;\s]+)/i.exec(disp[1])?.[1];
    if (!name) throw invalid("a multipart part has no name");
    if (!o.allowed.includes(name)) throw invalid(`unknown form field ${name} (known: ${o.allowed.join(", ")})`, name);
    if (name in form.fields || name in form.files) throw invalid(`form field ${name} is given twice`, name);
    const filename = /\bfilename="([^"]*)"/i.exec(disp[1])?.[1];
    const isFile = filename !== undefined;
    if (o.fileFields.includes(name) && !isFile) throw invalid(`${name} must be a file field (curl -F '${name}=@path/to/file')`, name);
    if (!o.fileFields.includes(name) && isFile) throw invalid(`${name} must be a text field, not a file`, name);
    let file: WriteStream | null = null;
    if (isFile) {
      const path = join(o.dir, name.replace(/[^\w.-]/g, "_"));
      file = createWriteStream(path);
      file.on("error", () => {});
      form.files[name] = { path, size: 0, filename };
    }
    part = { name, file, text: [], size: 0 };
  };

  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > o.maxBytes) throw tooLarge(`the request body is larger than ${o.maxBytes} bytes`);
      buf = buf.length ? Buffer.concat([buf, value]) : Buffer.from(value);
      // Consume as much of the buffer as can be decided now.
      for (;;) {
        if (state === "done") {
          buf = Buffer.alloc(0);
          break;
        }
        if (state === "headers") {
          const end = buf.indexOf(HEADER_END);
          if (end < 0) {
            if (buf.length > 16 * 1024) throw invalid("a multipart part's headers are longer than 16 KiB");
            break;
          }
          startPart(buf.subarray(0, end).toString("utf8"));
          buf = buf.subarray(end + HEADER_END.length);
          state = "body";
          continue;
        }
        const at = buf.indexOf(delim);
        if (at < 0) {
          // Keep what could be the start of a delimiter; the rest belongs to the current part.
          const keep = Math.min(buf.length, delim.length + 4);
          if (state === "body") await write(buf.subarray(0, buf.length - keep));
          buf = Buffer.from(buf.subarray(buf.length - keep));
          break;
        }
        if (state === "body") {
          await write(buf.subarray(0, at));
          await endPart();
        }
        const after = buf.subarray(at + delim.length);
        if (after.length < 2) {
          buf = Buffer.from(buf.subarray(at));
          break;
        }
        if (after[0] === 0x2d && after[1] === 0x2d) {
          state = "done";
          continue;
        }
        const nl = after.indexOf(CRLF);
        if (nl < 0) {
          buf = Buffer.from(buf.subarray(at));
          break;
        }
        buf = Buffer.from(after.subarray(nl + CRLF.length));
        state = "headers";
      }
    }
    if (state !== "done") throw invalid("malformed multipart body: it ends before its closing boundary");
    return form;
  } catch (e) {
    const p = part as { file: WriteStream | null } | null;
    p?.file?.destroy();
    await reader.cancel().catch(() => {});
    throw e;
  }
}
