import { test } from "node:test";
import { createCpuBackend } from "../src/index.ts";
import { conformanceSuite } from "@lowrank/tensor/testing";

const backend = createCpuBackend({ threads: 0 });
conformanceSuite({ backend, test });
