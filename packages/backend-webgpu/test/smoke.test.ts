/**
 * Quick end-to-end check of the main kernel families on this runtime's edge (the Bun run:
 * `npx bun test ./test/smoke.test.ts`; also runs under Node and Deno).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { crossEntropy, full, rand, softmax, tensor, uniformAt } from "@lowrank/tensor";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;

test("smoke: upload, elementwise, matmul, reduce, softmax, crossEntropy backward, random, f16, dispose", { skip, timeout: TIMEOUT_MS }, async () => {
  const be = got as Exclude<typeof got, string>;
  try {
    assert.match(be.device, /^webgpu \(/);
    const a = tensor(
      [
        [1, 2],
        [3, 4],
      ],
      { backend: be, requiresGrad: true },
    );
    const b = tensor(
      [
        [0.5, -1],
        [2, 0],
      ],
      { backend: be },
    );
    assert.deepEqual(Array.from(await a.matmul(b).read()), [4.5, -1, 9.5, -3]);
    assert.deepEqual(Array.from(await a.T.add(1).read()), [2, 4, 3, 5]);
    assert.equal(await a.sum().item(), 10);
    const p = await softmax(a).read();
    assert.ok(Math.abs(p[0] + p[1] - 1) < 1e-6);
    const loss = crossEntropy(a.matmul(b), tensor([1, 0], { dtype: "i32", backend: be }));
    loss.backward();
    assert.equal(a.grad!.shape.join(), "2,2");
    const r = await rand([3], 5, 0, { backend: be }).read();
    assert.deepEqual(
      Array.from(r),
      [0, 1, 2].map((i) => uniformAt(5, i)),
    );
    assert.deepEqual(
      Array.from(
        await full([3], 1 / 3, { backend: be })
          .cast("f16")
          .read(),
      ),
      [0.333251953125, 0.333251953125, 0.333251953125],
    );
    await be.sync();
  } finally {
    be.dispose();
  }
});
