"""The same MoE layer in PyTorch (bf16), the yardstick for the CUDA layer's whole-layer time.

    python3 kernels/torch_layer.py OUT.csv [shape ...] [--backward]   (shapes: small mixtral deepseek)

Per shape and token count it times, with CUDA events after warm-up (median of 20; heavy work in
the GPU's sustained state, as kernels/profile.cu times it), the forward pass written two ways
and keeps both rows:
  grouped_mm  router GEMM, softmax (or sigmoid + bias with group-limited top-k), top-k and
              renormalised gates, a stable argsort by expert, torch._grouped_mm for gate/up and
              down around SiLU * up, index_add_ to combine;
  loop        the same with one torch.mm per expert (counts read back to the host).
The two are checked against each other (relative error of the outputs) before timing. With
--backward, also each one's backward pass (torch.autograd: the token, router and expert weight
gradients; variant NAME_backward), checked on the token gradient against the loop's. Shapes
and the routing rule are those of kernels/profile.cu; weights and tokens are random (the
timing does not depend on the values).
"""
import sys
import time

import torch

SHAPES = {
    "small": dict(hidden=1024, ffn=2048, experts=16, top_k=2, sigmoid=False, groups=1, max_groups=0),
    "mixtral": dict(hidden=4096, ffn=14336, experts=8, top_k=2, sigmoid=False, groups=1, max_groups=0),
    "deepseek": dict(hidden=7168, ffn=2048, experts=256, top_k=8, sigmoid=True, groups=8, max_groups=4),
}
TOKENS = {"small": [256, 4096, 16384], "mixtral": [256, 4096, 16384], "deepseek": [256, 4096, 16384]}


