/**
 * Mixed precision on stories260K (skipped without the shared data): --bf16 and --fp16 keep the
 * frozen base and the activations in half precision and the adapters in f32, train to the fp32
 * loss, and fp16's dynamic loss scale backs off on overflow and survives a resume.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { keep, noGrad, tensor } from "@lowrank/tensor";
import { type FinetuneInput, type FinetuneIO, finetune, loadCheckpoint } from "../src/node.ts";
import { storiesRuns } from "./helpers.ts";

const { skip, tmp, cfg } = storiesRuns("mixed");
const backend = createCpuBackend();
const io = (over: Partial<FinetuneIO> = {}): FinetuneIO => ({ backend, skipSamples: true, ...over });
const records = (dir: string) =>
  readFileSync(join(dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));

test.after(() => {
  tmp.remove();
  backend.dispose();
});

test("--bf16 and --fp16 (lora, qlora): half-precision base, f32 adapters, the fp32 run's loss within 2%, lower peak", { skip }, async () => {
  for (const method of ["lora", "qlora"] as const) {
    const f32 = await finetune(cfg({ method }), io());
    for (const mp of ["bf16", "fp16"] as const) {
      const c = cfg({ method, mixedPrecision: mp });
      const seen: Record<string, string> = {};
      const r = await finetune(
        c,
        io({
          afterBackward: (step, params) => {
            if (step === 0) for (const [name, p] of params) seen[name] = `${p.dtype}/${p.grad?.dtype}`;
          },
        }),
      );
      assert.ok(Object.keys(seen).length > 0);
      for (const [name, d] of Object.entries(seen)) assert.equal(d, "f32/f32", `${method} ${mp}: adapter ${name} and its gradient stay f32`);
      const rel = Math.abs(r.after!.loss - f32.after!.loss) / f32.after!.loss;
      assert.ok(rel < 0.02, `${method} ${mp}: eval loss ${r.after!.loss} vs fp32 ${f32.after!.loss}`);
      // LoRA: the base and activations dominate and halve; QLoRA's base is 4-bit already (its
      // dense rest halves) and at this size the f32 adapters and their AdamW state weigh most.
      const bound = method === "lora" ? 0.8 : 0.95;
      assert.ok(r.peakBytes < bound * f32.peakBytes, `${method} ${mp}: peak ${r.peakBytes} vs fp32 ${f32.peakBytes}`);
      const args = JSON.parse(readFileSync(join(c.output, "training_args.json"), "utf8"));
      assert.equal(args.mixedPrecision, mp);
      const ck = await loadCheckpoint(c.output);
      assert.equal(ck.state.fingerprint.mixedPrecision, mp);
      // Adapters are saved in f32 (PEFT's default with autocast_adapter_dtype).
      const header = readFileSync(join(c.output, "adapter_model.safetensors"));
      const meta = JSON.parse(header.subarray(8, 8 + Number(header.readBigUInt64LE(0))).toString("utf8"));
      for (const [k, v] of Object.entries(meta)) if (k !== "__metadata__") assert.equal((v as { dtype: string }).dtype, "F32", `${k} saved as F32`);
      const train = records(c.output).filter((x) => x.split === "train");
      assert.equal(
        train.some((x) => "loss_scale" in x),
        mp === "fp16",
        `${mp}: loss_scale recorded only for fp16`,
      );
    }
  }
});

test(
  "fp16 loss scaling: an overflow skips the step and halves the scale without stopping the run; resume continues the scale bit-identically",
  { skip },
  async () => {
    // Overflow injected on six steps in a row: the scaler backs off each time (no "consecutive skips" stop).
    const overflow = (steps: number[]) =>
      io({
        afterBackward: (step, params) => {
          if (!steps.includes(step)) return;
          const [, p] = [...params][0];
          noGrad(() => p.grad!.assign(keep(tensor(new Float32Array(p.size).fill(Infinity), { shape: [...p.shape], backend }))));
        },
      });
    const c = cfg({ mixedPrecision: "fp16", steps: 8 });
    const r = await finetune(c, overflow([1, 2, 3, 4, 5, 6]));
    assert.equal(r.skipped, 6);
    const scales = records(c.output)
      .filter((x) => x.split === "train")
      .map((x) => x.loss_scale);
    assert.deepEqual(scales, [65536, 65536, 32768, 16384, 8192, 4096, 2048, 1024]);
    assert.match(records(c.output).find((x) => x.step === 2 && x.split === "train").skipped, /overflow f16 at loss scale 65536/);

    const over = { mixedPrecision: "fp16" as const, steps: 6, saveEvery: 3 };
    const straight = await finetune(cfg(over), overflow([1]));
    const first = cfg(over);
    await finetune(first, { ...overflow([1]), stopAt: 3 });
    assert.deepEqual((await loadCheckpoint(join(first.output, "checkpoint-3"))).state.loss_scale, { scale: 32768, good_steps: 1 });
    const resumed = await finetune({ ...first, resume: first.output }, io());
    assert.deepEqual(resumed.losses, straight.losses);
    assert.ok(readFileSync(join(first.output, "adapter_model.safetensors")).equals(readFileSync(join(straight.output, "adapter_model.safetensors"))));
  },
);
