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
  for (let h = 0; h < Hq; h++) {
    const kb = k + <usize>(h / group) * hs, vb = v + <usize>(h / group) * hs;
    const qp = q + <usize>h * qs, op = o + <usize>h * os;
    let m: f32 = -Infinity;
    for (let j = 0; j < S; j++) {
      const kp = kb + <usize>j * row;
      let acc = f32x4.splat(0);
      for (let d: usize = 0; d < row; d += 16) acc = madd(v128.load(qp + d), v128.load(kp + d), acc);
      const s = (f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1) + (f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3))) * scale;
      store<f32>(sc + (<usize>j << 2), s);
      m = max(m, s);
    }
    const inv = f32x4.splat(<f32>(1 / expRow(sc, S, m)));
    // Four vectors of the output row at a time, each summed over every key in registers.
    let d: usize = 0;
    for (; d + 64 <= row; d += 64) {
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      for (let j = 0; j < S; j++) {
        const p = f32x4.splat(load<f32>(sc + (<usize>j << 2)));
        const vp = vb + <usize>j * row + d;
        a0 = madd(p, v128.load(vp), a0);
        a1 = madd(p, v128.load(vp, 16), a1);
        a2 = madd(p, v128.load(vp, 32), a2);
        a3 = madd(p, v128.load(vp, 48), a3);
      }
      v128.store(op + d, f32x4.mul(a0, inv));
      v128.store(op + d, f32x4.mul(a1, inv), 16);
      v128.store(op + d, f32x4.mul(a2, inv), 32);
      v128.store(op + d, f32x4.mul(a3, inv), 48);
    }
    for (; d < row; d += 16) {
      let a = f32x4.splat(0);
      for (let j = 0; j < S; j++) a = madd(f32x4.splat(load<f32>(sc + (<usize>j << 2))), v128.load(vb + <usize>j * row + d), a);
      v128.store(op + d, f32x4.mul(a, inv));
    }
  }
}
