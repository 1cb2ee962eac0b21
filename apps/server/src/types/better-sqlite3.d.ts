// The subset of better-sqlite3 that storage/db.ts uses (no @types package is installed).
declare module "better-sqlite3" {
  interface Statement {
    run(...params: unknown[]): { changes: number | bigint; lastInsertRowid: number | bigint };
    get(...params: unknown[]): unknown;
    all(...params: unknown[]): unknown[];
  }
  class Database {
    constructor(path: string, options?: object);
    exec(sql: string): this;
    prepare(sql: string): Statement;
    close(): this;
  }
  export default Database;
}
