/**
 * Direct entry for the suites without the lowrank CLI (`lowrank plan` lives in apps/cli):
 *   node --import tsx benchmarks/src/bench.ts <ranks|memory|peer|kernels|cpu|models|all|report> [--quick]
 */
import { benchCommand } from "./cli.ts";

const argv = process.argv.slice(2);
process.exitCode = await benchCommand(argv, process.env, `node --import tsx benchmarks/src/bench.ts ${argv.join(" ")}`);
