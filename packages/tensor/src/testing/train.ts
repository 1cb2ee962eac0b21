/** Small training helpers shared by the backends' end-to-end tests (the trainer package has the real AdamW). */
import type { Backend } from "../backend.ts";
import { noGrad } from "../autograd.ts";
import type { Rng } from "../random.ts";
import { keep, scope } from "../scope.ts";
import { type Tensor, tensor, zeros } from "../tensor.ts";

/** A leaf parameter with N(0, scale²) values, kept out of scopes. */
export function testParam(backend: Backend, shape: number[], rng: Rng, scale: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return keep(
    tensor(
      Float32Array.from({ length: n }, () => rng.normal() * scale),
      { shape, requiresGrad: true, backend },
    ),
  );
}

/** Minimal Adam: `step()` updates every parameter in place (Tensor.assign) and clears its grad. */
export function testAdam(backend: Backend, params: Tensor[], lr: number): { step: () => void; dispose: () => void } {
  const m = params.map((p) => keep(zeros(p.shape, { backend })));
  const v = params.map((p) => keep(zeros(p.shape, { backend })));
  let t = 0;
  const step = () => {
    t++;
    noGrad(() =>
      params.forEach((p, i) => {
        const g = p.grad!;
        const nm = scope(() => m[i].mul(0.9).add(g.mul(0.1)));
        const nv = scope(() => v[i].mul(0.999).add(g.square().mul(0.001)));
        m[i].dispose();
        v[i].dispose();
        m[i] = keep(nm);
        v[i] = keep(nv);
        const upd = scope(() =>
          p.sub(
            nm
              .div(1 - 0.9 ** t)
              .div(
                nv
                  .div(1 - 0.999 ** t)
                  .sqrt()
                  .add(1e-8),
              )
              .mul(lr),
          ),
        );
        p.assign(upd);
        upd.dispose();
        p.zeroGrad();
      }),
    );
  };
  return { step, dispose: () => [...m, ...v].forEach((x) => x.dispose()) };
}
