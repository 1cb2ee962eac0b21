/**
 * Resident memory of `lowrank serve` while it takes a ~1 GiB adapter upload (issue 18: it must
 * rise by less than 1.5 GiB and come back down afterwards).
 *
 *   node --import tsx apps/server/bench/upload-memory.ts [--mib 1000] [--json out.json]
 *
 * A LoRA rank is at most a layer's width, so a 1 GiB adapter needs a wide base: the bench writes a
 * random one-layer model of Llama-7B's layer width (hidden 4096, MLP 11008, bf16) with
 * stories260K's tokenizer, and an all-linear adapter of about `--mib` MiB for it (every value
 * 0.001), into a temporary directory; starts the server on that model as its own process on
 * loopback, and samples its VmRSS from /proc every 20 ms before, during and after the upload
 * (VmHWM too). Linux only (reads /proc); everything written is removed at the end.
 */
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, openAsBlob, readFileSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startServe, stopServe } from "./serve.ts";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { LlamaForCausalLM, parseLlamaConfig, randomInit, saveHfModel } from "@lowrank/nn/node";
import { Rng } from "@lowrank/tensor";

const { values } = parseArgs({ options: { mib: { type: "string", default: "1000" }, json: { type: "string" } } });
const MIB = Math.min(1020, Math.max(16, Number(values.mib))); // the server's default upload limit is 1 GiB in all
const DATA = process.env.LOWRANK_DATA_DIR ?? fileURLToPath(new URL("../../../../shared/data", import.meta.url));
const STORIES = join(DATA, "models", "stories260K-hf");
/** The wide base: one Llama-7B-sized layer, stories260K's vocabulary (its tokenizer is copied). */
const WIDE = {
  model_type: "llama",
  vocab_size: 512,
  hidden_size: 4096,
  intermediate_size: 11008,
  num_hidden_layers: 1,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
  bos_token_id: 1,
  eos_token_id: 2,
};
const KEY = `bench-${randomBytes(16).toString("hex")}`;
const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;

/** PEFT's tensors for an all-linear adapter of rank r on this config: [key, shape]. */
function tensors(cfg: Record<string, number>, r: number): [string, number[]][] {
  const C = cfg.hidden_size,
    H = cfg.intermediate_size,
    hs = C / cfg.num_attention_heads,
    kv = cfg.num_key_value_heads * hs;
  const dims: Record<string, [number, number]> = {
    q_proj: [C, C],
    k_proj: [C, kv],
    v_proj: [C, kv],
    o_proj: [C, C],
    gate_proj: [C, H],
    up_proj: [C, H],
    down_proj: [H, C],
  };
  const out: [string, number[]][] = [];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    for (const t of TARGETS) {
      const [inF, outF] = dims[t];
      const p = `base_model.model.model.layers.${l}.${["gate_proj", "up_proj", "down_proj"].includes(t) ? "mlp" : "self_attn"}.${t}`;
      out.push([`${p}.lora_A.weight`, [r, inF]], [`${p}.lora_B.weight`, [outF, r]]);
    }
  }
  return out;
}

/** Stream a safetensors file of `specs`, every value `v` (the adapter never exists in this process's memory). */
async function writeAdapter(dir: string, cfg: Record<string, number>): Promise<{ bytes: number; r: number }> {
  const perRank = tensors(cfg, 1).reduce((n, [, s]) => n + s[0] * s[1], 0) * 4;
  const r = Math.floor((MIB * 2 ** 20) / perRank);
  const specs = tensors(cfg, r);
  let at = 0;
  const header: Record<string, unknown> = {};
  for (const [k, s] of specs) {
    const n = s[0] * s[1] * 4;
    header[k] = { dtype: "F32", shape: s, data_offsets: [at, at + n] };
    at += n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const f = await open(join(dir, "adapter_model.safetensors"), "w");
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await f.write(len);
    await f.write(Buffer.from(json));
    const chunk = Buffer.from(new Float32Array(4 << 20).fill(0.001).buffer);
    for (let left = at; left > 0; left -= chunk.length) await f.write(chunk, 0, Math.min(chunk.length, left));
  } finally {
    await f.close();
  }
  await writeFile(
    join(dir, "adapter_config.json"),
    JSON.stringify({ peft_type: "LORA", task_type: "CAUSAL_LM", r, lora_alpha: r, target_modules: [...TARGETS], lora_dropout: 0, bias: "none" }),
  );
  return { bytes: 8 + json.length + at, r };
}

