// AssemblyScript source of the WASM SIMD elementwise kernels (compiled by scripts/build-wasm.mjs; not seen by tsc).
// A block is `rows` rows of `n` 32-bit elements in the heap, written packed to `o`. An operand steps
// `ld` bytes from row to row and reads its row either contiguously (unit = 1) or as one value
// repeated (unit = 0): dense rows, a broadcast row (ld = 0), a column (unit = 0, ld = 4) and a
// scalar (unit = 0, ld = 0) are all blocks. Codes for `op` are BINARY_OPS in src/wasm/elementwise.ts.

import { expRow, expv, madd } from "./exp";

/** First free byte after static data: the engine puts its buffers above it. */
export function heapBase(): usize {
  return __heap_base;
}

// ---- binary: add sub mul div max min (f32 out), lt eq (u8 out) ----

// @ts-ignore: decorator
@inline function vop(op: i32, x: v128, y: v128): v128 {
  if (op == 0) return f32x4.add(x, y);
  if (op == 1) return f32x4.sub(x, y);
  if (op == 2) return f32x4.mul(x, y);
  if (op == 3) return f32x4.div(x, y);
  if (op == 4) return f32x4.max(x, y);
  return f32x4.min(x, y);
}

// @ts-ignore: decorator
@inline function sop(op: i32, x: f32, y: f32): f32 {
  if (op == 0) return x + y;
  if (op == 1) return x - y;
  if (op == 2) return x * y;
  if (op == 3) return x / y;
  if (op == 4) return max<f32>(x, y);
  return min<f32>(x, y);
}

// @ts-ignore: decorator
@inline function arith(op: i32, a: usize, lda: usize, ua: i32, b: usize, ldb: usize, ub: i32, o: usize, rows: i32, n: i32): void {
  const n4 = n & ~3;
  for (let r = 0; r < rows; r++) {
    if (ua && ub) {
      for (let i = 0; i < n4; i += 4) {
        const k = <usize>i << 2;
        v128.store(o + k, vop(op, v128.load(a + k), v128.load(b + k)));
      }
      for (let i = n4; i < n; i++) {
        const k = <usize>i << 2;
        store<f32>(o + k, sop(op, load<f32>(a + k), load<f32>(b + k)));
      }
    } else if (ua) {
      const y = load<f32>(b), vy = f32x4.splat(y);
      for (let i = 0; i < n4; i += 4) v128.store(o + (<usize>i << 2), vop(op, v128.load(a + (<usize>i << 2)), vy));
      for (let i = n4; i < n; i++) store<f32>(o + (<usize>i << 2), sop(op, load<f32>(a + (<usize>i << 2)), y));
    } else if (ub) {
      const x = load<f32>(a), vx = f32x4.splat(x);
      for (let i = 0; i < n4; i += 4) v128.store(o + (<usize>i << 2), vop(op, vx, v128.load(b + (<usize>i << 2))));
      for (let i = n4; i < n; i++) store<f32>(o + (<usize>i << 2), sop(op, x, load<f32>(b + (<usize>i << 2))));
    } else {
      const z = sop(op, load<f32>(a), load<f32>(b));
      for (let i = 0; i < n; i++) store<f32>(o + (<usize>i << 2), z);
    }
    a += lda;
    b += ldb;
    o += <usize>n << 2;
  }
}

// 1/0 bytes for 16 lanes of comparison masks (each -1/0).
// @ts-ignore: decorator
@inline function bytes16(m0: v128, m1: v128, m2: v128, m3: v128): v128 {
  return v128.and(i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(m0, m1), i16x8.narrow_i32x4_s(m2, m3)), i8x16.splat(1));
}

// @ts-ignore: decorator
@inline function vcmp(op: i32, x: v128, y: v128): v128 {
  return op == 6 ? f32x4.lt(x, y) : f32x4.eq(x, y);
}

// @ts-ignore: decorator
@inline function compare(op: i32, a: usize, lda: usize, ua: i32, b: usize, ldb: usize, ub: i32, o: usize, rows: i32, n: i32): void {
  const n16 = n & ~15;
  for (let r = 0; r < rows; r++) {
    const y = load<f32>(b), vy = f32x4.splat(y);
    const x = load<f32>(a), vx = f32x4.splat(x);
    for (let i = 0; i < n16; i += 16) {
      const ka = ua ? a + (<usize>i << 2) : 0, kb = ub ? b + (<usize>i << 2) : 0;
      const m0 = vcmp(op, ua ? v128.load(ka) : vx, ub ? v128.load(kb) : vy);
      const m1 = vcmp(op, ua ? v128.load(ka, 16) : vx, ub ? v128.load(kb, 16) : vy);
      const m2 = vcmp(op, ua ? v128.load(ka, 32) : vx, ub ? v128.load(kb, 32) : vy);
      const m3 = vcmp(op, ua ? v128.load(ka, 48) : vx, ub ? v128.load(kb, 48) : vy);
      v128.store(o + <usize>i, bytes16(m0, m1, m2, m3));
    }
    for (let i = n16; i < n; i++) {
      const p = ua ? load<f32>(a + (<usize>i << 2)) : x, q = ub ? load<f32>(b + (<usize>i << 2)) : y;
      store<u8>(o + <usize>i, op == 6 ? <u8>(p < q) : <u8>(p == q));
    }
    a += lda;
    b += ldb;
    o += <usize>n;
  }
}

