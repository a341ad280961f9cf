// The MoE layer on the GPU, bf16 with fp32 accumulation; the function is defined in
// reference.hpp. Each stage is its own call so that it can be timed alone:
//   router   logits = x Wr (cuBLAS GEMM, fp32 out), then one warp per token: softmax or
//            sigmoid scores, group limit, top-k by score + bias, renormalised gates;
//   permute  a stable radix sort of the T k assignments by expert (CUB) keeps position order
//            inside each expert, so capacity drops the latest assignments; per-expert counts,
//            kept counts min(count, C), their prefix sums, and a scatter of the kept token rows
//            into expert-contiguous order;
//   experts  SwiGLU per expert as two GEMMs per active expert over its variable row count
//            (x_e Wgu_e, then act_e Wdown_e) around one activation kernel over all rows, either
//            as grouped GEMMs (cublasGemmGroupedBatchedEx) or as a loop of cublasGemmEx calls;
//            `automatic` (the default) times both once per size class (rows and active experts,
//            each to a power of two) and keeps the faster, as GEMM libraries autotune; the row
//            counts are read back to the host for the GEMM descriptors;
//   combine  one block per token: the gate-weighted sum of its kept assignments' rows.
// forward() runs the four in order on the layer's stream.
//
// The backward pass (training), after a forward pass whose activations it reads, the stages in
// reverse, each its own call (the gradients as the float64 reference's backward() defines them):
//   combine_backward  one block per token: each kept row's gradient dy = gate x dout[t] and its
//                     gate's gradient y . dout[t];
//   experts_backward  per active expert, d act = dy Wd^T and dWd = act^T dy, the SwiGLU backward
//                     over all rows, d xperm = d h1 Wgu^T and dWgu = xperm^T d h1: four GEMMs (two
//                     of them over the rows: weight gradients), grouped or a loop as forward;
//   permute_backward  one block per token: the sum of its kept rows' gradients, into dx;
//   router_backward   one warp per token: the logits' gradient through the gates' renormalisation
//                     and scoring; then dx += dlogits Wr^T and dWr = x^T dlogits (cuBLAS).
// Weight gradients are bf16 (fp32 accumulation; the router's fp32), written for the experts with
// rows (zero_weight_gradients() clears them all, for checks): as plain PyTorch autograd keeps
// them. Megatron-LM's gradient-accumulation fusion adds them into fp32 main gradients instead
// (4-byte read and write per weight: more bytes where few rows make the stage weight-bound),
// which for DeepSeek-V3's 256 experts on one GPU would not fit in 80 GB beside the weights.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gemm_plan.hpp"
#include "reference.hpp"

namespace moe {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void check(cudaError_t e, const char* what);
void check(cublasStatus_t s, const char* what);

enum class ExpertGemm { automatic, grouped, loop };
const char* name(ExpertGemm g);

// The host weights a Layer copies to the device: all of a Weights, or any arrays of the sizes
// its Config asks for, such as the first experts of a larger layer's weights (the profiler's
// layers of a few local experts, which then need no host copy of their own).
template <class T>
struct HostArray {
  const T* data = nullptr;
  std::size_t size = 0;
};
struct WeightsView {
  HostArray<bf16_bits> router;   // H x E
  HostArray<float> bias;         // E
  HostArray<bf16_bits> gate_up;  // E x (H x 2F)
  HostArray<bf16_bits> down;     // E x (F x H)
  WeightsView() = default;
  WeightsView(const Weights& w)  // NOLINT: a Weights passes as the view of all of it
      : router{w.router.data(), w.router.size()},
        bias{w.bias.data(), w.bias.size()},
        gate_up{w.gate_up.data(), w.gate_up.size()},
        down{w.down.data(), w.down.size()} {}
};

class Layer {
 public:
  // Throws std::invalid_argument when a weight array is not the size `c` asks for.
  Layer(const Config& c, const WeightsView& w, int max_tokens, cudaStream_t stream = nullptr);
  ~Layer();
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  // x: T x H bf16 on the device (at most max_tokens rows); out: T x H bf16 on the device.
  void forward(const __nv_bfloat16* x, int tokens, __nv_bfloat16* out);
  void router(const __nv_bfloat16* x, int tokens);
  // Replaces the router's choice (profiling given distributions): T x k experts and gates.
  void set_routing(const std::vector<int>& experts, const std::vector<float>& gates, int tokens);
  // From now on the router still runs (and is timed) but its choice is replaced by this one
  // (held out routings for whole-layer timings); clear_forced_routing() undoes it.
  void force_routing(const std::vector<int>& experts, const std::vector<float>& gates, int tokens);
  void clear_forced_routing() { forced_tokens_ = -1; }
  void permute(const __nv_bfloat16* x, int tokens);
  void experts();
  void set_expert_gemm(ExpertGemm g) { gemm_ = g; }
  ExpertGemm last_expert_gemm() const { return last_gemm_; }
  void combine(__nv_bfloat16* out, int tokens);

