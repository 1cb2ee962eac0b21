/**
 * Run by registry.test.ts under Bun and Deno: the registry on that runtime's SQLite driver
 * (bun:sqlite, node:sqlite). Prints one JSON line.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry, openDb } from "../src/index.ts";
import { ensureHome } from "../src/home.ts";
import { migrate } from "../src/storage/schema.ts";

const root = await mkdtemp(join(tmpdir(), "lowrank-driver-"));
try {
  const home = await ensureHome(root);
  const db = await openDb(home.db);
  migrate(db);
  const reg = new Registry(db, home);
  for (const c of ["one", "two"]) {
    const dir = reg.stagingDir("t");
    await writeFile(join(dir, "adapter_config.json"), "{}");
    await writeFile(join(dir, "adapter_model.safetensors"), c);
    await reg.addVersion({ name: "bot", stagedDir: dir, base_model: "m", base_model_hash: "h", source: "t" });
  }
  const rolled = await reg.rollback("bot", { deleteCurrent: true });
  let rolledBack = false;
  try {
    db.transaction(() => {
      db.run("INSERT INTO aliases (name, targets, created_at, updated_at) VALUES ('x', '[]', 't', 't')");
      throw new Error("abort");
    });
  } catch {
    rolledBack = db.get("SELECT 1 FROM aliases WHERE name = 'x'") === undefined;
  }
  console.log(
    JSON.stringify({ driver: db.driver, current: rolled.current.ref, deleted: rolled.deleted?.ref, versions: reg.listVersions("bot").length, rolledBack }),
  );
  db.close();
} finally {
  await rm(root, { recursive: true, force: true });
}
