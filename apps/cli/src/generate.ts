/**
 * `lowrank generate`: load a model (and optionally a PEFT adapter), stream the prompt and its
 * continuation to stdout as plain text. Diagnostics (backend, tokens/s) go to stderr.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { loadAdapter } from "@lowrank/lora";
import { loadHfModel, loadTokenizer, streamText } from "@lowrank/nn";
import { setDefaultBackend } from "@lowrank/tensor";
import { type BackendChoice, resolveChoice, selectBackend } from "./backends.ts";
import { locateInDataDir, resolveDataDir, resolveModelDir } from "./data-dir.ts";

type Env = Record<string, string | undefined>;

export const GENERATE_USAGE =
  "lowrank generate --model <dir> --prompt <text> [--adapter <dir>] [--max-new-tokens 128] [--temperature 0] [--top-k 0] [--top-p 1] [--repetition-penalty 1] [--seed 0]";

function number(v: Record<string, unknown>, flag: string, def: number, ok: (n: number) => boolean, what: string): number {
  const raw = v[flag];
  if (raw === undefined) return def;
  const n = Number(raw);
  if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(n) || !ok(n)) throw new RangeError(`--${flag} ${String(raw)}: expected ${what}`);
  return n;
}

/** Returns the exit code: 0 done, 1 failed (message on stderr), 2 usage. */
export async function generateCommand(argv: string[], env: Env, usage: (message: string) => number): Promise<number> {
  let v: Record<string, string | boolean | undefined>;
  try {
    v = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        model: { type: "string" }, prompt: { type: "string" }, adapter: { type: "string" }, "adapter-name": { type: "string" },
        "max-new-tokens": { type: "string" }, temperature: { type: "string" }, "top-k": { type: "string" }, "top-p": { type: "string" },
        "repetition-penalty": { type: "string" }, seed: { type: "string" }, backend: { type: "string" }, "data-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (err) {
    return usage(`${err instanceof Error ? err.message : String(err)} (${GENERATE_USAGE})`);
  }
  if (v.help) {
    console.log(`Usage: ${GENERATE_USAGE}\n\nTemperature 0 is greedy decoding. Relative paths are also looked up in the data directory.`);
    return 0;
  }
  if (!v.model || v.prompt === undefined) return usage(`generate needs --model and --prompt (${GENERATE_USAGE})`);
  let opts;
  try {
    opts = {
      maxNewTokens: number(v, "max-new-tokens", 128, (n) => Number.isInteger(n) && n > 0, "a positive integer"),
      temperature: number(v, "temperature", 0, (n) => n >= 0, "a number >= 0"),
      topK: number(v, "top-k", 0, (n) => Number.isInteger(n) && n >= 0, "an integer >= 0"),
      topP: number(v, "top-p", 1, (n) => n > 0 && n <= 1, "a number in (0, 1]"),
      repetitionPenalty: number(v, "repetition-penalty", 1, (n) => n > 0, "a number > 0"),
      seed: number(v, "seed", 0, (n) => Number.isInteger(n) && n >= 0, "an integer >= 0"),
    };
    resolveChoice(v.backend as string | undefined, env);
  } catch (err) {
    return usage(err instanceof Error ? err.message : String(err));
  }
  const dataDir = resolveDataDir(v["data-dir"] as string | undefined, env).path;
  const cwd = process.cwd();
  let modelDir: string;
  try {
    modelDir = await resolveModelDir(v.model as string, dataDir, cwd, env);
  } catch (err) {
    console.error(`lowrank generate: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const sel = await selectBackend(v.backend as BackendChoice | undefined, env);
  setDefaultBackend(sel.backend);
  try {
    const model = await loadHfModel(modelDir, { backend: sel.backend });
    const tokenizer = await loadTokenizer(modelDir);
    if (v.adapter) {
      await loadAdapter(model, locateInDataDir(v.adapter as string, dataDir, cwd), (v["adapter-name"] as string | undefined) ?? "default");
    }
    model.eval();
    console.error(`lowrank generate: ${sel.name} backend (${sel.backend.device}; ${sel.reason})`);
    const t0 = performance.now();
    let pieces = 0;
    process.stdout.write(v.prompt as string);
    for await (const text of streamText(model, tokenizer, v.prompt as string, opts)) {
      process.stdout.write(text);
      pieces++;
    }
    process.stdout.write("\n");
    const s = (performance.now() - t0) / 1000;
    console.error(`lowrank generate: ${pieces} text pieces in ${s.toFixed(2)} s (${(pieces / s).toFixed(1)}/s)`);
    return 0;
  } catch (err) {
    console.error(`lowrank generate: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    sel.backend.dispose();
  }
}
