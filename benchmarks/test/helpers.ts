/** Shared by the benchmark tests: the data directory (tests that need stories260K skip without it). */
import { resolveDataDir } from "@lowrank/nn/node";

export const dataDir = await resolveDataDir({ env: process.env }).catch(() => null);
export const noData = dataDir ? false : "no data directory (set LOWRANK_DATA_DIR or put shared/data beside the repository)";
