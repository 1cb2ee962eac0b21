import { createCpuBackend } from "@lowrank/backend-cpu";
import { loadHfModel } from "@lowrank/nn";
import { getPeftModel } from "@lowrank/lora";
import { noGrad, scope, tensor, setDefaultBackend } from "@lowrank/tensor";
const be = createCpuBackend();
setDefaultBackend(be);
const model = await loadHfModel("../../shared/data/models/stories260K-hf", { backend: be });
const peft = getPeftModel(model, { r: 8, lora_alpha: 16, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights: false }, "a0", { seed: 1 });
for (let i = 1; i < 4; i++) peft.addAdapter(`a${i}`, { r: 8, lora_alpha: 16, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights: false }, { seed: 1 + i });
model.eval();
const N = 16;
const mode = process.argv[2] ?? "mixed";
const caches = Array.from({ length: N }, () => model.createCache());
for (const c of caches) noGrad(() => scope(() => void model.forward(tensor(Int32Array.of(1, 403, 407, 261, 378), { shape: [1, 5], dtype: "i32" }), { cache: c, lastOnly: true })));
const ids = Array.from({ length: N }, (_, i) => 10 + i);
const best: Record<string, number> = { mixed: 1e9, single: 1e9 };
for (let round = 0; round < 6; round++) for (const m of ["mixed", "single"]) {
  const rows = Array.from({ length: N }, (_, i) => (m === "mixed" ? `a${Math.floor(i / 4)}` : "a0"));
  const t0 = performance.now();
  const steps = 15;
  for (let s = 0; s < steps; s++) {
    if (m === "mixed") peft.setRowAdapters(rows); else peft.setAdapter("a0");
    const t = noGrad(() => model.decodeStep(ids, caches));
    await t.read(); t.dispose();
    peft.setRowAdapters(null);
  }
  best[m] = Math.min(best[m], (performance.now() - t0) / steps);
}
console.log(`best ms per step of ${N}: mixed ${best.mixed.toFixed(2)}, single ${best.single.toFixed(2)}`);
process.exit(0);
