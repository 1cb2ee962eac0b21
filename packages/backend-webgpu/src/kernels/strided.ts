/**
 * Strided-view helpers on the host: dimension coalescing and the chunk planner that keeps every
 * storage binding under maxStorageBufferBindingSize.
 *
 * A kernel reads tensors through views {strides, offset} over a common index space (its output
 * shape). The planner splits that space into boxes whose output and input footprints (in 32-bit
 * words) each fit one binding; each box becomes one dispatch binding only its windows. A tensor
 * that fits is one box: the common case costs nothing.
 */
import { WebGpuLimitError } from "../errors.ts";

export const MAX_RANK = 8;
/** Binding offsets must be multiples of minStorageBufferOffsetAlignment (256 bytes = 64 words). */
export const ALIGN_WORDS = 64;

/**
 * Merge adjacent dims that every tensor walks contiguously and drop size-1 dims. `strides[t]`
 * are the strides of tensor t over `shape`; returns the reduced shape and strides (rank >= 1).
 */
export function coalesce(shape: readonly number[], strides: (readonly number[])[]): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const r = outShape.length - 1;
    if (r >= 0 && strides.every((s, t) => outStrides[t][r] === s[d] * shape[d])) {
      outShape[r] *= shape[d];
      strides.forEach((s, t) => (outStrides[t][r] = s[d]));
      continue;
    }
    outShape.push(shape[d]);
    strides.forEach((s, t) => outStrides[t].push(s[d]));
  }
  if (outShape.length === 0) return { shape: [1], strides: strides.map(() => [0]) };
  return { shape: outShape, strides: outStrides };
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** How a kernel touches one tensor over the index space of a box. */
export interface Access {
  strides: readonly number[];
  /** Element offset of index (0, ..., 0). May be "negative" for shifted views (concat). */
  offset: number;
  /** Elements per 32-bit word of the tensor's dtype. */
  epw: number;
  /** Extra elements read past each index (reductions over dims outside the box); default 0. */
  span?: number;
}

export interface Window {
  /** First word bound (multiple of ALIGN_WORDS). */
  word: number;
  /** First word actually touched (>= word). */
  start: number;
  /** Words bound. */
  words: number;
}

export interface Box {
  lo: number[];
  hi: number[];
  /** True when the box is the whole index space. */
  full: boolean;
  /** One window per access, in order. */
  windows: Window[];
}

function windowOf(a: Access, lo: readonly number[], hi: readonly number[]): Window {
  let min = a.offset;
  let max = a.offset + (a.span ?? 0);
  for (let d = 0; d < lo.length; d++) {
    const s = a.strides[d];
    if (s < 0) throw new WebGpuLimitError("planner", "negative strides are not supported");
    min += lo[d] * s;
    max += (hi[d] - 1) * s;
  }
  const start = Math.floor(min / a.epw);
  const first = Math.floor(start / ALIGN_WORDS) * ALIGN_WORDS;
  return { word: first, start, words: Math.floor(max / a.epw) + 1 - first };
}

/**
 * Split the index space `shape` into boxes whose windows all fit `maxWords` per binding.
 * `grain[d]` (default 1) keeps split points of dim d on multiples (vector-aligned tiles);
 * `region` restricts the work to a sub-box (then `full` is false).
 */
export function planBoxes(
  kernel: string,
  shape: readonly number[],
  accesses: Access[],
  maxWords: number,
  grain?: readonly number[],
  region?: { lo: readonly number[]; hi: readonly number[] },
  /** Split only the outermost splittable dim, so every box is one contiguous run of the index space. */
  runs = false,
): Box[] {
  const out: Box[] = [];
  const stack: { lo: number[]; hi: number[] }[] = [region ? { lo: [...region.lo], hi: [...region.hi] } : { lo: shape.map(() => 0), hi: [...shape] }];
  while (stack.length) {
    const { lo, hi } = stack.pop()!;
    if (hi.some((h, d) => h <= lo[d])) continue;
    const windows = accesses.map((a) => windowOf(a, lo, hi));
    if (windows.every((w) => w.words <= maxWords)) {
      out.push({ lo, hi, full: lo.every((l, d) => l === 0 && hi[d] === shape[d]), windows });
      continue;
    }
    // Split the dim that spans the most memory in any tensor, at a grain-aligned midpoint.
    let best = -1;
    let bestSpan = 0;
    for (let d = 0; d < shape.length; d++) {
      const g = grain?.[d] ?? 1;
      if (hi[d] - lo[d] <= g) continue;
      const span = Math.max(...accesses.map((a) => ((hi[d] - lo[d] - 1) * a.strides[d]) / a.epw));
      if (span > bestSpan) {
        bestSpan = span;
        best = d;
      }
      if (runs) break;
    }
    if (best < 0) {
      const w = windows.find((x) => x.words > maxWords)!;
      throw new WebGpuLimitError(kernel, `${kernel}: one slice of the work reads ${w.words * 4} bytes, above the ${maxWords * 4}-byte storage binding limit`);
    }
    const g = grain?.[best] ?? 1;
    const mid = lo[best] + Math.max(g, Math.ceil((hi[best] - lo[best]) / 2 / g) * g);
    const hiA = [...hi];
    hiA[best] = mid;
    const loB = [...lo];
    loB[best] = mid;
    stack.push({ lo: loB, hi }, { lo, hi: hiA });
  }
  return out;
}

/** Shape and strides padded into fixed MAX_RANK slots of a parameter block. */
export function checkRank(kernel: string, rank: number): void {
  if (rank > MAX_RANK) throw new WebGpuLimitError(kernel, `${kernel}: rank ${rank} after merging dims exceeds the kernel maximum ${MAX_RANK}; reshape first`);
}
