/** A least-recently-used map bounded by the bytes of its values (adapter weights on the device). */
export class ByteLru<K, V> {
  readonly #map = new Map<K, { value: V; bytes: number }>();
  #bytes = 0;

  constructor(public capacity: number, private readonly onEvict: (key: K, value: V) => void) {}

  get bytes(): number {
    return this.#bytes;
  }

  get size(): number {
    return this.#map.size;
  }

  has(key: K): boolean {
    return this.#map.has(key);
  }

  /** The value, marked most recently used. */
  get(key: K): V | undefined {
    const e = this.#map.get(key);
    if (!e) return undefined;
    this.#map.delete(key);
    this.#map.set(key, e);
    return e.value;
  }

  /**
   * Insert as most recently used, then evict the least recently used others until the total fits.
   * An entry larger than the capacity stays alone (it is in use right now).
   */
  set(key: K, value: V, bytes: number): void {
    this.delete(key);
    this.#map.set(key, { value, bytes });
    this.#bytes += bytes;
    for (const [k, e] of this.#map) {
      if (this.#bytes <= this.capacity || k === key) break;
      this.#drop(k, e);
    }
  }

  delete(key: K): boolean {
    const e = this.#map.get(key);
    if (!e) return false;
    this.#drop(key, e);
    return true;
  }

  clear(): void {
    for (const [k, e] of [...this.#map]) this.#drop(k, e);
  }

  /** Oldest first. */
  entries(): [K, V, number][] {
    return [...this.#map].map(([k, e]) => [k, e.value, e.bytes]);
  }

  #drop(key: K, e: { value: V; bytes: number }): void {
    this.#map.delete(key);
    this.#bytes -= e.bytes;
    this.onEvict(key, e.value);
  }
}
