/**
 * Freed f32 storages kept for the next matmul output of the same length. A fresh large typed
 * array page-faults on first write, every 4 KiB: measured here 0.25 ms for a 1 MiB output, three
 * times the sgemm of LoRA's h·Bᵀ [1024×8]·[8×256] itself; a recycled one is already mapped.
 * Only outputs whose kernel writes every element take from it (matmul, elementwise, copy, fused).
 */
import type { HostArray } from "@lowrank/tensor";

/** Smaller arrays are cheap to allocate; larger pools would hide too much memory from memory(). */
const MIN_BYTES = 64 * 1024, MAX_BYTES = 64 * 2 ** 20, PER_LENGTH = 8;

export class OutputPool {
  private readonly byLength = new Map<number, Float32Array[]>();
  private held = 0;

  /** Keep `a` if it is a whole f32 buffer (not a view into a larger one) and there is room. */
  put(a: HostArray): void {
    if (!(a instanceof Float32Array) || a.byteLength < MIN_BYTES || a.buffer.byteLength !== a.byteLength || !(a.buffer instanceof ArrayBuffer)) return;
    if (this.held + a.byteLength > MAX_BYTES) return;
    const list = this.byLength.get(a.length) ?? [];
    if (list.length >= PER_LENGTH) return;
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
