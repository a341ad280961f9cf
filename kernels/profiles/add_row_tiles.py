#!/usr/bin/env python3
"""Adds the row_tiles column to a kernel profile measured before moe-profile wrote it.

    python3 kernels/profiles/add_row_tiles.py PROFILE HISTOGRAMS KIND > OUT
    python3 kernels/profiles/add_row_tiles.py --check ANNOTATED HISTOGRAMS KIND

PROFILE is a profile or held-out file (models/kernel_profile.hpp), HISTOGRAMS the per-expert row
counts the same moe-profile run wrote with --hist, KIND `profile` or `heldout` (its `file`
column). row_tiles is the sum over experts of ceil(rows / 64), computed from those counts; a
row without a routing (router, dense_gemm) gets 0. Every row with a routing must have its counts
in HISTOGRAMS, and their maximum and number of active experts must equal the row's own
max_expert_tokens and active_experts, or nothing is written. The timings are copied unchanged.
--check: exit 1 unless ANNOTATED is exactly what this adds to it without the column (a CTest
runs it on the committed files).
"""
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


def annotate(lines, profile, histograms, counts):
    out = []
    for n, line in enumerate(lines, 1):
        if line.startswith("#") or not line:
            out.append(line)
            continue
        if line == HEADER:
            source = os.path.relpath(histograms, os.path.dirname(os.path.abspath(profile)))
            out.append(f"{COMMENT}the sum over experts of ceil(rows / {TILE_ROWS}), added after the measurement by "
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
        out.append(line + "," + str(sum(math.ceil(x / TILE_ROWS) for x in c)))
    return out


def main():
    check = len(sys.argv) == 5 and sys.argv[1] == "--check"
    args = sys.argv[2:] if check else sys.argv[1:]
    if len(args) != 3 or args[2] not in ("profile", "heldout"):
        sys.exit("usage: add_row_tiles.py [--check] PROFILE HISTOGRAMS profile|heldout")
    profile, histograms, kind = args
    with open(profile) as f:
        lines = f.read().splitlines()
    counts = counts_of(histograms, kind)
    if not check:
        sys.stdout.write("\n".join(annotate(lines, profile, histograms, counts)) + "\n")
        return
    # The file without the column, annotated again, must be the file.
    bare = [line.rsplit(",", 1)[0] if line and not line.startswith("#") else line
            for line in lines if not line.startswith(COMMENT)]
    again = annotate(bare, profile, histograms, counts)
    if again != lines:
        wrong = next(i for i, (a, b) in enumerate(zip(again + [""] * len(lines), lines), 1) if a != b)
        sys.exit(f"{profile}:{wrong}: row_tiles is not what {histograms} gives")
    print(f"{profile}: row_tiles as {histograms} gives, {sum(1 for x in lines if x and not x.startswith('#')) - 1} rows")


if __name__ == "__main__":
    main()
