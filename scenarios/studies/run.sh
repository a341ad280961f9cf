#!/usr/bin/env bash
# Runs the nine capacity-planning studies and draws their charts.
#   scenarios/studies/run.sh [BUILD_DIR [OUT_DIR]]     (defaults: build, build/studies)
# The sweeps resume where an earlier run stopped. The README shows the PNGs it writes; to
# refresh them: scenarios/studies/run.sh build docs/studies
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
out=${2:-$build/studies}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$build/studies-work
mkdir -p "$work"
moesim=$build/moesim
plot=$root/tools/plot
data=${MOESIM_SHARED_DATA_DIR:-$root/../shared/data}
counts=$data/routing/real-expert-counts.csv
[ -f "$counts" ] || { echo "run.sh: needs $counts (the shared routing data; set MOESIM_SHARED_DATA_DIR)" >&2; exit 2; }

# Study 1: EP size x redundant experts, DeepSeek-V3-shaped prefill.
"$moesim" sweep "$here/ep-redundancy/grid.yaml" --out "$work/ep-redundancy.csv"
"$plot" line "$work/ep-redundancy.csv" --x parallelism.ep --y tokens_per_s --by placement.redundant_experts --logx \
  --title "DeepSeek-V3-shaped prefill on 64 H800: tokens/s (hollow: does not fit 80 GB)" --out "$out/ep-redundancy-tokens.png"
"$plot" line "$work/ep-redundancy.csv" --x parallelism.ep --y memory_gb_max --by placement.redundant_experts --logx \
  --title "Per-GPU memory (bf16 weights; the H800 has 80 GB)" --out "$out/ep-redundancy-memory.png"
"$plot" heatmap "$work/ep-redundancy.csv" --x parallelism.ep --y placement.redundant_experts --value cost_per_million_tokens \
  --title "USD per million prefill tokens at 2 USD/GPU-hour (hatched: does not fit)" --out "$out/ep-redundancy-cost.png"

# Study 2: capacity factor under OLMoE's measured routing. The count trace: one step per text
# domain, OLMoE layers 0, 7, 15 as MoE layers 0, 1, 2.
awk -F, 'BEGIN { print "step,layer,expert,count"; split("arxiv book c4 github tulu wikipedia", d, " ");
                 for (i in d) step[d[i]] = i - 1 }
         $1 == "olmoe" && $2 == "expert_counts" && ($3 in step) {
           print step[$3] "," ($4 == 0 ? 0 : $4 == 7 ? 1 : 2) "," $5 "," $6 }' "$counts" > "$work/olmoe-counts.csv"
"$moesim" sweep "$here/capacity-trace/grid.yaml" --set routing.trace="$work/olmoe-counts.csv" --out "$work/capacity-trace.csv"
"$plot" line "$work/capacity-trace.csv" --x routing.capacity_factor --y drop_rate --by routing.step \
  --where placement.policy=contiguous --title "OLMoE's measured routing, EP16: dropped share per text domain (step)" \
  --out "$out/capacity-drops.png"
"$plot" line "$work/capacity-trace.csv" --x routing.capacity_factor --y step_time_us --by placement.policy \
  --title "Training step time, mean of the 6 text domains" --out "$out/capacity-step-time.png"

# Study 3: attention tensor parallelism x sequences per GPU, DeepSeek-V3-shaped decode.
"$moesim" sweep "$here/attention-tp/grid.yaml" --out "$work/attention-tp.csv"
"$plot" line "$work/attention-tp.csv" --x step_time_us --y tokens_per_s_per_gpu --by parallelism.tp \
  --title "DeepSeek-V3-shaped decode, EP144 on 144 H800: 8 to 120 sequences per GPU" --out "$out/attention-tp.png"

# Study 4: speculative decoding with the MTP module x sequences per GPU, DeepSeek-V3-shaped decode.
"$moesim" sweep "$here/speculative/grid.yaml" --out "$work/speculative.csv"
"$plot" line "$work/speculative.csv" --x time_per_token_us --y tokens_per_s_per_gpu --by workload.draft_tokens \
  --title "DeepSeek-V3-shaped decode, EP144: 0 or 1 MTP draft token, 4 to 120 sequences" \
  --out "$out/speculative.png"

# Study 5: a GB200 NVL72 rack against HGX B200 servers, FP8 and NVFP4, DeepSeek-V3-shaped decode.
"$moesim" sweep "$here/blackwell-decode/grid.yaml" --out "$work/blackwell-decode.csv"
"$plot" line "$work/blackwell-decode.csv" --x time_per_token_us --y tokens_per_s_per_gpu --by cluster.gpu,model.weight_dtype \
  --title "DeepSeek-V3 decode on 72 GPUs: GB200 = one NVL72 rack, B200 = 9 HGX servers" \
  --out "$out/blackwell-decode.png"
# Study 6: a layout search, Mixtral-8x7B training on 64 H100 at one global batch.
"$moesim" sweep "$here/layouts/grid.yaml" --out "$work/layouts.csv"
"$plot" line "$work/layouts.csv" --x parallelism.pp --y tokens_per_s_per_gpu --by parallelism.tp,parallelism.virtual_stages \
  --where parallelism.ep=8 --where workload.optimizer_sharding=true --logx \
  --title "Mixtral-8x7B training on 64 H100, 512 x 4K sequences a step: EP8, sharded optimizer" --out "$out/layouts.png"
# Study 7: chunked prefill, Mixtral-8x7B decode on 16 H100 also prefilling prompts in every step.
"$moesim" sweep "$here/chunked-prefill/grid.yaml" --out "$work/chunked-prefill.csv"
"$plot" line "$work/chunked-prefill.csv" --x prompt_tokens_per_s --y tokens_per_s --by workload.tokens_per_gpu \
  --title "Mixtral-8x7B on 16 H100: chunks of 128 to 2,048 prompt tokens a GPU a step" --out "$out/chunked-prefill.png"
# Study 8: seven released models (their config.json, model.hf_config) decoding on 4 x 8 H200.
"$moesim" sweep "$here/models/grid.yaml" --out "$work/models.csv"
"$plot" line "$work/models.csv" --x time_per_token_us --y tokens_per_s_per_gpu --by model.hf_config \
  --title "Decode on 4 x 8 H200, EP32, 4K contexts, 16-256 sequences a GPU (hollow: over 141 GB)" --out "$out/models.png"
# Study 9: DeepSeek-V3's EP144 decode with sequences of different lengths, as they come or
# dealt to even out the GPUs' KV caches.
"$moesim" sweep "$here/decode-contexts/grid.yaml" --out "$work/decode-contexts.csv"
"$plot" line "$work/decode-contexts.csv" --x workload.context_sigma --y memory_gb_max --by workload.context_balance \
  --title "DeepSeek-V3 decode, EP144, 112 sequences a GPU: fullest GPU (hollow: over 80 GB)" \
  --out "$out/decode-contexts.png"
echo "studies: charts in $out, sweeps in $work"
