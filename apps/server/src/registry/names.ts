/**
 * Names and references. Adapter, alias and dataset names become directory names, so they are
 * restricted to a safe alphabet (no '/', no leading '.', no ':' or '@', which the references use):
 *
 *   <base>                 the base model alone
 *   <base>:<name>          adapter <name> at its current version, or alias <name>
 *   <base>:<name>@<ver>    one version
 *   <name>[@<ver>]         the same without the base prefix
 */
import { invalid, notFound } from "../errors.ts";

export const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export function checkName(name: unknown, field: string): string {
  if (typeof name !== "string") throw invalid(`${field} must be a string`, field);
  if (!NAME_RE.test(name)) {
    throw invalid(
      `${field} ${JSON.stringify(
        name.length > 80 ? `${name.slice(0, 80)}...` : name,
      )} is not a valid name: use 1-64 characters a-z, 0-9, '.', '_', '-', starting with a letter or digit`,
      field,
    );
  }
  return name;
}

export function checkVersion(v: unknown, field: string): number {
  const n = typeof v === "string" && /^[0-9]{1,9}$/.test(v) ? Number(v) : v;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1) throw invalid(`${field} must be a positive integer version`, field);
  return n;
}

export type ModelRef = { kind: "base" } | { kind: "named"; name: string; version: number | null };

/** Parse a `model` field. Unknown bases are 404s (OpenAI's "model not found"), malformed names 400s. */
export function parseModelRef(model: string, baseId: string, field = "model"): ModelRef {
  if (model === baseId) return { kind: "base" };
  let rest = model;
  const colon = model.lastIndexOf(":");
  if (colon >= 0) {
    const base = model.slice(0, colon);
    if (base !== baseId) throw notFound(`model ${JSON.stringify(model)} not found: this server serves base model ${JSON.stringify(baseId)}`, field);
    rest = model.slice(colon + 1);
  }
  const at = rest.indexOf("@");
  const name = at < 0 ? rest : rest.slice(0, at);
  checkName(name, field);
  const version = at < 0 ? null : checkVersion(rest.slice(at + 1), field);
  return { kind: "named", name, version };
}

export function refString(name: string, version: number): string {
  return `${name}@${version}`;
}
