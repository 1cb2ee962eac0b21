/**
 * Conformance of the fused transformer set (dropout, SwiGLU, RoPE, attention, the LoRA branch,
 * AdamW): each kernel against its primitive composite on the same backend and against plain-JS
 * numbers, the pair rule, and the memory claims (no stored dropout mask, AdamW without
 * parameter-sized temporaries). Gradchecks live in gradients.ts with the other rules.
 */
import { checkFusedPairs } from "../backend.ts";
import * as F from "../functional.ts";
import { noGrad } from "../autograd.ts";
import { copyInto } from "../ops.ts";
import { uniformAt } from "../random.ts";
import { keep, scope } from "../scope.ts";
import { type Tensor, tensor, zeros } from "../tensor.ts";
import * as O from "./oracle.ts";
import { type SuiteOptions, expectClose, mk, rnd, withoutFused } from "./util.ts";

export function fusedNnSuite(opts: SuiteOptions): void {
  const { backend, test } = opts;
  const tol = opts.tolScale ?? 1;
  const composite = withoutFused(backend);
  const T = mk(backend);
  const C = mk(composite);

  test("fused pairs: every forward kernel comes with its backward", () => {
    checkFusedPairs(backend);
    let msg = "";
    try {
      checkFusedPairs({ name: "half", fused: { rope: backend.fused?.rope ?? (() => 0) } });
    } catch (e) {
      msg = String(e);
    }
    if (!msg.includes("ropeBackward")) throw new Error(`a backend with rope but no ropeBackward passed checkFusedPairs (${msg})`);
  });

  test("dropout: the fused mask is the counter-based stream, equal to the composite, on any offset", async () => {
    const n = 3000;
    const x = rnd(n, 80, 0.5, 2);
    for (const [p, seed, offset] of [
      [0.1, 7, 0],
      [0.5, 123456789, 1001],
      [0.9, 3, 4294967290],
    ] as const) {
      const ref = Array.from(x, (v, i) => (uniformAt(seed, offset + i) >= p ? Math.fround(v * (1 / (1 - p))) : 0));
      await expectClose(F.dropout(T(x, [30, 100]), p, seed, offset), ref, `dropout p=${p} offset=${offset}`, 1e-6 * tol, 1e-6 * tol);
      await expectClose(F.dropout(C(x, [30, 100]), p, seed, offset), ref, `composite dropout p=${p}`, 1e-6 * tol, 1e-6 * tol);
    }
  });

  test("swiglu: fused equals silu(gate) * up", async () => {
    const g = rnd(4 * 37, 81, -6, 6);
    const u = rnd(4 * 37, 82, -2, 2);
    const ref = Array.from(g, (v, i) => (v / (1 + Math.exp(-v))) * u[i]);
    await expectClose(F.swiglu(T(g, [4, 37]), T(u, [4, 37])), ref, "swiglu", 1e-6 * tol, 1e-5 * tol);
    await expectClose(F.swiglu(C(g, [4, 37]), C(u, [4, 37])), ref, "composite swiglu", 1e-6 * tol, 1e-5 * tol);
  });

  test("rope: fused on a head-permuted view equals the composite (both modes, offset)", async () => {
    const [B, Tn, H, D, off] = [2, 5, 3, 8, 3];
    const x = rnd(B * Tn * H * D, 83);
    for (const mode of ["rotate_half", "interleaved"] as const) {
      const run = (be: typeof backend) => {
        const tables = F.ropeTables(D, 16, 10000, undefined, { backend: be });
        const y = F.rope(mk(be)(x, [B, Tn, H, D]).permute(0, 2, 1, 3), tables, off, mode);
        return y.read();
      };
      const [a, b] = [await run(backend), await run(composite)];
      for (let i = 0; i < a.length; i++) {
        if (Math.abs(a[i] - b[i]) > 1e-5 * tol) throw new Error(`rope ${mode}: element ${i} fused ${a[i]}, composite ${b[i]}`);
      }
    }
  });

  test("attention: fused equals the oracle (GQA, causal with S > T, non-causal, rows past a block)", async () => {
    for (const [B, H, Hkv, Tq, S, D, causal] of [
      [1, 4, 2, 3, 7, 8, true],
      [2, 2, 1, 33, 33, 16, true],
      [1, 2, 2, 5, 9, 4, false],
      // Long enough for a backend to cut the causal rows into blocks (blocks that skip masked keys,
      // blocks across two heads' queries, a partial last block, a KV prefix S > T).
      [1, 4, 2, 150, 150, 8, true],
      [1, 2, 2, 70, 100, 8, true],
    ] as const) {
      const q = rnd(B * H * Tq * D, 84);
      const k = rnd(B * Hkv * S * D, 85);
      const v = rnd(B * Hkv * S * D, 86);
      const ref = O.attention(O.host(q, [B, H, Tq, D]), O.host(k, [B, Hkv, S, D]), O.host(v, [B, Hkv, S, D]), causal);
      const y = F.attention(T(q, [B, H, Tq, D]), T(k, [B, Hkv, S, D]), T(v, [B, Hkv, S, D]), { causal });
      await expectClose(y, ref, `attention B${B} H${H}/${Hkv} T${Tq} S${S} causal=${causal}`, 1e-5 * tol, 1e-4 * tol);
    }
  });

  test("attention: gradients equal the composite's on rows past a block (causal GQA, S > T)", async () => {
    for (const [H, Hkv, Tq, S, D] of [
      [4, 2, 150, 150, 8],
      [2, 2, 70, 100, 8],
    ] as const) {
      const qs = rnd(H * Tq * D, 95),
        ks = rnd(Hkv * S * D, 96),
        vs = rnd(Hkv * S * D, 97),
        ws = rnd(H * Tq * D, 98);
      const grads = async (be: typeof backend) => {
        const M = mk(be);
        const [q, k, v] = [M(qs, [1, H, Tq, D]), M(ks, [1, Hkv, S, D]), M(vs, [1, Hkv, S, D])];
        for (const t of [q, k, v]) t.requiresGrad = true;
        F.attention(q, k, v)
          .mul(M(ws, [1, H, Tq, D]))
          .sum()
          .backward();
        return [await q.grad!.read(), await k.grad!.read(), await v.grad!.read()];
      };
      const [f, c] = [await grads(backend), await grads(composite)];
      f.forEach((a, j) => {
        for (let i = 0; i < a.length; i++) {
          if (Math.abs(a[i] - c[j][i]) > 1e-4 * tol * (1 + Math.abs(c[j][i])))
            throw new Error(`attention T${Tq} S${S} ${["dq", "dk", "dv"][j]}[${i}]: fused ${a[i]}, composite ${c[j][i]}`);
        }
      });
    }
  });

  test("loraBranch: equals B(A(dropout(x)))·s, and its gradients equal the composite's", async () => {
    const [N, inF, r, outF] = [6, 10, 3, 7];
    const xs = rnd(N * inF, 87),
      As = rnd(r * inF, 88),
      Bs = rnd(outF * r, 89);
    const drop = { p: 0.25, seed: 11, offset: 5 };
    const grads = async (be: typeof backend) => {
      const M = mk(be);
      const [x, A, B] = [M(xs, [N, inF]), M(As, [r, inF]), M(Bs, [outF, r])];
      for (const t of [x, A, B]) t.requiresGrad = true;
      const y = F.loraBranch(x, A, B, 1.5, drop);
      const out = await y.read();
      y.mul(y).sum().backward();
      return [out, await x.grad!.read(), await A.grad!.read(), await B.grad!.read()];
    };
    const [f, c] = [await grads(backend), await grads(composite)];
    const names = ["y", "dx", "dA", "dB"];
    f.forEach((a, j) => {
      for (let i = 0; i < a.length; i++) {
        if (Math.abs(a[i] - c[j][i]) > 1e-4 * tol * (1 + Math.abs(c[j][i])))
          throw new Error(`loraBranch ${names[j]}[${i}]: fused ${a[i]}, composite ${c[j][i]}`);
      }
    });
  });

  test("loraLinear: the fused layer equals x Wᵀ + b + the composite branch, values and gradients", async () => {
    // Aligned shapes (vector loads), odd ones (scalar loads, partial tiles), dropout at an offset, bias.
    for (const [N, inF, r, outF, p, bias] of [
      [8, 16, 4, 12, 0.25, true],
      [7, 10, 3, 9, 0.5, false],
      [33, 20, 8, 36, 0, true],
      // Past the CPU's WASM thresholds (N·inF ≥ 1,024, a partial 16-lane tail): the backward reuses the keep mask.
      [70, 37, 4, 20, 0.3, false],
    ] as const) {
      const xs = rnd(N * inF, 100),
        Ws = rnd(outF * inF, 101),
        bs = rnd(outF, 102),
        As = rnd(r * inF, 103),
        Bs = rnd(outF * r, 104),
        gs = rnd(N * outF, 105);
      const drop = p > 0 ? { p, seed: 77, offset: 1001 } : null;
      const grads = async (be: typeof backend, fusedLayer: boolean) => {
        const M = mk(be);
        const [x, W, b, A, B] = [M(xs, [N, inF]), M(Ws, [outF, inF]), M(bs, [outF]), M(As, [r, inF]), M(Bs, [outF, r])];
        for (const t of [x, A, B]) t.requiresGrad = true;
        const y = fusedLayer
          ? F.loraLinear(x, W, bias ? b : null, A, B, 1.5, drop)
          : (bias ? x.matmul(W.T).add(b) : x.matmul(W.T)).add(F.loraBranch(x, A, B, 1.5, drop));
        const out = await y.read();
        y.backward(M(gs, [N, outF]));
        return [out, await x.grad!.read(), await A.grad!.read(), await B.grad!.read()];
      };
      const [f, c] = [await grads(backend, true), await grads(composite, false)];
      ["y", "dx", "dA", "dB"].forEach((name, j) => {
        for (let i = 0; i < f[j].length; i++) {
          if (Math.abs(f[j][i] - c[j][i]) > 1e-4 * tol * (1 + Math.abs(c[j][i]))) {
            throw new Error(`loraLinear N${N} in${inF} r${r} out${outF} p=${p}: ${name}[${i}] fused ${f[j][i]}, composite ${c[j][i]}`);
          }
        }
      });
    }
  });

  test("loraRows: base plus stacked adapters masked per row equals the composite (bias, a base-only row)", async () => {
    const [N, inF, outF, R] = [6, 12, 10, 7];
    const xs = rnd(N * inF, 140),
      Ws = rnd(outF * inF, 141),
      bs = rnd(outF, 142),
      As = rnd(R * inF, 143),
      Bs = rnd(outF * R, 144);
    // Two adapters (ranks 4 and 3): rows 0, 3 on the first (scaling 2), rows 1, 4, 5 on the second (0.5), row 2 on none.
    const mask = new Float32Array(N * R);
    [
      [0, 0, 4, 2],
      [3, 0, 4, 2],
      [1, 4, 3, 0.5],
      [4, 4, 3, 0.5],
      [5, 4, 3, 0.5],
    ].forEach(([row, at, n, s]) => mask.fill(s, row * R + at, row * R + at + n));
    const run = async (be: typeof backend) => {
      const M = mk(be);
      return F.loraRows(M(xs, [N, inF]), M(Ws, [outF, inF]), M(bs, [outF]), M(As, [R, inF]), M(Bs, [outF, R]), M(mask, [N, R])).read();
    };
    const [f, c] = [await run(backend), await run(composite)];
    for (let i = 0; i < c.length; i++) {
      if (Math.abs(f[i] - c[i]) > 1e-5 * tol * (1 + Math.abs(c[i]))) throw new Error(`loraRows [${i}]: fused ${f[i]}, composite ${c[i]}`);
    }
    // Row 2 (no adapter) is the base alone.
    const base = await mk(composite)(xs, [N, inF])
      .matmul(mk(composite)(Ws, [outF, inF]).T)
      .add(mk(composite)(bs, [outF]))
      .read();
    for (let j = 0; j < outF; j++)
      if (Math.abs(f[2 * outF + j] - base[2 * outF + j]) > 1e-5 * tol) throw new Error(`loraRows: the base-only row differs at ${j}`);
  });

  test("copyInto: a strided source written into a view of a storage, in place, seen by every alias", async () => {
    if (!backend.copyInto) return; // this backend grows caches by concatenation instead
    const M = mk(backend);
    const dst = M(new Float32Array(2 * 5 * 3).fill(-1), [2, 5, 3]);
    const alias = dst.reshape([10, 3]);
    const src = M(rnd(3 * 2 * 2, 150), [3, 2, 2]).permute(1, 2, 0); // [2, 2, 3], not contiguous
    copyInto(dst.narrow(1, 3, 2), src);
    const [got, s] = [await alias.read(), await src.read()];
    for (let h = 0; h < 2; h++) {
      for (let j = 0; j < 5; j++) {
        for (let d = 0; d < 3; d++) {
          const want = j >= 3 ? s[(h * 2 + j - 3) * 3 + d] : -1;
          if (got[(h * 5 + j) * 3 + d] !== want) throw new Error(`copyInto [${h}, ${j}, ${d}]: ${got[(h * 5 + j) * 3 + d]}, expected ${want}`);
        }
      }
    }
  });

  test("attentionDecode: N sequences appended in place to caches with spare room equal each appended and attended alone (GQA, v a head permute), nothing past the new row read or written", async () => {
    if (!backend.copyInto) return; // its caches grow by concatenation: the model attends per sequence
    const [Hq, Hkv, D] = [4, 2, 8];
    const lens = [3, 1, 7, 5];
    const N = lens.length;
    const qs = rnd(Hq * N * D, 110),
      kn = rnd(Hkv * N * D, 111),
      vn = rnd(Hkv * N * D, 112);
    // Capacity length + 2: the row after the new one holds a value that would show in any output that read it.
    const SENTINEL = 1e4;
    const fill = (S: number, seed: number) => {
      const a = new Float32Array(Hkv * (S + 2) * D).fill(SENTINEL);
      const r = rnd(Hkv * S * D, seed);
      for (let h = 0; h < Hkv; h++) a.set(r.subarray(h * S * D, (h + 1) * S * D), h * (S + 2) * D);
      return a;
    };
    const caches = lens.map((S, i) => [fill(S, 120 + i), fill(S, 130 + i)]);
    const run = async (be: typeof backend) => {
      const M = mk(be);
      const ks = caches.map(([k], i) => M(k, [1, Hkv, lens[i] + 2, D])),
        vs = caches.map(([, v], i) => M(v, [1, Hkv, lens[i] + 2, D]));
      // v arrives as the head permute of a projection's output [1, N, Hkv, D], as in the model.
      const v = M(vn, [1, N, Hkv, D]).permute(0, 2, 1, 3);
      const out = F.attentionDecode(
        M(qs, [1, Hq, N, D]),
        M(kn, [1, Hkv, N, D]),
        v,
        lens.map((length, i) => ({ k: ks[i], v: vs[i], length })),
      );
      return [await out.read(), ...(await Promise.all(ks.map((t) => t.read()))), ...(await Promise.all(vs.map((t) => t.read())))];
    };
    const [f, c] = [await run(backend), await run(composite)];
    f.forEach((a, j) => {
      for (let i = 0; i < a.length; i++) {
        if (Math.abs(a[i] - c[j][i]) > 1e-5 * tol * (1 + Math.abs(c[j][i])))
          throw new Error(`attentionDecode output ${j} [${i}]: fused ${a[i]}, composite ${c[j][i]}`);
      }
    });
    // Plain-JS reference of the output: softmax(q·kᵀ/√D)·v over the old rows plus the new one.
    const scale = 1 / Math.sqrt(D);
    for (let i = 0; i < N; i++) {
      const S = lens[i] + 1,
        C = lens[i] + 2;
      for (let h = 0; h < Hq; h++) {
        const kv = Math.floor(h / (Hq / Hkv));
        const row = (a: Float32Array, fresh: number[], j: number, d: number) => (j < S - 1 ? a[(kv * C + j) * D + d] : fresh[d]);
        const [kRow, vRow] = [Array.from({ length: D }, (_, d) => kn[(kv * N + i) * D + d]), Array.from({ length: D }, (_, d) => vn[(i * Hkv + kv) * D + d])];
        const s = Array.from(
          { length: S },
          (_, j) => scale * Array.from({ length: D }, (_, d) => qs[(h * N + i) * D + d] * row(caches[i][0], kRow, j, d)).reduce((x, y) => x + y, 0),
        );
        const m = Math.max(...s),
          e = s.map((x) => Math.exp(x - m)),
          z = e.reduce((x, y) => x + y, 0);
        for (let d = 0; d < D; d++) {
          const want = e.reduce((acc, p, j) => acc + (p / z) * row(caches[i][1], vRow, j, d), 0);
          const got = f[0][(h * N + i) * D + d];
          if (Math.abs(got - want) > 1e-5 * tol * (1 + Math.abs(want)))
            throw new Error(`attentionDecode sequence ${i} head ${h} [${d}]: ${got}, reference ${want}`);
        }
      }
      // The new key and value sit at row lens[i]; the rows before are unchanged and the spare one is untouched.
      const freshAt = [(kv: number, d: number) => kn[(kv * N + i) * D + d], (kv: number, d: number) => vn[(i * Hkv + kv) * D + d]];
      for (const [t, old, fresh] of [
        [f[1 + i], caches[i][0], freshAt[0]],
        [f[1 + N + i], caches[i][1], freshAt[1]],
      ] as const) {
        for (let kv = 0; kv < Hkv; kv++) {
          for (let j = 0; j < C; j++) {
            for (let d = 0; d < D; d++) {
              const want = j === lens[i] ? Math.fround(fresh(kv, d)) : old[(kv * C + j) * D + d];
              if (t[(kv * C + j) * D + d] !== want)
                throw new Error(`attentionDecode: cache of sequence ${i} kv head ${kv} row ${j} [${d}] is ${t[(kv * C + j) * D + d]}, expected ${want}`);
            }
          }
        }
      }
    }
  });

  test("memory: a LoRA branch with dropout keeps no more than one without (the mask is regenerated)", () => {
    const [N, inF, r, outF] = [64, 96, 4, 80];
    const live = (p: number) => {
      const x = T(rnd(N * inF, 90), [N, inF]);
      const A = T(rnd(r * inF, 91), [r, inF]);
      const B = T(rnd(outF * r, 92), [outF, r]);
      A.requiresGrad = true;
      B.requiresGrad = true;
      const before = backend.memory().liveBytes;
      const y = F.loraBranch(x, A, B, 2, p > 0 ? { p, seed: 1, offset: 0 } : null);
      const held = backend.memory().liveBytes - before - y.size * 4;
      y.backward(tensor(new Float32Array(y.size).fill(1), { shape: y.shape, backend }));
      for (const t of [x, A, B, y]) t.dispose();
      A.grad?.dispose();
      B.grad?.dispose();
      return held;
    };
    const [withDrop, without] = [live(0.1), live(0)];
    if (!backend.fused?.dropout) return;
    if (withDrop > without) throw new Error(`dropout added ${withDrop - without} bytes of saved activations to the LoRA branch`);
    if (without > N * r * 4) throw new Error(`the LoRA branch keeps ${without} bytes, more than its [N, r] projection (${N * r * 4})`);
  });

  test("adamwStep: fused in place equals the composite and the torch formula; no parameter-sized temporaries", async () => {
    const n = 1000;
    const h0 = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
    const p0 = rnd(n, 93),
      grads = [rnd(n, 94), rnd(n, 95), rnd(n, 96)];
    // Reference in f64, torch.optim.AdamW order.
    const p = Float64Array.from(p0),
      m = new Float64Array(n),
      v = new Float64Array(n);
    grads.forEach((g, t) => {
      const bc1 = 1 - h0.beta1 ** (t + 1),
        sq = Math.sqrt(1 - h0.beta2 ** (t + 1));
      for (let i = 0; i < n; i++) {
        p[i] *= 1 - h0.lr * h0.weightDecay;
        m[i] = h0.beta1 * m[i] + (1 - h0.beta1) * g[i];
        v[i] = h0.beta2 * v[i] + (1 - h0.beta2) * g[i] * g[i];
        p[i] -= (h0.lr / bc1) * (m[i] / (Math.sqrt(v[i]) / sq + h0.eps));
      }
    });
    let transient = 0;
    for (const be of [backend, composite]) {
      const M = mk(be);
      const [pt, mt, vt] = [keep(M(p0, [10, 100])), keep(zeros([10, 100], { backend: be })), keep(zeros([10, 100], { backend: be }))];
      for (let t = 0; t < grads.length; t++) {
        const g = M(grads[t], [10, 100]);
        const base = backend.memory().liveBytes;
        backend.resetPeak();
        F.adamwStep(pt, g, mt, vt, { ...h0, bc1: 1 - h0.beta1 ** (t + 1), sqrtBc2: Math.sqrt(1 - h0.beta2 ** (t + 1)) }, true);
        if (be === backend) transient = Math.max(transient, backend.memory().peakBytes - base);
        g.dispose();
      }
      await expectClose(pt, Array.from(p), `adamw ${be === backend ? "fused" : "composite"} parameter`, 1e-6, 1e-5);
      await expectClose(mt, Array.from(m), "adamw exp_avg", 1e-7, 1e-5);
      for (const t of [pt, mt, vt]) t.dispose();
    }
    if (backend.fused?.adamw && transient > n * 4) throw new Error(`fused adamw held ${transient} transient bytes, more than one tensor (${n * 4})`);
  });

  test("addRmsNorm: fused h and norm equal x + r and rmsNorm (odd widths, rows past a chunk)", async () => {
    for (const [rows, n] of [
      [3, 7],
      [300, 24],
      [5, 1030],
    ] as const) {
      const xs = rnd(rows * n, 104),
        rs = rnd(rows * n, 105),
        ws = rnd(n, 106, 0.5, 1.5);
      const hRef = xs.map((v, i) => Math.fround(v + rs[i]));
      const yRef: number[] = [];
      for (let r = 0; r < rows; r++) {
        let ss = 0;
        for (let i = 0; i < n; i++) ss += hRef[r * n + i] ** 2;
        const rstd = 1 / Math.sqrt(ss / n + 1e-6);
        for (let i = 0; i < n; i++) yRef.push(hRef[r * n + i] * rstd * ws[i]);
      }
      for (const M of [T, C]) {
        const [h, y] = F.addRmsNorm(M(xs, [rows, n]), M(rs, [rows, n]), M(ws, [n]), 1e-6);
        await expectClose(h, Array.from(hRef), `addRmsNorm h [${rows}, ${n}]${M === C ? " composite" : ""}`, 1e-6 * tol, 1e-6 * tol);
        await expectClose(y, yRef, `addRmsNorm out [${rows}, ${n}]${M === C ? " composite" : ""}`, 1e-5 * tol, 1e-5 * tol);
      }
    }
  });

  test("linearCrossEntropy: chunked equals h·Wᵀ + crossEntropy (loss, dh, dW, db); its peak never holds the logits", async () => {
    const [N, Cd, V] = [200, 8, 300];
    const hs = rnd(N * Cd, 101),
      ws = rnd(V * Cd, 102),
      bs = rnd(V, 103);
    const ts = Array.from({ length: N }, (_, i) => (i % 7 === 3 ? -100 : (i * 41) % V));
    const run = (be: typeof backend, chunkRows: number | null) => {
      const M = mk(be);
      const [h, w, b] = [M(hs, [N, Cd]), M(ws, [V, Cd]), M(bs, [V])];
      for (const t of [h, w, b]) t.requiresGrad = true;
      const t = M(ts, [N], "i32");
      be.resetPeak();
      const base = be.memory().liveBytes;
      const loss =
        chunkRows === null
          ? F.crossEntropy(h.matmul(w.T).add(b), t, { reduction: "sum" })
          : F.linearCrossEntropy(h, w, t, { bias: b, chunkRows, reduction: "sum" });
      loss.backward();
      const peak = be.memory().peakBytes - base;
      return { peak, values: Promise.all([loss.read(), h.grad!.read(), w.grad!.read(), b.grad!.read()]) };
    };
    const ref = await run(composite, null).values;
    const names = ["loss", "dh", "dW", "db"];
    for (const [be, rows] of [
      [backend, 5],
      [backend, N],
      [composite, 8],
    ] as const) {
      const got = await run(be, rows).values;
      got.forEach((a, j) => {
        for (let i = 0; i < a.length; i++) {
          if (Math.abs(a[i] - ref[j][i]) > 2e-4 * tol * (1 + Math.abs(ref[j][i])))
            throw new Error(`linearCrossEntropy rows ${rows} ${names[j]}[${i}]: ${a[i]}, reference ${ref[j][i]}`);
        }
      });
    }
    if (!backend.fused?.crossEntropy) return;
    const logits = N * V * 4;
    const { peak } = run(backend, 5);
    // Gradients of h, W, b and a few chunks of logits: far below the [N, V] logits (the plain path holds them twice).
    if (peak >= logits) throw new Error(`chunked linearCrossEntropy peaked at ${peak} bytes; the logits alone are ${logits}`);
  });

  test("fused ops inside noGrad and scope leave no storage behind", () => {
    const before = backend.memory().liveBytes;
    noGrad(() =>
      scope(() => {
        const x: Tensor = T(rnd(64, 97), [1, 2, 4, 8]);
        F.attention(x, x, x);
        F.swiglu(x, x);
        F.dropout(x, 0.5, 1);
      }),
    );
    if (backend.memory().liveBytes !== before) throw new Error(`${backend.memory().liveBytes - before} bytes leaked`);
  });
}
