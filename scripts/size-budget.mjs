#!/usr/bin/env node
// Size budget: no .ts/.wgsl source file over MAX_LINES lines. Big files hide structure and make
// review hard; split them by responsibility instead of raising the limit.
// Checks git-tracked files plus untracked, not-ignored ones (so new files count before their commit).
// Usage: node scripts/size-budget.mjs [--max N]   exit 1 and a list of offenders when over budget.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const maxArg = process.argv.indexOf("--max");
const MAX_LINES = maxArg > 0 ? Number(process.argv[maxArg + 1]) : 800;
const SOURCE = /\.(ts|wgsl)$/;
const SKIP_DIRS = new Set(["node_modules", ".git", ".turbo", "dist"]);

function gitFiles() {
  try {
    const out = execFileSync("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.ts", "*.wgsl"], {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      maxBuffer: 64 << 20,
    });
    return [...new Set(out.split("\0").filter(Boolean))];
  } catch {
    return undefined; // not a git checkout (e.g. an npm tarball): walk the tree instead
  }
}

function walk(dir, acc = []) {
  for (const name of readdirSync(dir)) {
    if (SKIP_DIRS.has(name)) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, acc);
    else if (SOURCE.test(name)) acc.push(relative(ROOT, p));
  }
  return acc;
}

function countLines(path) {
  const text = readFileSync(path, "utf8");
  if (text.length === 0) return 0;
  let n = 0;
  for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) n++;
  return text.endsWith("\n") ? n : n + 1;
}

const files = (gitFiles() ?? walk(ROOT)).filter((f) => SOURCE.test(f) && existsSync(join(ROOT, f)));
const over = files
  .map((f) => ({ file: f, lines: countLines(join(ROOT, f)) }))
  .filter((x) => x.lines > MAX_LINES)
  .sort((a, b) => b.lines - a.lines);

if (over.length) {
  console.log(`size budget: ${over.length} of ${files.length} source files over ${MAX_LINES} lines (split them):`);
  for (const { file, lines } of over) console.log(`  ${file}: ${lines} lines`);
  process.exitCode = 1;
} else {
  console.log(`size budget: ok, ${files.length} .ts/.wgsl files, none over ${MAX_LINES} lines`);
}
