/**
 * Tokenizers behind one small interface: Hugging Face tokenizer.json (through
 * @huggingface/tokenizers) and llama2.c's tok*.bin (llama2c-tokenizer.ts).
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { type ChatTemplate, chatTemplateFromConfig } from "../chat-template.ts";
import { exists } from "@lowrank/safetensors";
import { joinPath, readBytes, readJson } from "./files.ts";

export interface EncodeOptions {
  /** Add the tokenizer's special tokens, BOS for Llama (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out BOS/EOS/UNK and other special tokens (default true). */
  skipSpecialTokens?: boolean;
}

export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  /** The model's chat template; null or absent when it has none (callers then use ChatML). */
  readonly chatTemplate?: ChatTemplate | null;
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: readonly number[], opts?: DecodeOptions): string;
}

/** A tokenizer.json + tokenizer_config.json pair through @huggingface/tokenizers. */
export class HfTokenizer implements TextTokenizer {
  readonly tokenizer: Tokenizer;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly vocabSize: number;
  readonly chatTemplate: ChatTemplate | null;

  /** `configFile` names tokenizer_config.json (or wherever the chat template came from) in errors. */
  constructor(tokenizerJson: object, tokenizerConfig: object = {}, configFile = "tokenizer_config.json") {
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    const cfg = tokenizerConfig as Record<string, unknown>;
    const id = (tok: unknown): number | null => {
      const content = typeof tok === "string" ? tok : (tok as { content?: unknown } | null)?.content;
      return typeof content === "string" ? this.tokenizer.token_to_id(content) ?? null : null;
    };
    this.bosTokenId = id(cfg.bos_token);
    this.eosTokenId = id(cfg.eos_token);
    this.vocabSize = this.tokenizer.get_vocab(true).size;
    const added = (tokenizerJson as { added_tokens?: { content?: unknown; special?: unknown }[] }).added_tokens ?? [];
    const special = added.filter((t) => t.special === true && typeof t.content === "string").map((t) => t.content as string);
    this.chatTemplate = chatTemplateFromConfig(cfg, configFile, special);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    // @huggingface/tokenizers throws on an empty list; TextStream decodes empty windows.
    if (ids.length === 0) return "";
    return this.tokenizer.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? true });
  }
}

/**
 * Load `dir/tokenizer.json` (required) and `dir/tokenizer_config.json` (optional). The chat template
 * is tokenizer_config.json's `chat_template`, unless the directory has `chat_template.jinja` or
 * `chat_template.json` (how newer transformers saves it); those take precedence, as in transformers.
 */
export async function loadTokenizer(dir: string): Promise<HfTokenizer> {
  const jsonPath = await joinPath(dir, "tokenizer.json");
  const configPath = await joinPath(dir, "tokenizer_config.json");
  const json = await readJson(jsonPath, "the Hugging Face tokenizer.json");
  const raw = (await exists(configPath)) ? await readJson(configPath, "tokenizer_config.json") : {};
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new Error(`${configPath}: expected a JSON object`);
  let config = raw as Record<string, unknown>;
  let templateFile = configPath;
  const jinjaPath = await joinPath(dir, "chat_template.jinja");
  const templateJsonPath = await joinPath(dir, "chat_template.json");
  if (await exists(jinjaPath)) {
    config = { ...config, chat_template: new TextDecoder().decode(await readBytes(jinjaPath, "the Jinja chat template")) };
    templateFile = jinjaPath;
  } else if (await exists(templateJsonPath)) {
    const t = (await readJson(templateJsonPath, "chat_template.json")) as { chat_template?: unknown } | null;
    if (typeof t?.chat_template !== "string") throw new Error(`${templateJsonPath}: expected an object with a string field "chat_template"`);
    config = { ...config, chat_template: t.chat_template };
    templateFile = templateJsonPath;
  }
  return tokenizerFromJson(json, config, jsonPath, templateFile);
}

/**
 * An HfTokenizer from parsed tokenizer.json and tokenizer_config.json values; `file` names
 * tokenizer.json and `configFile` the chat template's file in errors.
 */
export function tokenizerFromJson(json: unknown, config: unknown, file = "tokenizer.json", configFile = "tokenizer_config.json"): HfTokenizer {
  if (typeof json !== "object" || json === null || !("model" in json)) throw new Error(`${file}: not a tokenizer.json (no "model" section)`);
  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer(json, config as object, configFile);
  } catch (e) {
    // Chat-template errors already name their file.
    if ((e as Error).message.startsWith(`${configFile}:`)) throw e;
    throw new Error(`${file}: cannot build the tokenizer: ${(e as Error).message}`, { cause: e });
  }
  return tok;
}

/**
 * Incremental detokenization for streaming: text is emitted once it is complete (no dangling
 * byte-fallback piece of a multi-byte character). Decoding a short window of recent ids and
 * diffing (as text-generation-inference does) keeps it linear, and keeps context-dependent
 * details (a leading space stripped at the start) the same as decoding everything at once.
 */
export class TextStream {
  readonly #tok: TextTokenizer;
  readonly #ids: number[];
  #prefix: number;
  #read: number;

  constructor(tokenizer: TextTokenizer, promptIds: readonly number[] = []) {
    this.#tok = tokenizer;
    this.#ids = [...promptIds];
    this.#prefix = Math.max(0, promptIds.length - 5);
    this.#read = promptIds.length;
  }

  /** Add one id; returns the text it completes ("" while a character is still partial). */
  push(id: number): string {
    this.#ids.push(id);
    const before = this.#tok.decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#tok.decode(this.#ids.slice(this.#prefix));
    if (after.length > before.length && !after.endsWith("\uFFFD")) {
      this.#prefix = this.#read;
      this.#read = this.#ids.length;
      return after.slice(before.length);
    }
    return "";
  }

  /** Whatever is left (a partial character comes out as U+FFFD). */
  flush(): string {
    const before = this.#tok.decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#tok.decode(this.#ids.slice(this.#prefix));
    this.#prefix = this.#read = this.#ids.length;
    return after.slice(before.length);
  }
}
