import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { type ByteSource, SafetensorsFile, openFromSource, openSafetensors, toTypedArray } from "../src/node.ts";
import { STORIES_BIN, STORIES_HF, rejectsWith, skipWithoutFile, storiesShapes } from "./helpers.ts";

const skip = skipWithoutFile(STORIES_HF);
const skipBin = skip || skipWithoutFile(STORIES_BIN);

test("stories260K: 47 tensors with the expected names, shapes and dtype", { skip }, async () => {
  const f = await openSafetensors(STORIES_HF);
  try {
    assert.ok(f instanceof SafetensorsFile);
    assert.equal(f.file, STORIES_HF);
    assert.deepEqual({ ...f.metadata }, { format: "pt" });
    const expected = storiesShapes();
    assert.equal(f.names.length, 47);
    assert.deepEqual([...f.names].sort(), [...expected.keys()].sort());
    for (const [name, shape] of expected) {
      const info = f.tensors[name];
      assert.equal(info.dtype, "F32", name);
      assert.deepEqual(info.shape, shape, name);
      assert.equal(info.byteLength, shape.reduce((a, b) => a * b, 1) * 4, name);
    }
    assert.deepEqual(f.tensors["model.embed_tokens.weight"].shape, [512, 64]);
    // Tensors tile the data region exactly, in storage order.
    let pos = f.dataStart;
    for (const name of f.names) {
      assert.equal(f.tensors[name].byteOffset, pos, name);
      pos += f.tensors[name].byteLength;
    }
    assert.equal(pos, f.size);
  } finally {
    await f.close();
  }
});

test("stories260K: every F32 value is finite, and a checksum matches an independent parse", { skip }, async () => {
  const whole = await readFile(STORIES_HF);
  // Independent minimal parse: u64 length, JSON, offsets relative to the data start.
  const n = Number(whole.readBigUInt64LE(0));
  const header = JSON.parse(whole.subarray(8, 8 + n).toString("utf8")) as Record<string, { data_offsets: [number, number] }>;
  const f = await openSafetensors(STORIES_HF);
  try {
    let total = 0;
    let count = 0;
    for (const name of f.names) {
      const t = await f.read(name);
      const [b, e] = header[name].data_offsets;
      assert.ok(Buffer.from(t.data).equals(whole.subarray(8 + n + b, 8 + n + e)), `${name} bytes differ`);
      const values = toTypedArray(t);
      assert.ok(values instanceof Float32Array);
      for (const v of values) {
        assert.ok(Number.isFinite(v), `${name} has a non-finite value`);
        total += Math.abs(v);
      }
      count += values.length;
    }
    assert.equal(count, 260_032); // the parameter count given in PROVENANCE.md
    assert.ok(total > 0 && Number.isFinite(total));
  } finally {
    await f.close();
  }
});

test("stories260K: unpermuted weights equal the llama2.c export byte for byte", { skip: skipBin }, async () => {
  const bin = await readFile(STORIES_BIN);
  // llama2.c v0 layout: 7 int32 header, then float32 arrays in a fixed order.
  const dim = 64;
  const hidden = 172;
  const layers = 5;
  const kv = 32;
  const vocab = 512;
  let off = 28;
  const take = (floats: number): Buffer => {
    const out = bin.subarray(off, off + floats * 4);
    off += floats * 4;
    return out;
  };
  const emb = take(vocab * dim);
  const rmsAtt = take(layers * dim);
  take(layers * dim * dim); // wq: permuted for rotate_half in the HF file
  take(layers * kv * dim); // wk: permuted too
  const wv = take(layers * kv * dim);
  const wo = take(layers * dim * dim);
  const rmsFfn = take(layers * dim);
  const w1 = take(layers * hidden * dim);
  const w2 = take(layers * dim * hidden);
  const w3 = take(layers * hidden * dim);
  const rmsFinal = take(dim);
  const layer = (buf: Buffer, l: number): Buffer => buf.subarray((l * buf.length) / layers, ((l + 1) * buf.length) / layers);

  const f = await openSafetensors(STORIES_HF);
  try {
    const same = async (name: string, expected: Buffer): Promise<void> => {
      const t = await f.read(name);
      assert.ok(Buffer.from(t.data).equals(expected), `${name} differs from the llama2.c export`);
    };
    await same("model.embed_tokens.weight", emb);
    await same("model.norm.weight", rmsFinal);
    for (let l = 0; l < layers; l++) {
      const p = `model.layers.${l}`;
      await same(`${p}.input_layernorm.weight`, layer(rmsAtt, l));
      await same(`${p}.post_attention_layernorm.weight`, layer(rmsFfn, l));
      await same(`${p}.self_attn.v_proj.weight`, layer(wv, l));
      await same(`${p}.self_attn.o_proj.weight`, layer(wo, l));
      await same(`${p}.mlp.gate_proj.weight`, layer(w1, l));
      await same(`${p}.mlp.down_proj.weight`, layer(w2, l));
      await same(`${p}.mlp.up_proj.weight`, layer(w3, l));
    }
  } finally {
    await f.close();
  }
});

