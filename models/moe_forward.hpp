// The MoE workload driver: one step (forward, prefill, decode or training) of one micro-batch
// through every layer, on every GPU.
//
// Forward, per GPU g and MoE layer l, in order (after the dense layers, if the model has any):
//   attention -> router -> [send dispatch] -> shared experts -> wait for dispatch ->
//   experts -> [send combine] -> wait for combine -> reduce -> layer l+1.
// The all-to-all (models/all_to_all.hpp) turns the layer's DispatchPlan into flows; g starts its
// experts when its own router is done and every source with rows for it has delivered them,
// and reduces once every expert GPU it sent rows to has sent them back. Pairs that exchange
// nothing impose no wait. All dependencies are events, so a slow or overloaded GPU delays
// exactly the GPUs that wait for its flows. Compute times come from the roofline
// (models/moe_costs.hpp), scaled by the GPU's speed, straggler and jitter factors.
// Training adds the backward passes, last layer first (reduce's gradient -> [send dispatch] ->
// shared experts -> wait -> experts -> [send combine] -> wait -> router -> attention, every GEMM
// twice), the dense layers' backward, an optional all-reduce of the gradients
// (models/collectives.hpp; or reduce-scatter, sharded optimizer, all-gather) and the optimizer.
// With gradient accumulation (micro_batches > 1) a training step runs that many micro-batches one
// after the other, each its own routing (and capacity), forward and backward (dense layers
// included), and synchronises the gradients (buckets: during the last micro-batch's backward)
// and updates the weights once, after the last. With pipeline parallelism (pp > 1) the GPUs are
// pp consecutive blocks, stage s holding a contiguous share of the layers (stage 0 also the dense
// layers), or with virtual stages several model chunks, each a contiguous share; a stage runs a
// chunk's layers of each micro-batch when the previous chunk's activations for it have arrived
// (one flow per GPU, to the GPU at the same position in the next chunk's stage), and its
// backward when the next chunk's gradients have, in the order of the schedule
// (pipeline_order(): 1F1B, interleaved 1F1B, GPipe, ZB-H1, which splits each backward into
// an input-gradient pass that sends the gradients on and a weight-gradient pass that runs
// later, filling what would be bubble, DualPipeV, whose two chunks per stage form a V and
// whose steady state runs one chunk's forward together with the other's backward, or DualPipe,
// which sends half the micro-batches each way); gradients are synchronised within each stage
// (DualPipe: within each pair of stages holding the same chunks).
// Two-batch overlap runs the program in overlap_step() instead, and forward-backward overlap a
// forward and a backward pass together in pair_step(). Without them no stage overlaps another on
// a GPU. Activation recomputation (ForwardSpec::recompute) runs forward work again
// inside the backward passes: the attention forward before the attention's backward, or (full)
// each layer's whole forward (or only each model chunk's first recompute_layers layers'), its
// all-to-alls included, before the layer's backward.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "models/all_to_all.hpp"
#include "models/collectives.hpp"
#include "models/kernel_profile.hpp"
#include "models/moe_costs.hpp"
#include "models/network.hpp"
#include "models/recorder.hpp"
#include "models/roofline.hpp"
#include "routing/decode_contexts.hpp"
#include "routing/dispatch_plan.hpp"
#include "routing/moe_spec.hpp"
#include "sim/rng.hpp"
#include "sim/simulator.hpp"
#include "topology/cluster.hpp"