export function binary(op: i32, a: usize, lda: usize, ua: i32, b: usize, ldb: usize, ub: i32, o: usize, rows: i32, n: i32): void {
  switch (op) {
    case 0: arith(0, a, lda, ua, b, ldb, ub, o, rows, n); break;
    case 1: arith(1, a, lda, ua, b, ldb, ub, o, rows, n); break;
    case 2: arith(2, a, lda, ua, b, ldb, ub, o, rows, n); break;
    case 3: arith(3, a, lda, ua, b, ldb, ub, o, rows, n); break;
    case 4: arith(4, a, lda, ua, b, ldb, ub, o, rows, n); break;
    case 5: arith(5, a, lda, ua, b, ldb, ub, o, rows, n); break;
    case 6: compare(6, a, lda, ua, b, ldb, ub, o, rows, n); break;
    default: compare(7, a, lda, ua, b, ldb, ub, o, rows, n);
  }
}

// ---- where: o = c != 0 ? a : b on 32-bit lanes, c u8 ----

export function select(c: usize, ldc: usize, uc: i32, a: usize, lda: usize, ua: i32, b: usize, ldb: usize, ub: i32, o: usize, rows: i32, n: i32): void {
  const n8 = n & ~7;
  const zero = i32x4.splat(0);
  for (let r = 0; r < rows; r++) {
    const ta = load<i32>(a), tb = load<i32>(b), tc = load<u8>(c);
    const va = i32x4.splat(ta), vb = i32x4.splat(tb), vc = i16x8.splat(tc);
    for (let i = 0; i < n8; i += 8) {
      const k = <usize>i << 2;
      const m16 = uc ? v128.load8x8_u(c + <usize>i) : vc;
      const m0 = i32x4.ne(i32x4.extend_low_i16x8_u(m16), zero), m1 = i32x4.ne(i32x4.extend_high_i16x8_u(m16), zero);
      v128.store(o + k, v128.bitselect(ua ? v128.load(a + k) : va, ub ? v128.load(b + k) : vb, m0));
      v128.store(o + k, v128.bitselect(ua ? v128.load(a + k, 16) : va, ub ? v128.load(b + k, 16) : vb, m1), 16);
    }
    for (let i = n8; i < n; i++) {
      const k = <usize>i << 2;
      const t = uc ? load<u8>(c + <usize>i) : tc;
      store<i32>(o + k, t ? (ua ? load<i32>(a + k) : ta) : ub ? load<i32>(b + k) : tb);
    }
    c += ldc;
    a += lda;
    b += ldb;
    o += <usize>n << 2;
  }
}

// ---- unary: exp, sigmoid on packed f32 ----

// @ts-ignore: decorator
@inline function uop(op: i32, x: v128): v128 {
  if (op == 0) return expv(x);
  // sigmoid = 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: e^-|x| never overflows.
  const e = expv(f32x4.neg(f32x4.abs(x)));
  const one = f32x4.splat(1);
  return f32x4.div(v128.bitselect(one, e, f32x4.ge(x, f32x4.splat(0))), f32x4.add(one, e));
}

// @ts-ignore: decorator
@inline function unaryLoop(op: i32, a: usize, o: usize, n: i32): void {
  const n4 = n & ~3, n8 = n & ~7;
  for (let i = 0; i < n8; i += 8) {
    const k = <usize>i << 2;
    const y0 = uop(op, v128.load(a + k)), y1 = uop(op, v128.load(a + k, 16)); // two chains a step, as swiglu
    v128.store(o + k, y0);
    v128.store(o + k, y1, 16);
  }
  for (let i = n8; i < n4; i += 4) v128.store(o + (<usize>i << 2), uop(op, v128.load(a + (<usize>i << 2))));
  if (n4 < n) {
    // the tail through a zero-padded vector
    let t = f32x4.splat(0);
    for (let i = n4; i < n; i++) t = f32x4.replace_lane(t, 0, load<f32>(a + (<usize>i << 2))), store<f32>(o + (<usize>i << 2), f32x4.extract_lane(uop(op, t), 0));
  }
}

export function unary(op: i32, a: usize, o: usize, n: i32): void {
  if (op == 0) unaryLoop(0, a, o, n);
  else unaryLoop(1, a, o, n);
}

// ---- sum of each row of a packed [rows, n] block, in f64 ----

