// Checks the GPU layer against the float64 reference before anything is timed.
#pragma once

#include <cstdint>
#include <string>

#include "reference.hpp"

namespace moe {

struct CheckResult {
  double logits_error = 0;     // router logits vs float64, relative to the largest
  int routing_mismatches = 0;  // tokens whose top-k differs from the top-k of the GPU's own logits
  double output_error = 0;     // layer output vs float64 on the GPU's routing
  int tokens = 0, reference_tokens = 0;
  bool ok = false;
  std::string describe() const;
};

// Error bounds for bf16 storage with fp32 accumulation (unit roundoff 2^-8 = 0.0039): logits
// (one GEMM from bf16 inputs) within 1e-2 of the largest, outputs (two GEMMs, a bf16 activation
// and the combine) within 2e-2; top-k choices may differ only on near-ties, at most 1 % of tokens.
inline constexpr double kLogitsBound = 1e-2, kOutputBound = 2e-2, kRoutingMismatchBound = 0.01;

// The backward pass against the reference's backward(): the gradients of the tokens and of the
// router, gate/up and down weights, each relative to its largest value, on the router's own
// routing. bf16 storage of the row gradients (dy, d act, d h1) and of the logits' gradient, with
// fp32 accumulation: within 5e-2 (a wrong index or transpose gives errors of order 1).
struct BackwardCheck {
  double x = 0, router = 0, gate_up = 0, down = 0;
  int tokens = 0, dropped = 0;
  bool ok = false;
  std::string describe() const;
};
inline constexpr double kGradientBound = 5e-2;
BackwardCheck check_backward(const Config& c, int tokens, std::uint64_t seed);

// Runs the layer on `tokens` random tokens (the router's own routing, then once more with a
// generated routing through capacity and drops) and compares the first `reference_tokens`
// tokens' outputs with the reference. Throws CudaError on CUDA failures.
CheckResult check_layer(const Config& c, int tokens, int reference_tokens, std::uint64_t seed);

}  // namespace moe