  // The backward pass: dout (T x H, the gradient at the layer's output) to dx (T x H), and the
  // weight gradients; needs the backward buffers (allocated on first use).
  void backward(const __nv_bfloat16* x, const __nv_bfloat16* dout, int tokens, __nv_bfloat16* dx);
  void combine_backward(const __nv_bfloat16* dout, int tokens);
  void experts_backward();
  void permute_backward(int tokens, __nv_bfloat16* dx);
  void router_backward(const __nv_bfloat16* x, int tokens, __nv_bfloat16* dx);
  void zero_weight_gradients();
  // The weight gradients, copied to the host: router (H x E), gate/up (E x H x 2F), down (E x F x H).
  std::vector<float> router_gradient() const;
  std::vector<float> gate_up_gradient() const;
  std::vector<float> down_gradient() const;

  // The last routing, copied to the host (experts and gates T x k, per-expert counts).
  Routing routing(int tokens) const;
  std::vector<float> logits(int tokens) const;  // T x E, fp32
  const Config& config() const { return c_; }
  cudaStream_t stream() const { return stream_; }

 private:
  Config c_;
  int max_tokens_;
  cudaStream_t stream_;
  cublasHandle_t blas_ = nullptr;
  int capacity_ = -1;
  // Weights.
  __nv_bfloat16 *router_w_ = nullptr, *gate_up_ = nullptr, *down_ = nullptr;
  float* bias_ = nullptr;
  // Per forward.
  float* logits_ = nullptr;               // T x E
  int* topk_ = nullptr;                   // T x k experts
  float* gates_ = nullptr;                // T x k
  int *keys_in_ = nullptr, *keys_out_ = nullptr, *vals_in_ = nullptr, *vals_out_ = nullptr;  // sort
  void* sort_tmp_ = nullptr;
  std::size_t sort_tmp_bytes_ = 0;
  int *counts_ = nullptr, *offsets_ = nullptr, *kept_offsets_ = nullptr;  // E (+1)
  int* row_of_ = nullptr;                 // T x k: row in the permuted buffer, -1 dropped
  __nv_bfloat16 *xperm_ = nullptr, *h1_ = nullptr, *act_ = nullptr, *y_ = nullptr;  // rows x ...
  std::vector<int> kept_host_;            // E kept rows, read back for the GEMM descriptors
  int *forced_topk_ = nullptr, forced_tokens_ = -1;
  float* forced_gates_ = nullptr;
  // Grouped GEMM descriptors: 6 E pointers (A, B, C of both GEMMs), written to pinned host
  // memory and copied in one transfer; desc_done_ marks the copy done before the host rewrites.
  void** desc_host_ = nullptr;
  void** desc_dev_ = nullptr;
  cudaEvent_t desc_done_ = nullptr;
  ExpertGemm gemm_ = ExpertGemm::automatic, last_gemm_ = ExpertGemm::grouped;
  std::map<std::pair<int, int>, ExpertGemm> tuned_;  // (log2 rows, log2 active experts) -> faster
  void run_experts(ExpertGemm g);
  // Backward: row gradients (dy, d act, d h1, d xperm), gates' and logits' gradients, weight
  // gradients; 12 E grouped-GEMM pointers (A, B, C of four GEMMs).
  __nv_bfloat16 *dy_ = nullptr, *dact_ = nullptr, *dh1_ = nullptr, *dxperm_ = nullptr, *dlogits_ = nullptr;
  float* dgates_ = nullptr;
  __nv_bfloat16 *dgate_up_ = nullptr, *ddown_ = nullptr;
  float* drouter_ = nullptr;
  void** desc_bwd_host_ = nullptr;
  void** desc_bwd_dev_ = nullptr;
  cudaEvent_t desc_bwd_done_ = nullptr;
  std::map<std::pair<int, int>, ExpertGemm> tuned_backward_;
  void allocate_backward();
  void run_experts_backward(ExpertGemm g);
  __nv_bfloat16* operand(Operand o) const;  // an operand of gemm_plan.hpp's GEMMs
  // Which choice serves this size class of the last permute: the mode set, or with automatic
  // the faster of the two, timed once per class with `run`.
  ExpertGemm choose(std::map<std::pair<int, int>, ExpertGemm>& tuned, void (Layer::*run)(ExpertGemm));
};

// The number of SMs, clocks and names of the current device, for profile headers.
struct DeviceInfo {
  std::string name;
  int sm_count = 0, sm_clock_mhz = 0, memory_clock_mhz = 0, runtime = 0, driver = 0;
};
DeviceInfo device_info();

}  // namespace moe
