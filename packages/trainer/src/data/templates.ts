/**
 * Prompt templates. Alpaca uses the Stanford Alpaca prompt. Chat uses the model's own chat template
 * (the Jinja `chat_template` of tokenizer_config.json, rendered by @lowrank/nn's ChatTemplate) when
 * its tokenizer has one, else a ChatML layout (the caller says so in one warning line).
 * Loss goes on the response only: Alpaca's `output`; each assistant turn's text and its end-of-turn
 * marker in chat. With a template, the assistant spans are found from renderings (templateSegments).
 */
import { type ChatTemplate, type TextTokenizer, commonPrefixLength, SENTINEL } from "@lowrank/nn";
import type { Segment } from "./tokenize.ts";

export const ALPACA_PROMPT =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Response:\n";
export const ALPACA_PROMPT_WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

/** The prompt an Alpaca record is shown (without the response). */
export function alpacaPrompt(instruction: string, input = ""): string {
  const t = input.trim() ? ALPACA_PROMPT_WITH_INPUT : ALPACA_PROMPT;
  return t.replace("{instruction}", instruction).replace("{input}", input);
}

export function alpacaSegments(instruction: string, input: string, output: string): Segment[] {
  return [
    { text: alpacaPrompt(instruction, input), train: false },
    { text: output, train: true },
  ];
}

export type ChatRole = "system" | "user" | "assistant";
export const CHAT_ROLES: readonly ChatRole[] = ["system", "user", "assistant"];
export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/**
 * ChatML layout: `<|im_start|>{role}\n{content}<|im_end|>\n` per message. The assistant header is
 * context; the assistant's content, its `<|im_end|>\n` and the final EOS are targets.
 */
export function chatSegments(messages: readonly ChatMessage[]): Segment[] {
  const out: Segment[] = [];
  for (const m of messages) {
    if (m.role === "assistant") {
      out.push({ text: "<|im_start|>assistant\n", train: false });
      out.push({ text: `${m.content}<|im_end|>\n`, train: true });
    } else out.push({ text: `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`, train: false });
  }
  return out;
}

/** The ChatML prompt that asks the model for the next assistant turn. */
export function chatPrompt(messages: readonly ChatMessage[]): string {
  return (
    chatSegments(messages)
      .map((s) => s.text)
      .join("") + "<|im_start|>assistant\n"
  );
}

/** What generation needs to ask a model for its next chat reply. */
export interface ChatGenerationPrompt {
  /** The prompt's token ids. */
  ids: number[];
  /** The prompt's text (special tokens included). */
  text: string;
  /** "template": the model's chat_template; "chatml": the fallback for a tokenizer without one. */
  layout: "template" | "chatml";
  /** Token ids that end the reply, besides the model's EOS (the end-of-turn token, `<|eot_id|>`). */
  stopTokens: number[];
  /** Strings that end the reply when the end-of-turn marker is not a single token. */
  stop: string[];
}

/**
 * The prompt for the next assistant reply, laid out as in training: the tokenizer's chat template
 * with add_generation_prompt (encoded without added specials: the template writes BOS itself), else
 * ChatML (`layout` says which, so the caller can say so). Generation should stop at the template's
 * end-of-turn marker, which may not be the EOS of config.json (Llama 3 ends turns with `<|eot_id|>`).
 */
export function chatGenerationPrompt(tok: TextTokenizer, messages: readonly ChatMessage[], vars?: Record<string, unknown>): ChatGenerationPrompt {
  const template = tok.chatTemplate ?? null;
  const layout = template ? "template" : "chatml";
  const text = template ? template.render(messages, { addGenerationPrompt: true, vars }) : chatPrompt(messages);
  const ids = tok.encode(text, { addSpecialTokens: !template });
  const marker = template ? template.endOfTurn : "<|im_end|>";
  if (marker === null) return { ids, text, layout, stopTokens: [], stop: [] };
  const markerIds = tok.encode(marker, { addSpecialTokens: false });
  // A special token is skipped when the reply is decoded, so it can only be matched as an id.
  return markerIds.length === 1 ? { ids, text, layout, stopTokens: markerIds, stop: [marker] } : { ids, text, layout, stopTokens: [], stop: [marker] };
}

/**
 * A conversation rendered with the model's chat template, cut into context and trained segments.
 * For each assistant message i, on the text F of the whole conversation:
 *  - start: the length of render(messages[0..i-1], add_generation_prompt) — the prompt that asks for
 *    turn i, header included — which must be a prefix of F (else the template is not incremental and
 *    the turn cannot be located: an error naming the template's file);
 *  - content end: where F first differs from the rendering with SENTINEL appended to message i's
 *    content (robust to templates that trim or rewrite the content, such as Qwen3's think block);
 *  - end: just past the first special token after the content (the end-of-turn marker, `<|eot_id|>`,
 *    `<|im_end|>`), or the content end when the template closes turns with plain text.
 * Everything from start to end is trained; what the template adds between turns (the next header, a
 * trailing generation header, newlines) is context. For Qwen3 the span of the reply after the last
 * user turn starts with the empty `<think>\n\n</think>\n\n` the template inserts: the model emits it
 * after the generation prompt, so it is trained too.
 */
export function templateSegments(template: ChatTemplate, messages: readonly { role: string; content: string }[]): Segment[] {
  const full = template.render(messages);
  const out: Segment[] = [];
  let pos = 0;
  for (let i = 0; i < messages.length; i++) {
    if (messages[i].role !== "assistant") continue;
    const prompt = template.render(messages.slice(0, i), { addGenerationPrompt: true });
    if (!full.startsWith(prompt)) {
      throw new Error(
        `${template.file}: chat_template: the generation prompt for messages[${i}] is not a prefix of the whole conversation's rendering, so the assistant turn cannot be located for loss masking`,
      );
    }
    const marked = template.render(messages.map((m, j) => (j === i ? { ...m, content: m.content + SENTINEL } : m)));
    const contentEnd = commonPrefixLength(full, marked);
    if (contentEnd < prompt.length || contentEnd < pos) {
      throw new Error(
        `${template.file}: chat_template: cannot find where the content of messages[${i}] ends in the rendering (it differs before the turn starts)`,
      );
    }
    const end = template.markerEnd(full, contentEnd) ?? contentEnd;
    if (prompt.length > pos) out.push({ text: full.slice(pos, prompt.length), train: false });
    out.push({ text: full.slice(Math.max(pos, prompt.length), end), train: true });
    pos = end;
  }
  if (pos < full.length) out.push({ text: full.slice(pos), train: false });
  return out;
}
