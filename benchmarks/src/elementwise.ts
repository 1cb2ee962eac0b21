/**
 * Elementwise, reduce and copy kernels of the CPU backend, called directly on backend views (no
 * Tensor API around them), in GB/s of nominal traffic: each input element read once, each output
 * written once (a broadcast operand counts once). Shapes are those of a LoRA training step.
 *
 *   node --import tsx benchmarks/src/elementwise.ts [--quick] [--no-wasm] [--only <substring>]
 *
 * --no-wasm runs the TypeScript kernels only (CpuBackendOptions.wasm = false). Each row is the
 * best of several samples (not the median): on a shared 2-core machine the minimum is what
 * repeats from run to run.
 */
import type { DType, HostArray, Input, View } from "@lowrank/tensor";
import { fromF32 } from "@lowrank/tensor";
import { type CpuHandle, createCpuBackend } from "@lowrank/backend-cpu";
import { randomF32, table } from "./timing.ts";

type Be = ReturnType<typeof createCpuBackend>;

interface Case {
  name: string;
  /** Bytes read and written per call. */
  bytes: number;
  run: (be: Be) => CpuHandle;
}

const contiguous = (shape: number[]): View => {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  return { shape, strides, offset: 0 };
};
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
/** The view of `src` (contiguous) broadcast to `shape`: stride 0 on the dims `src` lacks or has as 1. */
const broadcast = (src: number[], shape: number[]): View => {
  const own = contiguous(src).strides;
  const lead = shape.length - src.length;
  return { shape, strides: shape.map((_, d) => (d < lead || src[d - lead] === 1 ? 0 : own[d - lead])), offset: 0 };
};
const permuted = (src: number[], perm: number[]): View => {
  const st = contiguous(src).strides;
  return { shape: perm.map((p) => src[p]), strides: perm.map((p) => st[p]), offset: 0 };
};

function data(dtype: DType, n: number, seed: number): HostArray {
  const v = randomF32(n, seed);
  if (dtype === "u8") return Uint8Array.from(v, (x) => (x > 0 ? 1 : 0));
  if (dtype === "i32") return Int32Array.from(v, (x) => Math.round(x * 1000));
  return dtype === "f32" ? v : fromF32(dtype, v);
}

