#!/usr/bin/env node
// Runs the TypeScript source directly under Node 20 (no build step): tsx's ESM loader,
// registered in-process so there is no second node process to start.
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
