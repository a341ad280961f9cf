#include "scenarios/experiment.hpp"

#include "models/moe_forward.hpp"
#include "routing/token_router.hpp"
#include "sim/assert.hpp"
#include "sim/parallel.hpp"
#include "sim/simulator.hpp"

namespace moesim::scenarios {

RunResult run_experiment(const Scenario& sc, const Progress& progress) {
  const topology::Cluster cluster(sc.cluster);
  sim::Simulator sim;
  const auto network = models::make_network_model(sc.network_model, sim, cluster);
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  RunResult result{models::RunStats(cluster.gpu_count(), sc.forward.model.moe_layers, sc.cluster.gpus_per_node), 0,
                   std::string(network->name()), "roofline", {}, {}, nullptr, 0.0};
  if (sc.timeline != "off")
    result.timeline = std::make_shared<models::TimelineRecorder>(sc.timeline == "on" ? 0 : kTimelineAutoLimit);
  models::RecorderTee tee({&result.stats, result.timeline.get()});
  if (result.timeline)
    network->on_link_busy([t = result.timeline.get()](std::uint32_t l, double a, double b) { t->on_link_busy(l, a, b); });
  models::Recorder& recorder = result.timeline ? static_cast<models::Recorder&>(tee) : result.stats;
  models::MoeForward forward(sim, cluster, *network, roofline, sc.forward, recorder);
  forward.start();
  if (progress) sim.set_progress_hook(1 << 16, [&] { progress(forward.progress()); });
  result.events = sim.run();
  result.model_flops = forward.model_flops();
  MOESIM_ASSERT(forward.finished(), "the simulation ended with GPUs still waiting");
  if (const auto* usage = network->link_usage()) result.links = *usage;
  result.placements = forward.placements();
  return result;
}

std::vector<routing::TokenBatch> route_group(const Scenario& sc, int group) {
  const routing::TokenRouter router(sc.forward.model, sc.forward.routing, sc.forward.ep, sc.forward.seed, true);
  std::vector<routing::TokenBatch> out(static_cast<std::size_t>(sc.forward.model.moe_layers));
  const routing::TokenBatch none;
  for (std::size_t l = 0; l < out.size(); ++l)
    router.route(static_cast<int>(l), group * sc.forward.ep, sc.forward.tokens_per_gpu, l > 0 ? &out[l - 1] : &none,
                 out[l]);
  return out;
}

std::vector<std::vector<std::int64_t>> routed_counts(const Scenario& sc) {
  const auto& f = sc.forward;
  const int groups = sc.cluster.nodes * sc.cluster.gpus_per_node / f.ep;
  const routing::TokenRouter router(f.model, f.routing, f.ep, f.seed, false);
  const auto layers = static_cast<std::size_t>(f.model.moe_layers), experts = static_cast<std::size_t>(f.model.experts);
  std::vector<std::vector<std::int64_t>> per_group(static_cast<std::size_t>(groups),
                                                   std::vector<std::int64_t>(layers * experts, 0));
  sim::parallel_for(static_cast<std::size_t>(groups), [&](std::size_t g) {
    routing::TokenBatch batch, previous;
    for (std::size_t l = 0; l < layers; ++l) {
      router.route(static_cast<int>(l), static_cast<int>(g) * f.ep, f.tokens_per_gpu, &previous, batch);
      for (const int e : batch.experts) ++per_group[g][l * experts + static_cast<std::size_t>(e)];
      std::swap(batch, previous);
    }
  });
  std::vector<std::vector<std::int64_t>> out(layers, std::vector<std::int64_t>(experts, 0));
  for (const auto& p : per_group)
    for (std::size_t l = 0; l < layers; ++l)
      for (std::size_t e = 0; e < experts; ++e) out[l][e] += p[l * experts + e];
  return out;
}

std::vector<routing::Placement> compute_placements(const Scenario& sc) {
  return models::make_placements(sc.forward, sc.cluster.nodes * sc.cluster.gpus_per_node, sc.cluster.gpus_per_node);
}

}  // namespace moesim::scenarios
