#!/usr/bin/env bash
# The GPU benchmark on a bare Linux x86-64 machine: no project set-up, no network, under 8 minutes.
#   bash benchmarks/gpu/run.sh [--quick] [--out FILE] [--dev] [--bundle DIR]
# Runtime: the bundle that benchmarks/gpu/pack.sh builds (.gpu-bundle/: node, the CLI as one file,
# dawn.node, Debian's Vulkan loader debs), or with --dev (or no bundle) this checkout's node + tsx.
# Vulkan: the system loader if ldconfig knows one, else the bundle's debs (the device recipe:
# dpkg -x into / as root, else a private prefix on LD_LIBRARY_PATH).
# Writes JSON to --out (default: $OUT/gpu-<date>.json when $OUT is set, else benchmarks/results/)
# after every case; run.sh's own steps go to the JSON's "setup".
set -uo pipefail
T0=$(date +%s%3N)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
quick=0 dev=0 out="" bundle="$REPO/.gpu-bundle"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --dev) dev=1 ;;
    --out) out=$2; shift ;;
    --bundle) bundle=$2; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (expected --quick, --out FILE, --dev, --bundle DIR)" >&2; exit 2 ;;
  esac
  shift
done
name="gpu$([ $quick = 1 ] && echo -quick)-$(date -u +%F).json"
[ -n "$out" ] || out="${OUT:+$OUT/$name}"
[ -n "$out" ] || out="$REPO/benchmarks/results/$name"
WORK=$(mktemp -d /tmp/lowrank-gpu.XXXXXX)
SETUP=$WORK/setup.tsv
note() { printf '%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\t\n' '  ')" >>"$SETUP"; echo "run.sh: $1: $2" >&2; }
note started "$(date -u +%FT%TZ) on $(uname -srm), $(nproc) cores, root: $([ "$(id -u)" = 0 ] && echo yes || echo no)"
command -v nvidia-smi >/dev/null && note nvidia-smi "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"

# ---- runtime ----
if [ $dev = 0 ] && [ -f "$bundle/node.xz" ]; then
  mkdir -p "$WORK/b/node_modules/webgpu/dist/linux-x64"
  unxz() { if command -v xz >/dev/null; then xz -dc "$1"; else python3 -c 'import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; fi; }
  unxz "$bundle/node.xz" >"$WORK/node" && chmod +x "$WORK/node" || { note error "cannot unpack $bundle/node.xz"; exit 1; }
  unxz "$bundle/dawn.node.xz" >"$WORK/b/node_modules/webgpu/dist/linux-x64/dawn.node" || { note error "cannot unpack dawn.node.xz"; exit 1; }
  cp -r "$bundle/app" "$bundle/package.json" "$WORK/b/" && cp "$bundle"/webgpu/* "$WORK/b/node_modules/webgpu/"
  NODE=$WORK/node CLI=$WORK/b/app/lowrank.mjs
  note runtime "bundle $bundle ($(cat "$bundle/MANIFEST" 2>/dev/null | head -1)); node $("$NODE" --version 2>&1)"
else
  NODE=$(command -v node) || { echo "run.sh: no node on PATH and no bundle at $bundle/node.xz: run benchmarks/gpu/pack.sh first" >&2; exit 1; }
  CLI=$REPO/apps/cli/bin/lowrank.mjs
  note runtime "checkout $REPO, node $("$NODE" --version) + tsx"
fi

# ---- Vulkan loader ----
# (grep without -q: under pipefail an early exit would fail ldconfig with SIGPIPE)
syslib=$(ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1 ' | sed 's/.*=> //' | head -1)
if [ -n "$syslib" ]; then
  note vulkan-loader "system ($syslib)"
elif ls "$bundle"/debs/*.deb >/dev/null 2>&1 && [ $dev = 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v dpkg >/dev/null; then
    for f in "$bundle"/debs/*.deb; do dpkg -x "$f" /; done; ldconfig
    note vulkan-loader "unpacked into / from $(cd "$bundle/debs" && ls *.deb | tr '\n' ' ')"
  else
    # No root or no dpkg: a private prefix (a .deb is an ar archive holding data.tar.*).
    for f in "$bundle"/debs/*.deb; do
      if command -v dpkg >/dev/null; then dpkg -x "$f" "$WORK/vk"; else
        python3 - "$f" "$WORK/vk" <<'PY'
import sys, tarfile, io
data = open(sys.argv[1], "rb").read(); i = 8
while i < len(data):
    name = data[i:i+16].decode().strip().rstrip("/"); size = int(data[i+48:i+58]); body = data[i+60:i+60+size]
    if name.startswith("data.tar"): tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
    i += 60 + size + (size & 1)
PY
      fi
    done
    export LD_LIBRARY_PATH="$WORK/vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note vulkan-loader "private prefix $WORK/vk on LD_LIBRARY_PATH"
  fi
else
  note vulkan-loader "none found and no debs to unpack (WebGPU cases will record why they skip)"
fi
# The NVIDIA driver's ICD lives outside the loader's search path on the device machines.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f $icd ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  note vulkan-icd "$icd"
fi
note setup-seconds "$(( ($(date +%s%3N) - T0) / 1000 ))"

# ---- the benchmark ----
budget=${LOWRANK_GPU_BUDGET_S:-$([ $quick = 1 ] && echo 150 || echo 450)}
mkdir -p "$(dirname "$out")"
args=(bench gpu --out "$out"); [ $quick = 1 ] && args+=(--quick)
cd "$REPO"
# A hard stop 20 s past the budget, counted from run.sh's start: the JSON already holds every finished case.
limit=$(( budget + 20 - ($(date +%s%3N) - T0) / 1000 ))
LOWRANK_GPU_T0=$T0 LOWRANK_GPU_SETUP=$SETUP LOWRANK_GPU_CLI=$CLI LOWRANK_GPU_CONFIGS=$REPO/benchmarks/gpu/configs LOWRANK_GPU_BUDGET_S=$budget \
  timeout -k 5 $limit "$NODE" "$CLI" "${args[@]}"
rc=$?
[ $rc = 124 ] && echo "run.sh: stopped at its limit (${budget} s budget + 20 s from the start); $out holds the cases that finished" >&2
echo "run.sh: exit $rc after $(( ($(date +%s%3N) - T0) / 1000 )) s; results: $out" >&2
rm -rf "$WORK"
exit $rc
