/**
 * 4-bit dequant-matmul (FusedKernels.matmul4bit) on host arrays, weight in bitsandbytes' layout.
 *
 * Two paths, both reading only the packed bytes plus one f32 absmax per block:
 * - one row of x (decode, M <= SMALL_M): a fused loop over the packed bytes, the block's scale
 *   applied once per block segment. Reads n/2 bytes instead of 4n. Where rows of W start on block
 *   boundaries it runs in WASM SIMD (wasm/elementwise.ts gemv4bit: swizzle lookups, f32 per block,
 *   f64 across; measured 5-6x the TypeScript loop at [2048, 8192]); otherwise the TypeScript loop
 *   (8 codes per 32-bit load, f64).
 * - otherwise panels: dequantize PANEL_FLOATS worth of the weight (all K, P output columns) into
 *   a reused f32 scratch, multiply x by it on the fast engine, scatter the columns into y.
 *   The whole dense weight never exists; the engine's threads do the arithmetic.
 * Dequantized values are f32(code * absmax), bit-identical to nf4's dequantize4bit, in WASM SIMD
 * for the 16-aligned part of a range.
 */
import { type DType, type HostArray, type Input, type Quant4bitInputs, numel } from "@lowrank/tensor";
import type { MatmulEngine } from "../matmul.ts";
import { BlasEngine } from "../blas/engine.ts";
import type { ElementwiseWasm } from "../wasm/elementwise.ts";
import { transposeInto } from "./strided.ts";

/** The WASM SIMD 4-bit loops (wasm/elementwise.ts), where this runtime has them. */
type Wasm4bit = Pick<ElementwiseWasm, "dequant4bit" | "gemv4bit"> | null | undefined;

/** The weight as host arrays (what Quant4bitInputs views resolve to on the CPU). */
export interface Quant4bitHost {
  packed: Uint8Array;
  /** f32 absmax per block, or u8 codes into nested.code. */
  absmax: Float32Array | Uint8Array;
  code: Float32Array;
  nested?: { absmax: Float32Array; code: Float32Array; offset: number; blocksize: number };
  blocksize: number;
  outFeatures: number;
  inFeatures: number;
}

/** At or below this many rows of x the fused loop beats dequantize + engine (measured at 4096²: 2 rows already favour panels). */
export const SMALL_M = 1;
/** f32 elements of one dequantized panel (8 MiB, bounded whatever the layer size): fewer, larger panels copy x into the engine less often. */
export const PANEL_FLOATS = 1 << 21;

/** float32 absmax of every block (double quantization resolved as bnb does). */
export function blockScales(w: Quant4bitHost): Float32Array {
  const a = w.absmax;
  if (!w.nested) return a as Float32Array;
  const { absmax: s2, code: c2, offset, blocksize: nbs } = w.nested;
  const out = new Float32Array(a.length);
  // One nested scale per run of nbs blocks (no division per block): decoding runs this per call.
  for (let b0 = 0, j = 0; b0 < a.length; b0 += nbs, j++) {
    const s = s2[j],
      end = Math.min(a.length, b0 + nbs);
    for (let b = b0; b < end; b++) out[b] = Math.fround(c2[a[b]] * s) + offset;
  }
  return out;
}

/**
 * dst[dOff + i - start] = W_flat[i] for i in [start, end): code * scale, one f32 rounding on
 * store. Pairs share a byte; an odd start or end takes the single nibble.
 */
function dequantRange(w: Quant4bitHost, scales: Float32Array, start: number, end: number, dst: Float32Array, dOff: number, wasm?: Wasm4bit): void {
  // The 16-aligned middle in WASM SIMD (bit-identical), the ragged ends here.
  const a = Math.min(end, Math.ceil(start / 16) * 16),
    b = Math.max(a, end - (end % 16));
  if (wasm && wasm.dequant4bit(w.packed, scales, w.code, w.blocksize, a, b, dst, dOff + a - start)) {
    dequantScalar(w, scales, start, a, dst, dOff);
    dequantScalar(w, scales, b, end, dst, dOff + b - start);
  } else dequantScalar(w, scales, start, end, dst, dOff);
}

