#include "models/moe_forward.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <numeric>
#include <set>
#include <string>

#include "models/moe_costs.hpp"
#include "routing/token_router.hpp"
#include "sim/assert.hpp"
#include "sim/parallel.hpp"

namespace moesim::models {

using sim::Time;
using topology::GpuId;

std::string_view to_string(Stage s) {
  switch (s) {
    case Stage::attention: return "attention";
    case Stage::router: return "router";
    case Stage::shared_experts: return "shared_experts";
    case Stage::dispatch: return "dispatch";
    case Stage::experts: return "experts";
    case Stage::combine: return "combine";
    case Stage::reduce: return "reduce";
    case Stage::optimizer: return "optimizer";
    case Stage::grad_sync: return "grad_sync";
    case Stage::dense: return "dense";
    case Stage::pipeline: return "pipeline";
    case Stage::lm_head: return "lm_head";
    case Stage::tp: return "tp";
    case Stage::cp: return "cp";
    case Stage::param_gather: return "param_gather";
  }
  return "?";
}

std::string_view to_string(Recompute r) {
  switch (r) {
    case Recompute::none: return "none";
    case Recompute::attention: return "attention";
    case Recompute::full: return "full";
    case Recompute::selective: return "selective";
  }
  return "?";
}

std::string_view to_string(PipelineSchedule s) {
  switch (s) {
    case PipelineSchedule::one_f_one_b: return "1f1b";
    case PipelineSchedule::gpipe: return "gpipe";
    case PipelineSchedule::zb_h1: return "zb_h1";
    case PipelineSchedule::dualpipev: return "dualpipev";
    case PipelineSchedule::dualpipe: return "dualpipe";
  }
  return "?";
}

bool is_network_wait(Stage s) {
  return s == Stage::dispatch || s == Stage::combine || s == Stage::grad_sync || s == Stage::pipeline || s == Stage::tp ||
         s == Stage::cp || s == Stage::param_gather;
}

std::vector<int> pipeline_bounds(const ForwardSpec& spec) {
  const int chunks = spec.pp * spec.virtual_stages, layers = spec.model.moe_layers;
  MOESIM_ASSERT(spec.pp >= 1 && spec.virtual_stages >= 1 &&
                    (spec.pipeline_layers.empty() || spec.pipeline_layers.size() == static_cast<std::size_t>(chunks)),
                "pipeline_layers must give every model chunk's layer count");
  std::vector<int> bounds{0};
  for (int c = 0; c < chunks; ++c)
    bounds.push_back(bounds.back() + (spec.pipeline_layers.empty() ? layers / chunks + (c >= chunks - layers % chunks ? 1 : 0)
                                                                    : spec.pipeline_layers[static_cast<std::size_t>(c)]));
  for (int c = 0; c < chunks; ++c) MOESIM_ASSERT(bounds[c + 1] > bounds[c], "every model chunk needs an MoE layer");
  MOESIM_ASSERT(bounds.back() == layers, "the model chunks' layers must add up to the model's");
  return bounds;
}

int pipeline_chunk(const ForwardSpec& spec, int layer) {
  const std::vector<int> bounds = pipeline_bounds(spec);
  return static_cast<int>(std::upper_bound(bounds.begin(), bounds.end(), layer) - bounds.begin()) - 1;
}

namespace {

bool dualpipe(const ForwardSpec& spec) { return spec.pipeline_schedule == PipelineSchedule::dualpipe; }
// DualPipe: the second half of the micro-batches runs the other way.
bool reverse(const ForwardSpec& spec, int micro_batch) { return dualpipe(spec) && micro_batch >= spec.micro_batches / 2; }

}  // namespace

int chunk_stage(const ForwardSpec& spec, int chunk, int micro_batch) {
  if (spec.pipeline_schedule == PipelineSchedule::dualpipev) return chunk < spec.pp ? chunk : 2 * spec.pp - 1 - chunk;
  if (reverse(spec, micro_batch)) return spec.pp - 1 - chunk;
  return chunk % spec.pp;
}

bool holds_chunk(const ForwardSpec& spec, int stage, int chunk) {
  return chunk_stage(spec, chunk) == stage || (dualpipe(spec) && spec.pp - 1 - chunk == stage);
}

int sync_stage(const ForwardSpec& spec, int stage) { return dualpipe(spec) ? std::min(stage, spec.pp - 1 - stage) : stage; }

int last_micro_batch(const ForwardSpec& spec, int stage, int chunk) {
  if (!dualpipe(spec)) return spec.micro_batches - 1;
  return chunk == stage ? spec.micro_batches / 2 - 1 : spec.micro_batches - 1;
}

int weight_copies(const ForwardSpec& spec) { return dualpipe(spec) ? 2 : 1; }

int pipeline_stage(const ForwardSpec& spec, int layer, int micro_batch) {
  return chunk_stage(spec, pipeline_chunk(spec, layer), micro_batch);
}

std::vector<int> stage_layers(const ForwardSpec& spec, int stage) {
  const std::vector<int> bounds = pipeline_bounds(spec);
  std::vector<int> out;
  for (std::size_t c = 0; c + 1 < bounds.size(); ++c)
    if (holds_chunk(spec, stage, static_cast<int>(c)))
      for (int l = bounds[c]; l < bounds[c + 1]; ++l) out.push_back(l);
  return out;
}

GpuParams stage_params(const ForwardSpec& spec, const std::vector<routing::Placement>& placements, int stage) {
  // Chunk 0 brings the dense layers and the embedding, the last chunk the LM head.
  const std::vector<int> bounds = pipeline_bounds(spec);
  GpuParams p;
  for (std::size_t c = 0; c + 1 < bounds.size(); ++c) {
    if (!holds_chunk(spec, stage, static_cast<int>(c))) continue;
    const GpuParams chunk = gpu_params(spec.model, placements, bounds[c], bounds[c + 1]);
    p.replicated += chunk.replicated;
    p.experts += chunk.experts / spec.etp;  // each GPU of an ETP group holds 1/etp of its experts
    p.kept += chunk.kept;
  }
  return p;
}

namespace {

// DualPipeV's order on stage r of pp (deepseek-ai/DualPipe, dualpipev.py; pipeline_order()
// spells it out) for n micro-batches per arm: its two chunks are the V's arms, 0 and 1; an
// entry's micro-batch and chunk are (k, arm) mapped by `place` (DualPipeV: k and chunk r or
// 2 pp - 1 - r; DualPipe: one arm per direction).
template <typename Place>
std::vector<PipelineItem> dualpipev_order(const ForwardSpec& spec, int pp, int n, int r, Place place) {
  MOESIM_ASSERT(n >= 2 * pp, "DualPipeV needs at least 2 pp micro-batches (per direction)");
  std::array<int, 2> forwards{}, backwards{};          // per arm, the next micro-batch
  std::deque<PipelineItem> weights;                   // the split backwards' weight passes to come, oldest first
  std::vector<PipelineItem> order;
  const auto item = [&](int k, int arm, bool back, bool weight, bool overlapped) {
    const auto [mb, chunk] = place(k, arm);
    return PipelineItem{mb, chunk, back, weight, overlapped};
  };
  const auto forward = [&](int arm) { order.push_back(item(forwards[arm]++, arm, false, false, false)); };
  const auto back = [&](int arm, bool split = false, bool overlapped = false) {
    if (!spec.training) return;
    order.push_back(item(backwards[arm]++, arm, true, false, overlapped));
    if (split) weights.push_back(PipelineItem{order.back().micro_batch, order.back().chunk, false, true});
  };
  const auto weight = [&] {
    if (!spec.training) return;
    order.push_back(weights.front());
    weights.pop_front();
  };
  // A forward and a backward of the other arm, together with forward-backward overlap.
  const auto pair = [&](int arm, bool overlapped) {
    forward(arm);
    back(1 - arm, false, overlapped && spec.forward_backward_overlap);
  };
  for (int i = 0; i < 2 * (pp - 1 - r); ++i) forward(0);
  for (int i = 0; i <= r; ++i) {
    forward(0);
    forward(1);
  }
  for (int i = 0; i < pp - 1 - r; ++i) {
    back(1, true);
    weight();
    forward(1);
  }
  for (int i = 0; i < n - 2 * pp + r + 1; ++i) {
    pair(0, !(i == 0 && r == pp - 1));  // the last stage runs its first pair one pass after the other
    pair(1, true);
  }
  for (int i = 0; i < pp - 1 - r; ++i) {
    back(1);
    pair(1, true);
  }
  for (int i = 0; i < 2 * (r + 1); ++i) back(i % 2 == 0 ? 1 : 0, i >= r + 1);  // the last r + 1 split
  for (int i = 0; i < pp - 1 - r; ++i) {
    weight();
    back(0, true);
  }
  while (!weights.empty()) weight();
  return order;
}

}  // namespace

std::vector<PipelineItem> pipeline_order(const ForwardSpec& spec, int stage) {
  if (spec.pipeline_schedule == PipelineSchedule::dualpipev) {
    MOESIM_ASSERT(spec.virtual_stages == 2, "DualPipeV needs two chunks per stage");
    return dualpipev_order(spec, spec.pp, spec.micro_batches, stage, [&](int k, int arm) {
      return std::pair{k, arm == 0 ? stage : 2 * spec.pp - 1 - stage};
    });
  }
  if (dualpipe(spec)) {
    // Stages r and pp - 1 - r run DualPipeV's order over pp / 2 stages as its stage
    // min(r, pp - 1 - r), on half the micro-batches per arm: its first arm is chunk
    // min(r, pp - 1 - r), of the first half's micro-batches on the first half of the stages and
    // of the second half's on the second; its second arm chunk max(r, pp - 1 - r), the other
    // direction's (dualpipe.py: phase ^ is_in_second_half).
    const int half = spec.pp / 2, low = std::min(stage, spec.pp - 1 - stage), n = spec.micro_batches / 2;
    const bool second = stage >= half;
    MOESIM_ASSERT(spec.pp % 2 == 0 && spec.micro_batches % 2 == 0 && spec.virtual_stages == 1,
                  "DualPipe needs an even number of stages and of micro-batches, one chunk per stage");
    return dualpipev_order(spec, half, n, low, [&](int k, int arm) {
      const bool reversed = (arm == 1) != second;
      return std::pair{reversed ? n + k : k, arm == 0 ? low : spec.pp - 1 - low};
    });
  }
  const int pp = spec.pp, v = spec.virtual_stages, batches = spec.micro_batches;
  // Forward-backward overlap: one forward more first, then each backward with the forward before it.
  const bool fb = spec.training && spec.forward_backward_overlap;
  std::vector<PipelineItem> order;
  if (v == 1) {
    const auto forward = [&](int mb) { order.push_back(PipelineItem{mb, stage, false}); };
    const auto back = [&](int mb, bool overlapped = false) { order.push_back(PipelineItem{mb, stage, true, false, overlapped}); };
    const auto weight = [&](int mb) { order.push_back(PipelineItem{mb, stage, false, true}); };
    const int warm = std::min(pp - 1 - stage + (fb ? 1 : 0), batches);
    if (!spec.training) {
      for (int mb = 0; mb < batches; ++mb) forward(mb);
    } else if (spec.pipeline_schedule == PipelineSchedule::gpipe) {
      for (int mb = 0; mb < batches; ++mb) forward(mb);
      for (int mb = 0; mb < batches; ++mb) back(mb);
    } else if (spec.pipeline_schedule == PipelineSchedule::zb_h1) {
      // 1F1B's forwards and backwards; stage s holds back its first s weight passes, then runs
      // one after each backward, the rest at the end.
      int weights = 0;
      for (int mb = 0; mb < warm; ++mb) forward(mb);
      for (int mb = 0; mb + warm < batches; ++mb) {
        forward(mb + warm);
        back(mb);
        if (mb >= stage) weight(weights++);
      }
      for (int mb = batches - warm; mb < batches; ++mb) {
        back(mb);
        weight(weights++);
      }
      while (weights < batches) weight(weights++);
    } else {  // 1F1B
      for (int mb = 0; mb < warm; ++mb) forward(mb);
      for (int mb = 0; mb + warm < batches; ++mb) {
        forward(mb + warm);
        back(mb, fb);
      }
      for (int mb = batches - warm; mb < batches; ++mb) back(mb);
    }
    return order;
  }
  // Interleaved: the k-th forward (backward) of the stage's batches * v is micro-batch
  // k / (pp v) * pp + k mod pp through its chunk (k mod pp v) / pp (backward: counted from its
  // last chunk).
  MOESIM_ASSERT(pp > 1 && batches % pp == 0 && spec.pipeline_schedule == PipelineSchedule::one_f_one_b,
                "the interleaved schedule needs pipeline stages, 1F1B and micro-batches in whole groups of pp");
  const int total = batches * v, group = pp * v;
  const auto item = [&](int k, bool back, bool overlapped = false) {
    const int in_group = k % group;
    const int local = back ? v - 1 - in_group / pp : in_group / pp;
    order.push_back(PipelineItem{k / group * pp + in_group % pp, local * pp + stage, back, false, overlapped});
  };
  if (!spec.training) {
    for (int k = 0; k < total; ++k) item(k, false);
    return order;
  }
  const int warm = std::min(total, (pp - 1 - stage) * 2 + (v - 1) * pp + (fb ? 1 : 0));
  for (int k = 0; k < warm; ++k) item(k, false);
  for (int k = 0; k + warm < total; ++k) {
    item(k + warm, false);
    item(k, true, fb);
  }
  for (int k = total - warm; k < total; ++k) item(k, true);
  return order;
}

int group_first_gpu(const ForwardSpec& spec, int gpus, int layer, int group, int micro_batch) {
  return pipeline_stage(spec, layer, micro_batch) * (gpus / spec.pp) + group * spec.ep;
}

int ep_group_gpu(const ForwardSpec& spec, int gpus, int layer, int group, int rank, int micro_batch) {
  // Group j of a block of ep x etp GPUs: place j of each of its ETP groups.
  const int block = spec.ep * spec.etp;
  return pipeline_stage(spec, layer, micro_batch) * (gpus / spec.pp) + group / spec.etp * block + rank * spec.etp +
         group % spec.etp;
}

std::vector<routing::Placement> make_placements(const ForwardSpec& spec, int gpus, int gpus_per_node) {
  routing::PlacementSpec placement = spec.placement;
  if (spec.placement_history > 0 && placement.layer_load.empty()) {
    // Each layer routed by its pipeline stage's EP groups, as the run routes it (DualPipe: the
    // stages of the first half of the micro-batches).
    std::vector<int> first;
    for (int l = 0; l < spec.model.moe_layers; ++l) first.push_back(group_first_gpu(spec, gpus, l, 0));
    placement.layer_load = routing::observed_load(spec.model, spec.routing, spec.ep, gpus / spec.pp / spec.ep,
                                                  spec.tokens_per_gpu, spec.seed, spec.placement_history,
                                                  spec.micro_batches, first);
  }
  std::vector<routing::Placement> out;
  for (int l = 0; l < spec.model.moe_layers; ++l)
    // A node holds gpus_per_node / etp ranks of an EP group (expert tensor parallelism).
    out.push_back(routing::make_placement(placement, spec.routing, spec.model.experts, spec.ep, gpus_per_node / spec.etp,
                                          spec.seed, l));
  return out;
}

std::vector<routing::ContextLoad> decode_context_loads(const ForwardSpec& spec, int gpus) {
  const routing::MoeModelSpec& m = spec.model;
  routing::DecodeContexts d;
  d.mean = spec.context_length;
  d.sigma = spec.context_sigma;
  d.balanced = spec.context_balanced;
  d.micro_batches = spec.micro_batches;
  d.groups = gpus / spec.pp / m.tp;
  d.sequences = m.tp * spec.sequences();
  d.window = m.sliding_window;
  d.top = routing::is_sparse_mla(m) ? m.mla.index_topk : 0;
  return routing::context_loads(d, spec.seed, spec.routing.step);
}

double pipeline_held_layers(const ForwardSpec& spec, int stage, double after_backward) {
  const std::vector<int> bounds = pipeline_bounds(spec);
  const std::vector<PipelineItem> order = pipeline_order(spec, stage);
  std::set<std::pair<int, int>> split;  // (micro-batch, chunk) of the backwards with a weight pass
  for (const PipelineItem& it : order)
    if (it.weight) split.insert({it.micro_batch, it.chunk});
  double held = 0, most = 0;
  for (const PipelineItem& it : order) {
    const double layers = bounds[static_cast<std::size_t>(it.chunk) + 1] - bounds[static_cast<std::size_t>(it.chunk)] +
                          (it.chunk == 0 ? spec.model.dense_layers : 0);
    // A split backward's activations stay until its weight pass, with what it rebuilt for it.
    const bool is_split = split.count({it.micro_batch, it.chunk}) > 0;
    if (!it.backward && !it.weight)
      held += layers;
    else if (!is_split && it.backward)
      held -= layers;
    else if (is_split && it.backward)
      held += (after_backward - 1) * layers;
    else if (it.weight)
      held -= after_backward * layers;
    most = std::max(most, held);
  }
  return most;
}

int pipeline_held_head(const ForwardSpec& spec, int stage) {
  const int last = static_cast<int>(pipeline_bounds(spec).size()) - 2;
  int held = 0, most = 0;
  for (const PipelineItem& it : pipeline_order(spec, stage)) {
    if (it.chunk != last || it.weight) continue;
    held += it.backward ? -1 : 1;
    most = std::max(most, held);
  }
  return most;
}

MoeForward::MoeForward(sim::Simulator& sim, const topology::Cluster& cluster,
                       NetworkModel& network, const Roofline& roofline, const ForwardSpec& spec,
                       Recorder& recorder)
    : sim_(sim),
      cluster_(cluster),
      network_(network),
      roofline_(roofline),
      spec_(spec),
      recorder_(recorder),
      profile_backward_(spec.profile && spec.profile->measures("experts_bwd")) {
  placements_ = spec.placements.empty() ? make_placements(spec, cluster.gpu_count(), cluster.spec().gpus_per_node)
                                        : spec.placements;
  const int gpus = cluster.gpu_count();
  MOESIM_ASSERT(gpus % spec.ep == 0, "GPUs do not divide into EP groups");
  MOESIM_ASSERT(spec.etp >= 1 && spec.model.expert_ffn % spec.etp == 0 && cluster.spec().gpus_per_node % spec.etp == 0,
                "expert tensor parallelism must divide the experts' FFN and a node's GPUs");
  expert_model_ = spec.model;
  expert_model_.expert_ffn /= spec.etp;
  MOESIM_ASSERT(spec.model.expert_ffn % spec.model.shared_tp() == 0 || spec.model.shared_experts == 0,
                "tensor-parallel shared experts must divide their FFN");
  shared_model_ = spec.model;
  shared_model_.expert_ffn /= spec.model.shared_tp();
  const int tp = spec.model.tp;
  MOESIM_ASSERT(tp == 1 || (cluster.spec().gpus_per_node % tp == 0 && (gpus / spec.pp) % tp == 0 &&
                            spec.model.attention_heads % tp == 0),
                "tensor parallelism needs groups inside a node and within a stage, and heads that divide");
  gpus_.resize(static_cast<std::size_t>(gpus));
  for (GpuState& g : gpus_) {
    g.dense_forward.assign(static_cast<std::size_t>(spec.micro_batches), 0);
    g.head_backward.assign(static_cast<std::size_t>(spec.micro_batches), 0);
  }
  speed_.assign(static_cast<std::size_t>(gpus), 1.0);
  for (int g = 0; g < gpus; ++g) {
    auto& v = speed_[static_cast<std::size_t>(g)];
    if (static_cast<std::size_t>(g) < spec.gpu_speed.size()) v = spec.gpu_speed[static_cast<std::size_t>(g)];
    if (spec.straggler_probability > 0) {
      sim::Rng rng(spec.seed, "compute/straggler/step" + std::to_string(spec.routing.step) + "/gpu" + std::to_string(g));
      if (rng.uniform01() < spec.straggler_probability) v *= spec.straggler_speed;
    }
    if (spec.jitter > 0)
      jitter_rng_.emplace_back(spec.seed, "compute/jitter/step" + std::to_string(spec.routing.step) + "/gpu" + std::to_string(g));
  }
  MOESIM_ASSERT(!spec.two_batch_overlap || spec.tokens_per_gpu % 2 == 0, "two-batch overlap needs an even token count");
  if (spec.varied_contexts()) context_loads_ = decode_context_loads(spec, gpus);
  const std::size_t cells = static_cast<std::size_t>(gpus) * static_cast<std::size_t>(passes()) *
                            static_cast<std::size_t>(halves());
  dispatch_pending_.assign(cells, 0);
  combine_pending_.assign(cells, 0);
  if (spec.etp > 1) {
    etp_gather_pending_.assign(cells, 0);
    etp_scatter_pending_.assign(cells, 0);
  }
  // Pipeline stages and their schedules (pipeline_order()): a chunk's forward runs its layers in
  // order, its backward last layer first.
  const int pp = spec.pp, batches = spec.micro_batches;
  MOESIM_ASSERT(pp >= 1 && gpus % pp == 0 && (gpus / pp) % (spec.ep * spec.etp) == 0,
                "pipeline stages must divide the GPUs into whole EP groups (blocks of ep x etp)");
  const bool dualpipev = spec.pipeline_schedule == PipelineSchedule::dualpipev;
  MOESIM_ASSERT(!(weight_split() && spec.two_batch_overlap), "weight passes with two-batch overlap are not modelled");
  MOESIM_ASSERT(!(weight_split() && ((spec.recompute != Recompute::none && spec.recompute != Recompute::selective) ||
                                     (spec.virtual_stages > 1 && !dualpipev))),
                "ZB-H1 with recomputation (but selective) or virtual stages, or DualPipeV with it, is not modelled");
  MOESIM_ASSERT(!spec.forward_backward_overlap ||
                    (!spec.two_batch_overlap && spec.recompute != Recompute::full &&
                     (spec.pipeline_schedule == PipelineSchedule::one_f_one_b || dualpipev || dualpipe(spec))),
                "forward-backward overlap runs 1F1B, DualPipeV or DualPipe without two-batch overlap or full recomputation");
  bounds_ = pipeline_bounds(spec);
  for (int c = 0; c < chunks(); ++c)
    for (int l = chunk_first(c); l < chunk_first(c + 1); ++l) chunk_.push_back(c);
  split_.assign(static_cast<std::size_t>(batches * chunks()), 0);
  for (int st = 0; st < pp; ++st) {
    std::vector<int> order, forward;  // forward: the last forward item's passes
    std::vector<char> paired;
    const std::vector<PipelineItem> items = pipeline_order(spec, st);
    for (const PipelineItem& it : items)
      if (it.weight) split_[static_cast<std::size_t>(it.micro_batch * chunks() + it.chunk)] = 1;
    for (const PipelineItem& it : items) {
      const int base = it.micro_batch * batch_passes();
      std::vector<int> passes;
      if (it.weight) {
        for (int l = chunk_first(it.chunk + 1) - 1; l >= chunk_first(it.chunk); --l) passes.push_back(weight_pass(it.micro_batch, l));
      } else if (!it.backward) {
        for (int l = chunk_first(it.chunk); l < chunk_first(it.chunk + 1); ++l) passes.push_back(base + l);
        forward = passes;
      } else {
        for (int l = chunk_first(it.chunk + 1) - 1; l >= chunk_first(it.chunk); --l) {
          const int back = backward_pass(it.micro_batch, l);
          if (recomputes(l)) passes.push_back(back - 1);  // the layer's forward again first
          passes.push_back(back);
        }
      }
      if (it.overlapped) {
        // The forward item just scheduled and this backward, layer by layer: the forward's i-th
        // layer with the backward's i-th, then the longer one's layers left.
        MOESIM_ASSERT(!recomputes(chunk_first(it.chunk)) && order.size() >= forward.size(), "an overlapped backward needs its forward");
        order.resize(order.size() - forward.size());
        paired.resize(order.size());
        const std::size_t both = std::min(forward.size(), passes.size());
        for (std::size_t i = 0; i < both; ++i) {
          order.insert(order.end(), {forward[i], passes[i]});
          paired.insert(paired.end(), {1, 0});
        }
        order.insert(order.end(), forward.begin() + static_cast<std::ptrdiff_t>(both), forward.end());
        order.insert(order.end(), passes.begin() + static_cast<std::ptrdiff_t>(both), passes.end());
      } else {
        order.insert(order.end(), passes.begin(), passes.end());
      }
      paired.resize(order.size());
    }
    total_passes_ += static_cast<std::int64_t>(order.size()) * (gpus / pp);
    schedule_.push_back(std::move(order));
    paired_.push_back(std::move(paired));
  }
  const auto inputs =
      static_cast<std::size_t>(gpus) * static_cast<std::size_t>(batches) * static_cast<std::size_t>(spec.virtual_stages);
  activations_pending_.assign(inputs, 0);
  gradients_pending_.assign(inputs, 0);
  for (int g = 0; g < gpus; ++g) {
    for (int mb = 0; mb < batches; ++mb)
      for (int c = 0; c < chunks(); ++c) {
        if (chunk_stage(spec, c, mb) != stage_of(g)) continue;
        const auto at = (static_cast<std::size_t>(g) * static_cast<std::size_t>(batches) + static_cast<std::size_t>(mb)) *
                            static_cast<std::size_t>(spec.virtual_stages) +
                        static_cast<std::size_t>(c / pp);
        activations_pending_[at] = c > 0;
        gradients_pending_[at] = spec.training && c + 1 < chunks();
      }
    gpus_[static_cast<std::size_t>(g)].pass = schedule_[static_cast<std::size_t>(stage_of(g))].front();
  }
}

int MoeForward::plan_row(int micro_batch, int layer, int half) const {
  return (micro_batch * spec_.model.moe_layers + layer) * halves() + half;
}

std::size_t MoeForward::plan_index(int micro_batch, int layer, int group, int half) const {
  return static_cast<std::size_t>(plan_row(micro_batch, layer, half)) * static_cast<std::size_t>(stage_groups()) +
         static_cast<std::size_t>(group);
}

const routing::DispatchPlan& MoeForward::plan(int pass, int gpu, int half) const {
  return plans_[plan_index(micro_batch(pass), layer_of(pass), ep_group_in_stage(spec_, stage_gpus(), gpu), half)];
}

GpuParams layer_params(const ForwardSpec& spec, const std::vector<routing::Placement>& placements, int layer) {
  GpuParams p = gpu_params(spec.model, placements, layer, layer + 1);
  p.experts /= spec.etp;  // as stage_params()
  return p;
}

std::int64_t gathered_weight_bytes(const ForwardSpec& spec, const GpuParams& p) {
  const std::int64_t b = spec.model.dtype_bytes;
  return spec.fp8_param_gather ? (p.replicated - p.kept) + p.experts + b * p.kept : b * p.total();
}

namespace {

// Half `half` of each rank's tokens (two-batch overlap).
routing::TokenBatch half_of(const routing::TokenBatch& b, int half) {
  routing::TokenBatch h;
  h.top_k = b.top_k;
  h.ranks = b.ranks;
  h.tokens_per_rank = b.tokens_per_rank / 2;
  const auto k = static_cast<std::size_t>(b.top_k);
  const auto per = static_cast<std::size_t>(h.tokens_per_rank) * k;
  for (int r = 0; r < b.ranks; ++r) {
    const std::size_t from = (static_cast<std::size_t>(r) * static_cast<std::size_t>(b.tokens_per_rank) +
                              static_cast<std::size_t>(half) * static_cast<std::size_t>(h.tokens_per_rank)) * k;
    h.experts.insert(h.experts.end(), b.experts.begin() + static_cast<std::ptrdiff_t>(from),
                     b.experts.begin() + static_cast<std::ptrdiff_t>(from + per));
    if (!b.gates.empty())
      h.gates.insert(h.gates.end(), b.gates.begin() + static_cast<std::ptrdiff_t>(from),
                     b.gates.begin() + static_cast<std::ptrdiff_t>(from + per));
  }
  return h;
}

// Two halves' plans as one, for the reports (every count adds up).
routing::DispatchPlan merged(routing::DispatchPlan a, const routing::DispatchPlan& b) {
  auto add = [](std::vector<std::int64_t>& x, const std::vector<std::int64_t>& y) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  };
  add(a.sends, b.sends);
  add(a.expert_routed, b.expert_routed);
  add(a.expert_computed, b.expert_computed);
  add(a.expert_padded, b.expert_padded);
  add(a.slot_computed, b.slot_computed);
  add(a.slot_padded, b.slot_padded);
  add(a.gpu_routed, b.gpu_routed);
  add(a.gpu_dropped, b.gpu_dropped);
  add(a.token_sends, b.token_sends);
  add(a.node_sends, b.node_sends);
  a.tokens_per_gpu += b.tokens_per_gpu;
  return a;
}

}  // namespace

