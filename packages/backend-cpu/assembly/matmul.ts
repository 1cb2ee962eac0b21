// AssemblyScript source of the WASM SIMD matmul (compiled by scripts/build-wasm.mjs; not seen by tsc).
// C[m,n] = A[m,k] · B[k,n], f32, row-major with leading dimensions lda/ldb/ldc in elements.
// Blocking: packB lays B out once as (NC-column x KC-deep) blocks of NR-column slivers (zero padded),
// shared by every thread; gemmPacked takes A in 4-row panels (packed k-major into the caller's
// scratch when the panel feeds many columns, else read in place) and streams a block of B from L2
// against each. Threads each run gemmPacked on their own rows / column blocks.
//
// The kernel reads the 4 rows of A through one pointer plus loop-invariant row offsets, not four
// row pointers (V8 bumps and zero-extends each pointer every step): 29 instructions per k step on
// V8 11 (Node 20) instead of 37, for 16 mul/add. Measured single thread (gemmPacked alone, best of
// 30, 256³): 37.8 -> 43 GFLOP/s, which is ~80% of a native loop of 128-bit mul+add on this Zen 5;
// the remaining gap is FP issue, not instruction count (a pre-broadcast A panel with 26
// instructions per step measured the same, 44 vs 43).

const MR: i32 = 4;
const NR: i32 = 8;
/**
 * Pack a panel of A only when it feeds this many columns: packing costs about a quarter of one
 * sliver's arithmetic at kc = 256 (V8's shuffles) and buys contiguous A (one stream, not four).
 * Measured, single thread, gemmPacked alone, best of 40: LoRA x·Aᵀ [1024x256]·[256x8] 37 GFLOP/s
 * in place vs 33 packed; 256³ 39.5 in place vs 40.9 packed.
 */
const PACK_MIN_COLS: i32 = 32;

/** First free byte after static data: the engine puts its scratch and operands above it. */
export function heapBase(): usize {
  return __heap_base;
}

/** Bytes of per-thread scratch gemmPacked needs for depth kcMax: one edge tile, then a packed A panel. */
export function scratchBytes(kcMax: i32): usize {
  return MR * NR * 4 + <usize>MR * <usize>kcMax * 4;
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

// The same slivers from Bᵀ: B[k, n] = bt[n, k] (row stride ldbt4 bytes), so a weight W [n, k] packs
// for x·Wᵀ in place of a transposed copy made first. Full slivers go 4 k at a time: 8 row loads,
// two 4x4 transposes in registers, 8 stores. Columns past nc are 0.
function packBlockT(bt: usize, ldbt4: usize, kc: i32, nc: i32, dst: usize): void {
  const kv = kc & ~3;
  for (let j = 0; j < nc; j += NR) {
    const cols = min(NR, nc - j);
    const src = bt + <usize>j * ldbt4;
    const d0 = dst + <usize>j * <usize>kc * 4;
    let kk = 0;
    if (cols === NR) {
      for (; kk < kv; kk += 4) {
        const at = src + (<usize>kk << 2);
        const d = d0 + <usize>kk * NR * 4;
        transpose4(at, ldbt4, d);
        transpose4(at + 4 * ldbt4, ldbt4, d + 16);
      }
    }
    for (; kk < kc; kk++) {
      const at = src + (<usize>kk << 2);
      const d = d0 + <usize>kk * NR * 4;
      for (let c = 0; c < NR; c++) store<f32>(d + (<usize>c << 2), c < cols ? load<f32>(at + <usize>c * ldbt4) : 0);
    }
  }
}

// Rows r..r+3 (stride ld4 bytes) of 4 floats each at `at` -> their columns, one per NR-float row of dst.
@inline function transpose4(at: usize, ld4: usize, dst: usize): void {
  const r0 = v128.load(at), r1 = v128.load(at + ld4), r2 = v128.load(at + 2 * ld4), r3 = v128.load(at + 3 * ld4);
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5), t1 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t2 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5), t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, v128.shuffle<f32>(t0, t2, 0, 1, 4, 5));
  v128.store(dst + NR * 4, v128.shuffle<f32>(t0, t2, 2, 3, 6, 7));
  v128.store(dst + 2 * NR * 4, v128.shuffle<f32>(t1, t3, 0, 1, 4, 5));
  v128.store(dst + 3 * NR * 4, v128.shuffle<f32>(t1, t3, 2, 3, 6, 7));
}

