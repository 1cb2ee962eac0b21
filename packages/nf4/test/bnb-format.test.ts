import assert from "node:assert/strict";
import { test } from "node:test";
import {
  BnbFormatError,
  bnbQuantizationConfig,
  codebook,
  dequantize4bit,
  dynamicMap,
  fromBnbTensors,
  pythonFloatRepr,
  pythonJsonDumps,
  quantize4bit,
  quantStateJson,
  toBnbTensors,
  type BnbTensors,
  type NestedAbsmax,
  type QuantState,
} from "../src/index.ts";
import { normal } from "./_helpers.ts";

const PREFIX = "model.layers.0.self_attn.q_proj.";
const W = `${PREFIX}weight`;

test("pythonFloatRepr matches CPython repr (values checked against python3)", () => {
  const cases: [number, string][] = [
    [0.0123, "0.0123"],
    [1e-5, "1e-05"],
    [0.0001, "0.0001"],
    [0.00012, "0.00012"],
    [2.5e-5, "2.5e-05"],
    [1.5e-7, "1.5e-07"],
    [1e16, "1e+16"],
    [1e15, "1000000000000000.0"],
    [9999999999999998, "9999999999999998.0"],
    [123456789012345.6, "123456789012345.6"],
    [12345678901234567890, "1.2345678901234567e+19"],
    [123.456, "123.456"],
    [100, "100.0"],
    [1, "1.0"],
    [0.5, "0.5"],
    [0, "0.0"],
    [-0, "-0.0"],
    [-2.5, "-2.5"],
    [0.1 + 0.2, "0.30000000000000004"],
    [5e-324, "5e-324"],
    [1.7976931348623157e308, "1.7976931348623157e+308"],
    [1e100, "1e+100"],
    [Math.fround(0.0123), "0.012299999594688416"],
    [Infinity, "inf"],
    [NaN, "nan"],
  ];
  for (const [x, s] of cases) assert.equal(pythonFloatRepr(x), s, `repr(${x})`);
});

test("pythonJsonDumps uses Python's separators, float repr and ASCII escapes", () => {
  assert.equal(
    pythonJsonDumps({ a: [1, 2], b: { float: 6 }, c: null, d: true, e: 'x"é\n' }),
    '{"a": [1, 2], "b": 6.0, "c": null, "d": true, "e": "x\\"\\u00e9\\n"}',
  );
  assert.equal(pythonJsonDumps({ float: -Infinity }), "-Infinity");
  assert.throws(() => pythonJsonDumps(0.5), /not an integer/);
});

function knownState(nested: boolean): QuantState {
  // A hand-made 4096x4096 bf16 state; only the JSON fields matter here.
  const base = {
    packed: new Uint8Array(0),
    quantMap: codebook("nf4"),
    quantType: "nf4" as const,
    blocksize: 64,
    shape: [4096, 4096],
    dtype: "bfloat16" as const,
  };
  if (!nested) return { ...base, absmax: new Float32Array(0) };
  return {
    ...base,
    absmax: {
      qabsmax: new Uint8Array(0),
      nestedAbsmax: new Float32Array(0),
      nestedOffset: Math.fround(0.0123),
      nestedBlocksize: 256,
      nestedCode: dynamicMap(),
    },
  };
}

test("quant-state JSON bytes for a known state are exactly what json.dumps writes", () => {
  // Output of python3: json.dumps({... "nested_offset": float(np.float32(0.0123))})
  const expected =
    '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096], ' +
    '"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012299999594688416}';
  assert.equal(quantStateJson(knownState(true)), expected);
  assert.equal(quantStateJson(knownState(false)), '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096]}');
  const fp4 = { ...knownState(false), quantType: "fp4" as const, blocksize: 128, dtype: "float16" as const, shape: [10, 20] };
  assert.equal(quantStateJson(fp4), '{"quant_type": "fp4", "blocksize": 128, "dtype": "float16", "shape": [10, 20]}');
});

test("toBnbTensors with DQ: the bnb key set, order, dtypes, shapes and bytes", () => {
  const x = normal(300 * 70, 0.02, 1); // 21000 elements -> 329 blocks -> 2 nested blocks
  const s = quantize4bit(x, { shape: [300, 70], dtype: "bfloat16" });
  const t = toBnbTensors(PREFIX, s);
  assert.deepEqual(Object.keys(t), [W, `${W}.absmax`, `${W}.quant_map`, `${W}.nested_absmax`, `${W}.nested_quant_map`, `${W}.quant_state.bitsandbytes__nf4`]);
  const summary = Object.fromEntries(Object.entries(t).map(([k, v]) => [k.slice(PREFIX.length), `${v.dtype} [${v.shape.join(", ")}] ${v.data.byteLength}`]));
  const json = quantStateJson(s);
  assert.deepEqual(summary, {
    weight: "U8 [10500, 1] 10500",
    "weight.absmax": "U8 [329] 329",
    "weight.quant_map": "F32 [16] 64",
    "weight.nested_absmax": "F32 [2] 8",
    "weight.nested_quant_map": "F32 [256] 1024",
    "weight.quant_state.bitsandbytes__nf4": `U8 [${json.length}] ${json.length}`,
  });
  assert.equal(new TextDecoder().decode(t[`${W}.quant_state.bitsandbytes__nf4`].data), json);
  assert.match(
    json,
    /^\{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": \[300, 70\], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": [0-9.e-]+\}$/,
  );
  const offset = Number(JSON.parse(json).nested_offset);
  assert.equal(offset, (s.absmax as NestedAbsmax).nestedOffset);
  // quant_map bytes are little-endian float32: 1.0 = 00 00 80 3f at index 15.
  assert.deepEqual(Array.from(t[`${W}.quant_map`].data.subarray(60, 64)), [0x00, 0x00, 0x80, 0x3f]);
  assert.deepEqual(Array.from(t[`${W}.quant_map`].data.subarray(0, 4)), [0x00, 0x00, 0x80, 0xbf]);
});

