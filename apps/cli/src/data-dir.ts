/** Where models and datasets live: --data-dir, else LOWRANK_DATA_DIR, else ../shared/data beside the repo; Hub models are cached under LOWRANK_CACHE_DIR. */
import { existsSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { homedir } from "node:os";
import process from "node:process";
import { downloadHfModel, isHfRepoId } from "@lowrank/nn/node";

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

/** The Hub download cache: $LOWRANK_CACHE_DIR, else ~/.cache/lowrank/hub. */
export function defaultCacheDir(env: Record<string, string | undefined>): string {
  return env.LOWRANK_CACHE_DIR ? resolve(env.LOWRANK_CACHE_DIR) : join(homedir(), ".cache", "lowrank", "hub");
}

/** The prefix that makes a model name a Hugging Face Hub repo: hf:org/name[@revision]. */
export const HUB_PREFIX = "hf:";

/** A model or adapter name that is no directory here: a local error, never a download. */
export class ModelNotFoundError extends Error {
  override readonly name = "ModelNotFoundError";
}

/**
 * Where a model (or adapter) name points, the same for every command: the path as given (relative
 * to the working directory), else that relative path inside the data dir, else
 * <data dir>/models/<name> (so `--model stories260K-hf` works); the first holding `marker`, else
 * the first that exists. A name that is none of these is a ModelNotFoundError naming where it looked.
 */
export function locateDir(value: string, dataDir: string, cwd: string, marker = "config.json", what = "--model"): string {
  const dirs = isAbsolute(value) ? [value] : [...new Set([resolve(cwd, value), join(dataDir, value), join(dataDir, "models", value)])];
  // A directory without the marker is still the one meant: its loader then names the missing file.
  const hit = dirs.find((d) => existsSync(join(d, marker))) ?? dirs.find((d) => existsSync(d));
  if (hit) return hit;
  const [repoId] = value.split("@");
  const hub =
    !isAbsolute(value) && !value.startsWith(".") && isHfRepoId(repoId) ? `; to download it from the Hugging Face Hub, pass ${HUB_PREFIX}${value}` : "";
  throw new ModelNotFoundError(`${what} ${value}: no ${marker} in ${dirs.join(" or ")}${hub}`);
}

/**
 * A model name as every command reads it: hf:org/name[@revision] is the Hugging Face Hub snapshot
 * (downloaded into the cache unless already there; $HF_ENDPOINT, $HF_TOKEN and $LOWRANK_CACHE_DIR
 * apply), with progress on stderr; anything else is a local directory (locateDir), so a mistyped
 * path is a local error and never a network request.
 */
export async function resolveModelDir(
  value: string,
  dataDir: string,
  cwd: string,
  env: Record<string, string | undefined>,
  log: (s: string) => void = (s) => void process.stderr.write(s),
): Promise<string> {
  if (!value.startsWith(HUB_PREFIX)) return locateDir(value, dataDir, cwd);
  const [repoId, revision] = value.slice(HUB_PREFIX.length).split("@") as [string, string | undefined];
  if (!isHfRepoId(repoId)) throw new ModelNotFoundError(`--model ${value}: expected ${HUB_PREFIX}org/name[@revision], a Hugging Face Hub repo id`);
  const cacheDir = defaultCacheDir(env);
  let last = "";
  let lastT = 0;
  const tty = process.stderr.isTTY === true;
  const dir = await downloadHfModel(repoId, {
    cacheDir,
    revision,
    endpoint: env.HF_ENDPOINT || undefined,
    token: env.HF_TOKEN || undefined,
    onProgress: (p) => {
      const done = p.total !== null && p.loaded >= p.total;
      const now = Date.now();
      if (!done && now - lastT < (tty ? 100 : 2000)) return;
      lastT = now;
      const mb = (n: number) => (n / 1e6).toFixed(1);
      const line = `downloading ${repoId} [${p.index + 1}/${p.count}] ${p.file}: ${mb(p.loaded)}${p.total !== null ? ` / ${mb(p.total)}` : ""} MB`;
      if (line === last) return;
      last = line;
      log(tty ? `\r${line}\x1b[K${done ? "\n" : ""}` : `${line}\n`);
    },
  });
  log(`model ${value}: ${dir}\n`);
  return dir;
}
