/**
 * CPU benchmarks: `npm run bench -w @lowrank/benchmarks` (node --import tsx src/run.ts).
 * Flags: --quick (fewer samples, skips the largest op case), --out <file> (JSON path; default
 * results/cpu-<YYYY-MM-DD>.json). Also runs as `bun src/run.ts` and `deno run -A src/run.ts`.
 */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { benchMatmul, matmulTable } from "./matmul.ts";
import { benchOps, opsTable } from "./ops.ts";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const outIdx = args.indexOf("--out");
const date = new Date().toISOString().slice(0, 10);
const here = dirname(fileURLToPath(import.meta.url));
const out = outIdx >= 0 && args[outIdx + 1] ? resolve(args[outIdx + 1]) : resolve(here, "..", "results", `cpu-${date}.json`);

const g = globalThis as { Bun?: { version: string }; Deno?: { version: { deno: string } } };
const runtime = g.Bun ? `bun ${g.Bun.version}` : g.Deno ? `deno ${g.Deno.version.deno}` : `node ${process.versions.node}`;
const cpu = cpus();
const machine = `${cpu[0]?.model ?? "unknown cpu"}, ${cpu.length} logical cores`;
const command = `${g.Bun ? "bun" : g.Deno ? "deno run -A" : "node --import tsx"} src/run.ts ${args.join(" ")}`.trim();

console.log(`CPU benchmarks${quick ? " (quick)" : ""}: ${runtime}, ${machine}`);
console.log("matmul:");
const matmul = await benchMatmul(quick);
console.log("ops:");
const ops = benchOps(quick);

console.log(`\n${matmulTable(matmul.results, matmul.engine)}\n`);
console.log(`${opsTable(ops)}\n`);

const report = { date, command, runtime, machine, quick, engine: matmul.engine, matmul: matmul.results, ops };
mkdirSync(dirname(out), { recursive: true });
// Write then rename, so a crashed run never leaves a half-written results file.
const tmp = `${out}.${process.pid}.tmp`;
writeFileSync(tmp, JSON.stringify(report, null, 2) + "\n");
renameSync(tmp, out);
console.log(`wrote ${out}`);