void MoeForward::start(const std::function<void(double)>& preparing) {
  // The EP groups of a layer's pipeline stage route it; group g of the stage that runs layer l
  // for micro-batch mb starts at GPU first(l, g, mb).
  const int groups = stage_groups();
  const auto first = [this](int layer, int group, int mb) {
    return group_first_gpu(spec_, cluster_.gpu_count(), layer, group, mb);
  };
  // Where the group's rank 0 is, and (for the plan's node of each rank) its block's first GPU
  // counted in ETP groups: a node holds gpus_per_node / etp of its ranks.
  const auto at = [this](int layer, int group, int mb) { return ep_group_gpu(spec_, cluster_.gpu_count(), layer, group, 0, mb); };
  const auto plan_first = [&](int layer, int group, int mb) { return at(layer, group, mb) / spec_.etp; };
  // Routing is untimed and each (micro-batch, layer, group) draws from its own streams, so the
  // plans are built on all cores; the result does not depend on the thread count. When a
  // layer's routing depends on the previous layer's, each group routes a micro-batch's layers in
  // order.
  const int layers = spec_.model.moe_layers;
  const int batches = spec_.micro_batches;
  const std::size_t count = static_cast<std::size_t>(batches) * static_cast<std::size_t>(layers) * static_cast<std::size_t>(groups);
  plans_.assign(count * static_cast<std::size_t>(halves()), routing::DispatchPlan{});
  const routing::TokenRouter router(spec_.model, spec_.routing, spec_.ep, spec_.seed,
                                    spec_.routing.drop_policy == routing::DropPolicy::gate);
  const bool chained = router.layers_depend();
  sim::parallel_for(chained ? static_cast<std::size_t>(batches * groups) : count, [&](std::size_t item) {
    routing::TokenBatch batch, previous;
    // item: (micro-batch, group) when chained, else (micro-batch, layer, group).
    const int g = static_cast<int>(item % static_cast<std::size_t>(groups));
    const int rest = static_cast<int>(item / static_cast<std::size_t>(groups));
    const int mb = chained ? rest : rest / layers;
    const int first_layer = chained ? 0 : rest % layers;
    const int last_layer = chained ? layers - 1 : first_layer;
    for (int l = first_layer; l <= last_layer; ++l) {
      std::swap(batch, previous);
      router.route(l, first(l, g, mb), spec_.tokens_per_gpu, &previous, batch, mb);
      const auto& placement = placements_[static_cast<std::size_t>(l)];
      if (halves() == 1) {
        plans_[plan_index(mb, l, g, 0)] = routing::make_dispatch_plan(spec_.routing, placement, plan_first(l, g, mb), batch);
      } else {
        for (int h = 0; h < 2; ++h)
          plans_[plan_index(mb, l, g, h)] =
              routing::make_dispatch_plan(spec_.routing, placement, plan_first(l, g, mb), half_of(batch, h));
      }
    }
  }, [&](std::size_t done, std::size_t of) {
    if (preparing) preparing(of > 0 ? static_cast<double>(done) / static_cast<double>(of) : 1.0);
  });
  for (int mb = 0; mb < batches; ++mb)
    for (int l = 0; l < layers; ++l)
      for (int g = 0; g < groups; ++g) {
        if (halves() == 1) {
          recorder_.on_routing(l, at(l, g, mb), spec_.etp, plans_[plan_index(mb, l, g, 0)], mb);
        } else {
          recorder_.on_routing(l, at(l, g, mb), spec_.etp, merged(plans_[plan_index(mb, l, g, 0)], plans_[plan_index(mb, l, g, 1)]), mb);
        }
      }
  AllToAllSpec& comm = comm_;
  comm = spec_.all_to_all;
  const std::int64_t model_row = row_bytes(spec_.model.hidden, spec_.model.dtype_bytes);
  if (comm.dispatch_row_bytes == 0) comm.dispatch_row_bytes = model_row;
  if (comm.combine_row_bytes == 0) comm.combine_row_bytes = model_row;
  if (comm.gradient_dispatch_row_bytes == 0) comm.gradient_dispatch_row_bytes = comm.combine_row_bytes;
  // The all-to-all's passes: one per (pass, half).
  std::vector<AllToAllPass> a2a_passes;
  for (int p = 0; p < passes(); ++p)
    for (int h = 0; h < halves(); ++h)
      a2a_passes.push_back(AllToAllPass{.layer = layer_of(p),
                                        .backward = backward(p),
                                        .plan_row = plan_row(micro_batch(p), layer_of(p), h),
                                        .micro_batch = micro_batch(p),
                                        .recompute = recompute(p)});
  all_to_all_ = std::make_unique<AllToAll>(sim_, cluster_, network_, recorder_, comm, plans_, spec_.ep, groups, spec_.etp,
                                           std::move(a2a_passes),
                                           [this](int pass, Phase phase, int gpu) { arrived(pass, phase, gpu); });
  // Sources that send nothing are not waited for (each GPU's passes: its stage's).
  for (int g = 0; g < cluster_.gpu_count(); ++g)
    for (const int p : schedule_[static_cast<std::size_t>(stage_of(g))])
      for (int h = 0; h < halves(); ++h) {
        pending(dispatch_pending_, g, p, h) = all_to_all_->inbound(p * halves() + h, Phase::dispatch, g);
        pending(combine_pending_, g, p, h) = all_to_all_->inbound(p * halves() + h, Phase::combine, g);
        if (spec_.etp > 1) {
          // The ETP group's exchanges: the rows of each other GPU that received some (gather),
          // and, where this GPU received rows, every other GPU's partial outputs of them.
          std::int64_t from = 0;
          for (int peer = etp_first(g); peer < etp_first(g) + spec_.etp; ++peer) from += peer != g && etp_rows(p, peer, h) > 0;
          pending(etp_gather_pending_, g, p, h) = from;
          pending(etp_scatter_pending_, g, p, h) = etp_rows(p, g, h) > 0 ? spec_.etp - 1 : 0;
        }
      }
  if (spec_.training && spec_.gradient_sync) {
    // Gradient bytes per GPU: one gradient per weight it holds, in the gradients' dtype (and the
    // all-gathered weights, with a sharded optimizer, as many in the model dtype), per bucket of
    // MoE layers. Each pipeline stage synchronises its own weights among its GPUs.
    const auto& m = spec_.model;
    CollectiveContext ctx{sim_, network_, recorder_, cluster_.spec().gpus_per_node, spec_.nvls_efficiency};
    ctx.mesh = cluster_.mesh();
    const auto sync_kind = spec_.optimizer_sharding || sharded_params() ? CollectiveKind::reduce_scatter : CollectiveKind::all_reduce;
    auto synced_one = [this](int gpu) {
      // The last bucket is joined at the end of the backward pass: a GPU whose buckets are
      // all done before it gets there goes on when it does.
      if (--sync_left_[static_cast<std::size_t>(gpu)] == 0 && gpus_[static_cast<std::size_t>(gpu)].wait == Wait::sync)
        synced(gpu);
    };
    auto gathered_one = [this](int gpu) {
      if (--sync_left_[static_cast<std::size_t>(gpu)] == 0) gathered(gpu);
    };
    // group: the members sharing one sharded copy (shard_group; all of them without it). stride:
    // the replicated weights' collectives run one per tensor-parallel rank (every tp-th GPU holds
    // the same part of them), the experts' over GPUs that hold the same shard.
    // bytes: the gradients' (count x grad_bytes) or the gathered weights' (gathered_weight_bytes).
    const auto build = [&](CollectiveKind kind, std::vector<int> members, std::size_t stride, std::size_t group,
                           std::int64_t bytes, Collective::Done done) {
      return make_strided_collective(ctx, spec_.gradient_sync_algorithm, kind, std::move(members), stride,
                                     kind == CollectiveKind::all_reduce ? 0 : group, sim::Bytes(bytes), std::move(done),
                                     spec_.gradient_sync_chunks);
    };
    const auto tp = static_cast<std::size_t>(m.tp);
    // Without a shard group, 0: over all the members, DualPipe's two copies included, as the
    // optimizer's share is (optimizer_cost).
    const auto dense_group = static_cast<std::size_t>(spec_.shard_group > 0 ? shard_gpus(spec_, stage_gpus()) : 0);
    const auto expert_group = static_cast<std::size_t>(spec_.shard_group > 0 ? shard_blocks(spec_, stage_gpus()) : 0);
    // Buckets of the stage's MoE layers in backward order (its last chunk's from its last layer
    // first): bucket b takes positions [b n / buckets, (b + 1) n / buckets) of its n layers and ends
    // (in backward order) at layer bucket_end_[stage * buckets + b]. Every stage has as many
    // buckets (at most its fewest layers).
    std::vector<std::vector<int>> backward_layers;
    int fewest = spec_.model.moe_layers;
    for (int st = 0; st < spec_.pp; ++st) {
      std::vector<int> own = stage_layers(spec_, st);
      std::reverse(own.begin(), own.end());
      fewest = std::min(fewest, static_cast<int>(own.size()));
      backward_layers.push_back(std::move(own));
    }
    // Parameter sharding reduce-scatters each layer's gradients after its backward (FSDP's units:
    // one a layer), in every micro-batch.
    buckets_ = sharded_params() ? fewest : std::clamp(spec_.gradient_sync_buckets, 1, fewest);
    const int reps = sharded_params() ? spec_.micro_batches : 1;
    const std::int64_t expert = 3 * m.hidden * m.expert_ffn;
    // DualPipe: stages s and pp - 1 - s hold the same chunks and synchronise them together (the
    // collectives at the lower stage's index; the other's entries stay empty). An expert shard
    // (an EP rank's experts, or with expert tensor parallelism one GPU's share of them: place x
    // of each block of ep x etp GPUs) is held by one GPU per block.
    const int copies = weight_copies(spec_);
    const int shards = spec_.ep * spec_.etp, blocks = stage_blocks();
    const bool rings = blocks * copies > 1;
    for (int rep = 0; rep < reps; ++rep)  // [rep][stage][bucket]: per micro-batch with parameter sharding
    for (int st = 0; st < spec_.pp; ++st) {
      std::vector<int> syncing{st};
      if (copies == 2) syncing.push_back(spec_.pp - 1 - st);
      std::vector<int> all;
      for (const int t : syncing)
        for (int g = t * stage_gpus(); g < (t + 1) * stage_gpus(); ++g) all.push_back(g);
      // The ring of expert shard x over the stages' blocks.
      const auto ring = [&](int x) {
        std::vector<int> members;
        for (const int t : syncing)
          for (int b = 0; b < blocks; ++b) members.push_back(t * stage_gpus() + b * shards + x);
        return members;
      };
      const bool own = sync_stage(spec_, st) == st;
      const auto& order = backward_layers[static_cast<std::size_t>(st)];
      const int n = static_cast<int>(order.size());
      for (int b = 0; b < buckets_; ++b) {
        const int from = b * n / buckets_, to = (b + 1) * n / buckets_;  // positions [from, to) in this bucket
        std::int64_t experts = 0, moe_replicated = 0;
        for (int i = from; i < to; ++i) {
          const int layer = order[static_cast<std::size_t>(i)];
          experts += placements_[static_cast<std::size_t>(layer)].slots_per_gpu * expert / spec_.etp;
          moe_replicated += moe_layer_replicated(m, layer);
        }
        // The dense layers and the embedding with the last bucket of the stage of chunk 0, the LM
        // head with the first of the stage of the last chunk (its gradients are the first the
        // backward pass has; DualPipeV holds both on stage 0).
        const bool dense = holds_chunk(spec_, st, 0) && b + 1 == buckets_, head = holds_chunk(spec_, st, chunks() - 1) && b == 0;
        const std::int64_t replicated = moe_replicated + (dense ? dense_layers_params(m) + embedding_params(m) : 0) +
                                        (head ? embedding_params(m) : 0);
        if (rep == 0) bucket_end_.push_back(order[static_cast<std::size_t>(to - 1)]);
        dense_sync_.push_back(own ? build(sync_kind, all, tp, dense_group, replicated * spec_.grad_bytes(), synced_one) : nullptr);
        if (rings)
          for (int x = 0; x < shards; ++x)
            expert_sync_.push_back(own ? build(sync_kind, ring(x), 1, expert_group, experts * spec_.grad_bytes(), synced_one)
                                       : nullptr);
      }
      if (spec_.optimizer_sharding && !sharded_params()) {  // (sharded weights are gathered layer by layer)
        const GpuParams params = stage_params(spec_, placements_, st);
        const std::int64_t dense_bytes = gathered_weight_bytes(spec_, GpuParams{params.replicated, 0, params.kept});
        const std::int64_t expert_bytes = gathered_weight_bytes(spec_, GpuParams{0, params.experts, 0});
        dense_gather_.push_back(own ? build(CollectiveKind::all_gather, all, tp, dense_group, dense_bytes, gathered_one) : nullptr);
        if (rings)
          for (int x = 0; x < shards; ++x)
            expert_gather_.push_back(own ? build(CollectiveKind::all_gather, ring(x), 1, expert_group, expert_bytes, gathered_one)
                                         : nullptr);
      }
    }
    sync_left_.assign(static_cast<std::size_t>(cluster_.gpu_count()), buckets_ * (rings ? 2 : 1) * reps);
  }
  if (sharded_params()) {
    param_dense_.resize(param_units());
    param_expert_.resize(param_units() * static_cast<std::size_t>(spec_.ep * spec_.etp));
    param_left_.assign(static_cast<std::size_t>(cluster_.gpu_count()) * param_units(), kNotJoined);
  }
  for (int g = 0; g < cluster_.gpu_count(); ++g) begin_step(g);
}

