#!/usr/bin/env python3
"""Random combinations of scenario features run, or are refused with a scenario error; never more.

Each case takes one of two small bases (a DeepSeek-like model with MLA, shared experts, dense
layers and an LM head on 2 x 8 H800; a Mixtral-like one with grouped-query attention on 2 x 8
H100) and switches on, each with probability 0.3, one variant of every feature below (workload
kind, pipeline schedules, overlap, recomputation, gradient sync, sharded weights, FP8, tensor parallelism, EP
size, expert tensor parallelism, MTP, compute noise, network model, all-to-all algorithm, capacity and drops, routing laws,
placement, topology, AMD GPUs on mesh nodes, a released model's config.json...). Many combinations are not modelled and must be refused: exit code 2
with a one-line message naming the key. A case that runs must write reports that hold together:
no NaN or infinite value in any CSV, the critical GPU's stage columns adding up to the step time,
every routed assignment computed or dropped, tokens/s equal to the step's tokens over its time,
memory counted, and never less than `moesim validate`'s floor. Anything else (a crash, an internal error, a hang past the time limit) fails,
printing the command that reproduces it.

Usage: feature_combinations.py MOESIM CASES SEED
"""
import csv
import glob
import math
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile

BASES = {
    "deepseek-like": """\
description: feature-combination base, DeepSeek-like
cluster: {nodes: 2, gpus_per_node: 8, gpu: H800-SXM, scale_out: {topology: two_tier, nic_bandwidth: 400Gbps}}
model: {name: ds, moe_layers: 4, dense_layers: 1, dense_ffn: 2048, hidden: 512, expert_ffn: 256, experts: 64,
  top_k: 6, shared_experts: 1, attention_heads: 8, vocab: 4000, dtype: bf16,
  mla: {q_lora_rank: 128, kv_lora_rank: 64, qk_nope_head_dim: 32, qk_rope_head_dim: 16, v_head_dim: 32}}
parallelism: {ep: 16}
workload: {kind: training, tokens_per_gpu: 128, sequence_length: 128, seed: 1}
routing: {distribution: zipf, zipf_s: 0.8, capacity_factor: 1.25}
network: {model: analytical, all_to_all: hierarchical}
output: {timeline: off}
""",
    "mixtral-like": """\
description: feature-combination base, Mixtral-like
cluster: {nodes: 2, gpus_per_node: 8, gpu: H100-SXM, scale_out: {topology: two_tier, nic_bandwidth: 400Gbps}}
model: {name: mx, moe_layers: 4, hidden: 512, expert_ffn: 1024, experts: 8, top_k: 2, attention_heads: 8, kv_heads: 2, dtype: bf16}
parallelism: {ep: 8}
workload: {kind: training, tokens_per_gpu: 128, sequence_length: 128, seed: 1}
routing: {distribution: uniform}
network: {model: analytical}
output: {timeline: off}
""",
}