/** Eight f64 partial sums (4 lanes x 2 chains), added pairwise at the end, then the tail. */
export function sumRows(a: usize, rows: i32, n: i32, o: usize): void {
  const n8 = n & ~7;
  for (let r = 0; r < rows; r++) {
    let s0 = f64x2.splat(0), s1 = f64x2.splat(0), s2 = f64x2.splat(0), s3 = f64x2.splat(0);
    for (let i = 0; i < n8; i += 8) {
      const x0 = v128.load(a + (<usize>i << 2)), x1 = v128.load(a + (<usize>i << 2), 16);
      s0 = f64x2.add(s0, f64x2.promote_low_f32x4(x0));
      s1 = f64x2.add(s1, f64x2.promote_low_f32x4(i32x4.shuffle(x0, x0, 2, 3, 0, 1)));
      s2 = f64x2.add(s2, f64x2.promote_low_f32x4(x1));
      s3 = f64x2.add(s3, f64x2.promote_low_f32x4(i32x4.shuffle(x1, x1, 2, 3, 0, 1)));
    }
    const s = f64x2.add(f64x2.add(s0, s1), f64x2.add(s2, s3));
    let t = f64x2.extract_lane(s, 0) + f64x2.extract_lane(s, 1);
    for (let i = n8; i < n; i++) t += <f64>load<f32>(a + (<usize>i << 2));
    store<f64>(o + (<usize>r << 3), t);
    a += <usize>n << 2;
  }
}

// ---- column sums: acc[j] += a[r, j] for each row in order (f64, the same adds as the TypeScript path) ----

export function addRows(acc: usize, a: usize, rows: i32, n: i32): void {
  const n4 = n & ~3;
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < n4; i += 4) {
      const x = v128.load(a + (<usize>i << 2));
      const p = acc + (<usize>i << 3);
      v128.store(p, f64x2.add(v128.load(p), f64x2.promote_low_f32x4(x)));
      v128.store(p, f64x2.add(v128.load(p, 16), f64x2.promote_low_f32x4(i32x4.shuffle(x, x, 2, 3, 0, 1))), 16);
    }
    for (let i = n4; i < n; i++) {
      const p = acc + (<usize>i << 3);
      store<f64>(p, load<f64>(p) + <f64>load<f32>(a + (<usize>i << 2)));
    }
    a += <usize>n << 2;
  }
}

// ---- fused kernels of the transformer block (kernels/fused-nn.ts has the TypeScript reference) ----

/**
 * Inverted dropout: lane i keeps iff the 24 high bits of hash32((hs ^ (lo + i)) + hi) reach thr
 * (uniformAt in random.ts with hs = hash32(seed), hi the counter's high-word term, thr =
 * ceil(p * 2^24)), scaled by `scale`. Integer math only, so the mask is bit-identical.
 */
// @ts-ignore: decorator
@inline function dropoutHash(idx: v128, vhs: v128, vhi: v128): v128 {
  let h = i32x4.add(v128.xor(vhs, idx), vhi);
  h = v128.xor(h, i32x4.shr_u(h, 16));
  h = i32x4.mul(h, i32x4.splat(0x7feb352d));
  h = v128.xor(h, i32x4.shr_u(h, 15));
  h = i32x4.mul(h, i32x4.splat(0x846ca68b));
  return v128.xor(h, i32x4.shr_u(h, 16));
}

export function dropout(a: usize, o: usize, n: i32, hs: i32, lo: i32, hi: i32, thr: i32, scale: f32, m: usize): void {
  const vs = f32x4.splat(scale), vt = i32x4.splat(thr), vhs = i32x4.splat(hs), vhi = i32x4.splat(hi);
  let idx = i32x4.add(i32x4.splat(lo), i32x4(0, 1, 2, 3));
  const four = i32x4.splat(4), sixteen = i32x4.splat(16);
  // Four independent vectors a step: one hash is a chain of dependent multiplies and shifts, and
  // four of them keep the core's SIMD ports busy (measured 1.1 -> 0.84 ns per element with the copies; same bits).
  const n16 = n & ~15;
  for (let i = 0; i < n16; i += 16) {
    const k = <usize>i << 2;
    const i1 = i32x4.add(idx, four), i2 = i32x4.add(i1, four), i3 = i32x4.add(i2, four);
    const k0 = i32x4.ge_s(i32x4.shr_u(dropoutHash(idx, vhs, vhi), 8), vt);
    const k1 = i32x4.ge_s(i32x4.shr_u(dropoutHash(i1, vhs, vhi), 8), vt);
    const k2 = i32x4.ge_s(i32x4.shr_u(dropoutHash(i2, vhs, vhi), 8), vt);
    const k3 = i32x4.ge_s(i32x4.shr_u(dropoutHash(i3, vhs, vhi), 8), vt);
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k), vs), k0));
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k, 16), vs), k1), 16);
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k, 32), vs), k2), 32);
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k, 48), vs), k3), 48);
    // The keep mask as bytes (0xff / 0), for a second pass with the same mask (maskApply).
    if (m) v128.store(m + <usize>i, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(k0, k1), i16x8.narrow_i32x4_s(k2, k3)));
    idx = i32x4.add(idx, sixteen);
  }
  const n4 = n & ~3;
  for (let i = n16; i < n4; i += 4) {
    const keep = i32x4.ge_s(i32x4.shr_u(dropoutHash(idx, vhs, vhi), 8), vt);
    v128.store(o + (<usize>i << 2), v128.and(f32x4.mul(v128.load(a + (<usize>i << 2)), vs), keep));
    if (m) store<i32>(m + <usize>i, i32x4.extract_lane(i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(keep, keep), i16x8.narrow_i32x4_s(keep, keep)), 0));
    idx = i32x4.add(idx, four);
  }
  for (let i = n4; i < n; i++) {
    let h = ((hs ^ (lo + i)) + hi);
    h ^= h >>> 16;
    h *= 0x7feb352d;
    h ^= h >>> 15;
    h *= 0x846ca68b;
    h ^= h >>> 16;
    store<f32>(o + (<usize>i << 2), (h >>> 8) >= thr ? load<f32>(a + (<usize>i << 2)) * scale : 0);
    if (m) store<u8>(m + <usize>i, (h >>> 8) >= thr ? 0xff : 0);
  }
}

