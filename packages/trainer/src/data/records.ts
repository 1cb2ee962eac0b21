/**
 * Reading dataset files into records, with errors that name the file, the line and the field.
 * JSON arrays are scanned for the start of each element so a bad record still gets its line.
 */

/** A dataset problem found before training: which file, which line (1-based), which field. */
export class DatasetError extends Error {
  override readonly name = "DatasetError";
  constructor(readonly file: string, readonly line: number | null, readonly field: string | null, readonly problem: string) {
    super(`${file}${line === null ? "" : `:${line}`}${field === null ? "" : `: field "${field}"`}: ${problem}`);
  }
}

/** One JSON record and the line it starts on. */
export interface JsonRecord {
  line: number;
  value: unknown;
}

/** JSONL (one object per line; blank lines skipped) or a JSON array of objects. */
export function parseJsonRecords(text: string, file: string): JsonRecord[] {
  const start = text.search(/\S/);
  if (start < 0) throw new DatasetError(file, null, null, "the file is empty");
  if (text[start] === "[") return parseJsonArray(text, file, start);
  const out: JsonRecord[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i].trim();
    if (!l) continue;
    try {
      out.push({ line: i + 1, value: JSON.parse(l) });
    } catch (e) {
      throw new DatasetError(file, i + 1, null, `not valid JSON (${(e as Error).message})`);
    }
  }
  return out;
}

/** Top-level elements of a JSON array, each parsed on its own so errors keep their line. */
function parseJsonArray(text: string, file: string, open: number): JsonRecord[] {
  const out: JsonRecord[] = [];
  let line = 1;
  for (let i = 0; i < open; i++) if (text.charCodeAt(i) === 10) line++;
  let depth = 0;
  let inString = false;
  let elemStart = -1;
  let elemLine = line;
  const finish = (end: number) => {
    const src = text.slice(elemStart, end).trim();
    if (!src) throw new DatasetError(file, elemLine, null, "empty array element");
    try {
      out.push({ line: elemLine, value: JSON.parse(src) });
    } catch (e) {
      throw new DatasetError(file, elemLine, null, `not valid JSON (${(e as Error).message})`);
    }
    elemStart = -1;
  };
  for (let i = open + 1; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") line++;
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (elemStart < 0 && depth === 0 && /\S/.test(c) && c !== "]" && c !== ",") {
      elemStart = i;
      elemLine = line;
    }
    if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") {
      if (depth === 0) {
        if (c !== "]") throw new DatasetError(file, line, null, "unbalanced '}' in the JSON array");
        if (elemStart >= 0) finish(i);
        if (text.slice(i + 1).trim()) throw new DatasetError(file, line, null, "text after the closing ']' of the JSON array");
        return out;
      }
      depth--;
    } else if (c === "," && depth === 0) {
      if (elemStart < 0) throw new DatasetError(file, line, null, "empty array element");
      finish(i);
    }
  }
  throw new DatasetError(file, line, null, "the JSON array is not closed (truncated file?)");
}

/** A string field of a record, or a DatasetError naming it. */
export function stringField(rec: JsonRecord, field: string, file: string, opts: { optional?: boolean; nonEmpty?: boolean } = {}): string {
  const obj = asObject(rec, file);
  const v = obj[field];
  if (v === undefined || v === null) {
    if (opts.optional) return "";
    throw new DatasetError(file, rec.line, field, `missing (record keys: ${Object.keys(obj).join(", ") || "none"})`);
  }
  if (typeof v !== "string") throw new DatasetError(file, rec.line, field, `must be a string, got ${describe(v)}`);
  if (opts.nonEmpty && !v.trim()) throw new DatasetError(file, rec.line, field, "is empty");
  return v;
}

export function asObject(rec: JsonRecord, file: string): Record<string, unknown> {
  const v = rec.value;
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new DatasetError(file, rec.line, null, `expected a JSON object, got ${describe(v)}`);
  return v as Record<string, unknown>;
}

export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  return `${typeof v} ${JSON.stringify(v).slice(0, 40)}`;
}
