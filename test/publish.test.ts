/**
 * A release, rehearsed offline in a fresh clone: `changeset version` applies every pending
 * changeset (bumping the fixed group together, writing the changelogs), then `npm publish
 * --dry-run` packs every publishable package at its new version. Needs the built dist/ of the
 * checkout (packed.test.ts, which runs first, builds it).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { BIN, ROOT, cleanEnv, publishable } from "./support/pack.ts";

const skip = existsSync(join(ROOT, ".git")) ? false : `${ROOT} is not a git checkout`;

test("changeset version, then npm publish --dry-run of every package, offline in a fresh clone", { skip }, (t) => {
  const pkgs = publishable();
  for (const p of pkgs) assert.ok(existsSync(join(p.dir, "dist", "index.js")), `${p.dir}/dist missing: run npm run build`);
  const pending = readdirSync(join(ROOT, ".changeset")).filter((f) => f.endsWith(".md") && f !== "README.md");
  const dir = mkdtempSync(join(tmpdir(), "lowrank-release-"));
  try {
    const run = (cmd: string, args: string[]) => {
      const r = spawnSync(cmd, args, { cwd: dir, encoding: "utf8", env: cleanEnv({ npm_config_offline: "true" }) });
      assert.equal(r.status, 0, `${cmd} ${args.join(" ")} in ${dir}:\n${r.stdout}${r.stderr}`);
      return `${r.stdout}${r.stderr}`;
    };
    run("git", ["clone", "--quiet", ROOT, dir]);
    symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
    for (const p of pkgs) cpSync(join(p.dir, "dist"), join(dir, "packages", p.dir.split("/").pop()!, "dist"), { recursive: true });
    const before = JSON.parse(readFileSync(join(dir, "packages", "tensor", "package.json"), "utf8")).version as string;

    run(join(BIN, "changeset"), ["version"]);
    const versions = pkgs.map((p) => JSON.parse(readFileSync(join(dir, "packages", p.dir.split("/").pop()!, "package.json"), "utf8")).version as string);
    assert.equal(new Set(versions).size, 1, `the fixed group drifted apart: ${pkgs.map((p, i) => `${p.name}@${versions[i]}`).join(", ")}`);
    if (pending.length) {
      assert.notEqual(versions[0], before, `${pending.length} pending changesets but the version stayed ${before}`);
      assert.ok(
        Number(versions[0].split(".")[0]) === Number(before.split(".")[0]),
        `${before} -> ${versions[0]}: a major bump (a peer dependency range that the new version leaves?)`,
      );
    }
    const out = run("npm", ["publish", "--dry-run", ...pkgs.flatMap((p) => ["-w", join("packages", p.dir.split("/").pop()!)])]);
    for (const p of pkgs) assert.match(out, new RegExp(`\\+ ${p.name}@${versions[0].replaceAll(".", "\\.")}`), `npm publish --dry-run did not reach ${p.name}`);
    t.diagnostic(`${pending.length} changesets: ${before} -> ${versions[0]} for ${pkgs.length} packages; npm publish --dry-run ok`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
