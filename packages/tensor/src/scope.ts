/**
 * Scopes give explicit, exception-safe ownership of device memory: every tensor created inside
 * `scope(fn)` is disposed when `fn` returns, except the tensors it returns (which move to the
 * enclosing scope) and those marked with `keep()`.
 */
export interface Disposable {
  dispose(): void;
  readonly disposed: boolean;
}

const stack: Set<Disposable>[] = [];

export function track<T extends Disposable>(t: T): T {
  const top = stack[stack.length - 1];
  if (top) top.add(t);
  return t;
}

/** Exclude a tensor from scope cleanup; the caller now owns it. */
export function keep<T extends Disposable>(t: T): T {
  for (const s of stack) s.delete(t);
  return t;
}

function collect(value: unknown, out: Set<unknown>, depth = 0): void {
  if (value === null || typeof value !== "object" || depth > 4) return;
  if ("dispose" in value && "disposed" in value) {
    out.add(value);
    return;
  }
  if (Array.isArray(value)) for (const v of value) collect(v, out, depth + 1);
  else if (value instanceof Map) for (const v of value.values()) collect(v, out, depth + 1);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collect(v, out, depth + 1);
}

function close(own: Set<Disposable>, result: unknown): void {
  const keepSet = new Set<unknown>();
  collect(result, keepSet);
  stack.pop();
  const parent = stack[stack.length - 1];
  for (const t of own) {
    if (keepSet.has(t)) parent?.add(t);
    else t.dispose();
  }
}

export function scope<T>(fn: () => T): T {
  const own = new Set<Disposable>();
  stack.push(own);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    close(own, undefined);
    throw e;
  }
  close(own, result);
  return result;
}
