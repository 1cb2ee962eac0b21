/**
 * The WASM SIMD elementwise kernels (assembly/elementwise.ts) behind CpuBackend's f32 binary ops,
 * where, exp/sigmoid and row sums. Tensors stay plain typed arrays: each call copies its operands
 * into a small fixed heap one chunk at a time (CHUNK elements per operand, cache-resident), runs
 * the kernel and copies the chunk out. Measured on the 2-core dev VM (benchmarks/src/elementwise.ts),
 * that round trip still beats the TypeScript loops 2-4x for f32 from about a thousand elements on
 * (exp/sigmoid 4-8x).
 *
 * A call handles a loop (strided.ts coalesce) of rank <= 2, [rows, n], whose operands each read a
 * row contiguously or as one repeated value: dense, a broadcast row [n], a column [rows, 1] or a
 * scalar. Anything else returns false and the caller runs the TypeScript kernel.
 */
import { type BinaryOp, type View, hash32 } from "@lowrank/tensor";
import { coalesce } from "../kernels/strided.ts";
import { ELEMENTWISE_WASM, ELEMENTWISE_WASM_RELAXED } from "./elementwise-wasm.ts";
import { firstBuild } from "./relaxed.ts";
import { tryRelaxed } from "./simd.ts";

/** Op codes of `binary` in assembly/elementwise.ts. */
const BINARY_OPS: Partial<Record<BinaryOp, number>> = { add: 0, sub: 1, mul: 2, div: 3, max: 4, min: 5, lt: 6, eq: 7 };
const UNARY_OPS: Record<string, number> = { exp: 0, sigmoid: 1 };
/** Elements per operand per kernel call: 16 KiB of f32, so a chunk of every operand stays in L2. */
const CHUNK = 4096;
/** Smaller calls stay in TypeScript: copies and the call cost more than they save (even at about 512-1024). */
const MIN_ELEMENTS = 1024;
/** Shorter rows stay in TypeScript: per-row setup would dominate. */
const MIN_ROW = 16;
const TWO32 = 4294967296;
/** Floats of a RoPE call's staged input span and of its output block (256 KiB each, above extraBase). */
const ROPE_SPAN = 65536;
/**
 * Floats of copyRows' staged source span and of its output block (4 MiB each): enough that one
 * batch of a head permute is one dense span (SmolLM2's [9, 256, 64] is 147k floats).
 */
const COPY_SPAN = 1 << 20;
/** Packed weight bytes per gemv4 call: a cache-sized slab of rows. */
const GEMV_PACKED_BYTES = 64 * 1024;

interface Kernel {
  heapBase(): number;
  binary(op: number, a: number, lda: number, ua: number, b: number, ldb: number, ub: number, o: number, rows: number, n: number): void;
  select(c: number, ldc: number, uc: number, a: number, lda: number, ua: number, b: number, ldb: number, ub: number, o: number, rows: number, n: number): void;
  unary(op: number, a: number, o: number, n: number): void;
  sumRows(a: number, rows: number, n: number, o: number): void;
  addRows(acc: number, a: number, rows: number, n: number): void;
  dropout(a: number, o: number, n: number, hs: number, lo: number, hi: number, thr: number, scale: number, m: number): void;
  maskApply(a: number, m: number, o: number, n: number, scale: number): void;
  swiglu(g: number, u: number, o: number, n: number): void;
  swigluBackward(g: number, u: number, gy: number, n: number): void;
  rmsNorm(x: number, w: number, o: number, rstd: number, rows: number, n: number, eps: number): void;
  rmsNormBackward(x: number, w: number, gy: number, gx: number, gw: number, rstd: number, rows: number, n: number): void;
  attnSoftmax(s: number, rows: number, S: number, T: number, r0: number, causal: number, scale: number, lse: number): void;
  attnProbs(s: number, rows: number, S: number, T: number, r0: number, causal: number, scale: number, lse: number): void;
  attnDs(p: number, dp: number, rows: number, S: number, delta: number, scale: number): void;
  rowLse(s: number, rows: number, V: number, lse: number): void;
  rowSoftmaxGrad(s: number, rows: number, V: number, lse: number, g: number): void;
  copyRows(src: number, starts: number, rows: number, n: number, dst: number): void;
  ropeHalf(x: number, sh: number, st: number, H: number, rows: number, D: number, cos: number, sin: number, sign: number, o: number): void;
  bf16Decode(a: number, o: number, n: number): void;
  bf16Encode(a: number, o: number, n: number): void;
  dequant4(packed: number, scales: number, code: number, lut: number, o: number, n: number, phase: number, bs: number): void;
  gemv4(x: number, packed: number, scales: number, code: number, lut: number, y: number, rows: number, K: number, bs: number): void;
}

type Store = Float32Array | Int32Array | Uint8Array;

