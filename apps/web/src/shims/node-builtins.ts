/**
 * Browser stand-in for the node: built-ins that workspace packages import. @lowrank/trainer
 * imports node:fs/promises, node:path and node:process at the top of checkpoint.ts, metrics.ts,
 * methods.ts and finetune.ts (its barrel pulls them in); nn, lora and safetensors import them
 * lazily on their file-path code. The page never takes those paths; vite.config.ts aliases the
 * specifiers here so the bundle links in dev and build, and a stray call fails with a clear error.
 */

function unavailable(name: string): (...args: unknown[]) => never {
  return () => {
    throw new Error(`${name}() is not available in the browser: a file-system path of a Lowrank package was reached from the page`);
  };
}

// node:fs/promises
export const appendFile = unavailable("fs.appendFile");
export const copyFile = unavailable("fs.copyFile");
export const mkdir = unavailable("fs.mkdir");
export const open = unavailable("fs.open");
export const readdir = unavailable("fs.readdir");
export const readFile = unavailable("fs.readFile");
export const rename = unavailable("fs.rename");
export const rm = unavailable("fs.rm");
export const stat = unavailable("fs.stat");
export const writeFile = unavailable("fs.writeFile");
// node:path
export const basename = unavailable("path.basename");
export const dirname = unavailable("path.dirname");
export const isAbsolute = unavailable("path.isAbsolute");
export const join = unavailable("path.join");
export const resolve = unavailable("path.resolve");
// node:url
export const fileURLToPath = unavailable("url.fileURLToPath");

// node:process (default import): only `process.pid` is read, inside checkpoint saving.
const process = { pid: 0, env: {} as Record<string, string | undefined> };
export default process;
