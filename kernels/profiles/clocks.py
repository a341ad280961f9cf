#!/usr/bin/env python3
"""The card's state behind each timed row: moe-profile's timings.csv against the clock log.

    python3 kernels/profiles/clocks.py OUT_DIR/timings.csv OUT_DIR/clocks.csv
    python3 kernels/profiles/clocks.py --self-test

kernels/measure.sh writes both: timings.csv (moe-profile --timings: when each row was timed,
UTC, how long one run took, the seconds of sustained load before it) and clocks.csv (nvidia-smi
every 250 ms, UTC: SM clock, power, temperature, throttle reasons). Each row gets the clock-log
samples taken while it was timed (or the nearest one, within 0.3 s, for a row shorter than the
sampling). Prints, per file and kernel, heavy rows (a run of 0.5 ms or more) and light ones
apart: how many, their SM clock (median and range over the rows' medians) and how many were
timed under the software power cap; then the heavy rows timed at a clock more than 10 % above
the median of their group (the first second of heavy work, before the cap). Plain Python 3.
"""
import csv
import sys
from bisect import bisect_left, bisect_right
from datetime import datetime, timezone

HEAVY_US = 500.0
POWER_CAP = 0x4  # clocks_event_reasons: SW power cap


def stamp(text):
    """nvidia-smi's (and moe-profile's) UTC timestamp, 2026/11/22 18:10:30.347, in seconds."""
    return datetime.strptime(text.strip(), "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def read_clocks(lines):
    samples = []
    for rec in csv.reader(lines, skipinitialspace=True):
        if not rec or rec[0].startswith("timestamp"):
            continue
        try:
            samples.append((stamp(rec[0]), int(rec[1].split()[0]), int(rec[5], 16) & POWER_CAP != 0))
        except (ValueError, IndexError):
            continue  # a line nvidia-smi cut off when it was stopped
    samples.sort()
    return samples


def read_timings(lines):
    return list(csv.DictReader(line for line in lines if not line.startswith("#")))


def state(row, samples, times):
    """(median SM clock, capped) of the samples while `row` was timed, or None."""
    b, e = stamp(row["begin_utc"]), stamp(row["end_utc"])
    inside = samples[bisect_left(times, b):bisect_right(times, e)]
    if not inside:
        k = min(range(max(0, bisect_left(times, b) - 1), min(len(times), bisect_left(times, b) + 1)),
                key=lambda i: abs(times[i] - (b + e) / 2), default=None)
        if k is None or abs(times[k] - (b + e) / 2) > 0.3:
            return None
        inside = [samples[k]]
    mhz = sorted(s[1] for s in inside)
    return mhz[len(mhz) // 2], sum(s[2] for s in inside) * 2 > len(inside)


def report(rows, samples):
    times = [s[0] for s in samples]
    groups, out, fast = {}, [], []
    for r in rows:
        st = state(r, samples, times)
        if st is None:
            continue
        heavy = float(r["run_us"]) >= HEAVY_US
        groups.setdefault((r["file"], r["kernel"], r["shape"], heavy), []).append((st, r))
    out.append(f"{'file':8s} {'kernel':10s} {'shape':9s} {'work':5s} {'rows':>5s} {'SM MHz':>7s} {'range':>11s} {'capped':>7s}")
    for (f, k, sh, heavy), items in sorted(groups.items()):
        mhz = sorted(st[0] for st, _ in items)
        med = mhz[len(mhz) // 2]
        out.append(f"{f:8s} {k:10s} {sh:9s} {'heavy' if heavy else 'light':5s} {len(items):5d} {med:7d} "
                   f"{f'{mhz[0]}-{mhz[-1]}':>11s} {sum(st[1] for st, _ in items):7d}")
        if heavy:
            fast += [(st[0], med, r) for st, r in items if st[0] > 1.1 * med]
    out.append(f"{len(fast)} heavy rows timed more than 10 % above their group's median clock"
               + (":" if fast else ""))
    for mhz, med, r in fast:
        out.append(f"  {r['file']} {r['kernel']} {r['shape']} experts {r['experts']} tokens {r['tokens']} {r['distribution']}: "
                   f"{mhz} MHz (group {med}), sustained {float(r['sustained_s']):.1f} s, at {r['begin_utc']}")
    return out


def self_test():
    clocks = ["timestamp, clocks.current.sm [MHz], clocks.current.memory [MHz], power.draw [W], temperature.gpu, "
              "clocks_event_reasons.active"]
    # 0-1 s idle-ish at 1980, 1-3 s heavy: 1980 for the first second, then capped at 1440.
    for i in range(13):
        t = i * 0.25
        mhz, cap = (1440, 0x4) if t >= 2 else (1980, 0)
        clocks.append(f"2026/11/22 10:00:{t:06.3f}, {mhz} MHz, 2619 MHz, 600.00 W, 50, 0x{cap:016x}")
    clocks.append("2026/11/22 10:00:03.2")  # cut off
    rows = read_timings([
        "# header",
        "file,kernel,shape,experts,top_k,tokens,distribution,begin_utc,end_utc,run_us,sustained_s,attempts,median_us",
        "profile,router,small,16,2,1,-,2026/11/22 10:00:00.100,2026/11/22 10:00:00.110,20,0,1,20",
        "profile,layer,small,16,2,1,router,2026/11/22 10:00:01.100,2026/11/22 10:00:01.150,900,0,1,900",
        "profile,layer,small,16,2,2,router,2026/11/22 10:00:02.200,2026/11/22 10:00:02.700,900,0,1,900",
        "profile,layer,small,16,2,4,router,2026/11/22 10:00:02.800,2026/11/22 10:00:02.900,900,0,1,900",
        "profile,layer,small,16,2,8,router,2026/11/22 10:00:09.000,2026/11/22 10:00:09.010,900,0,1,900",
    ])
    samples = read_clocks(clocks)
    assert len(samples) == 13, samples
    times = [s[0] for s in samples]
    assert state(rows[0], samples, times) == (1980, False), "nearest sample for a short row"
    assert state(rows[2], samples, times) == (1440, True), "the samples inside a long row"
    assert state(rows[4], samples, times) is None, "no sample near: left out"
    out = report(rows, samples)
    assert any(line.split()[:5] == ["profile", "layer", "small", "heavy", "3"] and line.split()[5] == "1440" for line in out), out
    assert out[-2].startswith("1 heavy rows") and "tokens 1 " in out[-1], out
    print("ok: clocks.py self-test passed")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1]) as f:
        rows = read_timings(f.read().splitlines())
    with open(argv[2]) as f:
        samples = read_clocks(f.read().splitlines())
    if not samples:
        sys.stderr.write(f"clocks.py: no clock samples in {argv[2]}\n")
        return 2
    print("\n".join(report(rows, samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
