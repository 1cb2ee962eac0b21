/**
 * From a request's `model` to what runs: the base alone, one adapter version, or an alias that
 * splits traffic between versions by weight (A/B). With a `user` field the choice is sticky (a hash
 * of user and alias picks the bucket), so one user keeps seeing the same version.
 */
import { createHash } from "node:crypto";
import { notFound } from "../errors.ts";
import { parseModelRef } from "../registry/names.ts";
import type { AdapterVersion, Alias, Registry } from "../registry/registry.ts";

export interface Route {
  /** The base model id. */
  base: string;
  adapter: AdapterVersion | null;
  /** The alias the request named, when it named one. */
  alias: string | null;
  /** What responses report as `model`: "<base>" or "<base>:<name>@<version>". */
  model: string;
}

export function resolveRoute(model: string, baseId: string, registry: Registry, opts: { user?: string; random?: () => number } = {}): Route {
  const ref = parseModelRef(model, baseId);
  if (ref.kind === "base") return { base: baseId, adapter: null, alias: null, model: baseId };
  if (ref.version === null) {
    const alias = registry.getAlias(ref.name);
    if (alias) {
      const target = pickTarget(alias, opts.user, opts.random ?? Math.random);
      const [name, ver] = target.adapter.split("@");
      const v = registry.getVersion(name, ver === undefined ? null : Number(ver));
      if (!v) throw notFound(`alias ${alias.name} points at ${target.adapter}, which no longer exists`, "model");
      return { base: baseId, adapter: v, alias: alias.name, model: `${baseId}:${v.ref}` };
    }
  }
  const v = registry.resolve(ref.name, ref.version);
  return { base: baseId, adapter: v, alias: null, model: `${baseId}:${v.ref}` };
}

/** Weighted choice; deterministic in (alias, user) when a user is given. */
export function pickTarget(alias: Alias, user: string | undefined, random: () => number): Alias["targets"][number] {
  const total = alias.targets.reduce((s, t) => s + t.weight, 0);
  const u = user ? unitHash(`${alias.name}\0${user}`) : random();
  let acc = 0;
  for (const t of alias.targets) {
    acc += t.weight / total;
    if (u < acc) return t;
  }
  return alias.targets[alias.targets.length - 1];
}

function unitHash(s: string): number {
  return createHash("sha256").update(s).digest().readUInt32BE(0) / 2 ** 32;
}