/** o = m ? a · scale : 0 with dropout's keep-mask bytes m (0xff / 0): the same values dropout gives. n a multiple of 16 or the tail. */
export function maskApply(a: usize, m: usize, o: usize, n: i32, scale: f32): void {
  const vs = f32x4.splat(scale);
  const n16 = n & ~15;
  for (let i = 0; i < n16; i += 16) {
    const k = <usize>i << 2;
    const b = v128.load(m + <usize>i);
    const lo = i16x8.extend_low_i8x16_s(b), hi = i16x8.extend_high_i8x16_s(b);
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k), vs), i32x4.extend_low_i16x8_s(lo)));
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k, 16), vs), i32x4.extend_high_i16x8_s(lo)), 16);
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k, 32), vs), i32x4.extend_low_i16x8_s(hi)), 32);
    v128.store(o + k, v128.and(f32x4.mul(v128.load(a + k, 48), vs), i32x4.extend_high_i16x8_s(hi)), 48);
  }
  for (let i = n16; i < n; i++) store<f32>(o + (<usize>i << 2), load<u8>(m + <usize>i) ? load<f32>(a + (<usize>i << 2)) * scale : 0);
}

// @ts-ignore: decorator
@inline function sigmoidv(x: v128): v128 {
  return uop(1, x);
}

/** o = g * sigmoid(g) * u (SwiGLU). n is a multiple of 4 (the caller zero-pads the tail). */
export function swiglu(g: usize, u: usize, o: usize, n: i32): void {
  // Two vectors a step: sigmoid is one long dependency chain, two independent ones keep the
  // out-of-order core busy (measured 3.4 -> 2.0 ns per element; same results).
  const n8 = n & ~7;
  for (let i = 0; i < n8; i += 8) {
    const k = <usize>i << 2;
    const x0 = v128.load(g + k), x1 = v128.load(g + k, 16);
    const s0 = sigmoidv(x0), s1 = sigmoidv(x1);
    v128.store(o + k, f32x4.mul(f32x4.mul(x0, s0), v128.load(u + k)));
    v128.store(o + k, f32x4.mul(f32x4.mul(x1, s1), v128.load(u + k, 16)), 16);
  }
  for (let i = n8; i < n; i += 4) {
    const k = <usize>i << 2;
    const x = v128.load(g + k);
    v128.store(o + k, f32x4.mul(f32x4.mul(x, sigmoidv(x)), v128.load(u + k)));
  }
}

/** In place: g <- gy * u * s * (1 + g (1 - s)), u <- gy * g * s, with s = sigmoid(g). n a multiple of 4. */
export function swigluBackward(g: usize, u: usize, gy: usize, n: i32): void {
  // Two vectors a step, as swiglu.
  const n8 = n & ~7;
  for (let i = 0; i < n8; i += 8) {
    const k = <usize>i << 2;
    const x0 = v128.load(g + k), x1 = v128.load(g + k, 16);
    const s0 = sigmoidv(x0), s1 = sigmoidv(x1);
    swigluGrad(g + k, u + k, gy + k, x0, s0);
    swigluGrad(g + k + 16, u + k + 16, gy + k + 16, x1, s1);
  }
  for (let i = n8; i < n; i += 4) {
    const k = <usize>i << 2;
    const x = v128.load(g + k);
    swigluGrad(g + k, u + k, gy + k, x, sigmoidv(x));
  }
}

// @ts-ignore: decorator
@inline function swigluGrad(g: usize, u: usize, gy: usize, x: v128, s: v128): void {
  const one = f32x4.splat(1);
  const gs = f32x4.mul(v128.load(gy), s);
  const up = v128.load(u);
  v128.store(u, f32x4.mul(gs, x));
  v128.store(g, f32x4.mul(f32x4.mul(gs, up), f32x4.add(one, f32x4.mul(x, f32x4.sub(one, s)))));
}

/**
 * RMSNorm of `rows` packed rows of n: rstd = 1/sqrt(mean(x²) + eps) from an f64 sum of squares
 * (as the TypeScript kernel), o = x · rstd · w in f32.
 */
