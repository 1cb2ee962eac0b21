// AssemblyScript source of the WASM SIMD matmul (compiled by scripts/build-wasm.mjs; not seen by tsc).
// C[m,n] = A[m,k] · B[k,n], f32, row-major with leading dimensions lda/ldb/ldc in elements.
// Blocking: packB lays B out once as (NC-column x KC-deep) blocks of NR-column slivers (zero padded),
// shared by every thread; gemmPacked streams a block from L2 per 4-row panel of A, which is read
// in place (L1-resident). Threads each run gemmPacked on their own rows / column blocks.

const MR: i32 = 4;
const NR: i32 = 8;

/** First free byte after static data: the engine puts its scratch and operands above it. */
export function heapBase(): usize {
  return __heap_base;
}

/** Bytes of per-thread scratch gemmPacked needs (one edge tile). */
export function tileBytes(): usize {
  return MR * NR * 4;
}

/** Floats packB writes for B[k, n]: every column block padded to a multiple of NR. */
export function packedFloats(k: i32, n: i32): usize {
  return <usize>k * <usize>(((n + NR - 1) / NR) * NR);
}

// B[0:kc, 0:nc] (row stride ldb4 bytes) -> slivers of NR columns; sliver s at dst + s*kc*NR*4.
function packBlock(b: usize, ldb4: usize, kc: i32, nc: i32, dst: usize): void {
  const full = nc & ~(NR - 1);
  for (let j = 0; j < full; j += NR) {
    let src = b + (<usize>j << 2);
    let d = dst + <usize>j * <usize>kc * 4;
    for (let kk = 0; kk < kc; kk++) {
      v128.store(d, v128.load(src));
      v128.store(d, v128.load(src, 16), 16);
      src += ldb4;
      d += NR * 4;
    }
  }
  if (full < nc) {
    const rest = nc - full;
    let src = b + (<usize>full << 2);
    let d = dst + <usize>full * <usize>kc * 4;
    for (let kk = 0; kk < kc; kk++) {
      for (let j = 0; j < NR; j++) store<f32>(d + (<usize>j << 2), j < rest ? load<f32>(src + (<usize>j << 2)) : 0);
      src += ldb4;
      d += NR * 4;
    }
  }
}

// One MR x NR tile: acc = A[4 rows, 0:kc] · packed sliver; C (+)= acc. Rows/cols past mr/nr go to tmp.
function kernel(a: usize, lda4: usize, pb: usize, kc: i32, c: usize, ldc4: usize, mr: i32, nr: i32, accumulate: bool, tmp: usize): void {
  // Missing rows re-read row 0 (always valid memory); their results are dropped below.
  let a0 = a;
  let a1 = mr > 1 ? a0 + lda4 : a0;
  let a2 = mr > 2 ? a0 + lda4 * 2 : a0;
  let a3 = mr > 3 ? a0 + lda4 * 3 : a0;
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
  let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
  let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  let p = pb;
  const end = a0 + (<usize>kc << 2);
  while (a0 < end) {
    const b0 = v128.load(p);
    const b1 = v128.load(p, 16);
    let x = v128.load32_splat(a0);
    c00 = f32x4.add(c00, f32x4.mul(x, b0));
    c01 = f32x4.add(c01, f32x4.mul(x, b1));
    x = v128.load32_splat(a1);
    c10 = f32x4.add(c10, f32x4.mul(x, b0));
    c11 = f32x4.add(c11, f32x4.mul(x, b1));
    x = v128.load32_splat(a2);
    c20 = f32x4.add(c20, f32x4.mul(x, b0));
    c21 = f32x4.add(c21, f32x4.mul(x, b1));
    x = v128.load32_splat(a3);
    c30 = f32x4.add(c30, f32x4.mul(x, b0));
    c31 = f32x4.add(c31, f32x4.mul(x, b1));
    a0 += 4; a1 += 4; a2 += 4; a3 += 4;
    p += NR * 4;
  }
  if (mr == MR && nr == NR) {
    let r = c;
    if (accumulate) {
      v128.store(r, f32x4.add(v128.load(r), c00)); v128.store(r, f32x4.add(v128.load(r, 16), c01), 16); r += ldc4;
      v128.store(r, f32x4.add(v128.load(r), c10)); v128.store(r, f32x4.add(v128.load(r, 16), c11), 16); r += ldc4;
      v128.store(r, f32x4.add(v128.load(r), c20)); v128.store(r, f32x4.add(v128.load(r, 16), c21), 16); r += ldc4;
      v128.store(r, f32x4.add(v128.load(r), c30)); v128.store(r, f32x4.add(v128.load(r, 16), c31), 16);
    } else {
      v128.store(r, c00); v128.store(r, c01, 16); r += ldc4;
      v128.store(r, c10); v128.store(r, c11, 16); r += ldc4;
      v128.store(r, c20); v128.store(r, c21, 16); r += ldc4;
      v128.store(r, c30); v128.store(r, c31, 16);
    }
    return;
  }
  v128.store(tmp, c00); v128.store(tmp, c01, 16);
  v128.store(tmp, c10, 32); v128.store(tmp, c11, 48);
  v128.store(tmp, c20, 64); v128.store(tmp, c21, 80);
  v128.store(tmp, c30, 96); v128.store(tmp, c31, 112);
  for (let i = 0; i < mr; i++) {
    const row = c + <usize>i * ldc4;
    const t = tmp + <usize>(i * NR * 4);
    for (let j = 0; j < nr; j++) {
      const q = row + (<usize>j << 2);
      const v = load<f32>(t + (<usize>j << 2));
      store<f32>(q, accumulate ? load<f32>(q) + v : v);
    }
  }
}

