#!/usr/bin/env python3
"""The figures docs/validation.md quotes from the H100 measurement, computed from the files here.

    python3 kernels/profiles/summarize.py [--check DOC]

Prints the expert-stage-vs-dense-GEMM table and the PyTorch table as the Markdown rows the
document holds, then the other figures it quotes (router time, GEMM-path A/B, cost per active
expert, the clock log's power-cap count and its first long stretch of heavy work, how the
stages timed alone add up to the layer). With --check DOC, exits 1 unless every table row is in
DOC as printed and every number of the other lines appears in it (a CTest runs this, so the
document cannot drift from the files). Plain Python 3, no packages.
"""
import csv
import os
import re
import sys

here = os.path.dirname(os.path.abspath(__file__))
out = []
print = out.append  # noqa: A001 - collected, then printed or checked
measure = os.path.join(here, "h100-measure")


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


profile = rows(os.path.join(here, "nvidia-h100-80gb-hbm3.csv"))
SHAPES = {"small": (1024, 2048, 16, 2), "mixtral": (4096, 14336, 8, 2), "deepseek": (7168, 2048, 256, 8)}
NAMES = {"small": "small (H 1024, F 2048)", "mixtral": "Mixtral-8x7B (H 4096, F 14336)", "deepseek": "DeepSeek-V3 (H 7168, F 2048)"}


def us(kernel, shape, experts, tokens, dist):
    for r in profile:
        if (r["kernel"], r["shape"], int(r["experts"]), int(r["tokens"]), r["distribution"]) == (kernel, shape, experts, tokens, dist):
            return float(r["median_us"])
    raise KeyError((kernel, shape, experts, tokens, dist))


print("| shape | rows | local experts | expert stage | dense GEMM | share |")
for shape in ("mixtral", "deepseek", "small"):
    h, f, e, _ = SHAPES[shape]
    n = max(int(r["tokens"]) for r in profile if r["kernel"] == "dense_gemm" and r["shape"] == shape)
    dense = n * h * 2 * f * 2 / us("dense_gemm", shape, 1, n, "-") / 1e6
    local = {"mixtral": (1, 8), "deepseek": (1, 8, 256), "small": (1, 16)}[shape]
    tf = [n * 3 * h * f * 2 / us("experts", shape, l, n, "uniform") / 1e6 for l in local]
    print(f"| {NAMES[shape]} | {n:,} | {' / '.join(map(str, local))} | {' / '.join(f'{t:.0f}' for t in tf)} TFLOP/s "
          f"| {dense:.0f} TFLOP/s | {' / '.join(f'{100 * t / dense:.0f}' for t in tf)} % |")

torch = rows(os.path.join(measure, "torch.csv"))
print("")
print("| shape | tokens | moesim layer | PyTorch `_grouped_mm` | PyTorch loop | PyTorch best / ours |")
for shape, label in (("small", "small"), ("mixtral", "Mixtral"), ("deepseek", "DeepSeek")):
    e = SHAPES[shape][2]
    tokens = sorted({int(r["tokens"]) for r in torch if r["shape"] == shape})
    t = {(int(r["tokens"]), r["variant"]): float(r["median_us"]) for r in torch if r["shape"] == shape}
    ours = [us("layer", shape, e, n, "router") for n in tokens]
    fmt = lambda v: " / ".join(f"{x / 1000:.2f}" if x < 10000 else f"{x / 1000:.1f}" for x in v)  # noqa: E731
    ratio = [min(t[(n, "grouped_mm")], t[(n, "loop")]) / o for n, o in zip(tokens, ours)]
    print(f"| {label} | {' / '.join(map(str, tokens))} | {fmt(ours)} ms | {fmt([t[(n, 'grouped_mm')] for n in tokens])} ms "
          f"| {fmt([t[(n, 'loop')] for n in tokens])} ms | {' / '.join(f'{r:.1f}' for r in ratio)} |")

print("")
print(f"router, DeepSeek, 4096 tokens: {us('router', 'deepseek', 256, 4096, '-'):.0f} us")
ab = {(r["shape"], int(r["local_experts"]), int(r["rows"])): r for r in rows(os.path.join(measure, "gemm_ab.csv"))}
for key in (("mixtral", 8, 131072), ("deepseek", 256, 256)):
    r = ab[key]
    print(f"experts {key[0]}, {key[1]} experts, {key[2]:,} rows: grouped {float(r['grouped_us']) / 1000:.3g} ms, "
          f"loop {float(r['loop_us']) / 1000:.3g} ms")
