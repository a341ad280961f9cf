// Expert placement with redundant experts: DeepSeek's Expert-Parallelism Load Balancer (EPLB,
// github.com/deepseek-ai/EPLB), implemented from its published description.
//
// Inputs: the load of each logical expert (tokens routed to it, measured or expected), the
// number of physical expert slots (logical experts + redundant replicas), and the cluster shape.
// - balanced_packing: items, in descending weight order (stable: equal weights keep index
//   order), each go to the lightest pack that still has room (first pack on ties); every pack
//   ends with exactly items / packs items.
// - replicate: each redundant slot goes to the logical expert with the largest load per
//   replica (first index on ties).
// - hierarchical (expert groups divide evenly over nodes): pack expert groups onto nodes by
//   group load; inside each node replicate its experts up to its share of slots; pack the
//   replicas (each carrying load / replicas) onto the node's GPUs.
// - global (otherwise): replicate over all slots, pack the replicas onto all GPUs.
// Physical slot p lives on GPU p / (physical / gpus).
#pragma once

#include <stdexcept>
#include <vector>

namespace moesim::routing {

class PlacementError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct Packing {
  std::vector<int> pack;  // [item]
  std::vector<int> rank;  // [item]: position inside its pack, in assignment order
};
Packing balanced_packing(const std::vector<double>& weight, int packs);

struct Replication {
  std::vector<int> physical_to_logical;  // [slot]; the first `logical` slots are the originals
  std::vector<int> replica_rank;         // [slot]
  std::vector<int> replica_count;        // [logical]
};
Replication replicate_experts(const std::vector<double>& weight, int physical);

struct ExpertPlacement {
  int logical = 0, physical = 0, gpus = 0;
  std::vector<int> physical_to_logical;              // [slot]
  std::vector<int> replica_rank;                     // [slot]
  std::vector<int> replica_count;                    // [logical]
  std::vector<std::vector<int>> logical_to_physical;  // [logical] -> slots, by replica rank
  int slots_per_gpu() const { return physical / gpus; }
  int gpu_of_slot(int slot) const { return slot / slots_per_gpu(); }
};

// Hierarchical when groups % nodes == 0, global otherwise (DeepSeek's rule). Throws
// PlacementError when the shape does not divide (physical < logical, physical % gpus, ...).
ExpertPlacement eplb_placement(const std::vector<double>& load, int physical, int groups, int nodes, int gpus);
ExpertPlacement eplb_hierarchical(const std::vector<double>& load, int physical, int groups, int nodes, int gpus);
ExpertPlacement eplb_global(const std::vector<double>& load, int physical, int gpus);

}  // namespace moesim::routing
