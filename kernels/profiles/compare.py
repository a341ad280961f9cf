#!/usr/bin/env python3
"""Two measurements of the same kernels, row by row: how far the second moved from the first.

    python3 kernels/profiles/compare.py FIRST.csv SECOND.csv
    python3 kernels/profiles/compare.py --self-test

FIRST and SECOND are files in the profile's format (a profile, held-out or late file, e.g. two
sessions' profiles, or one measured with `moe-profile --sustain 0` and one without). Rows are
matched on kernel, shape, dimensions, tokens and distribution (a case timed more than once in a
file: the median of its timings). Prints, per shape and kernel, and for heavy rows (0.5 ms or
more in FIRST) and light ones apart, how many rows match and the ratio SECOND / FIRST of their
median times: median, 10th and 90th percentile. Plain Python 3.
"""
import csv
import sys

HEAVY_US = 500.0


def timings(lines):
    """(kernel, shape, hidden, ffn, experts, top_k, tokens, distribution) -> median_us."""
    by = {}
    for r in csv.DictReader(line for line in lines if not line.startswith("#")):
        key = tuple(r[k] for k in ("kernel", "shape", "hidden", "ffn", "experts", "top_k", "tokens", "distribution"))
        by.setdefault(key, []).append(float(r["median_us"]))
    out = {}
    for key, us in by.items():
        us.sort()
        n = len(us)
        out[key] = us[n // 2] if n % 2 else (us[n // 2 - 1] + us[n // 2]) / 2
    return out


def quantile(sorted_values, q):
    return sorted_values[int(q * (len(sorted_values) - 1) + 0.5)]


def report(first, second):
    groups = {}
    for key, a in first.items():
        b = second.get(key)
        if b is None or a <= 0:
            continue
        groups.setdefault((key[1], key[0], "heavy" if a >= HEAVY_US else "light"), []).append(b / a)
    out = [f"{'shape':9s} {'kernel':12s} {'work':5s} {'rows':>5s} {'median':>7s} {'p10':>7s} {'p90':>7s}"]
    every = []
    for (shape, kernel, work), ratios in sorted(groups.items()):
        ratios.sort()
        every += ratios
        out.append(f"{shape:9s} {kernel:12s} {work:5s} {len(ratios):5d} {quantile(ratios, 0.5):7.3f} "
                   f"{quantile(ratios, 0.1):7.3f} {quantile(ratios, 0.9):7.3f}")
    every.sort()
    if every:
        out.append(f"{len(every)} rows in both: SECOND / FIRST median {quantile(every, 0.5):.3f}, "
                   f"10th percentile {quantile(every, 0.1):.3f}, 90th {quantile(every, 0.9):.3f}")
    else:
        out.append("no rows in both")
    return out


def self_test():
    header = "kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,p90_us"
    first = ["# a comment", header,
             "router,s,8,8,4,2,64,-,0,0,100,0,0",
             "experts,s,8,8,4,1,64,uniform,16,4,1000,0,0",
             "experts,s,8,8,4,1,128,uniform,32,4,2000,0,0",
             "combine,s,8,8,4,2,64,uniform,16,4,50,0,0"]
    second = [header,
              "router,s,8,8,4,2,64,-,0,0,110,0,0",
              "experts,s,8,8,4,1,64,uniform,16,4,1300,0,0",
              "experts,s,8,8,4,1,64,uniform,16,4,1100,0,0",  # timed twice: the median, 1200
              "experts,s,8,8,4,1,128,uniform,32,4,2400,0,0",
              "layer,s,8,8,4,2,64,router,16,4,9,0,0"]  # not in FIRST
    out = report(timings(first), timings(second))
    lines = {tuple(line.split()[:3]): line.split() for line in out[1:-1]}
    assert lines[("s", "experts", "heavy")][3:5] == ["2", "1.200"], out
    assert lines[("s", "router", "light")][3:5] == ["1", "1.100"], out
    assert ("s", "combine", "light") not in lines, out
    assert out[-1].startswith("3 rows in both: SECOND / FIRST median 1.200"), out
    print("ok: compare.py self-test passed")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1]) as f:
        first = timings(f.read().splitlines())
    with open(argv[2]) as f:
        second = timings(f.read().splitlines())
    print("\n".join(report(first, second)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
