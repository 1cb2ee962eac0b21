// Code tables used by bitsandbytes' 4-bit and nested 8-bit quantization.
// Every value here is a float32; JS numbers hold them exactly.

/** The two 4-bit data types bitsandbytes' `quantize_4bit` accepts. */
export type QuantType = "nf4" | "fp4";

/**
 * The 16 NF4 values exactly as hard-coded in bitsandbytes `get_4bit_type("nf4")`
 * (functional.py). Regenerating them with scipy differs in the last digit of code 1,
 * so the published table is the one to use. Index = 4-bit code, sorted ascending.
 */
export const NF4_VALUES: readonly number[] = Object.freeze([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
  0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

/**
 * bnb's FP4 (E2M1, exponent bias 2) raw table indexed by bit pattern; bit 3 is the sign.
 * bnb writes the negative zero as the Python int `-0`, which is +0, so code 0b1000 is
 * +0.0 in the serialized quant_map as well.
 */
export const FP4_RAW: readonly number[] = Object.freeze([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]);

/** FP4 values normalized by the table's absolute max (12), rounded to float32. */
export const FP4_VALUES: readonly number[] = Object.freeze(FP4_RAW.map((v) => Math.fround(v / 12)));

/**
 * NF4 decision thresholds: float32 midpoints between neighbouring codes. They are the
 * float32 values of the double literals in the CUDA decision tree `dQuantizeNF4`
 * (csrc/kernels.cu), so `x > t` on float32 inputs decides exactly as the kernel does.
 */
export const NF4_THRESHOLDS: readonly number[] = Object.freeze(NF4_VALUES.slice(1).map((v, i) => Math.fround((NF4_VALUES[i] + v) / 2)));

/**
 * FP4 magnitude thresholds, the float32 literals of CUDA `dQuantizeFP4`. They are not
 * all exact midpoints (0.583333f sits 6 ulp below 7/12), and we keep them as they are
 * because byte compatibility with CUDA-quantized files is the goal.
 */
export const FP4_MAGNITUDE_THRESHOLDS: readonly number[] = Object.freeze(
  [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333].map(Math.fround),
);

/** Magnitude bucket (0..7, ascending) -> FP4 bit pattern without the sign bit. */
export const FP4_BUCKET_BITS: readonly number[] = Object.freeze([0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011]);

/** A fresh float32 copy of the 16-entry table for `quantType` (the file's `quant_map`). */
export function codebook(quantType: QuantType): Float32Array {
  if (quantType === "nf4") return Float32Array.from(NF4_VALUES);
  if (quantType === "fp4") return Float32Array.from(FP4_VALUES);
  throw new RangeError(`quantType must be "nf4" or "fp4", got ${JSON.stringify(quantType)}`);
}

/**
 * torch.linspace(start, end, steps) for a float32 tensor on the CPU: the step is a
 * float32 and each value is `start + step*i` (first half) or `end - step*(steps-1-i)`
 * (second half) rounded once, as the FMA-contracted kernel does. This reproduces the
 * dynamic map torch actually builds; a float64 numpy linspace differs by 1 ulp in
 * 11 of the 256 entries.
 */
function linspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  const s = Math.fround(start);
  const e = Math.fround(end);
  if (steps === 1) {
    out[0] = s;
    return out;
  }
  const step = Math.fround((e - s) / (steps - 1));
  const half = steps >> 1;
  // The f32*int product is exact in float64, so one fround gives the single rounding.
  for (let i = 0; i < steps; i++) out[i] = i < half ? s + step * i : e - step * (steps - 1 - i);
  return out;
}

/**
 * bitsandbytes `create_dynamic_map(signed, max_exponent_bits, total_bits)` (functional.py),
 * reproduced in float32: for each exponent i, the means of a float32 linspace(0.1, 1)
 * scaled by 10^(i - (max_exponent_bits-1)) (the scalar is cast to float32 first, as
 * torch does for `python_float * f32_tensor`), then 0 and 1.0 are appended and sorted.
 */
export function createDynamicMap(signed = true, maxExponentBits = 7, totalBits = 8): Float32Array {
  const data: number[] = [];
  // bnb computes `total_bits - (1 if signed else 1)`: one bit is reserved either way.
  const nonSignBits = totalBits - 1;
  const additionalItems = 2 ** (nonSignBits - maxExponentBits) - 1;
  const pushScaled = (items: number, exponent: number) => {
    const b = linspaceF32(0.1, 1, items);
    const scale = Math.fround(10 ** exponent);
    for (let j = 0; j + 1 < items; j++) {
      const mean = Math.fround(Math.fround(b[j] + b[j + 1]) / 2);
      data.push(Math.fround(scale * mean));
      if (signed) data.push(Math.fround(-scale * mean));
    }
  };
  let i = 0;
  for (; i < maxExponentBits; i++) {
    const items = signed ? 2 ** (i + nonSignBits - maxExponentBits) + 1 : 2 ** (i + nonSignBits - maxExponentBits + 1) + 1;
    pushScaled(items, -(maxExponentBits - 1) + i);
  }
  // bnb reuses the loop variable's last value here.
  if (additionalItems > 0) pushScaled(additionalItems + 1, -(maxExponentBits - 1) + (i - 1));
  data.push(0, 1.0);
  if (data.length !== 2 ** totalBits) {
    throw new RangeError(`create_dynamic_map produced ${data.length} values, expected ${2 ** totalBits}`);
  }
  while (data.length < 256) data.push(0);
  data.sort((a, b) => a - b);
  return Float32Array.from(data);
}

const DYNAMIC_MAP = createDynamicMap();

/** A fresh copy of bnb's signed 8-bit dynamic map (the file's `nested_quant_map`). */
export function dynamicMap(): Float32Array {
  return DYNAMIC_MAP.slice();
}

/**
 * Float32 midpoints between neighbouring entries of a sorted code, computed as CUDA's
 * `(upper + val) * 0.5f`. `x > mids[j]` selects the upper neighbour.
 */
export function midpoints(sortedCode: Float32Array): Float32Array {
  const out = new Float32Array(sortedCode.length - 1);
  for (let j = 0; j < out.length; j++) out[j] = Math.fround(sortedCode[j] + sortedCode[j + 1]) * 0.5;
  return out;
}
