// AssemblyScript (compiled by scripts/build-wasm.mjs into the modules that import it; not seen by tsc):
// e^x on f32x4 lanes and the softmax row pass built on it, shared by the elementwise and the
// decode-attention kernels so both exponentiate alike.

const LOG2E: f32 = 1.44269504;
// ln 2 split so k * LN2_HI is exact for |k| <= 150 (Cody-Waite).
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;

/** a * b + c; fused (one rounding) where the relaxed-SIMD build runs on hardware with FMA. */
// @ts-ignore: decorator
@inline export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

/**
 * e^x for 4 lanes: x = k ln2 + r, |r| <= ln2/2, e^r by the Cephes expf polynomial (about 1 ulp),
 * times 2^k applied in two halves so overflow gives inf and tiny results come out subnormal.
 * The clamp uses pmin/pmax (one instruction each on x86, unlike min/max) and keeps NaN, whose
 * p is NaN whatever k becomes. k is integral and small, so adding 1.5 * 2^23 puts it in the
 * low mantissa bits (cheaper than trunc_sat).
 */
// @ts-ignore: decorator
@inline export function expv(x0: v128): v128 {
  const x = f32x4.pmin(f32x4.pmax(x0, f32x4.splat(-104)), f32x4.splat(89));
  const k = f32x4.nearest(f32x4.mul(x, f32x4.splat(LOG2E)));
  const r = f32x4.sub(f32x4.sub(x, f32x4.mul(k, f32x4.splat(LN2_HI))), f32x4.mul(k, f32x4.splat(LN2_LO)));
  let p = f32x4.splat(1.9875691500e-4);
  p = madd(p, r, f32x4.splat(1.3981999507e-3));
  p = madd(p, r, f32x4.splat(8.3334519073e-3));
  p = madd(p, r, f32x4.splat(4.1665795894e-2));
  p = madd(p, r, f32x4.splat(1.6666665459e-1));
  p = madd(p, r, f32x4.splat(5.0000001201e-1));
  p = f32x4.add(madd(f32x4.mul(p, r), r, r), f32x4.splat(1));
  const ki = i32x4.sub(f32x4.add(k, f32x4.splat(12582912)), i32x4.splat(0x4b400000));
  const k1 = i32x4.shr_s(ki, 1), k2 = i32x4.sub(ki, k1);
  const bias = i32x4.splat(127);
  const s1 = i32x4.shl(i32x4.add(k1, bias), 23), s2 = i32x4.shl(i32x4.add(k2, bias), 23);
  return f32x4.mul(f32x4.mul(p, s1), s2);
}

/** row[j] = e^(row[j] - m) for j < n, in place; returns the f64 sum. */
// @ts-ignore: decorator
@inline export function expRow(s: usize, n: i32, m: f32): f64 {
  const n4 = n & ~3, n8 = n & ~7, vm = f32x4.splat(m);
  let a0 = f64x2.splat(0), a1 = f64x2.splat(0);
  // Two independent exps a step (as swiglu); the sums are added in the same order as one a step.
  for (let j = 0; j < n8; j += 8) {
    const p = s + (<usize>j << 2);
    const e0 = expv(f32x4.sub(v128.load(p), vm)), e1 = expv(f32x4.sub(v128.load(p, 16), vm));
    v128.store(p, e0);
    v128.store(p, e1, 16);
    a0 = f64x2.add(a0, f64x2.promote_low_f32x4(e0));
    a1 = f64x2.add(a1, f64x2.promote_low_f32x4(i32x4.shuffle(e0, e0, 2, 3, 0, 1)));
    a0 = f64x2.add(a0, f64x2.promote_low_f32x4(e1));
    a1 = f64x2.add(a1, f64x2.promote_low_f32x4(i32x4.shuffle(e1, e1, 2, 3, 0, 1)));
  }
  for (let j = n8; j < n4; j += 4) {
    const p = s + (<usize>j << 2);
    const e = expv(f32x4.sub(v128.load(p), vm));
    v128.store(p, e);
    a0 = f64x2.add(a0, f64x2.promote_low_f32x4(e));
    a1 = f64x2.add(a1, f64x2.promote_low_f32x4(i32x4.shuffle(e, e, 2, 3, 0, 1)));
  }
  const a = f64x2.add(a0, a1);
  let sum = f64x2.extract_lane(a, 0) + f64x2.extract_lane(a, 1);
  for (let j = n4; j < n; j++) {
    const p = s + (<usize>j << 2);
    const e = f32x4.extract_lane(expv(f32x4.splat(load<f32>(p) - m)), 0);
    store<f32>(p, e);
    sum += <f64>e;
  }
  return sum;
}

