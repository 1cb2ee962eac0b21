/** What kernels need from the backend: the engine, allocation and the binding limit. */
import type { DType, Input } from "@lowrank/tensor";
import type { Engine } from "../engine.ts";
import { EPW } from "../wgsl/common.ts";

/**
 * A backend storage: one pooled GPU buffer (class-sized) holding `size` elements.
 *
 * A storage made by full() starts lazy: `constant` holds the value's natural 32-bit pattern and
 * the fill is recorded only when something touches `buffer` (a kernel binding it, a copy, a read,
 * an in-place write). Elementwise kernels read an untouched constant from their parameter block
 * instead, so a scalar like `x.mul(0.5)` costs no fill dispatch (one per LoRA scale, loss divisor).
 */
export class GpuStorage {
  freed = false;
  /** Natural bits (f32 or i32) of every element while the fill is still deferred; null once materialized. */
  constant: number | null = null;
  private fill: (() => void) | null = null;
  private drain: (() => void) | null = null;
  constructor(
    private readonly raw: GPUBuffer,
    readonly dtype: DType,
    /** Elements. */
    readonly size: number,
    /** Bytes counted as live (size x element bytes). */
    readonly bytes: number,
  ) {}

  /** The buffer, filled first when the storage was a deferred constant. */
  get buffer(): GPUBuffer {
    // Held work (a merged AdamW) may write this storage: it must be recorded after the fill, and
    // before whatever asked for the buffer. Draining it materializes this storage first when it binds it.
    if (this.fill) this.drain?.();
    if (this.fill) {
      const f = this.fill;
      this.fill = null;
      this.constant = null;
      f();
    }
    return this.raw;
  }

  /** The buffer without materializing (release and destroy only). */
  get rawBuffer(): GPUBuffer {
    return this.raw;
  }

  /** Defer `fill` until the buffer is first used; `bits` is readable meanwhile (null: not inlinable). */
  defer(fill: () => void, bits: number | null, drain: () => void): void {
    this.fill = fill;
    this.drain = drain;
    this.constant = bits;
  }
}

export type GpuInput = Input<GpuStorage>;

export interface KernelContext {
  readonly engine: Engine;
  /** Binding limit in 32-bit words. */
  readonly maxWords: number;
  /** The device has shader-f16 (used by the f16 matmul path). */
  readonly hasF16: boolean;
  /** A fresh output storage of `n` elements (returned to the caller). */
  alloc(dtype: DType, n: number): GpuStorage;
  /** Release an internal temporary (never a caller's handle). */
  release(h: GpuStorage): void;
}

/** Words that hold `n` elements of `dtype`. */
export function wordsOf(dtype: DType, n: number): number {
  return Math.ceil(n / EPW[dtype]);
}

/** A window of a storage buffer for a binding, in words. */
export function bindWords(h: GpuStorage, word: number, words: number): { buffer: GPUBuffer; offset: number; size: number } {
  const offset = word * 4;
  return { buffer: h.buffer, offset, size: Math.max(4, Math.min(words * 4, h.buffer.size - offset)) };
}

/** Workgroups needed for `units` invocations. */
export function groupsFor(units: number, wg: number): number {
  return Math.ceil(units / wg);
}
