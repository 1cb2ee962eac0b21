#!/usr/bin/env bash
# The PyTorch peer baseline for `lowrank bench peer` (benchmarks/src/peer.ts): Debian's CPU build
# of PyTorch (python3-torch 1.13) and the pthread OpenBLAS it runs fast with. Large (~300 packages,
# ~1 GB), so it is NOT part of .ci/run or install-system.sh; run it by hand, as root, on Debian 12.
# The benchmark then runs `/usr/bin/python3 benchmarks/src/peer_torch.py` with OPENBLAS_NUM_THREADS=2
# (Debian's interpreter: a python3 earlier on PATH, e.g. pyenv's, cannot import Debian's torch).
# Safe to re-run; exits 0 with a reason when it cannot install (not root, no apt-get).
set -euo pipefail
PY=/usr/bin/python3
if [ -x "$PY" ] && "$PY" -c 'import torch' >/dev/null 2>&1; then
  echo "install-peer: torch $("$PY" -c 'import torch; print(torch.__version__)') already importable from $PY"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "install-peer: skipped: not root (run: sudo bash scripts/install-peer.sh)"; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "install-peer: skipped: no apt-get (needs Debian/Ubuntu; the peer suite then reports torch as unavailable)"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q python3-torch libopenblas0-pthread >/dev/null
echo "install-peer: torch $("$PY" -c 'import torch; print(torch.__version__)') (python3-torch $(dpkg-query -W -f='${Version}' python3-torch)), libopenblas0-pthread $(dpkg-query -W -f='${Version}' libopenblas0-pthread)"
