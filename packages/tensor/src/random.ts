/**
 * Counter-based random numbers: value i of stream `seed` is a pure function of (seed, i), so
 * every backend (TypeScript, WGSL, WASM) produces the same dropout masks and initialisations,
 * and a resumed run continues the exact stream. The mix is "lowbias32" (Chris Wellons), u32 only.
 */
export function hash32(x: number): number {
  x = x >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** Uniform in [0, 1) with 24 random bits (exactly representable in f32). */
export function uniformAt(seed: number, i: number): number {
  const h = hash32((hash32(seed >>> 0) ^ (i >>> 0)) + Math.imul((i / 4294967296) >>> 0, 0x9e3779b9));
  return (h >>> 8) / 16777216;
}

/** A small seeded generator for host-side choices (shuffles, init): a counter over `uniformAt`. */
export class Rng {
  constructor(public seed: number, public counter = 0) {}
  next(): number {
    return uniformAt(this.seed, this.counter++);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  /** Reserve `n` counters for a device-side draw and return the offset to use. */
  take(n: number): number {
    const o = this.counter;
    this.counter += n;
    return o;
  }
  state(): { seed: number; counter: number } {
    return { seed: this.seed, counter: this.counter };
  }
}

/**
 * A counter-based stream a module draws from (LoRA dropout: one per layer and adapter). Draw
 * through `drawCounter`, so `recompute()` can replay a block's draws when it recomputes it, as
 * torch's checkpoint(preserve_rng_state=True) does for its global generator.
 */
export interface CounterStream {
  seed: number;
  counter: number;
}

/** The recomputable forwards now running: each maps a stream to its counter before the block's first draw. */
const drawLogs: Map<CounterStream, number>[] = [];

/** Take `n` values from `stream`: returns the index of the first and advances the counter by `n`. */
export function drawCounter(stream: CounterStream, n: number): number {
  const start = stream.counter;
  for (const log of drawLogs) if (!log.has(stream)) log.set(stream, start);
  stream.counter = start + n;
  return start;
}

/** Run `fn`, recording in `log` where every stream it draws from stood before its first draw. */
export function recordDraws<T>(log: Map<CounterStream, number>, fn: () => T): T {
  drawLogs.push(log);
  try {
    return fn();
  } finally {
    drawLogs.splice(drawLogs.lastIndexOf(log), 1);
  }
}

/** Run `fn` with every stream of `log` rewound to its recorded start, then put them back where they were. */
export function replayDraws<T>(log: ReadonlyMap<CounterStream, number>, fn: () => T): T {
  const now = [...log.keys()].map((s) => s.counter);
  for (const [s, start] of log) s.counter = start;
  try {
    return fn();
  } finally {
    [...log.keys()].forEach((s, i) => (s.counter = now[i]));
  }
}