void MoeForward::begin_step(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const auto st = static_cast<std::size_t>(stage_of(gpu)), step = static_cast<std::size_t>(s.step);
  s.paired = paired_[st][step] != 0;
  if (s.paired) {
    s.pair = {schedule_[st][step], schedule_[st][step + 1]};
    s.op = 0;
    pair_step(gpu);
  } else if (spec_.two_batch_overlap) {
    overlap_step(gpu);
  } else {
    begin_pass(gpu);
  }
}

Time MoeForward::cost(const KernelCost& c, int gpu, Work work) {
  // A backward pass runs each GEMM twice (input and weight gradients) at the forward's size, or
  // with ZB-H1 once for the input gradients, and its weight pass once for the weight gradients;
  // a recomputed forward's work is not model work.
  // The memory-bound kernels' backwards (compute.elementwise_kernels): the norms', the rotary
  // embedding's and the permutation's move what their forwards move, once in the input-gradient
  // pass, none in a weight pass; SwiGLU's (the gate, the up output and the gradient read, two
  // gradients written: 5 F against the forward's 3 F) counts twice its forward's, as the GEMMs
  // do, and with recompute_modules moe_act the MoE layer's a third time (its forward again).
  const int p = gpus_[static_cast<std::size_t>(gpu)].pass;
  const bool in_pass = (work == Work::gemm || work == Work::other) && p < passes();
  const bool twice = work == Work::gemm && in_pass && backward(p) && !split(p);
  KernelCost run = twice ? backward_cost(c) : c;
  if (in_pass && backward(p) && spec_.recompute_moe_act && c.activation_bytes > 0) {
    run.activation_bytes += c.activation_bytes;
    ++run.elementwise_launches;
  }
  if (p < passes() && weight(p)) run.elementwise_bytes = run.elementwise_launches = 0;
  if (work != Work::not_model && !(in_pass && recompute(p))) model_flops_ += static_cast<double>(run.flops);
  last_profiled_ = false;
  return scaled(roofline_.time(run), gpu);
}

