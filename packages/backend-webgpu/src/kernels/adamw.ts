/**
 * AdamW in place on p, m, v (f32), merged across tensors: the optimizer calls adamw once per
 * parameter, and the calls are held (Engine.hold) until the next other command, then recorded as
 * one dispatch per group of up to SLOTS tensors (4 buffers each, within the stage's storage-buffer
 * limit). A LoRA step's 70 tensors take 18 dispatches on a 16-buffer device instead of 70.
 *
 * Parameters: 2 b1, 3 1 - b1, 4 b2, 5 1 - b2, 6 lr / bc1, 7 sqrtBc2, 8 eps (f32), 1 total units;
 * slot j at 16 + 8j: first unit, size, g element base, 1 - lr wd (f32).
 */
import { type AdamWHyper, type DType, isContiguous, isFloat, numel } from "@lowrank/tensor";
import type { Bind } from "../engine.ts";
import { WebGpuLimitError } from "../errors.ts";
import { EPW, Wgsl } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords, groupsFor } from "./context.ts";
import { dispatchRuns, f32Bits } from "./runs.ts";

const WG = 64;
/** Slots in the parameter block (16 + 8 * 6 = 64 words). */
const MAX_SLOTS = 6;

interface Job {
  p: GpuStorage;
  g: GpuInput;
  m: GpuStorage;
  v: GpuStorage;
  size: number;
  h: AdamWHyper;
}

function shared(h: AdamWHyper): number[] {
  return [h.beta1, 1 - h.beta1, h.beta2, 1 - h.beta2, h.lr / h.bc1, h.sqrtBc2, h.eps];
}

function multiCode(gds: DType[]): string {
  const w = new Wgsl().params(64);
  gds.forEach((gd, j) =>
    w
      .buffer(1 + 4 * j, `pw${j}`, true)
      .buffer(2 + 4 * j, `mw${j}`, true)
      .buffer(3 + 4 * j, `vw${j}`, true)
      .buffer(4 + 4 * j, `g${j}`, false)
      .loader(`g${j}`, gd),
  );
  const cases = gds.map(
    (_, j) => `    case ${j}u: {
      let gi = ld_g${j}(p(${18 + 8 * j}u) + li);
      let m = pf(2u) * bitcast<f32>(mw${j}[li]) + pf(3u) * gi;
      let v = pf(4u) * bitcast<f32>(vw${j}[li]) + pf(5u) * gi * gi;
      let x = bitcast<f32>(pw${j}[li]) * pf(${19 + 8 * j}u);
      mw${j}[li] = bitcast<u32>(m);
      vw${j}[li] = bitcast<u32>(v);
      pw${j}[li] = bitcast<u32>(x - pf(6u) * m / (sqrt(v) / pf(7u) + pf(8u)));
    }`,
  );
  return w.build(
    Wgsl.main(
      WG,
      `  if (unit >= p(1u)) { return; }
  var j = 0u;
  for (var s = 1u; s < ${gds.length}u; s++) { if (unit >= p(16u + 8u * s)) { j = s; } }
  let li = unit - p(16u + 8u * j);
  if (li >= p(17u + 8u * j)) { return; }
  switch j {
${cases.join("\n")}
    default: {}
  }`,
    ),
  );
}

/** The single-tensor kernel (bases 16 p, 17 m, 18 v, 19 g; 2 is 1 - lr wd): tensors too large for one binding. */
function singleCode(gd: DType): string {
  const w = new Wgsl().params(64).buffer(1, "pw", true).buffer(2, "mw", true).buffer(3, "vw", true).buffer(4, "g", false).loader("g", gd);
  return w.build(
    Wgsl.main(
      WG,
      `  if (unit >= p(1u)) { return; }
  let li = p(0u) + unit;
  let gi = ld_g(p(19u) + li);
  let io = p(16u) + li;
  let mo = p(17u) + li;
  let vo = p(18u) + li;
  let m = pf(3u) * bitcast<f32>(mw[mo]) + pf(4u) * gi;
  let v = pf(5u) * bitcast<f32>(vw[vo]) + pf(6u) * gi * gi;
  let x = bitcast<f32>(pw[io]) * pf(2u);
  mw[mo] = bitcast<u32>(m);
  vw[vo] = bitcast<u32>(v);
  pw[io] = bitcast<u32>(x - pf(7u) * m / (sqrt(v) / pf(8u) + pf(9u)));`,
    ),
  );
}

