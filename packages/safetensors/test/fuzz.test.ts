import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import {
  type ByteSource,
  DTYPES,
  type Dtype,
  SafetensorsError,
  type SafetensorsErrorCode,
  type TensorInput,
  dtypeSize,
  openFromSource,
  openSafetensors,
  serializeSafetensors,
  toTypedArray,
} from "../src/node.ts";
import { STORIES_HF, prng, randomBytes, rawFile } from "./helpers.ts";

const PARSE_CODES = new Set<SafetensorsErrorCode>([
  "truncated",
  "header_too_large",
  "invalid_utf8",
  "invalid_json",
  "invalid_header",
  "unknown_dtype",
  "invalid_shape",
  "invalid_offsets",
  "offsets_out_of_range",
  "size_mismatch",
  "overlap",
  "hole",
  "invalid_metadata",
]);
const LABEL = "fuzz.safetensors";
/** Generous per-case bound: a case normally takes well under a millisecond. */
const CASE_LIMIT_MS = 2000;

/** A source that fails the test on any read outside [0, size). */
function guardedSource(bytes: Uint8Array, violations: string[]): ByteSource {
  return {
    label: LABEL,
    size: bytes.byteLength,
    read: async (offset, length) => {
      if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= bytes.byteLength)) {
        violations.push(`read(${offset}, ${length}) on a ${bytes.byteLength}-byte file`);
      }
      return bytes.slice(offset, offset + length);
    },
    close: async () => {},
  };
}

const stats = { ok: 0, errors: new Map<string, number>() };

/** Opens `bytes`; on success reads every tensor and checks the layout invariants. */
async function probe(bytes: Uint8Array, what: string): Promise<void> {
  const violations: string[] = [];
  const t0 = performance.now();
  try {
    const f = await openFromSource(guardedSource(bytes, violations));
    let pos = f.dataStart;
    for (const name of f.names) {
      const info = f.tensors[name];
      assert.equal(info.byteOffset, pos, `${what}: tensors must tile the buffer`);
      pos += info.byteLength;
      const t = await f.read(name);
      assert.equal(t.data.byteLength, info.byteLength, what);
      assert.equal(toTypedArray(t).byteLength, info.byteLength, what);
    }
    assert.equal(pos, bytes.byteLength, `${what}: tensors must end at the end of the file`);
    stats.ok++;
  } catch (err) {
    if (!(err instanceof SafetensorsError)) {
      throw new Error(`${what}: threw ${String(err)} instead of a SafetensorsError (input ${hex(bytes)})`, { cause: err });
    }
    assert.ok(PARSE_CODES.has(err.code), `${what}: unexpected code ${err.code}`);
    assert.equal(err.file, LABEL);
    assert.ok(err.message.startsWith(`${LABEL}:`), err.message);
    assert.ok(err.message.length < 1000, `${what}: message too long (${err.message.length})`);
    stats.errors.set(err.code, (stats.errors.get(err.code) ?? 0) + 1);
  }
  assert.deepEqual(violations, [], `${what}: read past the end`);
  const ms = performance.now() - t0;
  assert.ok(ms < CASE_LIMIT_MS, `${what}: took ${ms.toFixed(0)} ms`);
}

function hex(bytes: Uint8Array): string {
  const head = Array.from(bytes.subarray(0, 96), (b) => b.toString(16).padStart(2, "0")).join("");
  return bytes.byteLength > 96 ? `${head}... (${bytes.byteLength} bytes)` : head;
}

const pick = <T>(rand: () => number, items: readonly T[]): T => items[Math.floor(rand() * items.length)];
const int = (rand: () => number, lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));

function randomName(rand: () => number): string {
  const alphabet = ["a", "b", ".", "0", "1", "_", "é", "\u00ff", "😀", '"', "\\", " ", "__proto__", "__metadata__", "\n"];
  let s = "";
  const n = int(rand, 0, 6);
  for (let i = 0; i < n; i++) s += pick(rand, alphabet);
  return s;
}

/** A valid file with random tensors (every dtype, 0-d and empty shapes included). */
function randomValidFile(rand: () => number): Uint8Array {
  const tensors = new Map<string, TensorInput>();
  const count = int(rand, 0, 6);
  for (let i = 0; i < count; i++) {
    const dtype: Dtype = pick(rand, DTYPES);
    const shape = Array.from({ length: int(rand, 0, 3) }, () => int(rand, 0, 4));
    const numel = shape.reduce((a, b) => a * b, 1);
    const name = randomName(rand);
    if (name === "__metadata__" || /[\uD800-\uDFFF]/u.test(name)) continue;
    tensors.set(name, { dtype, shape, data: randomBytes(rand, numel * dtypeSize(dtype)) });
  }
  const meta = rand() < 0.5 ? undefined : { format: "pt", [randomName(rand)]: randomName(rand) };
  return serializeSafetensors(tensors, meta);
}