Time MoeForward::scaled(Time t, int gpu) {
  double factor = 1 / speed_[static_cast<std::size_t>(gpu)];
  if (spec_.two_batch_overlap || gpus_[static_cast<std::size_t>(gpu)].sharing_sms) factor /= 1 - spec_.comm_sm_fraction;
  if (spec_.jitter > 0)
    factor *= std::exp(spec_.jitter * jitter_rng_[static_cast<std::size_t>(gpu)].normal() - spec_.jitter * spec_.jitter / 2);
  if (factor == 1) return t;
  return Time::ps(std::llround(static_cast<double>(t.count_ps()) * factor));
}

std::optional<Time> MoeForward::profiled(int gpu, const KernelCost& work, std::initializer_list<ProfileQuery> parts,
                                         bool gemm) {
  // A backward pass asks for the same stages' backward kernels (router_bwd, permute_bwd,
  // experts_bwd, combine_bwd); a profile measured without them (moe-profile without --backward)
  // leaves backward passes to the roofline, without counting that as a miss. ZB-H1 splits a
  // backward GEMM kernel's time in half between the input-gradient and the weight pass (their
  // GEMMs have the same FLOPs); the rest of a backward (permute's and combine's) is the input
  // pass's.
  const int p = gpus_[static_cast<std::size_t>(gpu)].pass;
  const bool back = p < passes() && (backward(p) || weight(p));
  if (!spec_.profile || (back && !profile_backward_)) return std::nullopt;
  const auto& m = spec_.model;
  double us = 0;
  for (const auto& q : parts) {
    const auto t = spec_.profile->time_us(back ? std::string(q.kernel) + "_bwd" : std::string(q.kernel), static_cast<int>(m.hidden),
                                          static_cast<int>(q.ffn > 0 ? q.ffn : m.expert_ffn), q.experts, q.top_k, q.tokens, q.imbalance, q.active,
                                          q.tiles);
    if (!t) {
      ++profile_misses_;
      return std::nullopt;
    }
    us += *t * (back && q.gemm && split(p) ? 0.5 : 1.0);
  }
  ++profile_hits_;
  // A backward pass's GEMMs do twice the forward's FLOPs (input and weight gradients; ZB-H1:
  // each of its two passes once); a recomputed forward is not model work.
  if (!(p < passes() && recompute(p)))
    model_flops_ += static_cast<double>(work.flops) * (back && gemm && !split(p) ? 2 : 1);
  last_profiled_ = true;
  return scaled(Time::ps(std::llround(us * 1e6)), gpu);
}

Time MoeForward::router_time(int gpu, std::int64_t tokens) {
  const auto& m = spec_.model;
  const KernelCost c = router_cost(m, tokens);
  if (const auto t = profiled(gpu, c,
                              {{"router", m.experts, m.top_k, tokens}, {"permute", m.experts, m.top_k, tokens, 1.0, -1, -1, false}}))
    return *t;
  return cost(c, gpu);
}

Time MoeForward::reduce_time(int gpu, std::int64_t tokens, std::int64_t kept) {
  const auto& m = spec_.model;
  const KernelCost c = reduce_cost(m, tokens, kept);
  if (const auto t = profiled(gpu, c, {{"combine", m.experts, m.top_k, tokens, 1.0, -1, -1, false}}, false)) return *t;
  return cost(c, gpu, Work::other);
}

void MoeForward::run_stage(int gpu, Stage stage, Time duration, void (MoeForward::*next)(int), int micro_batch,
                           std::optional<bool> backward_work, std::optional<bool> recomputed, std::int64_t cp_rows, bool cp_scatter) {
  const bool profiled = last_profiled_;  // duration is the time last asked for
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (spec_.cp > 1 && cp_rows > 0) {
    // Held back for the keys' and values' all-gather; recorded as the stage would be.
    const int p = s.stage_pass >= 0 ? s.stage_pass : s.pass;
    const int last = std::min(p, passes() - 1);
    s.cp_pending = CpPending{stage, duration, next, micro_batch, backward_work, recomputed, profiled, s.stage_pass, cp_rows,
                             cp_scatter, stage == Stage::dense ? -1 : layer_of(last),
                             backward_work.value_or(p < passes() && backward_phase(p)), recomputed.value_or(p < passes() && recompute(p)),
                             micro_batch >= 0 ? micro_batch : this->micro_batch(last)};
    if (spec_.cp_ring) {
      // The exchange beside the compute: one ring of the keys and values, in a backward of their
      // gradients too (twice the bytes).
      CpPending& w = s.cp_pending;
      w.ring = true;
      w.ring_computed = w.ring_exchanged = false;
      if (w.scatter) w.rows *= 2;
      cp_exchange(gpu, CollectiveKind::all_gather, &MoeForward::cp_ring_exchanged);
      s.wait = Wait::none;  // computing, not waiting
      schedule_stage(gpu, stage, duration, &MoeForward::cp_ring_computed, micro_batch, backward_work, recomputed, profiled, s.stage_pass);
      return;
    }
    cp_exchange(gpu, CollectiveKind::all_gather, &MoeForward::cp_gathered);
    return;
  }
  schedule_stage(gpu, stage, duration, next, micro_batch, backward_work, recomputed, profiled, s.stage_pass);
}

void MoeForward::schedule_stage(int gpu, Stage stage, Time duration, void (MoeForward::*next)(int), int micro_batch,
                                std::optional<bool> backward_work, std::optional<bool> recomputed, bool profiled, int of_pass) {
  const Time start = sim_.now();
  sim_.schedule_in(duration, [this, gpu, stage, start, next, profiled, micro_batch, backward_work, recomputed, of_pass] {
    const int p = of_pass >= 0 ? of_pass : gpus_[static_cast<std::size_t>(gpu)].pass;
    const int last = std::min(p, passes() - 1);
    const bool again = recomputed.value_or(p < passes() && recompute(p));
    recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer_of(last), stage, start, sim_.now(),
                                   backward_work.value_or(p < passes() && backward_phase(p)), profiled,
                                   micro_batch >= 0 ? micro_batch : this->micro_batch(last), again, p < passes() && weight(p)});
    (this->*next)(gpu);
  });
}

bool MoeForward::run_before_pass(int gpu, void (MoeForward::*next)(int)) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const int p = s.pass;
  // The dense layers come first in each micro-batch.
  if (!backward_phase(p) && layer_of(p) == 0 && spec_.model.dense_layers > 0 &&
      !s.dense_forward[static_cast<std::size_t>(micro_batch(p))]) {
    s.dense_forward[static_cast<std::size_t>(micro_batch(p))] = 1;
    if (spec_.model.tp > 1) {
      start_dense_program(gpu, DenseProgram::forward, next);
      return true;
    }
    run_stage(gpu, Stage::dense, cost(dense_cost(gpu), gpu, Work::outside), next, -1, std::nullopt, std::nullopt, dense_rows());
    return true;
  }
  // The LM head's backward (input and weight gradients: twice its projection; ZB-H1: the input
  // gradients here, the weight gradients in the last layer's weight pass) comes first in each
  // micro-batch's backward pass (before the last layer's recomputed forward).
  if (backward_phase(p) && layer_of(p) == spec_.model.moe_layers - 1 && spec_.model.vocab > 0 &&
      !s.head_backward[static_cast<std::size_t>(micro_batch(p))]) {
    s.head_backward[static_cast<std::size_t>(micro_batch(p))] = 1;
    const KernelCost c = heads_cost(spec_.model, spec_.tokens_per_gpu, false);  // with the MTP layers' heads and projections
    const int times = split(p) ? 1 : 2;
    // With tensor parallelism its input gradients (each GPU's share of the vocabulary's) are
    // reduce-scattered back to the GPUs' own rows.
    s.program_next = next;
    run_stage(gpu, Stage::lm_head, cost(times * c, gpu, Work::outside),
              spec_.model.tp > 1 ? &MoeForward::tp_after_head_backward : next, -1, true, false);
    return true;
  }
  return false;
}

void MoeForward::begin_pass(int gpu) {
  const int p = gpus_[static_cast<std::size_t>(gpu)].pass;
  if (sharded_params() && !params_ready(gpu)) return;
  if (run_before_pass(gpu, &MoeForward::begin_pass)) return;
  if (wait_for_input(gpu, p)) return;
  end_pipeline_wait(gpu, p);
  start_pass(gpu);
}

int MoeForward::across_stages(int gpu, int pass, bool input) const {
  // Forward input and backward output cross to the previous chunk at the chunk's first layer;
  // forward output and backward input to the next chunk at its last layer. The GPU at the same
  // position of that chunk's stage. A recomputed forward (before the layer's backward) waits for
  // the gradients its backward needs, as a stage recomputes when its backward starts, and sends
  // nothing; a weight pass (ZB-H1) neither waits nor sends.
  if ((recompute(pass) && !input) || weight(pass)) return -1;
  const int c = chunk_of(layer_of(pass)), l = layer_of(pass);
  const int at = gpu % stage_gpus();
  const int mb = micro_batch(pass);
  if (input != backward_phase(pass)) return c > 0 && l == chunk_first(c) ? chunk_stage(spec_, c - 1, mb) * stage_gpus() + at : -1;
  return c + 1 < chunks() && l == chunk_first(c + 1) - 1 ? chunk_stage(spec_, c + 1, mb) * stage_gpus() + at : -1;
}

int& MoeForward::pipeline_pending(int gpu, int pass, int chunk) {
  // Indexed by the chunk's place among the GPU's stage's chunks.
  MOESIM_ASSERT(chunk_stage(spec_, chunk, micro_batch(pass)) == stage_of(gpu), "a pipeline input into a chunk of another stage");
  const auto at = (static_cast<std::size_t>(gpu) * static_cast<std::size_t>(spec_.micro_batches) +
                   static_cast<std::size_t>(micro_batch(pass))) *
                      static_cast<std::size_t>(spec_.virtual_stages) +
                  static_cast<std::size_t>(chunk / spec_.pp);
  return (backward_phase(pass) ? gradients_pending_ : activations_pending_)[at];
}

int* MoeForward::pipeline_input(int gpu, int pass) {
  return across_stages(gpu, pass, true) < 0 ? nullptr : &pipeline_pending(gpu, pass, chunk_of(layer_of(pass)));
}

bool MoeForward::wait_for_input(int gpu, int pass) {
  // A pipeline stage's first layer waits for the micro-batch's activations, its last layer's
  // backward for their gradients; pipeline_arrived() goes on.
  const int* left = pipeline_input(gpu, pass);
  if (left == nullptr || *left == 0) return false;
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait != Wait::pipeline) {
    s.wait = Wait::pipeline;
    s.wait_start = sim_.now();
  }
  return true;
}

void MoeForward::end_pipeline_wait(int gpu, int pass) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait != Wait::pipeline) return;
  s.wait = Wait::none;
  recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer_of(pass), Stage::pipeline, s.wait_start, sim_.now(),
                                 backward_phase(pass), false, micro_batch(pass)});
}

void MoeForward::pipeline_arrived(int gpu) {
  // Early arrivals are counted and checked when the GPU gets there; a waiting GPU goes back to
  // where it waits, which checks again (the step's first stages do not run twice).
  const GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait != Wait::pipeline) return;
  if (s.paired) pair_step(gpu);
  else if (spec_.two_batch_overlap) overlap_step(gpu);
  else begin_pass(gpu);
}

void MoeForward::send_to_stage(int gpu, int pass) {
  // After a chunk's last layer its stage sends the micro-batch's activations (one row per token)
  // to the GPU at the same position of the next chunk's stage; after its first layer's
  // backward, their gradients to the previous chunk's.
  const int dst = across_stages(gpu, pass, false);
  if (dst < 0) return;
  if (dst == gpu) {  // DualPipeV's last stage: from one of its chunks to the other, nothing to send
    --pipeline_pending(gpu, pass, chunk_of(layer_of(pass)) + (backward(pass) ? -1 : 1));
    return;
  }
  const Flow flow{GpuId(static_cast<std::uint32_t>(gpu)), GpuId(static_cast<std::uint32_t>(dst)),
                  sim::Bytes(spec_.tokens_per_gpu * row_bytes(spec_.model.hidden, spec_.model.dtype_bytes))};
  int* left = &pipeline_pending(dst, pass, chunk_of(layer_of(pass)) + (backward(pass) ? -1 : 1));
  const FlowRecord start{layer_of(pass), Stage::pipeline, flow, sim_.now(), Time(), backward(pass), micro_batch(pass)};
  network_.start_flow(flow, [this, record = start, left, dst]() mutable {
    record.end = sim_.now();
    recorder_.on_flow(record);
    --*left;
    pipeline_arrived(dst);
  });
}

void MoeForward::start_pass(int gpu) {
  const int p = gpus_[static_cast<std::size_t>(gpu)].pass;
  if (weight(p)) {
    gpus_[static_cast<std::size_t>(gpu)].op = 0;
    weight_step(gpu);
    return;
  }
  if (!backward(p)) {
    if (spec_.model.tp > 1) {  // the attention over the tensor-parallel group's tokens
      tp_exchange(gpu, 0, CollectiveKind::all_gather, spec_.tokens_per_gpu, layer_of(p), &MoeForward::tp_attention);
      return;
    }
    run_stage(gpu, Stage::attention, cost(attention(spec_.tokens_per_gpu, moe_attention_layer(layer_of(p)), gpu), gpu),
              &MoeForward::after_attention, -1, std::nullopt, std::nullopt, spec_.tokens_per_gpu);
    return;
  }
  // Backward: the reduce's gradient goes back to the returned copies first.
  // (the gradient of a weighted sum is a scatter of the same size: not doubled)
  run_stage(gpu, Stage::reduce, reduce_time(gpu, spec_.tokens_per_gpu, plan(p, gpu).kept(rank(gpu))),
            &MoeForward::after_router);
}

