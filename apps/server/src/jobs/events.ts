/** Live job events for SSE subscribers, with a bounded in-memory history per job. */
export type JobEvent = Record<string, unknown> & { type: string };

type Listener = (e: JobEvent | null) => void;

export class JobEvents {
  readonly #history = new Map<string, JobEvent[]>();
  readonly #listeners = new Map<string, Set<Listener>>();
  constructor(readonly maxHistory = 500) {}

  publish(id: string, e: JobEvent): void {
    const ev = { ...e, time: new Date().toISOString() };
    const h = this.#history.get(id) ?? [];
    h.push(ev);
    if (h.length > this.maxHistory) h.splice(0, h.length - this.maxHistory);
    this.#history.set(id, h);
    for (const l of this.#listeners.get(id) ?? []) l(ev);
  }

  /** The job reached a final state: subscribers get null (end of stream). */
  close(id: string): void {
    for (const l of this.#listeners.get(id) ?? []) l(null);
    this.#listeners.delete(id);
  }

  /** End every subscription (shutdown). */
  closeAll(): void {
    for (const id of [...this.#listeners.keys()]) this.close(id);
  }

  history(id: string): JobEvent[] {
    return [...(this.#history.get(id) ?? [])];
  }

  subscribe(id: string, l: Listener): () => void {
    const set = this.#listeners.get(id) ?? new Set();
    set.add(l);
    this.#listeners.set(id, set);
    return () => set.delete(l);
  }
}
