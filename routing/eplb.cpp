#include "routing/eplb.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <queue>
#include <utility>

namespace moesim::routing {

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw PlacementError(what);
}

ExpertPlacement finish(int logical, int physical, int gpus, std::vector<int> phy2log, std::vector<int> rank) {
  ExpertPlacement p;
  p.logical = logical;
  p.physical = physical;
  p.gpus = gpus;
  p.replica_count.assign(static_cast<std::size_t>(logical), 0);
  for (const int l : phy2log) ++p.replica_count[static_cast<std::size_t>(l)];
  p.logical_to_physical.assign(static_cast<std::size_t>(logical), {});
  for (int l = 0; l < logical; ++l)
    p.logical_to_physical[static_cast<std::size_t>(l)].assign(
        static_cast<std::size_t>(p.replica_count[static_cast<std::size_t>(l)]), -1);
  for (int s = 0; s < physical; ++s)
    p.logical_to_physical[static_cast<std::size_t>(phy2log[static_cast<std::size_t>(s)])]
                         [static_cast<std::size_t>(rank[static_cast<std::size_t>(s)])] = s;
  p.physical_to_logical = std::move(phy2log);
  p.replica_rank = std::move(rank);
  return p;
}

}  // namespace

Packing balanced_packing(const std::vector<double>& weight, int packs) {
  const int n = static_cast<int>(weight.size());
  require(packs >= 1 && n % packs == 0, fmt::format("{} items do not divide into {} packs", n, packs));
  const int per_pack = n / packs;
  Packing out{std::vector<int>(static_cast<std::size_t>(n)), std::vector<int>(static_cast<std::size_t>(n))};
  std::vector<int> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return weight[static_cast<std::size_t>(a)] > weight[static_cast<std::size_t>(b)];
  });
  // The lightest pack with room, the first on ties: the least (load, pack) of a min-heap holding
  // the packs with room (a full pack leaves it).
  std::vector<double> load(static_cast<std::size_t>(packs), 0.0);
  std::vector<int> items(static_cast<std::size_t>(packs), 0);
  using Entry = std::pair<double, int>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> lightest;
  for (int p = 0; p < packs; ++p) lightest.emplace(0.0, p);
  for (const int i : order) {
    const int best = lightest.top().second;
    lightest.pop();
    out.pack[static_cast<std::size_t>(i)] = best;
    out.rank[static_cast<std::size_t>(i)] = items[static_cast<std::size_t>(best)]++;
    load[static_cast<std::size_t>(best)] += weight[static_cast<std::size_t>(i)];
    if (items[static_cast<std::size_t>(best)] < per_pack) lightest.emplace(load[static_cast<std::size_t>(best)], best);
  }
  return out;
}

Replication replicate_experts(const std::vector<double>& weight, int physical) {
  const int logical = static_cast<int>(weight.size());
  require(physical >= logical, fmt::format("{} slots cannot hold {} experts", physical, logical));
  Replication r;
  r.physical_to_logical.resize(static_cast<std::size_t>(physical));
  r.replica_rank.assign(static_cast<std::size_t>(physical), 0);
  r.replica_count.assign(static_cast<std::size_t>(logical), 1);
  std::iota(r.physical_to_logical.begin(), r.physical_to_logical.begin() + logical, 0);
  for (int s = logical; s < physical; ++s) {
    int best = 0;
    for (int e = 1; e < logical; ++e)
      if (weight[static_cast<std::size_t>(e)] / r.replica_count[static_cast<std::size_t>(e)] >
          weight[static_cast<std::size_t>(best)] / r.replica_count[static_cast<std::size_t>(best)])
        best = e;
    r.physical_to_logical[static_cast<std::size_t>(s)] = best;
    r.replica_rank[static_cast<std::size_t>(s)] = r.replica_count[static_cast<std::size_t>(best)]++;
  }
  return r;
}