DECODE = ["workload.kind=decode", "workload.sequence_length=~"]
# Released models' config.json (model.hf_config), in place of the base's model: first, so that
# the other features' model keys land on it; narrowed to two MoE layers.
MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scenarios", "models")
FEATURES = [
    [["model=~", f"model.hf_config={MODELS}/{name}", "model.moe_layers=2", "model.hidden=512"]
     for name in ("olmoe-1b-7b-0924.json", "deepseek-v3.json", "gpt-oss-120b.json", "qwen3-30b-a3b.json", "llama-4-maverick.json",
                  "qwen3-next-80b-a3b.json")],
    [["workload.kind=forward"], ["workload.kind=prefill"], ["workload.kind=prefill", "workload.cached_prefix=300"],
     ["workload.kind=prefill", "model.kv_cache_dtype=fp8"],
     DECODE + ["workload.context_length=512"],
     DECODE + ["workload.context_length=1024", "workload.draft_tokens=1", "workload.acceptance_rate=0.85", "model.mtp_modules=1"],
     DECODE + ["workload.context_length=300", "model.kv_cache_dtype=fp8"],
     DECODE + ["workload.context_length=1024", "workload.prefill_chunk=64"],
     DECODE + ["workload.context_length=512", "workload.prefill_chunk=1000", "workload.sequence_length=300"],
     DECODE + ["workload.context_length=2048", "workload.context_sigma=1"],
     DECODE + ["workload.context_length=700", "workload.context_sigma=0.6", "workload.context_balance=kv_cache", "workload.draft_tokens=1",
               "workload.acceptance_rate=0.8", "model.mtp_modules=1"]],
    [["workload.tokens_per_gpu=1"], ["workload.tokens_per_gpu=2"], ["workload.tokens_per_gpu=7"], ["workload.tokens_per_gpu=64"],
     ["workload.tokens_per_gpu=512"]],
    [["workload.micro_batches=2"], ["workload.micro_batches=3"], ["workload.micro_batches=8"]],
    [["parallelism.pp=2"], ["parallelism.pp=2", "parallelism.virtual_stages=2"],
     ["parallelism.pp=2", "workload.pipeline_schedule=dualpipev"], ["parallelism.pp=2", "workload.pipeline_schedule=dualpipe"],
     ["parallelism.pp=2", "workload.pipeline_schedule=zb_h1"], ["parallelism.pp=2", "workload.pipeline_schedule=gpipe"],
     ["parallelism.pp=2", "parallelism.pipeline_layers=[1,3]"],
     ["parallelism.pp=2", "parallelism.virtual_stages=2", "workload.micro_batches=4", "workload.overlap=forward_backward"]],
    [["workload.overlap=two_batch"], ["workload.overlap=two_batch_staggered"],
     ["workload.overlap=forward_backward", "workload.micro_batches=2"], ["workload.overlap=two_batch", "workload.comm_sm_fraction=0.3"]],
    [["workload.recompute=attention"], ["workload.recompute=full"], ["workload.recompute=full", "workload.recompute_layers=1"],
     ["workload.recompute=selective", "workload.recompute_modules=[layernorm]"]],
    [["workload.gradient_sync=ring"], ["workload.gradient_sync=hierarchical", "workload.gradient_sync_buckets=3"],
     ["workload.gradient_sync=nvls"],
     ["workload.gradient_sync=hierarchical", "workload.optimizer_sharding=true", "workload.gradient_dtype=fp32",
      "workload.adam_moments_dtype=bf16"],
     ["workload.gradient_sync=hierarchical", "workload.parameter_sharding=true"],
     ["workload.gradient_sync=ring", "workload.parameter_sharding=true", "workload.gradient_dtype=fp32"],
     ["workload.gradient_sync=hierarchical", "workload.parameter_sharding=true", "workload.shard_group=8"],
     ["workload.gradient_sync=ring", "workload.optimizer_sharding=true", "workload.shard_group=8"]],
    [["compute.gemm_dtype=fp8"], ["compute.gemm_dtype=fp8", "workload.activation_dtype=fp8"], ["model.weight_dtype=fp8"],
     ["model.expert_weight_dtype=mxfp4"], ["compute.gemm_dtype=fp8", "workload.param_gather_dtype=fp8"]],
    [["workload.steps=3"], ["workload.steps=2", "placement.policy=eplb", "placement.refresh_every=1", "routing.rotate=3"]],
    [["parallelism.tp=2"], ["parallelism.tp=4"], ["parallelism.tp=8"], ["parallelism.tp=2", "network.tp_collectives=nvls"]],
    [["parallelism.cp=2", "workload.sequence_length=256"], ["parallelism.cp=4", "workload.sequence_length=512"],
     ["parallelism.cp=2", "workload.sequence_length=256", "parallelism.cp_comm=ring"],
     ["parallelism.cp=2", "workload.sequence_length=256", "parallelism.cp_gather=latent"]],
    [["parallelism.ep=1"], ["parallelism.ep=2"], ["parallelism.ep=4"], ["parallelism.ep=8"], ["parallelism.ep=16"]],
    [["model.mtp_modules=1"], ["model.vocab=~"], ["model.dense_layers=0"], ["model.dense_layers=2"]],
    [["model.sliding_window=64"], ["model.sliding_window=100", "model.full_attention_every=2"],
     ["model.mla.index_topk=64", "model.mla.index_n_heads=4", "model.mla.index_head_dim=32"],
     ["model.linear_attention={key_heads: 2, value_heads: 4, key_dim: 32, value_dim: 32}", "model.full_attention_every=2"],
     ["model.linear_attention={key_heads: 4, value_heads: 8, key_dim: 16, value_dim: 32, state_dtype: bf16}"]],
    [["compute.model=roofline"], ["compute.jitter=0.1"], ["compute.straggler_probability=0.3", "compute.straggler_speed=0.5"],
     ["compute.gpu_speed={3: 0.5}"], ["compute.kernel_overhead=2us"], ["compute.elementwise_kernels=true"],
     ["compute.elementwise_kernels=true", "workload.recompute=selective", "workload.recompute_modules=[layernorm, moe_act]"]],
    [["network.model=maxmin"], ["network.model=maxmin", "network.resolve_interval=1us"]],
    [["network.all_to_all=direct"], ["network.all_to_all=hierarchical", "network.forward_chunks=4"],
     ["network.all_to_all=low_latency", "network.message_overhead=0.1us"], ["network.dispatch_dtype=fp8"]],
    [["routing.capacity_factor=dropless"], ["routing.capacity_factor=0.5"], ["routing.capacity_factor=1.0", "routing.drop_policy=gate"],
     ["routing.capacity_factor=1.5", "routing.drop_policy=pad"]],
    [["routing.distribution=hot_experts", "routing.hot_experts=2", "routing.hot_fraction=0.5", "routing.zipf_s=~"],
     ["routing.distribution=lognormal", "routing.sigma=1", "routing.zipf_s=~"],
     ["routing.groups=8", "routing.max_groups=2", "routing.group_choice=best_two"], ["routing.layer_correlation=0.5"],
     ["routing.dirichlet_concentration=10"], ["routing.burst_probability=0.5", "routing.burst_fraction=0.3"]],
    [["placement.policy=round_robin"], ["placement.policy=greedy"], ["placement.policy=eplb", "placement.redundant_experts=16"],
     ["placement.policy=eplb", "placement.redundant_experts=16", "placement.expert_groups=8", "placement.replica_choice=least_loaded"],
     ["placement.policy=eplb", "placement.load=observed", "placement.history=2", "routing.step=3"]],
    [["cluster.scale_out.topology=rail"], ["cluster.scale_out.topology=multi_plane"], ["cluster.scale_out.topology=single_switch"],
     ["cluster.scale_out.oversubscription=2", "cluster.scale_out.spines=2", "cluster.scale_out.nodes_per_leaf=1"],
     ["cluster.scale_out.nic_speed={3: 0.5, 12: 0.25}"]],
    [["cluster.gpu_hour_price=2"], ["cluster.gpu_hour_price={H100: 2.5, H800-SXM: 2, MI355X: 3}"], ["cluster.gpu=MI300X"], ["cluster.gpu=MI355X", "cluster.node.link_bandwidth=48GB/s"],
     ["cluster.gpu=B300"], ["cluster.gpu=GB300", "model.weight_dtype=fp4", "compute.gemm_dtype=fp4"],
     ["cluster.node.fabric=mesh", "cluster.node.link_bandwidth=64GB/s"]],
    [["reliability.gpu_mtbf_hours=1000", "reliability.restart=5min", "reliability.checkpoint_bandwidth=100GB/s"],
     ["reliability.gpu_mtbf_hours=1e5", "reliability.restart=1h", "reliability.checkpoint_time=3s", "reliability.checkpoint_every_steps=5"],
     ["reliability.gpu_mtbf_hours=300", "reliability.restart=10min", "reliability.checkpoint=async", "reliability.checkpoint_bandwidth=50GB/s"],
     ["workload.train_tokens=5e11"],
     ["reliability.gpu_mtbf_hours=500", "reliability.restart=10min", "reliability.checkpoint_time=5s", "reliability.spare_nodes=1",
      "reliability.repair_time=24h"]],
    [["parallelism.etp=2"], ["parallelism.etp=4", "parallelism.ep=4"], ["parallelism.etp=2", "parallelism.ep=2"],
     ["parallelism.shared_experts=replicated"]],
]
STAGES = ["attention_us", "router_us", "shared_experts_us", "dispatch_wait_us", "experts_us", "combine_wait_us", "reduce_us",
          "optimizer_us", "grad_sync_us", "dense_us", "pipeline_wait_us", "lm_head_us", "tp_wait_us", "cp_wait_us",
          "param_gather_wait_us"]


