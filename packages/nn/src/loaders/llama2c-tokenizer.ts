/**
 * llama2.c's tokenizer file (tok512.bin, tokenizer.bin): int32 max_token_length, then per id
 * {f32 score, int32 len, len UTF-8 bytes}. Ids 0/1/2 are <unk>, BOS, EOS and 3..258 the byte
 * pieces <0x00>..<0xFF>. Encoding follows run.c's `encode` exactly; the merge loop uses a heap
 * instead of run.c's rescans (same merges in the same order, linear-logarithmic instead of
 * quadratic, so whole datasets can be encoded).
 */
import type { DecodeOptions, EncodeOptions, TextTokenizer } from "./tokenizer.ts";
import { readBytes } from "./files.ts";

const UNK = 0;
const BOS = 1;
const EOS = 2;
/** run.c: byte b falls back to id b + 3 when its codepoint is not a piece. */
const BYTE_OFFSET = 3;

/** Bytes as a string of char codes 0..255, so pieces concatenate and hash as Map keys. */
const key = (bytes: Uint8Array): string => String.fromCharCode(...bytes);

export class Llama2cTokenizer implements TextTokenizer {
  readonly pieces: Uint8Array[];
  readonly scores: Float32Array;
  readonly maxTokenLength: number;
  readonly bosTokenId = BOS;
  readonly eosTokenId = EOS;
  readonly #lookup = new Map<string, number>();
  /** Raw byte each id decodes to when its piece is "<0xXX>", else -1. */
  readonly #byteOf: Int16Array;