function randomJsonValue(rand: () => number, depth: number): unknown {
  const r = rand();
  if (depth <= 0 || r < 0.35) {
    return pick(rand, [0, 1, -1, 2 ** 53, 1e308, 0.5, -0, "F32", "U8", "", "x", null, true, false, int(rand, 0, 64)]);
  }
  if (r < 0.65) return Array.from({ length: int(rand, 0, 4) }, () => randomJsonValue(rand, depth - 1));
  // Null prototype: a "__proto__" key must become a real key, not change the prototype.
  const o: Record<string, unknown> = Object.create(null);
  for (let i = int(rand, 0, 4); i > 0; i--) o[randomName(rand)] = randomJsonValue(rand, depth - 1);
  return o;
}

/** A structurally plausible header whose fields are randomly wrong (or right). */
function randomHeaderFile(rand: () => number): Uint8Array {
  const header: Record<string, unknown> = Object.create(null);
  let offset = 0;
  for (let i = int(rand, 0, 5); i > 0; i--) {
    const dtype = rand() < 0.8 ? pick(rand, DTYPES) : randomJsonValue(rand, 1);
    const shape = rand() < 0.8 ? Array.from({ length: int(rand, 0, 3) }, () => int(rand, 0, 5)) : randomJsonValue(rand, 2);
    const numel = Array.isArray(shape) ? shape.reduce((a: number, b) => a * (typeof b === "number" ? b : 1), 1) : 1;
    const size = typeof dtype === "string" && DTYPES.includes(dtype as Dtype) ? numel * dtypeSize(dtype as Dtype) : 4;
    let offsets: unknown = [offset, offset + size];
    const r = rand();
    if (r < 0.1) offsets = [offset + int(rand, -3, 3), offset + size + int(rand, -3, 3)];
    else if (r < 0.15) offsets = randomJsonValue(rand, 2);
    else if (r < 0.3) offsets = [0, size];
    offset += Number.isFinite(size) ? size : 0;
    header[rand() < 0.05 ? "__metadata__" : randomName(rand)] = rand() < 0.9 ? { dtype, shape, data_offsets: offsets } : randomJsonValue(rand, 2);
  }
  if (rand() < 0.3) header.__metadata__ = rand() < 0.5 ? { a: "b" } : randomJsonValue(rand, 2);
  const dataLen = Math.max(0, Math.min(4096, offset + (rand() < 0.8 ? 0 : int(rand, -4, 4))));
  return rawFile(header, randomBytes(rand, Number.isFinite(dataLen) ? dataLen : 0));
}

/** Byte-level mutation of a valid file, concentrated on the prefix and header. */
function mutate(rand: () => number, base: Uint8Array): Uint8Array {
  const n = Number(new DataView(base.buffer, base.byteOffset).getBigUint64(0, true));
  const headerEnd = Math.min(base.byteLength, 8 + n);
  let out = base.slice();
  const ops = int(rand, 1, 4);
  for (let k = 0; k < ops; k++) {
    const r = rand();
    const at = Math.min(out.byteLength, int(rand, 0, Math.max(0, (rand() < 0.8 ? headerEnd : out.byteLength) - 1)));
    if (r < 0.35 && at < out.byteLength) out[at] = int(rand, 0, 255);
    else if (r < 0.55 && at < out.byteLength)
      out[at] = pick(
        rand,
        [...'{}[],:"0123456789-. eE'].map((c) => c.charCodeAt(0)),
      );
    else if (r < 0.65) out = out.slice(0, int(rand, 0, out.byteLength));
    else if (r < 0.75) {
      const extra = randomBytes(rand, int(rand, 1, 16));
      const grown = new Uint8Array(out.byteLength + extra.byteLength);
      grown.set(out.subarray(0, at));
      grown.set(extra, at);
      grown.set(out.subarray(at), at + extra.byteLength);
      out = grown;
    } else if (r < 0.9 && out.byteLength >= 8) {
      // Nudge or replace the length prefix.
      const view = new DataView(out.buffer, out.byteOffset);
      const cur = view.getBigUint64(0, true);
      const next = rand() < 0.5 ? cur + BigInt(int(rand, -9, 9)) : BigInt.asUintN(64, BigInt(int(rand, 0, 2 ** 31)) << BigInt(int(rand, 0, 33)));
      view.setBigUint64(0, BigInt.asUintN(64, next), true);
    } else if (out.byteLength > 8) {
      out.copyWithin(int(rand, 8, out.byteLength - 1), int(rand, 8, out.byteLength - 1), int(rand, 8, out.byteLength));
    }
  }
  return out;
}