void MoeForward::attention_step(int gpu, int base, std::int64_t rows, bool recompute_first, void (MoeForward::*step)(int)) {
  // A layer program's attention operation (pair_step(), overlap_step()) calls this until it is
  // done: with tensor parallelism the all-gather (tp_sub 0 -> 1); then either the recomputed
  // forward (back to 0, for the backward's own all-gather next) or the attention (-> 2); then
  // the reduce-scatter, after which the program moves on (op + 1). Without tensor parallelism
  // the recomputed forward or the attention, the program moving on with the latter.
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const int layer = layer_of(s.pass);
  const bool tp = spec_.model.tp > 1;
  switch (s.tp_sub) {
    case 0:
      if (tp && !(recompute_first && spec_.recompute == Recompute::selective)) {  // (its up projections need none)
        s.tp_sub = 1;
        return tp_exchange(gpu, recompute_first ? base + kRecomputeOps - 1 : base, CollectiveKind::all_gather, rows, layer, step);
      }
      [[fallthrough]];
    case 1:
      if (recompute_first) {
        s.recomputed = true;
        s.tp_sub = 0;
        return run_stage(gpu, Stage::attention, cost(attention_recompute(rows, moe_attention_layer(layer)), gpu, Work::not_model), step,
                         -1, std::nullopt, true, cp_recompute_rows(rows));
      }
      if (!tp) {
        s.recomputed = false;
        ++s.op;
      } else {
        s.tp_sub = 2;
      }
      return run_stage(gpu, Stage::attention, cost(attention(rows, moe_attention_layer(layer), gpu), gpu), step, -1, std::nullopt, std::nullopt,
                       rows, backward(s.pass));
    default:
      s.tp_sub = 0;
      s.recomputed = false;
      ++s.op;
      return tp_exchange(gpu, base + 1, CollectiveKind::reduce_scatter, rows, layer, step);
  }
}

void MoeForward::tp_attention(int gpu) {
  const int layer = moe_attention_layer(layer_of(gpus_[static_cast<std::size_t>(gpu)].pass));
  run_stage(gpu, Stage::attention, cost(attention(spec_.tokens_per_gpu, layer, gpu), gpu), &MoeForward::tp_after_attention, -1, std::nullopt,
            std::nullopt, spec_.tokens_per_gpu);
}

void MoeForward::tp_after_attention(int gpu) {
  tp_exchange(gpu, 1, CollectiveKind::reduce_scatter, spec_.tokens_per_gpu, layer_of(gpus_[static_cast<std::size_t>(gpu)].pass),
              &MoeForward::after_attention);
}

void MoeForward::tp_exchange(int gpu, int op, CollectiveKind kind, std::int64_t rows, int layer, void (MoeForward::*next)(int)) {
  // Each collective is built by the first of its group to get there and dropped once all of
  // them are through. The ring inside the node (every GPU sends the next one a GPU's share of
  // the rows, tp - 1 times: NCCL's ring all-gather and reduce-scatter; in a mesh node each GPU
  // sends its share to every other directly), or with nvls the NVSwitch (models/collectives.hpp).
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const int tp = spec_.model.tp, group = gpu / tp;
  s.wait = Wait::tp;
  s.wait_start = sim_.now();
  s.tp_next = next;
  const auto key = std::make_tuple(s.pass, op, group);
  auto it = tp_collectives_.find(key);
  // A recomputed forward's collective (its pass's, or one of the recomputation's own ops).
  const bool again = op % kHalfOps >= kRecomputeOps - 1 || recompute(s.pass);
  if (it == tp_collectives_.end()) {
    CollectiveContext ctx{sim_, network_, recorder_, cluster_.spec().gpus_per_node, spec_.nvls_efficiency, cluster_.mesh()};
    ctx.stage = Stage::tp;
    ctx.layer = layer;
    ctx.backward = backward_phase(s.pass);
    ctx.micro_batch = micro_batch(s.pass);
    std::vector<int> members(static_cast<std::size_t>(tp));
    for (int i = 0; i < tp; ++i) members[static_cast<std::size_t>(i)] = group * tp + i;
    const sim::Bytes size(tp * rows * row_bytes(spec_.model.hidden, spec_.model.dtype_bytes));
    auto done = [this, key, layer, again](int g) {
      GpuState& st = gpus_[static_cast<std::size_t>(g)];
      st.wait = Wait::none;
      const int pass = std::get<0>(key);
      recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(g)), layer, Stage::tp, st.wait_start, sim_.now(),
                                     backward_phase(pass), false, micro_batch(pass), again});
      if (--tp_collectives_.at(key).left == 0) sim_.schedule_in(Time::zero(), [this, key] { tp_collectives_.erase(key); });
      (this->*st.tp_next)(g);
    };
    auto collective = make_collective(ctx, spec_.tp_algorithm, kind, std::move(members), size, std::move(done));
    it = tp_collectives_.emplace(key, TpCollective{std::move(collective), tp}).first;
  }
  it->second.collective->join(gpu);
}

std::int64_t MoeForward::cp_kv_bytes(std::int64_t rows) const {
  // The keys and values the attention kernel reads, of the tensor-parallel group's rows a GPU's
  // attention runs over, for its heads: with MLA after the up projections (per-head keys, the
  // RoPE key once, and values), as Megatron-Core hands them to Transformer Engine's context-
  // parallel attention.
  // With cp_latent the kv latent and the RoPE key, whole on every GPU of the tensor-parallel group.
  if (spec_.cp_latent) return spec_.model.tp * rows * routing::kv_cache_width(spec_.model) * spec_.model.dtype_bytes;
  const routing::AttentionWidths a = routing::attention_widths(spec_.model);
  return spec_.model.tp * rows * (a.k + a.v) * spec_.model.dtype_bytes;
}

void MoeForward::cp_exchange(int gpu, CollectiveKind kind, void (MoeForward::*next)(int)) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const int cp = spec_.cp, tp = spec_.model.tp, block = gpu / (tp * cp), lane = gpu % tp;
  const int group = block * tp + lane;
  s.wait = Wait::cp;
  s.wait_start = sim_.now();
  s.cp_next = next;
  const auto key = std::make_pair(s.cp_ops++, group);
  auto it = cp_collectives_.find(key);
  if (it == cp_collectives_.end()) {
    const CpPending& w = s.cp_pending;
    CollectiveContext ctx{sim_, network_, recorder_, cluster_.spec().gpus_per_node, spec_.nvls_efficiency, cluster_.mesh()};
    ctx.stage = Stage::cp;
    ctx.layer = w.layer;
    ctx.backward = w.record_backward;
    ctx.micro_batch = w.record_micro_batch;
    ctx.channels = !w.ring;  // the ring's steps are point-to-point sends to the next GPU
    std::vector<int> members(static_cast<std::size_t>(cp));
    for (int i = 0; i < cp; ++i) members[static_cast<std::size_t>(i)] = block * tp * cp + i * tp + lane;
    const sim::Bytes size(cp * cp_kv_bytes(w.rows));
    auto done = [this, key](int g) {
      GpuState& st = gpus_[static_cast<std::size_t>(g)];
      const CpPending& p = st.cp_pending;
      if (--cp_collectives_.at(key).left == 0) sim_.schedule_in(Time::zero(), [this, key] { cp_collectives_.erase(key); });
      if (p.ring) return cp_ring_exchanged(g);
      st.wait = Wait::none;
      recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(g)), p.layer, Stage::cp, st.wait_start, sim_.now(), p.record_backward,
                                     false, p.record_micro_batch, p.record_recompute});
      (this->*st.cp_next)(g);
    };
    auto collective = make_collective(ctx, CollectiveAlgorithm::ring, kind, std::move(members), size, std::move(done));
    it = cp_collectives_.emplace(key, TpCollective{std::move(collective), cp}).first;
  }
  it->second.collective->join(gpu);
}

void MoeForward::cp_gathered(int gpu) {
  const CpPending& p = gpus_[static_cast<std::size_t>(gpu)].cp_pending;
  schedule_stage(gpu, p.stage, p.duration, p.scatter ? &MoeForward::cp_computed : p.next, p.micro_batch, p.backward, p.recompute,
                 p.profiled, p.of_pass);
}

void MoeForward::cp_ring_computed(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  CpPending& p = s.cp_pending;
  p.ring_computed = true;
  if (p.ring_exchanged) return (this->*p.next)(gpu);
  s.wait = Wait::cp;  // the exchange outlasts the attention: wait for the rest
  s.wait_start = sim_.now();
}

void MoeForward::cp_ring_exchanged(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  CpPending& p = s.cp_pending;
  p.ring_exchanged = true;
  if (!p.ring_computed) return;
  s.wait = Wait::none;
  recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), p.layer, Stage::cp, s.wait_start, sim_.now(), p.record_backward,
                                 false, p.record_micro_batch, p.record_recompute});
  (this->*p.next)(gpu);
}

void MoeForward::cp_computed(int gpu) {
  cp_exchange(gpu, CollectiveKind::reduce_scatter, gpus_[static_cast<std::size_t>(gpu)].cp_pending.next);
}

void MoeForward::dense_tp_step(int gpu) {
  // Each dense layer with tensor parallelism, forward: all-gather, attention, reduce-scatter,
  // all-gather, FFN, reduce-scatter (Megatron-LM's sequence-parallel layer), then the MoE layers;
  // backward (training, after the first MoE layer's backward) the mirror image: all-gather of the
  // FFN output's gradients, the FFN's backward, reduce-scatter of its input gradients, the same
  // around the attention's backward, layer by layer, then after_passes(). Recomputed before the
  // backward: the forward again (full), or the all-gather and the attention (attention).
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const bool attention_only = s.dense_mode == DenseProgram::recompute_attention;
  const int parts = attention_only ? 2 : 6;
  const int op = s.dense_op++;
  const int layer = op / parts, part = op % parts;
  if (layer == spec_.model.dense_layers) {
    (this->*s.program_next)(gpu);
    return;
  }
  const bool again = s.dense_mode == DenseProgram::recompute_full || attention_only;
  const std::int64_t t = spec_.tokens_per_gpu;
  const int collective = (again ? kRecomputeOps : 2) + 4 * layer + part / 3 * 2 + (part % 3 == 2 ? 1 : 0);
  if (part % 3 == 1) {
    const auto& m = spec_.model;
    const bool back = s.dense_mode == DenseProgram::backward;
    // Forward: attention, then FFN; backward: FFN, then attention, each twice the forward (split:
    // less its weight gradients, the first layer's weight pass).
    const bool ffn = (part == 4) != back;
    const int model_layer = back ? m.dense_layers - 1 - layer : layer;
    const KernelCost f = ffn ? dense_ffn_cost(m, t) : attention(t, model_layer);
    const KernelCost w = !back || !split(s.pass) ? KernelCost{}
                         : ffn                    ? dense_ffn_cost(m, t)
                                                  : attention_projection_cost(m, t, routing::linear_layer(m, model_layer));
    const KernelCost c = back ? backward_cost(f, w) + (ffn ? KernelCost{} : norm_recompute()) : f;
    run_stage(gpu, Stage::dense, cost(c, gpu, again ? Work::not_model : Work::outside), &MoeForward::dense_tp_step, -1,
              back || again, again, ffn ? 0 : t, back && !ffn);
    return;
  }
  tp_exchange(gpu, collective, part % 3 == 0 ? CollectiveKind::all_gather : CollectiveKind::reduce_scatter, t, -1,
              &MoeForward::dense_tp_step);
}

void MoeForward::start_dense_program(int gpu, DenseProgram program, void (MoeForward::*next)(int)) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  s.dense_mode = program;
  s.dense_op = 0;
  s.program_next = next;
  dense_tp_step(gpu);
}

void MoeForward::tp_lm_head(int gpu) {
  run_stage(gpu, Stage::lm_head, cost(lm_head(), gpu, Work::outside), &MoeForward::after_passes);
}

void MoeForward::after_attention(int gpu) {
  run_stage(gpu, Stage::router, router_time(gpu, spec_.tokens_per_gpu), &MoeForward::after_router);
}

void MoeForward::after_router(int gpu) {
  all_to_all_->send(gpus_[static_cast<std::size_t>(gpu)].pass, Phase::dispatch, gpu);
  if (spec_.model.shared_experts > 0) return shared_plain(gpu);
  after_shared(gpu);
}

Time MoeForward::shared_time(int gpu, std::int64_t tokens) {
  // Every shared expert, one GEMM of their summed width: the group's tokens at a GPU's share of
  // the columns with tensor parallelism.
  const auto& m = spec_.model;
  return cost(m.shared_experts * expert_cost(shared_model_, tokens * m.shared_tp()), gpu);
}

void MoeForward::shared_plain(int gpu) {
  const int pass = gpus_[static_cast<std::size_t>(gpu)].pass;
  if (shared_step(gpu, 0, pass, spec_.tokens_per_gpu, &MoeForward::shared_plain)) after_shared(gpu);
}

bool MoeForward::shared_step(int gpu, int base, int pass, std::int64_t tokens, void (MoeForward::*step)(int)) {
  // In steps (GpuState::tp_sub), each calling `step` again when it ends: with tensor-parallel
  // shared experts the all-gather (0 -> 1), the experts (-> 2), the reduce-scatter (-> 3); else
  // the experts alone (0 -> 3); then done (true, tp_sub back to 0). `pass`: the pass they belong
  // to (a staggered program's layer before's).
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const bool split = shared_split();
  switch (s.tp_sub) {
    case 0:
      if (split) {
        s.tp_sub = 1;
        tp_exchange(gpu, base + kSharedOp, CollectiveKind::all_gather, tokens, layer_of(pass), step);
        return false;
      }
      [[fallthrough]];
    case 1:
      s.tp_sub = split ? 2 : 3;
      s.stage_pass = pass;
      run_stage(gpu, Stage::shared_experts, shared_time(gpu, tokens), step);
      s.stage_pass = -1;
      return false;
    case 2:
      s.tp_sub = 3;
      tp_exchange(gpu, base + kSharedOp + 1, CollectiveKind::reduce_scatter, tokens, layer_of(pass), step);
      return false;
    default:
      s.tp_sub = 0;
      return true;
  }
}

void MoeForward::after_shared(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  s.wait = Wait::dispatch;
  s.wait_start = sim_.now();
  try_start_experts(gpu);
}

void MoeForward::arrived(int pass, Phase phase, int gpu) {
  if (spec_.two_batch_overlap) {
    const int p = pass / 2, h = pass % 2;
    --pending(phase == Phase::dispatch ? dispatch_pending_ : combine_pending_, gpu, p, h);
    const GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
    if (s.wait_pass == p && s.wait_half == h && s.wait == (phase == Phase::dispatch ? Wait::dispatch : Wait::combine))
      overlap_step(gpu);
    return;
  }
  if (const GpuState& s = gpus_[static_cast<std::size_t>(gpu)]; s.paired) {
    --pending(phase == Phase::dispatch ? dispatch_pending_ : combine_pending_, gpu, pass);
    if (s.pass == pass && s.wait == (phase == Phase::dispatch ? Wait::dispatch : Wait::combine)) pair_step(gpu);
    return;
  }
  if (phase == Phase::dispatch) {
    --pending(dispatch_pending_, gpu, pass);
    try_start_experts(gpu);
  } else {
    --pending(combine_pending_, gpu, pass);
    try_finish_combine(gpu);
  }
}

void MoeForward::try_start_experts(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait != Wait::dispatch) return;  // an early arrival; counted, checked when g gets here
  if (pending(dispatch_pending_, gpu, s.pass) > 0) return;
  const int layer = layer_of(s.pass);
  s.wait = Wait::none;
  recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer, Stage::dispatch, s.wait_start,
                                 sim_.now(), backward_phase(s.pass), false, micro_batch(s.pass),
                                 recompute(s.pass)});
  if (spec_.etp > 1) return etp_plain(gpu);
  run_stage(gpu, Stage::experts, experts_time(s.pass, gpu, 0), &MoeForward::after_experts);
}

