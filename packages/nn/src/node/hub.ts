/**
 * Download a model from the Hugging Face Hub into a local cache, so `loadHfModel` can read it.
 *
 * Cache layout (simpler than huggingface_hub's: no blobs/ and no symlinks):
 *
 *   <cacheDir>/models--<org>--<name>/snapshots/<revision>/<file>              complete files
 *   <cacheDir>/models--<org>--<name>/snapshots/<revision>/<file>.incomplete   partial downloads
 *
 * A file in the snapshot is always complete: it is downloaded to `<file>.incomplete` (resumed with
 * `Range: bytes=<size>-` when one is left from an interrupted run), checked against the sha256
 * the Hub gives for LFS files (`lfs.sha256` in the API listing, else an `X-Linked-Etag` / `ETag`
 * holding 64 hex digits), and only then renamed into place. Files already in the snapshot are not
 * downloaded again (a moving revision like "main" is therefore not re-checked for new commits:
 * delete the snapshot to refresh it). The environment is never read here: the caller passes
 * `cacheDir`, `endpoint` and `token`. Node-only (the `./node` edge).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import { dirname, join } from "node:path";

export interface HubProgress {
  /** File name inside the repository. */
  file: string;
  /** Bytes of this file on disk so far (a resumed download starts at the partial size). */
  loaded: number;
  /** The file's size when known (Content-Length / Content-Range / the listing), else null. */
  total: number | null;
  /** Index of this file among the files to fetch, and their count. */
  index: number;
  count: number;
}

export interface DownloadHfModelOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** Root of the cache (the CLI uses $LOWRANK_CACHE_DIR, else ~/.cache/lowrank/hub). */
  cacheDir: string;
  /** Hub base URL (default https://huggingface.co; the CLI honours $HF_ENDPOINT). */
  endpoint?: string;
  /** Access token for gated or private repositories (sent as `Authorization: Bearer`). */
  token?: string;
  /** Exactly these files instead of the default selection. */
  files?: readonly string[];
  /** fetch implementation (default globalThis.fetch). */
  fetch?: typeof globalThis.fetch;
  /** Called as bytes arrive, and once per file when it is complete. */
  onProgress?: (p: HubProgress) => void;
  /** Called once per file that was already in the cache (not downloaded). */
  onCached?: (file: string) => void;
}

/** A failed Hub request; the message names the URL. `status` is the HTTP status, or 0 for a network error. */
export class HubError extends Error {
  constructor(message: string, readonly url: string, readonly status: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "HubError";
  }
}

/** A downloaded file whose sha256 is not the one the Hub announced. */
export class ChecksumError extends Error {
  constructor(readonly file: string, readonly expected: string, readonly actual: string) {
    super(`${file}: sha256 mismatch: expected ${expected}, got ${actual} (the partial download was deleted; run again)`);
    this.name = "ChecksumError";
  }
}

/** Files `downloadHfModel` keeps by default (top-level only). */
export function isModelFile(name: string): boolean {
  if (name.includes("/")) return false;
  return name.endsWith(".safetensors") || KEEP.has(name);
}
const KEEP = new Set([
  "config.json",
  "model.safetensors.index.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "adapter_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "chat_template.json",
]);

/** "org/name" or "name" with Hub-legal characters. */
export function isHfRepoId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/.test(s) && !s.includes("..") && !s.endsWith(".");
}

