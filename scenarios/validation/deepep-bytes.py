#!/usr/bin/env python3
"""The bytes DeepEP's benchmarks count per rank, in expectation over their routing, and the
kernel times its published bandwidths imply (docs/validation.md, "DeepEP's all-to-all kernels").

Normal kernels (tests/test_internode.py, test_intranode.py): 4096 tokens per rank, 256 experts,
top-8 within the top-4 of one group per node (scores i.i.d. |N(0, 1)| + 1; a group's score is its
best expert's). Dispatch bandwidth = tokens x nodes reached (own node included) x 7392 B (FP8:
7168 values + 56 fp32 scales) / time over RDMA, or tokens received (own included) x 7392 B / time
over NVLink within one node; combine the same rows in BF16 (14336 B).
Low-latency kernels (tests/test_low_latency.py): 128 tokens per rank, top-8 of 256, every
(token, expert) pair one message of 7168 + 224 + 16 B (dispatch) or 14336 B (combine).

With one to four nodes every group is chosen, and the experts are a uniform 8 of 256: the
expectations are closed forms. With eight nodes the choice of groups by their best expert makes
a token reach more of its four groups than a uniform draw would; that expectation is estimated
from 100,000 tokens drawn as the benchmark draws them (fixed seed)."""
import re
import sys
import random
from math import comb

TOKENS, EXPERTS, TOPK, GPN = 4096, 256, 8, 8
FP8_ROW, BF16_ROW = 7168 + 7168 // 128 * 4, 7168 * 2

# Published (DeepEP docs/legacy.md): normal kernels, bottleneck bandwidth in GB/s.
NORMAL = {8: (153, 158), 16: (43, 43), 32: (58, 57), 64: (51, 50)}
# Low-latency kernels: dispatch and combine latency in us.
LOW_LATENCY = {8: (77, 114), 16: (118, 195), 32: (155, 273), 64: (173, 314), 128: (192, 369), 256: (194, 360)}


def nodes_reached(nodes, draws=100_000, seed=1):
    """Expected nodes a token's experts span (its own counted when reached), by the benchmark's routing."""
    groups = min(nodes, 4)
    per_node = EXPERTS // nodes
    if groups == nodes:  # every group chosen: a uniform 8 of 256
        return nodes * (1 - comb(EXPERTS - per_node, TOPK) / comb(EXPERTS, TOPK))
    rng = random.Random(seed)
    total = 0
    for _ in range(draws):
        scores = [abs(rng.gauss(0, 1)) + 1 for _ in range(EXPERTS)]
        best = [max(scores[n * per_node:(n + 1) * per_node]) for n in range(nodes)]
        chosen = sorted(range(nodes), key=lambda n: -best[n])[:groups]
        pool = [e for n in chosen for e in range(n * per_node, (n + 1) * per_node)]
        top = sorted(pool, key=lambda e: -scores[e])[:TOPK]
        total += len({e // per_node for e in top})
    return total / draws


def normal_times():
    """EP -> (tokens counted per rank, dispatch us, combine us) implied by the published bandwidths."""
    out = {}
    for ep, (disp_gbs, comb_gbs) in NORMAL.items():
        if ep == GPN:  # one node: every token a rank receives, its own included
            counted = GPN * TOKENS * (1 - comb(EXPERTS - EXPERTS // GPN, TOPK) / comb(EXPERTS, TOPK))
        else:
            counted = TOKENS * nodes_reached(ep // GPN)
        out[ep] = (counted, counted * FP8_ROW / disp_gbs / 1e3, counted * BF16_ROW / comb_gbs / 1e3)
    return out


def check(doc):
    """Every DeepEP time in the doc's normal-kernel table is the one computed here."""
    times = normal_times()
    rows = re.findall(r"^\| (\d+) \| (dispatch|combine) \| ([0-9.]+) \|", open(doc, encoding="utf-8").read(), re.M)
    if len(rows) != 2 * len(times):
        sys.exit(f"{doc}: expected {2 * len(times)} rows of the normal-kernel table, found {len(rows)}")
    bad = [f"EP{ep} {phase}: the doc says {quoted}, computed {times[int(ep)][1 if phase == 'dispatch' else 2]:.1f}"
           for ep, phase, quoted in rows if f"{times[int(ep)][1 if phase == 'dispatch' else 2]:.1f}" != quoted]
    if bad:
        sys.exit("\n".join(bad))
    print(f"{doc}: the {len(rows)} DeepEP kernel times agree")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
        return
    print("normal kernels: EP, tokens counted per rank, dispatch us, combine us (published bandwidth -> time)")
    for ep, (counted, dispatch, combine) in normal_times().items():
        print(f"  EP{ep:<4d} {counted:9.1f} tokens  dispatch {dispatch:7.1f} us  combine {combine:7.1f} us")
    # The low-latency table gives times; its bandwidth column follows from them with the bytes
    # above (10 of the 1024 selections are masked): 98, 63, 48, 43, 39, 39 and 127, 74, 53, 46,
    # 39, 40 GB/s, as published.
    selections = 128 * TOPK - 10
    print("low-latency kernels: EP, published dispatch and combine us, and the GB/s they imply")
    for ep, (d, c) in LOW_LATENCY.items():
        print(f"  EP{ep:<4d} dispatch {d:4d} us {selections * (FP8_ROW + 16) / d / 1e3:5.1f} GB/s"
              f"  combine {c:4d} us {selections * BF16_ROW / c / 1e3:5.1f} GB/s")


if __name__ == "__main__":
    main()