/** One operand of a [rows, n] loop: element [r, j] is data[offset + r * s0 + j * s1], s1 is 0 or 1. */
interface Operand {
  data: Store;
  offset: number;
  s0: number;
  s1: number;
}

/** The loop of views of one shape as [rows, n] operands, or null when some inner stride is not 0 or 1. */
function plan(views: View[], data: Store[]): { rows: number; n: number; ops: Operand[] } | null {
  const { shape, strides } = coalesce(
    views[0].shape,
    views.map((v) => v.strides),
  );
  if (shape.length > 2) return null;
  const n = shape[shape.length - 1],
    rows = shape.length === 2 ? shape[0] : 1;
  if (rows * n < MIN_ELEMENTS || (rows > 1 && n < MIN_ROW)) return null;
  const ops = strides.map((s, k) => ({ data: data[k], offset: views[k].offset, s0: s.length === 2 ? s[0] : 0, s1: s[s.length - 1] }));
  return ops.every((o) => o.s1 === 0 || o.s1 === 1) ? { rows, n, ops } : null;
}

export class ElementwiseWasm {
  private readonly k: Kernel;
  private f32: Float32Array;
  private i32: Int32Array;
  private u8: Uint8Array;
  private u16: Uint16Array;
  private f64: Float64Array;
  /** Byte addresses of the operand regions (CHUNK x 4 bytes each) and of the f64 row sums. */
  private readonly region: number[];
  private readonly sums: number;
  /** First byte past the fixed regions: 4-bit products put their operands from here, growing the memory. */
  private readonly extraBase: number;
  private readonly memory: WebAssembly.Memory;

  /**
   * The relaxed-SIMD build (fused multiply-add in exp) where the runtime validates it, else the
   * plain SIMD one; null when this runtime has no WASM SIMD. `relaxed: false` (default: unless
   * LOWRANK_SIMD=plain) skips the first.
   */
  static create(opts: { relaxed?: boolean } = {}): ElementwiseWasm | null {
    if (typeof WebAssembly !== "object") return null;
    return firstBuild(ELEMENTWISE_WASM_RELAXED, ELEMENTWISE_WASM, tryRelaxed(opts.relaxed), (bytes, relaxed) => new ElementwiseWasm(bytes, relaxed));
  }

  private constructor(
    bytes: Uint8Array,
    /** Whether the relaxed-SIMD build runs. */
    readonly relaxed: boolean,
  ) {
    const memory = new WebAssembly.Memory({ initial: 1 });
    this.k = new WebAssembly.Instance(new WebAssembly.Module(bytes as BufferSource), { env: { memory } }).exports as unknown as Kernel;
    const base = Math.ceil(this.k.heapBase() / 64) * 64;
    this.region = [0, 1, 2, 3].map((i) => base + i * CHUNK * 4);
    this.sums = base + 4 * CHUNK * 4;
    const end = (this.extraBase = this.sums + CHUNK * 8);
    this.memory = memory;
    memory.grow(Math.ceil(end / 65536) - 1);
    this.f32 = new Float32Array(memory.buffer);
    this.i32 = new Int32Array(memory.buffer);
    this.u8 = new Uint8Array(memory.buffer);
    this.u16 = new Uint16Array(memory.buffer);
    this.f64 = new Float64Array(memory.buffer);
  }

  /** Grow the memory to `end` bytes (views re-made: growing detaches an unshared buffer). */
  private ensure(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    this.memory.grow(Math.ceil((end - have) / 65536));
    const buf = this.memory.buffer;
    [this.f32, this.i32, this.u8, this.u16, this.f64] = [
      new Float32Array(buf),
      new Int32Array(buf),
      new Uint8Array(buf),
      new Uint16Array(buf),
      new Float64Array(buf),
    ];
  }

  /** out = a op b (f32; lt/eq write u8); false when the views do not fit (caller falls back). */
  binary(op: BinaryOp, a: Float32Array, av: View, b: Float32Array, bv: View, out: Float32Array | Uint8Array): boolean {
    const code = BINARY_OPS[op];
    const p = code === undefined ? null : plan([av, bv], [a, b]);
    if (!p) return false;
    const [A, B] = p.ops;
    const o = this.region[2];
    this.blocks(p.rows, p.n, (r0, rr, j0, cc, reuse) => {
      const [pa, lda, ua] = this.stage(A, this.f32, this.region[0], 4, r0, rr, j0, cc, reuse);
      const [pb, ldb, ub] = this.stage(B, this.f32, this.region[1], 4, r0, rr, j0, cc, reuse);
      this.k.binary(code!, pa, lda, ua, pb, ldb, ub, o, rr, cc);
      if (out instanceof Uint8Array) out.set(this.u8.subarray(o, o + rr * cc), r0 * p.n + j0);
      else out.set(this.f32.subarray(o >> 2, (o >> 2) + rr * cc), r0 * p.n + j0);
    });
    return true;
  }

