#include "scenarios/experiment.hpp"

#include <algorithm>
#include <optional>
#include <utility>

#include "models/moe_forward.hpp"
#include "routing/token_router.hpp"
#include "sim/assert.hpp"
#include "sim/parallel.hpp"
#include "sim/simulator.hpp"

namespace moesim::scenarios {

namespace {

RunResult run_step(const Scenario& sc, const Progress& progress, const Progress& preparing) {
  const topology::Cluster cluster(sc.cluster);
  sim::Simulator sim;
  const auto network = models::make_network_model(sc.network_model, sim, cluster, sc.resolve_interval);
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  RunResult result{models::RunStats(cluster.gpu_count(), sc.forward.model.moe_layers, sc.cluster.gpus_per_node,
                                    sc.forward.micro_batches), 0,
                   std::string(network->name()), "roofline", {}, {}, nullptr, 0.0, {}, {}};
  if (sc.timeline != "off")
    result.timeline = std::make_shared<models::TimelineRecorder>(sc.timeline == "on" ? 0 : kTimelineAutoLimit);
  models::RecorderTee tee({&result.stats, result.timeline.get()});
  if (result.timeline)
    network->on_link_busy([t = result.timeline.get()](std::uint32_t l, double a, double b) { t->on_link_busy(l, a, b); });
  models::Recorder& recorder = result.timeline ? static_cast<models::Recorder&>(tee) : result.stats;
  models::MoeForward forward(sim, cluster, *network, roofline, sc.forward, recorder);
  forward.start(preparing);
  if (progress) sim.set_progress_hook(1 << 16, [&] { progress(forward.progress()); });
  result.events = sim.run();
  result.model_flops = forward.model_flops();
  result.contexts = forward.context_loads();
  // Which model gave the kernel times: the profile for every forward MoE stage, or partly.
  if (sc.forward.profile)
    result.compute_source = forward.profile_misses() == 0 ? "profile" : forward.profile_hits() == 0 ? "roofline" : "profile+roofline";
  MOESIM_ASSERT(forward.finished(), "the simulation ended with GPUs still waiting");
  if (const auto* usage = network->link_usage()) result.links = *usage;
  result.placements = forward.placements();
  return result;
}

// The worst layer's max/mean tokens computed per GPU (of the `gpus` that run each layer).
double gpu_imbalance(const RunResult& r, int gpus) {
  double worst = 0;
  for (const auto& l : r.stats.layers()) {
    const double mean = static_cast<double>(l.computed) / gpus;
    if (mean > 0) worst = std::max(worst, static_cast<double>(l.max_gpu_tokens) / mean);
  }
  return worst;
}

// Expert weights to move when the placement changes: every slot whose expert is new to it
// fetches the expert's weights (3 H F elements; with expert tensor parallelism each GPU of the
// ETP group its 1/etp share) from a GPU of the same EP group that held the expert before, on its
// own node when one did (else the first). Returns the time the moves
// take on the network (all at once) and their bytes.
std::pair<sim::Time, std::int64_t> move_weights(const Scenario& sc, const std::vector<routing::Placement>& from,
                                                const std::vector<routing::Placement>& to) {
  const topology::Cluster cluster(sc.cluster);
  sim::Simulator sim;
  const auto network = models::make_network_model(sc.network_model, sim, cluster, sc.resolve_interval);
  const auto& m = sc.forward.model;
  const int gpn = sc.cluster.gpus_per_node, ep = sc.forward.ep, etp = sc.forward.etp;
  const sim::Bytes expert(routing::expert_weight_bytes(m, 3 * m.hidden * m.expert_ffn / etp));
  std::int64_t bytes = 0;
  for (std::size_t l = 0; l < to.size(); ++l) {
    const auto& a = from[l];
    const auto& b = to[l];
    // Each EP group: group k's rank r is GPU g0 + r etp (models::ep_group_gpu's layout).
    for (int k = 0; k < cluster.gpu_count() / ep; ++k) {
      const int g0 = k / etp * ep * etp + k % etp;
      for (int s = 0; s < b.slots(); ++s) {
        const int e = b.slot_expert[static_cast<std::size_t>(s)];
        const int dst = g0 + b.gpu_of_slot(s) * etp;
        bool had = false;
        int src = -1;
        for (const int old : a.expert_slots[static_cast<std::size_t>(e)]) {
          const int holder = g0 + a.gpu_of_slot(old) * etp;
          if (holder == dst) had = true;
          if (src < 0 || (holder / gpn == dst / gpn && src / gpn != dst / gpn)) src = holder;
        }
        if (had || src < 0) continue;
        bytes += expert.count();
        network->start_flow(models::Flow{topology::GpuId(static_cast<std::uint32_t>(src)),
                                         topology::GpuId(static_cast<std::uint32_t>(dst)), expert},
                            [] {});
      }
    }
  }
  sim.run();
  return {sim.now(), bytes};
}

}  // namespace

RunResult run_experiment(const Scenario& sc, const Progress& progress, const Progress& preparing) {
  if (sc.steps <= 1) return run_step(sc, progress, preparing);
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  Scenario step = sc;
  step.timeline = "off";  // only the last step keeps a timeline
  std::vector<routing::Placement> placements;
  std::vector<RunResult::Step> rows;
  std::optional<RunResult> last;
  for (int i = 0; i < sc.steps; ++i) {
    RunResult::Step row;
    row.step = sc.forward.routing.step + i;
    step.forward.routing.step = row.step;
    if (i == sc.steps - 1) step.timeline = sc.timeline;
    // The placement: made for the first step, and again every refresh_every steps.
    if (placements.empty() || (sc.refresh_every > 0 && i % sc.refresh_every == 0)) {
      step.forward.placements.clear();
      auto fresh = models::make_placements(step.forward, gpus, sc.cluster.gpus_per_node);
      if (!placements.empty()) {
        row.refreshed = true;
        const auto [t, b] = move_weights(sc, placements, fresh);
        row.rebalance = t;
        row.moved_bytes = b;
      }
      placements = std::move(fresh);
    }
    step.forward.placements = placements;
    const double before = static_cast<double>(i) / sc.steps;
    RunResult r = run_step(step, progress ? Progress([&](double d) { progress(before + d / sc.steps); }) : Progress{}, preparing);
    row.time = r.stats.step_time();
    row.gpu_imbalance = gpu_imbalance(r, gpus / sc.forward.pp);  // a layer's stage's GPUs
    rows.push_back(row);
    if (i == sc.steps - 1) last.emplace(std::move(r));
  }
  last->steps = std::move(rows);
  return std::move(*last);
}

namespace {

int first_gpu(const Scenario& sc, int layer, int group, int micro_batch = -1) {
  return models::group_first_gpu(sc.forward, sc.cluster.nodes * sc.cluster.gpus_per_node, layer, group, micro_batch);
}

}  // namespace

std::vector<routing::TokenBatch> route_group(const Scenario& sc, int group) {
  const routing::TokenRouter router(sc.forward.model, sc.forward.routing, sc.forward.ep, sc.forward.seed, true);
  std::vector<routing::TokenBatch> out(static_cast<std::size_t>(sc.forward.model.moe_layers));
  const routing::TokenBatch none;
  for (std::size_t l = 0; l < out.size(); ++l)
    router.route(static_cast<int>(l), first_gpu(sc, static_cast<int>(l), group), sc.forward.tokens_per_gpu,
                 l > 0 ? &out[l - 1] : &none, out[l]);
  return out;
}

std::vector<std::vector<std::int64_t>> routed_counts(const Scenario& sc) {
  const auto& f = sc.forward;
  const int groups = sc.cluster.nodes * sc.cluster.gpus_per_node / f.pp / f.ep;  // per pipeline stage
  const routing::TokenRouter router(f.model, f.routing, f.ep, f.seed, false);
  const auto layers = static_cast<std::size_t>(f.model.moe_layers), experts = static_cast<std::size_t>(f.model.experts);
  // One item per (micro-batch, group), each routing its layers in order.
  const std::size_t items = static_cast<std::size_t>(f.micro_batches) * static_cast<std::size_t>(groups);
  std::vector<std::vector<std::int64_t>> per_item(items, std::vector<std::int64_t>(layers * experts, 0));
  sim::parallel_for(items, [&](std::size_t i) {
    const int g = static_cast<int>(i % static_cast<std::size_t>(groups));
    const int mb = static_cast<int>(i / static_cast<std::size_t>(groups));
    routing::TokenBatch batch, previous;
    for (std::size_t l = 0; l < layers; ++l) {
      router.route(static_cast<int>(l), first_gpu(sc, static_cast<int>(l), g, mb), f.tokens_per_gpu, &previous, batch, mb);
      for (const int e : batch.experts) ++per_item[i][l * experts + static_cast<std::size_t>(e)];
      std::swap(batch, previous);
    }
  });
  std::vector<std::vector<std::int64_t>> out(layers, std::vector<std::int64_t>(experts, 0));
  for (const auto& p : per_item)
    for (std::size_t l = 0; l < layers; ++l)
      for (std::size_t e = 0; e < experts; ++e) out[l][e] += p[l * experts + e];
  return out;
}

std::vector<routing::Placement> compute_placements(const Scenario& sc) {
  return models::make_placements(sc.forward, sc.cluster.nodes * sc.cluster.gpus_per_node, sc.cluster.gpus_per_node);
}

}  // namespace moesim::scenarios
