/** The `lowrank` command: argument parsing and the commands. Keep this thin; work lives in packages. */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createCpuBackend } from "@lowrank/backend-cpu";
import {
  autoChoice, BACKEND_CHOICES, type BackendChoice, BackendError, probeWebGpu, resolveChoice, selectBackend,
} from "./backends.ts";
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
  generate      stream a model's continuation of a prompt (optionally with a PEFT adapter):
                ${GENERATE_USAGE}
  finetune      fine-tune a model with QLoRA, LoRA or full training (lowrank finetune --help)
  quantize      write a bitsandbytes 4-bit (NF4 + double quant) copy of a HF model directory:
                ${QUANTIZE_USAGE}
  dequantize    write a dense copy of a bitsandbytes 4-bit model directory: ${DEQUANTIZE_USAGE}
  serve         HTTP API: adapter registry, fine-tuning jobs, OpenAI-compatible inference:
                ${SERVE_USAGE}
  bench         benchmark suites (ranks, memory, peer, kernels, cpu, all) and benchmarks/results/REPORT.md:
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

export async function run(argv: string[], env: Env = process.env): Promise<number> {
  // finetune has its own flags; hand it everything but the command word.
  const first = commandIndex(argv);
  if (first >= 0 && argv[first] === "finetune" && !argv.slice(0, first).some((a) => a === "-h" || a === "--help" || a === "-v" || a === "--version")) {
    try {
      return await finetuneCommand([...argv.slice(0, first), ...argv.slice(first + 1)], env);
    } catch (err) {
      if (err instanceof BackendError) {
        console.error(`lowrank: ${err.message}`);
        return err.usage ? EXIT_USAGE : EXIT_FAIL;
      }
      throw err;
    }
  }
  // generate has its own flags too (lowrank generate --help).
  if (first >= 0 && argv[first] === "generate" && !argv.slice(0, first).some((a) => a === "-v" || a === "--version")) {
    return await generateCommand([...argv.slice(0, first), ...argv.slice(first + 1)], env, usage);
  }
  // bench and plan have their own flags; the work lives in benchmarks/src/cli.ts, loaded only when asked for.
  if (first >= 0 && (argv[first] === "bench" || argv[first] === "plan") && !argv.slice(0, first).some((a) => a === "-v" || a === "--version")) {
    const rest = [...argv.slice(0, first), ...argv.slice(first + 1)].filter((a, i, all) => !(a === "--backend" || all[i - 1] === "--backend"));
    const bench = await import("../../../benchmarks/src/cli.ts");
    return argv[first] === "plan" ? bench.planCommand(rest) : await bench.benchCommand(rest, env, `lowrank bench ${rest.join(" ")}`);
  }
  // serve has its own flags too (lowrank serve --help).
  if (first >= 0 && argv[first] === "serve" && !argv.slice(0, first).some((a) => a === "-v" || a === "--version")) {
    return await serveCli([...argv.slice(0, first), ...argv.slice(first + 1)], env, usage);
  }
  // quantize/dequantize have their own flags too (lowrank quantize --help).
  if (first >= 0 && (argv[first] === "quantize" || argv[first] === "dequantize") && !argv.slice(0, first).some((a) => a === "-h" || a === "--help" || a === "-v" || a === "--version")) {
    return await quantizeCommand(argv[first] as "quantize" | "dequantize", [...argv.slice(0, first), ...argv.slice(first + 1)], env, usage);
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
          { model: values.model, adapter: values.adapter, out: values.out, adapterName: values["adapter-name"], dtype: values.dtype, ignoreBaseModel: values["ignore-base-model"], dequantize: values.dequantize, backend: values.backend },
          usage,
        );
      default:
        return usage(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof BackendError) {
      console.error(`lowrank: ${err.message}`);
      return err.usage ? EXIT_USAGE : EXIT_FAIL;
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
  const cpu = createCpuBackend();
  const cpuDevice = cpu.device;
  cpu.dispose();
  const webgpu = await probeWebGpu(runtime);
  const auto = autoChoice(webgpu);
  let selected: { name: string; reason: string } | { error: string };
  try {
    // `option` was validated by resolveChoice above.
    const sel = await selectBackend(option as BackendChoice | undefined, env, webgpu);
    sel.backend.dispose();
    selected = { name: sel.name, reason: sel.reason };
  } catch (err) {
    if (!(err instanceof BackendError)) throw err;
    selected = { error: err.message };
  }
  const dataDir = resolveDataDir(dataDirFlag, env);
  const failed = "error" in selected;

  if (json) {
    console.log(JSON.stringify({ version: version(), runtime, runtimeVersion: runtimeVersion(runtime), cpu: { device: cpuDevice }, webgpu, auto, requested, source, selected, dataDir }, null, 2));
    return failed ? EXIT_FAIL : EXIT_OK;
  }
  const lines = [
    `lowrank ${version()} on ${runtime} ${runtimeVersion(runtime)} (${process.platform} ${process.arch})`,
    `  cpu     ${cpuDevice}`,
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
