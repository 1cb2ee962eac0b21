/**
 * `lowrank quantize` and `lowrank dequantize`: a Hugging Face model directory to a bitsandbytes
 * 4-bit one and back, through @lowrank/nn's streaming converters. Progress goes to stderr, the
 * summary to stdout. A relative input directory that does not exist here is also looked up in
 * the data directory (--data-dir, else LOWRANK_DATA_DIR, else ../shared/data beside the repo).
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { VALID_BLOCKSIZES } from "@lowrank/nf4";
import { type ConvertReport, dequantizeHfCheckpoint, quantizeHfCheckpoint } from "@lowrank/nn/node";
import { resolveDataDir, resolveModelDir } from "./data-dir.ts";

type Env = Record<string, string | undefined>;

export const QUANTIZE_USAGE =
  "lowrank quantize <model-dir> <out-dir> [--quant-type nf4|fp4] [--blocksize 64] [--double-quant|--no-double-quant] [--skip-modules lm_head]";
export const DEQUANTIZE_USAGE = "lowrank dequantize <in-dir> <out-dir>";

const HELP = {
  quantize: `Usage: ${QUANTIZE_USAGE}

Write a bitsandbytes 4-bit copy of a Hugging Face model directory: every Linear weight (except
--skip-modules and a head tied to the embeddings) becomes bnb's packed codes + quant state,
config.json gains quantization_config, tokenizer files are copied. Transformers' from_pretrained
and lowrank's loadHfModel load the result.

  --quant-type <nf4|fp4>     4-bit code table (default nf4; bitsandbytes' own default is fp4)
  --blocksize <n>            elements per absmax block: ${VALID_BLOCKSIZES.join(", ")} (default 64)
  --double-quant             quantize the absmax values too (default; 4.127 bits/param at 64)
  --no-double-quant          keep f32 absmax (4.5 bits/param at 64)
  --skip-modules <names>     modules kept dense, comma-separated or repeated (default lm_head)
  --data-dir <dir>           where a relative <model-dir> is also looked up`,
  dequantize: `Usage: ${DEQUANTIZE_USAGE}

Write a dense copy of a bitsandbytes 4-bit model directory: each 4-bit weight is dequantized to
the dtype its quant state records, quantization_config is removed, tokenizer files are copied.

  --data-dir <dir>           where a relative <in-dir> is also looked up`,
};

function summary(verb: string, r: ConvertReport, inDir: string, outDir: string): string {
  const kb = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
  const bits = r.params ? ((verb === "quantized" ? r.bytesOut : r.bytesIn) * 8) / r.params : 0;
  return (
    `${verb} ${r.layers.length} Linear weights (${r.params} parameters, ${kb(r.bytesIn)} -> ${kb(r.bytesOut)}, ${bits.toFixed(3)} bits/param in 4-bit) ` +
    `of ${inDir}; wrote ${outDir}: ${r.files.join(", ")}`
  );
}

/** Runs `quantize` or `dequantize` with the arguments after the command word; returns the exit code. */
export async function quantizeCommand(command: "quantize" | "dequantize", argv: string[], env: Env, usage: (message: string) => number): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        "quant-type": { type: "string" },
        blocksize: { type: "string" },
        "double-quant": { type: "boolean" },
        "no-double-quant": { type: "boolean" },
        "skip-modules": { type: "string", multiple: true },
        "data-dir": { type: "string" },
        backend: { type: "string" },
      },
    });
  } catch (err) {
    return usage(`${command}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    console.log(HELP[command]);
    return 0;
  }
  const usageLine = command === "quantize" ? QUANTIZE_USAGE : DEQUANTIZE_USAGE;
  if (positionals.length !== 2) return usage(`${command} needs an input and an output directory (${usageLine})`);
  // Conversion is a host job: bit-exact nf4 code on the CPU, whatever backend is configured.
  if (v.backend !== undefined && v.backend !== "cpu" && v.backend !== "auto")
    return usage(`${command} runs on the CPU; --backend ${v.backend} is not supported here`);
  if (command === "dequantize") {
    const extra = (["quant-type", "blocksize", "double-quant", "no-double-quant", "skip-modules"] as const).filter((k) => v[k] !== undefined);
    if (extra.length) return usage(`dequantize takes no ${extra.map((k) => `--${k}`).join(", ")} (the quant state in the files says everything)`);
  }
  const quantType = v["quant-type"] ?? "nf4";
  if (quantType !== "nf4" && quantType !== "fp4") return usage(`--quant-type ${quantType}: use nf4 or fp4`);
  const blocksize = Number(v.blocksize ?? "64");
  if (!VALID_BLOCKSIZES.includes(blocksize)) return usage(`--blocksize ${v.blocksize}: use one of ${VALID_BLOCKSIZES.join(", ")}`);
  if (v["double-quant"] && v["no-double-quant"]) return usage("--double-quant and --no-double-quant contradict each other");
  const skipModules = v["skip-modules"]
    ?.flatMap((s) => s.split(","))
    .map((s) => s.trim())
    .filter(Boolean) ?? ["lm_head"];

  let inDir: string;
  try {
    inDir = await resolveModelDir(positionals[0], resolveDataDir(v["data-dir"], env).path, process.cwd(), env);
  } catch (err) {
    console.error(`lowrank ${command}: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const outDir = resolve(positionals[1]);
  const log = (line: string) => console.error(line);
  const backend = createCpuBackend({ threads: 0 });
  try {
    if (command === "quantize") {
      const r = await quantizeHfCheckpoint(inDir, outDir, { quantType, blocksize, doubleQuant: !v["no-double-quant"], skipModules, backend, log });
      console.log(summary("quantized", r, inDir, outDir));
    } else {
      const r = await dequantizeHfCheckpoint(inDir, outDir, { log });
      console.log(summary("dequantized", r, inDir, outDir));
    }
    return 0;
  } catch (err) {
    console.error(`lowrank ${command}: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    backend.dispose();
  }
}
