/**
 * f32 matmul throughput on the CPU: the engine (WASM SIMD, default threads), the engine on the
 * calling thread only, the TypeScript blocked kernel and the naive triple loop, all measured in
 * the same run so the engine/naive ratio is a measurement, not an assumption.
 */
import { createMatmulEngine, matmulBlocked, matmulNaive } from "@lowrank/backend-cpu";
import { fmt, randomF32, table, time } from "./timing.ts";

export interface MatmulResult {
  name: string;
  M: number;
  N: number;
  K: number;
  /** GFLOP/s per implementation: engine (default threads), engineThreads0, typescriptBlocked, naive. */
  gflops: Record<string, number>;
  /** Median ms per call per implementation. */
  ms: Record<string, number>;
  /** Samples x calls behind each median. */
  samples: Record<string, string>;
  engineOverNaive: number;
  /** max |engine - blocked| / max |blocked|: guards against timing a wrong kernel. */
  relErr: number;
}

const SHAPES: [string, number, number, number][] = [
  ["256³", 256, 256, 256],
  ["512³", 512, 512, 512],
  ["1024³", 1024, 1024, 1024],
  ["LoRA down x·A (M=512, K=4096, N=16)", 512, 16, 4096],
  ["LoRA up h·B (M=512, K=16, N=4096)", 512, 4096, 16],
];

export async function benchMatmul(quick: boolean, log: (s: string) => void = console.log): Promise<{ results: MatmulResult[]; engine: string }> {
  const engine = createMatmulEngine();
  const engine0 = createMatmulEngine({ threads: 0 });
  await engine.ready();
  const description = engine.describe();
  const impls: [string, (A: Float32Array, B: Float32Array, C: Float32Array, M: number, N: number, K: number) => void][] = [
    ["engine", (A, B, C, M, N, K) => engine.matmul(A, B, C, M, N, K)],
    ["engineThreads0", (A, B, C, M, N, K) => engine0.matmul(A, B, C, M, N, K)],
    ["typescriptBlocked", matmulBlocked],
    ["naive", matmulNaive],
  ];
  // JIT the naive loop on a small problem so its single timed call at 1024 is not a cold start.
  {
    const a = randomF32(64 * 64, 1);
    const c = new Float32Array(64 * 64);
    for (let i = 0; i < 20; i++) matmulNaive(a, a, c, 64, 64, 64);
  }
  const results: MatmulResult[] = [];
  try {
    for (const [name, M, N, K] of SHAPES) {
      const A = randomF32(M * K, 1),
        B = randomF32(K * N, 2);
      const flops = 2 * M * N * K;
      const r: MatmulResult = { name, M, N, K, gflops: {}, ms: {}, samples: {}, engineOverNaive: NaN, relErr: NaN };
      const outs: Record<string, Float32Array> = {};
      for (const [impl, fn] of impls) {
        const C = (outs[impl] = new Float32Array(M * N));
        const slow = impl === "naive" && flops > 1e9;
        const t = time(
          () => fn(A, B, C, M, N, K),
          slow ? { warmup: 0, samples: quick ? 1 : 3, maxReps: 1 } : { warmup: 2, samples: quick ? 3 : 7, sampleMs: quick ? 40 : 150 },
        );
        r.ms[impl] = t.ms;
        r.gflops[impl] = flops / t.ms / 1e6;
        r.samples[impl] = `${t.samples}x${t.reps}`;
      }
      r.engineOverNaive = r.gflops.engine / r.gflops.naive;
      const ref = outs.typescriptBlocked,
        got = outs.engine;
      let d = 0,
        m = 0;
      for (let i = 0; i < ref.length; i++) {
        d = Math.max(d, Math.abs(got[i] - ref[i]));
        m = Math.max(m, Math.abs(ref[i]));
      }
      r.relErr = d / (m || 1);
      results.push(r);
      log(`  ${name}: ${impls.map(([i]) => `${i} ${fmt(r.gflops[i])}`).join(", ")} GFLOP/s; engine/naive ${fmt(r.engineOverNaive)}x`);
    }
  } finally {
    engine.dispose();
    engine0.dispose();
  }
  return { results, engine: description };
}

export function matmulTable(results: MatmulResult[], engine: string): string {
  const impls = ["engine", "engineThreads0", "typescriptBlocked", "naive"];
  return table(
    ["f32 matmul, GFLOP/s (median)", `engine (${engine})`, "engine threads 0", "typescript blocked", "naive", "engine/naive", "engine/threads 0"],
    results.map((r) => [r.name, ...impls.map((i) => r.gflops[i]), `${fmt(r.engineOverNaive)}x`, `${fmt(r.gflops.engine / r.gflops.engineThreads0)}x`]),
  );
}
