/**
 * The published packages as a consumer gets them: `npm pack` every publishable package, then
 * install the tarballs into a project outside the repository (no workspace links). External
 * dependencies come from the npm cache that `npm ci` filled: the scratch project gets a lockfile
 * with the repository's versions and integrity hashes, so `npm ci --offline` needs no registry.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = join(ROOT, "node_modules", ".bin");

export interface Publishable {
  dir: string;
  name: string;
  version: string;
  /** Every import specifier the package exports ("@lowrank/nn", "@lowrank/nn/node", ...). */
  specifiers: string[];
}

export interface Packed {
  name: string;
  file: string;
  /** Bytes of the .tgz, and of its files unpacked. */
  size: number;
  unpackedSize: number;
  files: string[];
}

/** packages/* that are not private, in directory order. */
export function publishable(): Publishable[] {
  const out: Publishable[] = [];
  for (const d of readdirSync(join(ROOT, "packages")).sort()) {
    const file = join(ROOT, "packages", d, "package.json");
    if (!existsSync(file)) continue;
    const pkg = JSON.parse(readFileSync(file, "utf8"));
    if (pkg.private) continue;
    const subpaths = Object.entries(pkg.exports ?? {})
      .filter(([k, v]) => v !== null && k !== "./package.json")
      .map(([k]) => k);
    out.push({
      dir: join(ROOT, "packages", d),
      name: pkg.name,
      version: pkg.version,
      specifiers: subpaths.map((s) => (s === "." ? pkg.name : `${pkg.name}/${s.slice(2)}`)),
    });
  }
  return out;
}

/** One `npm pack` for all of them, tarballs into dest. */
export function pack(pkgs: Publishable[], dest: string): Packed[] {
  const args = ["pack", "--json", "--pack-destination", dest, ...pkgs.flatMap((p) => ["-w", p.dir])];
  const out = execFileSync("npm", args, { cwd: ROOT, encoding: "utf8", env: cleanEnv(), stdio: ["ignore", "pipe", "pipe"] });
  const json = JSON.parse(out) as { name: string; filename: string; size: number; unpackedSize: number; files: { path: string }[] }[];
  return json.map((j) => ({ name: j.name, file: join(dest, j.filename), size: j.size, unpackedSize: j.unpackedSize, files: j.files.map((f) => f.path) }));
}

/** The environment without this repository's loaders and test-runner state: a plain consumer's. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1", npm_config_audit: "false", npm_config_fund: "false", ...extra };
  for (const k of ["NODE_OPTIONS", "NODE_TEST_CONTEXT", "TSX_TSCONFIG_PATH", "FORCE_COLOR"]) delete env[k];
  for (const k of Object.keys(env)) if (k.startsWith("npm_package_") || k === "npm_lifecycle_event" || k === "npm_lifecycle_script") delete env[k];
  return env;
}

interface LockEntry {
  version?: string;
  resolved?: string;
  integrity?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  [k: string]: unknown;
}

/**
 * A package-lock.json for a project that depends on the tarballs: our packages resolve to the
 * files, everything they need from the registry to the versions (and hashes) in the repository's
 * own lockfile. Fails naming the dependency the repository's lockfile lacks.
 */
export function scratchLockfile(packs: Packed[], rootDir: string): object {
  const rootLock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")).packages as Record<string, LockEntry>;
  const registry = "https://registry.npmjs.org/";
  const ours = new Map(packs.map((p) => [p.name, p]));
  const packages: Record<string, LockEntry> = {};
  const rootDeps = Object.fromEntries(packs.map((p) => [p.name, `file:${relativeTo(rootDir, p.file)}`]));
  packages[""] = { name: "lowrank-consumer", dependencies: rootDeps };
  const visit = (name: string, from: string) => {
    if (ours.has(name)) return; // at node_modules/<name>, added below
    // Node's lookup: the nearest node_modules/<name> above `from` in the repository's tree.
    let at = from;
    for (;;) {
      const key = `${at ? `${at}/` : ""}node_modules/${name}`;
      if (rootLock[key] && !rootLock[key].link) return copy(key, name);
      if (!at) throw new Error(`package-lock.json: no entry for "${name}" (needed by ${from || "the packed packages"}); run npm install`);
      at = at.includes("/node_modules/") ? at.slice(0, at.lastIndexOf("/node_modules/")) : "";
    }
  };
  const copy = (key: string, name: string) => {
    const out = key.slice(key.indexOf("node_modules/")); // hoisted in the repository = hoisted here
    if (packages[out]) return;
    const e = rootLock[key];
    packages[out] = { ...e, resolved: e.resolved ?? `${registry}${name}/-/${basename(name)}-${e.version}.tgz` };
    for (const d of Object.keys({ ...e.dependencies, ...e.optionalDependencies })) visit(d, key);
  };
  for (const p of packs) {
    const pkg = publishable().find((q) => q.name === p.name);
    if (!pkg) throw new Error(`${p.file}: ${p.name} is not a publishable package`);
    // The tarball's package.json is the workspace's (npm pack copies it as is).
    const manifest = JSON.parse(readFileSync(join(pkg.dir, "package.json"), "utf8")) as LockEntry;
    packages[`node_modules/${p.name}`] = {
      version: manifest.version,
      resolved: rootDeps[p.name],
      ...pick(manifest, ["license", "dependencies", "optionalDependencies", "peerDependencies"]),
    };
    const from = relative(ROOT, pkg.dir).split(sep).join("/"); // packages/<dir>: its own node_modules first
    for (const d of Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies })) visit(d, from);
  }
  return { name: "lowrank-consumer", lockfileVersion: 3, requires: true, packages };
}

const pick = (o: LockEntry, keys: string[]) => Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
const relativeTo = (from: string, to: string) => {
  const rel = relative(from, to).split(sep).join("/");
  return rel.startsWith(".") ? rel : `./${rel}`;
};

/**
 * Installs the tarballs into dir: `npm ci --offline` with the lockfile above; if the cache lacks
 * something, once more online. Returns how it went, for the test's diagnostics.
 */
export function install(dir: string, packs: Packed[]): { offline: boolean; ms: number; note: string } {
  writeFileSync(
    join(dir, "package.json"),
    `${JSON.stringify(
      {
        name: "lowrank-consumer",
        private: true,
        type: "module",
        dependencies: Object.fromEntries(packs.map((p) => [p.name, `file:${relativeTo(dir, p.file)}`])),
      },
      null,
      2,
    )}\n`,
  );
  writeFileSync(join(dir, "package-lock.json"), `${JSON.stringify(scratchLockfile(packs, dir), null, 2)}\n`);
  const t0 = performance.now();
  // --ignore-scripts: as in the repository (koffi and webgpu ship their binaries prebuilt).
  const run = (extra: string[]) =>
    spawnSync("npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund", ...extra], { cwd: dir, encoding: "utf8", env: cleanEnv() });
  let r = run(["--offline"]);
  if (r.status === 0) return { offline: true, ms: performance.now() - t0, note: "npm ci --offline from the npm cache" };
  const first = `${r.stdout}${r.stderr}`.trim().split("\n").slice(-3).join(" / ");
  r = run(["--prefer-offline"]);
  if (r.status !== 0) throw new Error(`npm ci in ${dir} failed offline (${first}) and online:\n${r.stdout}${r.stderr}`);
  return { offline: false, ms: performance.now() - t0, note: `the npm cache lacked something (${first}); installed online` };
}
