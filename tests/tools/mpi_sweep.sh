#!/usr/bin/env bash
# `mpirun -np 2 moesim sweep` writes the same CSV as one process, and resumes a cut file.
# Usage: mpi_sweep.sh MPIEXEC MOESIM SOURCE_DIR
set -euo pipefail
trap 'echo "mpi_sweep.sh: failed at line $LINENO" >&2' ERR
mpiexec=$1 moesim=$2 source=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# OpenMPI refuses root without these (CI containers run as root); two ranks on any core count.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cat > "$tmp/g.yaml" <<GRID
base: $source/scenarios/quickstart.yaml
axes:
  workload.seed: {from: 1, to: 7, step: 1}
  model.moe_layers: [2, 3]
GRID
"$moesim" sweep "$tmp/g.yaml" -q --jobs 1 --out "$tmp/one.csv"
"$mpiexec" -np 2 "$moesim" sweep "$tmp/g.yaml" --jobs 1 --out "$tmp/two.csv" > "$tmp/log.txt"
grep -q "14 points (0 from an earlier run, 14 run now over 2 MPI ranks)" "$tmp/log.txt" || { cat "$tmp/log.txt"; exit 1; }
cmp "$tmp/one.csv" "$tmp/two.csv"
[ "$(wc -l < "$tmp/two.csv")" -eq 15 ]
# A cut output (four rows and half of a fifth) resumes under MPI to the same file.
{ head -5 "$tmp/one.csv"; sed -n 6p "$tmp/one.csv" | head -c 40; } > "$tmp/cut.csv"
"$mpiexec" -np 2 "$moesim" sweep "$tmp/g.yaml" --jobs 2 --out "$tmp/cut.csv" > "$tmp/log.txt"
grep -q "14 points (4 from an earlier run, 10 run now over 2 MPI ranks)" "$tmp/log.txt" || { cat "$tmp/log.txt"; exit 1; }
cmp "$tmp/one.csv" "$tmp/cut.csv"
# Points that differ only in price share a simulation; the groups are dealt over the ranks.
cat > "$tmp/p.yaml" <<GRID
base: $source/scenarios/quickstart.yaml
axes:
  workload.seed: [1, 2, 3]
  cluster.gpu_hour_price: [1, 2]
GRID
"$moesim" sweep "$tmp/p.yaml" -q --jobs 1 --set model.moe_layers=2 --out "$tmp/p-one.csv"
"$mpiexec" -np 2 "$moesim" sweep "$tmp/p.yaml" --jobs 1 --set model.moe_layers=2 --out "$tmp/p-two.csv" > "$tmp/log.txt"
grep -q "6 points (0 from an earlier run, 6 run now over 2 MPI ranks in 3 simulations" "$tmp/log.txt" || { cat "$tmp/log.txt"; exit 1; }
cmp "$tmp/p-one.csv" "$tmp/p-two.csv"
# Skipped points (refused by the rules, or too big for memory) are rank 0's rows; the same file.
cat > "$tmp/s.yaml" <<GRID
base: $source/scenarios/quickstart.yaml
axes:
  parallelism.ep: [3, 2, 8, 4]
  workload.seed: [1, 2]
skip: [invalid, unfit]
GRID
"$moesim" sweep "$tmp/s.yaml" -q --jobs 1 --set model.moe_layers=2 --set "cluster.gpu={preset: H100-SXM, memory: 2.5GB}" --out "$tmp/s-one.csv"
"$mpiexec" -np 2 "$moesim" sweep "$tmp/s.yaml" --jobs 1 --set model.moe_layers=2 --set "cluster.gpu={preset: H100-SXM, memory: 2.5GB}" --out "$tmp/s-two.csv" > "$tmp/log.txt"
grep -q "8 points (0 from an earlier run, 8 run now over 2 MPI ranks, 4 of them skipped" "$tmp/log.txt" || { cat "$tmp/log.txt"; exit 1; }
grep -q "2 of 8 points are invalid" "$tmp/log.txt" || { cat "$tmp/log.txt"; exit 1; }
grep -q "2 of them not simulated (skip: unfit)" "$tmp/log.txt" || { cat "$tmp/log.txt"; exit 1; }
cmp "$tmp/s-one.csv" "$tmp/s-two.csv"
# A bad grid fails on every rank before anything runs; the error is printed once.
printf 'base: %s/scenarios/quickstart.yaml\naxes:\n  model.top_k: [2, 99]\n' "$source" > "$tmp/bad.yaml"
if "$mpiexec" -np 2 "$moesim" sweep "$tmp/bad.yaml" --out "$tmp/bad.csv" > "$tmp/out.txt" 2> "$tmp/err.txt"; then
  echo "a bad grid passed under MPI"; exit 1
fi
[ "$(grep -c "top_k 99 is larger than experts 8" "$tmp/err.txt")" -eq 1 ] || { cat "$tmp/err.txt"; exit 1; }
[ ! -e "$tmp/bad.csv" ]
echo "mpi sweep: ok"
