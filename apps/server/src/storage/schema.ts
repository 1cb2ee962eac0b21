/** The database schema, migrated by PRAGMA user_version (one step per version, each in a transaction). */
import type { Db } from "./db.ts";

const MIGRATIONS: string[] = [
  // 1: registry, aliases, datasets, jobs, API keys
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE adapters (
     name TEXT PRIMARY KEY,
     current_version INTEGER,
     next_version INTEGER NOT NULL DEFAULT 1,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   );
   CREATE TABLE adapter_versions (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     name TEXT NOT NULL REFERENCES adapters(name),
     version INTEGER NOT NULL,
     base_model TEXT NOT NULL,
     base_model_hash TEXT NOT NULL,
     dataset_hash TEXT,
     hyperparameters TEXT NOT NULL,
     eval_metrics TEXT NOT NULL,
     source TEXT NOT NULL,
     description TEXT,
     sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     files TEXT NOT NULL,
     created_at TEXT NOT NULL,
     UNIQUE (name, version)
   );
   CREATE TABLE aliases (name TEXT PRIMARY KEY, targets TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE datasets (
     id TEXT PRIMARY KEY, name TEXT UNIQUE, filename TEXT NOT NULL, sha256 TEXT NOT NULL,
     size_bytes INTEGER NOT NULL, format TEXT, created_at TEXT NOT NULL
   );
   CREATE TABLE jobs (
     id TEXT PRIMARY KEY, status TEXT NOT NULL, adapter_name TEXT NOT NULL, params TEXT NOT NULL,
     dataset_id TEXT NOT NULL REFERENCES datasets(id), created_by TEXT, created_at TEXT NOT NULL,
     started_at TEXT, finished_at TEXT, error TEXT, result TEXT, progress TEXT,
     attempts INTEGER NOT NULL DEFAULT 0, resumed_from INTEGER
   );
   CREATE TABLE api_keys (
     id TEXT PRIMARY KEY, name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, scope TEXT NOT NULL,
     max_concurrency INTEGER NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT
   );`,
  // 2: datasets can be deleted; a row still named by old jobs stays as a tombstone (its file is removed)
  `ALTER TABLE datasets ADD COLUMN deleted_at TEXT;`,
];

export function migrate(db: Db): number {
  const row = db.get<{ user_version: number }>("PRAGMA user_version");
  let v = Number(row?.user_version ?? 0);
  if (v > MIGRATIONS.length) throw new Error(`${db.path}: schema version ${v} is newer than this server (${MIGRATIONS.length}); upgrade lowrank`);
  while (v < MIGRATIONS.length) {
    const next = v + 1;
    db.transaction(() => {
      db.exec(MIGRATIONS[v]);
      db.exec(`PRAGMA user_version = ${next}`);
    });
    v = next;
  }
  return v;
}

export function now(): string {
  return new Date().toISOString();
}
