#!/usr/bin/env bash
# On a GPU machine with only the CUDA toolkit and CMake: build kernels/, check the layer
# against the float64 reference, then measure the profile and write a routing trace.
#   kernels/measure.sh OUT_DIR [--quick]
# Writes OUT_DIR/<gpu>.csv (the profile), OUT_DIR/trace.csv, and OUT_DIR/log.txt. Stops at the
# first failed check: an unchecked layer is never timed.
set -euo pipefail
out=${1:?usage: kernels/measure.sh OUT_DIR [--quick]}
quick=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD_DIR:-/tmp/moesim-kernels-build}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,driver_version --format=csv || true
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" -j "$(nproc)"
  "$build/moe-reference-test"
  "$build/moe-kernels-test"
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
  "$build/moe-profile" --out "$out/${gpu:-gpu}.csv" --trace "$out/trace.csv" $quick
} 2>&1 | tee "$out/log.txt"
