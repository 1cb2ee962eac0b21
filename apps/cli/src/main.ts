/** Entry point: `npx lowrank` (via bin/lowrank.mjs), `bun apps/cli/src/main.ts`, `deno run -A apps/cli/src/main.ts`. */
import process from "node:process";
import { run } from "./cli.ts";

// exitCode, not process.exit(): pending stdout writes flush and the process ends by itself.
process.exitCode = await run(process.argv.slice(2));