export function rmsNorm(x: usize, w: usize, o: usize, rstd: usize, rows: i32, n: i32, eps: f64): void {
  const n4 = n & ~3;
  for (let r = 0; r < rows; r++) {
    let s0 = f64x2.splat(0), s1 = f64x2.splat(0);
    for (let i = 0; i < n4; i += 4) {
      const v = v128.load(x + (<usize>i << 2));
      const lo = f64x2.promote_low_f32x4(v), hi = f64x2.promote_low_f32x4(i32x4.shuffle(v, v, 2, 3, 0, 1));
      s0 = f64x2.add(s0, f64x2.mul(lo, lo));
      s1 = f64x2.add(s1, f64x2.mul(hi, hi));
    }
    const s = f64x2.add(s0, s1);
    let ss = f64x2.extract_lane(s, 0) + f64x2.extract_lane(s, 1);
    for (let i = n4; i < n; i++) { const v = <f64>load<f32>(x + (<usize>i << 2)); ss += v * v; }
    const rs = <f32>(1 / Math.sqrt(ss / <f64>n + eps));
    store<f32>(rstd + (<usize>r << 2), rs);
    const vr = f32x4.splat(rs);
    for (let i = 0; i < n4; i += 4) {
      const k = <usize>i << 2;
      v128.store(o + k, f32x4.mul(f32x4.mul(v128.load(x + k), vr), v128.load(w + k)));
    }
    for (let i = n4; i < n; i++) store<f32>(o + (<usize>i << 2), load<f32>(x + (<usize>i << 2)) * rs * load<f32>(w + (<usize>i << 2)));
    x += <usize>n << 2;
    o += <usize>n << 2;
  }
}

/**
 * RMSNorm's backward over packed rows: gx = rstd (gy w - x̂ · mean(gy w x̂)), x̂ = x rstd, and
 * gw[i] += gy x̂ accumulated in f64 row by row (gw is n f64 values the caller keeps across calls).
 */
export function rmsNormBackward(x: usize, w: usize, gy: usize, gx: usize, gw: usize, rstd: usize, rows: i32, n: i32): void {
  for (let r = 0; r < rows; r++) {
    const rs = load<f32>(rstd + (<usize>r << 2));
    let dot: f64 = 0;
    for (let i = 0; i < n; i++) {
      const k = <usize>i << 2;
      dot += <f64>load<f32>(gy + k) * <f64>load<f32>(w + k) * <f64>load<f32>(x + k) * <f64>rs;
    }
    const d = <f32>(dot / <f64>n);
    for (let i = 0; i < n; i++) {
      const k = <usize>i << 2;
      const xh = load<f32>(x + k) * rs, g = load<f32>(gy + k);
      const p = gw + (<usize>i << 3);
      store<f64>(p, load<f64>(p) + <f64>g * <f64>xh);
      store<f32>(gx + k, rs * (g * load<f32>(w + k) - xh * d));
    }
    x += <usize>n << 2;
    gy += <usize>n << 2;
    gx += <usize>n << 2;
  }
}

// ---- RoPE, rotate-half layout (kernels/fused-nn.ts ropeKernel is the reference) ----

// @ts-ignore: decorator
@inline function lo64(x: v128): v128 {
  return f64x2.promote_low_f32x4(x);
}

// @ts-ignore: decorator
@inline function hi64(x: v128): v128 {
  return f64x2.promote_low_f32x4(i32x4.shuffle(x, x, 2, 3, 0, 1));
}

/** Four f32 lanes a·c - b·s in f64, rounded once to f32 (a·c and b·s are exact in f64). */
// @ts-ignore: decorator
@inline function rotSub(a: v128, b: v128, c: v128, s: v128): v128 {
  const l = f64x2.sub(f64x2.mul(lo64(a), lo64(c)), f64x2.mul(lo64(b), lo64(s)));
  const h = f64x2.sub(f64x2.mul(hi64(a), hi64(c)), f64x2.mul(hi64(b), hi64(s)));
  return i32x4.shuffle(f32x4.demote_f64x2_zero(l), f32x4.demote_f64x2_zero(h), 0, 1, 4, 5);
}

/** Four f32 lanes a·c + b·s, as rotSub. */
// @ts-ignore: decorator
@inline function rotAdd(a: v128, b: v128, c: v128, s: v128): v128 {
  const l = f64x2.add(f64x2.mul(lo64(a), lo64(c)), f64x2.mul(lo64(b), lo64(s)));
  const h = f64x2.add(f64x2.mul(hi64(a), hi64(c)), f64x2.mul(hi64(b), hi64(s)));
  return i32x4.shuffle(f32x4.demote_f64x2_zero(l), f32x4.demote_f64x2_zero(h), 0, 1, 4, 5);
}

/**
 * o[h, t, :] = rotate(x[h·sh + t·st + :]) for h < H, t < rows: with p = x[i], q = x[i + D/2],
 * o[i] = p·c - q·s and o[i + D/2] = q·c + p·s, c and s = sign·sin from row t of the [rows, D/2]
 * tables. sh, st in elements; D/2 a multiple of 4. The products are exact in f64 and each result
 * is rounded as the TypeScript kernel rounds it (f64, then f32), so both give the same bits.
 */
