/**
 * Where the shared models and datasets live. The environment is read only by the caller (an app
 * or a test passes `env: process.env`), never inside the library.
 */
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { exists } from "@lowrank/safetensors";

export interface DataDirOptions {
  /** An explicit directory; wins over everything else. */
  dataDir?: string;
  /** Environment variables to consult for LOWRANK_DATA_DIR. */
  env?: Readonly<Record<string, string | undefined>>;
  /** The monorepo root; `<repoRoot>/../shared/data` is the last resort (default: found from this file). */
  repoRoot?: string;
}

/**
 * The data directory: `dataDir`, else `env.LOWRANK_DATA_DIR`, else `../shared/data` beside the
 * repository root when it exists, else null. A directory named explicitly or by the variable
 * must exist.
 */
export async function resolveDataDir(opts: DataDirOptions = {}): Promise<string | null> {
  const named = opts.dataDir ?? opts.env?.LOWRANK_DATA_DIR;
  if (named) {
    if (!(await exists(named))) {
      const via = opts.dataDir ? "dataDir option" : "LOWRANK_DATA_DIR";
      throw new Error(`${named}: data directory (from ${via}) does not exist`);
    }
    return named;
  }
  const root = opts.repoRoot ?? (await defaultRepoRoot());
  if (!root) return null;
  const beside = resolve(join(root, "..", "shared", "data"));
  return (await exists(beside)) ? beside : null;
}

/** packages/nn/src/node/ -> the repository root, when this file is on disk. */
async function defaultRepoRoot(): Promise<string | null> {
  if (!import.meta.url.startsWith("file:")) return null;
  return fileURLToPath(new URL(/* @vite-ignore */ "../../../../", import.meta.url));
}
