// Roofline compute model: a kernel that does F floating-point operations and moves B bytes
// to and from HBM takes
//     t = overhead + max( F / (peak_flops * flops_efficiency), B / (hbm_bandwidth * memory_efficiency) )
// rounded up to the picosecond. Peaks come from the GPU's datasheet (topology/gpu_spec.cpp);
// the efficiencies are the fraction of peak a production kernel reaches, set per scenario
// (defaults in docs/scenario.md). The achievable rates are rounded to whole FLOP/s and B/s so
// that durations are exact integer arithmetic. This is the fallback when no measured kernel
// profile covers a case; reports name the source used.
//
// FP8 GEMMs (compute.gemm_dtype: fp8, DeepSeek-V3's mixed-precision training): the G of a
// kernel's F FLOPs that are its linear layers' GEMMs run at the FP8 peak, the rest at BF16:
//     F / (peak * eff)  becomes  (F - G) / (peak_bf16 * eff) + G / (peak_fp8 * eff)
// each term rounded up to the picosecond; FP4 GEMMs (compute.gemm_dtype: fp4, NVFP4 weights and
// activations on Blackwell, inference only) likewise at the FP4 peak. Likewise with
// compute.attention_efficiency (a_eff) the C FLOPs of the attention core take
// C / (peak_bf16 * a_eff) and the rest as above; the bytes are the cost model's (model.dtype, and
// model.weight_dtype for the weights in inference; DeepSeek's FP8 training keeps its weights and
// most activations in BF16 and quantizes them as the GEMMs read them).
//
// The memory-bound kernels between the GEMMs (compute.elementwise_kernels): a kernel's
// activation_bytes (its SwiGLU's: the gate and up outputs read, the activation written) and
// elementwise_bytes (the norms', the rotary embedding's, the permutation's) are kernels of their
// own that run after it at the memory bandwidth, overlapping nothing, each launch
// (elementwise_launches) paying the kernel overhead too:
//     t = (1 + launches) overhead + max(compute, B / bw) + (A + E) / bw
// Without it (the default) the activation's bytes count with the kernel's, as one fused kernel
// would move them, and the other elementwise kernels are not modelled:
//     t = overhead + max(compute, (B + A) / bw)
#pragma once

#include <cstdint>

#include "sim/time.hpp"
#include "topology/gpu_spec.hpp"

namespace moesim::models {

// The linear layers' GEMMs: at the BF16 peak, or the FP8 or FP4 one (compute.gemm_dtype).
enum class GemmDtype { bf16, fp8, fp4 };

struct RooflineSpec {
  double flops_efficiency = 0.7;
  double memory_efficiency = 0.85;
  // The attention core's (QK^T and PV) share of the BF16 peak, where it is set (compute.attention_efficiency);
  // 0: flops_efficiency, as every other kernel.
  double attention_efficiency = 0;
  sim::Time kernel_overhead;  // added to every kernel launch
  GemmDtype gemm_dtype = GemmDtype::bf16;  // fp8, fp4: GEMM FLOPs at the GPU's FP8 (FP4) peak (it must have one)
  bool elementwise_kernels = false;         // the memory-bound kernels between the GEMMs, apart (above)
};

// What a kernel does. gemm_flops: the part of flops in linear layers' GEMMs (experts, dense
// FFNs, attention projections), which FP8 GEMMs speed up; the attention core, the router, the
// LM head and elementwise work are not (DeepSeek-V3 keeps them in BF16 or FP32). core_flops:
// the part in the attention core (scores and the weighted sum of values), which
// compute.attention_efficiency times apart. activation_bytes and elementwise_bytes: the HBM
// traffic of the memory-bound kernels around it (above; models/moe_costs.hpp says which).
struct KernelCost {
  std::int64_t flops = 0;
  std::int64_t bytes = 0;  // HBM traffic
  std::int64_t gemm_flops = 0;
  std::int64_t core_flops = 0;
  std::int64_t activation_bytes = 0;
  std::int64_t elementwise_bytes = 0;
  // The memory-bound kernels apart that it stands for (each pays kernel_overhead with
  // compute.elementwise_kernels): a layer's norms and rotary embedding 3, the permutation 1, a
  // SwiGLU 1.
  std::int64_t elementwise_launches = 0;

  friend KernelCost operator+(const KernelCost& a, const KernelCost& b) {
    return {.flops = a.flops + b.flops, .bytes = a.bytes + b.bytes, .gemm_flops = a.gemm_flops + b.gemm_flops,
            .core_flops = a.core_flops + b.core_flops, .activation_bytes = a.activation_bytes + b.activation_bytes,
            .elementwise_bytes = a.elementwise_bytes + b.elementwise_bytes,
            .elementwise_launches = a.elementwise_launches + b.elementwise_launches};
  }
  friend KernelCost operator-(const KernelCost& a, const KernelCost& b) {
    return {.flops = a.flops - b.flops, .bytes = a.bytes - b.bytes, .gemm_flops = a.gemm_flops - b.gemm_flops,
            .core_flops = a.core_flops - b.core_flops, .activation_bytes = a.activation_bytes - b.activation_bytes,
            .elementwise_bytes = a.elementwise_bytes - b.elementwise_bytes,
            .elementwise_launches = a.elementwise_launches - b.elementwise_launches};
  }
  friend KernelCost operator*(std::int64_t n, const KernelCost& a) {
    return {.flops = n * a.flops, .bytes = n * a.bytes, .gemm_flops = n * a.gemm_flops, .core_flops = n * a.core_flops,
            .activation_bytes = n * a.activation_bytes, .elementwise_bytes = n * a.elementwise_bytes,
            .elementwise_launches = n * a.elementwise_launches};
  }
};

class Roofline {
 public:
  Roofline(const topology::GpuSpec& gpu, const RooflineSpec& spec);
  sim::Time time(const KernelCost& cost) const;
  sim::FlopRate achievable_flops() const { return flops_; }
  sim::Bandwidth achievable_bandwidth() const { return bandwidth_; }

 private:
  sim::FlopRate flops_, gemm_flops_;  // gemm_flops_: zero unless FP8 or FP4 GEMMs
  sim::FlopRate core_flops_;         // zero unless compute.attention_efficiency
  sim::Bandwidth bandwidth_;
  sim::Time overhead_;
  bool elementwise_kernels_;
};

}  // namespace moesim::models
