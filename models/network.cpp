#include "models/network.hpp"

#include <string>

#include "models/analytical_network.hpp"
#include "models/maxmin_network.hpp"
#include "sim/assert.hpp"

namespace moesim::models {

std::unique_ptr<NetworkModel> make_network_model(std::string_view name, sim::Simulator& sim,
                                                 const topology::Cluster& cluster, sim::Time resolve_interval) {
  if (name == "analytical") return std::make_unique<AnalyticalNetwork>(sim, cluster);
  MOESIM_ASSERT(name == "maxmin", "unknown network model " + std::string(name));
  return std::make_unique<MaxMinNetwork>(sim, cluster, resolve_interval);
}

}  // namespace moesim::models