// Block (jc, pc) of the packed B: earlier column blocks hold k x nc floats each.
@inline function blockAt(pb: usize, jc: i32, pc: i32, k: i32, ncPad: i32): usize {
  return pb + (<usize>jc * <usize>k + <usize>pc * <usize>ncPad) * 4;
}

/** Pack all of B[k, n] (row stride ldb) into dst in the layout gemmPacked reads. */
export function packB(b: usize, ldb: i32, k: i32, n: i32, dst: usize, kcMax: i32, ncMax: i32): void {
  const ldb4 = <usize>ldb << 2;
  for (let jc = 0; jc < n; jc += ncMax) {
    const nc = min(ncMax, n - jc);
    const ncPad = (nc + NR - 1) & ~(NR - 1);
    for (let pc = 0; pc < k; pc += kcMax) {
      packBlock(b + <usize>pc * ldb4 + (<usize>jc << 2), ldb4, min(kcMax, k - pc), nc, blockAt(dst, jc, pc, k, ncPad));
    }
  }
}

/**
 * C[0:m, j0:j1] = A[0:m, 0:k] · B[0:k, j0:j1] with B packed by packB(…, k, n, …, kcMax, ncMax);
 * j0 is a multiple of ncMax. `tmp` (tileBytes) must be private to the caller: threads run this
 * concurrently on one memory, on disjoint rows or column blocks.
 */
export function gemmPacked(a: usize, lda: i32, pb: usize, c: usize, ldc: i32, m: i32, n: i32, k: i32, j0: i32, j1: i32, kcMax: i32, ncMax: i32, tmp: usize): void {
  const lda4 = <usize>lda << 2, ldc4 = <usize>ldc << 2;
  for (let jc = j0; jc < j1; jc += ncMax) {
    const nc = min(ncMax, n - jc);
    const ncPad = (nc + NR - 1) & ~(NR - 1);
    for (let pc = 0; pc < k; pc += kcMax) {
      const kc = min(kcMax, k - pc);
      const blk = blockAt(pb, jc, pc, k, ncPad);
      for (let i = 0; i < m; i += MR) {
        const mr = min(MR, m - i);
        const ai = a + <usize>i * lda4 + (<usize>pc << 2);
        const ci = c + <usize>i * ldc4 + (<usize>jc << 2);
        for (let j = 0; j < nc; j += NR) {
          kernel(ai, lda4, blk + <usize>j * <usize>kc * 4, kc, ci + (<usize>j << 2), ldc4, mr, min(NR, nc - j), pc > 0, tmp);
        }
      }
    }
  }
}
