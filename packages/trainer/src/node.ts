/**
 * `@lowrank/trainer/node`: the package with the Node file system registered (also Bun and Deno,
 * through their Node compatibility), so finetune(), the checkpoints and metrics.jsonl take paths.
 */
import "@lowrank/lora/node";

export * from "./index.ts";