test("toBnbTensors without DQ: F32 absmax, no nested keys", () => {
  const s = quantize4bit(normal(129, 1, 2), { quantType: "fp4", doubleQuant: false });
  const t = toBnbTensors("", s);
  assert.deepEqual(Object.keys(t), ["weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__fp4"]);
  assert.deepEqual(t.weight.shape, [65, 1]);
  assert.equal(t["weight.absmax"].dtype, "F32");
  assert.deepEqual(t["weight.absmax"].shape, [3]);
  assert.equal(
    new TextDecoder().decode(t["weight.quant_state.bitsandbytes__fp4"].data),
    '{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [129]}',
  );
});

/** Copy each tensor into a fresh buffer at an odd offset, as a safetensors reader may hand them over. */
function detach(t: BnbTensors): BnbTensors {
  const out: BnbTensors = {};
  for (const [k, v] of Object.entries(t)) {
    const buf = new Uint8Array(v.data.byteLength + 1);
    buf.set(v.data, 1);
    out[k] = { dtype: v.dtype, shape: [...v.shape], data: buf.subarray(1) };
  }
  return out;
}

test("round trip through the bnb key set preserves every field and the dequantized values", () => {
  for (const [quantType, doubleQuant, blocksize] of [
    ["nf4", true, 64],
    ["nf4", false, 128],
    ["fp4", true, 32],
    ["fp4", false, 4096],
  ] as const) {
    const x = normal(33 * 91, 0.05, blocksize);
    const s = quantize4bit(x, { quantType, doubleQuant, blocksize, shape: [33, 91], dtype: "float16" });
    const t = detach(toBnbTensors(PREFIX, s));
    t[`${PREFIX}bias`] = { dtype: "F32", shape: [33], data: new Uint8Array(33 * 4) };
    t["model.layers.1.mlp.up_proj.weight"] = { dtype: "U8", shape: [1, 1], data: new Uint8Array(1) };
    const back = fromBnbTensors(PREFIX, t);
    assert.deepEqual(back, s, `${quantType} dq=${doubleQuant} bs=${blocksize}`);
    assert.deepEqual(dequantize4bit(back), dequantize4bit(s));
  }
});

test("fromBnbTensors parses a hand-written bnb JSON with a short offset repr", () => {
  const s = quantize4bit(normal(256, 1, 3), { shape: [4, 64] });
  const t = toBnbTensors("", s);
  const json =
    '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123}';
  t["weight.quant_state.bitsandbytes__nf4"] = { dtype: "U8", shape: [json.length], data: new TextEncoder().encode(json) };
  const back = fromBnbTensors("", t);
  assert.equal((back.absmax as NestedAbsmax).nestedOffset, Math.fround(0.0123)); // bnb loads it as a float32 tensor
  assert.equal(back.dtype, "bfloat16");
});

function withJson(t: BnbTensors, key: string, obj: unknown): BnbTensors {
  const json = new TextEncoder().encode(JSON.stringify(obj));
  return { ...t, [key]: { dtype: "U8", shape: [json.length], data: json } };
}

