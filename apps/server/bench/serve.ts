/** `lowrank serve` as its own process on loopback, for the benches: started, and its URL once it says so. */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const CLI = fileURLToPath(new URL("../../cli/bin/lowrank.mjs", import.meta.url));

/**
 * Starts `lowrank serve --model <model> --home <home>` on the CPU backend with admin key `key`; a minute to come up.
 * LOWRANK_BENCH_NODE_ARGS adds Node flags to the server alone (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`:
 * NODE_OPTIONS refuses --cpu-prof, and would profile the client too).
 */
export async function startServe(model: string, home: string, key: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [
      ...(process.env.LOWRANK_BENCH_NODE_ARGS?.split(" ").filter(Boolean) ?? []),
      CLI,
      "serve",
      "--model",
      model,
      "--port",
      "0",
      "--host",
      "127.0.0.1",
      "--home",
      home,
      "--backend",
      "cpu",
    ],
    {
      env: { ...process.env, LOWRANK_API_KEY: key },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let out = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (out += d));
  const end = Date.now() + 60_000;
  while (Date.now() < end) {
    const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
    if (m && out.includes("try: curl")) return { child, url: m[1] };
    if (child.exitCode !== null) throw new Error(`lowrank serve exited: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error(`lowrank serve did not start: ${out}`);
}

/** SIGTERM and wait for the exit (a no-op once it has exited). */
export async function stopServe(child: ChildProcess | null): Promise<void> {
  if (!child || child.exitCode !== null) return;
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
}