function dequantScalar(w: Quant4bitHost, scales: Float32Array, start: number, end: number, dst: Float32Array, dOff: number): void {
  const { packed, code, blocksize: bs } = w;
  let d = dOff;
  for (let b = Math.floor(start / bs); b * bs < end; b++) {
    const s = scales[b];
    let i = Math.max(start, b * bs);
    const hi = Math.min(end, (b + 1) * bs);
    if (i & 1 && i < hi) dst[d++] = code[packed[i++ >> 1] & 15] * s;
    for (; i + 1 < hi; i += 2, d += 2) {
      const byte = packed[i >> 1];
      dst[d] = code[byte >> 4] * s;
      dst[d + 1] = code[byte & 15] * s;
    }
    if (i < hi) dst[d++] = code[packed[i++ >> 1] >> 4] * s;
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * The packed bytes as 32-bit words (8 codes per load), or null where the view is misaligned or
 * the host is big-endian. Word w holds elements 8w..8w+7; byte j of it (bits 8j..8j+7) holds
 * element 8w+2j in its high nibble and 8w+2j+1 in its low nibble.
 */
export function packedWords(packed: Uint8Array): Uint32Array | null {
  return LITTLE_ENDIAN && packed.byteOffset % 4 === 0 ? new Uint32Array(packed.buffer, packed.byteOffset, packed.length >> 2) : null;
}

const codeAt = (packed: Uint8Array, i: number) => (i & 1 ? packed[i >> 1] & 15 : packed[i >> 1] >> 4);

/** Σ_i x[xOff + i - start] · code(i) for i in [start, end): one block segment, unscaled. */
function dotCodes(packed: Uint8Array, words: Uint32Array | null, code: Float64Array, x: Float32Array, xOff: number, start: number, end: number): number {
  let acc = 0;
  let i = start;
  let k = xOff;
  if (words) {
    for (; i < end && i & 7; i++) acc += x[k++] * code[codeAt(packed, i)];
    for (; i + 8 <= end; i += 8, k += 8) {
      const v = words[i >> 3];
      acc +=
        x[k] * code[(v >>> 4) & 15] +
        x[k + 1] * code[v & 15] +
        x[k + 2] * code[(v >>> 12) & 15] +
        x[k + 3] * code[(v >>> 8) & 15] +
        x[k + 4] * code[(v >>> 20) & 15] +
        x[k + 5] * code[(v >>> 16) & 15] +
        x[k + 6] * code[v >>> 28] +
        x[k + 7] * code[(v >>> 24) & 15];
    }
  }
  if (i & 1 && i < end) acc += x[k++] * code[packed[i++ >> 1] & 15];
  for (; i + 1 < end; i += 2, k += 2) {
    const byte = packed[i >> 1];
    acc += x[k] * code[byte >> 4] + x[k + 1] * code[byte & 15];
  }
  if (i < end) acc += x[k] * code[packed[i >> 1] >> 4];
  return acc;
}

/** acc[aOff + i - start] += f · code(i) for i in [start, end). */
function axpyCodes(
  packed: Uint8Array,
  words: Uint32Array | null,
  code: Float64Array,
  f: number,
  acc: Float64Array,
  aOff: number,
  start: number,
  end: number,
): void {
  let i = start;
  let k = aOff;
  if (words) {
    for (; i < end && i & 7; i++) acc[k++] += f * code[codeAt(packed, i)];
    for (; i + 8 <= end; i += 8, k += 8) {
      const v = words[i >> 3];
      acc[k] += f * code[(v >>> 4) & 15];
      acc[k + 1] += f * code[v & 15];
      acc[k + 2] += f * code[(v >>> 12) & 15];
      acc[k + 3] += f * code[(v >>> 8) & 15];
      acc[k + 4] += f * code[(v >>> 20) & 15];
      acc[k + 5] += f * code[(v >>> 16) & 15];
      acc[k + 6] += f * code[v >>> 28];
      acc[k + 7] += f * code[(v >>> 24) & 15];
    }
  }
  if (i & 1 && i < end) acc[k++] += f * code[packed[i++ >> 1] & 15];
  for (; i + 1 < end; i += 2, k += 2) {
    const byte = packed[i >> 1];
    acc[k] += f * code[byte >> 4];
    acc[k + 1] += f * code[byte & 15];
  }
  if (i < end) acc[k] += f * code[packed[i >> 1] >> 4];
}

/**
 * Few rows: y = x·Wᵀ (or x·W) straight from the packed bytes, one pass per row of x. Walks the
 * flat weight block by block, split where a block crosses a row of W, and applies the block's
 * scale once per segment (accumulating in f64).
 */
function matmul4bitSmall(w: Quant4bitHost, scales: Float32Array, x: Float32Array, M: number, transpose: boolean, y: Float32Array, wasm?: Wasm4bit): void {
  const { packed, outFeatures: O, inFeatures: I, blocksize: bs } = w;
  if (!transpose && wasm) {
    let done = true;
    for (let m = 0; m < M && done; m++) done = wasm.gemv4bit(packed, scales, w.code, bs, x.subarray(m * I, (m + 1) * I), O, I, y.subarray(m * O, (m + 1) * O));
    if (done) return;
  }
  const n = O * I;
  const code = Float64Array.from(w.code);
  const words = packedWords(packed);
  const acc = new Float64Array(transpose ? I : 1);
  for (let m = 0; m < M; m++) {
    acc.fill(0);
    let sum = 0;
    let o = 0;
    let rowStart = 0;
    for (let b = 0, s = 0; s < n; b++) {
      const blockEnd = Math.min(s + bs, n);
      while (s < blockEnd) {
        const e = Math.min(blockEnd, rowStart + I);
        if (!transpose) sum += scales[b] * dotCodes(packed, words, code, x, m * I + s - rowStart, s, e);
        else {
          const f = x[m * O + o] * scales[b];
          if (f !== 0) axpyCodes(packed, words, code, f, acc, s - rowStart, s, e);
        }
        s = e;
        if (s === rowStart + I) {
          if (!transpose) y[m * O + o] = sum;
          sum = 0;
          o++;
          rowStart += I;
        }
      }
    }
    if (transpose) for (let i = 0; i < I; i++) y[m * I + i] = acc[i];
  }
}

/**
 * y [M, N] = x [M, K] · op(W), op(W) = Wᵀ [I, O] (transpose=false) or W [O, I] (transpose=true).
 * `engine` does the dense panel products; `opts` overrides the path threshold and panel size (tests, benchmarks).
 */
export function matmul4bitHost(
  engine: MatmulEngine,
  w: Quant4bitHost,
  x: Float32Array,
  M: number,
  transpose: boolean,
  y: Float32Array,
  opts: { smallM?: number; panelFloats?: number; wasm?: Wasm4bit } = {},
): void {
  const { outFeatures: O, inFeatures: I } = w;
  const [K, N] = transpose ? [O, I] : [I, O];
  if (M === 0 || N === 0) return;
  const scales = blockScales(w);
  const wasm = opts.wasm;
  if (M <= (opts.smallM ?? SMALL_M)) {
    matmul4bitSmall(w, scales, x, M, transpose, y, wasm);
    return;
  }
  if (isStrided(engine)) return panelsStrided(engine, w, scales, x, M, transpose, y, opts.panelFloats ?? PANEL_FLOATS, wasm);
  // P output columns per panel: a multiple of 8 (the engine's tiles) unless N is smaller.
  const P = Math.min(N, Math.max(8, Math.floor((opts.panelFloats ?? PANEL_FLOATS) / K / 8) * 8));
  const panel = new Float32Array(K * P);
  const cPanel = new Float32Array(M * P);
  if (!transpose) {
    // Rows c0.. of W are one contiguous flat range: dequantize them as they lie, [p, I], and
    // compute yᵀ[c0.., :] = panel · xᵀ, so the dequant writes stay sequential (it is the serial part).
    const xT = new Float32Array(K * M);
    transposeInto(x, M, K, xT, M, 0);
    for (let c0 = 0; c0 < N; c0 += P) {
      const p = Math.min(P, N - c0);
      dequantRange(w, scales, c0 * I, (c0 + p) * I, panel, 0, wasm);
      engine.matmul(panel.subarray(0, p * K), xT, cPanel, p, M, K); // (p, M)
      transposeInto(cPanel, p, M, y, N, c0); // y[:, c0:c0+p] = cPanelᵀ
    }
    return;
  }
  // Columns c0.. of W: a segment of every row, giving the panel [O, p] = [K, p].
  for (let c0 = 0; c0 < N; c0 += P) {
    const p = Math.min(P, N - c0);
    for (let o = 0; o < O; o++) dequantRange(w, scales, o * I + c0, o * I + c0 + p, panel, o * p, wasm);
    engine.matmul(x, panel.subarray(0, K * p), cPanel, M, p, K); // (M, p)
    for (let m = 0; m < M; m++) y.set(cPanel.subarray(m * p, (m + 1) * p), m * N + c0);
  }
}

/** The BLAS engine takes transposed, strided operands and accumulates. */
const isStrided = (e: MatmulEngine): e is BlasEngine => e instanceof BlasEngine;

/**
 * Panels of whole rows of W (contiguous in the flat weight, so the dequant writes are sequential),
 * handed to sgemm as they lie: forward y[:, rows] = x·panelᵀ straight into y's columns (ldc = N);
 * input gradient y += x[:, rows]·panel, accumulated over the panels. No transposes, no scatter.
 */
function panelsStrided(
  engine: BlasEngine,
  w: Quant4bitHost,
  scales: Float32Array,
  x: Float32Array,
  M: number,
  transpose: boolean,
  y: Float32Array,
  panelFloats: number,
  wasm: Wasm4bit,
): void {
  const { outFeatures: O, inFeatures: I } = w;
  const P = Math.min(O, Math.max(8, Math.floor(panelFloats / I)));
  const panel = new Float32Array(P * I);
  for (let o0 = 0; o0 < O; o0 += P) {
    const p = Math.min(P, O - o0);
    dequantRange(w, scales, o0 * I, (o0 + p) * I, panel, 0, wasm);
    if (!transpose) engine.gemm(false, true, M, p, I, x, I, panel, I, y.subarray(o0), O);
    else engine.gemm(false, false, M, I, p, x.subarray(o0), O, panel, I, y, I, o0 === 0 ? 0 : 1);
  }
}

/** What the kernel needs from CpuBackend (kept structural so this file does not import it). */
export interface Matmul4bitHost {
  readonly engine: MatmulEngine;
  packedF32(x: Input<HostArray>): Float32Array;
  own<T extends HostArray>(a: T): T;
  /** An f32 result stored in `dtype` (halves rounded). */
  store(dtype: DType, v: Float32Array): HostArray;
  /** Recycled f32 arrays for outputs the kernel writes in full. */
  readonly pool: { take(n: number): Float32Array };
  /** The WASM SIMD elementwise kernels, null without them. */
  readonly ew: Wasm4bit;
}

/** The contiguous 1-D views of Quant4bitInputs as typed arrays (no copies). */
function hostWeight(w: Quant4bitInputs<HostArray>): Quant4bitHost {
  const arr = <T extends HostArray>(v: Input<HostArray>) => {
    const n = numel(v.view.shape);
    return v.handle.subarray(v.view.offset, v.view.offset + n) as T;
  };
  return {
    packed: arr<Uint8Array>(w.packed),
    absmax: w.nested ? arr<Uint8Array>(w.absmax) : arr<Float32Array>(w.absmax),
    code: arr<Float32Array>(w.code),
    nested: w.nested && {
      absmax: arr<Float32Array>(w.nested.absmax),
      code: arr<Float32Array>(w.nested.code),
      offset: w.nested.offset,
      blocksize: w.nested.blocksize,
    },
    blocksize: w.blocksize,
    outFeatures: w.outFeatures,
    inFeatures: w.inFeatures,
  };
}

/** FusedKernels.matmul4bit for the CPU backend: x [rows, K] (f32/f16/bf16) -> [rows, N] in x's dtype. */
export function matmul4bitKernel(be: Matmul4bitHost, x: Input<HostArray>, w: Quant4bitInputs<HostArray>, transpose: boolean): HostArray {
  const shape = x.view.shape;
  const K = shape[shape.length - 1];
  const M = numel(shape) / K;
  const N = transpose ? w.inFeatures : w.outFeatures;
  const y = be.pool.take(M * N); // every element is written (panels cover all columns; the small path all rows)
  matmul4bitHost(be.engine, hostWeight(w), be.packedF32(x), M, transpose, y, { wasm: be.ew });
  return be.store(x.dtype, y);
}