def route(x, wr, bias, c):
    logits = (x @ wr).float()
    scores = torch.sigmoid(logits) if c["sigmoid"] else torch.softmax(logits, dim=-1)
    sel = scores + bias
    if c["max_groups"] > 0 and c["groups"] > 1:
        t = x.shape[0]
        g = sel.view(t, c["groups"], -1).topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.topk(c["max_groups"], dim=-1).indices, True)
        sel = sel.masked_fill(~keep.repeat_interleave(c["experts"] // c["groups"], dim=1), float("-inf"))
    idx = sel.topk(c["top_k"], dim=-1).indices
    gates = scores.gather(1, idx)
    return idx, gates / gates.sum(-1, keepdim=True)


def permute(x, idx, c):
    flat = idx.flatten()
    order = torch.argsort(flat, stable=True)
    token = order // c["top_k"]
    counts = torch.bincount(flat, minlength=c["experts"])
    return token, order, counts, x.index_select(0, token)


def combine(y, token, order, gates, t, c):
    out = torch.zeros(t, c["hidden"], dtype=torch.float32, device=y.device)
    out.index_add_(0, token, y.float() * gates.flatten()[order].unsqueeze(1))
    return out.to(torch.bfloat16)


def layer_grouped(x, w, c):
    idx, gates = route(x, w["router"], w["bias"], c)
    token, order, counts, xs = permute(x, idx, c)
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    h = torch._grouped_mm(xs, w["gate_up"], offs=offs)
    f = c["ffn"]
    a = torch.nn.functional.silu(h[:, :f]) * h[:, f:]
    y = torch._grouped_mm(a, w["down"], offs=offs)
    return combine(y, token, order, gates, x.shape[0], c)


def layer_loop(x, w, c):
    idx, gates = route(x, w["router"], w["bias"], c)
    token, order, counts, xs = permute(x, idx, c)
    f = c["ffn"]
    y = torch.empty(xs.shape[0], c["hidden"], dtype=torch.bfloat16, device=x.device)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            h = xs[start:start + n] @ w["gate_up"][e]
            y[start:start + n] = (torch.nn.functional.silu(h[:, :f]) * h[:, f:]) @ w["down"][e]
        start += n
    return combine(y, token, order, gates, x.shape[0], c)


def weights(c):
    e, h, f = c["experts"], c["hidden"], c["ffn"]
    dev = "cuda"
    # Stored K-major (the transposed view of N x K), the layout grouped_mm's kernels expect for B.
    gu = (torch.rand(e, 2 * f, h, device=dev, dtype=torch.bfloat16) - 0.5).mul_(2 * (3 / h) ** 0.5).transpose(1, 2)
    dn = (torch.rand(e, h, f, device=dev, dtype=torch.bfloat16) - 0.5).mul_(2 * (3 / f) ** 0.5).transpose(1, 2)
    return dict(
        router=(torch.rand(h, e, device=dev, dtype=torch.bfloat16) - 0.5).mul_(2 * (3 / h) ** 0.5),
        bias=(0.01 * torch.randn(e, device=dev)) if c["sigmoid"] else torch.zeros(e, device=dev),
        gate_up=gu,
        down=dn,
    )


# Heavy work is timed in the GPU's sustained state, as kernels/profile.cu times it (the rule and
# its reasons: kernels/sustain.hpp): a run of 0.5 ms or more is timed only after 2 s of heavy
# work without a pause of more than 0.2 s, a lighter one only 0.3 s or more after heavy work.
SUSTAIN_S, HEAVY_US, PAUSE_S, SETTLE_S = 2.0, 500.0, 0.2, 0.3
heavy_since = heavy_until = None


def time_us(fn, repeats=20):
    global heavy_since, heavy_until
    begin = time.monotonic()
    fn()
    torch.cuda.synchronize()
    second = time.monotonic()
    fn()
    fn()
    torch.cuda.synchronize()
    heavy = 1e6 * (time.monotonic() - second) / 2 >= HEAVY_US
    if heavy:
        if heavy_until is None or begin - heavy_until > PAUSE_S:
            heavy_since = begin
        while time.monotonic() - heavy_since < SUSTAIN_S:
            fn()
            torch.cuda.synchronize()
    elif heavy_until is not None:
        while time.monotonic() - heavy_until < SETTLE_S:
            fn()
            torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(1000.0 * a.elapsed_time(b))
    if heavy:
        heavy_until = time.monotonic()
    times.sort()
    return times[len(times) // 2]


def backward_pass(fn, x, w, c):
    """A function running the backward pass of fn at x (the gradients of x, the router's and the
    experts' weights for a random output gradient), after one forward pass whose graph every
    run reuses; and those gradients, for checking the variants against each other."""
    x = x.detach().requires_grad_()
    params = [w[k].requires_grad_() for k in ("router", "gate_up", "down")]
    out = fn(x, w, c)
    dout = torch.rand_like(out) - 0.5
    run = lambda: torch.autograd.grad(out, [x] + params, dout, retain_graph=True)  # noqa: E731
    return run, run()


def time_backward(out, name, c, w):
    """layer_bwd rows: each variant's backward pass, after checking its token gradient against
    the loop's."""
    for t in TOKENS[name]:
        x = (torch.rand(t, c["hidden"], device="cuda", dtype=torch.bfloat16) - 0.5).mul_(3.4)
        ref = None
        for v, fn in (("loop", layer_loop), ("grouped_mm", layer_grouped)):
            try:  # _grouped_mm may have no backward here, and a large shape's gradients may not fit
                run, grads = backward_pass(fn, x, w, c)
                if ref is None:
                    ref = grads[0].float()
                else:
                    err = ((grads[0].float() - ref).abs().max() / ref.abs().max()).item()
                    print(f"{name} {t}: {v} vs loop token gradient relative error {err:.2e}", flush=True)
                    if not err < 5e-2:
                        continue
                del grads
                us = time_us(run)
            except Exception as e:  # noqa: BLE001 - report and time what runs
                print(f"{name} {t}: {v} backward not timed: {e}", flush=True)
                if ref is None:
                    break  # without the loop's gradient nothing else is checked, so nothing is timed
                continue
            finally:
                torch.cuda.empty_cache()
            out.write(f"{name},{t},{v}_backward,{us:.1f}\n")
            out.flush()
            print(f"{name:8s} {t:6d} {v + '_backward':19s} {us:10.1f} us", flush=True)
            del run  # its graph, before the next variant builds its own
        for k in ("router", "gate_up", "down"):
            w[k].requires_grad_(False)


def main():
    backward = "--backward" in sys.argv[2:]
    args = [a for a in sys.argv[1:] if a != "--backward"]
    out_path, names = args[0], args[1:] or list(SHAPES)
    torch.manual_seed(0)
    with open(out_path, "w") as out:
        out.write(f"# the MoE layer in PyTorch {torch.__version__} on {torch.cuda.get_device_name()}: kernels/torch_layer.py\n")
        out.write("shape,tokens,variant,median_us\n")
        for name in names:
            c = SHAPES[name]
            w = weights(c)
            for t in TOKENS[name]:
                x = (torch.rand(t, c["hidden"], device="cuda", dtype=torch.bfloat16) - 0.5).mul_(3.4)
                with torch.no_grad():
                    ref = layer_loop(x, w, c).float()
                    variants = {"loop": layer_loop}
                    try:
                        got = layer_grouped(x, w, c).float()
                        err = ((got - ref).abs().max() / ref.abs().max()).item()
                        print(f"{name} {t}: grouped_mm vs loop relative error {err:.2e}", flush=True)
                        if err < 2e-2:
                            variants["grouped_mm"] = layer_grouped
                    except Exception as e:  # noqa: BLE001 - report and time what runs
                        print(f"{name} {t}: torch._grouped_mm unavailable: {e}", flush=True)
                    for v, fn in variants.items():
                        us = time_us(lambda: fn(x, w, c))
                        out.write(f"{name},{t},{v},{us:.1f}\n")
                        out.flush()
                        print(f"{name:8s} {t:6d} {v:10s} {us:10.1f} us", flush=True)
            if backward:
                time_backward(out, name, c, w)
            del w
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
