/**
 * `lowrank quantize` / `lowrank dequantize` end to end on stories260K: the CLI (spawned under
 * Node, Bun and Deno) writes a bnb-4bit directory identical to what quantizeModel + saveHfModel
 * write, it loads back with the same logits, dequantize gives a dense directory that reproduces
 * them, and bad input is a usage error or an error naming the file and the field.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { noGrad, scope, setDefaultBackend, tensor } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { bnbQuantizationConfig } from "@lowrank/nf4";
import { type LlamaForCausalLM, QuantizedLinear, loadHfModel, quantizeModel, resolveDataDir, saveHfModel } from "@lowrank/nn/node";
import { type Result, command, lowrank } from "./spawn-cli.ts";

const backend = createCpuBackend({ threads: 0 });
setDefaultBackend(backend);
const dataDir = await resolveDataDir({ env: process.env });
const stories = dataDir ? join(dataDir, "models", "stories260K-hf") : null;
const skip = stories && existsSync(stories) ? false : "stories260K-hf not found: set LOWRANK_DATA_DIR or put shared/data beside the repo";

const show = (r: Result) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
const PROMPT = [[1, 403, 407, 261, 378, 428, 269, 162, 263, 295, 30]];

function logits(m: LlamaForCausalLM): Float32Array {
  return noGrad(() => scope(() => m.forward(tensor(PROMPT, { dtype: "i32" })).readSync() as Float32Array));
}

async function withTemp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "lowrank-quantize-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test("quantize writes the same bnb-4bit directory as quantizeModel + saveHfModel; dequantize reverses it", { skip, timeout: 180_000 }, async () => {
  await withTemp(async (tmp) => {
    const q = join(tmp, "q");
    const r = await lowrank("node", ["quantize", stories as string, q]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^quantized 35 Linear weights \(226560 parameters, 885\.0 KiB -> 114\.\d KiB, 4\.130 bits\/param in 4-bit\)/m, show(r));
    assert.match(
      r.stderr,
      /^quantize: model\.layers\.0\.mlp\.down_proj\.weight \[64, 172\] F32 -> nf4 \+ double quant, 4\.128 bits\/param \(1\/35\)$/m,
      show(r),
    );
    assert.match(r.stderr, /^copy: tokenizer\.json$/m);
    assert.deepEqual((await readdir(q)).sort(), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    const config = JSON.parse(await readFile(join(q, "config.json"), "utf8"));
    assert.deepEqual(config.quantization_config, bnbQuantizationConfig({ computeDtype: "float32", skipModules: ["lm_head"] }));

    // The in-process path: same bytes on disk.
    const m = await loadHfModel(stories as string);
    await quantizeModel(m);
    const want = logits(m);
    await saveHfModel(m, join(tmp, "nn"));
    assert.deepEqual(
      await readFile(join(q, "model.safetensors")),
      await readFile(join(tmp, "nn", "model.safetensors")),
      "CLI and quantizeModel + saveHfModel write identical files",
    );
    m.dispose();

    const back = await loadHfModel(q);
    assert.ok(back.getSubmodule("model.layers.0.mlp.gate_proj") instanceof QuantizedLinear);
    assert.deepEqual(logits(back), want);
    back.dispose();

    const d = join(tmp, "d");
    const r2 = await lowrank("node", ["dequantize", q, d]);
    assert.equal(r2.code, 0, show(r2));
    assert.match(r2.stdout, /^dequantized 35 Linear weights/m);
    assert.match(r2.stderr, /^dequantize: model\.layers\.4\.mlp\.up_proj\.weight \[172, 64\] nf4 -> F32/m);
    const dcfg = JSON.parse(await readFile(join(d, "config.json"), "utf8"));
    assert.equal(dcfg.quantization_config, undefined);
    const dense = await loadHfModel(d);
    assert.ok(!(dense.getSubmodule("model.layers.0.mlp.gate_proj") instanceof QuantizedLinear));
    const got = logits(dense);
    let err = 0;
    for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
    assert.ok(err < 1e-4, `dense(dequantized) logits differ from the 4-bit model's by ${err}`);
    dense.dispose();
  });
});

for (const runtime of ["bun", "deno"] as const) {
  test(
    `quantize under ${runtime} gives the same file as under node`,
    { skip: skip || (!command(runtime) && `${runtime} is not installed`), timeout: 180_000 },
    async () => {
      await withTemp(async (tmp) => {
        const [a, b] = [join(tmp, "node"), join(tmp, runtime)];
        const ra = await lowrank("node", ["quantize", stories as string, a, "--quant-type", "fp4", "--no-double-quant", "--blocksize", "128"]);
        assert.equal(ra.code, 0, show(ra));
        const rb = await lowrank(runtime, ["quantize", stories as string, b, "--quant-type", "fp4", "--no-double-quant", "--blocksize", "128"]);
        assert.equal(rb.code, 0, show(rb));
        assert.deepEqual(await readFile(join(b, "model.safetensors")), await readFile(join(a, "model.safetensors")));
        const rd = await lowrank(runtime, ["dequantize", b, join(tmp, "dense")]);
        assert.equal(rd.code, 0, show(rd));
      });
    },
  );
}

test("usage errors exit 2 and name the flag", { timeout: 120_000 }, async () => {
  const cases: [string[], RegExp][] = [
    [["quantize", "a"], /quantize needs an input and an output directory/],
    [["quantize", "a", "b", "--quant-type", "int4"], /--quant-type int4: use nf4 or fp4/],
    [["quantize", "a", "b", "--blocksize", "100"], /--blocksize 100: use one of 32, 64, 128/],
    [["quantize", "a", "b", "--double-quant", "--no-double-quant"], /contradict/],
    [["quantize", "a", "b", "--frobnicate"], /Unknown option '--frobnicate'/],
    [["dequantize", "a", "b", "--blocksize", "64"], /dequantize takes no --blocksize/],
  ];
  for (const [args, re] of cases) {
    const r = await lowrank("node", args);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, re, show(r));
  }
  const h = await lowrank("node", ["quantize", "--help"]);
  assert.equal(h.code, 0, show(h));
  assert.match(h.stdout, /--no-double-quant/);
});

test("failures exit 1 and name the file and the field", { skip, timeout: 120_000 }, async () => {
  await withTemp(async (tmp) => {
    const missing = await lowrank("node", ["quantize", join(tmp, "nope"), join(tmp, "out")]);
    assert.equal(missing.code, 1, show(missing));
    assert.match(missing.stderr, /nope: no config\.json in .*nope/);

    const q = join(tmp, "q");
    assert.equal((await lowrank("node", ["quantize", stories as string, q])).code, 0);
    const again = await lowrank("node", ["quantize", q, join(tmp, "qq")]);
    assert.equal(again.code, 1, show(again));
    assert.match(again.stderr, /q\/config\.json: quantization_config is present: the model is already quantized/);

    const notQuant = await lowrank("node", ["dequantize", stories as string, join(tmp, "d")]);
    assert.equal(notQuant.code, 1, show(notQuant));
    assert.match(notQuant.stderr, /config\.json: no bitsandbytes 4-bit quantization_config/);

    const cfg = JSON.parse(await readFile(join(q, "config.json"), "utf8"));
    cfg.quantization_config.bnb_4bit_quant_type = "int4";
    await writeFile(join(q, "config.json"), JSON.stringify(cfg));
    const bad = await lowrank("node", ["dequantize", q, join(tmp, "d2")]);
    assert.equal(bad.code, 1, show(bad));
    assert.match(bad.stderr, /config\.json: quantization_config\.bnb_4bit_quant_type = "int4" is not supported/);
  });
});