function rssKiB(pid: number): { rss: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  return { rss: field("VmRSS"), hwm: field("VmHWM") };
}

async function writeBase(dir: string): Promise<void> {
  const model = new LlamaForCausalLM(parseLlamaConfig(WIDE, "wide base"), {
    dtype: "bf16",
    init: randomInit(new Rng(0), 0.02),
    backend: createCpuBackend({ threads: 0 }),
  });
  await saveHfModel(model, dir);
  model.dispose();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) if (existsSync(join(STORIES, f))) await copyFile(join(STORIES, f), join(dir, f));
}

async function main(): Promise<number> {
  if (!existsSync(join(STORIES, "tokenizer.json")) || !existsSync("/proc/self/status")) {
    console.log("skipped: needs stories260K-hf (LOWRANK_DATA_DIR) and Linux /proc");
    return 0;
  }
  const work = await mkdtemp(join(tmpdir(), "lowrank-upload-"));
  let server: ChildProcess | null = null;
  try {
    const base = join(work, "base");
    await writeBase(base);
    const adapter = join(work, "adapter");
    await mkdir(adapter);
    const { bytes, r } = await writeAdapter(adapter, WIDE as unknown as Record<string, number>);
    const s = await startServe(base, join(work, "home"), KEY);
    server = s.child;
    const pid = s.child.pid as number;
    await new Promise((res) => setTimeout(res, 1000));
    const before = rssKiB(pid);
    let peak = before.rss;
    const poll = setInterval(() => (peak = Math.max(peak, rssKiB(pid).rss)), 20);
    const form = new FormData();
    form.set("name", "big");
    form.set("adapter_config.json", await openAsBlob(join(adapter, "adapter_config.json")), "adapter_config.json");
    form.set("adapter_model.safetensors", await openAsBlob(join(adapter, "adapter_model.safetensors")), "adapter_model.safetensors");
    const t0 = performance.now();
    const res = await fetch(`${s.url}/v1/adapters`, {
      method: "POST",
      body: form,
      headers: { authorization: `Bearer ${KEY}` },
      signal: AbortSignal.timeout(600_000),
    });
    const text = await res.text();
    const seconds = (performance.now() - t0) / 1000;
    await new Promise((res2) => setTimeout(res2, 3000)); // let the allocator hand buffers back
    clearInterval(poll);
    const after = rssKiB(pid);
    peak = Math.max(peak, after.hwm);
    const gib = (kib: number) => kib / 2 ** 20;
    const rise = gib(peak - before.rss),
      kept = gib(after.rss - before.rss);
    const pass = res.status === 201 && rise < 1.5 && kept < 0.25;
    console.log(
      `upload of a ${(bytes / 2 ** 30).toFixed(3)} GiB adapter (r = ${r}, all-linear, on a one-layer base of width 4096): HTTP ${
        res.status
      } in ${seconds.toFixed(1)} s${res.status === 201 ? "" : `: ${text.slice(0, 200)}`}`,
    );
    console.log(
      `server VmRSS before ${gib(before.rss).toFixed(3)} GiB, peak ${gib(peak).toFixed(3)} GiB (+${rise.toFixed(3)}), after ${gib(after.rss).toFixed(
        3,
      )} GiB (+${kept.toFixed(3)})`,
    );
    console.log(
      `ACCEPTANCE ${pass ? "PASS" : "FAIL"}: resident memory rose by ${rise.toFixed(3)} GiB (limit 1.5) and kept ${kept.toFixed(
        3,
      )} GiB afterwards (limit 0.25)`,
    );
    if (values.json) {
      await writeFile(
        values.json,
        `${JSON.stringify(
          {
            date: new Date().toISOString(),
            command: `node --import tsx apps/server/bench/upload-memory.ts --mib ${MIB}`,
            adapter_bytes: bytes,
            rank: r,
            status: res.status,
            seconds,
            rss_before_kib: before.rss,
            rss_peak_kib: peak,
            rss_after_kib: after.rss,
            pass,
          },
          null,
          2,
        )}\n`,
      );
    }
    return pass ? 0 : 1;
  } finally {
    await stopServe(server);
    await rm(work, { recursive: true, force: true });
  }
}

process.exitCode = await main();
