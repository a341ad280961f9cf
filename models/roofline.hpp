// Roofline compute model: a kernel that does F floating-point operations and moves B bytes
// to and from HBM takes
//     t = overhead + max( F / (peak_flops * flops_efficiency), B / (hbm_bandwidth * memory_efficiency) )
// rounded up to the picosecond. Peaks come from the GPU's datasheet (topology/gpu_spec.cpp);
// the efficiencies are the fraction of peak a production kernel reaches, set per scenario
// (defaults in docs/scenario.md). The achievable rates are rounded to whole FLOP/s and B/s so
// that durations are exact integer arithmetic. This is the fallback when no measured kernel
// profile covers a case; reports name the source used.
#pragma once

#include <cstdint>

#include "sim/time.hpp"
#include "topology/gpu_spec.hpp"

namespace moesim::models {

struct RooflineSpec {
  double flops_efficiency = 0.7;
  double memory_efficiency = 0.85;
  sim::Time kernel_overhead;  // added to every kernel launch
};

struct KernelCost {
  std::int64_t flops = 0;
  std::int64_t bytes = 0;  // HBM traffic
};

class Roofline {
 public:
  Roofline(const topology::GpuSpec& gpu, const RooflineSpec& spec);
  sim::Time time(const KernelCost& cost) const;
  sim::FlopRate achievable_flops() const { return flops_; }
  sim::Bandwidth achievable_bandwidth() const { return bandwidth_; }

 private:
  sim::FlopRate flops_;
  sim::Bandwidth bandwidth_;
  sim::Time overhead_;
};

}  // namespace moesim::models