namespace moesim::models {

enum class Recompute { none, attention, full, selective };
std::string_view to_string(Recompute r);
// Training's order of forward and backward work on a pipeline stage (pipeline_order()).
// zb_h1: the zero-bubble schedule ZB-H1 of Qi et al., "Zero Bubble Pipeline Parallelism" (ICLR
// 2024): each backward pass is split into its input gradients (B), which go back to the previous
// stage, and its weight gradients (W), which wait.
// dualpipev: DeepSeek's DualPipeV (the DualPipe repository's "cut-in-half" DualPipe): two model
// chunks per stage placed as a V (chunk c on stage c for c < pp, on stage 2 pp - 1 - c after), so
// that the last stage's first chunk hands its output to its own second chunk and stage 0 holds
// both the first and the last layers; its steady state pairs a forward of one chunk with a
// backward of the other, and some backwards are split as ZB-H1's (pipeline_order()).
// dualpipe: DeepSeek's DualPipe (DeepSeek-V3 report, section 3.2.1), bidirectional: the first
// half of the micro-batches enters at stage 0 and runs model chunk c on stage c, the second half
// enters at the last stage and runs chunk c on stage pp - 1 - c; so stage s holds chunks s and
// pp - 1 - s (two copies of each chunk's weights in all, their gradients summed), and stages s
// and pp - 1 - s run DualPipeV's order over pp / 2 stages, one arm per direction.
enum class PipelineSchedule { one_f_one_b, gpipe, zb_h1, dualpipev, dualpipe };
std::string_view to_string(PipelineSchedule s);  // "1f1b", "gpipe", "zb_h1", "dualpipev", "dualpipe"

struct ForwardSpec {
  routing::MoeModelSpec model;
  routing::RoutingSpec routing;
  routing::PlacementSpec placement;
  int placement_history = 0;          // > 0: place by the mean routed counts of that many earlier steps
  std::vector<routing::Placement> placements;  // non-empty: use these (per layer) instead of placing
  int ep = 1;                         // expert-parallel group size; groups are consecutive GPUs (etp 1)
  // Expert tensor parallelism (Megatron-Core's --expert-tensor-parallel-size): each expert's FFN
  // is split over etp GPUs (the gate and up projections by columns, the down projection by rows).
  // The GPUs form blocks of ep x etp consecutive GPUs; in a block, ETP groups of etp consecutive
  // GPUs hold the same experts (those of one EP rank, each GPU 1/etp of every one), and EP group
  // j of the block is the GPUs at place j of their ETP groups (stride etp, as Megatron-Core
  // orders expert tensor parallelism innermost). Each GPU routes its own tokens and dispatches
  // them in its EP group; the ETP group then gathers what its GPUs received (each sends its rows
  // to the others), every GPU computes its shard of the FFN over the group's rows, and a
  // reduce-scatter (each GPU sends the others its partial outputs of their rows) gives each GPU
  // its own rows' output back for the combine. Backward passes mirror it (the output gradients
  // gathered, the input gradients reduce-scattered). The exchanges are direct flows between the
  // group's GPUs (what NCCL's all-gather and reduce-scatter of uneven sizes send each GPU),
  // waited for and recorded as tensor-parallel work (Stage::tp); with two-batch overlap each
  // half has its own, and with forward-backward overlap each pass of a pair.
  int etp = 1;
  std::int64_t tokens_per_gpu = 1;    // micro-batch tokens on each GPU
  std::int64_t sequence_length = 1;
  std::int64_t cached_prefix = 0;     // prefill: tokens before each prompt's sequence_length new ones whose KV cache is found
  std::uint64_t seed = 0;
  bool training = false;              // forward, backward and optimizer; else the forward pass only
  bool prefill = false;               // serving prompts: the LM head for each one's last token only
  int micro_batches = 1;              // per step: training's gradient accumulation, or pipelined through the stages
  // Pipeline parallelism: stages (dividing the GPUs into blocks of whole EP groups), each holding
  // virtual_stages model chunks: the MoE layers form pp * virtual_stages runs of consecutive
  // layers (pipeline_layers[c] in chunk c, or where that is empty as even a share as possible,
  // see pipeline_bounds()), chunk c on stage chunk_stage(c) (c mod pp, dualpipev's V, or with
  // dualpipe depending on the micro-batch's direction), run in the order of pipeline_schedule
  // (pipeline_order(); 1F1B is interleaved where virtual_stages > 1). zb_h1 needs virtual_stages
  // 1 and no recomputation; dualpipev virtual_stages 2, at least 2 pp micro-batches and no
  // recomputation; dualpipe an even pp, virtual_stages 1, an even number of at least 2 pp
  // micro-batches, gradient_sync and no recomputation.
  int pp = 1;
  // Context parallelism: each sequence's tokens spread over cp GPUs (those of its group: the same
  // place in their tensor-parallel groups, in blocks of tp x cp consecutive GPUs), sequence_length
  // / cp a GPU; before each attention the group all-gathers the layer's keys and values (and after
  // an attention's backward reduce-scatters their gradients), as Llama 3's all-gather context
  // parallelism does. Forward, prefill and training. cp_ring: the keys and values (in a
  // backward also their gradients) pass around the ring while the attention computes, as
  // Megatron-Core's p2p context parallelism does: only what outlasts the attention is waited for.
  // cp_latent (parallelism.cp_gather: latent, with MLA): the group gathers each token's kv latent
  // and RoPE key instead (kv_lora_rank + qk_rope_head_dim, 1/57 of DeepSeek-V3's keys and values),
  // and each GPU's attention first runs the keys' and values' up projection over the other GPUs'
  // tokens (models::mla_kv_expansion_cost; twice in the backward, whose reduce-scatter moves the
  // latents' gradients).
  int cp = 1;
  bool cp_ring = false;
  bool cp_latent = false;
  int virtual_stages = 1;
  std::vector<int> pipeline_layers;
  PipelineSchedule pipeline_schedule = PipelineSchedule::one_f_one_b;
  bool gradient_sync = false;         // training: all-reduce of gradients across data-parallel replicas
  CollectiveAlgorithm gradient_sync_algorithm = CollectiveAlgorithm::ring;
  int gradient_sync_chunks = 8;       // hierarchical, nvls: pipeline chunks (models/collectives.hpp)
  double nvls_efficiency = kNvlsEfficiency;  // nvls: the in-switch bytes' share of a port's bandwidth
  // Tensor parallelism's all-gathers and reduce-scatters: NCCL's ring, or in the NVSwitch (nvls).
  CollectiveAlgorithm tp_algorithm = CollectiveAlgorithm::ring;
  // > 1: the gradients are synchronised in this many buckets of consecutive MoE layers (in
  // backward order), each started as soon as the GPU has finished those layers' backward (in the
  // last micro-batch), so the sync overlaps the rest of the backward pass (the dense layers go
  // with the last bucket).
  int gradient_sync_buckets = 1;
  // Training with gradient_sync: ZeRO-1 style sharded optimizer: gradients are reduce-scattered,
  // each GPU updates its 1/n share of every weight group (n: the GPUs holding the same weights:
  // for its tensor-parallel part of the non-expert weights the stage's GPUs of its TP rank,
  // shard_ranks(); for its experts the blocks, shard_blocks()), then the updated weights are
  // all-gathered.
  bool optimizer_sharding = false;
  // Training with optimizer_sharding: the weights are sharded too (ZeRO-3, PyTorch's FSDP with
  // full sharding, torchtitan's data_parallel_shard), each GPU keeping its share of every weight
  // group (the stage's GPUs share the replicated weights, the blocks holding an expert shard that
  // shard). Before each MoE layer's forward and backward pass, in every micro-batch, the layer's
  // weights are all-gathered (the replicated ones over the stage's GPUs of a TP rank, the experts over the blocks;
  // the dense layers and the embedding with the first layer's, the LM head with the last's), the
  // next layer's in the schedule starting when a pass starts with its own in (FSDP's prefetch of
  // one, the gathers one after another); after each
  // layer's backward its gradients are reduce-scattered (every micro-batch, as FSDP does), and the
  // optimizer updates the shards, with no all-gather after it. Needs pp 1 and no overlap.
  bool parameter_sharding = false;
  // With optimizer_sharding (ZeRO-1) or parameter_sharding (FSDP): > 0 shards over groups of
  // this many consecutive GPUs of a stage instead of over all of them, each group holding a whole
  // sharded copy (hybrid sharding: PyTorch's HSDP, torchtitan's data_parallel_shard_degree with
  // data_parallel_replicate_degree; Megatron-Core's --num-distributed-optimizer-instances). A
  // multiple of ep x etp dividing the stage's GPUs. The gradients are reduce-scattered within
  // the group, then each shard all-reduced across the groups (the GPUs at the same place in
  // each); the weights are all-gathered within the group. 0: the whole stage.
  int shard_group = 0;
  // Training: bytes an element of the gradients (0: model.dtype's; 4: kept, accumulated and
  // synchronised in fp32, Megatron-LM's --accumulate-allreduce-grads-in-fp32 and DeepSeek-V3's
  // choice) and of Adam's two moments (4: fp32; 2: bf16, as DeepSeek-V3 keeps them, technical
  // report section 3.3.3). The master weights stay fp32.
  int gradient_bytes = 0;
  int moment_bytes = 4;
  int grad_bytes() const { return gradient_bytes > 0 ? gradient_bytes : model.dtype_bytes; }
  std::int64_t context_length = 0;    // > 0: decode, every token a sequence with this many cached keys
  // Decode: each sequence's context drawn from a log-normal law of mean context_length and this
  // log-space spread (0: all context_length), per micro-batch and attention group; balanced:
  // dealt to even out the groups' caches (routing/decode_contexts.hpp). A group's attention reads
  // its sequences' mean context.
  double context_sigma = 0;
  bool context_balanced = false;
  bool varied_contexts() const { return context_length > 0 && context_sigma > 0; }
  // Decode, speculative: each sequence's step verifies this many draft tokens with its new one,
  // so tokens_per_gpu counts (1 + draft_tokens) tokens per sequence (sequences()), whose
  // attention reads the sequence's cache once; the model's MTP layer (its last MoE layer) drafts
  // the next step's token over the same tokens. A step yields 1 + acceptance_rate + ... +
  // acceptance_rate^draft_tokens tokens per sequence on average (each draft accepted with this
  // probability if the one before was).
  int draft_tokens = 0;
  double acceptance_rate = 0;
  // Decode with chunked prefill (workload.prefill_chunk, as vLLM's and SGLang's colocated
  // serving mix prompts into decode steps): each GPU's step also runs this many tokens of
  // prompts of sequence_length tokens, a chunk of a prompt at its mean offset, (sequence_length -
  // chunk) / 2 tokens in (or whole prompts, chunk / sequence_length of them, where the chunk is
  // longer). tokens_per_gpu counts them with the decode tokens: they are routed, dispatched and
  // computed with them; the attention runs them as prefill over their prompt so far
  // (mixed_attention_cost), and the LM head gives logits to the prompts a step finishes.
  std::int64_t prefill_chunk = 0;
  std::int64_t decode_tokens() const { return tokens_per_gpu - prefill_chunk; }
  std::int64_t sequences() const { return decode_tokens() / (1 + draft_tokens); }
  // Prompts a step finishes per GPU, rounded up: chunk / sequence_length.
  std::int64_t prefill_prompts() const { return prefill_chunk > 0 ? (prefill_chunk + sequence_length - 1) / sequence_length : 0; }
  // Training: activation recomputation. attention: each layer's attention forward (dense layers'
  // too) is run again in its backward pass, before the attention's backward, from the kept
  // input; full: each MoE layer keeps only its input and its whole forward (attention, router,
  // dispatch, shared experts, experts, combine, reduce; the all-to-alls included) runs again
  // right before its backward, and the dense layers' forward before theirs. Recomputed work is
  // not model work (MFU).
  Recompute recompute = Recompute::none;
  // recompute selective (Megatron-Core's --recompute-granularity selective --recompute-modules):
  // layernorm: the norms' outputs are not kept (rebuilt from their inputs; the norm kernels take
  // time only with compute.elementwise_kernels, their forward's bytes again in the backward);
  // mla_up_proj: MLA's queries, keys and values are not kept, its up projections run again before
  // the attention's backward; moe_act: the routed and shared experts' SwiGLU outputs are not kept
  // (rebuilt from the gate and up outputs, bytes the compute-bound expert GEMMs hide: no time,
  // but with compute.elementwise_kernels the SwiGLU's forward bytes again). DeepSeek-V3
  // recomputes the first two (technical report, section 3.2.3) and the third's output (section
  // 3.3.3). Each rebuilds in the input-gradient pass, so it works with every schedule; a weight
  // pass keeps what it rebuilt and the weight gradients need (the norms' and SwiGLU outputs)
  // until it runs (memory).
  bool recompute_layernorm = false, recompute_mla_up_proj = false, recompute_moe_act = false;
  // Training: activations kept for the backward pass in FP8 where DeepSeek-V3 keeps them so
  // (technical report, section 3.3.3): the linear layers' inputs (attention projections',
  // shared and routed experts') and the SwiGLU inputs, 1 byte an element and an fp32 scale per
  // 128; the output projection's input (the attention output) in E5M6, 1.5 bytes. Memory only.
  bool activations_fp8 = false;
  // Training with a sharded optimizer or sharded weights and FP8 GEMMs: the weights' all-gathers
  // move the linear layers' and routed experts' weights in FP8, 1 byte each (Megatron-Core's
  // --fp8-param-gather, torchao's float8 all-gather under FSDP2), and the gathered weights are
  // held so; the routers', embedding's and LM head's stay at model.dtype. FP8's scales (4 bytes
  // per 128 x 128 block, or one a tensor) are left out.
  bool fp8_param_gather = false;
  // recompute full: > 0: only the first this many MoE layers of each model chunk are recomputed
  // (Megatron-LM's --recompute-method block --recompute-num-layers; the dense layers with chunk
  // 0's); the others keep their activations. 0: every layer.
  int recompute_layers = 0;
  // Compute speed: per GPU a factor (1: nominal; empty: all 1); stragglers: each GPU is one for
  // the step with this probability, running at straggler_speed; jitter: every compute stage's
  // time is multiplied by exp(jitter Z - jitter^2 / 2), Z standard normal (mean 1).
  std::vector<double> gpu_speed;
  double straggler_probability = 0;
  double straggler_speed = 1;
  double jitter = 0;
  // Two-batch overlap (every workload; training overlaps the backward passes too): the
  // micro-batch is split in two halves whose
  // all-to-alls overlap the other half's compute; the communication kernels hold this share of
  // the GPU's SMs all along, so every compute stage runs 1 / (1 - share) slower.
  bool two_batch_overlap = false;
  // With two_batch_overlap, staggered (forward passes without pipeline stages: decode, prefill,
  // forward; after DeepSeek's decode overlap, which also splits the attention in two steps): the
  // second half runs half a layer behind the first, so that every all-to-all overlaps a compute
  // phase of the other half. A layer's program is
  //   A's reduce of the layer before, A's attention and router, [A's dispatch];
  //   B's shared experts and experts of the layer before, [B's combine];
  //   A's shared experts and experts, [A's combine];
  //   B's reduce of the layer before, B's attention and router, [B's dispatch],
  // each all-to-all overlapping the next compute phase, and the last layer then finishes both
  // halves. Without staggering (two_batch) each combine overlaps only the other half's experts.
  bool two_batch_staggered = false;
  // Forward-backward overlap (training; Megatron-LM's combined 1F1B, --overlap-moe-expert-parallel-comm):
  // the 1F1B schedule runs one forward more before its first backward, and each later backward
  // together with the forward before it, layer by layer (the forward's i-th layer with the
  // backward's i-th), so that each pass's all-to-alls overlap the other's compute. The
  // communication kernels hold comm_sm_fraction of the SMs while a pair runs.
  bool forward_backward_overlap = false;
  double comm_sm_fraction = 0;
  AllToAllSpec all_to_all;            // algorithm and row bytes; 0 row bytes: the model's dtype
  // A measured kernel profile (compute.model: profile): the forward passes' router (with
  // permute), expert and combine stages from it where it covers them; the rest from the roofline.
  std::shared_ptr<const KernelProfile> profile;
};

// Model chunk c (of pp * virtual_stages; with one chunk per stage, chunk s is stage s) holds MoE
// layers [bounds[c], bounds[c + 1]) (one entry more than chunks): pipeline_layers[c] of them, or,
// where that is empty, moe_layers / chunks each and one more on each of the last
// moe_layers % chunks chunks (chunk 0 also holds the dense layers and the embedding, the last the
// LM head).
std::vector<int> pipeline_bounds(const ForwardSpec& spec);
// The pipeline stage that holds model chunk `chunk`: chunk mod pp, or with dualpipev the V:
// chunk for chunk < pp, 2 pp - 1 - chunk after. Either way chunk / pp is its place among its
// stage's chunks.
// DualPipe: the stage depends on the micro-batch's direction (chunk for the first half of the
// micro-batches, pp - 1 - chunk for the second); -1 there asks for the first half's.
int chunk_stage(const ForwardSpec& spec, int chunk, int micro_batch = -1);
// Whether pipeline stage `stage` holds model chunk `chunk`'s weights (DualPipe: chunks stage and
// pp - 1 - stage; else chunk_stage(chunk) == stage).
bool holds_chunk(const ForwardSpec& spec, int stage, int chunk);
// The stages whose GPUs together synchronise stage `stage`'s gradients: the stage itself, or with
// DualPipe the pair that holds the same two chunks, named by its lower stage (sync_stage()).
int sync_stage(const ForwardSpec& spec, int stage);
// The last micro-batch that runs through model chunk `chunk` on stage `stage` (DualPipe: of the
// chunk's direction there; else the step's last).
int last_micro_batch(const ForwardSpec& spec, int stage, int chunk);
// How many stages hold each chunk's weights: 2 with DualPipe, else 1.
int weight_copies(const ForwardSpec& spec);
// The GPUs a sharded weight or optimizer state is spread over (ForwardSpec::shard_group, or the
// stage's), and the blocks of ep x etp GPUs among them, over which an expert shard is spread.
inline int shard_gpus(const ForwardSpec& spec, int stage_gpus) { return spec.shard_group > 0 ? spec.shard_group : stage_gpus; }
inline int shard_blocks(const ForwardSpec& spec, int stage_gpus) { return shard_gpus(spec, stage_gpus) / (spec.ep * spec.etp); }
// The GPUs over which a GPU's own non-expert weights (its tensor-parallel share) are sharded:
// those of its shard group with the same tensor-parallel rank (Megatron-Core's data-parallel
// group with context parallelism; the others hold other shares).
inline int shard_ranks(const ForwardSpec& spec, int stage_gpus) { return shard_gpus(spec, stage_gpus) / spec.model.tp; }
// Decode with varied contexts (ForwardSpec::context_sigma): the contexts of every attention group
// of a pipeline stage (the stages' GPUs at one position run the same sequences) for each
// micro-batch, indexed [micro_batch * groups + group] (routing::context_loads), and GPU g's group.
std::vector<routing::ContextLoad> decode_context_loads(const ForwardSpec& spec, int gpus);
inline int context_group(const ForwardSpec& spec, int gpus, int gpu) { return (gpu % (gpus / spec.pp)) / spec.model.tp; }
// The model chunk, and the pipeline stage (chunk_stage()) that runs MoE layer `layer` for
// micro-batch `micro_batch` (-1: the first).
int pipeline_chunk(const ForwardSpec& spec, int layer);
int pipeline_stage(const ForwardSpec& spec, int layer, int micro_batch = -1);
// The MoE layers of pipeline stage `stage`, in forward order (the runs of the chunks it holds,
// lowest first).
std::vector<int> stage_layers(const ForwardSpec& spec, int stage);
// The parameters each GPU of pipeline stage `stage` holds: its chunks' (gpu_params).
GpuParams stage_params(const ForwardSpec& spec, const std::vector<routing::Placement>& placements, int stage);
// The parameters each GPU holds for MoE layer `layer` alone (gpu_params of that layer, with the
// dense layers and embedding for the first, the LM head for the last; its share of the experts
// with expert tensor parallelism): what parameter sharding gathers for the layer's passes.
GpuParams layer_params(const ForwardSpec& spec, const std::vector<routing::Placement>& placements, int layer);
// The bytes of those weights as their all-gathers move them and hold them gathered: at
// model.dtype, or with fp8_param_gather the linear layers' and experts' at one byte each.
std::int64_t gathered_weight_bytes(const ForwardSpec& spec, const GpuParams& p);

// One entry of a pipeline stage's schedule: a micro-batch's pass through one of the stage's
// model chunks, forward (its layers in order) or backward (last layer first). ZB-H1 splits a
// backward in two entries: `backward` (its input gradients) and then, later, `weight` (its
// weight gradients; backward is false); DualPipeV and DualPipe some of them. A backward is split exactly
// where the order has a weight entry for its micro-batch and chunk.
struct PipelineItem {
  int micro_batch = 0;
  int chunk = 0;
  bool backward = false;
  bool weight = false;
  // Forward-backward overlap: a backward run together with the forward just before it.
  bool overlapped = false;
  bool operator==(const PipelineItem&) const = default;
};
// The order in which the GPUs of pipeline stage `stage` run their work. Forward-only workloads:
// every micro-batch forward, in order. Training, GPipe: every micro-batch forward, then every one
// backward. 1F1B: stage s runs min(pp - 1 - s, micro_batches) forwards, then alternates one
// forward and one backward, then runs the backwards left. Interleaved (virtual_stages v > 1; as
// Megatron-LM's schedule): the stage's v chunks take the micro-batches in groups of pp (forward:
// micro-batches 0..pp-1 through its first chunk, then through its second, ..., then the next
// group; backward the same from its last chunk), (pp - 1 - s) * 2 + (v - 1) * pp of these
// forwards first (at most all of them), then one forward and one backward in turn, then the
// backwards left. Needs micro_batches a multiple of pp. ZB-H1: as 1F1B (w = min(pp - 1 - s,
// micro_batches) forwards first), but stage s holds back the weight gradients of its first s
// backwards: after the k-th backward (from 0) of the alternating part comes the weight pass of
// micro-batch k - s (where k >= s); after each backward left, the oldest weight pass waiting;
// then the rest. Every stage then holds up to pp micro-batches between their forward and their
// weight pass (stage 0 as many as with 1F1B), and the weight passes fill what 1F1B leaves idle:
// with equal forward, input- and weight-gradient times F, B, W the bubble shrinks from
// (pp - 1)(F + B + W) to (pp - 1)(F + B - W) (the paper's ZB-H1, its figure 3).
// Forward-backward overlap (1F1B, interleaved or not, and pp = 1 with micro-batches): one
// forward more before the first backward (as Megatron-LM's combined 1F1B, so that the forward
// and the backward run together never depend on each other), and every backward of the
// alternating part `overlapped` with the forward before it.
// DualPipeV (deepseek-ai/DualPipe, dualpipev.py), stage r of P, N >= 2P micro-batches, its
// chunks c0 = r (the V's first arm) and c1 = 2P - 1 - r (its second): 2(P - 1 - r) forwards of
// c0; r + 1 times a forward of c0 and one of c1; P - 1 - r times a split backward of c1, its
// weight pass and a forward of c1; N - 2P + r + 1 times a forward of c0 with a backward of c1
// and a forward of c1 with a backward of c0 (the pairs); P - 1 - r times a backward of c1 and a
// forward of c1 with a backward of c0; r + 1 times a backward of c1 and one of c0, the last r + 1
// of these split; P - 1 - r times the oldest weight pass waiting and a split backward of c0;
// the r + 1 weight passes left. With forward-backward overlap each pair's backward is
// `overlapped` with its forward (except the last stage's first pair, which DualPipeV runs one
// after the other); without, the pair runs one after the other. With forward, whole backward
// and weight times F, B = 2F and W = F, a pair taking F&B = F + B and nothing else costing
// time, the bubble is (P - 1)(F&B + B - 3W) = 2(P - 1)F (DualPipe's, DeepSeek-V3 report, table
// 2, with P = PP/2), against 1F1B's (P - 1)(2F + 2B) = 6(P - 1)F on the same stages.
// DualPipe (deepseek-ai/DualPipe, dualpipe.py): stages r and pp - 1 - r run DualPipeV's order for
// pp / 2 stages as its stage min(r, pp - 1 - r) with N / 2 micro-batches per arm; the first arm is
// chunk min(r, pp - 1 - r), the second chunk max(r, pp - 1 - r); on the first half of the stages
// the first arm runs the first half of the micro-batches (entering at stage 0) and the second
// arm the second half (entering at the last stage), on the second half of the stages the other
// way round. Its bubble: (pp/2 - 1)(F&B + B - 3W).
std::vector<PipelineItem> pipeline_order(const ForwardSpec& spec, int stage);
// The most layers' activations (MoE layers, and the dense layers with chunk 0) that pipeline
// stage `stage` holds at once in training: a chunk's forward of a micro-batch adds its layers,
// its backward frees them (a split backward: its weight pass, which needs the layers' inputs
// and output gradients), in pipeline_order(). A layer between its split backward and its weight
// pass counts `after_backward` times (what the input-gradient pass rebuilt for the weight pass
// and keeps, relative to a layer's activations; 1: nothing more).
double pipeline_held_layers(const ForwardSpec& spec, int stage, double after_backward = 1.0);
// The most micro-batches that pipeline stage `stage` holds at once between their forward and
// backward through the model's last chunk (the LM head's logits; 0 where it holds no such chunk).
int pipeline_held_head(const ForwardSpec& spec, int stage);

// The first GPU of EP group `group` (counted within its pipeline stage) of the stage that runs
// MoE layer `layer` for micro-batch `micro_batch` (-1: the first), on a cluster of `gpus` GPUs:
// the group that routes and computes it. This is the group's routing identity (its rank r
// draws the tokens of GPU first + r, and a token-level trace's source rank counts so); with
// expert tensor parallelism (etp > 1) its ranks sit elsewhere, at ep_group_gpu().
int group_first_gpu(const ForwardSpec& spec, int gpus, int layer, int group, int micro_batch = -1);
// The GPU of rank `rank` in that EP group (ForwardSpec::etp's layout).
int ep_group_gpu(const ForwardSpec& spec, int gpus, int layer, int group, int rank, int micro_batch = -1);
// GPU `gpu`'s EP rank, and its EP group counted within its pipeline stage of `stage_gpus` GPUs.
inline int ep_rank(const ForwardSpec& spec, int gpu) { return gpu / spec.etp % spec.ep; }
inline int ep_group_in_stage(const ForwardSpec& spec, int stage_gpus, int gpu) {
  return gpu % stage_gpus / (spec.ep * spec.etp) * spec.etp + gpu % spec.etp;
}

// Every layer's placement (placement.layer_load, observed counts of earlier steps, or the law's
// expected load). Throws routing::PlacementError when the shape does not divide.
std::vector<routing::Placement> make_placements(const ForwardSpec& spec, int gpus, int gpus_per_node);

class MoeForward {
 public:
  MoeForward(sim::Simulator& sim, const topology::Cluster& cluster, NetworkModel& network,
             const Roofline& roofline, const ForwardSpec& spec, Recorder& recorder);
  // Routes every micro-batch and layer and builds the dispatch plans (on all cores; reported to
  // the recorder), then starts the first passes on every GPU at now(). preparing(share) reports the share of the routing done, now and
  // then, from the calling thread.
  void start(const std::function<void(double)>& preparing = {});
  bool finished() const { return finished_gpus_ == gpus_.size(); }
  const std::vector<routing::Placement>& placements() const { return placements_; }
  // FLOPs of the model's work in the step, over all GPUs: every compute stage except padding
  // rows, the optimizer and recomputed forwards (backward counted at 2x), the numerator of MFU.
  double model_flops() const { return model_flops_; }
  // Decode with varied contexts: the draws its GPUs' attention reads (decode_context_loads());
  // empty otherwise.
  const std::vector<routing::ContextLoad>& context_loads() const { return context_loads_; }
  // Forward MoE stage times taken from the kernel profile, and those it did not cover.
  std::int64_t profile_hits() const { return profile_hits_; }
  std::int64_t profile_misses() const { return profile_misses_; }
  // Share of the step's layer passes the GPUs have finished, in [0, 1].
  double progress() const;

