/** The `lowrank` command: argument parsing and the commands. Keep this thin; work lives in packages. */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { asBackendError, autoChoice, BACKEND_CHOICES, type BackendChoice, describeBlas, probeWebGpu, resolveChoice, selectBackend } from "./backends.ts";
import { resolveDataDir } from "./data-dir.ts";
import { DEQUANTIZE_USAGE, QUANTIZE_USAGE, quantizeCommand } from "./quantize.ts";
import { finetuneCommand } from "./finetune.ts";
import { MERGE_USAGE, mergeCommand } from "./merge.ts";
import { GENERATE_USAGE, generateCommand } from "./generate.ts";
import { detectRuntime, runtimeVersion } from "./runtime.ts";
import { SERVE_USAGE, serveCli } from "./serve.ts";

type Env = Record<string, string | undefined>;

/** Exit codes: 0 ok, 1 the command failed, 2 usage error or command not available. */
export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
export const EXIT_USAGE = 2;

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  return pkg.version;
}

export function helpText(): string {
  return `lowrank ${version()}: LoRA/QLoRA fine-tuning in TypeScript on WebGPU or the CPU

Usage: lowrank <command> [options]

Commands:
  backends      show the backends this runtime offers and which one auto picks
  merge         fold a PEFT LoRA adapter into its base model and save a plain HF model directory:
                ${MERGE_USAGE}
  generate      stream a model's continuation of a prompt, or with --chat its reply in its chat template (optionally with a PEFT adapter):
                ${GENERATE_USAGE}
  finetune      fine-tune a model with QLoRA, LoRA or full training (lowrank finetune --help)
  quantize      write a bitsandbytes 4-bit (NF4 + double quant) copy of a HF model directory:
                ${QUANTIZE_USAGE}
  dequantize    write a dense copy of a bitsandbytes 4-bit model directory: ${DEQUANTIZE_USAGE}
  serve         HTTP API: adapter registry, fine-tuning jobs, OpenAI-compatible inference:
                ${SERVE_USAGE}
  bench         benchmark suites (ranks, memory, peer, kernels, cpu, gpu, models, all) and benchmarks/results/REPORT.md:
                lowrank bench <suite> [--quick] (lowrank bench --help)
  plan          memory a fine-tuning configuration needs, by category:
                lowrank plan --params 70e9 --method qlora --rank 16 [--layers --hidden --seq-len --batch-size]

Options:
  --backend <${BACKEND_CHOICES.join("|")}>  compute backend (default: $LOWRANK_BACKEND, else auto)
  --data-dir <dir>             models and datasets (default: $LOWRANK_DATA_DIR, else ../shared/data beside the repo)
  --json                       machine-readable output (backends)
  -h, --help                   show this help
  -v, --version                print the version

Runtimes: Node 20+ (npx lowrank), Bun (bun apps/cli/src/main.ts), Deno (deno run -A --unstable-webgpu apps/cli/src/main.ts).`;
}

/** Subcommands that parse their own flags (each has its own --help). */
const OWN_FLAGS: Record<string, { globalHelp: boolean; run: (command: string, rest: string[], env: Env) => Promise<number> }> = {
  finetune: { globalHelp: true, run: (_c, rest, env) => finetuneCommand(rest, env) },
  generate: { globalHelp: false, run: (_c, rest, env) => generateCommand(rest, env, usage) },
  serve: { globalHelp: false, run: (_c, rest, env) => serveCli(rest, env, usage) },
  quantize: { globalHelp: true, run: (c, rest, env) => quantizeCommand(c as "quantize", rest, env, usage) },
  dequantize: { globalHelp: true, run: (c, rest, env) => quantizeCommand(c as "dequantize", rest, env, usage) },
  // bench lives in benchmarks/src/cli.ts, loaded only when asked for; neither takes --backend.
  bench: { globalHelp: false, run: bench },
  plan: { globalHelp: false, run: async (_c, rest) => (await import("./plan.ts")).planCommand(withoutBackend(rest)) },
};

const withoutBackend = (args: string[]) => args.filter((a, i, all) => !(a === "--backend" || all[i - 1] === "--backend"));

async function bench(_command: string, args: string[], env: Env): Promise<number> {
  const rest = withoutBackend(args);
  const suites = await import("../../../benchmarks/src/cli.ts");
  return suites.benchCommand(rest, env, `lowrank bench ${rest.join(" ")}`);
}

