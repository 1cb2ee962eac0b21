import { SafetensorsError, asIoError } from "./errors.ts";
import { type TensorInfo, compareCodePoints } from "./header.ts";
import { type OpenOptions, SafetensorsFile, type TensorData, type TensorReader, openSafetensors } from "./reader.ts";
import { type LazyTensorInput, type TensorMap, type WriteOptions, planSafetensors, writeAtomic, writeSafetensors } from "./writer.ts";
import { dirname, exists, isAbsolutePath, joinPath, basename, storage } from "./storage.ts";

/** Where a tensor of a sharded checkpoint lives: its shard file name plus its place in that file. */
export interface ShardedTensorInfo extends TensorInfo {
  /** Shard file name, relative to the checkpoint directory. */
  readonly shard: string;
}

export interface ShardedOpenOptions extends OpenOptions {
  /** File name prefix: "model" gives model.safetensors / model.safetensors.index.json (default). */
  prefix?: string;
}

/** A checkpoint spread over several safetensors files, read through one name -> tensor view. */
export class ShardedSafetensors implements TensorReader {
  readonly tensors: Readonly<Record<string, ShardedTensorInfo>>;
  readonly names: readonly string[];
  /** The index's "metadata" object (e.g. total_size), or the single file's __metadata__. */
  readonly metadata: Readonly<Record<string, unknown>>;
  /** Path of the index file; undefined for a single-file checkpoint. */
  readonly index: string | undefined;
  /** Open shards by file name. */
  readonly shards: ReadonlyMap<string, SafetensorsFile>;

  constructor(
    index: string | undefined,
    metadata: Record<string, unknown>,
    shards: Map<string, SafetensorsFile>,
    tensors: Record<string, ShardedTensorInfo>,
    names: string[],
  ) {
    this.index = index;
    this.metadata = Object.freeze(metadata);
    this.shards = shards;
    this.tensors = Object.freeze(tensors);
    this.names = Object.freeze(names);
  }

  has(name: string): boolean {
    return Object.hasOwn(this.tensors, name);
  }

  async read(name: string): Promise<TensorData> {
    if (!this.has(name)) {
      throw new SafetensorsError("tensor_not_found", this.index ?? [...this.shards.keys()][0] ?? "<checkpoint>", name, "no such tensor");
    }
    const shard = this.shards.get(this.tensors[name].shard);
    if (shard === undefined) throw new SafetensorsError("closed", this.index ?? "<checkpoint>", name, "checkpoint is closed");
    return shard.read(name);
  }

  async close(): Promise<void> {
    const files = [...this.shards.values()];
    (this.shards as Map<string, SafetensorsFile>).clear();
    let first: unknown;
    for (const f of files) await f.close().catch((e: unknown) => (first ??= e));
    if (first !== undefined) throw first;
  }
}