void MoeForward::etp_plain(int gpu) {
  const int pass = gpus_[static_cast<std::size_t>(gpu)].pass;
  if (etp_experts_op(gpu, pass, 0, &MoeForward::etp_plain)) after_experts(gpu);
}

std::int64_t MoeForward::etp_rows(int pass, int gpu, int half) const { return plan(pass, gpu, half).received(rank(gpu)); }

void MoeForward::etp_send(int gpu, int pass, int half, bool gather) {
  // Gather: this GPU's received rows to each other GPU of its ETP group, in the dispatch's row
  // bytes (a backward's: the output gradients'). Scatter: to each the partial outputs of its
  // rows, in the combine's.
  const bool back = backward(pass);
  const std::int64_t row = gather ? (back ? comm_.gradient_dispatch_row_bytes : comm_.dispatch_row_bytes) : comm_.combine_row_bytes;
  for (int peer = etp_first(gpu); peer < etp_first(gpu) + spec_.etp; ++peer) {
    if (peer == gpu) continue;
    const std::int64_t rows = etp_rows(pass, gather ? gpu : peer, half);
    if (rows == 0) continue;
    const Flow flow{GpuId(static_cast<std::uint32_t>(gpu)), GpuId(static_cast<std::uint32_t>(peer)), sim::Bytes(rows * row)};
    network_.start_flow(flow, [this, record = FlowRecord{layer_of(pass), Stage::tp, flow, sim_.now(), Time(),
                                                         backward_phase(pass), micro_batch(pass), recompute(pass)},
                               pass, half, peer, gather]() mutable {
      record.end = sim_.now();
      recorder_.on_flow(record);
      etp_arrived(pass, half, peer, gather);
    });
  }
}

void MoeForward::etp_arrived(int pass, int half, int gpu, bool gather) {
  --pending(gather ? etp_gather_pending_ : etp_scatter_pending_, gpu, pass, half);
  // A GPU waiting for this exchange goes on (early arrivals are counted, checked when it gets there).
  const GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait != (gather ? Wait::etp_gather : Wait::etp_scatter) || s.wait_pass != pass || s.wait_half != half) return;
  if (spec_.two_batch_overlap) overlap_step(gpu);
  else if (s.paired) pair_step(gpu);
  else etp_plain(gpu);
}

bool MoeForward::etp_experts_op(int gpu, int pass, int half, void (MoeForward::*step)(int)) {
  // tp_sub 0: send the rows, then wait for the others' (1); the experts (2); send the partial
  // outputs, then wait for the others' (3); done. A step returns false while the GPU waits or
  // computes (the wait's arrival or the stage's end calls `step` again).
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const auto wait = [&](bool gather) {
    const Wait w = gather ? Wait::etp_gather : Wait::etp_scatter;
    if (s.wait != w) {  // arriving at the wait
      s.wait = w;
      s.wait_pass = pass;
      s.wait_half = half;
      s.wait_start = sim_.now();
    }
    if (pending(gather ? etp_gather_pending_ : etp_scatter_pending_, gpu, pass, half) > 0) return false;
    s.wait = Wait::none;
    recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer_of(pass), Stage::tp, s.wait_start, sim_.now(),
                                   backward_phase(pass), false, micro_batch(pass), recompute(pass)});
    return true;
  };
  switch (s.tp_sub) {
    case 0:
      etp_send(gpu, pass, half, true);
      s.tp_sub = 1;
      [[fallthrough]];
    case 1:
      if (!wait(true)) return false;
      s.tp_sub = 2;
      s.stage_pass = pass;
      run_stage(gpu, Stage::experts, experts_time(pass, gpu, half), step);
      s.stage_pass = -1;
      return false;
    case 2:
      etp_send(gpu, pass, half, false);
      s.tp_sub = 3;
      [[fallthrough]];
    default:
      if (!wait(false)) return false;
      s.tp_sub = 0;
      return true;
  }
}

void MoeForward::after_experts(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  all_to_all_->send(s.pass, Phase::combine, gpu);
  s.wait = Wait::combine;
  s.wait_start = sim_.now();
  try_finish_combine(gpu);
}

void MoeForward::try_finish_combine(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait != Wait::combine) return;
  if (pending(combine_pending_, gpu, s.pass) > 0) return;
  const int layer = layer_of(s.pass);
  s.wait = Wait::none;
  recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer, Stage::combine, s.wait_start,
                                 sim_.now(), backward_phase(s.pass), false, micro_batch(s.pass),
                                 recompute(s.pass)});
  if (backward(s.pass)) {
    // Backward: the router's, then the attention's gradients.
    run_stage(gpu, Stage::router, router_time(gpu, spec_.tokens_per_gpu), &MoeForward::after_router_backward);
    return;
  }
  run_stage(gpu, Stage::reduce, reduce_time(gpu, spec_.tokens_per_gpu, plan(s.pass, gpu).kept(rank(gpu))),
            &MoeForward::end_pass);
}

void MoeForward::after_router_backward(int gpu) {
  // Recomputed attention: its forward again (not doubled, not model work), then its backward;
  // with tensor parallelism after an all-gather of its input again.
  if (spec_.recompute == Recompute::attention && spec_.model.tp > 1) {
    tp_exchange(gpu, kRecomputeOps - 1, CollectiveKind::all_gather, spec_.tokens_per_gpu,
                layer_of(gpus_[static_cast<std::size_t>(gpu)].pass), &MoeForward::recompute_attention);
    return;
  }
  recompute_attention(gpu);
}

void MoeForward::recompute_attention(int gpu) {
  if (recomputes_attention()) {
    const int layer = moe_attention_layer(layer_of(gpus_[static_cast<std::size_t>(gpu)].pass));
    run_stage(gpu, Stage::attention, cost(attention_recompute(spec_.tokens_per_gpu, layer), gpu, Work::not_model),
              &MoeForward::attention_backward, -1, std::nullopt, true, cp_recompute_rows(spec_.tokens_per_gpu));
    return;
  }
  attention_backward(gpu);
}

void MoeForward::attention_backward(int gpu) {
  // With tensor parallelism between an all-gather of the output's gradients (the mirror of the
  // forward's reduce-scatter) and a reduce-scatter of the input's (of its all-gather).
  if (spec_.model.tp > 1) {
    tp_exchange(gpu, 0, CollectiveKind::all_gather, spec_.tokens_per_gpu, layer_of(gpus_[static_cast<std::size_t>(gpu)].pass),
                &MoeForward::attention_backward_compute);
    return;
  }
  attention_backward_compute(gpu);
}

void MoeForward::attention_backward_compute(int gpu) {
  void (MoeForward::*const next)(int) = spec_.model.tp > 1 ? &MoeForward::tp_after_attention_backward : &MoeForward::end_pass;
  const int layer = moe_attention_layer(layer_of(gpus_[static_cast<std::size_t>(gpu)].pass));
  if (split(gpus_[static_cast<std::size_t>(gpu)].pass)) {
    // The input gradients: the attention core's backward (twice its forward's matmuls) and the
    // projections' input gradients (once); the projections' weight gradients wait for the
    // weight pass. Together as much as the backward without the split.
    const KernelCost a = attention(spec_.tokens_per_gpu, layer),
                     w = attention_projection_cost(spec_.model, spec_.tokens_per_gpu, routing::linear_layer(spec_.model, layer));
    run_stage(gpu, Stage::attention, cost(backward_cost(a, w) + norm_recompute(), gpu, Work::other), next, -1, std::nullopt,
              std::nullopt, spec_.tokens_per_gpu, true);
    return;
  }
  run_stage(gpu, Stage::attention, cost(attention(spec_.tokens_per_gpu, layer) + norm_recompute(), gpu), next, -1, std::nullopt,
            std::nullopt, spec_.tokens_per_gpu, true);
}

void MoeForward::tp_after_attention_backward(int gpu) {
  tp_exchange(gpu, 1, CollectiveKind::reduce_scatter, spec_.tokens_per_gpu, layer_of(gpus_[static_cast<std::size_t>(gpu)].pass),
              &MoeForward::end_pass);
}

void MoeForward::tp_after_head_backward(int gpu) {
  tp_exchange(gpu, 2 + 4 * spec_.model.dense_layers, CollectiveKind::reduce_scatter, spec_.tokens_per_gpu, -1,
              gpus_[static_cast<std::size_t>(gpu)].program_next);
}

void MoeForward::weight_step(int gpu) {
  // Every GEMM once, at the forward's size: its weight gradient. Not with two-batch overlap
  // (ZB-H1 needs pipeline stages).
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const auto& m = spec_.model;
  const int layer = layer_of(s.pass);
  const std::int64_t tokens = spec_.tokens_per_gpu;
  for (;;) {
    switch (s.op++) {
      case 0:  // the last layer's weight pass takes the LM head's
        if (layer == m.moe_layers - 1 && m.vocab > 0)
          return run_stage(gpu, Stage::lm_head, cost(heads_cost(m, tokens, false), gpu, Work::outside), &MoeForward::weight_step);
        break;
      case 1:
        return run_stage(gpu, Stage::attention,
                         cost(attention_projection_cost(m, tokens, routing::linear_layer(m, moe_attention_layer(layer))), gpu, Work::other),
                         &MoeForward::weight_step);
      case 2: {  // the router's GEMM (from the profile's router_bwd, where it has it: its half)
        const KernelCost c = router_cost(m, tokens);
        const auto t = profiled(gpu, c, {{"router", m.experts, m.top_k, tokens}});
        return run_stage(gpu, Stage::router, t ? *t : cost(c, gpu), &MoeForward::weight_step);
      }
      case 3:
        if (m.shared_experts > 0) return run_stage(gpu, Stage::shared_experts, shared_time(gpu, tokens), &MoeForward::weight_step);
        break;
      case 4:
        return run_stage(gpu, Stage::experts, experts_time(s.pass, gpu, 0), &MoeForward::weight_step);
      case 5:  // the first layer's weight pass takes the dense layers'
        if (layer == 0 && spec_.model.dense_layers > 0)
          return run_stage(gpu, Stage::dense, cost(dense_weight_cost(), gpu, Work::outside), &MoeForward::weight_step);
        break;
      default:
        s.op = 0;
        return end_pass(gpu);
    }
  }
}

// Two-batch overlap, one layer on one GPU: halves A and B (0 and 1) run this program on the
// GPU's compute stream, the all-to-alls running beside it:
//   attention A, router A, [send dispatch A], attention B, router B, [send dispatch B],
//   shared A, wait dispatch A, experts A, [send combine A],
//   shared B, wait dispatch B, experts B, [send combine B],
//   wait combine A, reduce A, wait combine B, reduce B.
// So A's dispatch overlaps B's attention, B's dispatch A's experts, A's combine B's experts and
// B's combine A's reduce (as DeepSeek's and SGLang's two-batch overlap schedules do).
void MoeForward::overlap_step(int gpu) {
  // Per layer, the two halves' stages interleaved so that one half's all-to-all runs while the
  // other half computes. Backward (training) mirrors the forward: the reduce's gradient, the
  // dispatch of the combine's gradients, shared experts, experts, the combine of the dispatch's
  // gradients, then the router's and the attention's backward. Staggered (forward only), each
  // operation is of this layer's pass, of the layer before's (none at a micro-batch's first
  // layer), or of this layer's after the rest at its last (finishing both halves).
  enum Kind { attention, router, send_dispatch, shared, wait_dispatch, experts, send_combine, wait_combine, reduce };
  enum Of { now, before, at_last };
  struct Op {
    Kind kind;
    int half;
    Of of = now;
  };
  static constexpr std::array<Op, 18> kForward{{
      {attention, 0}, {router, 0}, {send_dispatch, 0}, {attention, 1}, {router, 1}, {send_dispatch, 1},
      {shared, 0}, {wait_dispatch, 0}, {experts, 0}, {send_combine, 0},
      {shared, 1}, {wait_dispatch, 1}, {experts, 1}, {send_combine, 1},
      {wait_combine, 0}, {reduce, 0}, {wait_combine, 1}, {reduce, 1}}};
  static constexpr std::array<Op, 18> kBackward{{
      {reduce, 0}, {send_dispatch, 0}, {reduce, 1}, {send_dispatch, 1},
      {shared, 0}, {wait_dispatch, 0}, {experts, 0}, {send_combine, 0},
      {shared, 1}, {wait_dispatch, 1}, {experts, 1}, {send_combine, 1},
      {wait_combine, 0}, {router, 0}, {attention, 0}, {wait_combine, 1}, {router, 1}, {attention, 1}}};
  static constexpr std::array<Op, 26> kStaggered{{
      {wait_combine, 0, before}, {reduce, 0, before},
      {attention, 0}, {router, 0}, {send_dispatch, 0},
      {shared, 1, before}, {wait_dispatch, 1, before}, {experts, 1, before}, {send_combine, 1, before},
      {shared, 0}, {wait_dispatch, 0}, {experts, 0}, {send_combine, 0},
      {wait_combine, 1, before}, {reduce, 1, before},
      {attention, 1}, {router, 1}, {send_dispatch, 1},
      {wait_combine, 0, at_last}, {reduce, 0, at_last},
      {shared, 1, at_last}, {wait_dispatch, 1, at_last}, {experts, 1, at_last}, {send_combine, 1, at_last},
      {wait_combine, 1, at_last}, {reduce, 1, at_last}}};
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const std::int64_t half_tokens = spec_.tokens_per_gpu / 2;
  const auto& m = spec_.model;
  if (s.op == 0) {
    if (run_before_pass(gpu, &MoeForward::overlap_step) || wait_for_input(gpu, s.pass)) return;
    end_pipeline_wait(gpu, s.pass);
  }
  const bool staggered = spec_.two_batch_staggered;
  const Op* program = staggered ? kStaggered.data() : backward(s.pass) ? kBackward.data() : kForward.data();
  const int ops = staggered ? static_cast<int>(kStaggered.size()) : static_cast<int>(kForward.size());
  for (;;) {
    if (s.op == ops) {
      s.op = 0;
      end_pass(gpu);  // the next pass, or dense backward, gradient sync, optimizer
      return;
    }
    const auto [kind, h, of] = program[s.op];
    // Staggered: the layer before's operations are none at a micro-batch's first layer, and
    // the finishing ones run at its last only.
    const bool first = layer_of(s.pass) == 0, last = layer_of(s.pass) == spec_.model.moe_layers - 1;
    if ((of == before && first) || (of == at_last && !last)) {
      ++s.op;
      continue;
    }
    const int pass = of == before ? s.pass - 1 : s.pass, layer = layer_of(pass);
    const bool back = backward(pass);
    const bool phase = backward_phase(pass), again = recompute(pass);
    const auto& p = plan(pass, gpu, h);
    auto compute = [&](Stage stage, Time t) {
      ++s.op;
      s.stage_pass = pass;
      run_stage(gpu, stage, t, &MoeForward::overlap_step);
      s.stage_pass = -1;
    };
    auto wait = [&](Wait w, std::vector<std::int64_t>& left, Stage stage) {
      if (s.wait != w) {  // arriving at the wait
        s.wait = w;
        s.wait_half = h;
        s.wait_pass = pass;
        s.wait_start = sim_.now();
      }
      if (pending(left, gpu, pass, h) > 0) return false;
      s.wait = Wait::none;
      recorder_.on_stage(
          StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer, stage, s.wait_start, sim_.now(), phase, false, micro_batch(pass),
                      again});
      ++s.op;
      return true;
    };
    switch (kind) {
      case attention:  // (recompute: attention, the half's forward again before its backward)
        return attention_step(gpu, h * kHalfOps, half_tokens, back && recomputes_attention() && !s.recomputed,
                              &MoeForward::overlap_step);
      case router:
        return compute(Stage::router, router_time(gpu, half_tokens));
      case shared:
        if (m.shared_experts == 0) {
          ++s.op;
          continue;
        }
        if (!shared_step(gpu, h * kHalfOps + (of == before ? 2 : 0), pass, half_tokens, &MoeForward::overlap_step)) return;
        ++s.op;
        continue;
      case experts:
        if (spec_.etp > 1) {  // the ETP group's exchanges around it
          if (!etp_experts_op(gpu, pass, h, &MoeForward::overlap_step)) return;
          ++s.op;
          continue;
        }
        return compute(Stage::experts, experts_time(pass, gpu, h));
      case reduce:  // a weighted sum (or its gradient, a scatter of the same size): not a GEMM
        return compute(Stage::reduce, reduce_time(gpu, half_tokens, p.kept(rank(gpu))));
      case send_dispatch:
      case send_combine:
        all_to_all_->send(pass * 2 + h, kind == send_dispatch ? Phase::dispatch : Phase::combine, gpu);
        ++s.op;
        continue;
      case wait_dispatch:
        if (!wait(Wait::dispatch, dispatch_pending_, Stage::dispatch)) return;
        continue;
      case wait_combine:
        if (!wait(Wait::combine, combine_pending_, Stage::combine)) return;
        continue;
    }
  }
}