function single(ctx: KernelContext, j: Job): void {
  const { p, g, m, v, size, h } = j;
  const k = ctx.engine.compile({ name: "adamw", code: singleCode(g.dtype), bindings: ["write", "write", "write", "read"] });
  const params = new Uint32Array(64);
  params.set([1 - h.lr * h.weightDecay, ...shared(h)].map(f32Bits), 2);
  const flat = (s: GpuStorage) => ({ h: s, a: { strides: [1], offset: 0, epw: 1 } });
  dispatchRuns(ctx, k, [size], [1], [flat(p), flat(m), flat(v), { h: g.handle, a: { strides: [1], offset: g.view.offset, epw: EPW[g.dtype] } }], params, (n) =>
    groupsFor(n, WG),
  );
}

/** The fused adamw entry point: validates now, records later (merged). */
export function makeAdamw(ctx: KernelContext): (p: GpuStorage, g: GpuInput, m: GpuStorage, v: GpuStorage, size: number, h: AdamWHyper) => void {
  const limit = ctx.engine.device.limits.maxStorageBuffersPerShaderStage;
  const slots = Math.max(1, Math.min(MAX_SLOTS, Math.floor(limit / 4)));
  let queue: Job[] = [];
  let key = "";

  const fits = (j: Job) => j.size <= ctx.maxWords && Math.ceil((j.g.view.offset + j.size) / EPW[j.g.dtype]) <= ctx.maxWords;

  const record = () => {
    const jobs = queue;
    queue = [];
    let group: Job[] = [];
    const used = new Set<GpuStorage>();
    const emit = () => {
      if (group.length === 1) single(ctx, group[0]);
      else if (group.length > 1) dispatchGroup(ctx, group);
      group = [];
      used.clear();
    };
    for (const j of jobs) {
      if (!fits(j)) {
        single(ctx, j);
        continue;
      }
      // A storage bound twice in one dispatch (read and write) is invalid: such a job starts a new group.
      const mine = [j.p, j.m, j.v, j.g.handle];
      if (group.length === slots || mine.some((s) => used.has(s))) emit();
      group.push(j);
      for (const s of mine) used.add(s);
    }
    emit();
  };

  return (p, g, m, v, size, h) => {
    for (const [what, s] of [
      ["p", p],
      ["m", m],
      ["v", v],
    ] as const) {
      if (s.dtype !== "f32") throw new TypeError(`adamw: ${what} must be an f32 storage, got ${s.dtype}`);
      if (s.size < size) throw new RangeError(`adamw: ${what} holds ${s.size} elements, fewer than size ${size}`);
    }
    if (!isFloat(g.dtype)) throw new TypeError(`adamw: expected a float tensor, got ${g.dtype}`);
    if (numel(g.view.shape) !== size) throw new RangeError(`adamw: g has ${numel(g.view.shape)} elements, expected ${size}`);
    if (!isContiguous(g.view.shape, g.view.strides))
      throw new WebGpuLimitError("adamw", "adamw: the gradient g must be a contiguous view (call .contiguous() first)");
    if (size === 0) return;
    // Calls merge only when they share the step's scalars (one optimizer step); otherwise record the earlier ones first.
    const k = shared(h).join(",");
    if (queue.length && k !== key) ctx.engine.drain();
    key = k;
    queue.push({ p, g, m, v, size, h });
    ctx.engine.hold(record);
  };
}

function dispatchGroup(ctx: KernelContext, group: Job[]): void {
  const k = ctx.engine.compile({
    name: `adamw_x${group.length}`,
    code: multiCode(group.map((j) => j.g.dtype)),
    bindings: group.flatMap(() => ["write", "write", "write", "read"] as const),
  });
  const params = new Uint32Array(64);
  params.set(shared(group[0].h).map(f32Bits), 2);
  const binds: Bind[] = [];
  let unit = 0;
  group.forEach((j, s) => {
    params.set([unit, j.size, j.g.view.offset, f32Bits(1 - j.h.lr * j.h.weightDecay)], 16 + 8 * s);
    unit += j.size;
    const gw = Math.ceil((j.g.view.offset + j.size) / EPW[j.g.dtype]);
    binds.push(bindWords(j.p, 0, j.size), bindWords(j.m, 0, j.size), bindWords(j.v, 0, j.size), bindWords(j.g.handle, 0, gw));
  });
  params[1] = unit;
  ctx.engine.dispatch(k, params, binds, groupsFor(unit, WG));
}