function cases(be: Be): Case[] {
  const inputs = new Map<string, Input<CpuHandle>>();
  /** An input over a fresh storage of `storage` elements, viewed through `view`. */
  const inp = (key: string, dtype: DType, storage: number[], view: View = contiguous(storage)): Input<CpuHandle> => {
    let x = inputs.get(key);
    if (!x) {
      x = { handle: be.upload(data(dtype, size(storage), inputs.size + 1), dtype), dtype, view };
      inputs.set(key, x);
    }
    return { ...x, view };
  };
  const A = [1024, 256],
    B = [1024, 688],
    S = [8, 4, 128, 128];
  const nB = size(B),
    nS = size(S);
  const f = (n: number) => n * 4;
  return [
    { name: "add [1024,256]", bytes: f(3 * size(A)), run: (be) => be.binary("add", inp("a", "f32", A), inp("a2", "f32", A)) },
    { name: "mul [1024,688]", bytes: f(3 * nB), run: (be) => be.binary("mul", inp("b", "f32", B), inp("b2", "f32", B)) },
    { name: "mul scalar [1024,688]", bytes: f(2 * nB), run: (be) => be.binary("mul", inp("b", "f32", B), inp("one", "f32", [1], broadcast([], B))) },
    {
      name: "add row [1024,688]+[688]",
      bytes: f(2 * nB + 688),
      run: (be) => be.binary("add", inp("b", "f32", B), inp("row", "f32", [688], broadcast([688], B))),
    },
    {
      name: "mul col [1024,688]*[1024,1]",
      bytes: f(2 * nB + 1024),
      run: (be) => be.binary("mul", inp("b", "f32", B), inp("col", "f32", [1024, 1], broadcast([1024, 1], B))),
    },
    {
      name: "add mask [8,4,128,128]+[128,128]",
      bytes: f(2 * nS + 128 * 128),
      run: (be) => be.binary("add", inp("s", "f32", S), inp("mask", "f32", [128, 128], broadcast([128, 128], S))),
    },
    { name: "mul bf16 [1024,688]", bytes: 3 * nB * 2, run: (be) => be.binary("mul", inp("h", "bf16", B), inp("h2", "bf16", B)) },
    { name: "lt scalar [1024,688] -> u8", bytes: f(nB) + nB, run: (be) => be.binary("lt", inp("b", "f32", B), inp("one", "f32", [1], broadcast([], B))) },
    { name: "eq [1024,688] -> u8", bytes: f(2 * nB) + nB, run: (be) => be.binary("eq", inp("b", "f32", B), inp("b2", "f32", B)) },
    { name: "where u8 [1024,688]", bytes: nB + f(3 * nB), run: (be) => be.where(inp("m", "u8", B), inp("b", "f32", B), inp("b2", "f32", B)) },
    {
      name: "where u8, scalar b [8,4,128,128]",
      bytes: nS + f(2 * nS),
      run: (be) => be.where(inp("ms", "u8", S), inp("s", "f32", S), inp("one", "f32", [1], broadcast([], S))),
    },
    { name: "exp [1024,688]", bytes: f(2 * nB), run: (be) => be.unary("exp", inp("b", "f32", B)) },
    { name: "sigmoid [1024,688]", bytes: f(2 * nB), run: (be) => be.unary("sigmoid", inp("b", "f32", B)) },
    { name: "cast f32->bf16 [1024,688]", bytes: f(nB) + 2 * nB, run: (be) => be.cast(inp("b", "f32", B), "bf16") },
    {
      name: "copy permute [8,128,4,64]->[8,4,128,64]",
      bytes: f(2 * 8 * 128 * 4 * 64),
      run: (be) => be.copy(inp("p", "f32", [8, 128, 4, 64], permuted([8, 128, 4, 64], [0, 2, 1, 3]))),
    },
    { name: "copy transpose [1024,688]->[688,1024]", bytes: f(2 * nB), run: (be) => be.copy(inp("b", "f32", B, permuted(B, [1, 0]))) },
    { name: "sum last axis [1024,688]", bytes: f(nB + 1024), run: (be) => be.reduce("sum", inp("b", "f32", B), 1) },
    { name: "sum axis 0 [1024,688] (permuted)", bytes: f(nB + 688), run: (be) => be.reduce("sum", inp("b", "f32", B, permuted(B, [1, 0])), 1) },
    { name: "max last axis [8,4,128,128]", bytes: f(nS + nS / 128), run: (be) => be.reduce("max", inp("s", "f32", S), 1) },
    { name: "concat 2x[1024,344] axis 1", bytes: f(2 * nB), run: (be) => be.concat([inp("c1", "f32", [1024, 344]), inp("c2", "f32", [1024, 344])], 1) },
  ];
}

/** Milliseconds per call: the fastest of `samples` batches of calls lasting about `sampleMs` each. */
function best(fn: () => void, samples: number, sampleMs: number): number {
  let t0 = performance.now();
  let calls = 0;
  while (performance.now() - t0 < sampleMs || calls < 3) fn(), calls++;
  const reps = Math.max(1, Math.round((calls * sampleMs) / (performance.now() - t0)));
  let min = Infinity;
  for (let s = 0; s < samples; s++) {
    t0 = performance.now();
    for (let r = 0; r < reps; r++) fn();
    min = Math.min(min, (performance.now() - t0) / reps);
  }
  return min;
}

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const wasm = !args.includes("--no-wasm");
const only = args.includes("--only") ? args[args.indexOf("--only") + 1] : "";
const be = createCpuBackend({ threads: 0, wasm });
console.log(`CPU elementwise kernels, ${be.device}${wasm ? "" : " (--no-wasm)"}${quick ? ", quick" : ""}`);
const rows: (string | number)[][] = [];
for (const c of cases(be)) {
  if (only && !c.name.includes(only)) continue;
  const ms = best(() => be.free(c.run(be)), quick ? 5 : 15, quick ? 20 : 50);
  rows.push([c.name, ms, c.bytes / ms / 1e6]);
}
console.log(table(["kernel (f32 unless named)", "ms", "GB/s"], rows));
be.dispose();
