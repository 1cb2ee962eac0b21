/**
 * A profiling proxy over any Backend: every primitive and fused kernel call is timed and counted
 * by op (binary ops by their operator, e.g. "binary.mul"), with matmul FLOPs from the operand
 * views. The model is built on the proxy, so every kernel the trainer dispatches goes through it.
 * On the CPU backend calls are synchronous, so the time of a call is the kernel's time; what is
 * left of a step ("host overhead") is the core's JS: autograd bookkeeping, views, scopes, the
 * loader and the optimizer's orchestration. On WebGPU a call only encodes work; the wait shows up
 * in `read`/`sync`.
 */
import type { Backend, Input } from "@lowrank/tensor";

export interface OpStat {
  op: string;
  calls: number;
  ms: number;
  /** Floating-point operations (matmul, matmul4bit only). */
  flops: number;
}

export interface Profiler {
  backend: Backend;
  stats(): OpStat[];
  reset(): void;
  /** Sum of the time spent inside backend calls. */
  totalMs(): number;
}

/** Methods that are bookkeeping, not kernels: not timed. */
const UNTIMED = new Set(["memory", "resetPeak", "dispose", "constructor"]);
/** Methods whose first argument names the operator. */
const BY_OPERATOR = new Set(["unary", "binary", "reduce"]);

const elems = (x: Input) => x.view.shape.reduce((a, b) => a * b, 1);

function matmulFlops(a: Input, b: Input): number {
  const s = a.view.shape;
  const M = s[s.length - 2];
  const K = s[s.length - 1];
  const N = b.view.shape[b.view.shape.length - 1];
  return ((2 * elems(a)) / (M * K)) * M * N * K;
}

export function profileBackend(inner: Backend): Profiler {
  const table = new Map<string, OpStat>();
  const add = (op: string, ms: number, flops: number) => {
    let s = table.get(op);
    if (!s) table.set(op, (s = { op, calls: 0, ms: 0, flops: 0 }));
    s.calls++;
    s.ms += ms;
    s.flops += flops;
  };
  const wrap = (target: object, name: string, prefix: string) => {
    const fn = (target as Record<string, unknown>)[name] as (...a: unknown[]) => unknown;
    return (...args: unknown[]) => {
      const t0 = performance.now();
      const out = Reflect.apply(fn, target, args);
      const label = prefix + name + (BY_OPERATOR.has(name) ? `.${String(args[0])}` : "");
      let flops = 0;
      if (name === "matmul") flops = matmulFlops(args[0] as Input, args[1] as Input);
      if (name === "matmul4bit") {
        const x = args[0] as Input;
        const w = args[1] as { outFeatures: number; inFeatures: number };
        flops = 2 * (elems(x) / x.view.shape[x.view.shape.length - 1]) * w.outFeatures * w.inFeatures;
      }
      if (out instanceof Promise) {
        return out.then((v) => {
          add(label, performance.now() - t0, flops);
          return v;
        });
      }
      add(label, performance.now() - t0, flops);
      return out;
    };
  };
  const fusedProxy = inner.fused
    ? new Proxy(inner.fused, {
        get: (t, p) => (typeof p === "string" && typeof (t as Record<string, unknown>)[p] === "function" ? wrap(t, p, "fused.") : Reflect.get(t, p)),
      })
    : undefined;
  const backend = new Proxy(inner, {
    get(t, p) {
      if (p === "fused") return fusedProxy;
      const v = Reflect.get(t, p, t);
      if (typeof p !== "string" || typeof v !== "function" || UNTIMED.has(p)) return typeof v === "function" ? v.bind(t) : v;
      return wrap(t, p, "");
    },
  });
  return {
    backend,
    stats: () => [...table.values()].sort((a, b) => b.ms - a.ms),
    reset: () => table.clear(),
    totalMs: () => [...table.values()].reduce((s, x) => s + x.ms, 0),
  };
}
