/** Where models and datasets live: --data-dir, else LOWRANK_DATA_DIR, else ../shared/data beside the repo. */
import { existsSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface DataDir {
  path: string;
  source: "--data-dir" | "LOWRANK_DATA_DIR" | "default";
  exists: boolean;
}

/** apps/cli/src -> repository root -> its parent. */
const DEFAULT_DATA_DIR = fileURLToPath(new URL("../../../../shared/data", import.meta.url));

export function resolveDataDir(flag: string | undefined, env: Record<string, string | undefined>): DataDir {
  const [raw, source]: [string, DataDir["source"]] = flag
    ? [flag, "--data-dir"]
    : env.LOWRANK_DATA_DIR
      ? [env.LOWRANK_DATA_DIR, "LOWRANK_DATA_DIR"]
      : [DEFAULT_DATA_DIR, "default"];
  const path = resolve(raw);
  return { path, source, exists: existsSync(path) };
}

/** A path as given when it exists (or is absolute), else the same relative path inside the data dir if that exists. */
export function locateInDataDir(p: string, dataDir: string, cwd: string): string {
  return isAbsolute(p) || existsSync(resolve(cwd, p)) || !existsSync(join(dataDir, p)) ? resolve(cwd, p) : join(dataDir, p);
}
