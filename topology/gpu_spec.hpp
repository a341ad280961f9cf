// What a GPU can do, as its datasheet states it. The roofline compute model derates these
// peaks by the scenario's efficiency factors; measured kernel profiles replace them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sim/time.hpp"

namespace moesim::topology {

struct GpuSpec {
  std::string name;
  sim::FlopRate peak_bf16;          // dense (no structured sparsity) BF16 tensor-core peak
  sim::FlopRate peak_fp8;           // dense FP8 tensor-core peak; 0: no FP8 tensor cores
  sim::Bandwidth memory_bandwidth;  // HBM
  sim::Bytes memory;                // HBM capacity
  sim::Bandwidth nvlink_bandwidth;  // per GPU, per direction (half the "bidirectional" figure)
  int sm_count = 0;                 // streaming multiprocessors; 0: not stated
  sim::FlopRate peak_fp4{};         // dense FP4 (NVFP4) tensor-core peak; 0: no FP4 tensor cores
};

// Presets: H100-SXM, H800-SXM, H200-SXM, A100-SXM, B200-SXM, GB200. Names match case-insensitively;
// "H100" means "H100-SXM" (and "B200" "B200-SXM").
const GpuSpec* find_gpu_preset(std::string_view name);
std::vector<std::string> gpu_preset_names();

}  // namespace moesim::topology
