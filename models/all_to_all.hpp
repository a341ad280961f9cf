// The MoE all-to-all: how one layer's dispatch (tokens to their experts) and combine (expert
// outputs back to the tokens' GPUs) become flows, from the layer's DispatchPlans.
//
// Bytes per row (one token's hidden vector): hidden x 2 for bf16; for fp8, hidden x 1 plus one
// fp32 scale per 128 channels (hidden / 128 x 4, rounded up), as DeepEP's fp8 dispatch sends.
// Dispatch rows use network.dispatch_dtype, combine rows network.combine_dtype.
//
// direct (NCCL-style, permute then all-to-all): every (source GPU, destination GPU) pair with
// rows is one flow, a row per kept (token, expert) assignment, so a token with two experts on a
// GPU is sent twice; the combine sends the same rows back.
//
// hierarchical (DeepEP's normal kernels): a token is sent once per destination GPU however many
// of its experts are there; to another node it crosses the scale-out network once per node, to
// that node's GPU with the sender's local index (same rail), which forwards it over NVLink to each
// GPU there that needs it. The combine mirrors it: each GPU sends its outputs for a source's
// tokens (one row per token, reduced over its own experts) over NVLink to the forwarding GPU of
// its node, which, once every GPU of the node that computed for that source has delivered
// (itself included, when its experts are done), sends one reduced row per token over the
// scale-out network. The reductions' compute is not modelled (NVLink-bound and small). Needs EP
// groups made of whole nodes, or inside one node.
//   By default a forwarding GPU stores and forwards whole flows: it forwards a source's tokens
// once that source's scale-out flow has arrived, and sends a source's combine rows once every
// GPU has delivered all of its own. Under fair sharing a node's inbound flows end together near
// the phase's end, so the NVLink forwarding then runs after the scale-out transfer instead of
// beside it (26-37 % slower than DeepEP's benchmark at EP32 and EP64; docs/validation.md). With
// network.forward_chunks = K the forwarding is pipelined, as DeepEP's is: a scale-out flow of R
// rows arrives in min(K, R) equal parts and the forwarding GPU sends each part's share of every
// onward flow (rows split as evenly as whole rows allow) as it lands; in the combine, each GPU's
// rows to the forwarding GPU arrive in as many parts, and it sends chunk j of the reduced rows
// once every GPU has delivered its part j.
//
// low_latency (DeepEP's low-latency kernels, for decode): as direct, a row per (token, expert),
// and every row is a message with a fixed issue cost: a flow of n rows starts after
// n x message_overhead (the sender's warps post messages to different destinations in parallel,
// to one destination one after another).
//
// A GPU's phase is complete when every source that has rows for it has delivered them; the
// owner is called back once per arrival (`arrived`) and counts them against `inbound()`.
//
// A run has passes (a training step: every layer forward, then every layer backward); each pass
// uses its layer's plans. In a backward pass the dispatch phase carries the gradients of the
// combine (token GPU -> expert GPU), in gradient_dispatch_row_bytes (DeepSeek-V3 sends it in
// fp8), and the combine phase those of the dispatch, in combine rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "models/network.hpp"
#include "models/recorder.hpp"
#include "routing/dispatch_plan.hpp"
#include "sim/simulator.hpp"
#include "topology/cluster.hpp"

