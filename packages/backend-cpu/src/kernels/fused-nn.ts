/**
 * CPU kernels of the fused transformer set (FusedKernels in @lowrank/tensor): dropout, SwiGLU,
 * RoPE and AdamW, forward and backward side by side. Inputs arrive as f32 arrays (f16/bf16
 * decoded by the caller), outputs are f32 (rounded on store by the caller). Attention has its
 * own file (attention.ts).
 */
import { type AdamWHyper, type View, hash32, numel } from "@lowrank/tensor";

const TWO32 = 4294967296;

/**
 * out[i] = x[i] * keep(i) / (1 - p), keep(i) = uniformAt(seed, offset + i) >= p, with uniformAt
 * (random.ts) inlined: its 24 random bits k give u = k / 2^24, and u >= p <=> k >= p * 2^24 (exact).
 */
export function dropoutKernel(x: Float32Array, p: number, seed: number, offset: number, out: Float32Array): void {
  const hs = hash32(seed >>> 0);
  const threshold = p * 16777216;
  // An f32 scale, as the composite's scalar tensor: x * scale is then one f32 rounding on every path.
  const scale = Math.fround(1 / (1 - p));
  const n = out.length;
  let i = 0;
  while (i < n) {
    // Split at multiples of 2^32 so the high word of the counter is constant inside the loop.
    const idx0 = offset + i;
    const hi = Math.imul((idx0 / TWO32) >>> 0, 0x9e3779b9);
    const end = Math.min(n, i + (TWO32 - (idx0 % TWO32)));
    // The same bits as hash32, kept in int32 arithmetic (no doubles in the loop).
    const lo0 = (offset + i) | 0;
    for (let j = 0; i < end; i++, j++) {
      let h = ((hs ^ (lo0 + j)) + hi) | 0;
      h ^= h >>> 16;
      h = Math.imul(h, 0x7feb352d);
      h ^= h >>> 15;
      h = Math.imul(h, 0x846ca68b);
      h ^= h >>> 16;
      out[i] = h >>> 8 >= threshold ? x[i] * scale : 0;
    }
  }
}

/** out = silu(gate) * up. */
export function swigluKernel(gate: Float32Array, up: Float32Array, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/** d/dgate = gy * up * s * (1 + gate * (1 - s)), d/dup = gy * gate * s, with s = sigmoid(gate). */
export function swigluBackwardKernel(gate: Float32Array, up: Float32Array, gy: Float32Array, gGate: Float32Array, gUp: Float32Array): void {
  for (let i = 0; i < gy.length; i++) {
    const g = gate[i];
    const s = 1 / (1 + Math.exp(-g));
    const gs = gy[i] * s;
    gUp[i] = gs * g;
    gGate[i] = gs * up[i] * (1 + g * (1 - s));
  }
}

/**
 * Rotary embedding of a strided view x [..., T, D] (data = its whole storage as f32) into
 * contiguous out. sign = 1 rotates by +angle (forward), -1 by -angle (backward: the transpose).
 */
export function ropeKernel(data: Float32Array, view: View, cos: Float32Array, sin: Float32Array, interleaved: boolean, sign: 1 | -1, out: Float32Array): void {
  const { shape, strides, offset } = view;
  const rank = shape.length;
  const T = shape[rank - 2],
    D = shape[rank - 1],
    half = D / 2;
  const st = strides[rank - 2],
    sd = strides[rank - 1];
  const lead = shape.slice(0, rank - 2);
  const outer = numel(lead);
  // p, q: positions of a rotated pair within the head; step between pairs.
  const qOff = interleaved ? 1 : half;
  const step = interleaved ? 2 : 1;
  const idx = new Array<number>(lead.length).fill(0);
  let base = offset;
  for (let o = 0; o < outer; o++) {
    for (let t = 0; t < T; t++) {
      const xb = base + t * st;
      const ob = (o * T + t) * D;
      const tb = t * half;
      for (let i = 0; i < half; i++) {
        const c = cos[tb + i],
          s = sign * sin[tb + i];
        const pi = i * step,
          qi = pi + qOff;
        const xp = data[xb + pi * sd],
          xq = data[xb + qi * sd];
        out[ob + pi] = xp * c - xq * s;
        out[ob + qi] = xq * c + xp * s;
      }
    }
    for (let d = lead.length - 1; d >= 0; d--) {
      idx[d]++;
      base += strides[d];
      if (idx[d] < lead[d]) break;
      base -= strides[d] * lead[d];
      idx[d] = 0;
    }
  }
}

/** One AdamW step in place (FusedKernels.adamw), torch's operation order. */
export function adamwKernel(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, size: number, h: AdamWHyper): void {
  const { beta1: b1, beta2: b2, eps, sqrtBc2 } = h;
  const decay = 1 - h.lr * h.weightDecay;
  const stepSize = h.lr / h.bc1;
  for (let i = 0; i < size; i++) {
    const gi = g[i];
    const mi = (m[i] = b1 * m[i] + (1 - b1) * gi);
    const vi = (v[i] = b2 * v[i] + (1 - b2) * gi * gi);
    const pi = h.weightDecay !== 0 ? Math.fround(p[i] * decay) : p[i];
    p[i] = pi - stepSize * (mi / (Math.sqrt(vi) / sqrtBc2 + eps));
  }
}
