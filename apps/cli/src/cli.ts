/** The `lowrank` command: argument parsing and the commands. Keep this thin; work lives in packages. */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createCpuBackend } from "@lowrank/backend-cpu";
import {
  autoChoice, BACKEND_CHOICES, type BackendChoice, BackendError, probeWebGpu, resolveChoice, selectBackend,
} from "./backends.ts";
import { resolveDataDir } from "./data-dir.ts";
import { detectRuntime, runtimeVersion } from "./runtime.ts";

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
  finetune      not available yet (the trainer lands with issue 7)

Options:
  --backend <${BACKEND_CHOICES.join("|")}>  compute backend (default: $LOWRANK_BACKEND, else auto)
  --data-dir <dir>             models and datasets (default: $LOWRANK_DATA_DIR, else ../shared/data beside the repo)
  --json                       machine-readable output (backends)
  -h, --help                   show this help
  -v, --version                print the version

Runtimes: Node 20+ (npx lowrank), Bun (bun apps/cli/src/main.ts), Deno (deno run -A --unstable-webgpu apps/cli/src/main.ts).`;
}

export async function run(argv: string[], env: Env = process.env): Promise<number> {
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
      case "finetune":
        console.error("not available yet: the trainer lands with issue 7");
        return EXIT_USAGE;
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
      ? `  webgpu  ${webgpu.description} via ${webgpu.implementation}${webgpu.f16 ? ", shader-f16" : ""}; kernels not implemented yet (issue 3)`
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