const indexName = (prefix: string): string => `${prefix}.safetensors.index.json`;
const singleName = (prefix: string): string => `${prefix}.safetensors`;
const shardName = (prefix: string, i: number, n: number): string => `${prefix}-${String(i).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Opens a checkpoint directory: `<prefix>.safetensors.index.json` with its
 * shards when present, else a single `<prefix>.safetensors`. `path` may also
 * name an index file or a .safetensors file directly. Path-based (Node, Bun, Deno).
 */
export async function openShardedSafetensors(path: string, options: ShardedOpenOptions = {}): Promise<ShardedSafetensors> {
  const join = joinPath;
  const prefix = options.prefix ?? "model";
  const st = await storage().stat(path);
  if (!st) throw new SafetensorsError("not_found", path, undefined, "no such file or directory");
  const isDir = st.isDirectory;
  let indexPath: string | undefined;
  let singlePath: string | undefined;
  if (!isDir) {
    if (path.endsWith(".json")) indexPath = path;
    else singlePath = path;
  } else if (await exists(join(path, indexName(prefix)))) {
    indexPath = join(path, indexName(prefix));
  } else if (await exists(join(path, singleName(prefix)))) {
    singlePath = join(path, singleName(prefix));
  } else {
    throw new SafetensorsError("not_found", path, undefined, `neither ${indexName(prefix)} nor ${singleName(prefix)} exists in this directory`);
  }

  if (singlePath !== undefined) {
    const file = await openSafetensors(singlePath, options);
    const shard = basename(singlePath);
    const tensors: Record<string, ShardedTensorInfo> = Object.create(null);
    for (const name of file.names) tensors[name] = Object.freeze({ ...file.tensors[name], shard });
    return new ShardedSafetensors(undefined, { ...file.metadata }, new Map([[shard, file]]), tensors, [...file.names]);
  }

  const idx = indexPath as string;
  const { metadata, weightMap } = await readIndex(idx);
  const dir = dirname(idx);
  // Group tensors by shard, checking every shard exists before opening any.
  const byShard = new Map<string, string[]>();
  for (const name of Object.keys(weightMap)) {
    const list = byShard.get(weightMap[name]);
    if (list === undefined) byShard.set(weightMap[name], [name]);
    else list.push(name);
  }
  const shardFiles = [...byShard.keys()].sort(compareCodePoints);
  for (const shard of shardFiles) {
    if (!(await exists(join(dir, shard)))) {
      const users = byShard.get(shard) as string[];
      throw new SafetensorsError(
        "missing_shard",
        idx,
        users[0],
        `shard file ${JSON.stringify(shard)} does not exist (needed by ${users.length} tensor${users.length === 1 ? "" : "s"})`,
      );
    }
  }
  const opened = new Map<string, SafetensorsFile>();
  try {
    const tensors: Record<string, ShardedTensorInfo> = Object.create(null);
    const names: string[] = [];
    for (const shard of shardFiles) {
      const file = await openSafetensors(join(dir, shard), options);
      opened.set(shard, file);
      const wanted = new Set(byShard.get(shard));
      for (const name of wanted) {
        if (!file.has(name)) {
          throw new SafetensorsError("invalid_index", idx, name, `weight_map says the tensor is in ${JSON.stringify(shard)} but that file has no such tensor`);
        }
      }
      // Storage order within each shard, shards in name order.
      for (const name of file.names) {
        if (!wanted.has(name)) continue;
        tensors[name] = Object.freeze({ ...file.tensors[name], shard });
        names.push(name);
      }
    }
    return new ShardedSafetensors(idx, metadata, opened, tensors, names);
  } catch (err) {
    for (const f of opened.values()) await f.close().catch(() => {});
    throw err;
  }
}

async function readIndex(idx: string): Promise<{ metadata: Record<string, unknown>; weightMap: Record<string, string> }> {
  const isAbsolute = isAbsolutePath;
  let json: unknown;
  try {
    const bytes = await storage().readFile(idx);
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    if (err instanceof SyntaxError || err instanceof TypeError) {
      throw new SafetensorsError("invalid_index", idx, undefined, `index is not valid UTF-8 JSON (${err.message})`, { cause: err });
    }
    throw asIoError(err, idx, undefined, "cannot read index");
  }
  if (!isPlainObject(json) || !isPlainObject(json["weight_map"])) {
    throw new SafetensorsError("invalid_index", idx, undefined, 'index is not an object with a "weight_map" object');
  }
  const raw = json["weight_map"];
  const weightMap: Record<string, string> = Object.create(null);
  for (const name of Object.keys(raw)) {
    const shard = raw[name];
    // Shard names come from the file, so refuse anything that could escape the checkpoint directory.
    if (typeof shard !== "string" || shard === "" || isAbsolute(shard) || shard.split(/[\\/]/).includes("..")) {
      throw new SafetensorsError("invalid_index", idx, name, `weight_map value ${JSON.stringify(shard)} is not a shard file name`);
    }
    weightMap[name] = shard;
  }
  const meta = json["metadata"];
  if (meta !== undefined && meta !== null && !isPlainObject(meta)) {
    throw new SafetensorsError("invalid_index", idx, undefined, '"metadata" is not an object');
  }
  return { metadata: isPlainObject(meta) ? { ...meta } : {}, weightMap };
}

export interface ShardedWriteOptions extends WriteOptions {
  /** Largest shard, in bytes of tensor data (default 5e9, like transformers' "5GB"). */
  maxShardBytes?: number;
  /** __metadata__ written into every shard (e.g. {format: "pt"}). */
  metadata?: Record<string, string>;
  /** Extra entries for the index's "metadata" object next to total_size. */
  indexMetadata?: Record<string, unknown>;
  /** File name prefix (default "model"). */
  prefix?: string;
  /** Write an index even when everything fits in one shard (default false: one <prefix>.safetensors, like transformers). */
  alwaysIndex?: boolean;
}

/**
 * Writes a checkpoint directory the way transformers does: tensors are packed
 * into shards greedily in the given order (a tensor larger than the limit gets
 * a shard of its own), each shard file is written atomically, and the index
 * is written last, so an index never names a shard that is not complete.
 * Files of an earlier save with the same prefix that the new layout does not
 * use (other shard counts, or the single file vs. the index) are removed
 * afterwards. Returns the file names written.
 */
export async function writeShardedSafetensors(dir: string, tensors: TensorMap<LazyTensorInput>, options: ShardedWriteOptions = {}): Promise<string[]> {
  const fs = storage();
  const join = joinPath;
  const prefix = options.prefix ?? "model";
  const maxShardBytes = options.maxShardBytes ?? 5e9;
  if (!(maxShardBytes > 0)) throw new RangeError("writeShardedSafetensors: maxShardBytes must be positive");
  // Validates every tensor up front, before any file is touched.
  const plan = planSafetensors(tensors, options.metadata, dir);
  const sizes = new Map(plan.tensors.map((t) => [t.name, t.byteLength]));
  const inputs = new Map<string, LazyTensorInput>(tensors instanceof Map ? tensors : Object.entries(tensors));

  const groups: string[][] = [];
  let current: string[] = [];
  let used = 0;
  for (const name of inputs.keys()) {
    const size = sizes.get(name) as number;
    if (current.length > 0 && used + size > maxShardBytes) {
      groups.push(current);
      current = [];
      used = 0;
    }
    current.push(name);
    used += size;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);

  await fs.mkdir(dir).catch((err: unknown) => {
    throw asIoError(err, dir, undefined, "cannot create directory");
  });
  const written: string[] = [];
  const subset = (names: string[]): Map<string, LazyTensorInput> => new Map(names.map((n) => [n, inputs.get(n) as LazyTensorInput]));

  if (groups.length === 1 && options.alwaysIndex !== true) {
    await writeSafetensors(join(dir, singleName(prefix)), subset(groups[0]), options.metadata, options);
    written.push(singleName(prefix));
  } else {
    const weightMap: [string, string][] = [];
    for (let i = 0; i < groups.length; i++) {
      const file = shardName(prefix, i + 1, groups.length);
      await writeSafetensors(join(dir, file), subset(groups[i]), options.metadata, options);
      written.push(file);
      for (const name of groups[i]) weightMap.push([name, file]);
    }
    weightMap.sort((a, b) => compareCodePoints(a[0], b[0]));
    const meta = { ...options.indexMetadata, total_size: plan.size - plan.head.byteLength };
    // Built by hand: JSON.stringify would reorder integer-like tensor names.
    const lines = weightMap.map(([n, f]) => `    ${JSON.stringify(n)}: ${JSON.stringify(f)}`);
    const text = `{\n  "metadata": ${JSON.stringify(meta, null, 2).replace(/\n/g, "\n  ")},\n  "weight_map": {\n${lines.join(",\n")}\n  }\n}\n`;
    const path = join(dir, indexName(prefix));
    await writeAtomic(path, options, (write) => write(new TextEncoder().encode(text)));
    written.push(indexName(prefix));
  }
  await removeStale(dir, prefix, new Set(written));
  return written;
}

/** Removes earlier checkpoint files of this prefix that the new layout does not use. */
async function removeStale(dir: string, prefix: string, keep: Set<string>): Promise<void> {
  const fs = storage();
  const join = joinPath;
  const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const pattern = new RegExp(`^${escaped}-\\d{5}-of-\\d{5}\\.safetensors$`);
  let entries: string[];
  try {
    entries = await fs.readdir(dir);
  } catch {
    return;
  }
  for (const e of entries) {
    const stale = pattern.test(e) || e === singleName(prefix) || e === indexName(prefix);
    if (stale && !keep.has(e)) await fs.rm(join(dir, e)).catch(() => {});
  }
}
