#!/usr/bin/env bash
# Regenerates the golden reports that tests/tools/cli_test.cpp compares byte for byte.
# Review the diff (git diff tests/golden) before committing: a change is a behaviour change.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
cmake --build "$build" --target moesim >/dev/null
out=tests/golden/quickstart
mkdir -p "$out"
"./$build/moesim" run -q --out "$out"
rm -f "$out/timeline.json"  # 2 MB; tests/tools/cli_test.cpp checks its structure instead
git diff --stat -- tests/golden || true