export function ropeHalf(x: usize, sh: i32, st: i32, H: i32, rows: i32, D: i32, cos: usize, sin: usize, sign: f32, o: usize): void {
  const sg = f32x4.splat(sign);
  const half = D >> 1;
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < rows; t++) {
      const src = x + ((<usize>(h * sh + t * st)) << 2),
        dst = o + ((<usize>((h * rows + t) * D)) << 2),
        tb = (<usize>(t * half)) << 2;
      for (let i = 0; i < half; i += 4) {
        const k = <usize>i << 2,
          kq = (<usize>(i + half)) << 2;
        const p = v128.load(src + k),
          q = v128.load(src + kq),
          c = v128.load(cos + tb + k),
          s = f32x4.mul(v128.load(sin + tb + k), sg);
        v128.store(dst + k, rotSub(p, q, c, s));
        v128.store(dst + kq, rotAdd(q, p, c, s));
      }
    }
  }
}

// ---- cross-entropy rows (kernels/fused.ts has the TypeScript reference) ----

/** lse[i] = m + log Σ_j e^(row_i[j] - m), m the row's max, for rows of V at s (left holding the exps). */
export function rowLse(s: usize, rows: i32, V: i32, lse: usize): void {
  const V4 = V & ~3;
  for (let i = 0; i < rows; i++) {
    let vm = f32x4.splat(-Infinity);
    for (let j = 0; j < V4; j += 4) vm = f32x4.max(vm, v128.load(s + (<usize>j << 2)));
    let m = max(max(f32x4.extract_lane(vm, 0), f32x4.extract_lane(vm, 1)), max(f32x4.extract_lane(vm, 2), f32x4.extract_lane(vm, 3)));
    for (let j = V4; j < V; j++) m = max(m, load<f32>(s + (<usize>j << 2)));
    const sum = expRow(s, V, m);
    store<f32>(lse + (<usize>i << 2), <f32>(<f64>m + Math.log(sum)));
    s += <usize>V << 2;
  }
}

/** In place: row_i[j] = e^(row_i[j] - lse[i]) · g[i] (cross-entropy's gradient before the target's -g[i]). */
export function rowSoftmaxGrad(s: usize, rows: i32, V: i32, lse: usize, g: usize): void {
  const V4 = V & ~3;
  for (let i = 0; i < rows; i++) {
    const l = load<f32>(lse + (<usize>i << 2)), gi = load<f32>(g + (<usize>i << 2));
    const vl = f32x4.splat(l), vg = f32x4.splat(gi);
    for (let j = 0; j < V4; j += 4) {
      const p = s + (<usize>j << 2);
      v128.store(p, f32x4.mul(expv(f32x4.sub(v128.load(p), vl)), vg));
    }
    for (let j = V4; j < V; j++) {
      const p = s + (<usize>j << 2);
      store<f32>(p, f32x4.extract_lane(expv(f32x4.splat(load<f32>(p) - l)), 0) * gi);
    }
    s += <usize>V << 2;
  }
}

// ---- row copies (kernels/strided.ts copyView): rows of n 4-byte elements gathered to packed rows ----

/** dst row r = the n elements at src + starts[r] (element offsets, i32). */
export function copyRows(src: usize, starts: usize, rows: i32, n: i32, dst: usize): void {
  const bytes = <usize>n << 2;
  for (let r = 0; r < rows; r++) memory.copy(dst + <usize>r * bytes, src + ((<usize>load<i32>(starts + (<usize>r << 2))) << 2), bytes);
}

// ---- attention rows (kernels/attention.ts): a block of score rows, each row S wide ----

/** Keys row i of the block may see: all S, or S - T + t + 1 for its query t = (r0 + i) % T. */
// @ts-ignore: decorator
@inline function visibleKeys(causal: i32, S: i32, T: i32, r: i32): i32 {
  return causal ? S - T + (r % T) + 1 : S;
}

/** In place: row = softmax(scale · row) over its visible keys, zeros beyond; lse[i] = the row's logsumexp. */
export function attnSoftmax(s: usize, rows: i32, S: i32, T: i32, r0: i32, causal: i32, scale: f32, lse: usize): void {
  const vs = f32x4.splat(scale);
  for (let i = 0; i < rows; i++) {
    const n = visibleKeys(causal, S, T, r0 + i), n4 = n & ~3;
    let vm = f32x4.splat(-Infinity);
    for (let j = 0; j < n4; j += 4) {
      const p = s + (<usize>j << 2);
      const x = f32x4.mul(v128.load(p), vs);
      v128.store(p, x);
      vm = f32x4.max(vm, x);
    }
    let m = max(max(f32x4.extract_lane(vm, 0), f32x4.extract_lane(vm, 1)), max(f32x4.extract_lane(vm, 2), f32x4.extract_lane(vm, 3)));
    for (let j = n4; j < n; j++) {
      const p = s + (<usize>j << 2);
      const x = load<f32>(p) * scale;
      store<f32>(p, x);
      m = max(m, x);
    }
    const sum = expRow(s, n, m);
    const inv = <f32>(1 / sum);
    const vi = f32x4.splat(inv);
    for (let j = 0; j < n4; j += 4) v128.store(s + (<usize>j << 2), f32x4.mul(v128.load(s + (<usize>j << 2)), vi));
    for (let j = n4; j < n; j++) store<f32>(s + (<usize>j << 2), load<f32>(s + (<usize>j << 2)) * inv);
    for (let j = n; j < S; j++) store<f32>(s + (<usize>j << 2), 0);
    store<f32>(lse + (<usize>i << 2), <f32>(<f64>m + Math.log(sum)));
    s += <usize>S << 2;
  }
}

