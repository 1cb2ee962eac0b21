/**
 * The adapter registry: versioned artifacts (name@version) with metadata in SQLite and PEFT files
 * on disk under home/adapters/<name>/v<version>/. The database is the source of truth and every
 * change is one transaction; the directory rename happens inside it, so a failed rename rolls the
 * row back and a crash after the rename leaves an orphan that `sweep()` removes at startup.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { extname, join } from "node:path";
import { randomUUID } from "node:crypto";
import { conflict, invalid, notFound } from "../errors.ts";
import type { Home } from "../home.ts";
import type { Db } from "../storage/db.ts";
import { now } from "../storage/schema.ts";
import { type FileInfo, describeFiles, sha256File } from "./files.ts";
import { NAME_RE, checkName, checkVersion, refString } from "./names.ts";

export const WEIGHTS_FILE = "adapter_model.safetensors";
export const CONFIG_FILE = "adapter_config.json";

export interface AdapterVersion {
  id: number;
  name: string;
  version: number;
  ref: string;
  current: boolean;
  base_model: string;
  base_model_hash: string;
  dataset_hash: string | null;
  hyperparameters: Record<string, unknown>;
  eval_metrics: Record<string, unknown>;
  source: string;
  description: string | null;
  /** sha256 of adapter_model.safetensors. */
  sha256: string;
  size_bytes: number;
  files: FileInfo[];
  created_at: string;
}

export interface AdapterSummary {
  name: string;
  current_version: number | null;
  created_at: string;
  updated_at: string;
  versions: AdapterVersion[];
}

export interface NewVersion {
  name: string;
  /** A directory under home/tmp holding the PEFT files; it is moved (renamed) into the registry. */
  stagedDir: string;
  base_model: string;
  base_model_hash: string;
  dataset_hash?: string | null;
  hyperparameters?: Record<string, unknown>;
  eval_metrics?: Record<string, unknown>;
  source: string;
  description?: string | null;
  /** Make the new version the current one (default true). */
  activate?: boolean;
}

export interface AliasTarget {
  /** "name" (follows the current version) or "name@version". */
  adapter: string;
  weight: number;
}

export interface Alias {
  name: string;
  targets: AliasTarget[];
  created_at: string;
  updated_at: string;
}

export interface Dataset {
  id: string;
  name: string | null;
  filename: string;
  sha256: string;
  size_bytes: number;
  format: string | null;
  created_at: string;
}

interface VersionRow {
  id: number;
  name: string;
  version: number;
  base_model: string;
  base_model_hash: string;
  dataset_hash: string | null;
  hyperparameters: string;
  eval_metrics: string;
  source: string;
  description: string | null;
  sha256: string;
  size_bytes: number;
  files: string;
  created_at: string;
  current_version: number | null;
}

interface AdapterRow {
  name: string;
  current_version: number | null;
  next_version: number;
  created_at: string;
  updated_at: string;
}

const DATASET_COLUMNS = "id, name, filename, sha256, size_bytes, format, created_at";

const VERSION_SELECT = "SELECT v.*, a.current_version FROM adapter_versions v JOIN adapters a ON a.name = v.name";

export class Registry {
  /** Called after a version's row is gone (the server evicts it from the adapter cache). */
  onRemoved: (v: AdapterVersion) => void = () => {};

  constructor(readonly db: Db, readonly home: Home) {}

  versionDir(name: string, version: number): string {
    return join(this.home.adapters, name, `v${version}`);
  }