 private:
  enum class Wait { none, dispatch, combine, sync, pipeline, tp, cp, etp_gather, etp_scatter, params };
  // Context parallelism: a compute stage held back for its group's all-gather of keys and values
  // (run_stage() with cp_layers > 0), and whether its gradients are reduce-scattered after it.
  struct CpPending {
    Stage stage = Stage::attention;
    sim::Time duration;
    void (MoeForward::*next)(int) = nullptr;
    int micro_batch = -1;
    std::optional<bool> backward, recompute;
    bool profiled = false;
    int of_pass = -1;
    std::int64_t rows = 0;      // tokens whose keys and values are gathered (a layer's, or the dense layers' together)
    bool scatter = false;
    int layer = -1;             // recorded with the waits (-1: the dense layers)
    bool record_backward = false, record_recompute = false;
    int record_micro_batch = 0;
    // cp_ring: the exchange runs beside the compute; the stage goes on once both are done.
    bool ring = false, ring_computed = false, ring_exchanged = false;
  };
  // Tensor parallelism: the dense layers run as a program of collectives and compute stages
  // (dense_tp_step()): forward, forward again before the backward (full recomputation), their
  // attention's all-gather and forward again (attention recomputation), or backward.
  enum class DenseProgram { forward, recompute_full, recompute_attention, backward };
  // Collective numbers (tp_exchange's op) from here on belong to recomputed forward work: the
  // dense layers' program, and the one below it the MoE layer's attention's all-gather.
  static constexpr int kRecomputeOps = 1 << 16;
  // Two-batch overlap: half 1's collectives are numbered from here (half 0's as a whole pass's).
  static constexpr int kHalfOps = 1 << 24;
  struct GpuState {
    int pass = 0;  // forward: pass l is layer l; training adds the backward passes, last layer first
    int step = 0;  // the index of `pass` in its stage's schedule
    Wait wait = Wait::none;
    sim::Time wait_start;
    int op = 0;           // two-batch overlap: the next operation of the layer's program;
                          // ZB-H1's weight pass: its next stage (weight_step())
    int wait_half = 0;    // two-batch overlap: the half it waits for; forward-backward overlap: the
                          // pass of the pair whose pipeline input it waits for (0 or 1)
    int wait_pass = 0;    // two-batch overlap: the pass whose all-to-all it waits for (staggered:
                          // the one before for the second half's)
    int stage_pass = -1;  // a stage started now is of this pass (staggered: the layer before's); -1: `pass`
    // Per micro-batch, whether its dense layers have run forward and its LM head backward here
    // (each once per micro-batch, whichever of its passes gets there first).
    std::vector<char> dense_forward, head_backward;
    bool recomputed = false;  // two-batch overlap, recompute attention: the half's attention forward has run again
    // Forward-backward overlap: the step runs a forward pass and a backward pass together
    // (pair_step(); `pass` is the one the current operation belongs to), and whether the
    // all-to-all kernels hold their SMs (while the pair's layer program runs).
    bool paired = false;
    std::array<int, 2> pair{};  // the forward pass, the backward pass
    bool sharing_sms = false;
    // Tensor parallelism: where to go on once the collective waited for is done; the dense
    // layers' program (dense_tp_step(): its next operation) and where to go on after it (or
    // after the LM head's backward and its reduce-scatter).
    void (MoeForward::*tp_next)(int) = nullptr;
    // Context parallelism: the stage waiting for its keys and values, where to go on after the
    // wait, and how many context-parallel collectives the GPU has joined (the n-th of every GPU
    // of a group is the same collective: they run the same program).
    CpPending cp_pending;
    void (MoeForward::*cp_next)(int) = nullptr;
    std::int64_t cp_ops = 0;
    void (MoeForward::*program_next)(int) = nullptr;
    int dense_op = 0;
    DenseProgram dense_mode = DenseProgram::forward;
    int tp_sub = 0;  // two-batch and forward-backward overlap: where in an operation's collectives the GPU is
  };
  int halves() const { return spec_.two_batch_overlap ? 2 : 1; }
  void overlap_step(int gpu);
  // Forward-backward overlap: one forward pass and one backward pass on one GPU, one operation
  // per call (GpuState::op; the program is in moe_forward.cpp).
  void pair_step(int gpu);
  // The pass's end: counted, its output sent to the neighbouring stage, and (backward) its
  // layer's gradients complete.
  void pass_done(int gpu, int pass);
  // Starts gpu's schedule entry `step` (a pass, or with forward-backward overlap a pair).
  void begin_step(int gpu);

