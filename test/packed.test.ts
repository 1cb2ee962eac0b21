/**
 * The packages as people install them. `turbo run build typecheck` twice (the second run must be
 * fully cached), `npm pack` every publishable package, install the tarballs into a project outside
 * the repository, then with plain `node` (no tsx, no loader), Bun and Deno: import every export of
 * every package and run each package's README example, the first code block of the README that
 * was packed. backend-webgpu's example is a web page: Vite bundles it from the tarballs and
 * headless Chromium runs its matmul. A missing runtime or browser skips its part, saying why.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { BIN, type Packed, type Publishable, ROOT, cleanEnv, install, pack, publishable } from "./support/pack.ts";
import { buildPage, chromiumPath, runPage } from "./support/page.ts";
import { readmeExample } from "./support/readme.ts";

const RUNTIMES = {
  node: { cmd: process.execPath, args: (file: string, _flags: string[]) => [file] },
  bun: { cmd: join(BIN, "bun"), args: (file: string, _flags: string[]) => [file] },
  deno: { cmd: join(BIN, "deno"), args: (file: string, flags: string[]) => ["run", ...flags, file] },
} as const;
type Runtime = keyof typeof RUNTIMES;
const missing = (r: Runtime) => (existsSync(RUNTIMES[r].cmd) ? false : `${RUNTIMES[r].cmd} not found (bun and deno are devDependencies: run npm ci)`);

/** Output with whitespace removed and quotes unified: each runtime formats objects its own way. */
const flat = (s: string) => s.replace(/\s+/g, "").replaceAll("'", '"');

/**
 * What each README example must print, and the Deno permissions it needs (none unless listed).
 * Numbers that BLAS and the WASM kernel could round differently are checked loosely.
 */
