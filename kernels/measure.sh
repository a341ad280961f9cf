#!/usr/bin/env bash
# On a GPU machine with only the CUDA toolkit and CMake: build kernels/, check the layer
# against the float64 reference, then measure the profile, held-out whole-layer timings, the
# expert GEMM paths' A/B, a routing trace, and the PyTorch yardstick (where python3 has torch).
#   kernels/measure.sh OUT_DIR [--quick | --shapes small,mixtral,deepseek] [moe-profile options, e.g. --grid dense]
#   (--shapes mixtral-etp2,mixtral-etp4,mixtral-etp8 --experts-only: Mixtral's expert-tensor-parallel shards' expert stage)
# Writes OUT_DIR/<gpu>.csv (the profile), heldout.csv, late.csv (the whole-layer rows timed again
# at the end of each shape), gemm_ab.csv, histograms.csv, timings.csv (when each row was timed,
# to line up with clocks.csv), trace.csv, torch.csv, clocks.csv and log.txt. With BIN_DIR set
# to a folder holding the built binaries, skips the build; with TORCH=0, the PyTorch
# yardstick. Stops at the first failed check: an unchecked layer is never timed. A long sweep
# can be split by shape (and --locals) over several runs; kernels/profiles/merge.py joins them.
set -euo pipefail
out=${1:?usage: kernels/measure.sh OUT_DIR [--quick | --shapes LIST]}
shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
# The card's clocks, power and temperature every 250 ms while this runs (OUT_DIR/clocks.csv):
# an H100 under heavy work reaches its power cap within a second and clocks down, so timings
# taken in the first second of heavy work and later differ (moe-profile --sustain).
# Timestamps in UTC, as moe-profile's progress lines in log.txt, to line the two up.
if command -v nvidia-smi >/dev/null; then
  TZ=UTC nvidia-smi --query-gpu=timestamp,clocks.current.sm,clocks.current.memory,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv -lms 250 >"$out/clocks.csv" 2>/dev/null &
  smi=$!
  trap 'kill $smi 2>/dev/null || true' EXIT
fi
{
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,driver_version --format=csv || true
  bin=${BIN_DIR:-}
  if [ -z "$bin" ]; then
    bin=${BUILD_DIR:-/tmp/moesim-kernels-build}
    cmake -S "$here" -B "$bin" -DCMAKE_BUILD_TYPE=Release
    cmake --build "$bin" -j "$(nproc)"
  fi
  "$bin/moe-reference-test"
  # The backward pass is checked only for a --backward run: the forward measurement does not
  # wait on it.
  case " $* " in *" --backward "*) "$bin/moe-kernels-test" ;; *) "$bin/moe-kernels-test" --forward ;; esac
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
  trace=()
  case " $* " in *" --shapes "*) ;; *) trace=(--trace "$out/trace.csv") ;; esac
  "$bin/moe-profile" --out "$out/${gpu:-gpu}.csv" --heldout "$out/heldout.csv" --late "$out/late.csv" --ab "$out/gemm_ab.csv" \
    --hist "$out/histograms.csv" --timings "$out/timings.csv" "${trace[@]}" "$@"
  if [ "${TORCH:-1}" != 0 ] && python3 -c 'import torch' 2>/dev/null; then
    shapes=small
    case " $* " in *" --shapes "*) shapes=$(echo "$*" | sed 's/.*--shapes \([^ ]*\).*/\1/' | tr , ' ') ;; esac
    case " $* " in *" --quick "*) ;; *" --shapes "*) ;; *) shapes="small mixtral deepseek" ;; esac
    bwd=()
    case " $* " in *" --backward "*) bwd=(--backward) ;; esac
    # shellcheck disable=SC2086
    python3 "$here/torch_layer.py" "$out/torch.csv" $shapes "${bwd[@]}"
  fi
} 2>&1 | tee "$out/log.txt"