  // Passes: per micro-batch every layer forward, then (training) every layer backward, last layer
  // first; with full recomputation each layer's backward pass comes right after a pass that
  // recomputes its forward: per micro-batch L forward passes, then (recompute, backward) for
  // layers L - 1, ..., 0. ZB-H1, DualPipeV and DualPipe (weight_split()) add a weight-gradient
  // pass per layer after those, again for layers L - 1, ..., 0; a split backward's passes
  // (split()) then compute the input gradients only. The schedule (schedule_) runs them in its
  // own order (DualPipeV's and DualPipe's have the weight passes of their split backwards only).
  bool full_recompute() const { return spec_.training && spec_.recompute == Recompute::full; }
  // Whether forward work is rebuilt right before each attention's backward: the whole attention
  // (recompute: attention) or MLA's up projections (selective, mla_up_proj; needing no
  // tensor-parallel all-gather: every GPU of a group keeps the latents of the group's tokens).
  bool recomputes_attention() const {
    return spec_.training && (spec_.recompute == Recompute::attention ||
                              (spec_.recompute == Recompute::selective && spec_.recompute_mla_up_proj));
  }
  // What that rebuilds over `tokens` tokens (the GPU's, or a half's) of the model's layer `layer`.
  KernelCost attention_recompute(std::int64_t tokens, int layer) const;
  // Whether the dense layers' forward work is rebuilt before their backward (any recomputation
  // but a selective one without mla_up_proj), and what.
  bool recomputes_dense() const {
    return spec_.training && (spec_.recompute == Recompute::full || recomputes_attention());
  }
  // Whether full recomputation rebuilds MoE layer `layer` (ForwardSpec::recompute_layers): its
  // recompute pass is in the schedule; the other layers' are not (they keep their activations).
  bool recomputes(int layer) const {
    return full_recompute() && (spec_.recompute_layers == 0 || layer - chunk_first(chunk_of(layer)) < spec_.recompute_layers);
  }
  bool weight_split() const {
    return spec_.training && (spec_.pipeline_schedule == PipelineSchedule::zb_h1 ||
                              spec_.pipeline_schedule == PipelineSchedule::dualpipev ||
                              spec_.pipeline_schedule == PipelineSchedule::dualpipe);
  }
  // Whether pass `pass` belongs to a split backward: its micro-batch's backward through its
  // layer's chunk has a weight entry in the schedule (every backward with ZB-H1).
  bool split(int pass) const {
    return weight_split() && split_[static_cast<std::size_t>(micro_batch(pass) * chunks() + chunk_of(layer_of(pass)))];
  }
  std::vector<char> split_;  // [micro_batch * chunks() + chunk]
  int backward_passes() const { return full_recompute() ? 2 * spec_.model.moe_layers : spec_.model.moe_layers; }
  int batch_passes() const {
    const int l = spec_.model.moe_layers;
    return !spec_.training ? l : l + backward_passes() + (weight_split() ? l : 0);
  }
  int passes() const { return spec_.micro_batches * batch_passes(); }
  int micro_batch(int pass) const { return pass / batch_passes(); }
  int layer_of(int pass) const {
    const int q = pass % batch_passes(), l = spec_.model.moe_layers;
    if (q < l) return q;
    if (q >= l + backward_passes()) return l - 1 - (q - l - backward_passes());  // a weight pass
    return l - 1 - (full_recompute() ? (q - l) / 2 : q - l);
  }
  // A recomputed forward (full recomputation): forward work, recorded as the layer's backward.
  bool recompute(int pass) const {
    const int q = pass % batch_passes(), l = spec_.model.moe_layers;
    return full_recompute() && q >= l && q < l + backward_passes() && (q - l) % 2 == 0;
  }
  // A weight-gradient pass (ZB-H1): the layer's weight gradients, recorded as its backward.
  bool weight(int pass) const { return weight_split() && pass % batch_passes() >= spec_.model.moe_layers + backward_passes(); }
  bool backward(int pass) const { return backward_phase(pass) && !recompute(pass) && !weight(pass); }
  // Backward work, recomputation and weight passes included (what the records say).
  bool backward_phase(int pass) const { return pass % batch_passes() >= spec_.model.moe_layers; }
  // The pass of micro-batch `micro_batch` that runs `layer` backward, and (ZB-H1) its weight pass.
  int backward_pass(int micro_batch, int layer) const {
    const int l = spec_.model.moe_layers;
    return micro_batch * batch_passes() + l + (full_recompute() ? 2 * (l - 1 - layer) + 1 : l - 1 - layer);
  }
  int weight_pass(int micro_batch, int layer) const {
    const int l = spec_.model.moe_layers;
    return micro_batch * batch_passes() + l + backward_passes() + (l - 1 - layer);
  }
  // The plans of pass `pass` (its micro-batch and layer) for gpu's EP group.
  const routing::DispatchPlan& plan(int pass, int gpu, int half = 0) const;
  // The row of a stage's EP groups' plans for (micro-batch, layer, half); group: the EP group's
  // index within its pipeline stage.
  int plan_row(int micro_batch, int layer, int half) const;
  std::size_t plan_index(int micro_batch, int layer, int group, int half) const;
  // Pipeline stages: GPUs [s * stage_gpus(), (s + 1) * stage_gpus()); model chunk c: MoE layers
  // [chunk_first(c), chunk_first(c + 1)), on stage chunk_stage(spec_, c).
  int stage_gpus() const { return cluster_.gpu_count() / spec_.pp; }
  int chunks() const { return spec_.pp * spec_.virtual_stages; }
  int chunk_first(int chunk) const { return bounds_[static_cast<std::size_t>(chunk)]; }
  int chunk_of(int layer) const { return chunk_[static_cast<std::size_t>(layer)]; }
  std::vector<int> bounds_;  // pipeline_bounds(spec_)
  std::vector<int> chunk_;   // per MoE layer, its chunk
  int stage_groups() const { return stage_gpus() / spec_.ep; }
  // Blocks of ep x etp GPUs per stage: the copies of the stage's experts (one with every shard).
  int stage_blocks() const { return stage_gpus() / (spec_.ep * spec_.etp); }
  int stage_of(int gpu) const { return gpu / stage_gpus(); }
  // Per stage, the passes its GPUs run, in order; paired_[stage][i]: entries i (a forward pass)
  // and i + 1 (a backward pass) run together (forward-backward overlap).
  std::vector<std::vector<int>> schedule_;
  std::vector<std::vector<char>> paired_;
  std::int64_t total_passes_ = 0;  // over all GPUs
  // Pipeline inputs still missing, [(gpu * micro_batches + micro_batch) * virtual_stages + c / pp]
  // for chunk c of the GPU's stage: the activations from the previous chunk (forward) and the
  // gradients from the next (backward). DualPipeV's last stage hands them from one of its
  // chunks to the other itself.
  std::vector<int> activations_pending_, gradients_pending_;
  // The GPU of the neighbouring chunk's stage that pass `pass` on `gpu` takes its input from
  // (input) or sends its output to, or -1 where the pass does not cross a chunk boundary.
  int across_stages(int gpu, int pass, bool input) const;
  // gpu's count of pipeline inputs still missing for pass's micro-batch and direction, into
  // model chunk `chunk`.
  int& pipeline_pending(int gpu, int pass, int chunk);
  // The counter pass `pass` on gpu waits on before it starts, or null.
  int* pipeline_input(int gpu, int pass);
  // Whether `pass` still misses its pipeline input: gpu then waits (from now, unless it already
  // does); pipeline_arrived() sends it back to where it waits.
  bool wait_for_input(int gpu, int pass);
  // Ends gpu's pipeline wait, if it waited, recording it with `pass`.
  void end_pipeline_wait(int gpu, int pass);
  void pipeline_arrived(int gpu);
  void start_pass(int gpu);
  void send_to_stage(int gpu, int pass);  // after a pass: activations or gradients to the neighbouring stage
  int rank(int gpu) const { return ep_rank(spec_, gpu); }
  // What a compute stage's work is. gemm: the current pass's GEMMs (twice in a backward pass,
  // once in ZB-H1's input- and weight-gradient passes, which share a backward's work);
  // other: the current pass's other work (not doubled); both are model work unless the pass is
  // a recomputed forward. outside: model work outside the MoE passes (dense layers, LM head),
  // costed as given. not_model: not model work (the optimizer, recomputation), as given.
  enum class Work { gemm, other, outside, not_model };
  // A compute stage's time on `gpu` (backward doubling, speed, jitter: draws from its stream),
  // counted toward the model FLOPs as `work` says.
  sim::Time cost(const KernelCost& c, int gpu, Work work = Work::gemm);
  // Speed, two-batch-overlap and jitter factors applied to a kernel time.
  sim::Time scaled(sim::Time t, int gpu);
  // An MoE stage from the kernel profile (the sum of its kernels; a backward pass's from their
  // _bwd rows), or nothing: no profile, a backward pass and a profile without backward rows, or
  // a kernel outside the profile (counted).
  struct ProfileQuery {
    const char* kernel;
    int experts, top_k;
    std::int64_t tokens;
    double imbalance = 1.0;
    double active = -1;  // experts with rows, where known
    double tiles = -1;   // the 64-row tiles their rows fill, where known
    bool gemm = true;    // GEMMs (ZB-H1 splits their backward between two passes), or not
    std::int64_t ffn = 0;  // the experts' FFN width (expert tensor parallelism: a GPU's share); 0: the model's
  };
  // gemm: the work is GEMMs (a backward pass does twice their FLOPs), as cost()'s.
  std::optional<sim::Time> profiled(int gpu, const KernelCost& work, std::initializer_list<ProfileQuery> parts,
                                    bool gemm = true);
  sim::Time router_time(int gpu, std::int64_t tokens);  // router and permute
  sim::Time reduce_time(int gpu, std::int64_t tokens, std::int64_t kept);  // combine
  std::int64_t profile_hits_ = 0, profile_misses_ = 0;
  // Whether the compute time last asked for came from the profile (profiled()) or the roofline
  // (cost()): the stage run_stage starts next is recorded with it.
  bool last_profiled_ = false;
  KernelCost dense_cost(int gpu = -1) const;
  KernelCost dense_weight_cost() const;  // ZB-H1: the dense layers' weight gradients
  // Their backward in pass `pass` (the first MoE layer's backward; split: less the weight gradients).
  KernelCost dense_backward_cost(int pass) const;
  KernelCost dense_recompute_cost() const;  // their forward again (recompute full) or their attention's (attention)
  // With recompute_modules layernorm: the layer's norms again before its attention's backward
  // (models::norm_recompute_cost; time only with compute.elementwise_kernels).
  KernelCost norm_recompute() const;
  KernelCost lm_head() const;  // forward (with the loss in training)
  std::int64_t lm_head_tokens() const;  // the GPU's tokens that need logits
  // Before pass `s.pass` starts on gpu: the dense layers forward (before the first MoE layer) or
  // the LM head backward (before the last MoE layer's); runs it and then `next`, or returns false.
  bool run_before_pass(int gpu, void (MoeForward::*next)(int));
  void after_passes(int gpu);  // gpu's next pass, or the step's end (gradient sync, optimizer)
  // The attention of the model's layer `layer` (the dense layers from 0, then the MoE layers:
  // moe_attention_layer) over `tokens` tokens: its window, with model.sliding_window.
  // gpu: whose sequences, where their contexts differ (decode, ForwardSpec::context_sigma).
  KernelCost attention(std::int64_t tokens, int layer, int gpu = -1) const;
  std::vector<routing::ContextLoad> context_loads_;  // decode_context_loads(), when contexts differ
  int moe_attention_layer(int moe_layer) const { return spec_.model.dense_layers + moe_layer; }
  sim::Time experts_time(int pass, int gpu, int half);
  KernelCost optimizer_cost(int stage) const;