// A[0:mr, 0:kc] (row stride lda4 bytes) -> dst as kc groups of MR floats (rows past mr are 0).
function packA(a: usize, lda4: usize, mr: i32, kc: i32, dst: usize): void {
  let kk = 0;
  if (mr == MR) {
    // 4x4 transposes: rows r0..r3 at k..k+3 -> k-major groups.
    const a1 = a + lda4, a2 = a1 + lda4, a3 = a2 + lda4;
    for (; kk + 4 <= kc; kk += 4) {
      const o = <usize>kk << 2;
      const r0 = v128.load(a + o), r1 = v128.load(a1 + o), r2 = v128.load(a2 + o), r3 = v128.load(a3 + o);
      const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5), t1 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
      const t2 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7), t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
      const d = dst + (o << 2);
      v128.store(d, v128.shuffle<f64>(t0, t1, 0, 2));
      v128.store(d, v128.shuffle<f64>(t0, t1, 1, 3), 16);
      v128.store(d, v128.shuffle<f64>(t2, t3, 0, 2), 32);
      v128.store(d, v128.shuffle<f64>(t2, t3, 1, 3), 48);
    }
  }
  for (; kk < kc; kk++) {
    const d = dst + (<usize>kk << 4);
    for (let i = 0; i < MR; i++) store<f32>(d + (<usize>i << 2), i < mr ? load<f32>(a + <usize>i * lda4 + (<usize>kk << 2)) : 0);
  }
}

// One MR-row panel of A times the nc columns of a packed B block, NR columns (one sliver) at a time:
// acc = A[4 rows, 0:kc] · sliver; C (+)= acc. Row i of A is at a + ri (r0 = 0), step k at + k*ks,
// so this reads A packed (ri = 4i, ks = 16) or in place (ri = i*lda4, ks = 4). Rows past mr re-read
// row 0 (ri = 0) and columns past nc are zero in the sliver; those results go to tmp and are dropped.
// The sliver loop is in here (not in the caller) because for small kc (LoRA's K = 8) a call per
// tile cost as much as its arithmetic.
function panel(a: usize, r1: usize, r2: usize, r3: usize, ks: usize, blk: usize, kc: i32, c: usize, ldc4: usize, mr: i32, nc: i32, accumulate: bool, tmp: usize): void {
  const end = a + <usize>kc * ks;
  const sliver = <usize>kc * (NR * 4);
  for (let j = 0; j < nc; j += NR) {
    let c00 = f32x4.splat(0), c01 = f32x4.splat(0);
    let c10 = f32x4.splat(0), c11 = f32x4.splat(0);
    let c20 = f32x4.splat(0), c21 = f32x4.splat(0);
    let c30 = f32x4.splat(0), c31 = f32x4.splat(0);
    let p = blk, q = a;
    // 29 instructions per step (V8 peels the first iteration, which keeps the stack check): 16
    // mul/add, 6 loads, 3 address adds, 2 bumps, loop test. Unrolling k does not help: TurboFan
    // hoists all loads of an iteration to its top and two steps' worth spill the 15 usable xmm
    // registers (so do 5 x 8 tiles).
    while (q < end) {
      const b0 = v128.load(p);
      const b1 = v128.load(p, 16);
      let x = v128.load32_splat(q);
      c00 = madd(x, b0, c00);
      c01 = madd(x, b1, c01);
      x = v128.load32_splat(q + r1);
      c10 = madd(x, b0, c10);
      c11 = madd(x, b1, c11);
      x = v128.load32_splat(q + r2);
      c20 = madd(x, b0, c20);
      c21 = madd(x, b1, c21);
      x = v128.load32_splat(q + r3);
      c30 = madd(x, b0, c30);
      c31 = madd(x, b1, c31);
      q += ks;
      p += NR * 4;
    }
    const cj = c + (<usize>j << 2);
    blk += sliver;
    if (mr == MR && nc - j >= NR) {
      let r = cj;
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
      continue;
    }
    v128.store(tmp, c00); v128.store(tmp, c01, 16);
    v128.store(tmp, c10, 32); v128.store(tmp, c11, 48);
    v128.store(tmp, c20, 64); v128.store(tmp, c21, 80);
    v128.store(tmp, c30, 96); v128.store(tmp, c31, 112);
    const nr = min(NR, nc - j);
    for (let i = 0; i < mr; i++) {
      const row = cj + <usize>i * ldc4;
      const t = tmp + <usize>(i * NR * 4);
      for (let jj = 0; jj < nr; jj++) {
        const q = row + (<usize>jj << 2);
        const v = load<f32>(t + (<usize>jj << 2));
        store<f32>(q, accumulate ? load<f32>(q) + v : v);
      }
    }
  }
}