const EXAMPLES: Record<string, { deno?: string[]; browser?: true; check: (out: string, dir: string) => void }> = {
  "@lowrank/tensor": { check: (o) => assert.match(flat(o), /loss0\.6092/) },
  "@lowrank/backend-cpu": {
    check: (o) => {
      assert.match(o, /wasm-simd/, "the WASM matmul kernel did not load from the package");
      assert.ok(flat(o).includes("[[4,5],[10,11]]"), "matmul result");
    },
  },
  "@lowrank/backend-webgpu": { browser: true, check: (o) => assert.ok(flat(o).endsWith("[[4,5],[10,11]]"), `page body: ${JSON.stringify(o)}`) },
  "@lowrank/nf4": { check: (o) => assert.match(flat(o), /bitsperweight4\.129.*maxerror0\.00301/) },
  "@lowrank/safetensors": {
    deno: ["--allow-read=.", "--allow-write=."],
    check: (o, dir) => {
      assert.ok(flat(o).includes('["embed.weight","step"]') && flat(o).includes("Float32Array(6)[1,2,3,4,5,6]"), o);
      assert.equal(readFileSync(join(dir, "tiny.safetensors")).length, 196);
    },
  },
  "@lowrank/nn": { check: (o) => assert.match(flat(o), /21tensors:.*generated\[(\d+,){7}\d+\]/) },
  "@lowrank/lora": {
    deno: ["--allow-read=.", "--allow-write=."],
    check: (o, dir) => {
      assert.match(o, /trainable params: 896 \|\| all params: 20,512/);
      const config = JSON.parse(readFileSync(join(dir, "tiny-adapter", "adapter_config.json"), "utf8"));
      assert.deepEqual([config.peft_type, config.r, config.lora_alpha, [...config.target_modules].sort()], ["LORA", 4, 8, ["q_proj", "v_proj"]]);
      const weights = readFileSync(join(dir, "tiny-adapter", "adapter_model.safetensors"));
      const header = JSON.parse(weights.subarray(8, 8 + Number(weights.readBigUInt64LE(0))).toString("utf8"));
      assert.ok("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in header, Object.keys(header).join(", "));
    },
  },
  "@lowrank/trainer": {
    check: (o) => {
      assert.match(o, /step 0 loss 5\.461/);
      const last = Number(/step 29 loss ([\d.]+)/.exec(o)?.[1]);
      assert.ok(last < 0.5, `loss after 30 steps: ${last}`);
    },
  },
};

const state: { base: string; consumer: string; pkgs: Publishable[]; packs: Packed[] } = { base: "", consumer: "", pkgs: [], packs: [] };
after(() => {
  if (state.base) rmSync(state.base, { recursive: true, force: true });
});

function run(cmd: string, args: string[], cwd: string, timeoutMs = 120_000) {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", env: cleanEnv({ TURBO_TELEMETRY_DISABLED: "1" }), timeout: timeoutMs });
  return { ...r, out: `${r.stdout ?? ""}${r.stderr ?? ""}`, s: ((performance.now() - t0) / 1000).toFixed(1) };
}

test("turbo run build typecheck: a second run is fully cached", (t) => {
  const turbo = join(BIN, "turbo");
  const args = ["run", "build", "typecheck", "--output-logs=errors-only"];
  const first = run(turbo, args, ROOT, 600_000);
  assert.equal(first.status, 0, `turbo ${args.join(" ")} failed:\n${first.out}`);
  const second = run(turbo, args, ROOT);
  assert.equal(second.status, 0, second.out);
  const cached = /Cached:\s+(\d+) cached, (\d+) total/.exec(second.out);
  assert.ok(cached && cached[1] === cached[2], `second run not fully cached:\n${second.out}`);
  assert.match(second.out, />>> FULL TURBO/);
  t.diagnostic(`turbo: first run ${first.s} s (${/Cached:[^\n]*/.exec(first.out)?.[0]}), second ${second.s} s (${cached[0]}, FULL TURBO)`);
});

test("npm pack: each publishable package ships dist/ and src/, every export target, no tests", (t) => {
  state.pkgs = publishable();
  assert.ok(state.pkgs.length >= 8, `publishable packages: ${state.pkgs.map((p) => p.name).join(", ")}`);
  for (const p of state.pkgs) assert.ok(existsSync(join(p.dir, "dist", "index.js")), `${p.dir}/dist/index.js missing: run npm run build`);
  state.base = mkdtempSync(join(tmpdir(), "lowrank-packed-"));
  assert.ok(!state.base.startsWith(ROOT), "the scratch project must be outside the repository");
  mkdirSync(join(state.base, "packs"));
  state.packs = pack(state.pkgs, join(state.base, "packs"));
  for (const p of state.packs) {
    const strays = p.files.filter((f) => !/^(dist|src)\//.test(f) && !["package.json", "README.md", "CHANGELOG.md", "LICENSE"].includes(f));
    assert.deepEqual(strays, [], `${p.name}: files outside dist/ and src/ in the tarball`);
    assert.ok(!p.files.some((f) => /\.test\.ts$|tsbuildinfo$/.test(f)), `${p.name}: tests or build info in the tarball`);
    const manifest = JSON.parse(readFileSync(join(state.pkgs.find((q) => q.name === p.name)!.dir, "package.json"), "utf8"));
    for (const [sub, target] of Object.entries(manifest.exports as Record<string, unknown>)) {
      if (target === null || typeof target === "string") continue;
      for (const [cond, file] of Object.entries(target as Record<string, string>)) {
        assert.ok(p.files.includes(file.slice(2)), `${p.name}: exports["${sub}"].${cond} = ${file} is not in the tarball`);
      }
    }
    t.diagnostic(`${p.name}: ${(p.size / 1024).toFixed(0)} KiB packed, ${(p.unpackedSize / 1024).toFixed(0)} KiB unpacked, ${p.files.length} files`);
  }
});

test("the tarballs install into a project outside the repository, without workspace links", (t) => {
  assert.ok(state.packs.length, "nothing packed");
  state.consumer = join(state.base, "consumer");
  mkdirSync(state.consumer);
  const how = install(state.consumer, state.packs);
  for (const p of state.packs) {
    const dir = join(state.consumer, "node_modules", p.name);
    assert.ok(lstatSync(dir).isDirectory() && !lstatSync(dir).isSymbolicLink(), `${dir} is not an installed copy`);
  }
  t.diagnostic(`${how.note}, ${(how.ms / 1000).toFixed(1)} s`);
});

for (const runtime of Object.keys(RUNTIMES) as Runtime[]) {
  test(`${runtime}: every export of every package imports`, { skip: missing(runtime) }, () => {
    assert.ok(state.consumer, "not installed");
    const specs = state.pkgs.flatMap((p) => p.specifiers);
    const file = join(state.consumer, `imports-${runtime}.mjs`);
    writeFileSync(
      file,
      `for (const s of ${JSON.stringify(specs)}) {\n  const m = await import(s);\n  console.log(s, Object.keys(m).length, import.meta.resolve(s));\n}\n`,
    );
    const r = run(RUNTIMES[runtime].cmd, RUNTIMES[runtime].args(file, []), state.consumer);
    assert.equal(r.status, 0, `${runtime} ${file}:\n${r.out}`);
    for (const s of specs) {
      const line = r.stdout.split("\n").find((l) => l.startsWith(`${s} `));
      assert.ok(line && Number(line.split(" ")[1]) > 0, `${s}: no exports under ${runtime}:\n${r.out}`);
      // Bun takes the "bun" condition (the .ts sources); Node and Deno the built dist/.
      assert.match(line, runtime === "bun" ? /\/src\/[\w/-]+\.ts$/ : /\/dist\/[\w/-]+\.js$/, line);
      assert.ok(line.includes("/node_modules/@lowrank/"), `${s} resolved outside node_modules: ${line}`);
    }
  });

  test(`${runtime}: each package's README example runs as packed`, { skip: missing(runtime) }, async (t) => {
    assert.ok(state.consumer, "not installed");
    for (const p of state.pkgs.filter((q) => !EXAMPLES[q.name]?.browser)) {
      // browser examples: the Vite + Chromium test
      const spec = EXAMPLES[p.name];
      await t.test(p.name, () => {
        assert.ok(spec, `no expectation listed for ${p.name}'s README example in test/packed.test.ts`);
        const readme = join(state.consumer, "node_modules", p.name, "README.md");
        const { code } = readmeExample(readFileSync(readme, "utf8"), readme);
        const dir = join(state.consumer, `run-${runtime}`, p.name.split("/")[1]);
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, "example.mjs"), code);
        const r = run(RUNTIMES[runtime].cmd, RUNTIMES[runtime].args("example.mjs", spec.deno ?? []), dir);
        assert.equal(r.status, 0, `${runtime} ${p.name} README example exited ${r.status}${r.signal ? ` (${r.signal})` : ""}:\n${r.out}`);
        spec.check(r.out, dir);
      });
    }
  });
}

