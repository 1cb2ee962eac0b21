/**
 * Prompt templates. Alpaca uses the Stanford Alpaca prompt; chat uses a ChatML-style layout.
 * Loss goes on the response (Alpaca `output`; chat assistant turns and their end marker) only.
 * Tokenizer chat templates (Jinja in tokenizer_config.json) are not executed: no maintained
 * Jinja engine is a dependency here, so every model gets this one documented layout.
 */
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

/** The prompt that asks the model for the next assistant turn. */
export function chatPrompt(messages: readonly ChatMessage[]): string {
  return chatSegments(messages).map((s) => s.text).join("") + "<|im_start|>assistant\n";
}