/** Wraps bytes as a ByteSource that records every read, to prove reads are header-only / per-tensor. */
function countingSource(bytes: Uint8Array, label: string): { source: ByteSource; reads: [number, number][] } {
  const reads: [number, number][] = [];
  const source: ByteSource = {
    label,
    size: bytes.byteLength,
    read: async (offset, length) => {
      reads.push([offset, length]);
      return bytes.slice(offset, offset + length);
    },
    close: async () => {},
  };
  return { source, reads };
}

test("stories260K: opening reads only the header; read(name) reads only that tensor", { skip }, async () => {
  const bytes = new Uint8Array(await readFile(STORIES_HF));
  const { source, reads } = countingSource(bytes, "model.safetensors");
  const f = await openFromSource(source);
  const headerLen = f.dataStart - 8;
  assert.deepEqual(reads, [
    [0, 8],
    [8, headerLen],
  ]);
  reads.length = 0;
  const info = f.tensors["model.layers.0.mlp.up_proj.weight"];
  const t = await f.read("model.layers.0.mlp.up_proj.weight");
  assert.deepEqual(reads, [[info.byteOffset, info.byteLength]]);
  assert.equal(t.data.byteLength, 172 * 64 * 4);
  await f.close();
});

test("stories260K: path, Blob and in-memory sources give identical tensors", { skip }, async () => {
  const bytes = new Uint8Array(await readFile(STORIES_HF));
  const fromPath = await openSafetensors(STORIES_HF);
  const fromBlob = await openSafetensors(new Blob([bytes]));
  const fromBytes = await openSafetensors(bytes);
  const fromBuffer = await openSafetensors(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const fromUrl = await openSafetensors(pathToFileURL(STORIES_HF));
  assert.equal(fromBlob.file, "<blob>");
  assert.equal(fromBytes.file, "<bytes>");
  try {
    for (const name of ["model.embed_tokens.weight", "model.norm.weight", "model.layers.4.mlp.down_proj.weight"]) {
      const a = await fromPath.read(name);
      for (const other of [fromBlob, fromBytes, fromBuffer, fromUrl]) {
        const b = await other.read(name);
        assert.equal(b.dtype, a.dtype);
        assert.deepEqual(b.shape, a.shape);
        assert.deepEqual(b.data, a.data);
      }
    }
  } finally {
    for (const f of [fromPath, fromBlob, fromBytes, fromBuffer, fromUrl]) await f.close();
  }
});

test("a File keeps its name in error messages", async () => {
  const bad = new File([new Uint8Array(3)], "tiny.safetensors");
  await rejectsWith(openSafetensors(bad), "truncated", { file: "tiny.safetensors" });
});

test("read() of an unknown tensor, and read() after close(), throw typed errors", { skip }, async () => {
  const f = await openSafetensors(STORIES_HF);
  assert.equal(f.has("lm_head.weight"), false);
  await rejectsWith(f.read("lm_head.weight"), "tensor_not_found", { file: STORIES_HF, tensor: "lm_head.weight" });
  await f.close();
  await f.close(); // idempotent
  assert.equal(f.closed, true);
  await rejectsWith(f.read("model.norm.weight"), "closed", { file: STORIES_HF, tensor: "model.norm.weight" });
});

test("entries() yields every tensor in storage order", { skip }, async () => {
  const f = await openSafetensors(STORIES_HF, { label: "stories" });
  try {
    const seen: string[] = [];
    for await (const [name, t] of f.entries()) {
      seen.push(name);
      assert.equal(t.data.byteLength, f.tensors[name].byteLength);
    }
    assert.deepEqual(seen, f.names);
  } finally {
    await f.close();
  }
});

test("opening a missing path is an io error naming the path", async () => {
  await rejectsWith(openSafetensors("/nonexistent/dir/model.safetensors"), "io", { file: "/nonexistent/dir/model.safetensors" });
});