/** The snapshot directory a download of `repoId` at `revision` lands in. */
export async function hubSnapshotDir(cacheDir: string, repoId: string, revision = "main"): Promise<string> {
  return join(cacheDir, `models--${repoId.replace(/\//g, "--")}`, "snapshots", revision.replace(/\//g, "--"));
}

interface Sibling {
  rfilename: string;
  size?: number;
  lfs?: { sha256?: string; size?: number };
}

/** Download (or find in the cache) a model repository; returns the local snapshot directory. */
export async function downloadHfModel(repoId: string, opts: DownloadHfModelOptions): Promise<string> {
  if (!isHfRepoId(repoId)) throw new Error(`downloadHfModel: "${repoId}" is not a Hub repository id (org/name)`);
  if (!opts?.cacheDir) throw new Error("downloadHfModel: cacheDir is required");
  const revision = opts.revision ?? "main";
  const endpoint = (opts.endpoint ?? "https://huggingface.co").replace(/\/+$/, "");
  const doFetch = opts.fetch ?? globalThis.fetch;
  if (typeof doFetch !== "function") throw new Error("downloadHfModel: no fetch available");
  const headers: Record<string, string> = {};
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;

  const snapshot = await hubSnapshotDir(opts.cacheDir, repoId, revision);

  // The file list.
  const apiUrl = `${endpoint}/api/models/${repoId}/revision/${encodeURIComponent(revision)}?blobs=true`;
  const res = await request(doFetch, apiUrl, headers, `repository ${repoId}`, revision);
  let info: { siblings?: Sibling[] };
  try {
    info = (await res.json()) as { siblings?: Sibling[] };
  } catch (e) {
    throw new HubError(`${apiUrl}: the Hub API answer is not JSON (${(e as Error).message})`, apiUrl, res.status, { cause: e });
  }
  if (!Array.isArray(info.siblings)) throw new HubError(`${apiUrl}: the Hub API answer has no siblings list`, apiUrl, res.status);
  const byName = new Map(info.siblings.filter((s) => typeof s?.rfilename === "string").map((s) => [s.rfilename, s]));
  let wanted: string[];
  if (opts.files) {
    const missing = opts.files.filter((f) => !byName.has(f));
    if (missing.length) throw new HubError(`${apiUrl}: ${repoId}@${revision} has no ${missing.join(", ")}`, apiUrl, 404);
    wanted = [...opts.files];
  } else {
    wanted = [...byName.keys()].filter(isModelFile);
    if (!wanted.includes("config.json")) throw new HubError(`${apiUrl}: ${repoId}@${revision} has no config.json (not a transformers model?)`, apiUrl, 404);
  }
  for (const f of wanted) {
    if (f.startsWith("/") || f.split("/").some((p) => p === ".." || p === "" || p === ".") || f.includes("\\")) {
      throw new HubError(`${apiUrl}: refusing unsafe file name ${JSON.stringify(f)}`, apiUrl, res.status);
    }
  }

  for (let i = 0; i < wanted.length; i++) {
    const file = wanted[i];
    const dest = join(snapshot, file);
    if (await isFile(fs, dest)) {
      opts.onCached?.(file);
      continue;
    }
    await fs.mkdir(dirname(dest), { recursive: true });
    const sib = byName.get(file);
    const url = `${endpoint}/${repoId}/resolve/${encodeURIComponent(revision)}/${file.split("/").map(encodeURIComponent).join("/")}`;
    await downloadFile(
      doFetch,
      url,
      headers,
      file,
      dest,
      sib,
      (loaded, total) => opts.onProgress?.({ file, loaded, total, index: i, count: wanted.length }),
      repoId,
      revision,
    );
  }
  return snapshot;
}

type Fs = typeof fs;

async function isFile(fs: Fs, p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isFile();
  } catch {
    return false;
  }
}

/** fetch, a network failure as a HubError naming the URL (and the cause the runtime gives). */
async function fetchHub(doFetch: typeof globalThis.fetch, url: string, headers: Record<string, string>): Promise<Response> {
  try {
    return await doFetch(url, { headers, redirect: "follow" });
  } catch (e) {
    const cause = (e as { cause?: { message?: string } }).cause?.message;
    throw new HubError(`${url}: network error: ${(e as Error).message}${cause ? ` (${cause})` : ""}`, url, 0, { cause: e });
  }
}

async function request(doFetch: typeof globalThis.fetch, url: string, headers: Record<string, string>, what: string, revision: string): Promise<Response> {
  const res = await fetchHub(doFetch, url, headers);
  if (res.ok) return res;
  await res.body?.cancel().catch(() => {});
  throw statusError(url, res.status, res.statusText, what, revision);
}

function statusError(url: string, status: number, statusText: string, what: string, revision: string): HubError {
  const head = `${url}: HTTP ${status}${statusText ? ` ${statusText}` : ""}`;
  if (status === 401 || status === 403) {
    return new HubError(`${head}: ${what} is gated or private (or does not exist); pass a token (HF_TOKEN for the CLI) with access to it`, url, status);
  }
  if (status === 404) return new HubError(`${head}: ${what} not found (revision ${revision})`, url, status);
  return new HubError(head, url, status);
}

const SHA256 = /^[0-9a-f]{64}$/;

function expectedSha(sib: Sibling | undefined, res: Response): string | null {
  const fromListing = sib?.lfs?.sha256?.toLowerCase();
  if (fromListing && SHA256.test(fromListing)) return fromListing;
  for (const h of ["x-linked-etag", "etag"]) {
    const v = res.headers.get(h)?.replace(/^W\//, "").replace(/"/g, "").trim().toLowerCase();
    if (v && SHA256.test(v)) return v;
  }
  return null;
}

async function downloadFile(
  doFetch: typeof globalThis.fetch,
  url: string,
  baseHeaders: Record<string, string>,
  file: string,
  dest: string,
  sib: Sibling | undefined,
  progress: (loaded: number, total: number | null) => void,
  repoId: string,
  revision: string,
): Promise<void> {
  const partial = `${dest}.incomplete`;
  let have = 0;
  try {
    have = (await fs.stat(partial)).size;
  } catch {
    have = 0;
  }
  const headers = { ...baseHeaders };
  if (have > 0) headers.Range = `bytes=${have}-`;
  const res = await fetchHub(doFetch, url, headers);
  if (res.status === 416 && have > 0) {
    // The partial file is not a prefix the server can continue (e.g. it changed): start over.
    await res.body?.cancel().catch(() => {});
    await fs.rm(partial, { force: true });
    return downloadFile(doFetch, url, baseHeaders, file, dest, sib, progress, repoId, revision);
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    throw statusError(url, res.status, res.statusText, `${repoId}/${file}`, revision);
  }
  let append = false;
  if (res.status === 206) {
    const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
    if (!m || Number(m[1]) !== have) {
      await res.body?.cancel().catch(() => {});
      await fs.rm(partial, { force: true });
      return downloadFile(doFetch, url, baseHeaders, file, dest, sib, progress, repoId, revision);
    }
    append = true;
  } else have = 0; // 200: the whole file, written from the start
  const len = Number(res.headers.get("content-length") ?? NaN);
  const total = Number.isFinite(len) ? have + len : sib?.lfs?.size ?? sib?.size ?? null;
  const expected = expectedSha(sib, res);

  const handle = await fs.open(partial, append ? "a" : "w");
  let loaded = have;
  try {
    progress(loaded, total);
    if (res.body) {
      const reader = res.body.getReader();
      for (;;) {
        let chunk: { done: boolean; value?: Uint8Array };
        try {
          chunk = await reader.read();
        } catch (e) {
          const cause = (e as { cause?: { message?: string } }).cause?.message;
          throw new HubError(
            `${url}: download interrupted after ${loaded} bytes (${(e as Error).message}${cause ? `: ${cause}` : ""}); run again to resume`,
            url,
            0,
            { cause: e },
          );
        }
        if (chunk.done || !chunk.value) break;
        await handle.write(chunk.value);
        loaded += chunk.value.byteLength;
        progress(loaded, total);
      }
    }
  } finally {
    await handle.close();
  }
  if (total !== null && Number.isFinite(len) && loaded !== total) {
    throw new HubError(`${url}: download ended after ${loaded} of ${total} bytes; run again to resume`, url, 0);
  }
  if (expected) {
    const actual = await sha256File(partial);
    if (actual !== expected) {
      await fs.rm(partial, { force: true });
      throw new ChecksumError(file, expected, actual);
    }
  }
  await fs.rename(partial, dest);
  progress(loaded, loaded);
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Uint8Array);
  return hash.digest("hex");
}