  /** A fresh staging directory under home/tmp (same file system as the registry, so rename is atomic). */
  stagingDir(prefix: string): string {
    const dir = join(this.home.tmp, `${prefix}-${randomUUID()}`);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  // ------------------------------------------------------------------ versions

  async addVersion(input: NewVersion): Promise<AdapterVersion> {
    checkName(input.name, "name");
    const files = await describeFiles(input.stagedDir);
    const weights = files.find((f) => f.name === WEIGHTS_FILE);
    if (!weights || !files.some((f) => f.name === CONFIG_FILE)) throw invalid(`an adapter needs ${CONFIG_FILE} and ${WEIGHTS_FILE}`);
    const size = files.reduce((n, f) => n + f.size, 0);
    const id = this.db.transaction(() => {
      if (this.db.get("SELECT 1 FROM aliases WHERE name = ?", input.name))
        throw conflict(`${input.name} is an alias; adapters and aliases share one namespace`, "name");
      const t = now();
      let a = this.db.get<AdapterRow>("SELECT * FROM adapters WHERE name = ?", input.name);
      if (!a) {
        this.db.run("INSERT INTO adapters (name, current_version, next_version, created_at, updated_at) VALUES (?, NULL, 1, ?, ?)", input.name, t, t);
        a = { name: input.name, current_version: null, next_version: 1, created_at: t, updated_at: t };
      }
      const version = a.next_version;
      this.db.run(
        `INSERT INTO adapter_versions (name, version, base_model, base_model_hash, dataset_hash, hyperparameters, eval_metrics, source, description, sha256, size_bytes, files, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        input.name,
        version,
        input.base_model,
        input.base_model_hash,
        input.dataset_hash ?? null,
        JSON.stringify(input.hyperparameters ?? {}),
        JSON.stringify(input.eval_metrics ?? {}),
        input.source,
        input.description ?? null,
        weights.sha256,
        size,
        JSON.stringify(files),
        t,
      );
      const current = input.activate === false && a.current_version !== null ? a.current_version : version;
      this.db.run("UPDATE adapters SET current_version = ?, next_version = ?, updated_at = ? WHERE name = ?", current, version + 1, t, input.name);
      const dir = this.versionDir(input.name, version);
      mkdirSync(join(this.home.adapters, input.name), { recursive: true });
      if (existsSync(dir)) rmSync(dir, { recursive: true, force: true }); // an orphan of a crash: not in the database
      renameSync(input.stagedDir, dir);
      return version;
    });
    return this.getVersion(input.name, id) as AdapterVersion;
  }

  getVersion(name: string, version: number | null = null): AdapterVersion | undefined {
    const row =
      version === null
        ? this.db.get<VersionRow>(`${VERSION_SELECT} WHERE v.name = ? AND v.version = a.current_version`, name)
        : this.db.get<VersionRow>(`${VERSION_SELECT} WHERE v.name = ? AND v.version = ?`, name, version);
    return row ? toVersion(row) : undefined;
  }

  getVersionById(id: number): AdapterVersion | undefined {
    const row = this.db.get<VersionRow>(`${VERSION_SELECT} WHERE v.id = ?`, id);
    return row ? toVersion(row) : undefined;
  }

  /** One version, or the current one; 404 naming what is missing. */
  resolve(name: string, version: number | null, field = "model"): AdapterVersion {
    const v = this.getVersion(name, version);
    if (v) return v;
    if (!this.hasAdapter(name)) throw notFound(`adapter ${JSON.stringify(name)} not found`, field);
    throw notFound(
      `adapter ${name} has no version ${version} (versions: ${
        this.listVersions(name)
          .map((x) => x.version)
          .join(", ") || "none"
      })`,
      field,
    );
  }

  hasAdapter(name: string): boolean {
    return this.db.get("SELECT 1 FROM adapters WHERE name = ?", name) !== undefined;
  }

  listVersions(name: string): AdapterVersion[] {
    return this.db.all<VersionRow>(`${VERSION_SELECT} WHERE v.name = ? ORDER BY v.version`, name).map(toVersion);
  }

  listAdapters(): AdapterSummary[] {
    const rows = this.db.all<AdapterRow>("SELECT * FROM adapters ORDER BY name");
    return rows.map((a) => ({
      name: a.name,
      current_version: a.current_version,
      created_at: a.created_at,
      updated_at: a.updated_at,
      versions: this.listVersions(a.name),
    }));
  }

  allVersions(): AdapterVersion[] {
    return this.db.all<VersionRow>(`${VERSION_SELECT} ORDER BY v.name, v.version`).map(toVersion);
  }

  /** Delete one version (files included). The current pointer moves to the newest remaining version. */
  async deleteVersion(name: string, version: number): Promise<AdapterVersion> {
    const trash: string[] = [];
    const removed = this.db.transaction(() => this.#deleteVersionTx(name, version, trash));
    await this.#emptyTrash(trash, [removed]);
    return removed;
  }

  /** Delete every version of an adapter and the name itself. */
  async deleteAdapter(name: string): Promise<AdapterVersion[]> {
    const trash: string[] = [];
    const removed = this.db.transaction(() => {
      const versions = this.listVersions(name);
      if (!versions.length) throw notFound(`adapter ${JSON.stringify(name)} not found`, "name");
      return versions.map((v) => this.#deleteVersionTx(name, v.version, trash));
    });
    await this.#emptyTrash(trash, removed);
    return removed;
  }

  /**
   * Point the current version back: to `to`, else to the newest version older than the current
   * one. With `deleteCurrent`, the version rolled back from is deleted in the same transaction.
   */
  async rollback(
    name: string,
    opts: { to?: number; deleteCurrent?: boolean } = {},
  ): Promise<{ current: AdapterVersion; previous: number; deleted: AdapterVersion | null }> {
    const trash: string[] = [];
    const out = this.db.transaction(() => {
      const a = this.db.get<AdapterRow>("SELECT * FROM adapters WHERE name = ?", name);
      if (!a || a.current_version === null) throw notFound(`adapter ${JSON.stringify(name)} not found`, "name");
      const previous = a.current_version;
      let target: number;
      if (opts.to !== undefined) {
        if (!this.getVersion(name, opts.to)) throw notFound(`adapter ${name} has no version ${opts.to}`, "to");
        target = opts.to;
      } else {
        const older = this.db.get<{ v: number | null }>("SELECT MAX(version) AS v FROM adapter_versions WHERE name = ? AND version < ?", name, previous);
        if (older?.v === null || older?.v === undefined)
          throw conflict(`adapter ${name} has no version older than the current one (${previous}) to roll back to`, "to");
        target = older.v;
      }
      if (target === previous && opts.deleteCurrent) throw conflict(`version ${target} is already current; nothing to roll back from`, "to");
      this.db.run("UPDATE adapters SET current_version = ?, updated_at = ? WHERE name = ?", target, now(), name);
      const deleted = opts.deleteCurrent ? this.#deleteVersionTx(name, previous, trash) : null;
      return { previous, deleted };
    });
    await this.#emptyTrash(trash, out.deleted ? [out.deleted] : []);
    return { current: this.getVersion(name) as AdapterVersion, previous: out.previous, deleted: out.deleted };
  }

  #deleteVersionTx(name: string, version: number, trash: string[]): AdapterVersion {
    const v = this.getVersion(name, version);
    if (!v) {
      if (!this.hasAdapter(name)) throw notFound(`adapter ${JSON.stringify(name)} not found`, "name");
      throw notFound(`adapter ${name} has no version ${version}`, "version");
    }
    const remaining = this.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM adapter_versions WHERE name = ?", name)!.n - 1;
    for (const alias of this.listAliases()) {
      const uses = alias.targets.some((t) => t.adapter === v.ref || (t.adapter === name && remaining === 0));
      if (uses) throw conflict(`${v.ref} is used by alias ${alias.name}; change or delete the alias first`, "version");
    }
    this.db.run("DELETE FROM adapter_versions WHERE name = ? AND version = ?", name, version);
    if (remaining === 0) this.db.run("DELETE FROM adapters WHERE name = ?", name);
    else if (v.current) {
      const newest = this.db.get<{ v: number }>("SELECT MAX(version) AS v FROM adapter_versions WHERE name = ?", name)!.v;
      this.db.run("UPDATE adapters SET current_version = ?, updated_at = ? WHERE name = ?", newest, now(), name);
    }
    const dir = this.versionDir(name, version);
    if (existsSync(dir)) {
      const t = join(this.home.tmp, `deleted-${randomUUID()}`);
      renameSync(dir, t);
      trash.push(t);
    }
    return v;
  }

  async #emptyTrash(dirs: string[], removed: AdapterVersion[]): Promise<void> {
    for (const v of removed) this.onRemoved(v);
    for (const d of dirs) await rm(d, { recursive: true, force: true });
    for (const v of removed) {
      const parent = join(this.home.adapters, v.name);
      if (!this.hasAdapter(v.name)) await rm(parent, { recursive: true, force: true });
    }
  }

  // ------------------------------------------------------------------ aliases

  setAlias(name: string, targets: AliasTarget[]): Alias {
    checkName(name, "name");
    return this.db.transaction(() => {
      if (this.hasAdapter(name)) throw conflict(`${name} is an adapter name; adapters and aliases share one namespace`, "name");
      targets.forEach((t, i) => {
        const [n, ver] = t.adapter.split("@");
        if (!this.getVersion(n, ver === undefined ? null : checkVersion(ver, `targets[${i}].adapter`)))
          throw notFound(`alias target ${t.adapter} not found`, `targets[${i}].adapter`);
      });
      const t = now();
      const old = this.db.get<{ created_at: string }>("SELECT created_at FROM aliases WHERE name = ?", name);
      this.db.run(
        "INSERT OR REPLACE INTO aliases (name, targets, created_at, updated_at) VALUES (?, ?, ?, ?)",
        name,
        JSON.stringify(targets),
        old?.created_at ?? t,
        t,
      );
      return this.getAlias(name) as Alias;
    });
  }

  getAlias(name: string): Alias | undefined {
    const row = this.db.get<{ name: string; targets: string; created_at: string; updated_at: string }>("SELECT * FROM aliases WHERE name = ?", name);
    return row ? { ...row, targets: JSON.parse(row.targets) as AliasTarget[] } : undefined;
  }

  listAliases(): Alias[] {
    return this.db
      .all<{ name: string; targets: string; created_at: string; updated_at: string }>("SELECT * FROM aliases ORDER BY name")
      .map((r) => ({ ...r, targets: JSON.parse(r.targets) as AliasTarget[] }));
  }

  deleteAlias(name: string): void {
    if (this.db.run("DELETE FROM aliases WHERE name = ?", name).changes === 0) throw notFound(`alias ${JSON.stringify(name)} not found`, "name");
  }

  // ------------------------------------------------------------------ datasets

  datasetPath(d: Dataset): string {
    return join(this.home.datasets, d.filename);
  }

  /** Store a staged file content-addressed (ds-<sha256 prefix>); the same content twice gives the same dataset. */
  async addDataset(staged: string, opts: { name?: string | null; filename?: string; format?: string | null }): Promise<Dataset> {
    if (opts.name != null) checkName(opts.name, "name");
    const sha = await sha256File(staged);
    const { size } = await stat(staged);
    const id = `ds-${sha.slice(0, 16)}`;
    const ext = datasetExt(opts.filename, opts.format ?? null);
    const existing = this.db.transaction(() => {
      const have = this.getDataset(id);
      if (have) return have;
      if (opts.name && this.db.get("SELECT 1 FROM datasets WHERE name = ?", opts.name)) throw conflict(`dataset name ${opts.name} is taken`, "name");
      // The same content deleted earlier (a tombstone kept for old jobs) comes back under the same id.
      if (this.db.get("SELECT 1 FROM datasets WHERE id = ? AND deleted_at IS NOT NULL", id)) {
        this.db.run(
          "UPDATE datasets SET name = ?, filename = ?, size_bytes = ?, format = ?, created_at = ?, deleted_at = NULL WHERE id = ?",
          opts.name ?? null,
          `${id}${ext}`,
          size,
          opts.format ?? null,
          now(),
          id,
        );
      } else {
        this.db.run(
          "INSERT INTO datasets (id, name, filename, sha256, size_bytes, format, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
          id,
          opts.name ?? null,
          `${id}${ext}`,
          sha,
          size,
          opts.format ?? null,
          now(),
        );
      }
      renameSync(staged, join(this.home.datasets, `${id}${ext}`));
      return null;
    });
    if (existing) await rm(staged, { force: true });
    return this.getDataset(id) as Dataset;
  }

  getDataset(idOrName: string): Dataset | undefined {
    return this.db.get<Dataset>(`SELECT ${DATASET_COLUMNS} FROM datasets WHERE (id = ? OR name = ?) AND deleted_at IS NULL`, idOrName, idOrName);
  }

  listDatasets(): Dataset[] {
    return this.db.all<Dataset>(`SELECT ${DATASET_COLUMNS} FROM datasets WHERE deleted_at IS NULL ORDER BY created_at`);
  }

  /**
   * Delete a dataset and its file. 409 while a queued or running job uses it. A dataset that
   * finished jobs name stays as a tombstone row (no file, no name), so those jobs keep their
   * dataset_id; one no job names is removed outright.
   */
  async deleteDataset(idOrName: string): Promise<Dataset> {
    let trash: string | null = null;
    const d = this.db.transaction(() => {
      const d = this.getDataset(idOrName);
      if (!d) throw notFound(`dataset ${idOrName} not found`, "id");
      const busy = this.db.get<{ id: string }>("SELECT id FROM jobs WHERE dataset_id = ? AND status IN ('queued', 'running') LIMIT 1", d.id);
      if (busy) throw conflict(`dataset ${d.id} is used by fine-tuning job ${busy.id} (not finished); cancel it or wait for it first`, "id");
      if (this.db.get("SELECT 1 FROM jobs WHERE dataset_id = ? LIMIT 1", d.id)) {
        this.db.run("UPDATE datasets SET deleted_at = ?, name = NULL WHERE id = ?", now(), d.id);
      } else this.db.run("DELETE FROM datasets WHERE id = ?", d.id);
      const file = this.datasetPath(d);
      if (existsSync(file)) {
        trash = join(this.home.tmp, `deleted-${randomUUID()}`);
        renameSync(file, trash);
      }
      return d;
    });
    if (trash) await rm(trash, { force: true });
    return d;
  }

  // ------------------------------------------------------------------ startup

  /** Remove what a crash can leave: staging files, version directories without a row, dataset files without a row. */
  sweep(): { removed: string[] } {
    const removed: string[] = [];
    const kill = (p: string) => {
      rmSync(p, { recursive: true, force: true });
      removed.push(p);
    };
    for (const n of readdirSync(this.home.tmp)) kill(join(this.home.tmp, n));
    for (const name of readdirSync(this.home.adapters)) {
      const dir = join(this.home.adapters, name);
      if (!NAME_RE.test(name) || !this.hasAdapter(name)) {
        kill(dir);
        continue;
      }
      for (const vdir of readdirSync(dir)) {
        const m = /^v(\d+)$/.exec(vdir);
        if (!m || !this.getVersion(name, Number(m[1]))) kill(join(dir, vdir));
      }
    }
    const files = new Set(this.listDatasets().map((d) => d.filename));
    for (const f of readdirSync(this.home.datasets)) if (!files.has(f)) kill(join(this.home.datasets, f));
    return { removed };
  }
}

function toVersion(r: VersionRow): AdapterVersion {
  return {
    id: r.id,
    name: r.name,
    version: r.version,
    ref: refString(r.name, r.version),
    current: r.current_version === r.version,
    base_model: r.base_model,
    base_model_hash: r.base_model_hash,
    dataset_hash: r.dataset_hash,
    hyperparameters: JSON.parse(r.hyperparameters) as Record<string, unknown>,
    eval_metrics: JSON.parse(r.eval_metrics) as Record<string, unknown>,
    source: r.source,
    description: r.description,
    sha256: r.sha256,
    size_bytes: r.size_bytes,
    files: JSON.parse(r.files) as FileInfo[],
    created_at: r.created_at,
  };
}

/** Keep the extension the trainer uses to detect the format (.txt = text, .jsonl/.json = records). */
function datasetExt(filename: string | undefined, format: string | null): string {
  const e = filename ? extname(filename).toLowerCase() : "";
  if (e === ".txt" || e === ".jsonl" || e === ".json") return e;
  return format === null || format === "text" ? ".txt" : ".jsonl";
}
