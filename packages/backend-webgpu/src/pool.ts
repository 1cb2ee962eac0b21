/**
 * Size-classed pool of storage buffers. Freed tensor buffers go back to their class and are
 * handed out again. Reuse inside one command encoder is safe (commands run in encoding order);
 * reuse as a `queue.writeBuffer` target is not while commands are unsubmitted (the write would
 * land before their reads), so the backend then uploads through a mapped staging buffer and an
 * encoder copy instead.
 */

// Numeric flags instead of the GPUBufferUsage global: Node only gets that global once dawn.node loads.
export const USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 } as const;
export const STORAGE_USAGE = USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST;

/**
 * The pooled size for a request: at least 256 bytes; powers of two up to 64 KiB, then four steps
 * per octave (waste under 25%, and sizes stay multiples of 16 for vec4 bindings).
 */
export function sizeClass(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 16) * 16);
  if (b <= 65536) return 2 ** Math.ceil(Math.log2(b));
  const octave = 2 ** Math.floor(Math.log2(b));
  const step = octave / 4;
  return Math.ceil(b / step) * step;
}

export interface PoolStats {
  /** Bytes in buffers waiting in the pool for reuse. */
  pooledBytes: number;
  pooledBuffers: number;
  /** Bytes of every storage buffer the pool created and has not destroyed (live + pooled). */
  allocatedBytes: number;
}

export class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  private pooled = 0;
  private pooledCount = 0;
  private allocated = 0;

  constructor(
    private readonly device: GPUDevice,
    /** Pooled bytes above this are destroyed instead of kept. */
    private readonly maxPooledBytes: number,
  ) {}

  /** A buffer of at least `bytes` (its class size), reused when one is free. */
  acquire(bytes: number, label: string): GPUBuffer {
    const size = sizeClass(bytes);
    const list = this.free.get(size);
    const buf = list?.pop();
    if (buf) {
      this.pooled -= size;
      this.pooledCount--;
      return buf;
    }
    return this.create(size, label);
  }

  private create(size: number, label: string): GPUBuffer {
    const buf = this.device.createBuffer({ size, usage: STORAGE_USAGE, label });
    this.allocated += size;
    return buf;
  }

  /** Return a buffer (of a class size) for reuse, or destroy it when the pool is full. */
  release(buf: GPUBuffer): void {
    const size = buf.size;
    if (this.pooled + size > this.maxPooledBytes) {
      this.destroy(buf);
      return;
    }
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buf);
    this.pooled += size;
    this.pooledCount++;
  }

  destroy(buf: GPUBuffer): void {
    this.allocated -= buf.size;
    buf.destroy();
  }

  /** Destroy every pooled buffer (live ones are untouched). */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) this.destroy(b);
    this.free.clear();
    this.pooled = 0;
    this.pooledCount = 0;
  }

  stats(): PoolStats {
    return { pooledBytes: this.pooled, pooledBuffers: this.pooledCount, allocatedBytes: this.allocated };
  }
}
