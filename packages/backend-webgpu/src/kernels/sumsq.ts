/**
 * sum(x²) over many tensors (the global gradient norm): one dispatch per group of up to 15
 * tensors writes one f32 partial per workgroup, then one workgroup adds the partials in a fixed
 * order. A LoRA step's 70 gradients take 5 + 1 dispatches instead of 70 squares, 70 sums and 69 adds.
 *
 * Group parameters: 0 first partial of the group, 1 workgroups; slot j at 16 + 4j: first
 * workgroup, elements, element base. Each workgroup covers CHUNK elements of one slot.
 */
import { isContiguous, isFloat, numel } from "@lowrank/tensor";
import type { Bind } from "../engine.ts";
import { EPW, Wgsl, wgReduce } from "../wgsl/common.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords } from "./context.ts";
import { contig } from "./elementwise.ts";

const WG = 64;
const PER = 16;
const CHUNK = WG * PER;
/** Slots in the parameter block (16 + 4 * 12 = 64 words). */
const MAX_SLOTS = 12;

const REDUCE = wgReduce(WG);

function groupCode(xs: GpuInput[]): string {
  const w = new Wgsl().params(64).buffer(1, "part", true);
  xs.forEach((x, j) => w.buffer(2 + j, `x${j}`, false).loader(`x${j}`, x.dtype));
  const cases = xs.map(
    (_, j) =>
      `    case ${j}u: { for (var e = 0u; e < ${PER}u; e++) { let i = lo + e * ${WG}u + lid; if (i < n) { let v = ld_x${j}(base + i); acc += v * v; } } }`,
  );
  return w.build(`${REDUCE}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let gid = wid.y * nwg.x + wid.x;
  if (gid >= p(1u)) { return; }
  var j = 0u;
  for (var s = 1u; s < ${xs.length}u; s++) { if (gid >= p(16u + 4u * s)) { j = s; } }
  let lo = (gid - p(16u + 4u * j)) * ${CHUNK}u;
  let n = p(17u + 4u * j);
  let base = p(18u + 4u * j);
  var acc = 0.0;
  switch j {
${cases.join("\n")}
    default: {}
  }
  let t = wg_sum(acc, lid);
  if (lid == 0u) { part[p(0u) + gid] = bitcast<u32>(t); }
}`);
}

const FINAL = `${REDUCE}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < p(0u); i += ${WG}u) { acc += bitcast<f32>(part[i]); }
  let t = wg_sum(acc, lid);
  if (lid == 0u) { out[0] = bitcast<u32>(t); }
}`;

export function sumSquares(ctx: KernelContext, inputs: GpuInput[]): GpuStorage {
  const temps: GpuStorage[] = [];
  const slots = Math.max(1, Math.min(MAX_SLOTS, ctx.engine.device.limits.maxStorageBuffersPerShaderStage - 1));
  const xs: GpuInput[] = [];
  for (const x of inputs) {
    if (!isFloat(x.dtype)) throw new TypeError(`sumSquares: expected float tensors, got ${x.dtype}`);
    if (numel(x.view.shape) === 0) continue;
    const c = contig(ctx, x, temps);
    const n = numel(c.view.shape);
    if (n > 2 ** 31 || Math.ceil((c.view.offset + n) / EPW[c.dtype]) > ctx.maxWords)
      throw new RangeError(`sumSquares: a ${n}-element tensor exceeds one storage binding (${ctx.maxWords} words)`);
    xs.push(c);
  }
  const groupsOf = (x: GpuInput) => Math.ceil(numel(x.view.shape) / CHUNK);
  const totalParts = Math.max(
    1,
    xs.reduce((a, x) => a + groupsOf(x), 0),
  );
  const part = ctx.alloc("f32", totalParts);
  const out = ctx.alloc("f32", 1);
  let first = 0;
  for (let s = 0; s < xs.length; s += slots) {
    const group = xs.slice(s, s + slots);
    const k = ctx.engine.compile({ name: `sumSquares_x${group.length}`, code: groupCode(group), bindings: ["write", ...group.map(() => "read" as const)] });
    const params = new Uint32Array(64);
    let g = 0;
    const binds: Bind[] = [bindWords(part, 0, totalParts)];
    group.forEach((x, j) => {
      const n = numel(x.view.shape);
      params.set([g, n, x.view.offset], 16 + 4 * j);
      g += groupsOf(x);
      binds.push(bindWords(x.handle, 0, Math.ceil((x.view.offset + n) / EPW[x.dtype])));
    });
    params[0] = first;
    params[1] = g;
    ctx.engine.dispatch(k, params, binds, g);
    first += g;
  }
  const fk = ctx.engine.compile({
    name: "sumSquares_final",
    code: new Wgsl().params(64).buffer(1, "out", true).buffer(2, "part", false).build(FINAL),
    bindings: ["write", "read"],
  });
  const fp = new Uint32Array(64);
  fp[0] = first;
  ctx.engine.dispatch(fk, fp, [bindWords(out, 0, 1), bindWords(part, 0, totalParts)], 1);
  ctx.release(part);
  for (const t of temps) ctx.release(t);
  return out;
}
