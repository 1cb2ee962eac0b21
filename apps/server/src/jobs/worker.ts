/**
 * A training worker: one child process per running job, so training never blocks the server's
 * event loop and a cancel is a kill. Usage: worker.ts <spec.json>.
 *
 * stdin "stop\n" asks for a graceful stop: the worker exits (code 75) at the first step boundary
 * where a checkpoint exists, so nothing trained is lost. stdin closing (the server died) exits at
 * once; the last checkpoint is on disk either way (the trainer writes them atomically), and the
 * next attempt resumes from it.
 */
import { readFile } from "node:fs/promises";
import process from "node:process";
import { createCpuBackend } from "@lowrank/backend-cpu";
import type { Backend } from "@lowrank/tensor";
import { ConfigError, DatasetError, listCheckpoints, run } from "@lowrank/trainer/node";
import { EXIT_CONFIG, EXIT_DONE, EXIT_FAILED, EXIT_STOPPED, type WorkerEvent, type WorkerSpec, finetuneInput } from "./spec.ts";

function send(e: WorkerEvent): void {
  process.stdout.write(`${JSON.stringify(e)}\n`);
}

async function main(): Promise<number> {
  const specPath = process.argv[2];
  if (!specPath) {
    send({ type: "error", kind: "config", message: "usage: worker.ts <spec.json>" });
    return EXIT_CONFIG;
  }
  const spec = JSON.parse(await readFile(specPath, "utf8")) as WorkerSpec;
  const every = spec.params.checkpoint_every;
  let stopRequested = false;
  let training = false;
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (s: string) => {
    if (!s.includes("stop")) return;
    stopRequested = true;
    if (!training) {
      send({ type: "stopped", step: -1 });
      process.exit(EXIT_STOPPED);
    }
  });
  process.stdin.on("end", () => process.exit(EXIT_STOPPED));
  // Ctrl-C in the server's terminal is the server's to handle (it sends "stop"); a direct SIGTERM is a stop request.
  process.on("SIGINT", () => {});
  process.on("SIGTERM", () => process.stdin.emit("data", "stop\n"));

  const steps = await listCheckpoints(spec.output);
  const resume = steps.length ? spec.output : undefined;
  if (steps.length) send({ type: "resumed", step: steps[steps.length - 1] });
  let backend: Backend;
  try {
    backend = await createBackend(spec.backend ?? "cpu");
  } catch (e) {
    send({
      type: "error",
      kind: "runtime",
      message: `the ${spec.backend} backend the server runs on is not available to the training worker: ${(e as Error).message}`,
    });
    return EXIT_FAILED;
  }
  try {
    const r = await run(finetuneInput(spec, resume), {
      backend,
      skipSamples: true,
      reporter: {
        info: (message) => send({ type: "info", message }),
        progress: (p) => send({ type: "progress", step: p.step, total: p.total, loss: p.loss, tokens_per_s: p.tokensPerS, eta_s: p.etaS }),
        end() {},
      },
      // Runs after backward of 0-based step `step`; checkpoint-<step> was committed by the previous iteration.
      afterBackward: (step) => {
        training = true;
        if (stopRequested && every > 0 && step > 0 && step % every === 0) {
          send({ type: "stopped", step });
          process.exit(EXIT_STOPPED);
        }
      },
    });
    send({ type: "result", steps: r.steps, total_steps: r.totalSteps, files: r.outputFiles });
    return EXIT_DONE;
  } catch (e) {
    const kind = e instanceof ConfigError ? "config" : e instanceof DatasetError ? "data" : "runtime";
    send({ type: "error", kind, message: (e as Error).message ?? String(e) });
    return kind === "runtime" ? EXIT_FAILED : EXIT_CONFIG;
  } finally {
    backend.dispose();
  }
}

/** The same kind of backend as the server's (a device is not shared across processes). */
async function createBackend(kind: "cpu" | "webgpu"): Promise<Backend> {
  if (kind === "cpu") return createCpuBackend();
  const { createWebGpuBackend } = await import("@lowrank/backend-webgpu");
  const edge = (globalThis as { Deno?: unknown }).Deno ? await import("@lowrank/backend-webgpu/deno") : await import("@lowrank/backend-webgpu/node");
  return createWebGpuBackend(await edge.requestWebGpu());
}

const code = await main();
// process.exit: stdin stays open otherwise, and the event loop would wait on it.
process.stdout.write("", () => process.exit(code));
