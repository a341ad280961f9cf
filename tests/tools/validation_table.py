#!/usr/bin/env python3
"""A docs/validation.md table rerun: a grid's sweep gives each row's step, tokens/s per node and
difference from the published figure, as the page prints them.

Usage: validation_table.py MOESIM SOURCE_DIR GRID "SECTION TITLE" NODES PUBLISHED COLUMNS [--set K=V]... ROW...
  GRID      the sweep, relative to SOURCE_DIR
  NODES     tokens/s per node = the sweep's tokens_per_s / NODES; `gpu`: per GPU, the sweep's
            tokens_per_s_per_gpu (for rows on clusters of different sizes)
  PUBLISHED tokens/s per node, as the section prints it in bold; `row`: each row has its own,
            after an @ at the end of ROW, which the row's label must show
  COLUMNS   the grid's axis columns that tell the rows apart, comma-separated
  --set     passed to the sweep (e.g. --set compute.elementwise_kernels=true)
  ROW       VALUES=LABEL[@PUBLISHED]: the columns' values (comma-separated) and the row's leading
            cells ("| none | store and forward (default) |")
Each row must read "LABEL STEP ms | PER_NODE | ±DIFF % |" in the section.
"""
import csv
import os
import subprocess
import sys
import tempfile


def main():
    moesim, source, grid, title, nodes, published, columns = sys.argv[1:8]
    args, sets = sys.argv[8:], []
    while args and args[0] == "--set":
        sets += args[:2]
        args = args[2:]
    rows = dict(arg.split("=", 1) for arg in args)
    columns = columns.split(",")
    doc = open(os.path.join(source, "docs", "validation.md")).read()
    section = doc[doc.index("## " + title):]
    section = section[:section.index("\n## ")]
    per_row = published == "row"
    if per_row:
        rows = {k: tuple(v.rsplit("@", 1)) for k, v in rows.items()}
        for label, figure in rows.values():
            if f"{float(figure):,.0f}" not in label:
                sys.exit(f"FAIL: the row {label!r} does not show its published {float(figure):,.0f}")
    else:
        published = float(published)
        if f"**{published:,.0f} " not in " ".join(section.split()):
            sys.exit(f"FAIL: the section no longer quotes {published:,.0f} in bold")
        rows = {k: (v, published) for k, v in rows.items()}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sweep.csv")
        subprocess.run([moesim, "sweep", os.path.join(source, grid), "--jobs", "2", "--out", out] + sets, check=True,
                       stdout=subprocess.DEVNULL)
        points = list(csv.DictReader(open(out)))
    if len(points) != len(rows):
        sys.exit(f"FAIL: {len(points)} points against {len(rows)} rows")
    for p in points:
        label, published = rows[",".join(p[c] for c in columns)]
        published = float(published)
        step_ms = float(p["step_time_us"]) / 1e3
        per_node = float(p["tokens_per_s_per_gpu"]) if nodes == "gpu" else float(p["tokens_per_s"]) / int(nodes)
        sign = f"{(per_node / published - 1) * 100:+.1f}".replace("-", "\u2212")  # the page's minus sign
        want = f"{label} {step_ms:.3f} ms | {per_node:,.0f} | {sign} % |"
        if want not in section:
            sys.exit(f"FAIL: docs/validation.md lacks the row {want!r}")
    print(f"{len(points)} rows agree")


if __name__ == "__main__":
    main()
