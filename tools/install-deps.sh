#!/usr/bin/env bash
# Installs the Debian packages moesim needs to build and test, and nothing that is already there.
# Idempotent and quiet when everything is installed. CUDA is optional and never installed here:
# when `nvcc` is on PATH (or in /usr/local/cuda/bin) the build adds kernels/ by itself.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libboost-graph-dev libboost-program-options-dev
  libyaml-cpp-dev libfmt-dev catch2
  libsimgrid-dev
  libopenmpi-dev openmpi-bin
  python3 python3-matplotlib
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
