#!/usr/bin/env bash
# kernels/profiles/merge.py joins a profile split over two runs into the one the simulator
# reads, and refuses parts measured differently or a measurement twice.
# Usage: profile_merge_test.sh PYTHON MOESIM SOURCE_DIR
set -euo pipefail
python=$1 moesim=$2 source=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
profile=$source/kernels/profiles/nvidia-h100-80gb-hbm3.csv
merge() { "$python" "$source/kernels/profiles/merge.py" "$@"; }
fail() { echo "FAIL: $*"; exit 1; }
# The H100 profile as two runs would have written it: everything but the expert stage, then
# the expert stage alone, a day later.
{ grep '^#' "$profile"; grep -v '^#' "$profile" | grep -v '^experts,'; } >"$tmp/a.csv"
{ grep '^#' "$profile" | sed 's/^# date: .*/# date: 2099-01-02/'; awk '!/^#/ { print; exit }' "$profile"; grep '^experts,' "$profile"; } >"$tmp/b.csv"
merge "$tmp/m.csv" "$tmp/a.csv" "$tmp/b.csv" | grep -q "1606 rows from 2 files" || fail "row count"
diff <(grep -v '^#' "$profile" | sort) <(grep -v '^#' "$tmp/m.csv" | sort) >/dev/null || fail "rows differ from the profile's"
grep -q '^# date: 2026-11-22, 2099-01-02$' "$tmp/m.csv" || fail "both dates kept"
# The simulator reads the merged profile as it reads the original.
loo() { "$moesim" check-profile --leave-one-out --profile "$1" -q | sed 1d; }  # line 1 names the file
[ "$(loo "$tmp/m.csv")" = "$(loo "$profile")" ] || fail "the merged profile interpolates differently"
[ -n "$(loo "$profile")" ] || fail "check-profile printed nothing"
# Refused: a part measured at other clocks, a measurement twice, other columns; nothing written.
sed 's/^# sm_clock_mhz: .*/# sm_clock_mhz: 1755/' "$tmp/b.csv" >"$tmp/c.csv"
if merge "$tmp/x.csv" "$tmp/a.csv" "$tmp/c.csv" 2>"$tmp/err"; then fail "other clocks accepted"; fi
grep -q "was not measured like .*'sm_clock_mhz: 1755' against 'sm_clock_mhz: 1980'" "$tmp/err" || fail "clock message: $(cat "$tmp/err")"
if merge "$tmp/x.csv" "$tmp/a.csv" "$tmp/a.csv" 2>"$tmp/err"; then fail "a measurement twice accepted"; fi
grep -q "^merge.py: router,small,1024,2048,16,2,1,- is in both" "$tmp/err" || fail "duplicate message: $(cat "$tmp/err")"
cut -d, -f1-13 "$tmp/b.csv" >"$tmp/d.csv"
if merge "$tmp/x.csv" "$tmp/a.csv" "$tmp/d.csv" 2>"$tmp/err"; then fail "other columns accepted"; fi
grep -q "its columns differ" "$tmp/err" || fail "columns message: $(cat "$tmp/err")"
[ ! -e "$tmp/x.csv" ] || fail "a refused merge wrote its output"
# --later-wins: a run cut off part way and measured again from there: the later rows replace.
sed 's/^\(router,small,1024,2048,16,2,1,-,0,0,\)[0-9.]*/\1999/' "$tmp/a.csv" | grep -v '^#' | grep -v '^kernel,' >"$tmp/rows"
{ grep '^#' "$profile"; awk '!/^#/ { print; exit }' "$profile"; grep '^router,small,1024,2048,16,2,1,-' "$tmp/rows"; } >"$tmp/redo.csv"
merge --later-wins "$tmp/r.csv" "$tmp/a.csv" "$tmp/b.csv" "$tmp/redo.csv" | grep -q "1606 rows from 3 files, 1 replaced" ||
  fail "--later-wins count"
grep -q '^router,small,1024,2048,16,2,1,-,0,0,999,' "$tmp/r.csv" || fail "--later-wins kept the earlier timing"
[ "$(grep -c '^router,small,1024,2048,16,2,1,-,' "$tmp/r.csv")" = 1 ] || fail "--later-wins left the row twice"
# A held-out file may repeat a case (moe-profile --passes).
held=$source/kernels/profiles/h100-measure/heldout.csv
merge "$tmp/h.csv" "$held" "$held" | grep -q "rows from 2 files" || fail "held-out repeats refused"
echo "ok: merge.py"
