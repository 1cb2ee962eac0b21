/**
 * One small synchronous SQL interface with three drivers, picked at runtime: better-sqlite3 on
 * Node (Node 20 has no node:sqlite), bun:sqlite on Bun (better-sqlite3 does not load there),
 * node:sqlite on Deno (better-sqlite3 is a NAN addon Deno cannot load). The registry only uses
 * this interface, so the drivers stay interchangeable.
 */
export type SqlValue = string | number | bigint | null | Uint8Array;

export type DriverName = "better-sqlite3" | "bun:sqlite" | "node:sqlite";

export interface Db {
  readonly driver: DriverName;
  readonly path: string;
  exec(sql: string): void;
  run(sql: string, ...params: SqlValue[]): { changes: number };
  get<T>(sql: string, ...params: SqlValue[]): T | undefined;
  all<T>(sql: string, ...params: SqlValue[]): T[];
  /** Run `fn` in one transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on throw); nested calls use savepoints. */
  transaction<T>(fn: () => T): T;
  close(): void;
}

/** What every driver's prepared statement offers (the three APIs agree on these three methods). */
interface RawStatement {
  run(...params: SqlValue[]): { changes: number | bigint };
  get(...params: SqlValue[]): unknown;
  all(...params: SqlValue[]): unknown[];
}

interface RawDb {
  exec(sql: string): void;
  prepare(sql: string): RawStatement;
  close(): void;
}

function detect(): DriverName {
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  if (g.Bun !== undefined) return "bun:sqlite";
  if (g.Deno !== undefined) return "node:sqlite";
  return "better-sqlite3";
}

async function openRaw(driver: DriverName, path: string): Promise<RawDb> {
  if (driver === "bun:sqlite") {
    const { Database } = (await import("bun:sqlite")) as unknown as { Database: new (p: string, o: object) => RawDb & { query(sql: string): RawStatement } };
    const db = new Database(path, { create: true, readwrite: true });
    // bun's get() returns null for no row; normalized below.
    return { exec: (s) => db.exec(s), prepare: (s) => db.query(s), close: () => db.close() };
  }
  if (driver === "node:sqlite") {
    const mod = "node:sqlite"; // a variable: Node 20's type checker and loader do not know this module
    const { DatabaseSync } = (await import(mod)) as { DatabaseSync: new (p: string) => RawDb };
    return new DatabaseSync(path);
  }
  const mod = (await import("better-sqlite3")) as unknown as { default: new (p: string) => RawDb };
  return new mod.default(path);
}

export async function openDb(path: string, driver: DriverName = detect()): Promise<Db> {
  const raw = await openRaw(driver, path);
  raw.exec("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;");
  const cache = new Map<string, RawStatement>();
  const stmt = (sql: string): RawStatement => {
    let s = cache.get(sql);
    if (!s) cache.set(sql, (s = raw.prepare(sql)));
    return s;
  };
  let depth = 0;
  return {
    driver,
    path,
    exec: (sql) => raw.exec(sql),
    run: (sql, ...params) => ({ changes: Number(stmt(sql).run(...params).changes) }),
    get: <T>(sql: string, ...params: SqlValue[]) => (stmt(sql).get(...params) ?? undefined) as T | undefined,
    all: <T>(sql: string, ...params: SqlValue[]) => stmt(sql).all(...params) as T[],
    transaction<T>(fn: () => T): T {
      const sp = `sp${depth}`;
      raw.exec(depth === 0 ? "BEGIN IMMEDIATE" : `SAVEPOINT ${sp}`);
      depth++;
      try {
        const out = fn();
        if (out instanceof Promise) throw new Error("db.transaction: the callback must be synchronous");
        depth--;
        raw.exec(depth === 0 ? "COMMIT" : `RELEASE ${sp}`);
        return out;
      } catch (e) {
        depth--;
        raw.exec(depth === 0 ? "ROLLBACK" : `ROLLBACK TO ${sp}; RELEASE ${sp}`);
        throw e;
      }
    },
    close() {
      cache.clear();
      raw.close();
    },
  };
}
