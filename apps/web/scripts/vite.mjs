#!/usr/bin/env node
// `node scripts/vite.mjs dev|build|preview [--data-dir DIR] [--port N]`: Vite's JS API, because
// the vite CLI rejects flags it does not know (vite.config.ts reads --data-dir from argv).
import { fileURLToPath } from "node:url";
import { build, createServer, preview } from "vite";

const [command = "dev", ...args] = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
};
const configFile = fileURLToPath(new URL("../vite.config.ts", import.meta.url));
const port = flag("port") ? Number(flag("port")) : undefined;

if (command === "build") {
  await build({ configFile });
} else if (command === "dev") {
  const server = await createServer({ configFile, server: { port } });
  await server.listen();
  server.printUrls();
} else if (command === "preview") {
  const server = await preview({ configFile, preview: { port } });
  server.printUrls();
} else {
  console.error(`usage: node scripts/vite.mjs dev|build|preview [--data-dir DIR] [--port N] (got ${command})`);
  process.exit(2);
}
