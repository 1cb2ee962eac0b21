/**
 * File access for the loaders, through @lowrank/safetensors' storage (the `./node` edge registers
 * the file system; a browser uses the in-memory paths such as loadHfModelFromFiles).
 */
import { type DType, type Backend, type Tensor, fromF32, tensor, toF32, viewBytes } from "@lowrank/tensor";
import { joinPath as join, storage } from "@lowrank/safetensors";

export async function joinPath(...parts: string[]): Promise<string> {
  return join(...parts);
}

/** The whole file; a missing or unreadable file is an error naming it and `what` it should be. */
export async function readBytes(path: string, what: string): Promise<Uint8Array> {
  try {
    return await storage().readFile(path);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT") throw new Error(`${path}: not found (${what})`, { cause: e });
    throw new Error(`${path}: cannot read ${what}: ${(e as Error).message}`, { cause: e });
  }
}

export async function readJson(path: string, what: string): Promise<unknown> {
  const text = new TextDecoder().decode(await readBytes(path, what));
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** Checkpoint float formats a weight can be converted from. */
export type SourceFloat = "F32" | "F16" | "BF16" | "F64";
export const SOURCE_FLOATS: readonly string[] = ["F32", "F16", "BF16", "F64"];

const NATIVE: Partial<Record<SourceFloat, DType>> = { F32: "f32", F16: "f16", BF16: "bf16" };

/**
 * Little-endian checkpoint bytes -> a tensor of `dtype` on `backend`. Same format: uploaded as
 * is. Otherwise converted on the host through f32 (halves decode exactly; rounding to a half
 * is round-to-nearest-even).
 */
export function tensorFromBytes(bytes: Uint8Array, from: SourceFloat, shape: readonly number[], dtype: DType, backend: Backend): Tensor {
  const native = NATIVE[from];
  if (native === dtype) return tensor(viewBytes(dtype, bytes), { shape, dtype, backend, raw: true });
  let f32: Float32Array;
  if (from === "F64") {
    const aligned = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
    f32 = Float32Array.from(new Float64Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 8));
  } else f32 = toF32(native as DType, viewBytes(native as DType, bytes));
  return tensor(dtype === "f32" ? f32 : fromF32(dtype, f32), { shape, dtype, backend, raw: true });
}
