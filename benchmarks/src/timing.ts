/** Timing helpers shared by the benchmark files: warm up, calibrate repetitions, take the median. */

export interface Timing {
  /** Median milliseconds per call. */
  ms: number;
  /** Timed samples (each `reps` calls) behind the median. */
  samples: number;
  reps: number;
}

export interface TimeOptions {
  /** Each sample runs enough calls to last about this long (default 100 ms). */
  sampleMs?: number;
  /** Samples to take the median of (default 5). */
  samples?: number;
  /** Untimed calls first (default 1). */
  warmup?: number;
  /** Cap on calls per sample (1 for slow references). */
  maxReps?: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function time(fn: () => void, opts: TimeOptions = {}): Timing {
  const { sampleMs = 100, samples = 5, warmup = 1, maxReps = 1e6 } = opts;
  let once = Infinity;
  for (let i = 0; i < warmup; i++) {
    const t0 = performance.now();
    fn();
    once = Math.min(once, performance.now() - t0);
  }
  const reps = Math.max(1, Math.min(maxReps, Number.isFinite(once) ? Math.ceil(sampleMs / Math.max(once, 1e-3)) : 1));
  const per: number[] = [];
  for (let s = 0; s < samples; s++) {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) fn();
    per.push((performance.now() - t0) / reps);
  }
  return { ms: median(per), samples, reps };
}

/** A fixed-width text table. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === "number" ? fmt(c) : c)))];
  const w = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ");
  return [line(cells[0]), w.map((n) => "-".repeat(n)).join("  "), ...cells.slice(1).map(line)].join("\n");
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return "-";
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/** Deterministic values in [-1, 1). */
export function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}