  /** out = c != 0 ? a : b on 32-bit storage bits; false when the views do not fit. */
  where(c: Uint8Array, cv: View, a: Int32Array, av: View, b: Int32Array, bv: View, out: Int32Array): boolean {
    const p = plan([cv, av, bv], [c, a, b]);
    if (!p) return false;
    const [C, A, B] = p.ops;
    const o = this.region[3];
    this.blocks(p.rows, p.n, (r0, rr, j0, cc, reuse) => {
      const [pc, ldc, uc] = this.stage(C, this.u8, this.region[2], 1, r0, rr, j0, cc, reuse);
      const [pa, lda, ua] = this.stage(A, this.i32, this.region[0], 4, r0, rr, j0, cc, reuse);
      const [pb, ldb, ub] = this.stage(B, this.i32, this.region[1], 4, r0, rr, j0, cc, reuse);
      this.k.select(pc, ldc, uc, pa, lda, ua, pb, ldb, ub, o, rr, cc);
      out.set(this.i32.subarray(o >> 2, (o >> 2) + rr * cc), r0 * p.n + j0);
    });
    return true;
  }

  /** exp or sigmoid of packed f32 (about 1-3 ulp from the f64 Math.exp route); false for other ops or small inputs. */
  unary(op: string, x: Float32Array, out: Float32Array): boolean {
    const code = UNARY_OPS[op];
    if (code === undefined || out.length < MIN_ELEMENTS) return false;
    const [a, o] = this.region;
    for (let i = 0; i < out.length; i += CHUNK) {
      const m = Math.min(CHUNK, out.length - i);
      this.f32.set(x.subarray(i, i + m), a >> 2);
      this.k.unary(code, a, o, m);
      out.set(this.f32.subarray(o >> 2, (o >> 2) + m), i);
    }
    return true;
  }

  /**
   * out[r] = sum of x[starts[r] .. starts[r] + n), accumulated in f64 as 8 interleaved partial
   * sums (a fixed order, so results are deterministic); rows longer than a chunk add chunk sums.
   */
  sumRuns(x: Float32Array, starts: Int32Array, n: number, out: Float32Array | Int32Array | Uint8Array): boolean {
    if (n < MIN_ROW || starts.length * n < MIN_ELEMENTS) return false;
    const a = this.region[0],
      s = this.sums >> 3;
    if (n > CHUNK) {
      for (let r = 0; r < starts.length; r++) {
        let t = 0;
        for (let j = 0; j < n; j += CHUNK) {
          const m = Math.min(CHUNK, n - j);
          this.f32.set(x.subarray(starts[r] + j, starts[r] + j + m), a >> 2);
          this.k.sumRows(a, 1, m, this.sums);
          t += this.f64[s];
        }
        out[r] = t;
      }
      return true;
    }
    const per = Math.floor(CHUNK / n);
    for (let r0 = 0; r0 < starts.length; r0 += per) {
      const rr = Math.min(per, starts.length - r0);
      let dense = true;
      for (let r = r0 + 1; r < r0 + rr && dense; r++) dense = starts[r] === starts[r - 1] + n;
      if (dense) this.f32.set(x.subarray(starts[r0], starts[r0] + rr * n), a >> 2);
      else for (let r = 0; r < rr; r++) this.f32.set(x.subarray(starts[r0 + r], starts[r0 + r] + n), (a >> 2) + r * n);
      this.k.sumRows(a, rr, n, this.sums);
      for (let r = 0; r < rr; r++) out[r0 + r] = this.f64[s + r];
    }
    return true;
  }

  /**
   * out[o] = sum over j in order of x[offset + inner[j] + o], o < count: each reduced element
   * is a contiguous run across the outputs (a column sum). The same f64 adds as the TypeScript
   * path, so the same bits.
   */
  sumColumns(x: Float32Array, offset: number, count: number, inner: Int32Array, out: Float32Array | Int32Array | Uint8Array): boolean {
    if (count > CHUNK || count < MIN_ROW || count * inner.length < MIN_ELEMENTS) return false;
    const a = this.region[0],
      s = this.sums >> 3;
    this.f64.fill(0, s, s + count);
    const per = Math.floor(CHUNK / count);
    for (let j0 = 0; j0 < inner.length; j0 += per) {
      const jj = Math.min(per, inner.length - j0);
      let dense = true;
      for (let j = j0 + 1; j < j0 + jj && dense; j++) dense = inner[j] === inner[j - 1] + count;
      const start = offset + inner[j0];
      if (dense) this.f32.set(x.subarray(start, start + jj * count), a >> 2);
      else for (let j = 0; j < jj; j++) this.f32.set(x.subarray(offset + inner[j0 + j], offset + inner[j0 + j] + count), (a >> 2) + j * count);
      this.k.addRows(this.sums, a, jj, count);
    }
    for (let o = 0; o < count; o++) out[o] = this.f64[s + o];
    return true;
  }

