/**
 * Build-time side of the page (runs in Node inside Vite, never in the browser): finds the data
 * directory and copies stories260K and a couple of sample texts into the page. `vite build`
 * emits them as static files under data/; the dev server serves them from the data directory.
 * The weights are never committed: without a data directory the page still builds and offers
 * only the folder picker.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Plugin } from "vite";

export interface DataDir {
  dir: string | null;
  /** How it was found ("--data-dir", "LOWRANK_DATA_DIR", "../shared/data") or why there is none. */
  from: string;
}

/** --data-dir DIR (or --data-dir=DIR) in argv, else $LOWRANK_DATA_DIR, else <repo>/../shared/data when it exists. */
export function resolveWebDataDir(opts: { argv: readonly string[]; env: Readonly<Record<string, string | undefined>>; repoRoot: string }): DataDir {
  const i = opts.argv.indexOf("--data-dir");
  const flag = i >= 0 ? opts.argv[i + 1] : opts.argv.find((a) => a.startsWith("--data-dir="))?.slice("--data-dir=".length);
  const named = flag ? { dir: flag, from: "--data-dir" } : opts.env.LOWRANK_DATA_DIR ? { dir: opts.env.LOWRANK_DATA_DIR, from: "LOWRANK_DATA_DIR" } : null;
  if (named) {
    if (!existsSync(named.dir)) throw new Error(`${named.dir}: data directory (from ${named.from}) does not exist`);
    return { dir: resolve(named.dir), from: named.from };
  }
  const beside = resolve(opts.repoRoot, "..", "shared", "data");
  return existsSync(beside) ? { dir: beside, from: "../shared/data" } : { dir: null, from: `no --data-dir, no LOWRANK_DATA_DIR, no ${beside}` };
}

interface Asset {
  /** Path under the page's data/ folder. */
  path: string;
  /** File in the data directory. */
  source: string;
  /** Keep only this many bytes, cut at a line end (sample texts). */
  maxBytes?: number;
}

export interface DataManifest {
  models: { name: string; path: string }[];
  samples: { name: string; label: string; path: string }[];
  /** Why nothing was bundled, when nothing was. */
  note: string | null;
}

const MODELS = [{ name: "stories260K", dir: "models/stories260K-hf", files: ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] }];
const SAMPLES = [
  { name: "tinyshakespeare", label: "Tiny Shakespeare (first 32 KB)", file: "datasets/tinyshakespeare/input.txt", maxBytes: 32 * 1024 },
  { name: "tinystories", label: "TinyStories sample", file: "datasets/tinystories/tinystories_sample.txt" },
];

/** What gets copied, and the manifest the page reads (data/index.json). */
export function planDataAssets(data: DataDir): { assets: Asset[]; manifest: DataManifest } {
  const assets: Asset[] = [];
  const manifest: DataManifest = { models: [], samples: [], note: null };
  if (!data.dir) {
    manifest.note = `no data directory at build time (${data.from}): pick a model folder instead`;
    return { assets, manifest };
  }
  for (const m of MODELS) {
    const required = m.files.filter((f) => f !== "tokenizer_config.json");
    if (!required.every((f) => existsSync(join(data.dir!, m.dir, f)))) continue;
    const path = `data/models/${m.name}/`;
    for (const f of m.files) if (existsSync(join(data.dir, m.dir, f))) assets.push({ path: `${path}${f}`, source: join(data.dir, m.dir, f) });
    manifest.models.push({ name: m.name, path });
  }
  for (const s of SAMPLES) {
    if (!existsSync(join(data.dir, s.file))) continue;
    const path = `data/samples/${s.name}.txt`;
    assets.push({ path, source: join(data.dir, s.file), maxBytes: s.maxBytes });
    manifest.samples.push({ name: s.name, label: s.label, path });
  }
  if (!manifest.models.length) manifest.note = `${data.dir} has no ${MODELS.map((m) => m.dir).join(", ")}: pick a model folder instead`;
  return { assets, manifest };
}

function readAsset(a: Asset): Uint8Array {
  const bytes = new Uint8Array(readFileSync(a.source));
  if (!a.maxBytes || bytes.length <= a.maxBytes) return bytes;
  const cut = bytes.lastIndexOf(10, a.maxBytes); // whole lines only
  return bytes.subarray(0, cut > 0 ? cut + 1 : a.maxBytes);
}

const MIME: Record<string, string> = { json: "application/json", txt: "text/plain; charset=utf-8", safetensors: "application/octet-stream" };

/** The Vite plugin: emits the assets into the build, serves them in dev. */
export function dataAssets(data: DataDir, log: (m: string) => void = (m) => console.log(m)): Plugin {
  const { assets, manifest } = planDataAssets(data);
  const manifestBytes = new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`);
  const byPath = new Map(assets.map((a) => [a.path, a]));
  let announced = false;
  const announce = () => {
    if (announced) return;
    announced = true;
    log(
      manifest.note
        ? `lowrank web: ${manifest.note}`
        : `lowrank web: data from ${data.dir} (${data.from}): ${[...manifest.models, ...manifest.samples].map((x) => x.name).join(", ")}`,
    );
  };
  return {
    name: "lowrank-data-assets",
    buildStart: announce,
    generateBundle() {
      this.emitFile({ type: "asset", fileName: "data/index.json", source: manifestBytes });
      for (const a of assets) this.emitFile({ type: "asset", fileName: a.path, source: readAsset(a) });
    },
    configureServer(server) {
      announce();
      server.middlewares.use((req, res, next) => {
        const path = decodeURIComponent((req.url ?? "").split("?")[0]).replace(/^\/+/, "");
        const asset = byPath.get(path);
        if (path !== "data/index.json" && !asset) return next();
        const body = asset ? readAsset(asset) : manifestBytes;
        res.setHeader("Content-Type", MIME[path.slice(path.lastIndexOf(".") + 1)] ?? "application/octet-stream");
        res.setHeader("Content-Length", String(body.byteLength));
        res.end(body);
      });
    },
  };
}
