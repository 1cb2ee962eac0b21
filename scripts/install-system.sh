#!/usr/bin/env bash
# System packages the tests need on a fresh Debian 12 machine (run as root).
# - libvulkan1 + Mesa's lavapipe from bookworm-backports: Dawn rejects bookworm's own Mesa 22.3.6
#   (needs shaderUniform*ArrayDynamicIndexing), so the WebGPU tests need 25.x from backports.
# - chromium: headless browser tests (SwiftShader WebGPU adapter).
# - libopenblas0-pthread: the BLAS the CPU backend's matmul loads through FFI (LOWRANK_BLAS=auto).
# Safe to re-run; skips what is present. Set LOWRANK_SKIP_APT=1 to skip entirely.
set -euo pipefail
[ "${LOWRANK_SKIP_APT:-0}" = 1 ] && { echo "install-system: skipped (LOWRANK_SKIP_APT=1)"; exit 0; }
if [ "$(id -u)" != 0 ]; then echo "install-system: not root, skipping apt (WebGPU tests will skip if no adapter)"; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "install-system: no apt-get, skipping"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -f "$src" ]; then
  # Same mirror apt already uses for bookworm.
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 | awk '{print $2}')
  uri=${uri:-http://deb.debian.org/debian}
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$src"
fi
need=()
dpkg -s libvulkan1 >/dev/null 2>&1 || need+=(libvulkan1)
ver=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
case "$ver" in *bpo12*) ;; *) need+=(mesa-vulkan-drivers) ;; esac
dpkg -s libopenblas0-pthread >/dev/null 2>&1 || need+=(libopenblas0-pthread)
if [ "${LOWRANK_BROWSER_TESTS:-1}" = 1 ]; then dpkg -s chromium >/dev/null 2>&1 || need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -q libvulkan1 libopenblas0-pthread >/dev/null
  apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers >/dev/null
  if [[ " ${need[*]} " == *" chromium "* ]]; then apt-get install -y -q chromium >/dev/null; fi
fi
echo "install-system: libvulkan1 $(dpkg-query -W -f='${Version}' libvulkan1), mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers), libopenblas0-pthread $(dpkg-query -W -f='${Version}' libopenblas0-pthread)$(command -v chromium >/dev/null && echo ", $(chromium --version 2>/dev/null)")"