  constructor(pieces: Uint8Array[], scores: Float32Array, maxTokenLength: number) {
    this.pieces = pieces;
    this.scores = scores;
    this.maxTokenLength = maxTokenLength;
    this.#byteOf = new Int16Array(pieces.length).fill(-1);
    pieces.forEach((p, id) => {
      const k = key(p);
      if (!this.#lookup.has(k)) this.#lookup.set(k, id); // first id wins on (unexpected) duplicates
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(k);
      if (m) this.#byteOf[id] = parseInt(m[1], 16);
    });
  }

  /** Parse the file's bytes for a `vocabSize`-entry vocabulary (the model's vocab_size; 512 for tok512.bin). */
  static fromBytes(bytes: Uint8Array, vocabSize?: number, file = "<bytes>"): Llama2cTokenizer {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const need = (at: number, n: number, what: string) => {
      if (at + n > bytes.byteLength) throw new Error(`${file}: truncated: ${what} at byte ${at} runs past the end (${bytes.byteLength} bytes)`);
    };
    need(0, 4, "max_token_length");
    const maxTokenLength = dv.getInt32(0, true);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let at = 4;
    while (vocabSize === undefined ? at < bytes.byteLength : pieces.length < vocabSize) {
      need(at, 8, `the record of id ${pieces.length}`);
      scores.push(dv.getFloat32(at, true));
      const len = dv.getInt32(at + 4, true);
      if (len < 0 || len > 1 << 16) throw new Error(`${file}: id ${pieces.length} has piece length ${len}; not a llama2.c tokenizer?`);
      need(at + 8, len, `the piece of id ${pieces.length}`);
      pieces.push(bytes.slice(at + 8, at + 8 + len));
      at += 8 + len;
    }
    if (pieces.length < 259) throw new Error(`${file}: ${pieces.length} pieces; a llama2.c vocabulary has at least 259 (specials + 256 bytes)`);
    return new Llama2cTokenizer(pieces, Float32Array.from(scores), maxTokenLength);
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  /** run.c encode: BOS, a dummy-prefix " " for non-empty text, codepoints (bytes + 3 as fallback), then best-score merges. */
  encode(text: string, opts: EncodeOptions & { addEos?: boolean } = {}): number[] {
    const ids: number[] = [];
    if (opts.addSpecialTokens ?? true) ids.push(BOS);
    const bytes = new TextEncoder().encode(text);
    if (bytes.length > 0) {
      const space = this.#lookup.get(" ");
      if (space === undefined) throw new Error("llama2.c tokenizer: the vocabulary has no ' ' piece for the dummy prefix");
      ids.push(space);
    }
    for (let i = 0; i < bytes.length; ) {
      // One UTF-8 codepoint: a lead byte and up to 3 continuation bytes (run.c caps the buffer at 4).
      let j = i + 1;
      while (j < bytes.length && (bytes[j] & 0xc0) === 0x80 && j - i < 4) j++;
      const cp = bytes.subarray(i, j);
      const id = this.#lookup.get(key(cp));
      if (id !== undefined) ids.push(id);
      else for (const b of cp) ids.push(b + BYTE_OFFSET);
      i = j;
    }
    const merged = this.#merge(ids);
    if (opts.addEos) merged.push(EOS);
    return merged;
  }

  /**
   * Repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece, the
   * leftmost on ties (run.c's strict `>` scan). A heap of candidate pairs with lazy
   * invalidation gives the same sequence of merges.
   */
  #merge(ids: number[]): number[] {
    const n = ids.length;
    const id = Int32Array.from(ids);
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const alive = new Uint8Array(n).fill(1);
    const heap = new PairHeap();
    const consider = (l: number) => {
      const r = next[l];
      if (l < 0 || r < 0) return;
      const m = this.#lookup.get(key(this.pieces[id[l]]) + key(this.pieces[id[r]]));
      if (m !== undefined) heap.push({ score: this.scores[m], left: l, right: r, leftId: id[l], rightId: id[r], merged: m });
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    for (let c = heap.pop(); c; c = heap.pop()) {
      const { left: l, right: r } = c;
      if (!alive[l] || !alive[r] || next[l] !== r || id[l] !== c.leftId || id[r] !== c.rightId) continue; // stale
      id[l] = c.merged;
      alive[r] = 0;
      next[l] = next[r];
      if (next[r] >= 0) prev[next[r]] = l;
      if (prev[l] >= 0) consider(prev[l]);
      consider(l);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]) out.push(id[i]);
    return out;
  }

  /**
   * Pieces back to text: "<0xXX>" pieces become raw bytes, and a piece's leading space is
   * dropped at the start of the text and after BOS (run.c drops it after BOS; HF's Llama decoder
   * strips it at the start).
   */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const skip = opts.skipSpecialTokens ?? true;
    const out: number[] = [];
    let prev = -1;
    for (const t of ids) {
      if (t < 0 || t >= this.pieces.length) throw new RangeError(`llama2.c tokenizer: id ${t} is outside the vocabulary (${this.pieces.length})`);
      if (skip && (t === BOS || t === EOS || t === UNK)) {
        prev = t;
        continue;
      }
      const b = this.#byteOf[t];
      if (b >= 0) out.push(b);
      else {
        let piece = this.pieces[t];
        if ((out.length === 0 || prev === BOS) && piece[0] === 0x20) piece = piece.subarray(1);
        for (const x of piece) out.push(x);
      }
      prev = t;
    }
    return new TextDecoder().decode(Uint8Array.from(out));
  }
}

export async function loadLlama2cTokenizer(path: string, vocabSize?: number): Promise<Llama2cTokenizer> {
  return Llama2cTokenizer.fromBytes(await readBytes(path, "a llama2.c tokenizer"), vocabSize, path);
}

interface Pair {
  score: number;
  left: number;
  right: number;
  leftId: number;
  rightId: number;
  merged: number;
}

/** Max-heap on score, then the leftmost pair. */
class PairHeap {
  readonly #a: Pair[] = [];
  #before(x: Pair, y: Pair): boolean {
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }
  push(p: Pair): void {
    const a = this.#a;
    a.push(p);
    for (let i = a.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (!this.#before(a[i], a[parent])) break;
      [a[i], a[parent]] = [a[parent], a[i]];
      i = parent;
    }
  }
  pop(): Pair | undefined {
    const a = this.#a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.#before(a[l], a[m])) m = l;
        if (r < a.length && this.#before(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}
