/** The server's home directory (--home, default ~/.lowrank): one database and the files it points at. */
import { mkdir } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

export interface Home {
  root: string;
  /** SQLite database: registry, datasets, jobs, API keys. */
  db: string;
  /** adapters/<name>/v<version>/{adapter_config.json, adapter_model.safetensors} */
  adapters: string;
  /** datasets/<id>.<ext>, content-addressed. */
  datasets: string;
  /** jobs/<id>/: the trainer's output directory (checkpoints, metrics.jsonl, the adapter). */
  jobs: string;
  /** Staging area; same file system as the rest, so a finished file is renamed into place atomically. */
  tmp: string;
  /** The generated admin key (mode 0600) when LOWRANK_API_KEY is not set. */
  adminKey: string;
}

export function defaultHome(env: Record<string, string | undefined> = process.env): string {
  return env.LOWRANK_HOME || join(homedir(), ".lowrank");
}

export function homePaths(root: string): Home {
  const r = resolve(root);
  return {
    root: r,
    db: join(r, "registry.db"),
    adapters: join(r, "adapters"),
    datasets: join(r, "datasets"),
    jobs: join(r, "jobs"),
    tmp: join(r, "tmp"),
    adminKey: join(r, "admin.key"),
  };
}

export async function ensureHome(root: string): Promise<Home> {
  const h = homePaths(root);
  await mkdir(h.root, { recursive: true, mode: 0o700 });
  for (const d of [h.adapters, h.datasets, h.jobs, h.tmp]) await mkdir(d, { recursive: true });
  return h;
}
