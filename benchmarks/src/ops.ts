/**
 * Per-op throughput through the Tensor API on the CPU backend, in GB/s of nominal traffic
 * (each input read once, each output written once: what a fused, cache-perfect kernel would move).
 * Each call runs in a scope, so allocation and disposal of the outputs are part of the cost.
 */
import { crossEntropy, rmsNorm, scope, setDefaultBackend, softmax, tensor } from "@lowrank/tensor";
import type { Tensor } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { fmt, randomF32, table, time } from "./timing.ts";

export interface OpResult {
  op: string;
  shape: number[];
  ms: number;
  gbps: number;
  /** Nominal bytes per call. */
  bytes: number;
  samples: string;
}

interface OpCase {
  op: string;
  shape: [number, number];
  /** Nominal bytes moved for rows x cols. */
  bytes: (R: number, C: number) => number;
  setup: (R: number, C: number) => { run: () => void; dispose: () => void };
}

const f32 = (R: number, C: number, seed: number): Tensor => tensor(randomF32(R * C, seed), { shape: [R, C] });

const CASES: OpCase[] = [
  { op: "add", shape: [2048, 512], bytes: (R, C) => 3 * R * C * 4, setup: (R, C) => pair(f32(R, C, 1), f32(R, C, 2), (a, b) => a.add(b)) },
  {
    op: "mul (broadcast [C])",
    shape: [2048, 512],
    bytes: (R, C) => (2 * R * C + C) * 4,
    setup: (R, C) => pair(f32(R, C, 1), tensor(randomF32(C, 3), { shape: [C] }), (a, b) => a.mul(b)),
  },
  { op: "exp", shape: [2048, 512], bytes: (R, C) => 2 * R * C * 4, setup: (R, C) => one(f32(R, C, 1), (x) => x.exp()) },
  { op: "sum (last axis)", shape: [2048, 512], bytes: (R, C) => (R * C + R) * 4, setup: (R, C) => one(f32(R, C, 1), (x) => x.sum(-1)) },
  { op: "softmax", shape: [2048, 512], bytes: (R, C) => 2 * R * C * 4, setup: (R, C) => one(f32(R, C, 1), (x) => softmax(x)) },
  {
    op: "rmsNorm",
    shape: [2048, 512],
    bytes: (R, C) => (2 * R * C + C) * 4,
    setup: (R, C) => pair(f32(R, C, 1), tensor(randomF32(C, 3), { shape: [C] }), (x, w) => rmsNorm(x, w)),
  },
  { op: "crossEntropy fwd+bwd", shape: [2048, 512], bytes: (R, C) => (3 * R * C + R) * 4, setup: crossEntropyCase },
  { op: "crossEntropy fwd+bwd", shape: [256, 32000], bytes: (R, C) => (3 * R * C + R) * 4, setup: crossEntropyCase },
];

function one(x: Tensor, f: (x: Tensor) => Tensor) {
  return { run: () => scope(() => void f(x)), dispose: () => x.dispose() };
}
function pair(a: Tensor, b: Tensor, f: (a: Tensor, b: Tensor) => Tensor) {
  return { run: () => scope(() => void f(a, b)), dispose: () => (a.dispose(), b.dispose()) };
}
function crossEntropyCase(R: number, C: number) {
  const logits = f32(R, C, 1).setRequiresGrad();
  const t = new Int32Array(R);
  for (let i = 0; i < R; i++) t[i] = (i * 7919) % C;
  const targets = tensor(t, { shape: [R], dtype: "i32" });
  return {
    run: () =>
      scope(() => {
        crossEntropy(logits, targets).backward();
        logits.zeroGrad();
      }),
    dispose: () => (logits.dispose(), targets.dispose()),
  };
}

export function benchOps(quick: boolean, log: (s: string) => void = console.log): OpResult[] {
  const backend = createCpuBackend({ threads: 0 });
  setDefaultBackend(backend);
  const results: OpResult[] = [];
  try {
    for (const c of CASES) {
      const [R, C] = c.shape;
      if (quick && R * C > 2048 * 512) continue;
      const { run, dispose } = c.setup(R, C);
      try {
        const t = time(run, { warmup: 2, samples: quick ? 3 : 7, sampleMs: quick ? 40 : 150 });
        const bytes = c.bytes(R, C);
        results.push({ op: c.op, shape: [R, C], ms: t.ms, gbps: bytes / t.ms / 1e6, bytes, samples: `${t.samples}x${t.reps}` });
        log(`  ${c.op} [${R}, ${C}]: ${fmt(t.ms)} ms, ${fmt(bytes / t.ms / 1e6)} GB/s`);
      } finally {
        dispose();
      }
    }
  } finally {
    setDefaultBackend(null);
    backend.dispose();
  }
  return results;
}

export function opsTable(results: OpResult[]): string {
  return table(
    ["op (Tensor API, CPU backend, f32)", "shape", "ms (median)", "GB/s"],
    results.map((r) => [r.op, `[${r.shape.join(", ")}]`, r.ms, r.gbps]),
  );
}
