/**
 * Hand validation of JSON bodies. Each check names the field it rejects (a JSON path such as
 * "messages[2].content"), so clients get {error: {message, field, type}} that points at the fix.
 */
import { invalid } from "../errors.ts";

export type Obj = Record<string, unknown>;

/** Deepest nesting of objects and arrays a JSON input may have (a 5,000-deep value is a 400, not a 500). */
export const MAX_JSON_DEPTH = 32;

export function parseJson(text: string, field: string | null = null): unknown {
  if (!text.trim()) throw invalid(field ? `${field} is empty; send a JSON value` : "the request body is empty; send a JSON object", field);
  checkJsonDepth(text, field);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw invalid(`${field ? `${field} is ` : ""}malformed JSON: ${(e as Error).message}`, field);
  }
}

/**
 * Refuse JSON text nested deeper than MAX_JSON_DEPTH before parsing it (one pass, no recursion),
 * naming the outermost field that holds the deep value.
 */
export function checkJsonDepth(text: string, field: string | null = null, max = MAX_JSON_DEPTH): void {
  let depth = 0;
  let inString = false;
  let key = "";
  let lastString = "";
  let stringStart = 0;
  let topKey: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (inString) {
      if (ch === 92) i++; // backslash: skip the escaped character
      else if (ch === 34) {
        inString = false;
        if (depth === 1) lastString = text.slice(stringStart, i);
      }
      continue;
    }
    if (ch === 34) {
      inString = true;
      stringStart = i + 1;
    } else if (ch === 58 && depth === 1) key = lastString; // ':' after a top-level key
    else if (ch === 123 || ch === 91) {
      if (depth === 1) topKey = key;
      if (++depth > max) {
        const where = topKey && depth > 2 ? (field ? `${field}.${topKey}` : topKey) : field;
        throw invalid(`${where ?? "the request body"} is nested more than ${max} levels deep; the limit is ${max}`, where);
      }
    } else if (ch === 125 || ch === 93) depth--;
  }
}

export function asObject(v: unknown, field: string | null = null): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw invalid(`${field ?? "the request body"} must be a JSON object, got ${typeName(v)}`, field);
  }
  return v as Obj;
}

export function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

const path = (prefix: string, key: string) => (prefix ? `${prefix}.${key}` : key);

/** Fail on keys outside `allowed` (our own endpoints: a typo should not silently do nothing). */
export function rejectUnknown(o: Obj, allowed: readonly string[], prefix = ""): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw invalid(`unknown field ${path(prefix, k)} (known: ${allowed.join(", ")})`, path(prefix, k));
  }
}

export function str(o: Obj, key: string, opts: { required: true; max?: number; prefix?: string; pattern?: RegExp }): string;
export function str(o: Obj, key: string, opts?: { required?: false; max?: number; prefix?: string; pattern?: RegExp }): string | undefined;
export function str(o: Obj, key: string, opts: { required?: boolean; max?: number; prefix?: string; pattern?: RegExp } = {}): string | undefined {
  const f = path(opts.prefix ?? "", key);
  const v = o[key];
  if (v === undefined || v === null) {
    if (opts.required) throw invalid(`${f} is required`, f);
    return undefined;
  }
  if (typeof v !== "string") throw invalid(`${f} must be a string, got ${typeName(v)}`, f);
  if (opts.max !== undefined && v.length > opts.max) throw invalid(`${f} is ${v.length} characters; the limit is ${opts.max}`, f);
  if (opts.pattern && !opts.pattern.test(v)) throw invalid(`${f} has an invalid format`, f);
  return v;
}

export function num(o: Obj, key: string, opts: { def: number; min?: number; max?: number; integer?: boolean; prefix?: string }): number;
export function num(o: Obj, key: string, opts: { def?: undefined; min?: number; max?: number; integer?: boolean; prefix?: string }): number | undefined;
export function num(o: Obj, key: string, opts: { def?: number; min?: number; max?: number; integer?: boolean; prefix?: string }): number | undefined {
  const f = path(opts.prefix ?? "", key);
  const v = o[key];
  if (v === undefined || v === null) return opts.def;
  if (typeof v !== "number" || !Number.isFinite(v)) throw invalid(`${f} must be a number, got ${typeName(v)}`, f);
  if (opts.integer && !Number.isInteger(v)) throw invalid(`${f} must be an integer, got ${v}`, f);
  if (opts.min !== undefined && v < opts.min) throw invalid(`${f} must be >= ${opts.min}, got ${v}`, f);
  if (opts.max !== undefined && v > opts.max) throw invalid(`${f} must be <= ${opts.max}, got ${v}`, f);
  return v;
}

export function int(o: Obj, key: string, opts: { def: number; min?: number; max?: number; prefix?: string }): number;
export function int(o: Obj, key: string, opts: { def?: undefined; min?: number; max?: number; prefix?: string }): number | undefined;
export function int(o: Obj, key: string, opts: { def?: number; min?: number; max?: number; prefix?: string }): number | undefined {
  return num(o, key, { ...opts, integer: true } as { def: number });
}

export function bool(o: Obj, key: string, def: boolean, prefix = ""): boolean {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== "boolean") throw invalid(`${path(prefix, key)} must be true or false, got ${typeName(v)}`, path(prefix, key));
  return v;
}

export function oneOf<T extends string>(o: Obj, key: string, values: readonly T[], def: T, prefix = ""): T {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== "string" || !values.includes(v as T))
    throw invalid(`${path(prefix, key)} must be one of ${values.map((x) => JSON.stringify(x)).join(", ")}`, path(prefix, key));
  return v as T;
}

/** A string or an array of strings (OpenAI's `stop`), as a list. */
export function stringList(o: Obj, key: string, opts: { maxItems: number; maxLength: number; prefix?: string }): string[] {
  const f = path(opts.prefix ?? "", key);
  const v = o[key];
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list)) throw invalid(`${f} must be a string or an array of strings, got ${typeName(v)}`, f);
  if (list.length > opts.maxItems) throw invalid(`${f} has ${list.length} entries; the limit is ${opts.maxItems}`, f);
  list.forEach((s, i) => {
    if (typeof s !== "string") throw invalid(`${f}[${i}] must be a string, got ${typeName(s)}`, `${f}[${i}]`);
    if (!s.length || s.length > opts.maxLength) throw invalid(`${f}[${i}] must be 1-${opts.maxLength} characters`, `${f}[${i}]`);
  });
  return list as string[];
}
