#!/usr/bin/env bash
# docs/validation.md, "DeepSeek's prefill profile": the sweep's four points give the steps and the
# tokens/s per node of the page's table, row by row, and their difference from the profile.
# Usage: prefill_profile_test.sh PYTHON MOESIM SOURCE_DIR
set -euo pipefail
python=$1 moesim=$2 source=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$moesim" sweep "$source/scenarios/validation/deepseek-prefill-profile.yaml" --jobs 2 --out "$tmp/p.csv" >/dev/null
"$python" - "$tmp/p.csv" "$source/docs/validation.md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
doc = open(sys.argv[2]).read()
section = doc[doc.index("## DeepSeek's prefill profile"):]
section = section[:section.index("\n## ")]
profile = 62713  # tokens/s per node, the page's published figure
assert f"**{profile:,} tokens/s per node**" in " ".join(section.split()), "the published figure moved"
label = {("two_batch", "1"): "| two micro-batches | store and forward (default) |",
         ("two_batch", "16"): "| two micro-batches | calibrated |",
         ("none", "1"): "| none | store and forward (default) |",
         ("none", "16"): "| none | calibrated |"}
assert len(rows) == 4, len(rows)
for r in rows:
    key = (r["workload.overlap"], r["network.forward_chunks"])
    step_ms = float(r["step_time_us"]) / 1e3
    per_node = float(r["tokens_per_s"]) / 4
    diff = (per_node / profile - 1) * 100
    sign = f"{diff:+.1f}".replace("-", "\u2212")  # the page's minus sign
    want = f"{label[key]} {step_ms:.3f} ms | {per_node:,.0f} | {sign} % |"
    if want not in section:
        sys.exit(f"FAIL: docs/validation.md lacks the row {want!r}")
print("4 rows agree")
PY
