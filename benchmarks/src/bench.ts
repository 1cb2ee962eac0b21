/**
 * Direct entry for the suites without the lowrank CLI:
 *   node --import tsx benchmarks/src/bench.ts <ranks|memory|peer|kernels|cpu|models|all|report> [--quick]
 *   node --import tsx benchmarks/src/bench.ts plan --params 70e9 --method qlora --rank 16
 */
import { benchCommand, planCommand } from "./cli.ts";

const argv = process.argv.slice(2);
process.exitCode = argv[0] === "plan"
  ? planCommand(argv.slice(1))
  : await benchCommand(argv, process.env, `node --import tsx benchmarks/src/bench.ts ${argv.join(" ")}`);
