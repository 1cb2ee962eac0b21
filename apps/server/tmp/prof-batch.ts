import { join } from "node:path";
import { call, completion, makeAdapter, startTestServer, tempDir, upload } from "../test/helpers.ts";
const work = await tempDir("prof");
const s = await startTestServer();
const names: string[] = [];
for (let i = 0; i < 4; i++) {
  const d = await makeAdapter(join(work, `a${i}`), 100 + i, { r: 8, targets: ["q_proj", "k_proj", "v_proj", "o_proj"], scale: 0.05 });
  await upload(s.url, `n${i}`, d);
  names.push(`n${i}`);
}
const PROMPTS = ["Once upon a time", "The little dog", "Lily wanted to", "One day, a big", "Tom and Sue went"];
const best: Record<string, number> = { "4": 1e9, "1": 1e9 };
for (let r = 0; r < 5; r++) for (const mode of ["4", "1"]) {
  const models = mode === "4" ? names : [names[0]];
  const one = (i: number) => call(s.url, "POST", "/v1/completions", { body: completion(models[i % models.length], PROMPTS[i % 5], { max_tokens: 32, temperature: 0 }) });
  const t = performance.now();
  const res = await Promise.all(Array.from({ length: 16 }, (_, i) => one(i)));
  const ms = performance.now() - t;
  best[mode] = Math.min(best[mode], ms);
  console.log(mode, ms.toFixed(0), "ms", res.reduce((n, x) => n + x.json.usage.completion_tokens, 0), "tokens");
}
console.log(`best: 4 adapters ${best["4"].toFixed(0)} ms, 1 adapter ${best["1"].toFixed(0)} ms`);
await s.close();
process.exit(0);