/** a * b + c: fused (one instruction, one rounding) in the relaxed-SIMD build. */
@inline function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
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

/** packB of B[k, n] given as its transpose bt[n, k] (row stride ldbt): the same packed layout. */
export function packBT(bt: usize, ldbt: i32, k: i32, n: i32, dst: usize, kcMax: i32, ncMax: i32): void {
  const ldbt4 = <usize>ldbt << 2;
  for (let jc = 0; jc < n; jc += ncMax) {
    const nc = min(ncMax, n - jc);
    const ncPad = (nc + NR - 1) & ~(NR - 1);
    for (let pc = 0; pc < k; pc += kcMax) {
      packBlockT(bt + <usize>jc * ldbt4 + (<usize>pc << 2), ldbt4, min(kcMax, k - pc), nc, blockAt(dst, jc, pc, k, ncPad));
    }
  }
}

/**
 * C[0:m, j0:j1] = A[0:m, 0:k] · B[0:k, j0:j1] with B packed by packB(…, k, n, …, kcMax, ncMax);
 * j0 is a multiple of ncMax. `tmp` (scratchBytes(kcMax)) must be private to the caller: threads run this
 * concurrently on one memory, on disjoint rows or column blocks.
 */
export function gemmPacked(a: usize, lda: i32, pb: usize, c: usize, ldc: i32, m: i32, n: i32, k: i32, j0: i32, j1: i32, kcMax: i32, ncMax: i32, tmp: usize): void {
  const lda4 = <usize>lda << 2, ldc4 = <usize>ldc << 2;
  const pa = tmp + MR * NR * 4;
  for (let jc = j0; jc < j1; jc += ncMax) {
    const nc = min(ncMax, n - jc);
    const ncPad = (nc + NR - 1) & ~(NR - 1);
    for (let pc = 0; pc < k; pc += kcMax) {
      const kc = min(kcMax, k - pc);
      const blk = blockAt(pb, jc, pc, k, ncPad);
      for (let i = 0; i < m; i += MR) {
        const mr = min(MR, m - i);
        const ai = a + <usize>i * lda4 + (<usize>pc << 2);
        const pack = nc >= PACK_MIN_COLS;
        if (pack) packA(ai, lda4, mr, kc, pa);
        const src = pack ? pa : ai, rs: usize = pack ? 4 : lda4, ks: usize = pack ? 16 : 4;
        // Rows past mr re-read row 0 (valid memory); their results are dropped.
        const r1 = mr > 1 ? rs : 0, r2 = mr > 2 ? rs * 2 : 0, r3 = mr > 3 ? rs * 3 : 0;
        panel(src, r1, r2, r3, ks, blk, kc, c + <usize>i * ldc4 + (<usize>jc << 2), ldc4, mr, nc, pc > 0, tmp);
      }
    }
  }
}