// Forward-backward overlap, one pair of layers on one GPU: a forward pass F and a backward pass B
// of other micro-batches (or model chunks) run this program on the GPU's compute stream, the
// all-to-alls running beside it (Megatron-LM's combined 1F1B; DeepSeek-V3's report, figure 4):
//   B's reduce gradient, [send B's dispatch], F's attention and router, [send F's dispatch],
//   B's shared experts, wait B's dispatch, B's experts, [send B's combine],
//   F's shared experts, wait F's dispatch, F's experts, [send F's combine],
//   wait B's combine, B's router and attention (B done), wait F's combine, F's reduce (F done).
// So B's first all-to-all overlaps F's attention, F's dispatch B's experts, B's second
// all-to-all F's experts and F's combine B's attention. Before it, the dense layers' forward
// (F at the first layer) and the LM head's backward (B at the last); then both passes' pipeline
// inputs. After it, the LM head's forward (F at the last layer) and the dense layers' backward
// (B at the first). With recompute: attention, B's attention forward runs again right before its
// backward (and the dense layers' before theirs).
void MoeForward::pair_step(int gpu) {
  enum Kind { before, inputs, reduce, send_dispatch, attention, router, shared, wait_dispatch, experts, send_combine,
              wait_combine, done, head, dense_back, end };
  static constexpr std::array<std::pair<Kind, int>, 25> kProgram{{
      {before, 0}, {inputs, 0}, {reduce, 1}, {send_dispatch, 1}, {attention, 0}, {router, 0}, {send_dispatch, 0},
      {shared, 1}, {wait_dispatch, 1}, {experts, 1}, {send_combine, 1}, {shared, 0}, {wait_dispatch, 0}, {experts, 0},
      {send_combine, 0}, {wait_combine, 1}, {router, 1}, {attention, 1}, {done, 1}, {wait_combine, 0}, {reduce, 0},
      {done, 0}, {head, 0}, {dense_back, 1}, {end, 0}}};
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const auto& m = spec_.model;
  const std::int64_t tokens = spec_.tokens_per_gpu;
  for (;;) {
    const auto [kind, slot] = kProgram[static_cast<std::size_t>(s.op)];
    const int pass = s.pair[static_cast<std::size_t>(slot)];
    s.pass = pass;
    s.sharing_sms = kind != before && kind != inputs && kind != head && kind != dense_back && kind != end;
    auto compute = [&](Stage stage, Time t) {
      ++s.op;
      run_stage(gpu, stage, t, &MoeForward::pair_step);
    };
    auto wait = [&](Wait w, std::vector<std::int64_t>& left, Stage stage) {
      if (s.wait != w) {  // arriving at the wait
        s.wait = w;
        s.wait_start = sim_.now();
      }
      if (pending(left, gpu, pass) > 0) return false;
      s.wait = Wait::none;
      recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer_of(pass), stage, s.wait_start, sim_.now(),
                                     backward_phase(pass), false, micro_batch(pass)});
      ++s.op;
      return true;
    };
    switch (kind) {
      case before:  // the forward's dense layers, then the backward's LM head (each at most once)
        s.pass = s.pair[0];
        if (run_before_pass(gpu, &MoeForward::pair_step)) return;
        s.pass = s.pair[1];
        if (run_before_pass(gpu, &MoeForward::pair_step)) return;
        ++s.op;
        continue;
      case inputs:  // both passes' pipeline inputs (the wait recorded with the last one missing)
        for (int i = 0; i < 2; ++i)
          if (wait_for_input(gpu, s.pair[static_cast<std::size_t>(i)])) {
            s.wait_half = i;
            return;
          }
        end_pipeline_wait(gpu, s.pair[static_cast<std::size_t>(s.wait_half)]);
        ++s.op;
        continue;
      case reduce:  // forward: the weighted sum; backward: its gradient, a scatter of the same size
        return compute(Stage::reduce, reduce_time(gpu, tokens, plan(pass, gpu).kept(rank(gpu))));
      case attention:  // (recompute: attention, the backward's forward again right before it)
        return attention_step(gpu, 0, tokens, slot == 1 && recomputes_attention() && !s.recomputed,
                              &MoeForward::pair_step);
      case router:
        return compute(Stage::router, router_time(gpu, tokens));
      case shared:
        if (m.shared_experts == 0) {
          ++s.op;
          continue;
        }
        if (!shared_step(gpu, 0, pass, tokens, &MoeForward::pair_step)) return;
        ++s.op;
        continue;
      case experts:
        if (spec_.etp > 1) {  // the ETP group's exchanges around it
          if (!etp_experts_op(gpu, pass, 0, &MoeForward::pair_step)) return;
          ++s.op;
          continue;
        }
        return compute(Stage::experts, experts_time(pass, gpu, 0));
      case send_dispatch:
      case send_combine:
        all_to_all_->send(pass, kind == send_dispatch ? Phase::dispatch : Phase::combine, gpu);
        ++s.op;
        continue;
      case wait_dispatch:
        if (!wait(Wait::dispatch, dispatch_pending_, Stage::dispatch)) return;
        continue;
      case wait_combine:
        if (!wait(Wait::combine, combine_pending_, Stage::combine)) return;
        continue;
      case done:
        pass_done(gpu, pass);
        ++s.op;
        continue;
      case head:  // the LM head (and the loss) ends the forward's micro-batch on the last stage
        if (m.vocab > 0 && layer_of(pass) == m.moe_layers - 1 && m.tp > 1 && s.tp_sub == 0) {
          s.tp_sub = 1;  // its all-gather first
          return tp_exchange(gpu, 2 + 4 * m.dense_layers, CollectiveKind::all_gather, lm_head_tokens(), -1,
                             &MoeForward::pair_step);
        }
        s.tp_sub = 0;
        ++s.op;
        if (m.vocab > 0 && layer_of(pass) == m.moe_layers - 1)
          return run_stage(gpu, Stage::lm_head, cost(lm_head(), gpu, Work::outside), &MoeForward::pair_step);
        continue;
      case dense_back:  // the dense layers' backward ends the backward's micro-batch
        if (m.dense_layers > 0 && layer_of(pass) == 0 && m.tp > 1) {
          // Their programs with the tensor-parallel collectives: recomputed forward work first.
          if (recomputes_dense() && !s.recomputed) {
            s.recomputed = true;
            if (spec_.recompute == Recompute::selective)  // (the up projections need no all-gather)
              return run_stage(gpu, Stage::dense, cost(dense_recompute_cost(), gpu, Work::not_model), &MoeForward::pair_step, -1,
                               true, true, cp_recompute_rows(dense_rows()));
            return start_dense_program(gpu, DenseProgram::recompute_attention, &MoeForward::pair_step);
          }
          s.recomputed = false;
          ++s.op;
          return start_dense_program(gpu, DenseProgram::backward, &MoeForward::pair_step);
        }
        if (m.dense_layers > 0 && layer_of(pass) == 0 && recomputes_dense() && !s.recomputed) {
          s.recomputed = true;  // (after their attention's forward again)
          return run_stage(gpu, Stage::dense, cost(dense_recompute_cost(), gpu, Work::not_model), &MoeForward::pair_step, -1, true,
                           true, cp_recompute_rows(dense_rows()));
        }
        s.recomputed = false;
        ++s.op;
        if (m.dense_layers > 0 && layer_of(pass) == 0)
          return run_stage(gpu, Stage::dense, cost(dense_backward_cost(pass), gpu, Work::outside), &MoeForward::pair_step, -1,
                           std::nullopt, std::nullopt, dense_rows(), true);
        continue;
      case end:
        s.op = 0;
        return after_passes(gpu);
    }
  }
}

Time MoeForward::experts_time(int pass, int gpu, int half) {
  // The GPU's expert slots back to back; padding rows cost time but are not model FLOPs. With
  // expert tensor parallelism a slot's rows are those of every EP group of the GPU's ETP group
  // (the gathered rows), each computed at the GPU's share of the FFN.
  const int layer = layer_of(pass);
  const int r = rank(gpu);
  const auto slot_rows = [&](int slot, bool padded) {
    std::int64_t n = 0;
    for (int g = etp_first(gpu); g < etp_first(gpu) + spec_.etp; ++g) {
      const auto& p = plan(pass, g, half);
      n += (padded ? p.slot_padded : p.slot_computed)[static_cast<std::size_t>(slot)];
    }
    return n;
  };
  Time t;
  const int per_gpu = placements_[static_cast<std::size_t>(layer)].slots_per_gpu;
  if (spec_.profile) {
    // The measured expert stage for this GPU's slots: its rows, how many slots have rows, their
    // imbalance, and the GEMM tiles their rows fill.
    std::int64_t rows = 0, most = 0, computed = 0, tiles = 0;
    int active = 0;
    for (int slot = r * per_gpu; slot < (r + 1) * per_gpu; ++slot) {
      const std::int64_t kept = slot_rows(slot, false), n = kept + slot_rows(slot, true);
      rows += n;
      most = std::max(most, n);
      active += n > 0;
      tiles += (n + KernelProfile::kTileRows - 1) / KernelProfile::kTileRows;
      computed += kept;
    }
    const double mean = static_cast<double>(rows) / per_gpu;
    const KernelCost work = routed_expert_cost(expert_model_, computed);
    ProfileQuery q{"experts", per_gpu, 1, rows, rows > 0 ? static_cast<double>(most) / mean : 1.0, static_cast<double>(active),
                   static_cast<double>(tiles)};
    q.ffn = expert_model_.expert_ffn;
    if (const auto t = profiled(gpu, work, {q})) return *t;
  }
  for (int slot = r * per_gpu; slot < (r + 1) * per_gpu; ++slot) {
    const std::int64_t computed = slot_rows(slot, false), padded = slot_rows(slot, true);
    const double before = model_flops_;
    t += cost(routed_expert_cost(expert_model_, computed + padded), gpu);
    if (padded > 0)
      model_flops_ = before + (model_flops_ - before) * static_cast<double>(computed) / static_cast<double>(computed + padded);
  }
  return t;
}

double MoeForward::progress() const {
  return total_passes_ > 0 ? static_cast<double>(passes_done_) / static_cast<double>(total_passes_) : 1.0;
}

KernelCost MoeForward::dense_cost(int gpu) const {
  // All dense layers: attention as in the MoE layers, then a SwiGLU FFN of dense_ffn.
  const auto& m = spec_.model;
  KernelCost a;
  for (int l = 0; l < m.dense_layers; ++l) a = a + attention(spec_.tokens_per_gpu, l, gpu);
  return a + m.dense_layers * dense_ffn_cost(m, spec_.tokens_per_gpu);
}

std::int64_t MoeForward::lm_head_tokens() const {
  // Serving a batch of prompts needs the logits of each prompt's last token only.
  // Decode with chunked prefill: the decode tokens, and the prompts a step finishes.
  return spec_.prefill ? (spec_.tokens_per_gpu + spec_.sequence_length - 1) / spec_.sequence_length
                       : spec_.decode_tokens() + spec_.prefill_prompts();
}

// The LM head, and with MTP layers their projections and heads (heads_cost()).
KernelCost MoeForward::lm_head() const { return heads_cost(spec_.model, lm_head_tokens(), spec_.training); }

void MoeForward::pass_done(int gpu, int pass) {
  ++passes_done_;
  send_to_stage(gpu, pass);
  // A layer's gradients are complete after its backward, or (split) its weight pass.
  if (split(pass) ? weight(pass) : backward(pass)) backward_layer_done(gpu, pass);
}

void MoeForward::end_pass(int gpu) {
  const int done = gpus_[static_cast<std::size_t>(gpu)].pass;
  pass_done(gpu, done);
  // The pass done is still gpu's pass until after_passes(): the LM head and the dense layers'
  // backward below are recorded with its layer and micro-batch.
  if (spec_.model.vocab > 0 && !backward_phase(done) && layer_of(done) == spec_.model.moe_layers - 1) {
    // The LM head (and the loss) ends each micro-batch's forward (on the last pipeline stage);
    // vocabulary-parallel after an all-gather of the rows with tensor parallelism.
    if (spec_.model.tp > 1) {
      tp_exchange(gpu, 2 + 4 * spec_.model.dense_layers, CollectiveKind::all_gather, lm_head_tokens(), -1,
                  &MoeForward::tp_lm_head);
      return;
    }
    run_stage(gpu, Stage::lm_head, cost(lm_head(), gpu, Work::outside), &MoeForward::after_passes);
    return;
  }
  if (spec_.training && spec_.model.dense_layers > 0 && backward(done) && layer_of(done) == 0) {
    // The dense layers' backward ends each micro-batch (on the first pipeline stage), after
    // their recomputed forward (full) or attention forward (attention), where recomputed.
    if (recomputes_dense() && spec_.recompute != Recompute::selective && spec_.model.tp > 1) {
      const DenseProgram again =
          spec_.recompute == Recompute::full ? DenseProgram::recompute_full : DenseProgram::recompute_attention;
      start_dense_program(gpu, again, &MoeForward::dense_backward);
      return;
    }
    if (recomputes_dense()) {
      run_stage(gpu, Stage::dense, cost(dense_recompute_cost(), gpu, Work::not_model), &MoeForward::dense_backward, -1, true, true,
                cp_recompute_rows(dense_rows()));
      return;
    }
    dense_backward(gpu);
    return;
  }
  after_passes(gpu);
}

