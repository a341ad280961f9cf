// What a GPU can do, as its datasheet states it. The roofline compute model derates these
// peaks by the scenario's efficiency factors; measured kernel profiles replace them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sim/time.hpp"

namespace moesim::topology {

// How a node's GPUs are joined: through an NVSwitch (every GPU one port to it), or a full mesh
// of GPU-to-GPU links (AMD Infinity Fabric: one xGMI link per pair, no switch).
enum class NodeFabric { nvswitch, mesh };

struct GpuSpec {
  std::string name;
  sim::FlopRate peak_bf16;          // dense (no structured sparsity) BF16 tensor-core peak
  sim::FlopRate peak_fp8;           // dense FP8 tensor-core peak; 0: no FP8 tensor cores
  sim::Bandwidth memory_bandwidth;  // HBM
  sim::Bytes memory;                // HBM capacity
  sim::Bandwidth nvlink_bandwidth;  // scale-up, per GPU, per direction (half the "bidirectional"
                                    // figure); with a mesh, peer_links x link_bandwidth
  int sm_count = 0;                 // streaming multiprocessors; 0: not stated
  sim::FlopRate peak_fp4{};         // dense FP4 (NVFP4, MXFP4) tensor-core peak; 0: no FP4 tensor cores
  NodeFabric fabric = NodeFabric::nvswitch;  // the fabric of the servers it comes in
  int peer_links = 0;                // mesh: links per GPU, one to each peer (so at most this + 1 GPUs a node)
  sim::Bandwidth link_bandwidth{};   // mesh: per link, per direction
  double board_power_w = 0;          // rated board power (TDP, TBP), watts; 0: not stated
};

// Presets: H100-SXM, H800-SXM, H200-SXM, A100-SXM, B200-SXM, GB200, B300-SXM, GB300, MI300X,
// MI325X, MI355X. Names match case-insensitively; "H100" means "H100-SXM" (and "B200" "B200-SXM",
// "B300" "B300-SXM").
const GpuSpec* find_gpu_preset(std::string_view name);
std::vector<std::string> gpu_preset_names();

}  // namespace moesim::topology
