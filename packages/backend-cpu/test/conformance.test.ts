// The tensor conformance suite on both matmul paths: the system BLAS (auto; the WASM kernel where
// none is found, which blas.test.ts flags where one is installed) and the WASM kernel (blas: "off").
import { test } from "node:test";
import { createCpuBackend } from "../src/index.ts";
import { conformanceSuite } from "@lowrank/tensor/testing";

const backend = createCpuBackend({ threads: 0 });
conformanceSuite({ backend, test: (name, fn) => test(`${backend.blas.active ? "blas" : "no blas"}: ${name}`, fn) });

const wasm = createCpuBackend({ threads: 0, blas: "off" });
conformanceSuite({ backend: wasm, test: (name, fn) => test(`wasm: ${name}`, fn) });
