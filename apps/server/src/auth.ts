/**
 * API keys: bearer tokens with one of three nested scopes (read < train < admin). Only sha256
 * hashes are stored. The admin key comes from LOWRANK_API_KEY, else from home/admin.key, which
 * is generated (mode 0600) on the first start and printed once by `lowrank serve`.
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { invalid, notFound } from "./errors.ts";
import type { Db } from "./storage/db.ts";
import { now } from "./storage/schema.ts";

export const SCOPES = ["read", "train", "admin"] as const;
export type Scope = (typeof SCOPES)[number];

/** read: inference and listing; train: + datasets, fine-tunes, adapter uploads; admin: + delete, rollback, aliases, keys, cache, export. */
export function allows(have: Scope, need: Scope): boolean {
  return SCOPES.indexOf(have) >= SCOPES.indexOf(need);
}

export interface ApiKey {
  id: string;
  name: string;
  scope: Scope;
  max_concurrency: number;
  created_at: string;
  revoked_at: string | null;
}

export const hashToken = (t: string): string => createHash("sha256").update(t).digest("hex");

export function newToken(): string {
  return `lrk-${randomBytes(24).toString("base64url")}`;
}

export class KeyStore {
  readonly #adminHash: Buffer;

  constructor(private readonly db: Db, adminToken: string, readonly adminConcurrency = 64) {
    this.#adminHash = Buffer.from(hashToken(adminToken), "hex");
  }

  create(input: { name: string; scope: Scope; max_concurrency: number }): { key: ApiKey; token: string } {
    const token = newToken();
    const id = `key-${randomUUID().slice(0, 8)}`;
    this.db.run(
      "INSERT INTO api_keys (id, name, token_hash, scope, max_concurrency, created_at) VALUES (?, ?, ?, ?, ?, ?)",
      id,
      input.name,
      hashToken(token),
      input.scope,
      input.max_concurrency,
      now(),
    );
    return { key: this.get(id) as ApiKey, token };
  }

  get(id: string): ApiKey | undefined {
    return this.db.get<ApiKey>("SELECT id, name, scope, max_concurrency, created_at, revoked_at FROM api_keys WHERE id = ?", id);
  }

  list(): ApiKey[] {
    return this.db.all<ApiKey>("SELECT id, name, scope, max_concurrency, created_at, revoked_at FROM api_keys ORDER BY created_at");
  }

  revoke(id: string): ApiKey {
    if (id === "admin") throw invalid("the admin key comes from LOWRANK_API_KEY or home/admin.key; change it there", "id");
    if (this.db.run("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", now(), id).changes === 0) {
      throw notFound(`no active key ${JSON.stringify(id)}`, "id");
    }
    return this.get(id) as ApiKey;
  }

  /** The key a bearer token belongs to, or null. */
  authenticate(token: string): ApiKey | null {
    const h = hashToken(token);
    if (timingSafeEqual(Buffer.from(h, "hex"), this.#adminHash)) {
      return { id: "admin", name: "admin", scope: "admin", max_concurrency: this.adminConcurrency, created_at: "", revoked_at: null };
    }
    const k = this.db.get<ApiKey>("SELECT id, name, scope, max_concurrency, created_at, revoked_at FROM api_keys WHERE token_hash = ?", h);
    return k && !k.revoked_at ? k : null;
  }
}

/**
 * The admin token: LOWRANK_API_KEY if set; else the one in `path`; else a new one written there
 * with mode 0600 (`generated: true`: the caller prints it once).
 */
export async function adminToken(path: string, env: Record<string, string | undefined>): Promise<{ token: string; source: "env" | "file" | "generated" }> {
  const fromEnv = env.LOWRANK_API_KEY?.trim();
  if (fromEnv) {
    if (fromEnv.length < 16) throw new Error("LOWRANK_API_KEY is shorter than 16 characters; use a long random key");
    return { token: fromEnv, source: "env" };
  }
  const existing = await readFile(path, "utf8").then(
    (s) => s.trim(),
    () => "",
  );
  if (existing) return { token: existing, source: "file" };
  const token = newToken();
  await writeFile(path, `${token}\n`, { mode: 0o600, flag: "wx" });
  await chmod(path, 0o600); // the umask may have narrowed it; make it exactly 0600
  return { token, source: "generated" };
}
