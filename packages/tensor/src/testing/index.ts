/**
 * The backend conformance suite. Every backend runs it:
 *
 *   import { test } from "node:test";
 *   import { conformanceSuite } from "@lowrank/tensor/testing";
 *   conformanceSuite({ backend: myBackend, test });
 */
import { forwardSuite } from "./forward.ts";
import { gradientSuite } from "./gradients.ts";
import { quantForwardSuite } from "./quant.ts";
import { fusedNnSuite } from "./fused-nn.ts";
import type { SuiteOptions } from "./util.ts";

export { gradcheck, coveredOps, type GradcheckOptions, type GradcheckResult } from "./gradcheck.ts";
export { expectClose, rnd, spread, withoutFused, type SuiteOptions, type TestFn } from "./util.ts";
export * as oracle from "./oracle.ts";
export { quant4bitCase, quant4bitWeight, dequantizeCase, matmulCaseRef, type Quant4bitCase } from "./quant.ts";

export function conformanceSuite(opts: SuiteOptions): void {
  forwardSuite(opts);
  quantForwardSuite(opts);
  fusedNnSuite(opts);
  gradientSuite(opts);
}
export { testParam, testAdam } from "./train.ts";