export async function run(argv: string[], env: Env = process.env): Promise<number> {
  // Commands with their own flags get every argument but the command word. `-v` before the command
  // always means the global --version; `-h` before it means global help only where `global-help` says so.
  const first = commandIndex(argv);
  const own = first >= 0 ? OWN_FLAGS[argv[first]] : undefined;
  const before = first >= 0 ? argv.slice(0, first) : [];
  const globalFlag = (a: string) => a === "-v" || a === "--version" || (own?.globalHelp === true && (a === "-h" || a === "--help"));
  if (own && !before.some(globalFlag)) {
    try {
      return await own.run(argv[first], [...before, ...argv.slice(first + 1)], env);
    } catch (err) {
      const clean = asBackendError(err);
      if (clean) {
        console.error(`lowrank: ${clean.message}`);
        return clean.usage ? EXIT_USAGE : EXIT_FAIL;
      }
      throw err;
    }
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "v" },
        backend: { type: "string" },
        "data-dir": { type: "string" },
        json: { type: "boolean" },
        model: { type: "string" },
        adapter: { type: "string" },
        out: { type: "string" },
        "adapter-name": { type: "string" },
        dtype: { type: "string" },
        "ignore-base-model": { type: "boolean" },
        dequantize: { type: "boolean" },
      },
    });
  } catch (err) {
    return usage(err instanceof Error ? err.message : String(err));
  }
  const { values, positionals } = parsed;
  if (values.version) {
    console.log(version());
    return EXIT_OK;
  }
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === "help") {
    console.log(helpText());
    return EXIT_OK;
  }
  try {
    switch (command) {
      case "backends":
        if (rest.length) return usage(`backends takes no arguments (got ${rest.join(" ")})`);
        return await backendsCommand(values.backend, values["data-dir"], values.json ?? false, env);
      case "merge":
        if (rest.length) return usage(`merge takes no positional arguments (got ${rest.join(" ")}); use ${MERGE_USAGE}`);
        return await mergeCommand(
          {
            model: values.model,
            adapter: values.adapter,
            out: values.out,
            adapterName: values["adapter-name"],
            dtype: values.dtype,
            ignoreBaseModel: values["ignore-base-model"],
            dequantize: values.dequantize,
            backend: values.backend,
            dataDir: values["data-dir"],
          },
          usage,
          env,
        );
      default:
        return usage(`unknown command "${command}"`);
    }
  } catch (err) {
    const clean = asBackendError(err);
    if (clean) {
      console.error(`lowrank: ${clean.message}`);
      return clean.usage ? EXIT_USAGE : EXIT_FAIL;
    }
    throw err;
  }
}

/** Index of the command word: the first argument that is neither an option nor a global option's value. */
function commandIndex(argv: string[]): number {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--backend" || argv[i] === "--data-dir") i++;
    else if (!argv[i].startsWith("-")) return i;
  }
  return -1;
}

function usage(message: string): number {
  console.error(`lowrank: ${message}; see lowrank --help`);
  return EXIT_USAGE;
}

/** `lowrank backends`: what this runtime offers, what auto picks, and what the current settings select. */
async function backendsCommand(option: string | undefined, dataDirFlag: string | undefined, json: boolean, env: Env): Promise<number> {
  const { requested, source } = resolveChoice(option, env); // bad values fail before any probing
  const runtime = detectRuntime();
  // A bad LOWRANK_BLAS is reported on the cpu line (and fails the command), not thrown.
  let cpu: { device: string; blas: string } | { error: string };
  try {
    const be = createCpuBackend();
    cpu = { device: be.device, blas: describeBlas(be.blas) };
    be.dispose();
  } catch (err) {
    const clean = asBackendError(err);
    if (!clean) throw err;
    cpu = { error: clean.message };
  }
  const webgpu = await probeWebGpu(runtime);
  const auto = autoChoice(webgpu);
  let selected: { name: string; reason: string } | { error: string };
  try {
    // `option` was validated by resolveChoice above.
    const sel = await selectBackend(option as BackendChoice | undefined, env, webgpu);
    sel.backend.dispose();
    selected = { name: sel.name, reason: sel.reason };
  } catch (err) {
    const clean = asBackendError(err);
    if (!clean) throw err;
    selected = { error: clean.message };
  }
  const dataDir = resolveDataDir(dataDirFlag, env);
  const failed = "error" in selected || "error" in cpu;

  if (json) {
    console.log(
      JSON.stringify(
        { version: version(), runtime, runtimeVersion: runtimeVersion(runtime), cpu, webgpu, auto, requested, source, selected, dataDir },
        null,
        2,
      ),
    );
    return failed ? EXIT_FAIL : EXIT_OK;
  }
  const lines = [
    `lowrank ${version()} on ${runtime} ${runtimeVersion(runtime)} (${process.platform} ${process.arch})`,
    ...("error" in cpu ? [`  cpu     error: ${cpu.error}`] : [`  cpu     ${cpu.device}`, `  blas    ${cpu.blas}`]),
    webgpu.available
      ? `  webgpu  ${webgpu.description} via ${webgpu.implementation}${webgpu.f16 ? ", shader-f16" : ""}`
      : `  webgpu  unavailable: ${webgpu.cause}`,
    `auto: ${auto.name} (${auto.reason})`,
  ];
  if (source !== "default") {
    lines.push(`selected: ${"error" in selected ? `error: ${selected.error}` : `${selected.name} (${selected.reason})`}`);
  }
  lines.push(`data dir: ${dataDir.path} (${dataDir.source}${dataDir.exists ? "" : ", missing"})`);
  console.log(lines.join("\n"));
  return failed ? EXIT_FAIL : EXIT_OK;
}