namespace moesim::models {

enum class AllToAllAlgorithm { direct, hierarchical, low_latency };
enum class Phase { dispatch, combine };
std::string_view to_string(AllToAllAlgorithm a);

struct AllToAllSpec {
  AllToAllAlgorithm algorithm = AllToAllAlgorithm::direct;
  std::int64_t dispatch_row_bytes = 0;
  std::int64_t combine_row_bytes = 0;
  // Training: the backward's all-to-all that sends the combine's gradients to the experts (the
  // gradient before the down projections); 0: combine_row_bytes. DeepSeek-V3 sends it in FP8.
  std::int64_t gradient_dispatch_row_bytes = 0;
  sim::Time message_overhead;  // low_latency: issue cost per row
  // hierarchical: a relay forwards what crosses the scale-out network in up to this many
  // chunks, each as it arrives (1: store and forward, a source's whole flow before any of it).
  std::uint32_t forward_chunks = 1;
};

// Bytes of one row of `hidden` channels in the named dtype ("bf16", "fp8", "fp32").
std::int64_t row_bytes(std::int64_t hidden, int dtype_bytes);

// One pass of a run through the all-to-all: which layer, forward or backward, which row of
// plans it uses, and (gradient accumulation) which micro-batch of the step it belongs to. A
// recomputed forward (activation recomputation) moves its rows as the forward does and is
// recorded as part of the layer's backward pass.
struct AllToAllPass {
  int layer = 0;
  bool backward = false;
  int plan_row = 0;
  int micro_batch = 0;
  bool recompute = false;
};

class AllToAll {
 public:
  using Arrived = std::function<void(int pass, Phase phase, int gpu)>;
  // plans: rows of `groups` plans, one per EP group (with pipeline stages, the groups of one
  // stage); pass p uses plans[passes[p].plan_row * groups + group]. An EP group's `ep` GPUs are
  // `stride` apart (expert tensor parallelism's etp; 1: consecutive GPUs) in blocks of
  // ep x stride consecutive GPUs: GPU g is rank (g / stride) mod ep of group
  // (g / (ep stride) x stride + g mod stride) mod groups of its stage's row.
  AllToAll(sim::Simulator& sim, const topology::Cluster& cluster, NetworkModel& network, Recorder& recorder,
           const AllToAllSpec& spec, const std::vector<routing::DispatchPlan>& plans, int ep, int groups, int stride,
           std::vector<AllToAllPass> passes, Arrived arrived);

  // How many arrivals complete `gpu`'s phase of pass `pass` (0: nothing to wait for).
  std::int64_t inbound(int pass, Phase phase, int gpu) const;
  // `gpu` has its data for the phase ready (dispatch: its tokens, routed; combine: its experts'
  // outputs): start its flows. `arrived` is called with the pass.
  void send(int pass, Phase phase, int gpu);

 private:
  const routing::DispatchPlan& plan(int pass, int gpu) const;
  void start(int pass, Phase phase, int src, int dst, std::int64_t rows, sim::Callback done,
             std::uint32_t parts = 1, NetworkModel::Part on_part = nullptr);
  void dispatch_hierarchical(int pass, int gpu);
  // Chunk j of parts of src's scale-out flow reached the relay: forward its share to the node
  // (block: its counters in forwards_).
  void forward_chunk(int pass, int src, int relay, std::uint32_t j, std::uint32_t parts, std::uint32_t block);
  void combine_hierarchical(int pass, int gpu);
  // Part j of one GPU's combine rows for src reached the relay (parts: the relay's chunks).
  void relay_part(int pass, int relay, int src, std::uint32_t j);
  // The chunks a scale-out transfer of `rows` rows is forwarded in.
  std::uint32_t chunks(std::int64_t rows) const {
    return static_cast<std::uint32_t>(std::min<std::int64_t>(spec_.forward_chunks, std::max<std::int64_t>(rows, 1)));
  }

  sim::Simulator& sim_;
  const topology::Cluster& cluster_;
  NetworkModel& network_;
  Recorder& recorder_;
  AllToAllSpec spec_;
  const std::vector<routing::DispatchPlan>& plans_;
  int ep_, groups_, stride_;
  int rank_of(int gpu) const { return gpu / stride_ % ep_; }
  // The GPU of EP rank `rank` in `gpu`'s group.
  int gpu_of(int gpu, int rank) const { return gpu + (rank - rank_of(gpu)) * stride_; }
  std::vector<AllToAllPass> passes_;
  Arrived arrived_;
  // hierarchical combine: contributions still missing at a relay, [(pass * gpus + src) * nodes + node]
  std::vector<std::int32_t> relay_pending_;
  // With chunks (forward_chunks > 1), counters of the transfers in flight, in blocks reused once
  // released: in the dispatch, per scale-out flow, the chunks still to reach each GPU of the
  // node (by its index there) and then how many of those GPUs wait; in the combine, per relay
  // and source, the contributors still to deliver each part and then the chunks still to reach
  // the source (the block is made at the first contribution; relay_pending_ then holds
  // -(block + 1)).
  struct CounterPool {
    std::size_t width = 0;
    std::vector<std::uint8_t> counters;
    std::vector<std::uint32_t> free;
    std::uint32_t take();
    std::uint8_t* at(std::uint32_t block) { return counters.data() + block * width; }
    void give(std::uint32_t block) { free.push_back(block); }
  };
  CounterPool forwards_, relays_;
};

}  // namespace moesim::models
