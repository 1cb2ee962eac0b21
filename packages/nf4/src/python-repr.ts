// Python's float repr and json.dumps formatting, needed to reproduce the quant-state JSON
// bytes bitsandbytes writes (`json.dumps(dict)` with default separators).

/**
 * Python `repr(float)`: the shortest digits that round-trip (JS finds the same digits),
 * in scientific notation when the decimal exponent is < -4 or >= 16, otherwise positional
 * with at least one fractional digit ("1.0"). Exponents have a sign and >= 2 digits.
 */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  // toExponential() without an argument gives the shortest round-trip digits.
  const [mant, expStr] = Math.abs(x).toExponential().split("e");
  const digits = mant.replace(".", "");
  const exp = Number(expStr);
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp).toString().padStart(2, "0");
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${e}`;
  }
  const point = exp + 1; // digits before the decimal point
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${"0".repeat(point - digits.length)}.0`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** A value json.dumps can write; `float` marks numbers that Python holds as floats. */
export type PyJson = null | boolean | string | number | { float: number } | PyJson[] | { [key: string]: PyJson };

function isFloatBox(v: unknown): v is { float: number } {
  return typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 1 && typeof (v as { float?: unknown }).float === "number";
}

/**
 * `json.dumps(value)` with Python's defaults: separators ", " and ": ", ensure_ascii,
 * insertion key order. Plain JS numbers must be integers (Python ints); wrap floats as
 * `{ float: x }` so they get the float repr ("6.0", "1e-05").
 */
export function pythonJsonDumps(value: PyJson): string {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "string") return pythonJsonString(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new RangeError(`pythonJsonDumps: ${value} is not an integer; wrap floats as {float: x}`);
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(", ")}]`;
  if (isFloatBox(value)) {
    const x = value.float;
    // json.dumps writes non-finite floats as JavaScript literals (allow_nan=True).
    if (Number.isNaN(x)) return "NaN";
    if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
    return pythonFloatRepr(x);
  }
  const parts = Object.entries(value).map(([k, v]) => `${pythonJsonString(k)}: ${pythonJsonDumps(v)}`);
  return `{${parts.join(", ")}}`;
}

/** A JSON string literal escaped like json.dumps with ensure_ascii=True. */
function pythonJsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i];
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}