  // micro_batch: the one the stage belongs to, where not the current pass's (-1); backward:
  // whether it is backward work, where not as the current pass (the dense layers' and the LM
  // head's, outside the MoE passes).
  // recompute: whether the stage recomputes forward work, where not as the current pass.
  // cp_rows > 0 (context parallelism, spec_.cp > 1): the stage is an attention over cp_rows
  // tokens (the dense layers': their tokens times the layers) and waits for the all-gather of
  // their keys and values first; cp_scatter: a backward, whose key and value gradients are
  // reduce-scattered after it.
  void run_stage(int gpu, Stage stage, sim::Time duration, void (MoeForward::*next)(int), int micro_batch = -1,
                 std::optional<bool> backward = std::nullopt, std::optional<bool> recompute = std::nullopt, std::int64_t cp_rows = 0,
                 bool cp_scatter = false);
  void schedule_stage(int gpu, Stage stage, sim::Time duration, void (MoeForward::*next)(int), int micro_batch,
                      std::optional<bool> backward, std::optional<bool> recompute, bool profiled, int of_pass);
  // Context parallelism: gpu joins its group's next collective (the GPUs g with the same
  // g mod tp in each block of tp x cp consecutive GPUs), an all-gather of the held-back stage's
  // keys and values (cp_kv_bytes() of its rows from every member) or a reduce-scatter of their
  // gradients, waits for its part (Stage::cp), then goes on with `next`.
  void cp_exchange(int gpu, CollectiveKind kind, void (MoeForward::*next)(int));
  void cp_gathered(int gpu);   // the held-back stage
  void cp_computed(int gpu);   // after a backward: the gradients' reduce-scatter
  void cp_ring_computed(int gpu);   // cp_ring: the attention is done (the exchange may not be)
  void cp_ring_exchanged(int gpu);  // cp_ring: the exchange is done (the attention may not be)
  std::int64_t cp_kv_bytes(std::int64_t rows) const;
  // cp_latent: the up projection of the other GPUs' latents of the sequences of `tokens` tokens.
  KernelCost cp_expansion(std::int64_t tokens) const;
  // The rows whose keys and values a recomputed attention gathers (none when only MLA's up
  // projections are recomputed: no attention core runs).
  std::int64_t cp_recompute_rows(std::int64_t rows) const { return spec_.recompute == Recompute::selective ? 0 : rows; }
  // The dense layers' attentions, run as one stage: their rows together.
  std::int64_t dense_rows() const { return spec_.tokens_per_gpu * spec_.model.dense_layers; }
  void begin_pass(int gpu);
  void after_attention(int gpu);
  void after_router(int gpu);
  void after_shared(int gpu);
  void arrived(int pass, Phase phase, int gpu);
  void try_start_experts(int gpu);
  void after_experts(int gpu);
  void try_finish_combine(int gpu);
  void after_router_backward(int gpu);    // (recomputes the attention forward, then) the attention's backward
  void attention_backward(int gpu);
  // ZB-H1's weight pass, one compute stage per call (GpuState::op): the LM head's weight
  // gradient (the last layer's), the attention's projections, the router, the shared experts,
  // the experts, the dense layers' (the first layer's), then end_pass().
  void weight_step(int gpu);
  void dense_backward(int gpu);           // after the first MoE layer's backward (and the dense layers' recompute)
  void end_pass(int gpu);
  // Tensor parallelism (spec_.model.tp > 1): gpu joins its tensor-parallel group's
  // collective number `op` of the current pass, an all-gather of the group's `rows` token rows
  // per GPU (before attention, a dense FFN or the LM head) or a reduce-scatter of them (after the
  // attention or a dense FFN), waits for its part (Stage::tp, recorded with `layer`), then goes
  // on with `next`. Ops: 0 and 1 around the MoE layer's attention, 2 + 4 i + (0..3) around dense
  // layer i's attention and FFN, 2 + 4 dense_layers before the LM head (its backward: after it).
  // A backward pass uses the same numbers for the mirror images.
  void tp_exchange(int gpu, int op, CollectiveKind kind, std::int64_t rows, int layer, void (MoeForward::*next)(int));
  void tp_attention(int gpu);        // the attention after its all-gather
  void tp_after_attention(int gpu);  // its reduce-scatter, then after_attention()
  void dense_tp_step(int gpu);       // the dense layers' program (GpuState::dense_mode), one operation per call
  void start_dense_program(int gpu, DenseProgram program, void (MoeForward::*next)(int));
  void recompute_attention(int gpu);  // (after its all-gather) the attention forward again, then attention_backward()
  // A layer program's attention operation over `rows` rows per GPU (with tensor parallelism its
  // collectives numbered from `base`; recompute_first: its forward again first), one step per
  // call; see the .cpp.
  void attention_step(int gpu, int base, std::int64_t rows, bool recompute_first, void (MoeForward::*step)(int));
  void tp_lm_head(int gpu);          // the LM head after its all-gather
  void attention_backward_compute(int gpu);   // (after the all-gather of its gradients)
  void tp_after_attention_backward(int gpu);  // the reduce-scatter of its input's, then end_pass()
  void tp_after_head_backward(int gpu);       // the LM head's, then GpuState::program_next
  struct TpCollective {
    std::unique_ptr<Collective> collective;
    int left;  // members not yet done
  };
  std::map<std::tuple<int, int, int>, TpCollective> tp_collectives_;  // by (pass, op, group)
  std::map<std::pair<std::int64_t, int>, TpCollective> cp_collectives_;  // by (the members' count of them, group)
  void finish(int gpu);
  std::int64_t& pending(std::vector<std::int64_t>& v, int gpu, int pass, int half = 0) {
    return v[(static_cast<std::size_t>(gpu) * static_cast<std::size_t>(passes()) + static_cast<std::size_t>(pass)) *
                 static_cast<std::size_t>(halves()) +
             static_cast<std::size_t>(half)];
  }

