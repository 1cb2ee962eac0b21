/**
 * The WASM SIMD decode attention (assembly/attention-decode.ts) behind CpuBackend's
 * attentionDecode. The caches stay plain typed arrays: a call appends the new rows to them (as the
 * TypeScript kernel), copies the step's queries in once, then for each sequence its filled key and
 * value rows (one copy per kv head, into a region that stays in cache) and runs the kernel, and
 * copies the outputs out once. Grouped-query heads read their shared kv head's staged rows, so each
 * row is copied once for all of them. Heads whose size is not a multiple of 4 return false and the
 * caller runs the TypeScript kernel.
 */
import { type DecodeShape, type Rows, appendRows } from "../kernels/attention-decode.ts";
import { ATTENTION_DECODE_WASM, ATTENTION_DECODE_WASM_RELAXED } from "./attention-decode-wasm.ts";
import { firstBuild } from "./relaxed.ts";
import { tryRelaxed } from "./simd.ts";

interface Kernel {
  heapBase(): number;
  decode(
    q: number,
    qs: number,
    o: number,
    os: number,
    k: number,
    v: number,
    hs: number,
    S: number,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
    sc: number,
  ): void;
}

const PAGE = 65536;

/** Elements of one copy of a cache's first S rows of every head, gaps between heads included; 0 when head by head is cheaper. */
function block(c: Rows, Hkv: number, S: number, D: number): number {
  return c.s1 === D && c.s0 >= S * D && c.s0 - S * D <= 256 ? (Hkv - 1) * c.s0 + S * D : 0;
}
const align64 = (n: number) => Math.ceil(n / 64) * 64;

export class DecodeWasm {
  readonly #k: Kernel;
  readonly #memory: WebAssembly.Memory;
  readonly #base: number;
  #f32: Float32Array;

  /** The relaxed-SIMD build where the runtime validates it, else the plain SIMD one; null without WASM SIMD. */
  static create(opts: { relaxed?: boolean } = {}): DecodeWasm | null {
    if (typeof WebAssembly !== "object") return null;
    return firstBuild(ATTENTION_DECODE_WASM_RELAXED, ATTENTION_DECODE_WASM, tryRelaxed(opts.relaxed), (bytes) => new DecodeWasm(bytes));
  }

  private constructor(bytes: Uint8Array) {
    this.#memory = new WebAssembly.Memory({ initial: 1 });
    this.#k = new WebAssembly.Instance(new WebAssembly.Module(bytes as BufferSource), { env: { memory: this.#memory } }).exports as unknown as Kernel;
    this.#base = align64(this.#k.heapBase());
    this.#f32 = new Float32Array(this.#memory.buffer);
  }

  /** attentionDecodeKernel's contract (the new rows appended to the caches, then out [N, Hq, D]), or false when D % 4 != 0 (nothing done). */
  run(a: DecodeShape, q: Rows, kNew: Rows, vNew: Rows, ks: Rows[], vs: Rows[], lengths: readonly number[], out: Float32Array): boolean {
    const { N, Hq, Hkv, D, scale } = a;
    if (D % 4 !== 0 || q.s0 < 0 || q.s1 < 0) return false;
    appendRows(a, kNew, vNew, ks, vs, lengths);
    // Heap: q's elements from its first to its last, outputs [N, Hq, D], scores [S], then one sequence's K and V.
    const qn = (Hq - 1) * q.s0 + (N - 1) * q.s1 + D;
    const S = Math.max(...lengths) + 1;
    const room = Math.max(Hkv * S * D, ...[...ks, ...vs].map((c, i) => block(c, Hkv, lengths[i % N] + 1, D)));
    const qo = this.#base,
      oo = align64(qo + qn * 4),
      so = align64(oo + out.length * 4),
      ko = align64(so + S * 4),
      vo = align64(ko + room * 4);
    this.#reserve(vo + room * 4);
    this.#f32.set(q.data.subarray(q.offset, q.offset + qn), qo >> 2);
    for (let i = 0; i < N; i++) {
      const Si = lengths[i] + 1;
      const hs = this.#stage(ks[i], Hkv, Si, D, ko >> 2);
      this.#stage(vs[i], Hkv, Si, D, vo >> 2);
      this.#k.decode(qo + i * q.s1 * 4, q.s0 * 4, oo + i * Hq * D * 4, D * 4, ko, vo, hs * 4, Si, Hq, Hkv, D, scale, so);
    }
    out.set(this.#f32.subarray(oo >> 2, (oo >> 2) + out.length));
    return true;
  }

  /**
   * Rows 0..S-1 of every kv head of a cache into the heap from element `at`; returns the elements
   * from one head's rows to the next's there. Heads whose unfilled rows between them are few go as
   * one copy, gaps included (a copy costs about what 256 floats do); others head by head, packed.
   */
  #stage(c: Rows, Hkv: number, S: number, D: number, at: number): number {
    const n = block(c, Hkv, S, D);
    if (n) {
      this.#f32.set(c.data.subarray(c.offset, c.offset + n), at);
      return c.s0;
    }
    for (let h = 0; h < Hkv; h++) {
      const start = c.offset + h * c.s0;
      if (c.s1 === D) this.#f32.set(c.data.subarray(start, start + S * D), at + h * S * D);
      else for (let j = 0; j < S; j++) this.#f32.set(c.data.subarray(start + j * c.s1, start + j * c.s1 + D), at + (h * S + j) * D);
    }
    return S * D;
  }

  /** Grow the memory to at least `bytes` (the views onto it are remade: growing detaches them). */
  #reserve(bytes: number): void {
    const have = this.#memory.buffer.byteLength;
    if (bytes <= have) return;
    this.#memory.grow(Math.ceil((bytes - have) / PAGE));
    this.#f32 = new Float32Array(this.#memory.buffer);
  }
}
