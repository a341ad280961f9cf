#include "models/roofline.hpp"

#include <cmath>

#include "sim/assert.hpp"

namespace moesim::models {

Roofline::Roofline(const topology::GpuSpec& gpu, const RooflineSpec& spec)
    : flops_(std::llround(static_cast<double>(gpu.peak_bf16.flop_per_s()) * spec.flops_efficiency)),
      bandwidth_(std::llround(static_cast<double>(gpu.memory_bandwidth.bytes_per_s()) *
                              spec.memory_efficiency)),
      overhead_(spec.kernel_overhead) {
  MOESIM_ASSERT(flops_.flop_per_s() > 0 && bandwidth_.bytes_per_s() > 0,
                "roofline with zero achievable rate");
}

sim::Time Roofline::time(const KernelCost& cost) const {
  return overhead_ + sim::max(sim::compute_time(cost.flops, flops_),
                              sim::transfer_time(sim::Bytes(cost.bytes), bandwidth_));
}

}  // namespace moesim::models
