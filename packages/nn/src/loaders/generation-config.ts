/**
 * generation_config.json: what a published model says about generating with it, as transformers
 * reads it (GenerationConfig): the stop tokens (Llama 3 instruct stops at <|eot_id|>, which its
 * config.json may not list) and the default sampling a caller uses when it sets none itself.
 */
import { exists } from "@lowrank/safetensors";
import { joinPath, readJson } from "./files.ts";

export interface GenerationDefaults {
  /** Stop tokens (eos_token_id, a number or a list); empty when the file names none. */
  eos_token_id: number[];
  /** Sampling on (do_sample); false means greedy whatever the other fields say, as in transformers. */
  do_sample: boolean;
  temperature: number | null;
  top_k: number | null;
  top_p: number | null;
  repetition_penalty: number | null;
  /** The file it came from, for messages. */
  file: string;
}

/** Validate a generation_config.json value; errors name the file, the field and what was expected. */
export function parseGenerationConfig(json: unknown, file = "generation_config.json"): GenerationDefaults {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new Error(`${file}: expected a JSON object`);
  const c = json as Record<string, unknown>;
  const bad = (field: string, expected: string) => new Error(`${file}: ${field} = ${JSON.stringify(c[field])}: expected ${expected}`);
  const eos = c.eos_token_id ?? [];
  const ids = typeof eos === "number" ? [eos] : eos;
  if (!Array.isArray(ids) || !ids.every((i) => Number.isSafeInteger(i) && i >= 0)) throw bad("eos_token_id", "a token id or a list of token ids");
  const num = (field: string, ok: (n: number) => boolean, expected: string): number | null => {
    const v = c[field];
    if (v === undefined || v === null) return null;
    if (typeof v !== "number" || !ok(v)) throw bad(field, expected);
    return v;
  };
  if (c.do_sample !== undefined && typeof c.do_sample !== "boolean") throw bad("do_sample", "true or false");
  return {
    eos_token_id: ids as number[],
    do_sample: c.do_sample === true,
    temperature: num("temperature", (n) => n >= 0, "a number >= 0"),
    top_k: num("top_k", (n) => Number.isInteger(n) && n >= 0, "an integer >= 0"),
    top_p: num("top_p", (n) => n > 0 && n <= 1, "a number in (0, 1]"),
    repetition_penalty: num("repetition_penalty", (n) => n > 0, "a number > 0"),
    file,
  };
}

/** A model directory's generation_config.json, or null when it has none. */
export async function loadGenerationConfig(dir: string): Promise<GenerationDefaults | null> {
  const path = await joinPath(dir, "generation_config.json");
  if (!(await exists(path))) return null;
  return parseGenerationConfig(await readJson(path, "the model's generation_config.json"), path);
}

/** The sampling a caller gets when it sets none: greedy unless the file turns sampling on. */
export function defaultSampling(g: GenerationDefaults | null): { temperature: number; topK: number; topP: number; repetitionPenalty: number } {
  const greedy = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: g?.repetition_penalty ?? 1 };
  if (!g?.do_sample) return greedy;
  // transformers' GenerationConfig defaults for fields the file leaves out: temperature 1, top_k 50, top_p 1.
  return { temperature: g.temperature ?? 1, topK: g.top_k ?? 50, topP: g.top_p ?? 1, repetitionPenalty: g.repetition_penalty ?? 1 };
}
