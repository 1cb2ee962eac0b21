/**
 * `@lowrank/lora/node`: the package with the Node file system registered (also Bun and Deno, through
 * their Node compatibility), so saveAdapter, loadAdapter, readAdapterConfig and mergeAndSave take
 * directory paths. The core (`@lowrank/lora`) has the same functions over the registered storage,
 * and adapterToBytes / loadAdapterFromBytes for bytes.
 */
import "@lowrank/nn/node";

export * from "./index.ts";