test("fromBnbTensors errors name the key and what was expected", () => {
  const s = quantize4bit(normal(200, 1, 4), { shape: [2, 100] });
  const good = toBnbTensors(PREFIX, s);
  const qsKey = `${W}.quant_state.bitsandbytes__nf4`;
  const json = JSON.parse(new TextDecoder().decode(good[qsKey].data));
  const without = (k: string) => Object.fromEntries(Object.entries(good).filter(([key]) => key !== k));
  const expectError = (t: BnbTensors, re: RegExp) =>
    assert.throws(
      () => fromBnbTensors(PREFIX, t),
      (e: unknown) => e instanceof BnbFormatError && re.test(e.message),
    );

  expectError(without(qsKey), /expected exactly one "model\.layers\.0\.self_attn\.q_proj\.weight\.quant_state\.bitsandbytes__\{nf4\|fp4\}" tensor, found 0/);
  expectError({ ...good, [`${W}.quant_state.bitsandbytes__fp4`]: good[qsKey] }, /found 2: .*bitsandbytes__nf4, .*bitsandbytes__fp4/);
  expectError({ ...without(qsKey), [`${W}.quant_state.bitsandbytes__int4`]: good[qsKey] }, /must end in quant_state\.bitsandbytes__nf4 or/);
  expectError(withJson(good, qsKey, { ...json, quant_type: "fp4" }), /quant_type is "fp4" but the key says "nf4"/);
  expectError(withJson(good, qsKey, { ...json, blocksize: 100 }), /bitsandbytes__nf4": blocksize must be one of 32, 64/);
  expectError(withJson(good, qsKey, { ...json, dtype: "float64" }), /dtype must be one of float32, float16, bfloat16/);
  expectError(withJson(good, qsKey, { ...json, shape: [2, -100] }), /shape must be a non-empty list of positive integers/);
  expectError(withJson(good, qsKey, { ...json, extra: 1 }), /unknown quant-state field "extra"/);
  expectError(withJson(good, qsKey, { ...json, nested_blocksize: 128 }), /nested_blocksize must be 256/);
  expectError(withJson(good, qsKey, { ...json, nested_dtype: "float16" }), /nested_dtype must be "float32"/);
  const { nested_offset: _drop, ...noOffset } = json;
  expectError(
    withJson(good, qsKey, noOffset),
    /must be present exactly when ".*weight\.nested_absmax" is \(tensor present, fields: nested_blocksize, nested_dtype\)/,
  );
  expectError({ ...good, [qsKey]: { dtype: "U8", shape: [3], data: new Uint8Array([0xff, 0xfe, 0x7b]) } }, /is not UTF-8 JSON/);
  expectError({ ...good, [qsKey]: { dtype: "F32", shape: [good[qsKey].data.length], data: good[qsKey].data } }, /must be U8/);
  expectError({ ...good, [W]: { dtype: "U8", shape: [100], data: good[W].data } }, /tensor ".*q_proj\.weight" is U8 \[100\], expected U8 \[100, 1\]/);
  expectError({ ...good, [W]: { dtype: "U8", shape: [100, 1], data: good[W].data.subarray(0, 99) } }, /holds 99 bytes, expected 100 for U8 \[100, 1\]/);
  expectError({ ...good, [`${W}.absmax`]: { dtype: "F32", shape: [4], data: new Uint8Array(16) } }, /weight\.absmax" is F32 \[4\], expected U8 \[4\]/);
  expectError(without(`${W}.quant_map`), /missing tensor ".*weight\.quant_map" \(expected F32 \[16\]\)/);
  expectError(without(`${W}.nested_quant_map`), /missing tensor ".*weight\.nested_quant_map" \(expected F32 \[256\]\)/);
  expectError({ ...good, [`${W}.nested_absmax`]: { dtype: "F32", shape: [2], data: new Uint8Array(8) } }, /nested_absmax" is F32 \[2\], expected F32 \[1\]/);
  expectError({ ...good, [`${W}.scb`]: good[`${W}.absmax`] }, /unexpected tensor ".*weight\.scb"/);

  const plain = toBnbTensors(PREFIX, quantize4bit(normal(200, 1, 4), { doubleQuant: false }));
  expectError({ ...plain, [`${W}.nested_quant_map`]: good[`${W}.nested_quant_map`] }, /nested_quant_map" is present without/);
  expectError({ ...plain, [`${W}.absmax`]: { dtype: "U8", shape: [4], data: new Uint8Array(4) } }, /weight\.absmax" is U8 \[4\], expected F32 \[4\]/);
});

test("bnbQuantizationConfig: config.json block in transformers' key order, our NF4+DQ defaults", () => {
  const c = bnbQuantizationConfig();
  assert.equal(
    JSON.stringify(c),
    '{"quant_method":"bitsandbytes","_load_in_4bit":true,"_load_in_8bit":false,"load_in_4bit":true,"load_in_8bit":false,' +
      '"bnb_4bit_quant_type":"nf4","bnb_4bit_use_double_quant":true,"bnb_4bit_compute_dtype":"bfloat16","bnb_4bit_quant_storage":"uint8",' +
      '"llm_int8_skip_modules":null,"llm_int8_threshold":6,"llm_int8_has_fp16_weight":false,"llm_int8_enable_fp32_cpu_offload":false}',
  );
  const d = bnbQuantizationConfig({ quantType: "fp4", doubleQuant: false, computeDtype: "float16", skipModules: ["lm_head"] });
  assert.equal(d.bnb_4bit_quant_type, "fp4");
  assert.equal(d.bnb_4bit_use_double_quant, false);
  assert.equal(d.bnb_4bit_compute_dtype, "float16");
  assert.deepEqual(d.llm_int8_skip_modules, ["lm_head"]);
  assert.throws(() => bnbQuantizationConfig({ quantType: "int8" as never }), RangeError);
  assert.throws(() => bnbQuantizationConfig({ computeDtype: "float64" as never }), RangeError);
});
