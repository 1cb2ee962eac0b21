import type { Backend } from "./backend.ts";
import type { DType } from "./dtype.ts";

/**
 * A reference-counted device buffer. Tensors and views share one Storage; autograd nodes take
 * their own reference to what backward needs, so disposing a tensor early is always safe.
 * The device memory is freed when the last reference is released.
 */
export class Storage {
  private refs = 1;
  constructor(
    readonly backend: Backend,
    readonly handle: unknown,
    readonly dtype: DType,
    /** Elements in the buffer. */
    readonly size: number,
  ) {}

  get alive(): boolean {
    return this.refs > 0;
  }

  retain(): this {
    if (this.refs <= 0) throw new Error("Storage.retain: buffer already freed");
    this.refs++;
    return this;
  }

  release(): void {
    if (this.refs <= 0) return;
    if (--this.refs === 0) this.backend.free(this.handle);
  }
}
