/** `lowrank merge`: arguments in, one call to @lowrank/lora's mergeAndSave, a summary out. */
import type { DType } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { mergeAndSave } from "@lowrank/lora/node";
import { locateDir, resolveDataDir, resolveModelDir } from "./data-dir.ts";

export interface MergeArgs {
  model?: string;
  adapter?: string;
  out?: string;
  adapterName?: string;
  dtype?: string;
  ignoreBaseModel?: boolean;
  dequantize?: boolean;
  backend?: string;
  dataDir?: string;
}

export const MERGE_USAGE =
  "lowrank merge --model <dir> --adapter <dir> --out <dir> [--adapter-name <name>] [--dtype f32|f16|bf16] [--dequantize] [--ignore-base-model]";

/** Returns the exit code: 0 merged, 1 the merge failed (message on stderr), 2 usage. */
export async function mergeCommand(a: MergeArgs, usage: (message: string) => number, env: Record<string, string | undefined> = {}): Promise<number> {
  const missing = (["model", "adapter", "out"] as const).filter((k) => !a[k]);
  if (missing.length) return usage(`merge needs ${missing.map((k) => `--${k}`).join(", ")} (${MERGE_USAGE})`);
  if (a.dtype !== undefined && !["f32", "f16", "bf16"].includes(a.dtype)) return usage(`--dtype ${a.dtype}: use f32, f16 or bf16`);
  // Merging is a one-off host job: it always runs on the CPU backend.
  if (a.backend !== undefined && a.backend !== "cpu" && a.backend !== "auto")
    return usage(`merge runs on the CPU; --backend ${a.backend} is not supported here`);
  const dataDir = resolveDataDir(a.dataDir, env).path;
  let model: string, adapter: string;
  try {
    model = await resolveModelDir(a.model as string, dataDir, process.cwd(), env);
    adapter = locateDir(a.adapter as string, dataDir, process.cwd(), "adapter_config.json", "--adapter");
  } catch (err) {
    console.error(`lowrank merge: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const backend = createCpuBackend();
  try {
    const res = await mergeAndSave(model, adapter, a.out as string, {
      backend,
      dtype: a.dtype as DType | undefined,
      adapterName: a.adapterName,
      ignoreBaseModel: a.ignoreBaseModel,
      dequantize: a.dequantize,
    });
    console.log(`merged ${res.merged.length} LoRA layers of ${a.adapter} into ${a.model}; wrote ${a.out} (${res.dtype}): ${res.files.join(", ")}`);
    return 0;
  } catch (err) {
    console.error(`lowrank merge: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    backend.dispose();
  }
}
