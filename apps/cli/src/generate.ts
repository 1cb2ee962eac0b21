/**
 * `lowrank generate`: load a model (and optionally a PEFT adapter), stream the prompt and its
 * continuation to stdout as plain text. With --chat the prompt is a user message (after an optional
 * --system one), laid out by the model's chat template with the generation prompt (ChatML when the
 * tokenizer has none, said on stderr), and only the reply is printed, up to its end-of-turn marker.
 * Diagnostics (backend, layout, tokens/s) go to stderr.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { loadAdapter } from "@lowrank/lora/node";
import { defaultSampling, loadGenerationConfig, loadHfModel, loadTokenizer, streamText } from "@lowrank/nn/node";
import { setDefaultBackend } from "@lowrank/tensor";
import { type ChatMessage, chatGenerationPrompt } from "@lowrank/trainer/node";
import { type BackendChoice, resolveChoice, selectBackend } from "./backends.ts";
import { locateDir, resolveDataDir, resolveModelDir } from "./data-dir.ts";

type Env = Record<string, string | undefined>;

export const GENERATE_USAGE =
  "lowrank generate --model <dir> --prompt <text> [--chat [--system <text>]] [--adapter <dir>] [--max-new-tokens 128] [--temperature 0] [--top-k 0] [--top-p 1] [--repetition-penalty 1] [--seed 0]";

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
        model: { type: "string" },
        prompt: { type: "string" },
        adapter: { type: "string" },
        "adapter-name": { type: "string" },
        "max-new-tokens": { type: "string" },
        temperature: { type: "string" },
        "top-k": { type: "string" },
        "top-p": { type: "string" },
        "repetition-penalty": { type: "string" },
        seed: { type: "string" },
        backend: { type: "string" },
        "data-dir": { type: "string" },
        chat: { type: "boolean" },
        system: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (err) {
    return usage(`${err instanceof Error ? err.message : String(err)} (${GENERATE_USAGE})`);
  }
  if (v.help) {
    console.log(
      `Usage: ${GENERATE_USAGE}\n\nTemperature 0 is greedy decoding. Relative paths are also looked up in the data directory.\n` +
        "--chat: the prompt is a user message (after --system, if given), rendered with the model's chat_template\n" +
        "(ChatML when it has none); only the reply is printed, up to the end of the assistant turn.",
    );
    return 0;
  }
  if (!v.model || v.prompt === undefined) return usage(`generate needs --model and --prompt (${GENERATE_USAGE})`);
  if (v.system !== undefined && !v.chat) return usage(`--system needs --chat (${GENERATE_USAGE})`);
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
    const model = await loadHfModel(modelDir, { backend: sel.backend, log: (l) => console.error(`lowrank generate: ${l}`) });
    const tokenizer = await loadTokenizer(modelDir);
    // The model's generation_config.json: more stop tokens, and the sampling used where no flag sets it.
    const gen = await loadGenerationConfig(modelDir);
    const sampling = defaultSampling(gen);
    const unset = (["temperature", "top-k", "top-p", "repetition-penalty"] as const).filter((f) => v[f] === undefined);
    if (gen && unset.length) {
      const keys = { temperature: "temperature", "top-k": "topK", "top-p": "topP", "repetition-penalty": "repetitionPenalty" } as const;
      for (const f of unset) opts[keys[f]] = sampling[keys[f]];
      console.error(`lowrank generate: ${unset.map((f) => `--${f} ${sampling[keys[f]]}`).join(", ")} from generation_config.json (flags override)`);
    }
    const eos = [...model.config.eos_token_id, ...(gen?.eos_token_id ?? []), ...(tokenizer.eosTokenId === null ? [] : [tokenizer.eosTokenId])];
    if (v.adapter) {
      await loadAdapter(
        model,
        locateDir(v.adapter as string, dataDir, cwd, "adapter_config.json", "--adapter"),
        (v["adapter-name"] as string | undefined) ?? "default",
      );
    }
    model.eval();
    console.error(`lowrank generate: ${sel.name} backend (${sel.backend.device}; ${sel.reason})`);
    const t0 = performance.now();
    let pieces = 0;
    if (v.chat) {
      const messages: ChatMessage[] = [
        ...(v.system !== undefined ? [{ role: "system" as const, content: v.system as string }] : []),
        { role: "user", content: v.prompt as string },
      ];
      const p = chatGenerationPrompt(tokenizer, messages);
      const t = tokenizer.chatTemplate;
      console.error(`lowrank generate: chat prompt ${t ? `from the model's chat_template (${t.file})` : "in ChatML: the tokenizer has no chat_template"}`);
      const stopTokens = [...eos, ...p.stopTokens];
      const out = new StopFilter(p.stop);
      for await (const text of streamText(model, tokenizer, p.ids, { ...opts, stopTokens })) {
        process.stdout.write(out.push(text));
        pieces++;
        if (out.stopped) break;
      }
      process.stdout.write(`${out.flush()}\n`);
    } else {
      process.stdout.write(v.prompt as string);
      for await (const text of streamText(model, tokenizer, v.prompt as string, { ...opts, stopTokens: eos })) {
        process.stdout.write(text);
        pieces++;
      }
      process.stdout.write("\n");
    }
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

/**
 * Streamed text cut at the first stop string (a multi-token end-of-turn marker such as ChatML's
 * `<|im_end|>` under a tokenizer without that token): a tail that could start a stop string is
 * held back until the next piece decides it.
 */
export class StopFilter {
  #text = "";
  #emitted = 0;
  stopped = false;
  constructor(readonly stops: readonly string[]) {}

  push(piece: string): string {
    if (this.stopped) return "";
    this.#text += piece;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.#text.indexOf(s, Math.max(0, this.#emitted - s.length));
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      return this.#take(cut);
    }
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.#text.length); k > hold; k--) {
        if (this.#text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    return this.#take(this.#text.length - hold);
  }

  /** What is still held back (the stream ended without a stop string). */
  flush(): string {
    return this.stopped ? "" : this.#take(this.#text.length);
  }

  #take(upTo: number): string {
    const out = this.#text.slice(this.#emitted, Math.max(this.#emitted, upTo));
    this.#emitted = Math.max(this.#emitted, upTo);
    return out;
  }
}