one = [us("experts", "mixtral", 8, n, "uniform") / a for n, a in ((1, 1), (2, 2), (4, 4))]
print(f"Mixtral expert stage, 1-4 rows on 1-4 active experts: {min(one):.0f}-{max(one):.0f} us per active expert")
smi = os.path.join(measure, "earlier-router", "heldout-repeat-nvidia-smi.csv")
with open(smi) as f:
    samples = [line.split(", ") for line in f.read().splitlines()[1:]]
busy = [s for s in samples if float(s[3].split()[0]) > 200]
capped = [s for s in busy if int(s[5], 16) & 0x4]
clocks = [int(s[1].split()[0]) for s in busy]
print(f"clock log: {len(capped)} of {len(busy)} samples above 200 W under the software power cap, SM clock {min(clocks)}-{max(clocks)} MHz")
# The first long stretch of heavy work in that log (5 s or more of samples above 150 W): how
# long the top clock held, where the power cap took over, the clock under it, and after the end.
watts = [float(s[3].split()[0]) for s in samples]
i = 1
while True:
    while watts[i] <= 150 or watts[i - 1] > 150:
        i += 1
    j = next(k for k in range(i, len(samples)) if watts[k] <= 150) - 1
    if j - i >= 20:
        break
    i = j + 1
while int(samples[j][5], 16) & 0x4 == 0:
    j -= 1  # the last sample under the cap
