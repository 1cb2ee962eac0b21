/** Plain-JS (f64) reference computations the conformance suite compares backends against. */
import { broadcastShapes, contiguousStrides, numel } from "../shape.ts";

export interface Host {
  data: number[];
  shape: number[];
}

export function host(data: ArrayLike<number>, shape: number[]): Host {
  return { data: Array.from(data), shape };
}

function broadcastIndex(i: number, outShape: number[], inShape: number[]): number {
  const lead = outShape.length - inShape.length;
  const outStrides = contiguousStrides(outShape);
  const inStrides = contiguousStrides(inShape);
  let r = i;
  let off = 0;
  for (let d = 0; d < outShape.length; d++) {
    const c = Math.floor(r / outStrides[d]);
    r -= c * outStrides[d];
    if (d >= lead && inShape[d - lead] !== 1) off += c * inStrides[d - lead];
  }
  return off;
}

export function elementwise(xs: Host[], f: (...v: number[]) => number): Host {
  const shape = xs.reduce((s, x) => broadcastShapes(s, x.shape), [] as number[]);
  const data = Array.from({ length: numel(shape) }, (_, i) => f(...xs.map((x) => x.data[broadcastIndex(i, shape, x.shape)])));
  return { data, shape };
}

export function reduce(x: Host, axes: number[], op: "sum" | "max" | "mean", keepdim = false): Host {
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const out = new Array(numel(keptShape)).fill(op === "max" ? -Infinity : 0);
  const count = numel(axes.map((a) => x.shape[a]));
  const strides = contiguousStrides(x.shape);
  const kStrides = contiguousStrides(keptShape);
  for (let i = 0; i < x.data.length; i++) {
    let r = i;
    let o = 0;
    for (let d = 0; d < x.shape.length; d++) {
      const c = Math.floor(r / strides[d]);
      r -= c * strides[d];
      if (!axes.includes(d)) o += c * kStrides[d];
    }
    out[o] = op === "max" ? Math.max(out[o], x.data[i]) : out[o] + x.data[i];
  }
  const data = op === "mean" ? out.map((v) => v / count) : out;
  return { data, shape: keepdim ? keptShape : x.shape.filter((_, i) => !axes.includes(i)) };
}

export function matmul(a: Host, b: Host): Host {
  const [M, K] = a.shape.slice(-2);
  const N = b.shape[b.shape.length - 1];
  const batch = numel(a.shape.slice(0, -2));
  const data = new Array(batch * M * N).fill(0);
  for (let z = 0; z < batch; z++)
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a.data[z * M * K + i * K + k] * b.data[z * K * N + k * N + j];
        data[z * M * N + i * N + j] = s;
      }
  return { data, shape: [...a.shape.slice(0, -2), M, N] };
}

export function transposeLast(a: Host): Host {
  const [M, N] = a.shape.slice(-2);
  const batch = numel(a.shape.slice(0, -2));
  const data = new Array(a.data.length);
  for (let z = 0; z < batch; z++) for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) data[z * M * N + j * M + i] = a.data[z * M * N + i * N + j];
  return { data, shape: [...a.shape.slice(0, -2), N, M] };
}

export function softmaxRows(x: Host, log = false): Host {
  const n = x.shape[x.shape.length - 1];
  const data = new Array(x.data.length);
  for (let r = 0; r < x.data.length / n; r++) {
    const row = x.data.slice(r * n, (r + 1) * n);
    const m = Math.max(...row);
    const s = row.reduce((acc, v) => acc + Math.exp(v - m), 0);
    row.forEach((v, i) => (data[r * n + i] = log ? v - m - Math.log(s) : Math.exp(v - m) / s));
  }
  return { data, shape: x.shape };
}

export function rmsNormRows(x: Host, w: number[], eps: number): Host {
  const n = x.shape[x.shape.length - 1];
  const data = new Array(x.data.length);
  for (let r = 0; r < x.data.length / n; r++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x.data[r * n + i] ** 2;
    const rs = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) data[r * n + i] = x.data[r * n + i] * rs * w[i];
  }
  return { data, shape: x.shape };
}

/** Attention for [B, H, T, D] q and [B, Hkv, S, D] k/v, causal with queries at the last T positions. */
export function attention(q: Host, k: Host, v: Host, causal: boolean): Host {
  const [B, H, T, D] = q.shape;
  const [, Hkv, S] = k.shape;
  const rep = H / Hkv;
  const out = new Array(B * H * T * D).fill(0);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / rep);
      for (let t = 0; t < T; t++) {
        const scores: number[] = [];
        const lim = causal ? S - T + t : S - 1;
        for (let s = 0; s <= lim; s++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q.data[((b * H + h) * T + t) * D + d] * k.data[((b * Hkv + hk) * S + s) * D + d];
          scores.push(dot / Math.sqrt(D));
        }
        const m = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - m));
        const z = e.reduce((a, x) => a + x, 0);
        for (let s = 0; s <= lim; s++) for (let d = 0; d < D; d++) out[((b * H + h) * T + t) * D + d] += (e[s] / z) * v.data[((b * Hkv + hk) * S + s) * D + d];
      }
    }
  return { data: out, shape: [...q.shape] };
}
