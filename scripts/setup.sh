#!/usr/bin/env bash
# Installs what mixc needs on a fresh Debian/Ubuntu machine, once:
#   - LLVM 22 (the PTX backend links it; the machine's default llvm-config is older),
#   - ptxas from the pip package nvidia-cuda-nvcc-cu12 (validates PTX without a GPU).
# Every step is skipped when its tool is already present, so running it twice is cheap.
set -euo pipefail

need_sudo() { if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then echo sudo; fi; }
SUDO=$(need_sudo)

if [ ! -x /usr/lib/llvm-22/bin/llvm-config ]; then
  echo "setup: installing LLVM 22 (apt)"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev libxml2-dev >/dev/null
fi

if ! "$(dirname "$0")/find-ptxas.sh" >/dev/null 2>&1; then
  echo "setup: installing ptxas (pip: nvidia-cuda-nvcc-cu12==12.9.86)"
  python3 -m pip install -q --disable-pip-version-check nvidia-cuda-nvcc-cu12==12.9.86 || \
    echo "setup: warning: ptxas could not be installed; PTX validation tests will say so"
fi
