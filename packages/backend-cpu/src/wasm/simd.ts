/**
 * Which WASM SIMD build CpuBackend's kernels run: the `simd` option, else LOWRANK_SIMD, else "auto".
 *   auto     the relaxed-SIMD build (fused multiply-add) where the runtime validates it, else plain SIMD.
 *   relaxed  the relaxed-SIMD build; a SimdError where the runtime does not validate it.
 *   plain    the plain SIMD build, even where relaxed SIMD exists.
 * Chrome 114+, Deno, Bun and Node 22+ validate relaxed SIMD; Node 20 does once relaxed.ts turns on
 * V8's flag. The two builds round differently (a fused multiply-add rounds once), so runs agree bit
 * for bit only on the same build: pin one to compare runtimes (apps/server/test/one-run.test.ts).
 */

export const SIMD_CHOICES = ["auto", "relaxed", "plain"] as const;
export type SimdChoice = (typeof SIMD_CHOICES)[number];

/** A bad or impossible SIMD choice; the message says where the choice came from. */
export class SimdError extends Error {
  override readonly name = "SimdError";
}

/** LOWRANK_SIMD, where the environment can be read (not in a browser, nor in Deno without --allow-env). */
function envChoice(): string | undefined {
  try {
    return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.LOWRANK_SIMD || undefined;
  } catch {
    return undefined;
  }
}

/** The choice and where it came from (`simd: "plain"`, `LOWRANK_SIMD=plain`, or "" for the default); a SimdError for a value that names no build. */
export function selectSimd(option?: string): { choice: SimdChoice; where: string } {
  const env = envChoice();
  const value = option ?? env ?? "auto";
  const where = option !== undefined ? `simd: "${option}"` : env !== undefined ? `LOWRANK_SIMD=${env}` : "";
  if (!(SIMD_CHOICES as readonly string[]).includes(value)) throw new SimdError(`${where}: unknown SIMD build "${value}" (use ${SIMD_CHOICES.join(", ")})`);
  return { choice: value as SimdChoice, where };
}

/** An engine's `relaxed` option, else LOWRANK_SIMD: whether to try the relaxed build first. */
export function tryRelaxed(option?: boolean): boolean {
  return option ?? selectSimd().choice !== "plain";
}