void MoeForward::dense_backward(int gpu) {
  if (spec_.model.tp > 1) {
    start_dense_program(gpu, DenseProgram::backward, &MoeForward::after_passes);
    return;
  }
  run_stage(gpu, Stage::dense, cost(dense_backward_cost(gpus_[static_cast<std::size_t>(gpu)].pass), gpu, Work::outside),
            &MoeForward::after_passes, -1, std::nullopt, std::nullopt, dense_rows(), true);
}

KernelCost MoeForward::dense_backward_cost(int pass) const {
  // Twice the forward; split, that less the weight gradients (the first layer's weight pass).
  const KernelCost c = dense_cost(), w = split(pass) ? dense_weight_cost() : KernelCost{};
  return backward_cost(c, w) + spec_.model.dense_layers * norm_recompute();
}

KernelCost MoeForward::norm_recompute() const {
  return norm_recompute_cost(spec_.model, spec_.tokens_per_gpu, spec_.recompute_layernorm);
}

KernelCost MoeForward::dense_recompute_cost() const {
  // Full recomputation: their whole forward; attention: their attention's; selective: their
  // attention's up projections.
  if (spec_.recompute == Recompute::full) return dense_cost();
  KernelCost a;
  for (int l = 0; l < spec_.model.dense_layers; ++l) a = a + attention_recompute(spec_.tokens_per_gpu, l);
  return a;
}

KernelCost MoeForward::dense_weight_cost() const {
  // The dense layers' weight gradients: their attention projections and FFN GEMMs once.
  const auto& m = spec_.model;
  KernelCost c;
  for (int l = 0; l < m.dense_layers; ++l)
    c = c + attention_projection_cost(m, spec_.tokens_per_gpu, routing::linear_layer(m, l)) + dense_ffn_cost(m, spec_.tokens_per_gpu);
  return c;
}

void MoeForward::after_passes(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  // Parameter sharding: a micro-batch's backward done, its last bucket (the first MoE layer's
  // gradients, with the dense layers') is reduce-scattered; the step's last below.
  if (sharded_params() && s.pass < passes() && backward(s.pass) && layer_of(s.pass) == 0 &&
      micro_batch(s.pass) + 1 < spec_.micro_batches)
    join_bucket(gpu, static_cast<std::size_t>(buckets_ - 1), micro_batch(s.pass));
  const auto& order = schedule_[static_cast<std::size_t>(stage_of(gpu))];
  s.step += s.paired ? 2 : 1;
  s.paired = false;
  s.pass = static_cast<std::size_t>(s.step) < order.size() ? order[static_cast<std::size_t>(s.step)] : passes();
  if (s.pass < passes()) {
    begin_step(gpu);
  } else if (spec_.training && spec_.gradient_sync) {
    s.wait = Wait::sync;
    s.wait_start = sim_.now();
    join_bucket(gpu, static_cast<std::size_t>(buckets_ - 1), sharded_params() ? spec_.micro_batches - 1 : 0);  // the last bucket (with the dense layers)
    if (sync_left_[static_cast<std::size_t>(gpu)] == 0 && s.wait == Wait::sync) synced(gpu);
  } else if (spec_.training) {
    optimize(gpu);
  } else {
    finish(gpu);
  }
}

void MoeForward::join_bucket(int gpu, std::size_t bucket, int micro_batch) {
  const std::size_t at =
      (static_cast<std::size_t>(micro_batch) * static_cast<std::size_t>(spec_.pp) + static_cast<std::size_t>(sync_stage(spec_, stage_of(gpu)))) *
          static_cast<std::size_t>(buckets_) +
      bucket;
  dense_sync_[at]->join(gpu);
  if (!expert_sync_.empty())
    expert_sync_[at * static_cast<std::size_t>(spec_.ep * spec_.etp) + static_cast<std::size_t>(shard(gpu))]->join(gpu);
}

void MoeForward::backward_layer_done(int gpu, int pass) {
  // A bucket other than the last starts when its lowest layer's backward is done in the last
  // micro-batch through it here (the earlier ones only accumulate gradients; with DualPipe each
  // direction's last).
  const int layer = layer_of(pass);
  if (!(spec_.training && spec_.gradient_sync)) return;
  // (Parameter sharding: in every micro-batch.)
  if (!sharded_params() && micro_batch(pass) != last_micro_batch(spec_, stage_of(gpu), chunk_of(layer))) return;
  const std::size_t first = static_cast<std::size_t>(stage_of(gpu)) * static_cast<std::size_t>(buckets_);
  for (std::size_t b = 0; b + 1 < static_cast<std::size_t>(buckets_); ++b)
    if (bucket_end_[first + b] == layer) join_bucket(gpu, b, sharded_params() ? micro_batch(pass) : 0);
}

void MoeForward::synced(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  s.wait = Wait::none;
  recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), 0, Stage::grad_sync, s.wait_start, sim_.now(), false, false,
                                 spec_.micro_batches - 1});
  optimize(gpu);
}

void MoeForward::optimize(int gpu) {
  run_stage(gpu, Stage::optimizer, cost(optimizer_cost(stage_of(gpu)), gpu, Work::not_model),
            spec_.training && spec_.gradient_sync && spec_.optimizer_sharding && !sharded_params() ? &MoeForward::gather
                                                                                                : &MoeForward::finish,
            spec_.micro_batches - 1);
}

void MoeForward::gather(int gpu) {
  // Sharded optimizer: every GPU fetches the weights the others of its stage (DualPipe: of the
  // two stages holding its chunks) updated.
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const auto st = static_cast<std::size_t>(sync_stage(spec_, stage_of(gpu)));
  s.wait = Wait::sync;
  s.wait_start = sim_.now();
  sync_left_[static_cast<std::size_t>(gpu)] = expert_gather_.empty() ? 1 : 2;
  dense_gather_[st]->join(gpu);
  if (!expert_gather_.empty())
    expert_gather_[st * static_cast<std::size_t>(spec_.ep * spec_.etp) + static_cast<std::size_t>(shard(gpu))]->join(gpu);
}

void MoeForward::gathered(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  s.wait = Wait::none;
  recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), 0, Stage::grad_sync, s.wait_start, sim_.now(), false, false,
                                 spec_.micro_batches - 1});
  finish(gpu);
}

void MoeForward::finish(int) { ++finished_gpus_; }

void MoeForward::join_params(int gpu, int unit) {
  // The unit's weights in the model dtype (layer_params(): the dense layers and the embedding
  // with the first layer, the LM head with the last, in both directions): the replicated ones
  // (its tensor-parallel part) over the stage's GPUs of its TP rank, the GPU's expert shard over
  // the blocks holding it (with a shard group, over those of the GPU's group).
  const int shards = spec_.ep * spec_.etp, blocks = stage_blocks();
  param_left(gpu, unit) = blocks > 1 ? 2 : 1;
  auto& dense = param_dense_[static_cast<std::size_t>(unit)];
  if (!dense) {
    const auto& m = spec_.model;
    const int layer = unit / 2 % m.moe_layers, mb = unit / 2 / m.moe_layers;
    const bool back = unit % 2 == 1;
    CollectiveContext ctx{sim_, network_, recorder_, cluster_.spec().gpus_per_node, spec_.nvls_efficiency};
    ctx.mesh = cluster_.mesh();
    ctx.stage = Stage::param_gather;
    ctx.layer = layer;
    ctx.backward = back;
    ctx.micro_batch = mb;
    const auto done = [this, unit](int g) { params_arrived(g, unit); };
    const auto build = [&](std::vector<int> members, int stride, int group, std::int64_t bytes) {
      return make_strided_collective(ctx, spec_.gradient_sync_algorithm, CollectiveKind::all_gather, std::move(members),
                                     static_cast<std::size_t>(stride), static_cast<std::size_t>(group), sim::Bytes(bytes), done,
                                     spec_.gradient_sync_chunks);
    };
    const int first = stage_of(gpu) * stage_gpus();
    std::vector<int> all(static_cast<std::size_t>(stage_gpus()));
    std::iota(all.begin(), all.end(), first);
    const GpuParams held = layer_params(spec_, placements_, layer);
    dense = build(std::move(all), m.tp, shard_gpus(spec_, stage_gpus()),
                  gathered_weight_bytes(spec_, GpuParams{held.replicated, 0, held.kept}));
    if (blocks > 1) {
      for (int x = 0; x < shards; ++x) {
        std::vector<int> ring;
        for (int b = 0; b < blocks; ++b) ring.push_back(first + b * shards + x);
        param_expert_[static_cast<std::size_t>(unit) * static_cast<std::size_t>(shards) + static_cast<std::size_t>(x)] =
            build(std::move(ring), 1, shard_blocks(spec_, stage_gpus()),
                  gathered_weight_bytes(spec_, GpuParams{0, held.experts, 0}));
      }
    }
  }
  dense->join(gpu);
  if (blocks > 1)
    param_expert_[static_cast<std::size_t>(unit) * static_cast<std::size_t>(shards) + static_cast<std::size_t>(shard(gpu))]->join(gpu);
}

bool MoeForward::params_ready(int gpu) {
  GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  const int unit = param_unit(s.pass);
  if (param_left(gpu, unit) == kNotJoined) join_params(gpu, unit);
  if (param_left(gpu, unit) > 0) {
    if (s.wait != Wait::params) {
      s.wait = Wait::params;
      s.wait_start = sim_.now();
    }
    return false;
  }
  // The weights are here: the next unit of the schedule is gathered while this one runs (the
  // all-gathers one after the other, as on FSDP's all-gather stream).
  const auto& order = schedule_[static_cast<std::size_t>(stage_of(gpu))];
  for (auto i = static_cast<std::size_t>(s.step) + 1; i < order.size(); ++i) {
    const int next = param_unit(order[i]);
    if (next == unit) continue;
    if (param_left(gpu, next) == kNotJoined) join_params(gpu, next);
    break;
  }
  if (s.wait == Wait::params) {
    s.wait = Wait::none;
    recorder_.on_stage(StageRecord{GpuId(static_cast<std::uint32_t>(gpu)), layer_of(s.pass), Stage::param_gather, s.wait_start,
                                   sim_.now(), backward_phase(s.pass), false, micro_batch(s.pass)});
  }
  return true;
}

void MoeForward::params_arrived(int gpu, int unit) {
  std::uint8_t& left = param_left(gpu, unit);
  MOESIM_ASSERT(left != kNotJoined && left > 0, "weights gathered for a GPU that did not ask");
  if (--left > 0) return;
  const GpuState& s = gpus_[static_cast<std::size_t>(gpu)];
  if (s.wait == Wait::params && param_unit(s.pass) == unit) begin_pass(gpu);
}

KernelCost MoeForward::attention(std::int64_t tokens, int layer, int gpu) const {
  const std::int64_t window = routing::layer_window(spec_.model, layer);
  // Decode: the sequences' context, or where contexts differ the mean of the GPU's group's (their
  // mean of min(context, window) on a sliding layer, and of min(context, top-k) for sparse
  // attention's top-k part): the attention reads the sum of its sequences' caches.
  std::int64_t context = spec_.context_length, top = -1;
  if (gpu >= 0 && !context_loads_.empty()) {
    const int gpus = static_cast<int>(gpus_.size()), pass = gpus_[static_cast<std::size_t>(gpu)].pass;
    const int groups = gpus / spec_.pp / spec_.model.tp, mb = pass < passes() ? micro_batch(pass) : 0;
    const routing::ContextLoad& l =
        context_loads_[static_cast<std::size_t>(mb) * static_cast<std::size_t>(groups) + static_cast<std::size_t>(context_group(spec_, gpus, gpu))];
    const double n = static_cast<double>(spec_.model.tp * spec_.sequences());
    context = std::max<std::int64_t>(1, std::llround((window > 0 ? l.window : l.sum) / n));
    top = std::llround(l.top / n);
  }
  if (spec_.context_length > 0 && spec_.prefill_chunk > 0) {
    // Chunked prefill: the prompts' share of these tokens (a half's, with two-batch overlap).
    const std::int64_t chunk = tokens * spec_.prefill_chunk / spec_.tokens_per_gpu;
    return mixed_attention_cost(spec_.model, tokens - chunk, context, 1 + spec_.draft_tokens, chunk, spec_.prefill_chunk,
                                spec_.sequence_length, window);
  }
  if (spec_.context_length > 0) return decode_attention_cost(spec_.model, tokens, context, 1 + spec_.draft_tokens, window, top);
  return attention_cost(spec_.model, tokens, spec_.sequence_length, spec_.cached_prefix, window) + cp_expansion(tokens);
}

KernelCost MoeForward::attention_recompute(std::int64_t tokens, int layer) const {
  return spec_.recompute == Recompute::selective ? mla_up_projection_cost(spec_.model, tokens) + cp_expansion(tokens)
                                                 : attention(tokens, layer);
}

KernelCost MoeForward::cp_expansion(std::int64_t tokens) const {
  return spec_.cp_latent ? mla_kv_expansion_cost(spec_.model, (spec_.cp - 1) * tokens) : KernelCost{};
}

KernelCost MoeForward::optimizer_cost(int stage) const {
  // Every parameter a GPU of the stage holds (all its GPUs hold as many), or with a sharded
  // optimizer its share: the replicated weights (its TP part) over the stage's GPUs of its TP
  // rank, the experts (its shard of them) over the blocks holding them (DualPipe: over those of
  // both stages holding its chunks).
  const GpuParams p = stage_params(spec_, placements_, stage);
  const std::int64_t g = spec_.grad_bytes(), mo = spec_.moment_bytes, w = spec_.model.dtype_bytes;
  if (!(spec_.training && spec_.gradient_sync && (spec_.optimizer_sharding || spec_.parameter_sharding)))
    return adam_cost(p.total(), g, mo, w);
  const int copies = weight_copies(spec_);
  return adam_cost(optimizer_share(p, copies * shard_ranks(spec_, stage_gpus()), copies * shard_blocks(spec_, stage_gpus())), g, mo, w);
}

}  // namespace moesim::models
