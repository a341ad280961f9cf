#!/usr/bin/env python3
"""Joins the files of a measurement split over several moe-profile runs into one.

    python3 kernels/profiles/merge.py [--later-wins] OUT IN [IN ...]

A long sweep can be split over runs (kernels/measure.sh ... --shapes deepseek --locals 256,32,16,
then --experts-only --locals 8,4,2,1); each run writes its own files. This joins one kind of
them (all profiles, or all held-out files, or all histograms.csv, ...): the first file's
comment lines and column header, then every file's rows in the order given. It refuses files
that do not belong together:

- a different column header;
- in a profile-format file (the kernel,shape,... header), `#` lines that differ in what was
  measured and how (gpu, sm_count, clocks, CUDA versions, repeats, checked, grid, sustained,
  experts GEMMs); dates may differ and are all kept (`# date: D1, D2`);
- a measurement twice (the same kernel, shape, dimensions, tokens and distribution) in a
  profile (`# moesim kernel profile, the sweep`): the simulator refuses such a profile; a
  held-out or late file may repeat a case (moe-profile --passes). With --later-wins the later
  file's row replaces the earlier one instead (a run cut off part way, then measured again
  from that point), and the count of replaced rows is printed.

Writes nothing unless every check passes. Plain Python 3.
"""
import sys

KEYS_THAT_MAY_DIFFER = ("date",)


def read(path):
    with open(path) as f:
        lines = f.read().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rest = [line for line in lines if line and not line.startswith("#")]
    if not rest:
        raise SystemExit(f"merge.py: {path}: no column header")
    return comments, rest[0], rest[1:]


def fields(comments):
    """The `# key: value` lines of a profile-format file, in order."""
    out = []
    for line in comments:
        key, sep, value = line[2:].partition(": ")
        out.append((key, value) if sep else (line, None))
    return out


def merge(out_path, paths, later_wins=False):
    files = [(p, *read(p)) for p in paths]
    path0, comments0, header0, _ = files[0]
    profile_format = header0.startswith("kernel,shape,")
    for p, comments, header, _ in files[1:]:
        if header != header0:
            raise SystemExit(f"merge.py: {p}: its columns differ from {path0}'s:\n  {header}\n  {header0}")
        if profile_format:
            a = [kv for kv in fields(comments0) if kv[0] not in KEYS_THAT_MAY_DIFFER]
            b = [kv for kv in fields(comments) if kv[0] not in KEYS_THAT_MAY_DIFFER]
            if a != b:
                diff = next((x, y) for x, y in zip(a + [("", "")] * len(b), b + [("", "")] * len(a)) if x != y)
                line = lambda kv: kv[0] if kv[1] is None else f"{kv[0]}: {kv[1]}"  # noqa: E731
                raise SystemExit(f"merge.py: {p} was not measured like {path0}: '{line(diff[1])}' against '{line(diff[0])}'")
    rows = [row for _, _, _, r in files for row in r]
    replaced = 0
    if profile_format and any(line.startswith("# moesim kernel profile, the sweep") for line in comments0):
        seen, where = {}, {}
        for p, _, _, r in files:
            for row in r:
                key = tuple(row.split(",")[:8])
                if key in seen and not later_wins:
                    raise SystemExit(f"merge.py: {','.join(key)} is in both {seen[key]} and {p}")
                replaced += key in seen
                seen[key] = p
                where[key] = row
        # Each measurement once, where it was first seen, with the last file's timing.
        order = []
        for row in rows:
            key = tuple(row.split(",")[:8])
            if where.get(key) is not None:
                order.append(where.pop(key))
        rows = order
    comments = list(comments0)
    if profile_format:
        dates = []
        for _, c, _, _ in files:
            for key, value in fields(c):
                if key == "date" and value not in dates:
                    dates.append(value)
        comments = [f"# date: {', '.join(dates)}" if line.startswith("# date: ") else line for line in comments]
    with open(out_path, "w") as f:
        f.write("\n".join(comments + [header0] + rows) + "\n")
    return len(rows), replaced


def main(argv):
    args = argv[1:]
    later_wins = "--later-wins" in args
    args = [a for a in args if a != "--later-wins"]
    if len(args) < 2:
        sys.stderr.write(__doc__)
        return 2
    n, replaced = merge(args[0], args[1:], later_wins)
    print(f"merge.py: {args[0]}: {n} rows from {len(args) - 1} files"
          + (f", {replaced} replaced by a later file's" if later_wins else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
