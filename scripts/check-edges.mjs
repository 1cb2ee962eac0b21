#!/usr/bin/env node
// Libraries without runtime modules: no `node:` import (static or dynamic) in packages/*/src except
// in the runtime edge files (src/node.ts, src/node/**, src/deno.ts, src/browser.ts). The edges are
// what the apps import (`@lowrank/<pkg>/node`); the cores load in a browser or a sandboxed Deno.
// Usage: node scripts/check-edges.mjs    exit 1 and a list of offenders (file:line) otherwise.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const IMPORT = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["']node:[\w/]+["']/;
const EDGE = /^packages\/[^/]+\/src\/(node\.ts|deno\.ts|browser\.ts|node\/)/;

function walk(dir, acc = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, acc);
    else if (/\.(ts|js|mjs)$/.test(name)) acc.push(p);
  }
  return acc;
}

const offenders = [];
for (const pkg of readdirSync(join(ROOT, "packages"))) {
  const src = join(ROOT, "packages", pkg, "src");
  if (!statSync(src, { throwIfNoEntry: false })?.isDirectory()) continue;
  for (const file of walk(src)) {
    const rel = relative(ROOT, file).split("\\").join("/");
    if (EDGE.test(rel)) continue;
    readFileSync(file, "utf8")
      .split("\n")
      .forEach((line, i) => {
        if (IMPORT.test(line) && !/^\s*(\*|\/\/)/.test(line)) offenders.push(`${rel}:${i + 1}: ${line.trim()}`);
      });
  }
}
if (offenders.length) {
  console.error(`check-edges: ${offenders.length} runtime-module import(s) outside the edge files (move them into src/node.ts or src/node/):`);
  for (const o of offenders) console.error(`  ${o}`);
  process.exit(1);
}
console.log("check-edges: no node: imports outside the edge files");
