#!/usr/bin/env node
// Runs the TypeScript source directly under Node 20 (no build step): tsx's ESM loader,
// registered in-process so there is no second node process to start. TSX_TSCONFIG_PATH names
// the repository's tsconfig, whose paths map every @lowrank import to its source (the packages'
// "default" export is their built dist/), whatever the working directory; processes this one
// starts with --import tsx inherit it.
import { fileURLToPath } from "node:url";
import { register } from "tsx/esm/api";

process.env.TSX_TSCONFIG_PATH ??= fileURLToPath(new URL("../../../tsconfig.json", import.meta.url));
register();
await import("../src/main.ts");
