/**
 * Freed f32 storages kept for the next output of the same length. A fresh large typed array
 * page-faults on first write, every 4 KiB: measured here 0.25 ms for a 1 MiB output, three times
 * the sgemm of LoRA's h·Bᵀ [1024×8]·[8×256] itself; a recycled one is already mapped. Small ones
 * cost too: V8 zeroes an off-heap backing store and counts it towards the next GC, about 2 µs for
 * 4 KiB and 9 µs for 32 KiB here, which made allocation a tenth of a 16-sequence decode step of a
 * small model (its outputs are N rows of a few hundred floats). Only outputs whose kernel writes
 * every element take from it (matmul, elementwise, copy, fused).
 */
import type { HostArray } from "@lowrank/tensor";

/** Below this a fresh array costs about what a lookup here does. */
const MIN_BYTES = 1024,
  FLOOR_BYTES = 64 * 2 ** 20;

export class OutputPool {
  private readonly byLength = new Map<number, Float32Array[]>();
  private held = 0;

  /** `peakLive`: the backend's highest live bytes so far. */
  constructor(private readonly peakLive: () => number) {}

  /**
   * Keep `a` if it is a whole f32 buffer (not a view into a larger one) and the pool stays within
   * max(64 MiB, peakLive): a training step frees its activations in backward and allocates them
   * again in the next forward, so what the pool holds is what the next step would page-fault in.
   */
  put(a: HostArray): void {
    if (!(a instanceof Float32Array) || a.byteLength < MIN_BYTES || a.buffer.byteLength !== a.byteLength || !(a.buffer instanceof ArrayBuffer)) return;
    if (this.held + a.byteLength > Math.max(FLOOR_BYTES, this.peakLive())) return;
    const list = this.byLength.get(a.length) ?? [];
    list.push(a);
    this.byLength.set(a.length, list);
    this.held += a.byteLength;
  }

  /** An f32 array of length n with arbitrary contents, recycled when one is free. */
  take(n: number): Float32Array {
    const a = this.byLength.get(n)?.pop();
    if (!a) return new Float32Array(n);
    this.held -= a.byteLength;
    return a;
  }

  /** Bytes held for reuse (not counted in memory().liveBytes). */
  get bytes(): number {
    return this.held;
  }

  clear(): void {
    this.byLength.clear();
    this.held = 0;
  }
}
