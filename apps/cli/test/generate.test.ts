/**
 * `lowrank generate` on stories260K with temperature 0 prints the reference greedy story
 * (../shared/data/models/stories260K/reference_vectors.json, made independently of this code).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { resolveDataDir } from "@lowrank/nn/node";

const CLI_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BIN = join(CLI_DIR, "bin", "lowrank.mjs");
const dataDir = await resolveDataDir({ env: process.env });
const refPath = dataDir ? join(dataDir, "models", "stories260K", "reference_vectors.json") : "";
const skip = dataDir && existsSync(refPath) ? false : "reference vectors not found: set LOWRANK_DATA_DIR or put shared/data beside the repo";

function lowrank(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const node = "Bun" in globalThis || "Deno" in globalThis ? "node" : process.execPath;
  return new Promise((done, fail) => {
    const p = spawn(node, [BIN, ...args], { env: { ...process.env, LOWRANK_BACKEND: "cpu", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("error", fail);
    p.on("close", (code) => done({ code, stdout, stderr }));
  });
}

test("greedy with the prompt 'Once upon a time' prints the reference continuation", { skip, timeout: 120_000 }, async () => {
  const ref = JSON.parse(readFileSync(refPath, "utf8")).greedy_with_prompt as { prompt: string; steps: number; prompt_ids: number[]; generated_text: string };
  const r = await lowrank([
    "generate",
    "--model",
    "models/stories260K-hf",
    "--prompt",
    ref.prompt,
    "--max-new-tokens",
    String(ref.steps - ref.prompt_ids.length + 1),
    "--temperature",
    "0",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${ref.prompt}${ref.generated_text}\n`);
  assert.match(r.stderr, /cpu backend/);
});

test("greedy from BOS prints the 256-token reference story", { skip, timeout: 120_000 }, async () => {
  const ref = JSON.parse(readFileSync(refPath, "utf8")).greedy_no_prompt as { steps: number; generated_text: string };
  const r = await lowrank(["generate", "--model", "models/stories260K-hf", "--prompt", "", "--max-new-tokens", String(ref.steps)]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${ref.generated_text}\n`);
});

test("bad flags are usage errors; a missing model names the file", async () => {
  const bad = await lowrank(["generate", "--model", "x", "--prompt", "p", "--top-p", "2"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--top-p 2: expected a number in \(0, 1\]/);
  const missing = await lowrank(["generate", "--model", "/nonexistent/model", "--prompt", "p"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /--model \/nonexistent\/model: no config\.json in \/nonexistent\/model/);
});

test(
  "--model hf:org/name downloads from $HF_ENDPOINT into $LOWRANK_CACHE_DIR, then generates; a name that is no directory is a local error in every command, with no request",
  { skip, timeout: 120_000 },
  async () => {
    const { createServer } = await import("node:http");
    const { createHash } = await import("node:crypto");
    const { mkdtempSync, readdirSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const src = join(dataDir as string, "models", "stories260K-hf");
    const names = readdirSync(src);
    const requests: string[] = [];
    const server = createServer((req, res) => {
      const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
      requests.push(path);
      if (path === "/api/models/test-org/stories/revision/main") {
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ siblings: names.map((rfilename) => ({ rfilename })) }));
        return;
      }
      const m = /^\/test-org\/stories\/resolve\/main\/(.+)$/.exec(path);
      if (!m || !names.includes(m[1])) return void res.writeHead(404).end();
      const bytes = readFileSync(join(src, m[1]));
      res.writeHead(200, { etag: `"${createHash("sha256").update(bytes).digest("hex")}"`, "content-length": bytes.length }).end(bytes);
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const cache = mkdtempSync(join(tmpdir(), "lowrank-cli-hub-"));
    try {
      const port = (server.address() as { port: number }).port;
      const env = { HF_ENDPOINT: `http://127.0.0.1:${port}`, LOWRANK_CACHE_DIR: cache };
      const ref = JSON.parse(readFileSync(refPath, "utf8")).greedy_with_prompt as {
        prompt: string;
        steps: number;
        prompt_ids: number[];
        generated_text: string;
      };
      const r = await lowrank(
        ["generate", "--model", "hf:test-org/stories", "--prompt", ref.prompt, "--max-new-tokens", String(ref.steps - ref.prompt_ids.length + 1)],
        env,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `${ref.prompt}${ref.generated_text}\n`);
      assert.match(r.stderr, /downloading test-org\/stories \[\d\/\d\] model\.safetensors/);
      assert.ok(existsSync(join(cache, "models--test-org--stories", "snapshots", "main", "model.safetensors")));
      const missing = await lowrank(["generate", "--model", "hf:test-org/absent", "--prompt", "p"], env);
      assert.equal(missing.code, 1);
      assert.ok(missing.stderr.includes(`http://127.0.0.1:${port}/api/models/test-org/absent/revision/main`), missing.stderr);
      // Without hf: a name is a local directory in every command: a missing one fails here, naming where it looked.
      const seen = requests.length;
      const out = join(cache, "out");
      for (const args of [
        ["generate", "--model", "test-org/nowhere", "--prompt", "p"],
        ["finetune", "--model", "test-org/nowhere", "--data", "datasets/tinyshakespeare/input.txt", "--output", out],
        ["serve", "--model", "test-org/nowhere", "--port", "0", "--home", out],
        ["merge", "--model", "test-org/nowhere", "--adapter", "peft/smollm2-135m-recallclear", "--out", out],
        ["quantize", "test-org/nowhere", out],
        ["dequantize", "test-org/nowhere", out],
      ]) {
        const r = await lowrank(args, env);
        assert.equal(r.code, 1, `${args[0]}: ${r.stderr}`);
        assert.match(
          r.stderr,
          /test-org\/nowhere: no config\.json in .*test-org\/nowhere.* or .*models\/test-org\/nowhere; to download it from the Hugging Face Hub, pass hf:test-org\/nowhere/,
          args[0],
        );
        assert.doesNotMatch(r.stderr, /\n\s+at /, `${args[0]} printed a stack trace`);
      }
      assert.equal(requests.length, seen, `a missing local model made requests: ${requests.slice(seen).join(", ")}`);
    } finally {
      server.close();
      rmSync(cache, { recursive: true, force: true });
    }
  },
);

test(
  "--chat renders the model's chat_template with the generation prompt and prints only the reply; ChatML without a template, said on stderr",
  { skip, timeout: 120_000 },
  async () => {
    const { cpSync, mkdtempSync, rmSync, writeFileSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { loadHfModel, loadTokenizer, generateIds } = await import("@lowrank/nn/node");
    const { createCpuBackend } = await import("@lowrank/backend-cpu");
    const dir = mkdtempSync(join(tmpdir(), "lowrank-chat-"));
    try {
      cpSync(join(dataDir as string, "models", "stories260K-hf"), dir, { recursive: true });
      // A story prompt as the template's generation prompt, so greedy decoding has a known reference.
      writeFileSync(
        join(dir, "chat_template.jinja"),
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %} Once upon a time{% endif %}",
      );
      const r = await lowrank([
        "generate",
        "--model",
        dir,
        "--chat",
        "--system",
        "Lily",
        "--prompt",
        " and Tom.",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /chat prompt from the model's chat_template \(.*chat_template\.jinja\)/);
      // The reference: the same rendered prompt encoded without added specials (the template wrote BOS), greedy.
      const backend = createCpuBackend();
      try {
        const tok = await loadTokenizer(dir);
        const model = await loadHfModel(dir, { backend });
        const ids = tok.encode("<s>Lily and Tom. Once upon a time", { addSpecialTokens: false });
        assert.equal(ids.filter((id) => id === tok.bosTokenId).length, 1);
        const out = await generateIds(model, ids, { maxNewTokens: 12, temperature: 0 });
        assert.equal(r.stdout, `${tok.decode(out)}\n`);
        model.dispose();
      } finally {
        backend.dispose();
      }
      const plain = await lowrank(["generate", "--model", "models/stories260K-hf", "--chat", "--prompt", "Hi", "--max-new-tokens", "4"]);
      assert.equal(plain.code, 0, plain.stderr);
      assert.match(plain.stderr, /chat prompt in ChatML: the tokenizer has no chat_template/);
      const usage = await lowrank(["generate", "--model", "x", "--prompt", "p", "--system", "s"]);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--system needs --chat/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test("StopFilter cuts the stream at a stop string split across pieces and holds back only a possible start of one", async () => {
  const { StopFilter } = await import("../src/generate.ts");
  const f = new StopFilter(["<|im_end|>"]);
  assert.equal(f.push("Hello <"), "Hello ");
  assert.equal(f.push("|im"), "");
  assert.equal(f.push("_x"), "<|im_x");
  assert.equal(f.push(" ok<|im_"), " ok");
  assert.equal(f.push("end|>\nmore"), "");
  assert.equal(f.stopped, true);
  assert.equal(f.push("after"), "");
  assert.equal(f.flush(), "");
  const open = new StopFilter(["</s>"]);
  assert.equal(open.push("a</"), "a");
  assert.equal(open.flush(), "</");
});

test("generation_config.json: its eos_token_id stops generation and its sampling fills the flags not given", { skip, timeout: 120_000 }, async () => {
  const { cpSync, mkdtempSync, rmSync, writeFileSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const ref = JSON.parse(readFileSync(refPath, "utf8")).greedy_with_prompt as { prompt: string; generated_ids: number[]; generated_text: string };
  const dir = mkdtempSync(join(tmpdir(), "lowrank-cli-genconfig-"));
  try {
    cpSync(join(dataDir as string, "models", "stories260K-hf"), dir, { recursive: true });
    // Stop at the second greedy token: only the first is printed.
    writeFileSync(
      join(dir, "generation_config.json"),
      JSON.stringify({ eos_token_id: [2, ref.generated_ids[1]], do_sample: true, temperature: 0.7, top_k: 20 }),
    );
    const r = await lowrank(["generate", "--model", dir, "--prompt", ref.prompt, "--temperature", "0", "--max-new-tokens", "20"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${ref.prompt},\n`);
    assert.ok(ref.generated_text.startsWith(","));
    assert.match(r.stderr, /--top-k 20, --top-p 1, --repetition-penalty 1 from generation_config\.json \(flags override\)/);
    assert.doesNotMatch(r.stderr, /--temperature 0\.7/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