  /** Dropout of packed f32 (FusedKernels.dropout's mask, bit for bit); false for small inputs. */
  /**
   * Inverted dropout (the counter-based mask of `dropoutKernel`). With `mask` (one byte per
   * element), also writes the keep mask (0xff / 0), so a second pass with the same mask can take
   * `maskApply` instead of hashing again (the LoRA backward masks two tensors).
   */
  dropout(x: Float32Array, out: Float32Array, p: number, seed: number, offset: number, mask?: Uint8Array): boolean {
    if (out.length < MIN_ELEMENTS) return false;
    const [a, o, mb] = this.region;
    const hs = hash32(seed >>> 0) | 0,
      thr = Math.ceil(p * 16777216),
      scale = 1 / (1 - p);
    for (let i = 0; i < out.length; ) {
      // A chunk never crosses a multiple of 2^32 in the counter: its high-word term is one constant.
      const idx = offset + i;
      const m = Math.min(CHUNK, out.length - i, TWO32 - (idx % TWO32));
      this.f32.set(x.subarray(i, i + m), a >> 2);
      this.k.dropout(a, o, m, hs, idx | 0, Math.imul((idx / TWO32) >>> 0, 0x9e3779b9), thr, scale, mask ? mb : 0);
      out.set(this.f32.subarray(o >> 2, (o >> 2) + m), i);
      if (mask) mask.set(this.u8.subarray(mb, mb + m), i);
      i += m;
    }
    return true;
  }

  /** out = dropout(x) with the keep mask a `dropout(..., mask)` call wrote (same values as hashing again); false for small inputs. */
  maskApply(x: Float32Array, mask: Uint8Array, p: number, out: Float32Array): boolean {
    if (out.length < MIN_ELEMENTS) return false;
    const [a, o, mb] = this.region;
    for (let i = 0; i < out.length; i += CHUNK) {
      const m = Math.min(CHUNK, out.length - i);
      this.f32.set(x.subarray(i, i + m), a >> 2);
      this.u8.set(mask.subarray(i, i + m), mb);
      this.k.maskApply(a, mb, o, m, 1 / (1 - p));
      out.set(this.f32.subarray(o >> 2, (o >> 2) + m), i);
    }
    return true;
  }

  /** bf16 bits -> f32 (kernels/half.ts decodeHalf); false for small inputs. */
  decodeBf16(src: Uint16Array, out: Float32Array): boolean {
    if (src.length < MIN_ELEMENTS) return false;
    const [a, o] = this.region;
    for (let i = 0; i < src.length; i += CHUNK) {
      const m = Math.min(CHUNK, src.length - i);
      this.u16.set(src.subarray(i, i + m), a >> 1);
      this.k.bf16Decode(a, o, m);
      out.set(this.f32.subarray(o >> 2, (o >> 2) + m), i);
    }
    return true;
  }

  /** f32 -> bf16 bits, round to nearest even (kernels/half.ts encodeHalf); false for small inputs. */
  encodeBf16(src: Float32Array, out: Uint16Array): boolean {
    if (src.length < MIN_ELEMENTS) return false;
    const [a, o] = this.region;
    for (let i = 0; i < src.length; i += CHUNK) {
      const m = Math.min(CHUNK, src.length - i);
      this.f32.set(src.subarray(i, i + m), a >> 2);
      this.k.bf16Encode(a, o, m);
      out.set(this.u16.subarray(o >> 1, (o >> 1) + m), i);
    }
    return true;
  }

