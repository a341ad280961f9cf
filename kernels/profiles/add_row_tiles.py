#!/usr/bin/env python3
"""Adds the row_tiles column to a kernel profile measured before moe-profile wrote it.

    python3 kernels/profiles/add_row_tiles.py PROFILE HISTOGRAMS KIND > OUT
    python3 kernels/profiles/add_row_tiles.py --check ANNOTATED HISTOGRAMS KIND
    python3 kernels/profiles/add_row_tiles.py --tile-rows N PROFILE HISTOGRAMS KIND > OUT

PROFILE is a profile or held-out file (models/kernel_profile.hpp), HISTOGRAMS the per-expert row
counts the same moe-profile run wrote with --hist, KIND `profile` or `heldout` (its `file`
column). row_tiles is the sum over experts of ceil(rows / 64), computed from those counts; a
row without a routing (router, dense_gemm) gets 0. Every row with a routing must have its counts
in HISTOGRAMS, and their maximum and number of active experts must equal the row's own
max_expert_tokens and active_experts, or nothing is written. The timings are copied unchanged.
--check: exit 1 unless ANNOTATED is exactly what this adds to it without the column (a CTest
runs it on the committed files). --tile-rows N: tiles of N rows instead (an annotated PROFILE has
its column replaced), to judge other tile sizes with `moesim check-profile
--leave-one-distribution-out --profile OUT`; the simulator counts tiles of 64 rows.
"""
import argparse
import csv
import math
import os
import sys

TILE_ROWS = 64
HEADER = ("kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,"
          "active_experts,median_us,p10_us,p90_us")
COMMENT = "# row_tiles: "


def counts_of(histograms, kind):
    counts = {}
    with open(histograms) as f:
        for r in csv.DictReader(line for line in f if not line.startswith("#")):
            if r["file"] != kind:
                continue
            key = (r["kernel"], r["shape"], r["experts"], r["top_k"], r["tokens"], r["distribution"])
            c = [int(n) for n in r["counts"].split()]
            if counts.setdefault(key, c) != c:
                sys.exit(f"{histograms}: two different routings for {key}")
    return counts


def annotate(lines, profile, histograms, counts, tile_rows=TILE_ROWS):
    out = []
    for n, line in enumerate(lines, 1):
        if line.startswith("#") or not line:
            out.append(line)
            continue
        if line == HEADER:
            source = os.path.relpath(histograms, os.path.dirname(os.path.abspath(profile)))
            out.append(f"{COMMENT}the sum over experts of ceil(rows / {tile_rows}), added after the measurement by "
                       f"kernels/profiles/add_row_tiles.py from the per-expert row counts the same run recorded ({source})")
            out.append(line + ",row_tiles")
            continue
        if line.count(",") != 12:
            sys.exit(f"{profile}:{n}: not a 13-column row of the profile format")
        f = line.split(",")
        if f[7] == "-":
            out.append(line + ",0")
            continue
        c = counts.get((f[0], f[1], f[4], f[5], f[6], f[7]))
        if c is None:
            sys.exit(f"{profile}:{n}: no per-expert counts for this row in {histograms}")
        if max(c) != int(f[8]) or sum(1 for x in c if x) != int(f[9]):
            sys.exit(f"{profile}:{n}: the counts in {histograms} do not match max_expert_tokens and active_experts")
        out.append(line + "," + str(sum(math.ceil(x / tile_rows) for x in c)))
    return out


def bare(lines):
    """The lines without the row_tiles column and its comment."""
    return [line.rsplit(",", 1)[0] if line and not line.startswith("#") else line
            for line in lines if not line.startswith(COMMENT)]


def main():
    parser = argparse.ArgumentParser(usage="add_row_tiles.py [--check | --tile-rows N] PROFILE HISTOGRAMS profile|heldout")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--tile-rows", type=int, default=TILE_ROWS)
    parser.add_argument("profile")
    parser.add_argument("histograms")
    parser.add_argument("kind", choices=("profile", "heldout"))
    a = parser.parse_args()
    if a.tile_rows < 1 or (a.check and a.tile_rows != TILE_ROWS):
        sys.exit(f"add_row_tiles.py: --tile-rows takes a row count of 1 or more, and --check checks {TILE_ROWS}-row tiles")
    with open(a.profile) as f:
        lines = f.read().splitlines()
    counts = counts_of(a.histograms, a.kind)
    annotated = any(line.endswith(",row_tiles") for line in lines)
    if not a.check:
        out = annotate(bare(lines) if annotated else lines, a.profile, a.histograms, counts, a.tile_rows)
        sys.stdout.write("\n".join(out) + "\n")
        return
    # The file without the column, annotated again, must be the file.
    again = annotate(bare(lines), a.profile, a.histograms, counts)
    if again != lines:
        wrong = next(i for i, (x, y) in enumerate(zip(again + [""] * len(lines), lines), 1) if x != y)
        sys.exit(f"{a.profile}:{wrong}: row_tiles is not what {a.histograms} gives")
    print(f"{a.profile}: row_tiles as {a.histograms} gives, {sum(1 for x in lines if x and not x.startswith('#')) - 1} rows")


if __name__ == "__main__":
    main()