test("TypeScript consumers get the shipped .d.ts (NodeNext, and Bundler with skipLibCheck off)", () => {
  assert.ok(state.consumer, "not installed");
  const specs = state.pkgs.flatMap((p) => p.specifiers);
  const imports = specs.map((s, i) => `import * as m${i} from "${s}";`).join("\n");
  const ti = specs.indexOf("@lowrank/tensor");
  // One use of a type, so an export that resolved to `any` would not pass unnoticed.
  writeFileSync(
    join(state.consumer, "check.ts"),
    `${imports}\nconst t: m${ti}.Tensor = m${ti}.tensor([1]);\nexport { t, ${specs.map((_, i) => `m${i}`).join(", ")} };\n`,
  );
  const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
  const base = { target: "ES2022", strict: true, noEmit: true, types: [] };
  const configs = {
    // @huggingface/tokenizers' own .d.ts has extensionless imports, which NodeNext rejects.
    "tsconfig.nodenext.json": { ...base, module: "NodeNext", moduleResolution: "NodeNext", skipLibCheck: true },
    "tsconfig.bundler.json": { ...base, module: "ESNext", moduleResolution: "Bundler", skipLibCheck: false },
  };
  for (const [name, compilerOptions] of Object.entries(configs)) {
    writeFileSync(join(state.consumer, name), JSON.stringify({ compilerOptions, files: ["check.ts"] }));
    const r = run(process.execPath, [tsc, "-p", name], state.consumer);
    assert.equal(r.status, 0, `tsc -p ${name} in the consumer project:\n${r.out}`);
  }
});

test(
  "Vite bundles backend-webgpu's README example from the tarballs and it runs one matmul in headless Chromium",
  { skip: existsSync(chromiumPath) ? false : `no Chromium at ${chromiumPath} (scripts/install-system.sh installs it, or set CHROMIUM_PATH)` },
  async (t) => {
    assert.ok(state.consumer, "not installed");
    const name = "@lowrank/backend-webgpu";
    const readme = join(state.consumer, "node_modules", name, "README.md");
    const { code } = readmeExample(readFileSync(readme, "utf8"), readme);
    const page = join(state.consumer, "page");
    mkdirSync(page);
    const t0 = performance.now();
    await buildPage(page, join(state.consumer, "page-dist"), code);
    const built = ((performance.now() - t0) / 1000).toFixed(1);
    let body: string;
    try {
      body = await runPage(join(state.consumer, "page-dist"));
    } catch (err) {
      // No adapter is the machine's lack (the page ran and asked); anything else is a failure.
      const msg = err instanceof Error ? err.message : String(err);
      if (/WebGpuUnavailableError|no adapter|offered no adapter/.test(msg)) return void t.skip(`Chromium has no WebGPU adapter here: ${msg.split("\n")[0]}`);
      throw err;
    }
    EXAMPLES[name].check(body, page);
    t.diagnostic(`vite build ${built} s; page: ${body}`);
  },
);
