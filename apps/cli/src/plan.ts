/**
 * `lowrank plan`: the memory one training step needs, from a parameter count (a known shape or one
 * derived from --layers/--hidden) and the method. The formula is @lowrank/trainer's estimate(),
 * the one the server's job admission uses; benchmarks/test/plan.test.ts checks it against measured steps.
 */
import { parseArgs } from "node:util";
import { LINEAR_TARGETS, type PlanMethod, planShapeFor, planText } from "@lowrank/trainer";

export const PLAN_USAGE =
  "lowrank plan --params <n> --method <qlora|lora|full> [--rank 8] [--layers N --hidden N] [--seq-len 512] [--batch-size 1] [--target-modules all-linear|q_proj,v_proj] [--dropout 0.05] [--recompute-activations on|off]";

/** `lowrank plan ...`: print the memory a configuration needs (@lowrank/trainer's estimate). */
export function planCommand(argv: string[]): number {
  let v;
  try {
    v = parseArgs({
      args: argv,
      options: {
        params: { type: "string" },
        method: { type: "string" },
        rank: { type: "string" },
        layers: { type: "string" },
        hidden: { type: "string" },
        "seq-len": { type: "string" },
        "batch-size": { type: "string" },
        "target-modules": { type: "string" },
        dropout: { type: "string" },
        "recompute-activations": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    console.error(`lowrank plan: ${(e as Error).message}; usage: ${PLAN_USAGE}`);
    return 2;
  }
  if (v.help) {
    console.log(PLAN_USAGE);
    return 0;
  }
  const errors: string[] = [];
  const num = (name: string, raw: string | undefined, dflt: number | undefined, int: boolean): number | undefined => {
    if (raw === undefined) return dflt;
    const x = Number(raw);
    if (!Number.isFinite(x) || x <= 0 || (int && !Number.isInteger(x))) errors.push(`--${name} must be a positive ${int ? "integer" : "number"}, got ${raw}`);
    return x;
  };
  const params = num("params", v.params, undefined, false);
  if (params === undefined) errors.push("--params is required (e.g. --params 70e9)");
  const method = (v.method ?? "qlora") as PlanMethod;
  if (!["full", "lora", "qlora"].includes(method)) errors.push(`--method must be qlora, lora or full, got ${v.method}`);
  const rank = num("rank", v.rank, 8, true) as number;
  const layers = num("layers", v.layers, undefined, true);
  const hidden = num("hidden", v.hidden, undefined, true);
  const seq = num("seq-len", v["seq-len"], 512, true) as number;
  const batch = num("batch-size", v["batch-size"], 1, true) as number;
  const dropout = v.dropout === undefined ? 0.05 : Number(v.dropout);
  if (!(dropout >= 0 && dropout < 1)) errors.push(`--dropout must be in [0, 1), got ${v.dropout}`);
  const tm = v["target-modules"] ?? "all-linear";
  const targets: "all-linear" | string[] = tm === "all-linear" ? "all-linear" : tm.split(",").map((s) => s.trim());
  if (targets !== "all-linear" && targets.some((t) => !(LINEAR_TARGETS as readonly string[]).includes(t)))
    errors.push(`--target-modules: use all-linear or names among ${LINEAR_TARGETS.join(",")}`);
  const again = v["recompute-activations"];
  if (again !== undefined && again !== "on" && again !== "off") errors.push(`--recompute-activations must be on or off, got ${again}`);
  if (errors.length) {
    console.error(`lowrank plan: ${errors.join("; ")}\nusage: ${PLAN_USAGE}`);
    return 2;
  }
  const { shape, how } = planShapeFor(params as number, layers, hidden);
  const input = { shape, method, rank, targets, batch, seq, dropout, recompute: again === undefined ? undefined : again === "on" };
  console.log(planText(input, how));
  return 0;
}
