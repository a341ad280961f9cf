#include "scenarios/experiment.hpp"

#include "models/moe_forward.hpp"
#include "sim/assert.hpp"
#include "sim/simulator.hpp"

namespace moesim::scenarios {

RunResult run_experiment(const Scenario& sc) {
  const topology::Cluster cluster(sc.cluster);
  sim::Simulator sim;
  const auto network = models::make_network_model(sc.network_model, sim, cluster);
  const models::Roofline roofline(sc.cluster.gpu, sc.roofline);
  RunResult result{models::RunStats(cluster.gpu_count(), sc.forward.model.moe_layers), 0,
                   std::string(network->name()), "roofline", {}, {}};
  models::MoeForward forward(sim, cluster, *network, roofline, sc.forward, result.stats);
  forward.start();
  result.events = sim.run();
  MOESIM_ASSERT(forward.finished(), "the simulation ended with GPUs still waiting");
  if (const auto* usage = network->link_usage()) result.links = *usage;
  result.placements = forward.placements();
  return result;
}

std::vector<routing::Placement> compute_placements(const Scenario& sc) {
  return models::make_placements(sc.forward, sc.cluster.nodes * sc.cluster.gpus_per_node, sc.cluster.gpus_per_node);
}

}  // namespace moesim::scenarios