ExpertPlacement eplb_hierarchical(const std::vector<double>& load, int physical, int groups, int nodes, int gpus) {
  const int logical = static_cast<int>(load.size());
  require(groups >= 1 && logical % groups == 0, fmt::format("{} experts do not divide into {} groups", logical, groups));
  require(nodes >= 1 && groups % nodes == 0, fmt::format("{} expert groups do not divide over {} nodes", groups, nodes));
  require(gpus >= nodes && gpus % nodes == 0, fmt::format("{} GPUs do not divide over {} nodes", gpus, nodes));
  require(physical >= logical && physical % gpus == 0,
          fmt::format("{} expert slots do not divide over {} GPUs (or are fewer than {} experts)", physical, gpus, logical));
  const int group_size = logical / groups;
  const int groups_per_node = groups / nodes;
  const int per_node_logical = logical / nodes;
  const int per_node_physical = physical / nodes;
  const int per_gpu = physical / gpus;
  const int gpus_per_node = gpus / nodes;

  // 1. Expert groups onto nodes, by group load. "mlog" numbers experts node by node.
  std::vector<double> group_load(static_cast<std::size_t>(groups), 0.0);
  for (int e = 0; e < logical; ++e) group_load[static_cast<std::size_t>(e / group_size)] += load[static_cast<std::size_t>(e)];
  const Packing gp = balanced_packing(group_load, nodes);
  std::vector<int> mlog_to_log(static_cast<std::size_t>(logical));
  for (int e = 0; e < logical; ++e) {
    const int g = e / group_size;
    const int mlog = (gp.pack[static_cast<std::size_t>(g)] * groups_per_node + gp.rank[static_cast<std::size_t>(g)]) * group_size +
                     e % group_size;
    mlog_to_log[static_cast<std::size_t>(mlog)] = e;
  }

  std::vector<int> phy2log(static_cast<std::size_t>(physical)), rank(static_cast<std::size_t>(physical));
  for (int node = 0; node < nodes; ++node) {
    // 2. Replicas inside the node.
    std::vector<double> node_load(static_cast<std::size_t>(per_node_logical));
    for (int i = 0; i < per_node_logical; ++i)
      node_load[static_cast<std::size_t>(i)] =
          load[static_cast<std::size_t>(mlog_to_log[static_cast<std::size_t>(node * per_node_logical + i)])];
    const Replication rep = replicate_experts(node_load, per_node_physical);
    // 3. Replicas onto the node's GPUs, each carrying its expert's load / replicas.
    std::vector<double> replica_load(static_cast<std::size_t>(per_node_physical));
    for (int s = 0; s < per_node_physical; ++s) {
      const int m = rep.physical_to_logical[static_cast<std::size_t>(s)];
      replica_load[static_cast<std::size_t>(s)] =
          node_load[static_cast<std::size_t>(m)] / rep.replica_count[static_cast<std::size_t>(m)];
    }
    const Packing pk = balanced_packing(replica_load, gpus_per_node);
    for (int s = 0; s < per_node_physical; ++s) {
      const int slot = node * per_node_physical + pk.pack[static_cast<std::size_t>(s)] * per_gpu +
                       pk.rank[static_cast<std::size_t>(s)];
      const int m = rep.physical_to_logical[static_cast<std::size_t>(s)];
      phy2log[static_cast<std::size_t>(slot)] = mlog_to_log[static_cast<std::size_t>(node * per_node_logical + m)];
      rank[static_cast<std::size_t>(slot)] = rep.replica_rank[static_cast<std::size_t>(s)];
    }
  }
  return finish(logical, physical, gpus, std::move(phy2log), std::move(rank));
}

ExpertPlacement eplb_global(const std::vector<double>& load, int physical, int gpus) {
  return eplb_hierarchical(load, physical, 1, 1, gpus);
}

ExpertPlacement eplb_placement(const std::vector<double>& load, int physical, int groups, int nodes, int gpus) {
  if (groups >= 1 && nodes >= 1 && groups % nodes == 0) return eplb_hierarchical(load, physical, groups, nodes, gpus);
  return eplb_global(load, physical, gpus);
}

}  // namespace moesim::routing
