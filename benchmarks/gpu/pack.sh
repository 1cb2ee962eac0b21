#!/usr/bin/env bash
# Builds the runtime that benchmarks/gpu/run.sh takes to a bare GPU machine (no node, no network):
#   bash benchmarks/gpu/pack.sh [DIR]          (default: .gpu-bundle/ at the repository root, git-ignored)
# Contents: node.xz (this machine's node, must be x86-64 and self-contained), app/lowrank.mjs (the CLI
# and every workspace package as one esbuild file), webgpu/ + dawn.node.xz (the `webgpu` package's
# Linux x86-64 binary), debs/ (Debian bookworm's Vulkan loader and glvnd, the device recipe's list).
# The device tool carries at most 64 MiB (working tree included); this stops above 56 MiB.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B=${1:-$REPO/.gpu-bundle}
MAX=$((56 * 1024 * 1024))
[ "$(uname -m)" = x86_64 ] || { echo "pack.sh: this machine is $(uname -m); the GPU machine is x86-64, so its node and dawn.node must be built for x86-64" >&2; exit 1; }
node=$(readlink -f "$(command -v node)")
if ldd "$node" | grep libnode >/dev/null; then echo "pack.sh: $node links libnode.so (a distribution build); use a self-contained node from nodejs.org" >&2; exit 1; fi
dawn=$REPO/node_modules/webgpu/dist/linux-x64/dawn.node
[ -f "$dawn" ] || { echo "pack.sh: $dawn missing: run npm install at the repository root" >&2; exit 1; }
tmp=$B.tmp
rm -rf "$tmp" && mkdir -p "$tmp/app" "$tmp/webgpu" "$tmp/debs"

# One ESM file; `webgpu` stays a package (it finds dawn.node beside itself), koffi (optional BLAS) stays out.
"$REPO/node_modules/.bin/esbuild" "$REPO/apps/cli/src/main.ts" --bundle --platform=node --format=esm --target=node20 \
  --external:webgpu --external:koffi --external:'bun:*' --external:'npm:*' --external:'jsr:*' --log-level=warning \
  --banner:js="import{createRequire as __cr}from'node:module';const require=__cr(import.meta.url);" --outfile="$tmp/app/lowrank.mjs"
# The CLI reads its version from ../package.json relative to itself.
node -e 'const p=require(process.argv[1]);console.log(JSON.stringify({name:"lowrank-gpu-bundle",version:p.version,type:"module"}))' "$REPO/apps/cli/package.json" >"$tmp/package.json"
cp "$REPO/node_modules/webgpu/index.js" "$REPO/node_modules/webgpu/package.json" "$tmp/webgpu/"
echo "pack.sh: compressing node and dawn.node (about 90 s on 2 cores)" >&2
xz -T0 -6 -c "$node" >"$tmp/node.xz" &
xz -T0 -6 -c "$dawn" >"$tmp/dawn.node.xz"
wait

# The device recipe's loader packages (README of the device tool), for a machine without libvulkan.
lists=$(mktemp -d)
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists" -oDir::State::Lists::partial="$lists/partial")
mkdir -p "$lists/partial"
if apt-get "${o[@]}" update >/dev/null 2>&1 && (cd "$tmp/debs" && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null 2>&1); then :; else
  echo "pack.sh: warning: apt-get could not download the Vulkan loader debs; run.sh then needs a machine with libvulkan.so.1" >&2
fi
rm -rf "$lists"

size=$(du -sb "$tmp" | cut -f1)
{
  echo "node $("$node" --version), webgpu $(node -p 'require(process.argv[1]).version' "$REPO/node_modules/webgpu/package.json"), commit $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD || echo +dirty), $size bytes"
  (cd "$tmp" && find . -type f -printf '%s\t%p\n' | sort -k2)
} >"$tmp/MANIFEST"
[ "$size" -le $MAX ] || { echo "pack.sh: $tmp is $size bytes, over the $MAX this leaves for the working tree under the device tool's 64 MiB" >&2; exit 1; }
rm -rf "$B" && mv "$tmp" "$B"
echo "pack.sh: wrote $B ($((size / 1024 / 1024)) MiB): $(head -1 "$B/MANIFEST")" >&2
