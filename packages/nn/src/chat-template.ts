/**
 * A model's chat template: the Jinja `chat_template` of tokenizer_config.json (or chat_template.jinja /
 * chat_template.json beside it), rendered with @huggingface/jinja, the engine transformers.js uses.
 * The variables are the ones transformers passes: `messages`, `add_generation_prompt`, the special
 * tokens (`bos_token`, `eos_token`, ...) as strings, plus `raise_exception` and `strftime_now`
 * (globals of the engine). Lstrip/trim-blocks are on, as in transformers.
 */
import { Template } from "@huggingface/jinja";

export interface ChatMessage {
  role: string;
  content: string;
}

export interface RenderOptions {
  /** Append the header that asks for the next assistant turn (default false). */
  addGenerationPrompt?: boolean;
  /** More template variables (for example `enable_thinking: false` for Qwen3). */
  vars?: Record<string, unknown>;
}

/** The special-token attributes transformers exposes to templates. */
const SPECIAL_TOKEN_KEYS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] as const;

export class ChatTemplate {
  readonly source: string;
  /** Where the template came from, for error messages. */
  readonly file: string;
  /** Strings of the tokenizer's special tokens (end-of-turn markers are found among them). */
  readonly specialTokens: readonly string[];
  readonly #template: Template;
  readonly #vars: Record<string, unknown>;
  readonly #special: RegExp | null;
  #endOfTurn: string | null | undefined;

  constructor(source: string, opts: { file?: string; vars?: Record<string, unknown>; specialTokens?: readonly string[] } = {}) {
    this.source = source;
    this.file = opts.file ?? "chat_template";
    this.specialTokens = [...(opts.specialTokens ?? [])];
    this.#vars = { ...opts.vars };
    try {
      this.#template = new Template(source);
    } catch (e) {
      throw new Error(`${this.file}: chat_template is not a template @huggingface/jinja can parse: ${(e as Error).message}`, { cause: e });
    }
    // Longest first, so a token that is a prefix of another never wins the alternation.
    const toks = [...this.specialTokens].filter((t) => t.length > 0).sort((a, b) => b.length - a.length);
    this.#special = toks.length ? new RegExp(toks.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "g") : null;
  }

  render(messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
    try {
      return this.#template.render({
        ...this.#vars,
        ...opts.vars,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: opts.addGenerationPrompt ?? false,
      });
    } catch (e) {
      throw new Error(`${this.file}: chat_template failed to render ${messages.length} message(s): ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * End of the end-of-turn marker at `from` in `text`: just past the first special token after `from`
   * (`<|eot_id|>`, `<|im_end|>`) when only whitespace comes before it, else null (the turn ends in
   * plain text, and a special token further on belongs to the next message).
   */
  markerEnd(text: string, from: number): number | null {
    if (!this.#special) return null;
    this.#special.lastIndex = from;
    const m = this.#special.exec(text);
    if (!m || text.slice(from, m.index).trim() !== "") return null;
    return m.index + m[0].length;
  }

  /**
   * The text that closes an assistant turn (`<|eot_id|>` for Llama 3, `<|im_end|>` for ChatML-style
   * templates): rendered from a probe conversation, null when the template ends turns without a
   * special token. Serving stops generation there.
   */
  get endOfTurn(): string | null {
    if (this.#endOfTurn === undefined) {
      this.#endOfTurn = null;
      try {
        const probe = [
          { role: "user", content: "Hi" },
          { role: "assistant", content: "Hello" },
        ];
        const plain = this.render(probe);
        const marked = this.render([probe[0], { role: "assistant", content: `Hello${SENTINEL}` }]);
        const contentEnd = commonPrefixLength(plain, marked);
        const end = this.markerEnd(plain, contentEnd);
        if (end !== null) this.#endOfTurn = plain.slice(contentEnd, end);
      } catch {
        // A template that refuses the probe (say, one that demands a system message) has no known marker.
      }
    }
    return this.#endOfTurn;
  }
}

/** A string no template adds or strips: appended to one reply to see where that reply's text ends. */
export const SENTINEL = "\uE000lowrank\uE001";

export function commonPrefixLength(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

/** A special token's text: tokenizer_config.json writes it as a string or as `{ "content": ... }`. */
function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  const c = (v as { content?: unknown } | null)?.content;
  return typeof c === "string" ? c : null;
}

/**
 * The chat template of a tokenizer_config.json object, or null when it has none. `chat_template` is a
 * string, or a list of `{ name, template }` of which "default" is the one used (as in transformers).
 */
export function chatTemplateFromConfig(config: Record<string, unknown>, file: string, specialTokens: readonly string[] = []): ChatTemplate | null {
  const raw = config.chat_template;
  if (raw === undefined || raw === null) return null;
  let source: string;
  if (typeof raw === "string") source = raw;
  else if (Array.isArray(raw)) {
    const named = raw as { name?: unknown; template?: unknown }[];
    const def = named.find((t) => t?.name === "default");
    if (!def || typeof def.template !== "string") {
      const names = named.map((t) => String(t?.name)).join(", ");
      throw new Error(`${file}: field "chat_template" is a list of named templates (${names}) without a "default" one with a string "template"`);
    }
    source = def.template;
  } else throw new Error(`${file}: field "chat_template" must be a string or a list of {name, template}, got ${typeof raw}`);
  const vars: Record<string, unknown> = {};
  for (const k of SPECIAL_TOKEN_KEYS) {
    const t = tokenText(config[k]);
    if (t !== null) vars[k] = t;
  }
  if (Array.isArray(config.additional_special_tokens))
    vars.additional_special_tokens = config.additional_special_tokens.map(tokenText).filter((t) => t !== null);
  return new ChatTemplate(source, { file, vars, specialTokens });
}
