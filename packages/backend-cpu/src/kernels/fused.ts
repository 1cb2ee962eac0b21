/** Fused last-axis kernels on packed f32 rows (see @lowrank/tensor FusedKernels). */

export function softmaxRows(x: Float32Array, rows: number, n: number, out: Float32Array, log: boolean): void {
  for (let r = 0; r < rows; r++) {
    const b = r * n;
    let m = -Infinity;
    for (let i = 0; i < n; i++) if (x[b + i] > m) m = x[b + i];
    let s = 0;
    for (let i = 0; i < n; i++) s += Math.exp(x[b + i] - m);
    if (log) {
      const ls = Math.log(s);
      for (let i = 0; i < n; i++) out[b + i] = x[b + i] - m - ls;
    } else {
      for (let i = 0; i < n; i++) out[b + i] = Math.exp(x[b + i] - m) / s;
    }
  }
}

export function softmaxBackwardRows(y: Float32Array, gy: Float32Array, rows: number, n: number, out: Float32Array, log: boolean): void {
  for (let r = 0; r < rows; r++) {
    const b = r * n;
    let s = 0;
    if (log) {
      for (let i = 0; i < n; i++) s += gy[b + i];
      for (let i = 0; i < n; i++) out[b + i] = gy[b + i] - Math.exp(y[b + i]) * s;
    } else {
      for (let i = 0; i < n; i++) s += gy[b + i] * y[b + i];
      for (let i = 0; i < n; i++) out[b + i] = y[b + i] * (gy[b + i] - s);
    }
  }
}

export function rmsNormRows(x: Float32Array, w: Float32Array, rows: number, n: number, eps: number, out: Float32Array, rstd: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const b = r * n;
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[b + i] * x[b + i];
    const rs = 1 / Math.sqrt(ss / n + eps);
    rstd[r] = rs;
    for (let i = 0; i < n; i++) out[b + i] = x[b + i] * rs * w[i];
  }
}

/** h = x + res (stored in f32), then rmsNormRows on h as stored. */
export function addRmsNormRows(
  x: Float32Array,
  res: Float32Array,
  w: Float32Array,
  rows: number,
  n: number,
  eps: number,
  h: Float32Array,
  out: Float32Array,
  rstd: Float32Array,
): void {
  for (let i = 0; i < rows * n; i++) h[i] = x[i] + res[i];
  rmsNormRows(h, w, rows, n, eps, out, rstd);
}

export function rmsNormBackwardRows(
  x: Float32Array,
  w: Float32Array,
  rstd: Float32Array,
  gy: Float32Array,
  rows: number,
  n: number,
  gx: Float32Array,
  gw: Float64Array,
): void {
  for (let r = 0; r < rows; r++) {
    const b = r * n;
    const rs = rstd[r];
    let dot = 0;
    for (let i = 0; i < n; i++) dot += gy[b + i] * w[i] * x[b + i] * rs;
    dot /= n;
    for (let i = 0; i < n; i++) {
      const xhat = x[b + i] * rs;
      gw[i] += gy[b + i] * xhat;
      gx[b + i] = rs * (gy[b + i] * w[i] - xhat * dot);
    }
  }
}

/** `lseDone`: lse already holds each row's logsumexp (ElementwiseWasm.crossEntropyRows); only the losses are left. */
export function crossEntropyRowsKernel(
  logits: Float32Array,
  targets: Int32Array,
  rows: number,
  V: number,
  ignore: number,
  loss: Float32Array,
  lse: Float32Array,
  lseDone = false,
): void {
  for (let r = 0; r < rows; r++) {
    const b = r * V;
    let l = lse[r];
    if (!lseDone) {
      let m = -Infinity;
      for (let i = 0; i < V; i++) if (logits[b + i] > m) m = logits[b + i];
      let s = 0;
      for (let i = 0; i < V; i++) s += Math.exp(logits[b + i] - m);
      l = m + Math.log(s);
      lse[r] = l;
    }
    const t = targets[r];
    if (t === ignore) {
      loss[r] = 0;
      continue;
    }
    if (t < 0 || t >= V) throw new RangeError(`crossEntropy: target ${t} at row ${r} out of range [0, ${V})`);
    loss[r] = l - logits[b + t];
  }
}

/** `expDone`: out already holds e^(logit - lse)·g for every row (ElementwiseWasm.crossEntropyRows); only the targets' -g and the ignored rows are left. */
export function crossEntropyBackwardRows(
  logits: Float32Array,
  targets: Int32Array,
  lse: Float32Array,
  g: Float32Array,
  rows: number,
  V: number,
  ignore: number,
  out: Float32Array,
  expDone = false,
): void {
  for (let r = 0; r < rows; r++) {
    const b = r * V;
    const t = targets[r];
    if (t === ignore) {
      out.fill(0, b, b + V);
      continue;
    }
    const gr = g[r];
    const l = lse[r];
    if (!expDone) for (let i = 0; i < V; i++) out[b + i] = Math.exp(logits[b + i] - l) * gr;
    out[b + t] -= gr;
  }
}