cap = next(k for k in range(i, j) if int(samples[k][5], 16) & 0x4)
mhz = lambda s: int(s[1].split()[0])  # noqa: E731
hms = lambda s: f"{s[0].split()[1][3:5]}:{float(s[0].split()[1][6:]):04.1f}"  # noqa: E731 - MM:SS.s
top = max(k for k in range(i, cap) if mhz(samples[k]) == 1980)
settled = sorted(mhz(samples[k]) for k in range(cap + 3, j + 1) if int(samples[k][5], 16) & 0x4)
mid = settled[len(settled) // 4], settled[3 * len(settled) // 4]
print(f"clock log, heavy work from {samples[i][0].split()[1][:2]}:{hms(samples[i])}: {mhz(samples[top])} MHz up to {hms(samples[top])}, "
      f"{mhz(samples[cap])} MHz at {hms(samples[cap])} under the cap, from 0.75 s later {settled[0]}-{settled[-1]} MHz, "
      f"the middle half {mid[0]}-{mid[1]}, under the cap until {hms(samples[j])}, "
      f"{mhz(samples[j + 2])} MHz at {hms(samples[j + 2])}")
print(f"compute-bound work at {mid[0]}-{mid[1]} MHz instead of 1980: {1980 / mid[1]:.2f}-{1980 / mid[0]:.2f} times as long")
# One measurement of the sweep's whole layer: 3 warm-up runs and 20 timed ones (7 past 2 ms).
spans = [(3 + (7 if us("layer", "mixtral", 8, n, "router") > 2000 else 20)) * us("layer", "mixtral", 8, n, "router") / 1000
         for n in (1024, 2048, 4096)]
print(f"one measurement of Mixtral's whole layer at 1,024-4,096 tokens: {min(spans):.0f}-{max(spans):.0f} ms")

# The same run's held-out cases with each stage also timed alone right after the whole layer.
st = rows(os.path.join(measure, "earlier-router", "heldout-stages.csv"))
diff = [100 * (sum(float(r[k]) for k in ("router_us", "permute_us", "experts_us", "combine_us")) - float(r["layer_us"]))
        / float(r["layer_us"]) for r in st]
dev = sorted(abs(x) for x in diff)
print(f"stages timed alone after the layer, {len(diff)} cases: the four add up to the layer within {dev[len(dev) // 2]:.1f} % "
      f"(median), {sum(x <= 3 for x in dev)} within 3 %, {sum(x <= 5 for x in dev)} within 5 %, {min(diff):+.1f} % to {max(diff):+.1f} %")
small3 = {p: [float(r["layer_us"]) for r in st if r["shape"] == "small" and r["tokens"] == "3" and r["pass"] == p] for p in ("1", "2")}
mean = {p: sum(v) / len(v) for p, v in small3.items()}
print(f"small shape, 3 tokens, the same four cases twice in one run: {min(small3['1']):.0f}-{max(small3['1']):.0f} us, "
      f"then {min(small3['2']):.0f}-{max(small3['2']):.0f} us ({100 * (mean['2'] / mean['1'] - 1):.0f} % slower on average)")
inlayer = [float(r["experts_us"]) for r in st if r["shape"] == "mixtral" and r["tokens"] == "1536"]
sweep = {n: [us("experts", "mixtral", 8, n, d) for d in ("uniform", "zipf:0.8", "zipf:1.2", "hot:0.5")] for n in (2048, 4096)}
print(f"Mixtral expert stage at 3,072 rows inside the layer: {min(inlayer):.0f}-{max(inlayer):.0f} us; "
      f"the sweep at 2,048 rows {min(sweep[2048]):.0f}-{max(sweep[2048]):.0f} us, at 4,096 rows {min(sweep[4096]):.0f}-{max(sweep[4096]):.0f} us")

# DeepSeek at 1536 tokens (12,288 rows over 256 experts, grouped GEMMs): the expert stage timed
# alone after the layer (the earlier run, first pass) against the 64-row tiles its histogram
# fills (sum over experts of ceil(rows / 64); the routings are the same in both runs).
hist = {(r["file"], r["shape"], r["tokens"], r["distribution"]): [int(n) for n in r["counts"].split()]
        for r in rows(os.path.join(measure, "histograms.csv"))}
tiles = lambda counts: sum(-(-n // 64) for n in counts)  # noqa: E731
cases = sorted((tiles(hist[("heldout", "deepseek", "1536", r["distribution"])]), float(r["experts_us"]), r["distribution"])
               for r in st if r["shape"] == "deepseek" and r["tokens"] == "1536" and r["pass"] == "1")
print("DeepSeek expert stage at 12,288 rows, by 64-row tiles: " + ", ".join(f"{d} {t} tiles {u:.0f} us" for t, u, d in cases))

# Mixtral at 6,144 tokens (12,288 rows over 8 experts): the four held-out routings fill nearly
# the same 64-row tiles, so the profile gives them one expert-stage time, while the measured
# layers spread; and the sweep's expert stage timed on its own runs above its share of the
# sweep's own whole layer (the layer row at 4,096 tokens against its other stages plus the
# expert stage at 8,192 rows over 8 experts).
held = rows(os.path.join(measure, "heldout.csv"))
m6144 = [r for r in held if r["shape"] == "mixtral" and r["tokens"] == "6144"]
print(f"Mixtral held-out at 6,144 tokens: {min(int(r['row_tiles']) for r in m6144)}-{max(int(r['row_tiles']) for r in m6144)} tiles, "
      f"{min(float(r['median_us']) for r in m6144):.0f}-{max(float(r['median_us']) for r in m6144):.0f} us")
rest = us("router", "mixtral", 8, 4096, "-") + us("permute", "mixtral", 8, 4096, "uniform") + us("combine", "mixtral", 8, 4096, "uniform")
alone = [us("experts", "mixtral", 8, 8192, d) for d in ("uniform", "zipf:0.8", "zipf:1.2", "hot:0.5")]
print(f"Mixtral sweep at 4,096 tokens: the whole layer {us('layer', 'mixtral', 8, 4096, 'router'):.0f} us, router, permute and "
      f"combine {rest:.0f} us, the expert stage alone at 8,192 rows {min(alone):.0f}-{max(alone):.0f} us")

if len(sys.argv) == 3 and sys.argv[1] == "--check":
    with open(sys.argv[2], encoding="utf-8") as f:
        doc = f.read()
    missing = [line for line in out if line.startswith("|") and line not in doc]
    for line in out:
        if line and not line.startswith("|"):
            text = line.split(":", 1)[1]
            missing += [f"{n} (from: {line})" for n in re.findall(r"\d[\d,.]*\d|\d", text) if n not in doc]
    for m in missing:
        sys.stderr.write(f"not in {sys.argv[2]}: {m}\n")
    sys.exit(1 if missing else 0)
sys.stdout.write("\n".join(out) + "\n")