/** In place: row = e^(scale · row - lse[i]) over visible keys (the forward's probabilities), zeros beyond. */
export function attnProbs(s: usize, rows: i32, S: i32, T: i32, r0: i32, causal: i32, scale: f32, lse: usize): void {
  const vs = f32x4.splat(scale);
  for (let i = 0; i < rows; i++) {
    const n = visibleKeys(causal, S, T, r0 + i), n4 = n & ~3;
    for (let j = 0; j < n4; j += 4) v128.store(s + (<usize>j << 2), f32x4.mul(v128.load(s + (<usize>j << 2)), vs));
    for (let j = n4; j < n; j++) store<f32>(s + (<usize>j << 2), load<f32>(s + (<usize>j << 2)) * scale);
    expRow(s, n, load<f32>(lse + (<usize>i << 2)));
    for (let j = n; j < S; j++) store<f32>(s + (<usize>j << 2), 0);
    s += <usize>S << 2;
  }
}

/** In place on dp: dS = P ∘ (dP - delta[i]) · scale, row by row. */
export function attnDs(p: usize, dp: usize, rows: i32, S: i32, delta: usize, scale: f32): void {
  const vs = f32x4.splat(scale), S4 = S & ~3;
  for (let i = 0; i < rows; i++) {
    const d = load<f32>(delta + (<usize>i << 2)), vd = f32x4.splat(d);
    for (let j = 0; j < S4; j += 4) {
      const k = <usize>j << 2;
      v128.store(dp + k, f32x4.mul(f32x4.mul(v128.load(p + k), f32x4.sub(v128.load(dp + k), vd)), vs));
    }
    for (let j = S4; j < S; j++) store<f32>(dp + (<usize>j << 2), load<f32>(p + (<usize>j << 2)) * (load<f32>(dp + (<usize>j << 2)) - d) * scale);
    p += <usize>S << 2;
    dp += <usize>S << 2;
  }
}

// ---- bf16 storage (kernels/half.ts): bit-identical to tensor's f32ToBf16Bits / bf16BitsToF32 ----

/** o (f32) = bf16 bits a (u16) shifted into the high half. */
export function bf16Decode(a: usize, o: usize, n: i32): void {
  const n8 = n & ~7;
  for (let i = 0; i < n8; i += 8) {
    const v = v128.load(a + (<usize>i << 1));
    const k = <usize>i << 2;
    v128.store(o + k, i32x4.shl(i32x4.extend_low_i16x8_u(v), 16));
    v128.store(o + k, i32x4.shl(i32x4.extend_high_i16x8_u(v), 16), 16);
  }
  for (let i = n8; i < n; i++) store<u32>(o + (<usize>i << 2), <u32>load<u16>(a + (<usize>i << 1)) << 16);
}

// @ts-ignore: decorator
@inline function bf16Round(x: v128): v128 {
  // Round to nearest even: x + 0x7fff + lsb, top half; a NaN keeps its top half, made quiet.
  const r = i32x4.shr_u(i32x4.add(i32x4.add(x, i32x4.splat(0x7fff)), v128.and(i32x4.shr_u(x, 16), i32x4.splat(1))), 16);
  const nan = i32x4.gt_u(v128.and(x, i32x4.splat(0x7fffffff)), i32x4.splat(0x7f800000));
  return v128.bitselect(v128.or(i32x4.shr_u(x, 16), i32x4.splat(0x40)), r, nan);
}

/** o (u16) = f32 a rounded to bf16 bits (round to nearest even, NaN quieted). */
export function bf16Encode(a: usize, o: usize, n: i32): void {
  const n8 = n & ~7;
  for (let i = 0; i < n8; i += 8) {
    const k = <usize>i << 2;
    // Every lane is at most 0xffff, so the unsigned saturating narrow is exact.
    v128.store(o + (<usize>i << 1), i16x8.narrow_i32x4_u(bf16Round(v128.load(a + k)), bf16Round(v128.load(a + k, 16))));
  }
  for (let i = n8; i < n; i++) {
    const x = load<u32>(a + (<usize>i << 2));
    const q = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    store<u16>(o + (<usize>i << 1), <u16>q);
  }
}

// ---- 4-bit weights (NF4/FP4, bitsandbytes' layout): dequantize, and the one-row product ----
// Element 2j of a byte run is byte j's high nibble, 2j+1 its low one. A code is looked up as 4
// byte planes (plane p = byte p of each of the 16 f32 codes) with one swizzle each, then the bytes
// are interleaved back into f32 lanes: 16 codes for 4 swizzles and 6 unpacks, no scalar loads.

/** Byte planes of the 16 f32 codes at `code`, written to `lut` (64 bytes). */
function codePlanes(code: usize, lut: usize): void {
  for (let c = 0; c < 16; c++) for (let p = 0; p < 4; p++) store<u8>(lut + p * 16 + c, load<u8>(code + c * 4 + p));
}

