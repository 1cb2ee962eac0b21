// AssemblyScript source of the WASM SIMD decode attention (compiled by scripts/build-wasm.mjs; not seen by tsc).
// One call is one sequence of a decode step: its Hq query rows over the S keys and values of its KV
// cache, staged packed in the heap by src/wasm/attention-decode.ts. D is a multiple of 4.

import { expRow, madd } from "./exp";

/** First free byte after static data: the engine puts its buffers above it. */
export function heapBase(): usize {
  return __heap_base;
}

/**
 * Query head h (its row at q + h * qs bytes) over K, V [Hkv, S, D] (f32 rows of D packed, kv head i
 * at k + i * hs and v + i * hs; head h reads kv head floor(h / (Hq / Hkv))): out row (at o + h * os)
 * = softmax(scale · q·kᵀ)·v. sc: S f32 of scratch. Scores in f32 with the row max, exponentials and
 * their f64 sum as the flash kernel's softmax.
 */
export function decode(q: usize, qs: usize, o: usize, os: usize, k: usize, v: usize, hs: usize, S: i32, Hq: i32, Hkv: i32, D: i32, scale: f32, sc: usize): void {
  const group = Hq / Hkv;
  const row = <usize>D << 2;
  const S4 = S & ~3;
  const vscale = f32x4.splat(scale);
  for (let h = 0; h < Hq; h++) {
    const kb = k + <usize>(h / group) * hs, vb = v + <usize>(h / group) * hs;
    const qp = q + <usize>h * qs, op = o + <usize>h * os;
    // Scores four keys at a time: four dot products, their lanes summed by one transpose.
    let vm = f32x4.splat(-Infinity);
    for (let j = 0; j < S4; j += 4) {
      const kp = kb + <usize>j * row;
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      for (let d: usize = 0; d < row; d += 16) {
        const x = v128.load(qp + d);
        a0 = madd(x, v128.load(kp + d), a0);
        a1 = madd(x, v128.load(kp + row + d), a1);
        a2 = madd(x, v128.load(kp + 2 * row + d), a2);
        a3 = madd(x, v128.load(kp + 3 * row + d), a3);
      }
      const s = f32x4.mul(hsum4(a0, a1, a2, a3), vscale);
      v128.store(sc + (<usize>j << 2), s);
      vm = f32x4.max(vm, s);
    }
    let m = max(max(f32x4.extract_lane(vm, 0), f32x4.extract_lane(vm, 1)), max(f32x4.extract_lane(vm, 2), f32x4.extract_lane(vm, 3)));
    for (let j = S4; j < S; j++) {
      const kp = kb + <usize>j * row;
      let a = f32x4.splat(0);
      for (let d: usize = 0; d < row; d += 16) a = madd(v128.load(qp + d), v128.load(kp + d), a);
      const s = f32x4.extract_lane(f32x4.mul(hsum4(a, a, a, a), vscale), 0);
      store<f32>(sc + (<usize>j << 2), s);
      m = max(m, s);
    }
    const inv = f32x4.splat(<f32>(1 / expRow(sc, S, m)));
    // The output row by blocks of up to four vectors, each summed over every key in registers.
    let d: usize = 0;
    for (; d + 64 <= row; d += 64) values4(sc, vb + d, row, S, op + d, inv);
    if (row - d == 48) values3(sc, vb + d, row, S, op + d, inv);
    else if (row - d == 32) values2(sc, vb + d, row, S, op + d, inv);
    else if (row - d == 16) values1(sc, vb + d, row, S, op + d, inv);
  }
}

/** [Σ a0, Σ a1, Σ a2, Σ a3]: each vector's lanes summed, as (l0 + l2) + (l1 + l3). */
// @ts-ignore: decorator
@inline function hsum4(a0: v128, a1: v128, a2: v128, a3: v128): v128 {
  const t01 = f32x4.add(i32x4.shuffle(a0, a1, 0, 1, 4, 5), i32x4.shuffle(a0, a1, 2, 3, 6, 7));
  const t23 = f32x4.add(i32x4.shuffle(a2, a3, 0, 1, 4, 5), i32x4.shuffle(a2, a3, 2, 3, 6, 7));
  return f32x4.add(i32x4.shuffle(t01, t23, 0, 2, 4, 6), i32x4.shuffle(t01, t23, 1, 3, 5, 7));
}

// Output vectors at o (1 to 4 of them) = inv · Σ_j p_j · v_j, the value rows `row` bytes apart from vp.
// @ts-ignore: decorator
@inline function values4(sc: usize, vp: usize, row: usize, S: i32, o: usize, inv: v128): void {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let j = 0; j < S; j++, vp += row) {
    const p = f32x4.splat(load<f32>(sc + (<usize>j << 2)));
    a0 = madd(p, v128.load(vp), a0);
    a1 = madd(p, v128.load(vp, 16), a1);
    a2 = madd(p, v128.load(vp, 32), a2);
    a3 = madd(p, v128.load(vp, 48), a3);
  }
  v128.store(o, f32x4.mul(a0, inv));
  v128.store(o, f32x4.mul(a1, inv), 16);
  v128.store(o, f32x4.mul(a2, inv), 32);
  v128.store(o, f32x4.mul(a3, inv), 48);
}

// @ts-ignore: decorator
@inline function values3(sc: usize, vp: usize, row: usize, S: i32, o: usize, inv: v128): void {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0);
  for (let j = 0; j < S; j++, vp += row) {
    const p = f32x4.splat(load<f32>(sc + (<usize>j << 2)));
    a0 = madd(p, v128.load(vp), a0);
    a1 = madd(p, v128.load(vp, 16), a1);
    a2 = madd(p, v128.load(vp, 32), a2);
  }
  v128.store(o, f32x4.mul(a0, inv));
  v128.store(o, f32x4.mul(a1, inv), 16);
  v128.store(o, f32x4.mul(a2, inv), 32);
}

// @ts-ignore: decorator
@inline function values2(sc: usize, vp: usize, row: usize, S: i32, o: usize, inv: v128): void {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
  for (let j = 0; j < S; j++, vp += row) {
    const p = f32x4.splat(load<f32>(sc + (<usize>j << 2)));
    a0 = madd(p, v128.load(vp), a0);
    a1 = madd(p, v128.load(vp, 16), a1);
  }
  v128.store(o, f32x4.mul(a0, inv));
  v128.store(o, f32x4.mul(a1, inv), 16);
}

// @ts-ignore: decorator
@inline function values1(sc: usize, vp: usize, row: usize, S: i32, o: usize, inv: v128): void {
  let a0 = f32x4.splat(0);
  for (let j = 0; j < S; j++, vp += row) a0 = madd(f32x4.splat(load<f32>(sc + (<usize>j << 2))), v128.load(vp), a0);
  v128.store(o, f32x4.mul(a0, inv));
}