def check_reports(out):
    problems = []
    for path in glob.glob(os.path.join(out, "*.csv")):
        rows = list(csv.reader(open(path)))
        for row in rows[1:]:
            for col, value in zip(rows[0], row):
                if value.strip().lower() in ("nan", "-nan", "inf", "-inf"):
                    problems.append(f"{os.path.basename(path)}: {col} is {value}")
                    break
    row = next(csv.DictReader(open(os.path.join(out, "summary.csv"))))
    step = float(row["step_time_us"])
    if not step > 0:
        problems.append(f"step time {step}")
    stages = sum(float(row[c]) for c in STAGES)
    if not math.isclose(stages, step, rel_tol=1e-6, abs_tol=1e-3):
        problems.append(f"the stage columns add up to {stages} us, the step is {step} us")
    if int(row["routed"]) != int(row["computed"]) + int(row["dropped"]):
        problems.append(f"routed {row['routed']} != computed {row['computed']} + dropped {row['dropped']}")
    expected = float(row["tokens_per_step"]) / (step / 1e6)
    if not math.isclose(float(row["tokens_per_s"]), expected, rel_tol=1e-3, abs_tol=1):
        problems.append(f"tokens_per_s {row['tokens_per_s']} against {expected:.1f} from the step")
    if row["goodput"]:
        goodput = float(row["goodput"])
        if not 0 < goodput <= 1:
            problems.append(f"goodput {goodput}")
        if not math.isclose(float(row["goodput_tokens_per_s"]), float(row["tokens_per_s"]) * goodput, rel_tol=1e-3, abs_tol=1):
            problems.append(f"goodput_tokens_per_s {row['goodput_tokens_per_s']} against {row['tokens_per_s']} x {goodput}")
    if row["train_tokens"] and not float(row["train_days"]) > 0:
        problems.append(f"train_days {row['train_days']} for {row['train_tokens']} tokens")
    if not float(row["memory_gb_max"]) > 0:
        problems.append("no memory counted")
    return problems