/** Edits the header text and rewrites a correct length prefix, so parsing gets past the framing. */
function mutateHeaderText(rand: () => number, base: Uint8Array): Uint8Array {
  const n = Number(new DataView(base.buffer, base.byteOffset).getBigUint64(0, true));
  let text = new TextDecoder().decode(base.subarray(8, 8 + n));
  for (let k = int(rand, 1, 3); k > 0; k--) {
    const at = int(rand, 0, text.length);
    const r = rand();
    if (r < 0.4) text = text.slice(0, at) + text.slice(at + int(rand, 1, 3));
    else if (r < 0.8) text = text.slice(0, at) + pick(rand, ["0", "9", "-", ",", "]", "[", "{", "}", '"', "1e3", "null", "F16", " "]) + text.slice(at);
    else text = text.replace(/\d+/, String(int(rand, 0, 100)));
  }
  return rawFile(text, base.subarray(8 + n));
}

test("fuzz: random and mutated headers only ever raise SafetensorsError, in bounded time, reading in bounds", async () => {
  const rand = prng(0x5afe7e25);
  const bases = Array.from({ length: 24 }, () => randomValidFile(rand));
  if (existsSync(STORIES_HF)) bases.push(new Uint8Array(readFileSync(STORIES_HF)));
  const t0 = performance.now();
  let cases = 0;
  for (const base of bases) await probe(base, "valid base");
  for (let i = 0; i < 1500; i++, cases++) await probe(mutate(rand, pick(rand, bases)), `mutate #${i}`);
  for (let i = 0; i < 1000; i++, cases++) await probe(mutateHeaderText(rand, pick(rand, bases)), `text #${i}`);
  for (let i = 0; i < 1000; i++, cases++) await probe(randomHeaderFile(rand), `header #${i}`);
  for (let i = 0; i < 300; i++, cases++) await probe(rawFile(randomJsonValue(rand, 4), randomBytes(rand, int(rand, 0, 32))), `json #${i}`);
  for (let i = 0; i < 300; i++, cases++) {
    const bytes = randomBytes(rand, int(rand, 0, 64));
    if (bytes.byteLength >= 8 && rand() < 0.7) new DataView(bytes.buffer).setBigUint64(0, BigInt(int(rand, 0, bytes.byteLength)), true);
    await probe(bytes, `random #${i}`);
  }
  const elapsed = performance.now() - t0;
  assert.ok(cases >= 4000);
  // Mutations must exercise both outcomes and most of the validation paths.
  assert.ok(stats.ok > 100, `only ${stats.ok} inputs parsed`);
  for (const code of ["invalid_json", "unknown_dtype", "invalid_shape", "invalid_offsets", "size_mismatch", "overlap", "hole", "truncated"]) {
    assert.ok((stats.errors.get(code) ?? 0) > 0, `no fuzz case hit ${code}: ${JSON.stringify([...stats.errors])}`);
  }
  assert.ok(elapsed < 60_000, `fuzzing took ${elapsed.toFixed(0)} ms`);
});

test("fuzz: the Blob and in-memory openers raise only SafetensorsError too", async () => {
  const rand = prng(42);
  const bases = Array.from({ length: 8 }, () => randomValidFile(rand));
  for (let i = 0; i < 400; i++) {
    const bytes = i % 2 === 0 ? mutate(rand, pick(rand, bases)) : randomHeaderFile(rand);
    for (const input of [new Blob([new Uint8Array(bytes)]), bytes]) {
      try {
        const f = await openSafetensors(input, { label: LABEL });
        for (const name of f.names) assert.equal((await f.read(name)).data.byteLength, f.tensors[name].byteLength);
      } catch (err) {
        assert.ok(err instanceof SafetensorsError, `case ${i}: ${String(err)}`);
        assert.ok(PARSE_CODES.has(err.code), `case ${i}: ${err.code}`);
      }
    }
  }
});