  /** out = silu(gate) * up over packed f32; false for small inputs. */
  swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): boolean {
    if (out.length < MIN_ELEMENTS) return false;
    const [g, u, o] = this.region;
    for (let i = 0; i < out.length; i += CHUNK) {
      const m = Math.min(CHUNK, out.length - i),
        m4 = (m + 3) & ~3;
      this.f32.set(gate.subarray(i, i + m), g >> 2);
      this.f32.set(up.subarray(i, i + m), u >> 2);
      this.f32.fill(0, (g >> 2) + m, (g >> 2) + m4);
      this.k.swiglu(g, u, o, m4);
      out.set(this.f32.subarray(o >> 2, (o >> 2) + m), i);
    }
    return true;
  }

  /** SwiGLU's gradients (FusedKernels.swigluBackward) over packed f32; false for small inputs. */
  swigluBackward(gate: Float32Array, up: Float32Array, gy: Float32Array, gGate: Float32Array, gUp: Float32Array): boolean {
    if (gy.length < MIN_ELEMENTS) return false;
    const [g, u, y] = this.region;
    for (let i = 0; i < gy.length; i += CHUNK) {
      const m = Math.min(CHUNK, gy.length - i),
        m4 = (m + 3) & ~3;
      this.f32.set(gate.subarray(i, i + m), g >> 2);
      this.f32.set(up.subarray(i, i + m), u >> 2);
      this.f32.set(gy.subarray(i, i + m), y >> 2);
      this.f32.fill(0, (g >> 2) + m, (g >> 2) + m4);
      this.k.swigluBackward(g, u, y, m4);
      gGate.set(this.f32.subarray(g >> 2, (g >> 2) + m), i);
      gUp.set(this.f32.subarray(u >> 2, (u >> 2) + m), i);
    }
    return true;
  }

  /**
   * RMSNorm of packed rows (FusedKernels.rmsNorm). With `add`, of h = x + add.res, the add run in
   * the heap and h written to add.h before it is normed (FusedKernels.addRmsNorm). False for rows
   * wider than half a chunk or small inputs.
   */
  rmsNorm(
    x: Float32Array,
    w: Float32Array,
    rows: number,
    n: number,
    eps: number,
    out: Float32Array,
    rstd: Float32Array,
    add?: { res: Float32Array; h: Float32Array },
  ): boolean {
    if (n > CHUNK / 2 || rows * n < MIN_ELEMENTS) return false;
    const [a, s, o, wr] = this.region,
      rs = this.sums;
    this.f32.set(w.subarray(0, n), wr >> 2);
    const per = Math.floor(CHUNK / n);
    for (let r0 = 0; r0 < rows; r0 += per) {
      const m = Math.min(per, rows - r0);
      this.f32.set(x.subarray(r0 * n, (r0 + m) * n), a >> 2);
      if (add) {
        this.f32.set(add.res.subarray(r0 * n, (r0 + m) * n), s >> 2);
        this.k.binary(BINARY_OPS.add!, a, 0, 1, s, 0, 1, s, 1, m * n); // s = a + s, in place
        add.h.set(this.f32.subarray(s >> 2, (s >> 2) + m * n), r0 * n);
      }
      this.k.rmsNorm(add ? s : a, wr, o, rs, m, n, eps);
      out.set(this.f32.subarray(o >> 2, (o >> 2) + m * n), r0 * n);
      rstd.set(this.f32.subarray(rs >> 2, (rs >> 2) + m), r0);
    }
    return true;
  }

  /** RMSNorm's gradients (FusedKernels.rmsNormBackward); gw (n f64, zeros on entry) gets the weight gradient. */
  rmsNormBackward(
    x: Float32Array,
    w: Float32Array,
    rstd: Float32Array,
    gy: Float32Array,
    rows: number,
    n: number,
    gx: Float32Array,
    gw: Float64Array,
  ): boolean {
    if (n > CHUNK / 2 || rows * n < MIN_ELEMENTS) return false;
    const [a, y, o, wr] = this.region;
    // The sums area (CHUNK f64) holds gw's n f64 accumulators, then one chunk's rstd values.
    const acc = this.sums,
      rs = this.sums + n * 8;
    this.f32.set(w.subarray(0, n), wr >> 2);
    this.f64.fill(0, acc >> 3, (acc >> 3) + n);
    const per = Math.floor(CHUNK / n);
    for (let r0 = 0; r0 < rows; r0 += per) {
      const m = Math.min(per, rows - r0);
      this.f32.set(x.subarray(r0 * n, (r0 + m) * n), a >> 2);
      this.f32.set(gy.subarray(r0 * n, (r0 + m) * n), y >> 2);
      this.f32.set(rstd.subarray(r0, r0 + m), rs >> 2);
      this.k.rmsNormBackward(a, wr, y, o, acc, rs, m, n);
      gx.set(this.f32.subarray(o >> 2, (o >> 2) + m * n), r0 * n);
    }
    gw.set(this.f64.subarray(acc >> 3, (acc >> 3) + n));
    return true;
  }

  /**
   * Cross-entropy over rows of V logits (FusedKernels.crossEntropy and its backward), the part
   * that touches every logit: lse per row, or grad = e^(logit - lse)·g (the caller subtracts g at
   * the target and zeroes ignored rows). Replaces Math.exp in f64, about 20 ns a logit here; e^x
   * is the f32 kernel of exp (within 1/2 ulp of the f64 route), sums in f64. Rows are staged a
   * block at a time (a vocabulary of 152k is one 600 KiB row). False for small inputs.
   */
  crossEntropyRows(logits: Float32Array, rows: number, V: number, lse: Float32Array, grad?: { g: Float32Array; out: Float32Array }): boolean {
    if (rows * V < MIN_ELEMENTS) return false;
    const per = Math.max(1, Math.floor(ROPE_SPAN / V)),
      sa = this.extraBase,
      la = sa + per * V * 4,
      ga = la + per * 4;
    this.ensure(ga + per * 4);
    for (let r0 = 0; r0 < rows; r0 += per) {
      const m = Math.min(per, rows - r0);
      this.f32.set(logits.subarray(r0 * V, (r0 + m) * V), sa >> 2);
      if (!grad) {
        this.k.rowLse(sa, m, V, la);
        lse.set(this.f32.subarray(la >> 2, (la >> 2) + m), r0);
        continue;
      }
      this.f32.set(lse.subarray(r0, r0 + m), la >> 2);
      this.f32.set(grad.g.subarray(r0, r0 + m), ga >> 2);
      this.k.rowSoftmaxGrad(sa, m, V, la, ga);
      grad.out.set(this.f32.subarray(sa >> 2, (sa >> 2) + m * V), r0 * V);
    }
    return true;
  }

  /**
   * dst[dOff + r·n + k] = src[starts[r] + k] for each row r (copyView's rows when both sides read
   * them contiguously and dst's follow each other): a head permute [B, H, T, D] -> [B, T, H, D] is
   * 4,096 rows of 64 per d256 batch, and TypedArray.set on a subarray costs about 150 ns a row
   * here (2.3 ns per element) against 0.4-0.5 staged through the heap. Rows are staged in groups
   * whose source span and output fit COPY_SPAN floats each. Same-typed 4-byte arrays only (bits
   * are copied, NaN payloads kept); false otherwise or when rows are short or long (the caller
   * copies them itself).
   */
  copyRows(src: Float32Array | Int32Array, starts: Int32Array, n: number, dst: Float32Array | Int32Array, dOff: number): boolean {
    const rows = starts.length;
    if (n < 4 || n >= 1024 || rows * n < MIN_ELEMENTS || src.constructor !== dst.constructor) return false;
    const sa = this.extraBase,
      oa = sa + COPY_SPAN * 4,
      ia = oa + COPY_SPAN * 4,
      maxRows = Math.floor(COPY_SPAN / n);
    this.ensure(ia + maxRows * 4);
    const h = src instanceof Float32Array ? this.f32 : this.i32; // after ensure(): growing re-makes the views
    for (let r0 = 0; r0 < rows; ) {
      // The longest run of rows from r0 whose source span fits.
      let lo = starts[r0],
        hi = lo + n,
        g = 1;
      while (g < maxRows && r0 + g < rows) {
        const s = starts[r0 + g];
        const l = Math.min(lo, s),
          h = Math.max(hi, s + n);
        if (h - l > COPY_SPAN) break;
        [lo, hi, g] = [l, h, g + 1];
      }
      if (hi - lo > 8 * g * n) {
        // Rows far apart (a head permute whose heads are each longer than the span): staging would
        // copy mostly what lies between them, so these rows are copied one by one.
        for (let r = r0; r < r0 + g; r++) dst.set(src.subarray(starts[r], starts[r] + n), dOff + r * n);
        r0 += g;
        continue;
      }
      for (let r = 0; r < g; r++) this.i32[(ia >> 2) + r] = starts[r0 + r] - lo;
      h.set(src.subarray(lo, hi), sa >> 2);
      this.k.copyRows(sa, ia, g, n, oa);
      dst.set(h.subarray(oa >> 2, (oa >> 2) + g * n), dOff + r0 * n);
      r0 += g;
    }
    return true;
  }

  /**
   * RoPE in the rotate-half layout (FusedKernels.rope, sign -1 for its backward) of a view
   * [...lead, H, T, D] with contiguous rows, into packed out: the same bits as ropeKernel. Heads
   * are read in place through their strides (q as a [B, H, T, D] view of [B, T, H, D] needs no
   * copy first): a block of hg heads x tc positions is staged as one span. False when D is not a
   * multiple of 8, a stride is negative or the input is small (the caller runs ropeKernel).
   */
  rope(x: Float32Array, view: View, cos: Float32Array, sin: Float32Array, sign: 1 | -1, out: Float32Array): boolean {
    const { shape, strides, offset } = view;
    const rank = shape.length;
    if (rank < 2 || out.length < MIN_ELEMENTS) return false;
    const D = shape[rank - 1],
      T = shape[rank - 2],
      half = D / 2;
    const H = rank > 2 ? shape[rank - 3] : 1,
      sh = rank > 2 ? strides[rank - 3] : 0,
      st = strides[rank - 2];
    if (D % 8 !== 0 || strides[rank - 1] !== 1 || sh < 0 || st < 0 || cos.length < T * half || sin.length < T * half) return false;
    // The largest block of heads x positions whose span and output fit, shrinking along the wider stride first.
    let hg = H,
      tc = T;
    const span = () => (hg - 1) * sh + (tc - 1) * st + D;
    while (span() > ROPE_SPAN || hg * tc * D > ROPE_SPAN) {
      if ((sh >= st && hg > 1) || tc === 1) hg = Math.ceil(hg / 2);
      else tc = Math.ceil(tc / 2);
    }
    const xa = this.extraBase,
      oa = xa + ROPE_SPAN * 4,
      ca = oa + ROPE_SPAN * 4,
      sa = ca + tc * half * 4;
    this.ensure(sa + tc * half * 4);
    const lead = shape.slice(0, Math.max(0, rank - 3)),
      idx = new Array<number>(lead.length).fill(0);
    let base = offset;
    for (let o = 0, outer = lead.reduce((a, b) => a * b, 1); o < outer; o++) {
      for (let t0 = 0; t0 < T; t0 += tc) {
        const r = Math.min(tc, T - t0);
        this.f32.set(cos.subarray(t0 * half, (t0 + r) * half), ca >> 2);
        this.f32.set(sin.subarray(t0 * half, (t0 + r) * half), sa >> 2);
        for (let h0 = 0; h0 < H; h0 += hg) {
          const g = Math.min(hg, H - h0),
            from = base + h0 * sh + t0 * st;
          this.f32.set(x.subarray(from, from + (g - 1) * sh + (r - 1) * st + D), xa >> 2);
          this.k.ropeHalf(xa, sh, st, g, r, D, ca, sa, sign, oa);
          for (let j = 0; j < g; j++) out.set(this.f32.subarray((oa >> 2) + j * r * D, (oa >> 2) + (j + 1) * r * D), ((o * H + h0 + j) * T + t0) * D);
        }
      }
      for (let d = lead.length - 1; d >= 0; d--) {
        base += strides[d];
        if (++idx[d] < lead[d]) break;
        base -= strides[d] * lead[d];
        idx[d] = 0;
      }
    }
    return true;
  }

  /**
   * Attention score rows [rows, S] in place (kernels/attention.ts): "softmax" normalises each
   * row's visible keys and writes lse[at + i]; "probs" recomputes e^(scale·s - lse[at + i]).
   * Row i of the block is query (r0 + i) % T. False when a row is wider than a chunk.
   */
  attnRows(
    kind: "softmax" | "probs",
    s: Float32Array,
    rows: number,
    S: number,
    T: number,
    r0: number,
    causal: boolean,
    scale: number,
    lse: Float32Array,
    at: number,
  ): boolean {
    if (S > CHUNK) return false;
    const [a, , l] = this.region;
    const per = Math.floor(CHUNK / S);
    for (let i0 = 0; i0 < rows; i0 += per) {
      const m = Math.min(per, rows - i0);
      this.f32.set(s.subarray(i0 * S, (i0 + m) * S), a >> 2);
      if (kind === "softmax") this.k.attnSoftmax(a, m, S, T, r0 + i0, causal ? 1 : 0, scale, l);
      else {
        this.f32.set(lse.subarray(at + i0, at + i0 + m), l >> 2);
        this.k.attnProbs(a, m, S, T, r0 + i0, causal ? 1 : 0, scale, l);
      }
      s.set(this.f32.subarray(a >> 2, (a >> 2) + m * S), i0 * S);
      if (kind === "softmax") lse.set(this.f32.subarray(l >> 2, (l >> 2) + m), at + i0);
    }
    return true;
  }

  /** dp <- p ∘ (dp - delta[at + i]) · scale over rows [rows, S]; false when a row is wider than a chunk. */
  attnDs(p: Float32Array, dp: Float32Array, rows: number, S: number, delta: Float32Array, at: number, scale: number): boolean {
    if (S > CHUNK) return false;
    const [a, b, d] = this.region;
    const per = Math.floor(CHUNK / S);
    for (let i0 = 0; i0 < rows; i0 += per) {
      const m = Math.min(per, rows - i0);
      this.f32.set(p.subarray(i0 * S, (i0 + m) * S), a >> 2);
      this.f32.set(dp.subarray(i0 * S, (i0 + m) * S), b >> 2);
      this.f32.set(delta.subarray(at + i0, at + i0 + m), d >> 2);
      this.k.attnDs(a, b, m, S, d, scale);
      dp.set(this.f32.subarray(b >> 2, (b >> 2) + m * S), i0 * S);
    }
    return true;
  }

  /**
   * Calls fn per block: whole rows when a row fits in a chunk (then every block after the first
   * may reuse a staged broadcast row), else one row's column range.
   */
  private blocks(rows: number, n: number, fn: (r0: number, rr: number, j0: number, cc: number, reuse: boolean) => void): void {
    if (n <= CHUNK) {
      const per = Math.floor(CHUNK / n);
      for (let r0 = 0; r0 < rows; r0 += per) fn(r0, Math.min(per, rows - r0), 0, n, r0 > 0);
    } else {
      for (let r0 = 0; r0 < rows; r0++) for (let j0 = 0; j0 < n; j0 += CHUNK) fn(r0, 1, j0, Math.min(CHUNK, n - j0), false);
    }
  }

  /**
   * Copy an operand's part of block (rows r0..r0+rr, columns j0..j0+cc) into its heap region;
   * returns [address, row step in bytes, 1 if rows are contiguous else 0].
   */
  private stage(x: Operand, heap: Store, at: number, size: number, r0: number, rr: number, j0: number, cc: number, reuse: boolean): [number, number, number] {
    const { data, offset, s0, s1 } = x;
    const h = at / size;
    if (s1 === 1) {
      if (s0 === 0) {
        if (!reuse) heap.set(data.subarray(offset + j0, offset + j0 + cc), h);
        return [at, 0, 1];
      }
      const start = offset + r0 * s0 + j0;
      if (rr === 1 || s0 === cc) heap.set(data.subarray(start, start + rr * cc), h);
      else for (let r = 0; r < rr; r++) heap.set(data.subarray(start + r * s0, start + r * s0 + cc), h + r * cc);
      return [at, cc * size, 1];
    }
    if (s0 === 0) {
      heap[h] = data[offset];
      return [at, 0, 0];
    }
    const start = offset + r0 * s0;
    if (s0 === 1) heap.set(data.subarray(start, start + rr), h);
    else for (let r = 0; r < rr; r++) heap[h + r] = data[start + r * s0];
    return [at, size, 0];
  }

  /**
   * dst[dOff + i - start] = code[c(i)] · scales[i / bs] for i in [start, end) of a 4-bit weight in
   * bitsandbytes' packed bytes; start, end and bs multiples of 16. The same f32 products as the
   * TypeScript loop (kernels/matmul4bit.ts); false where a call does not fit.
   */
  dequant4bit(packed: Uint8Array, scales: Float32Array, code: Float32Array, bs: number, start: number, end: number, dst: Float32Array, dOff: number): boolean {
    if (bs % 16 || start % 16 || end % 16 || code.length !== 16 || end - start < MIN_ELEMENTS) return false;
    // Packed bytes, the chunk's scales (at most CHUNK / 16 + 1), the output, then code and its planes.
    const [pk, sc, o, t] = this.region;
    this.f32.set(code, t >> 2);
    for (let i = start; i < end; i += CHUNK) {
      const m = Math.min(CHUNK, end - i);
      const b0 = Math.floor(i / bs);
      this.u8.set(packed.subarray(i >> 1, (i + m) >> 1), pk);
      this.f32.set(scales.subarray(b0, Math.floor((i + m - 1) / bs) + 1), sc >> 2);
      this.k.dequant4(pk, sc, t, t + 64, o, m, i - b0 * bs, bs);
      dst.set(this.f32.subarray(o >> 2, (o >> 2) + m), dOff + i - start);
    }
    return true;
  }

  /**
   * y[r] = Σ_k x[k] · W[r, k] for a 4-bit weight W [rows, K] in bitsandbytes' packed bytes (rows
   * start on block boundaries: K a multiple of bs, bs of 16). Sums each block in f32, the blocks
   * in f64; false where a call does not fit.
   */
  gemv4bit(packed: Uint8Array, scales: Float32Array, code: Float32Array, bs: number, x: Float32Array, rows: number, K: number, y: Float32Array): boolean {
    if (bs % 16 || K % bs || code.length !== 16 || x.length < K || rows * K < MIN_ELEMENTS) return false;
    const R = Math.max(1, Math.floor(GEMV_PACKED_BYTES / (K >> 1))); // rows per call
    const xa = this.extraBase,
      pa = xa + K * 4,
      sa = pa + Math.ceil((R * K) / 2 / 64) * 64;
    const ya = sa + ((R * K) / bs) * 4,
      t = Math.ceil((ya + R * 4) / 64) * 64;
    this.ensure(t + 128);
    this.f32.set(x.subarray(0, K), xa >> 2);
    this.f32.set(code, t >> 2);
    const per = K / bs;
    for (let r = 0; r < rows; r += R) {
      const rr = Math.min(R, rows - r);
      this.u8.set(packed.subarray((r * K) >> 1, ((r + rr) * K) >> 1), pa);
      this.f32.set(scales.subarray(r * per, (r + rr) * per), sa >> 2);
      this.k.gemv4(xa, pa, sa, t, t + 64, ya, rr, K, bs);
      y.set(this.f32.subarray(ya >> 2, (ya >> 2) + rr), r);
    }
    return true;
  }
}