// @ts-ignore: decorator
@inline function lookup(t: v128, idx: v128): v128 {
  // Indices are 0..15, where the relaxed swizzle is one pshufb (the strict one also tests > 15).
  if (ASC_FEATURE_RELAXED_SIMD) return i8x16.relaxed_swizzle(t, idx);
  return i8x16.swizzle(t, idx);
}

/** The 16 code indices of the 8 bytes at p, in element order. */
// @ts-ignore: decorator
@inline function nibbles(p: usize): v128 {
  const b = v128.load64_zero(p);
  return v128.shuffle<u8>(i8x16.shr_u(b, 4), v128.and(b, i8x16.splat(15)), 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}

// Lanes 0-7 (lo) or 8-15 (hi) of two byte vectors, interleaved; then 16-bit pairs of two such.
// @ts-ignore: decorator
@inline function lo8(a: v128, b: v128): v128 {
  return v128.shuffle<u8>(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
// @ts-ignore: decorator
@inline function hi8(a: v128, b: v128): v128 {
  return v128.shuffle<u8>(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}
// @ts-ignore: decorator
@inline function lo16(a: v128, b: v128): v128 {
  return v128.shuffle<u16>(a, b, 0, 8, 1, 9, 2, 10, 3, 11);
}
// @ts-ignore: decorator
@inline function hi16(a: v128, b: v128): v128 {
  return v128.shuffle<u16>(a, b, 4, 12, 5, 13, 6, 14, 7, 15);
}

/**
 * o[i] = code[c(i)] * scales[(phase + i) / bs] for i in [0, n): packed at element 0 (a multiple
 * of 16 into the weight, as are phase, n and bs), so every 16 share a block. f32 products, as
 * nf4's dequantize4bit.
 */
export function dequant4(packed: usize, scales: usize, code: usize, lut: usize, o: usize, n: i32, phase: i32, bs: i32): void {
  codePlanes(code, lut);
  const p0 = v128.load(lut), p1 = v128.load(lut, 16), p2 = v128.load(lut, 32), p3 = v128.load(lut, 48);
  for (let i = 0; i < n; i += 16) {
    const s = v128.load32_splat(scales + (<usize>((phase + i) / bs) << 2));
    const idx = nibbles(packed + (<usize>i >> 1));
    const q0 = lookup(p0, idx), q1 = lookup(p1, idx), q2 = lookup(p2, idx), q3 = lookup(p3, idx);
    const l01 = lo8(q0, q1), l23 = lo8(q2, q3), h01 = hi8(q0, q1), h23 = hi8(q2, q3);
    const d = o + (<usize>i << 2);
    v128.store(d, f32x4.mul(lo16(l01, l23), s));
    v128.store(d, f32x4.mul(hi16(l01, l23), s), 16);
    v128.store(d, f32x4.mul(lo16(h01, h23), s), 32);
    v128.store(d, f32x4.mul(hi16(h01, h23), s), 48);
  }
}

/**
 * y[r] = Σ_k x[k] · code[c(r·K + k)] · scale(block) for `rows` rows of K elements (K a multiple of
 * bs, bs of 16; packed and scales at row 0). Each block sums in f32 (4 chains, fused where relaxed),
 * then adds its scaled sum to an f64 total, as the TypeScript loop scales once per block.
 */
export function gemv4(x: usize, packed: usize, scales: usize, code: usize, lut: usize, y: usize, rows: i32, K: i32, bs: i32): void {
  codePlanes(code, lut);
  const p0 = v128.load(lut), p1 = v128.load(lut, 16), p2 = v128.load(lut, 32), p3 = v128.load(lut, 48);
  let p = packed, sp = scales;
  for (let r = 0; r < rows; r++) {
    let sum: f64 = 0;
    for (let b = 0; b < K; b += bs) {
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      let xk = x + (<usize>b << 2);
      const end = xk + (<usize>bs << 2);
      for (; xk < end; xk += 64) {
        const idx = nibbles(p);
        const q0 = lookup(p0, idx), q1 = lookup(p1, idx), q2 = lookup(p2, idx), q3 = lookup(p3, idx);
        const l01 = lo8(q0, q1), l23 = lo8(q2, q3), h01 = hi8(q0, q1), h23 = hi8(q2, q3);
        a0 = madd(lo16(l01, l23), v128.load(xk), a0);
        a1 = madd(hi16(l01, l23), v128.load(xk, 16), a1);
        a2 = madd(lo16(h01, h23), v128.load(xk, 32), a2);
        a3 = madd(hi16(h01, h23), v128.load(xk, 48), a3);
        p += 8;
      }
      const t = f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3));
      const bsum = f32x4.extract_lane(t, 0) + f32x4.extract_lane(t, 1) + f32x4.extract_lane(t, 2) + f32x4.extract_lane(t, 3);
      sum += <f64>bsum * <f64>load<f32>(sp);
      sp += 4;
    }
    store<f32>(y + (<usize>r << 2), <f32>sum);
  }
}