  sim::Simulator& sim_;
  const topology::Cluster& cluster_;
  NetworkModel& network_;
  const Roofline& roofline_;
  ForwardSpec spec_;
  Recorder& recorder_;
  const bool profile_backward_;  // the profile has the backward pass's stages (_bwd rows)
  std::vector<routing::Placement> placements_;  // per layer
  std::vector<routing::DispatchPlan> plans_;  // [plan_index(micro_batch, layer, group, half)]
  std::unique_ptr<AllToAll> all_to_all_;      // built once the plans are
  // Gradient sync: one collective over all GPUs for the replicated weights, one per EP rank
  // over the groups for the experts (an all-reduce, or with optimizer sharding a reduce-scatter
  // before the optimizer and an all-gather of the weights after); how many each GPU still
  // waits for.
  // Per bucket (gradient_sync_buckets) the sync collectives, [bucket] and [bucket * ep + rank].
  // Per stage and bucket: [stage * buckets + bucket] and [(stage * buckets + bucket) * ep + rank];
  // the gathers [stage] and [stage * ep + rank].
  std::vector<std::unique_ptr<Collective>> dense_sync_, expert_sync_;
  std::vector<std::unique_ptr<Collective>> dense_gather_;
  std::vector<std::unique_ptr<Collective>> expert_gather_;
  std::vector<int> sync_left_;
  int buckets_ = 1;
  // [stage * buckets + bucket]: the bucket's lowest MoE layer (the last its backward reaches)
  std::vector<int> bucket_end_;
  void join_bucket(int gpu, std::size_t bucket, int micro_batch = 0);
  // Parameter sharding (ForwardSpec::parameter_sharding): the all-gather of a layer's weights
  // before its passes of one micro-batch in one direction (a unit: (micro_batch * layers + layer)
  // * 2 + backward), [unit] over the stage and [unit * shards + shard] over the blocks, built when
  // the first GPU joins; per GPU and unit the collectives it still waits for (kNotJoined before
  // it joins).
  bool sharded_params() const { return spec_.training && spec_.parameter_sharding; }
  int param_unit(int pass) const {
    return (micro_batch(pass) * spec_.model.moe_layers + layer_of(pass)) * 2 + (backward_phase(pass) ? 1 : 0);
  }
  static constexpr std::uint8_t kNotJoined = 0xff;
  std::size_t param_units() const {
    return static_cast<std::size_t>(spec_.micro_batches) * static_cast<std::size_t>(spec_.model.moe_layers) * 2;
  }
  std::uint8_t& param_left(int gpu, int unit) {
    return param_left_[static_cast<std::size_t>(gpu) * param_units() + static_cast<std::size_t>(unit)];
  }
  std::vector<std::unique_ptr<Collective>> param_dense_, param_expert_;
  std::vector<std::uint8_t> param_left_;  // [gpu * units + unit]
  void join_params(int gpu, int unit);
  // Whether gpu's current pass has its weights (joining their all-gather, and the next unit's in
  // its schedule, where it has not yet); if not it waits (Wait::params) until params_arrived().
  bool params_ready(int gpu);
  void params_arrived(int gpu, int unit);
  void backward_layer_done(int gpu, int pass);
  void synced(int gpu);
  void optimize(int gpu);
  void gather(int gpu);
  void gathered(int gpu);
  std::vector<GpuState> gpus_;
  std::vector<double> speed_;               // per GPU, stragglers included
  std::vector<sim::Rng> jitter_rng_;        // per GPU, when jitter > 0
  // Inbound arrivals still missing, [gpu * passes + pass]: set from the plans in start(),
  // counted down by arrivals; a GPU goes on when its count is zero.
  std::vector<std::int64_t> dispatch_pending_;
  std::vector<std::int64_t> combine_pending_;
  // Expert tensor parallelism (spec_.etp > 1): a GPU's ETP group, what it still waits for from
  // the others (their rows; their partial outputs of its rows), and the model a GPU's share of
  // the experts computes (expert_ffn / etp).
  std::vector<std::int64_t> etp_gather_pending_, etp_scatter_pending_;
  routing::MoeModelSpec expert_model_;
  // The shared experts: with tensor parallelism (routing::MoeModelSpec::shared_tp() > 1) a GPU's
  // share of their columns (shared_model_) over its group's tokens, between an all-gather and a
  // reduce-scatter (collectives numbered from kSharedOp, 2 more for a staggered program's layer
  // before): shared_step(), an operation of a layer program or of the plain one (shared_plain()).
  static constexpr int kSharedOp = 1 << 15;
  routing::MoeModelSpec shared_model_;
  bool shared_split() const { return spec_.model.shared_experts > 0 && spec_.model.shared_tp() > 1; }
  sim::Time shared_time(int gpu, std::int64_t tokens);  // the shared experts over `tokens` of the GPU's own
  bool shared_step(int gpu, int base, int pass, std::int64_t tokens, void (MoeForward::*step)(int));
  void shared_plain(int gpu);  // the plain program's shared experts, then after_shared()
  AllToAllSpec comm_;  // the all-to-all's, its row bytes settled
  int shard(int gpu) const { return gpu % (spec_.ep * spec_.etp); }  // which expert shard the GPU holds
  int etp_first(int gpu) const { return gpu - gpu % spec_.etp; }  // the first GPU of its ETP group
  std::int64_t etp_rows(int pass, int gpu, int half = 0) const;   // the rows gpu received in the pass's dispatch
  // Starts gpu's flows of the exchange: its rows to the others once its experts' input is in
  // (gather), or each other GPU's rows' partial outputs once its experts are done (scatter).
  void etp_send(int gpu, int pass, int half, bool gather);
  void etp_arrived(int pass, int half, int gpu, bool gather);
  // The experts with expert tensor parallelism, gather, experts, scatter, in steps
  // (GpuState::tp_sub), as an operation of a layer program (overlap_step(), pair_step()) or of
  // the plain one (etp_plain(), then after_experts()); true once done.
  bool etp_experts_op(int gpu, int pass, int half, void (MoeForward::*step)(int));
  void etp_plain(int gpu);
  std::size_t finished_gpus_ = 0;
  double model_flops_ = 0;
  std::int64_t passes_done_ = 0;
};

}  // namespace moesim::models