def main():
    moesim, cases, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ran = refused = 0
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in BASES.items():
            with open(os.path.join(tmp, name + ".yaml"), "w") as f:
                f.write(text)
        for i in range(cases):
            rng = random.Random(seed * 1_000_003 + i)
            base = rng.choice(sorted(BASES))
            sets = [s for variants in FEATURES if rng.random() < 0.3 for s in rng.choice(variants)]
            out = os.path.join(tmp, f"out-{i}")
            cmd = [moesim, "run", os.path.join(tmp, base + ".yaml"), "--out", out, "-q"]
            for s in sets:
                cmd += ["--set", s]
            shown = f"moesim run <{base} base> -q " + " ".join("--set " + shlex.quote(s) for s in sets)
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                failures.append(f"case {i}: still running after 120 s: {shown}")
                continue
            if p.returncode == 0:
                ran += 1
                for problem in check_reports(out):
                    failures.append(f"case {i}: {problem}: {shown}")
                # validate's memory floor (what no routing changes) never exceeds what the run needed.
                v = subprocess.run([moesim, "validate"] + cmd[2:3] + cmd[6:], capture_output=True, text=True, timeout=120)
                floor = re.search(r"memory: at least ([0-9.]+) GB", v.stdout)
                needed = float(next(csv.DictReader(open(os.path.join(out, "summary.csv"))))["memory_gb_max"])
                if v.returncode != 0 or not floor:
                    failures.append(f"case {i}: validate gave no memory floor ({v.returncode}: {v.stderr.strip()[-300:]!r}): {shown}")
                elif float(floor.group(1)) > needed + 0.051:
                    failures.append(f"case {i}: validate's memory floor {floor.group(1)} GB is above the run's {needed} GB: {shown}")
            elif p.returncode == 2:
                refused += 1
                message = p.stderr.strip()
                # A scenario error names the file and the key: 'FILE: --set KEY: ...' or 'FILE:L:C: KEY: ...'.
                if "internal error" in message or not message.startswith(os.path.join(tmp, base + ".yaml")):
                    failures.append(f"case {i}: refused without naming the scenario: {message!r}: {shown}")
            else:
                failures.append(f"case {i}: exit code {p.returncode}: {p.stderr.strip()[-800:]!r}: {shown}")
    print(f"{cases} cases (seed {seed}): {ran} ran, {refused} refused, {len(failures)} failed")
    for f in failures:
        print("FAIL", f)
    if ran < cases // 5:
        print(f"FAIL: only {ran} of {cases} cases ran; the combinations no longer exercise the simulator")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
