#!/usr/bin/env bash
# tools/plot draws every chart kind from real moesim output as PNG, and rejects bad columns.
# Usage: plot_test.sh PYTHON MOESIM SOURCE_DIR
set -euo pipefail
python=$1 moesim=$2 source=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/g.yaml" <<GRID
base: $source/scenarios/quickstart.yaml
axes:
  parallelism.ep: [2, 4, 8]
  routing.capacity_factor: [1.0, 1.25]
GRID
"$moesim" sweep "$tmp/g.yaml" -q --set model.moe_layers=2 --set routing.distribution=zipf --set routing.zipf_s=1.2 --out "$tmp/s.csv"
"$moesim" run -q --set model.moe_layers=3 --set workload.kind=training --out "$tmp/run"
plot() { "$python" "$source/tools/plot" "$@"; }
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || { echo "$1 is not a PNG"; exit 1; }; }
plot line "$tmp/s.csv" --x parallelism.ep --y drop_rate --by routing.capacity_factor --out "$tmp/line.png" >/dev/null
# One line per combination of two columns' values (here 2 x 1: the sweep's only routing law).
plot line "$tmp/s.csv" --x parallelism.ep --y step_time_us --by routing.capacity_factor,parallelism.ep --out "$tmp/line2.png" >/dev/null
if plot line "$tmp/s.csv" --x parallelism.ep --y step_time_us --by routing.capacity_factor,nope --out "$tmp/bad.png" 2> "$tmp/err.txt"; then
  echo "a bad --by column passed"; exit 1
fi
grep -q "has no column 'nope'" "$tmp/err.txt" || { cat "$tmp/err.txt"; exit 1; }
plot heatmap "$tmp/s.csv" --x parallelism.ep --y routing.capacity_factor --value step_time_us --out "$tmp/heat.png" >/dev/null
plot breakdown "$tmp/run/layers.csv" --out "$tmp/layers.png" >/dev/null
plot breakdown "$tmp/s.csv" --x parallelism.ep --where routing.capacity_factor=1.25 --out "$tmp/points.png" >/dev/null
# An x some rows do not have (prompt_tokens_per_s of a decode without a prefill chunk): those rows
# are left out; none having it is an error.
cat > "$tmp/c.yaml" <<GRID
base: $source/scenarios/quickstart.yaml
axes:
  workload.prefill_chunk: [0, 64, 128]
GRID
"$moesim" sweep "$tmp/c.yaml" -q --set model.moe_layers=2 --set workload.kind=decode --set workload.context_length=512 \
  --set workload.sequence_length=~ --set workload.tokens_per_gpu=16 --out "$tmp/c.csv"
plot line "$tmp/c.csv" --x prompt_tokens_per_s --y tokens_per_s --out "$tmp/chunks.png" >/dev/null
if plot line "$tmp/c.csv" --x prompt_tokens_per_s --y tokens_per_s --where workload.prefill_chunk=0 --out "$tmp/bad.png" 2> "$tmp/err.txt"; then
  echo "a chart without any x passed"; exit 1
fi
grep -q "no row has a value of prompt_tokens_per_s" "$tmp/err.txt" || { cat "$tmp/err.txt"; exit 1; }
for f in line line2 heat layers points chunks; do is_png "$tmp/$f.png"; done
# A column the CSV does not have: exit code 2, naming it, and no file.
if plot line "$tmp/s.csv" --x parallelism.ep --y no_such_column --out "$tmp/bad.png" 2> "$tmp/err.txt"; then
  echo "a bad column passed"; exit 1
fi
grep -q "has no column 'no_such_column'" "$tmp/err.txt" || { cat "$tmp/err.txt"; exit 1; }
[ ! -e "$tmp/bad.png" ]
if plot heatmap "$tmp/s.csv" --x parallelism.ep --out "$tmp/bad.png" 2> "$tmp/err.txt"; then
  echo "a heat map without --y passed"; exit 1
fi
echo "plot: ok"
