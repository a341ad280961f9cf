#include "models/roofline.hpp"

#include <cmath>

#include "sim/assert.hpp"

namespace moesim::models {

Roofline::Roofline(const topology::GpuSpec& gpu, const RooflineSpec& spec)
    : flops_(std::llround(static_cast<double>(gpu.peak_bf16.flop_per_s()) * spec.flops_efficiency)),
      gemm_flops_(spec.gemm_dtype == GemmDtype::bf16
                      ? 0
                      : std::llround(static_cast<double>((spec.gemm_dtype == GemmDtype::fp8 ? gpu.peak_fp8 : gpu.peak_fp4).flop_per_s()) *
                                     spec.flops_efficiency)),
      core_flops_(spec.attention_efficiency > 0 ? std::llround(static_cast<double>(gpu.peak_bf16.flop_per_s()) * spec.attention_efficiency)
                                                : 0),
      bandwidth_(std::llround(static_cast<double>(gpu.memory_bandwidth.bytes_per_s()) *
                              spec.memory_efficiency)),
      overhead_(spec.kernel_overhead),
      elementwise_kernels_(spec.elementwise_kernels) {
  MOESIM_ASSERT(flops_.flop_per_s() > 0 && bandwidth_.bytes_per_s() > 0,
                "roofline with zero achievable rate");
  MOESIM_ASSERT(spec.gemm_dtype == GemmDtype::bf16 || gemm_flops_.flop_per_s() > 0, "FP8 or FP4 GEMMs on a GPU without that peak");
}

sim::Time Roofline::time(const KernelCost& cost) const {
  // The attention core apart where it has its own efficiency.
  const std::int64_t core = core_flops_.flop_per_s() > 0 ? cost.core_flops : 0;
  sim::Time compute = gemm_flops_.flop_per_s() > 0
                          ? sim::compute_time(cost.flops - cost.gemm_flops - core, flops_) + sim::compute_time(cost.gemm_flops, gemm_flops_)
                          : sim::compute_time(cost.flops - core, flops_);
  if (core > 0) compute += sim::compute_time(core, core_flops_);
  if (!elementwise_kernels_)
    return overhead_ + sim::max(compute, sim::transfer_time(sim::Bytes(cost.bytes + cost.activation_bytes), bandwidth_));
  const std::int64_t apart = cost.activation_bytes + cost.elementwise_bytes;
  return overhead_ * (1 + cost.elementwise_launches) + sim::max(compute, sim::transfer_time(sim::Bytes(cost.bytes), bandwidth_)) +
         (apart > 0 ? sim::transfer_time(sim::Bytes(apart), bandwidth_) : sim::Time{});
}

}  // namespace moesim::models
