#include "moe_layer.cuh"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace moe {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CudaError(std::string(what) + ": " + cudaGetErrorString(e));
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw CudaError(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s)));
}

namespace {

constexpr int kMaxTopK = 16;
constexpr int kMaxGroups = 64;

template <class T>
T* device_alloc(std::size_t n, const char* what) {
  void* p = nullptr;
  check(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(T)), what);
  return static_cast<T*>(p);
}

template <class T, class U>
T* device_copy(const HostArray<U>& host, const char* what) {
  static_assert(sizeof(T) == sizeof(U), "same element size");
  T* p = device_alloc<T>(host.size, what);
  check(cudaMemcpy(p, host.data, host.size * sizeof(U), cudaMemcpyHostToDevice), what);
  return p;
}

constexpr int kMaxExperts = 1024;
constexpr int kRouterWarps = 4;  // tokens per block of the top-k kernel

// The larger (value, then the lower index on ties) across the warp; every lane gets it.
__device__ void warp_argmax(float& value, int& index) {
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, value, o);
    const int i = __shfl_xor_sync(0xffffffffu, index, o);
    if (v > value || (v == value && i < index)) value = v, index = i;
  }
}

// One warp per token: scores, group limit, top-k by score + bias (ties: the lower id, as the
// reference's stable sort), renormalised gates. Each warp keeps its token's scores and
// selection scores in shared memory (2 E floats).
__global__ void topk_kernel(const float* logits, const float* bias, int tokens, int experts, int k, int softmax,
                            int groups, int max_groups, int* topk, float* gates) {
  extern __shared__ float shared[];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int t = static_cast<int>(blockIdx.x) * kRouterWarps + warp;
  if (t >= tokens) return;  // the whole warp: t is the same for its lanes
  float* score = shared + static_cast<std::size_t>(warp) * 2 * experts;
  float* sel = score + experts;
  const float* l = logits + static_cast<std::size_t>(t) * experts;
  float m = -INFINITY, sum = 0;
  if (softmax) {
    for (int j = lane; j < experts; j += 32) m = fmaxf(m, l[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    for (int j = lane; j < experts; j += 32) sum += expf(l[j] - m);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  for (int j = lane; j < experts; j += 32) {
    const float s = softmax ? expf(l[j] - m) / sum : 1.0f / (1.0f + expf(-l[j]));
    score[j] = s;
    sel[j] = s + bias[j];
  }
  __syncwarp();
  // Eligible groups (bit g), all when there is no group limit. Lane g scores groups g and g + 32.
  unsigned long long eligible = ~0ULL;
  const int size = groups > 1 ? experts / groups : experts;
  if (max_groups > 0 && groups > 1) {
    float gs[2] = {-INFINITY, -INFINITY};
    for (int h = 0; h < 2; ++h) {
      const int g = lane + 32 * h;
      if (g >= groups) continue;
      float a = -INFINITY, b = -INFINITY;
      for (int j = g * size; j < (g + 1) * size; ++j) {
        const float s = sel[j];
        if (s > a) b = a, a = s;
        else if (s > b) b = s;
      }
      gs[h] = size > 1 ? a + b : a;
    }
    eligible = 0;
    for (int i = 0; i < max_groups; ++i) {
      float best = -INFINITY;
      int id = 1 << 30;
      for (int h = 0; h < 2; ++h) {
        const int g = lane + 32 * h;
        if (g < groups && !((eligible >> g) & 1ULL) && (gs[h] > best || id == 1 << 30)) best = gs[h], id = g;
      }
      warp_argmax(best, id);
      eligible |= 1ULL << id;
    }
  }
  // Top-k: k rounds of a warp-wide argmax over the eligible experts not yet taken.
  float total = 0;
  for (int i = 0; i < k; ++i) {
    float best = -INFINITY;
    int id = 1 << 30;
    for (int j = lane; j < experts; j += 32) {
      if (groups > 1 && !((eligible >> (j / size)) & 1ULL)) continue;
      const float s = sel[j];
      if (s != -INFINITY && (s > best || id == 1 << 30)) best = s, id = j;
    }
    warp_argmax(best, id);
    total += score[id];
    if (lane == 0) {
      topk[static_cast<std::size_t>(t) * k + i] = id;
      sel[id] = -INFINITY;  // taken
    }
    __syncwarp();
  }
  for (int i = lane; i < k; i += 32) {
    const int id = topk[static_cast<std::size_t>(t) * k + i];
    gates[static_cast<std::size_t>(t) * k + i] = score[id] / total;
  }
}

// A forced routing over the router's choice: one small launch for both arrays.
__global__ void copy_routing_kernel(const int* experts, const float* gates, int assignments, int* topk, float* out_gates) {
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= assignments) return;
  topk[a] = experts[a];
  out_gates[a] = gates[a];
}

__global__ void keys_kernel(const int* topk, int assignments, int* keys, int* vals, int* counts) {
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= assignments) return;
  keys[a] = topk[a];
  vals[a] = a;
  atomicAdd(&counts[topk[a]], 1);
}

// Offsets of every expert's assignments in sorted order, and of its kept rows (at most
// `capacity`, all when capacity < 0). E is small: one thread.
__global__ void offsets_kernel(const int* counts, int experts, int capacity, int* offsets, int* kept_offsets, int* kept) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int o = 0, ko = 0;
  for (int e = 0; e < experts; ++e) {
    offsets[e] = o;
    kept_offsets[e] = ko;
    const int n = counts[e];
    kept[e] = capacity < 0 ? n : min(n, capacity);
    o += n;
    ko += kept[e];
  }
  offsets[experts] = o;
  kept_offsets[experts] = ko;
}

// One warp per sorted assignment: its rank inside its expert decides keep or drop; a kept one
// copies its token's row into the expert's block of the permuted buffer (16 bytes per lane).
__global__ void scatter_kernel(const int* keys, const int* vals, int assignments, int k, int hidden, int capacity,
                               const int* offsets, const int* kept_offsets, const __nv_bfloat16* x, int* row_of,
                               __nv_bfloat16* xperm) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= assignments) return;
  const int e = keys[warp], a = vals[warp];
  const int rank = warp - offsets[e];
  const bool keep = capacity < 0 || rank < capacity;
  const int row = keep ? kept_offsets[e] + rank : -1;
  if (lane == 0) row_of[a] = row;
  if (!keep) return;
  const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<std::size_t>(a / k) * hidden);
  uint4* dst = reinterpret_cast<uint4*>(xperm + static_cast<std::size_t>(row) * hidden);
  for (int i = lane; i < hidden / 8; i += 32) dst[i] = src[i];
}

__global__ void swiglu_kernel(const __nv_bfloat16* h1, int rows, int ffn, __nv_bfloat16* act) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<std::size_t>(rows) * ffn) return;
  const std::size_t r = i / ffn, j = i % ffn;
  const float g = __bfloat162float(h1[r * 2 * ffn + j]), u = __bfloat162float(h1[r * 2 * ffn + ffn + j]);
  act[i] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
}

__global__ void combine_kernel(const __nv_bfloat16* y, const int* row_of, const float* gates, int k, int hidden,
                               __nv_bfloat16* out) {
  const int t = blockIdx.x;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0;
    for (int j = 0; j < k; ++j) {
      const int row = row_of[t * k + j];
      if (row >= 0) acc += gates[t * k + j] * __bfloat162float(y[static_cast<std::size_t>(row) * hidden + h]);
    }
    out[static_cast<std::size_t>(t) * hidden + h] = __float2bfloat16(acc);
  }
}

// Backward kernels.

// One block per token: for each of its k assignments, the kept row's gradient dy = gate x
// dout[t] and the gate's gradient y . dout[t] (0 for a dropped assignment, which has no y).
__global__ void combine_backward_kernel(const __nv_bfloat16* y, const __nv_bfloat16* dout, const int* row_of,
                                        const float* gates, int k, int hidden, __nv_bfloat16* dy, float* dgates) {
  __shared__ float partial[32];
  const int t = blockIdx.x;
  const __nv_bfloat16* go = dout + static_cast<std::size_t>(t) * hidden;
  for (int j = 0; j < k; ++j) {
    const int row = row_of[t * k + j];  // the same for the whole block
    float acc = 0;
    if (row >= 0) {
      const float g = gates[t * k + j];
      for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
        const float d = __bfloat162float(go[h]);
        dy[static_cast<std::size_t>(row) * hidden + h] = __float2bfloat16(g * d);
        acc += __bfloat162float(y[static_cast<std::size_t>(row) * hidden + h]) * d;
      }
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      float sum = 0;
      for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) sum += partial[w];
      dgates[t * k + j] = sum;
    }
    __syncthreads();
  }
}

// act = silu(gate) * up: d gate = d act * up * silu'(gate), d up = d act * silu(gate), with
// silu'(z) = sigma(z) (1 + z (1 - sigma(z))).
__global__ void swiglu_backward_kernel(const __nv_bfloat16* h1, const __nv_bfloat16* dact, int rows, int ffn,
                                       __nv_bfloat16* dh1) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<std::size_t>(rows) * ffn) return;
  const std::size_t r = i / ffn, j = i % ffn;
  const float g = __bfloat162float(h1[r * 2 * ffn + j]), u = __bfloat162float(h1[r * 2 * ffn + ffn + j]);
  const float da = __bfloat162float(dact[i]), s = 1.0f / (1.0f + expf(-g));
  dh1[r * 2 * ffn + j] = __float2bfloat16(da * u * s * (1.0f + g * (1.0f - s)));
  dh1[r * 2 * ffn + ffn + j] = __float2bfloat16(da * g * s);
}

// One block per token: the sum of its kept rows' gradients (the scatter's gradient).
__global__ void permute_backward_kernel(const __nv_bfloat16* dxperm, const int* row_of, int k, int hidden,
                                        __nv_bfloat16* dx) {
  const int t = blockIdx.x;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0;
    for (int j = 0; j < k; ++j) {
      const int row = row_of[t * k + j];
      if (row >= 0) acc += __bfloat162float(dxperm[static_cast<std::size_t>(row) * hidden + h]);
    }
    dx[static_cast<std::size_t>(t) * hidden + h] = __float2bfloat16(acc);
  }
}

// One warp per token: the logits' gradient, zero but for the k chosen experts, through the gates'
// renormalisation g_j = s_j / sum_i s_i over the chosen: softmax (the gates are a softmax over the
// chosen logits) dl_j = g_j (dg_j - sum_i g_i dg_i); sigmoid dl_j = (dg_j - sum_i g_i dg_i) /
// sum_i s_i x s_j (1 - s_j).
__global__ void router_backward_kernel(const float* logits, const int* topk, const float* gates, const float* dgates,
                                       int tokens, int experts, int k, int softmax, __nv_bfloat16* dlogits) {
  const int t = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (t >= tokens) return;  // the whole warp
  __nv_bfloat16* dl = dlogits + static_cast<std::size_t>(t) * experts;
  for (int j = lane; j < experts; j += 32) dl[j] = __float2bfloat16(0.0f);
  __syncwarp();
  if (lane != 0) return;
  const std::size_t a = static_cast<std::size_t>(t) * k;
  float mean = 0, sum = 0;
  for (int j = 0; j < k; ++j) {
    mean += gates[a + j] * dgates[a + j];
    if (!softmax) sum += 1.0f / (1.0f + expf(-logits[static_cast<std::size_t>(t) * experts + topk[a + j]]));
  }
  for (int j = 0; j < k; ++j) {
    const int e = topk[a + j];
    float d = dgates[a + j] - mean;
    if (softmax) {
      d *= gates[a + j];
    } else {
      const float s = 1.0f / (1.0f + expf(-logits[static_cast<std::size_t>(t) * experts + e]));
      d = d / sum * s * (1.0f - s);
    }
    dl[e] = __float2bfloat16(d);
  }
}

int blocks(std::size_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

}  // namespace

Layer::Layer(const Config& c, const WeightsView& w, int max_tokens, cudaStream_t stream)
    : c_(c), max_tokens_(max_tokens), stream_(stream) {
  if (c.top_k > kMaxTopK) throw std::invalid_argument("top_k above " + std::to_string(kMaxTopK));
  if (c.groups > kMaxGroups) throw std::invalid_argument("more than 64 expert groups");
  if (c.experts > kMaxExperts) throw std::invalid_argument("more than " + std::to_string(kMaxExperts) + " experts");
  if (c.hidden % 8 != 0) throw std::invalid_argument("hidden must be a multiple of 8");
  if (c.top_k > c.experts) throw std::invalid_argument("top_k larger than the expert count");
  if (c.max_groups > 0 && c.groups > 1 && (c.experts % c.groups != 0 || c.max_groups * (c.experts / c.groups) < c.top_k))
    throw std::invalid_argument("groups must divide the experts, and max_groups groups hold at least top_k experts");
  {
    const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
    const auto e = static_cast<std::size_t>(c.experts);
    const auto sized = [](std::size_t got, std::size_t want, const char* what) {
      if (got != want)
        throw std::invalid_argument(std::string(what) + ": " + std::to_string(got) + " elements, the shape needs " +
                                    std::to_string(want));
    };
    sized(w.router.size, h * e, "router weights");
    sized(w.bias.size, e, "router bias");
    sized(w.gate_up.size, e * h * 2 * f, "gate/up weights");
    sized(w.down.size, e * f * h, "down weights");
  }
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  router_w_ = device_copy<__nv_bfloat16>(w.router, "router weights");
  gate_up_ = device_copy<__nv_bfloat16>(w.gate_up, "gate/up weights");
  down_ = device_copy<__nv_bfloat16>(w.down, "down weights");
  bias_ = device_copy<float>(w.bias, "router bias");
  const auto t = static_cast<std::size_t>(max_tokens), e = static_cast<std::size_t>(c.experts);
  const std::size_t a = t * static_cast<std::size_t>(c.top_k);
  const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
  logits_ = device_alloc<float>(t * e, "logits");
  topk_ = device_alloc<int>(a, "top-k");
  gates_ = device_alloc<float>(a, "gates");
  keys_in_ = device_alloc<int>(a, "sort keys");
  keys_out_ = device_alloc<int>(a, "sort keys");
  vals_in_ = device_alloc<int>(a, "sort values");
  vals_out_ = device_alloc<int>(a, "sort values");
  check(cub::DeviceRadixSort::SortPairs(nullptr, sort_tmp_bytes_, keys_in_, keys_out_, vals_in_, vals_out_,
                                        static_cast<int>(a), 0, 32, stream_),
        "radix sort size");
  sort_tmp_ = device_alloc<char>(sort_tmp_bytes_, "sort scratch");
  counts_ = device_alloc<int>(e + 1, "counts");
  offsets_ = device_alloc<int>(e + 1, "offsets");
  kept_offsets_ = device_alloc<int>(e + 1, "kept offsets");
  row_of_ = device_alloc<int>(a, "rows");
  xperm_ = device_alloc<__nv_bfloat16>(a * h, "permuted tokens");
  h1_ = device_alloc<__nv_bfloat16>(a * 2 * f, "gate/up output");
  act_ = device_alloc<__nv_bfloat16>(a * f, "activation");
  y_ = device_alloc<__nv_bfloat16>(a * h, "expert output");
  forced_topk_ = device_alloc<int>(a, "forced routing");
  forced_gates_ = device_alloc<float>(a, "forced gates");
  desc_dev_ = device_alloc<void*>(6 * e, "GEMM descriptors");
  check(cudaMallocHost(reinterpret_cast<void**>(&desc_host_), 6 * e * sizeof(void*)), "GEMM descriptors");
  check(cudaEventCreateWithFlags(&desc_done_, cudaEventDisableTiming), "descriptor event");
}

Layer::~Layer() {
  for (void* p : std::initializer_list<void*>{router_w_, gate_up_, down_, bias_, logits_, topk_, gates_, keys_in_, keys_out_,
                                              vals_in_, vals_out_, sort_tmp_, counts_, offsets_, kept_offsets_, row_of_,
                                              xperm_, h1_, act_, y_, forced_topk_, forced_gates_, desc_dev_})
    cudaFree(p);
  for (void* p : std::initializer_list<void*>{dy_, dact_, dh1_, dxperm_, dlogits_, dgates_, dgate_up_, ddown_, drouter_,
                                              desc_bwd_dev_})
    cudaFree(p);
  if (desc_host_) cudaFreeHost(desc_host_);
  if (desc_bwd_host_) cudaFreeHost(desc_bwd_host_);
  if (desc_done_) cudaEventDestroy(desc_done_);
  if (desc_bwd_done_) cudaEventDestroy(desc_bwd_done_);
  if (blas_) cublasDestroy(blas_);
}

void Layer::router(const __nv_bfloat16* x, int tokens) {
  if (tokens > max_tokens_) throw std::invalid_argument("more tokens than the layer was made for");
  const float one = 1, zero = 0;
  // Row-major logits (T x E) = x (T x H) Wr (H x E), as the column-major E x T = Wr^T-view x^T-view.
  check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_N, c_.experts, tokens, c_.hidden, &one, router_w_, CUDA_R_16BF,
                     c_.experts, x, CUDA_R_16BF, c_.hidden, &zero, logits_, CUDA_R_32F, c_.experts, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "router GEMM");
  topk_kernel<<<blocks(static_cast<std::size_t>(tokens), kRouterWarps), 32 * kRouterWarps,
                kRouterWarps * 2 * static_cast<std::size_t>(c_.experts) * sizeof(float), stream_>>>(
      logits_, bias_, tokens, c_.experts, c_.top_k, c_.scoring == Scoring::softmax ? 1 : 0, c_.groups, c_.max_groups,
      topk_, gates_);
  check(cudaGetLastError(), "top-k kernel");
  if (forced_tokens_ == tokens) {
    const std::size_t a = static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c_.top_k);
    copy_routing_kernel<<<blocks(a, 256), 256, 0, stream_>>>(forced_topk_, forced_gates_, static_cast<int>(a), topk_, gates_);
    check(cudaGetLastError(), "forced routing");
  }
}

void Layer::force_routing(const std::vector<int>& experts, const std::vector<float>& gates, int tokens) {
  const std::size_t a = static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c_.top_k);
  if (tokens > max_tokens_ || experts.size() != a || gates.size() != a) throw std::invalid_argument("forced routing of another size");
  check(cudaMemcpy(forced_topk_, experts.data(), a * sizeof(int), cudaMemcpyHostToDevice), "forced routing");
  check(cudaMemcpy(forced_gates_, gates.data(), a * sizeof(float), cudaMemcpyHostToDevice), "forced gates");
  forced_tokens_ = tokens;
}

void Layer::set_routing(const std::vector<int>& experts, const std::vector<float>& gates, int tokens) {
  const std::size_t a = static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c_.top_k);
  if (experts.size() != a || gates.size() != a) throw std::invalid_argument("routing of another size");
  check(cudaMemcpyAsync(topk_, experts.data(), a * sizeof(int), cudaMemcpyHostToDevice, stream_), "routing");
  check(cudaMemcpyAsync(gates_, gates.data(), a * sizeof(float), cudaMemcpyHostToDevice, stream_), "gates");
  check(cudaStreamSynchronize(stream_), "routing");
}

void Layer::permute(const __nv_bfloat16* x, int tokens) {
  const int a = tokens * c_.top_k;
  capacity_ = capacity(c_, tokens);
  check(cudaMemsetAsync(counts_, 0, static_cast<std::size_t>(c_.experts + 1) * sizeof(int), stream_), "counts");
  keys_kernel<<<blocks(static_cast<std::size_t>(a), 256), 256, 0, stream_>>>(topk_, a, keys_in_, vals_in_, counts_);
  check(cudaGetLastError(), "keys kernel");
  int bits = 1;
  while ((1 << bits) < c_.experts) ++bits;
  std::size_t bytes = sort_tmp_bytes_;
  check(cub::DeviceRadixSort::SortPairs(sort_tmp_, bytes, keys_in_, keys_out_, vals_in_, vals_out_, a, 0, bits, stream_),
        "radix sort");
  // The kept row counts go into keys_in_, free once the sort has read it.
  offsets_kernel<<<1, 1, 0, stream_>>>(counts_, c_.experts, capacity_, offsets_, kept_offsets_, keys_in_);
  check(cudaGetLastError(), "offsets kernel");
  scatter_kernel<<<blocks(static_cast<std::size_t>(a) * 32, 256), 256, 0, stream_>>>(
      keys_out_, vals_out_, a, c_.top_k, c_.hidden, capacity_, offsets_, kept_offsets_, x, row_of_, xperm_);
  check(cudaGetLastError(), "scatter kernel");
  // The kept row counts, for the grouped GEMMs' descriptors (cuBLAS takes them on the host).
  kept_host_.resize(static_cast<std::size_t>(c_.experts));
  check(cudaMemcpyAsync(kept_host_.data(), keys_in_, kept_host_.size() * sizeof(int), cudaMemcpyDeviceToHost, stream_),
        "kept counts");
  check(cudaStreamSynchronize(stream_), "permute");
}

const char* name(ExpertGemm g) {
  return g == ExpertGemm::grouped ? "grouped" : g == ExpertGemm::loop ? "loop" : "automatic";
}

void Layer::experts() {
  int active = 0;
  for (const int n : kept_host_) active += n > 0;
  if (active == 0) return;
  run_experts(choose(tuned_, &Layer::run_experts));
}

ExpertGemm Layer::choose(std::map<std::pair<int, int>, ExpertGemm>& tuned, void (Layer::*run)(ExpertGemm)) {
  if (gemm_ != ExpertGemm::automatic) return gemm_;
  int active = 0, rows = 0;
  for (const int n : kept_host_) active += n > 0, rows += n;
  const auto log2 = [](int v) {
    int b = 0;
    while ((1 << (b + 1)) <= v) ++b;
    return b;
  };
  const std::pair<int, int> key{log2(rows), log2(active)};
  const auto it = tuned.find(key);
  if (it != tuned.end()) return it->second;
  // Time both once this size class is first seen (after one untimed run of each), keep the faster.
  ExpertGemm g = ExpertGemm::grouped;
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  float best = 0;
  for (const ExpertGemm candidate : {ExpertGemm::grouped, ExpertGemm::loop}) {
    (this->*run)(candidate);
    check(cudaEventRecord(a, stream_), "event");
    (this->*run)(candidate);
    (this->*run)(candidate);
    check(cudaEventRecord(b, stream_), "event");
    check(cudaEventSynchronize(b), "event");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "event");
    if (candidate == ExpertGemm::grouped || ms < best) best = ms, g = candidate;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  tuned[key] = g;
  return g;
}

void Layer::run_experts(ExpertGemm g) {
  last_gemm_ = g;
  const auto h = static_cast<std::size_t>(c_.hidden), f = static_cast<std::size_t>(c_.ffn);
  const float one = 1, zero = 0;
  std::size_t row = 0;
  if (g == ExpertGemm::loop) {
    // x_e (rows x H) Wgu_e (H x 2F) -> rows x 2F, as column-major (2F x rows) = Wgu_e-view x_e-view.
    for (int e = 0; e < c_.experts; ++e) {
      const int rows = kept_host_[static_cast<std::size_t>(e)];
      if (rows > 0)
        check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_N, 2 * c_.ffn, rows, c_.hidden, &one,
                           gate_up_ + static_cast<std::size_t>(e) * h * 2 * f, CUDA_R_16BF, 2 * c_.ffn, xperm_ + row * h,
                           CUDA_R_16BF, c_.hidden, &zero, h1_ + row * 2 * f, CUDA_R_16BF, 2 * c_.ffn, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT),
              "GEMM gate/up");
      row += static_cast<std::size_t>(rows);
    }
    swiglu_kernel<<<blocks(row * f, 256), 256, 0, stream_>>>(h1_, static_cast<int>(row), c_.ffn, act_);
    check(cudaGetLastError(), "SwiGLU kernel");
    row = 0;
    for (int e = 0; e < c_.experts; ++e) {
      const int rows = kept_host_[static_cast<std::size_t>(e)];
      if (rows > 0)
        check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_N, c_.hidden, rows, c_.ffn, &one,
                           down_ + static_cast<std::size_t>(e) * f * h, CUDA_R_16BF, c_.hidden, act_ + row * f,
                           CUDA_R_16BF, c_.ffn, &zero, y_ + row * h, CUDA_R_16BF, c_.hidden, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT),
              "GEMM down");
      row += static_cast<std::size_t>(rows);
    }
    return;
  }
  std::vector<cublasOperation_t> op;
  std::vector<int> m1, n, k1, m2, k2, size;
  std::vector<float> alpha, beta;
  // The previous call's descriptor copy must have left the pinned buffer before it is rewritten.
  check(cudaEventSynchronize(desc_done_), "descriptors");
  const auto ue = static_cast<std::size_t>(c_.experts);
  void** d = desc_host_;  // A1 B1 C1 A2 B2 C2, E pointers each, the first `groups` used
  int groups = 0;
  for (int e = 0; e < c_.experts; ++e) {
    const int rows = kept_host_[static_cast<std::size_t>(e)];
    if (rows > 0) {
      const auto i = static_cast<std::size_t>(groups++), xe = static_cast<std::size_t>(e);
      op.push_back(CUBLAS_OP_N);
      n.push_back(rows);
      size.push_back(1);
      alpha.push_back(1.0f);
      beta.push_back(0.0f);
      // x_e (rows x H) Wgu_e (H x 2F) -> rows x 2F; act_e (rows x F) Wdown_e (F x H) -> rows x H.
      m1.push_back(2 * c_.ffn), k1.push_back(c_.hidden);
      m2.push_back(c_.hidden), k2.push_back(c_.ffn);
      d[i] = gate_up_ + xe * h * 2 * f;
      d[ue + i] = xperm_ + row * h;
      d[2 * ue + i] = h1_ + row * 2 * f;
      d[3 * ue + i] = down_ + xe * f * h;
      d[4 * ue + i] = act_ + row * f;
      d[5 * ue + i] = y_ + row * h;
    }
    row += static_cast<std::size_t>(rows);
  }
  check(cudaMemcpyAsync(desc_dev_, desc_host_, 6 * ue * sizeof(void*), cudaMemcpyHostToDevice, stream_), "descriptors");
  check(cudaEventRecord(desc_done_, stream_), "descriptors");
  const std::vector<int> lda1(m1), ldb1(k1), lda2(m2), ldb2(k2);
  const auto ptr = [&](std::size_t part) { return desc_dev_ + part * ue; };
  check(cublasGemmGroupedBatchedEx(blas_, op.data(), op.data(), m1.data(), n.data(), k1.data(), alpha.data(),
                                   const_cast<const void**>(ptr(0)), CUDA_R_16BF, lda1.data(),
                                   const_cast<const void**>(ptr(1)), CUDA_R_16BF, ldb1.data(), beta.data(), ptr(2),
                                   CUDA_R_16BF, lda1.data(), groups, size.data(), CUBLAS_COMPUTE_32F),
        "grouped GEMM gate/up");
  swiglu_kernel<<<blocks(row * f, 256), 256, 0, stream_>>>(h1_, static_cast<int>(row), c_.ffn, act_);
  check(cudaGetLastError(), "SwiGLU kernel");
  check(cublasGemmGroupedBatchedEx(blas_, op.data(), op.data(), m2.data(), n.data(), k2.data(), alpha.data(),
                                   const_cast<const void**>(ptr(3)), CUDA_R_16BF, lda2.data(),
                                   const_cast<const void**>(ptr(4)), CUDA_R_16BF, ldb2.data(), beta.data(), ptr(5),
                                   CUDA_R_16BF, lda2.data(), groups, size.data(), CUBLAS_COMPUTE_32F),
        "grouped GEMM down");
}

void Layer::combine(__nv_bfloat16* out, int tokens) {
  combine_kernel<<<tokens, 256, 0, stream_>>>(y_, row_of_, gates_, c_.top_k, c_.hidden, out);
  check(cudaGetLastError(), "combine kernel");
}

void Layer::forward(const __nv_bfloat16* x, int tokens, __nv_bfloat16* out) {
  router(x, tokens);
  permute(x, tokens);
  experts();
  combine(out, tokens);
}

void Layer::allocate_backward() {
  if (dy_) return;
  const auto t = static_cast<std::size_t>(max_tokens_), e = static_cast<std::size_t>(c_.experts);
  const std::size_t a = t * static_cast<std::size_t>(c_.top_k);
  const auto h = static_cast<std::size_t>(c_.hidden), f = static_cast<std::size_t>(c_.ffn);
  dy_ = device_alloc<__nv_bfloat16>(a * h, "expert output gradient");
  dact_ = device_alloc<__nv_bfloat16>(a * f, "activation gradient");
  dh1_ = device_alloc<__nv_bfloat16>(a * 2 * f, "gate/up output gradient");
  dxperm_ = device_alloc<__nv_bfloat16>(a * h, "permuted token gradient");
  dgates_ = device_alloc<float>(a, "gate gradient");
  dlogits_ = device_alloc<__nv_bfloat16>(t * e, "logit gradient");
  dgate_up_ = device_alloc<__nv_bfloat16>(e * h * 2 * f, "gate/up weight gradient");
  ddown_ = device_alloc<__nv_bfloat16>(e * f * h, "down weight gradient");
  drouter_ = device_alloc<float>(h * e, "router weight gradient");
  desc_bwd_dev_ = device_alloc<void*>(12 * e, "backward GEMM descriptors");
  check(cudaMallocHost(reinterpret_cast<void**>(&desc_bwd_host_), 12 * e * sizeof(void*)), "backward GEMM descriptors");
  check(cudaEventCreateWithFlags(&desc_bwd_done_, cudaEventDisableTiming), "backward descriptor event");
  check(cudaEventRecord(desc_bwd_done_, stream_), "backward descriptor event");
}

void Layer::zero_weight_gradients() {
  allocate_backward();
  const auto e = static_cast<std::size_t>(c_.experts), h = static_cast<std::size_t>(c_.hidden),
             f = static_cast<std::size_t>(c_.ffn);
  check(cudaMemsetAsync(dgate_up_, 0, e * h * 2 * f * sizeof(__nv_bfloat16), stream_), "gradients");
  check(cudaMemsetAsync(ddown_, 0, e * f * h * sizeof(__nv_bfloat16), stream_), "gradients");
  check(cudaMemsetAsync(drouter_, 0, h * e * sizeof(float), stream_), "gradients");
}

void Layer::combine_backward(const __nv_bfloat16* dout, int tokens) {
  allocate_backward();
  combine_backward_kernel<<<tokens, 256, 0, stream_>>>(y_, dout, row_of_, gates_, c_.top_k, c_.hidden, dy_, dgates_);
  check(cudaGetLastError(), "combine backward kernel");
}

void Layer::experts_backward() {
  allocate_backward();
  int active = 0;
  for (const int n : kept_host_) active += n > 0;
  if (active == 0) return;
  run_experts_backward(choose(tuned_backward_, &Layer::run_experts_backward));
}

__nv_bfloat16* Layer::operand(Operand o) const {
  switch (o) {
    case Operand::gate_up: return gate_up_;
    case Operand::down: return down_;
    case Operand::xperm: return xperm_;
    case Operand::h1: return h1_;
    case Operand::act: return act_;
    case Operand::y: return y_;
    case Operand::dy: return dy_;
    case Operand::dact: return dact_;
    case Operand::dh1: return dh1_;
    case Operand::dxperm: return dxperm_;
    case Operand::dgate_up: return dgate_up_;
    case Operand::ddown: return ddown_;
    default: return nullptr;  // the router's operands are router_backward()'s own
  }
}

void Layer::run_experts_backward(ExpertGemm g) {
  last_gemm_ = g;
  const int H = c_.hidden, F = c_.ffn;
  const float one = 1, zero = 0;
  // The GEMMs of gemm_plan.hpp: the down projection's two, the SwiGLU's backward over all rows,
  // then the gate/up projection's two.
  using Step = std::array<GemmCall, 2> (*)(int, int, int);
  const Step steps[2] = {&experts_backward_down, &experts_backward_gate_up};
  const auto op = [](bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; };
  const auto swiglu = [&](std::size_t rows) {
    swiglu_backward_kernel<<<blocks(rows * static_cast<std::size_t>(F), 256), 256, 0, stream_>>>(h1_, dact_, static_cast<int>(rows),
                                                                                                   F, dh1_);
    check(cudaGetLastError(), "SwiGLU backward kernel");
  };
  std::size_t total = 0;
  for (const int n : kept_host_) total += static_cast<std::size_t>(n);
  if (g == ExpertGemm::loop) {
    for (int s = 0; s < 2; ++s) {
      if (s == 1) swiglu(total);
      std::size_t row = 0;
      for (int e = 0; e < c_.experts; ++e) {
        const int rows = kept_host_[static_cast<std::size_t>(e)];
        const auto xe = static_cast<std::size_t>(e);
        if (rows > 0)
          for (const GemmCall& c : steps[s](H, F, rows))
            check(cublasGemmEx(blas_, op(c.trans_a), op(c.trans_b), c.m, c.n, c.k, &one,
                               operand(c.a) + operand_offset(c.a, H, F, xe, row), CUDA_R_16BF, c.lda,
                               operand(c.b) + operand_offset(c.b, H, F, xe, row), CUDA_R_16BF, c.ldb, &zero,
                               operand(c.c) + operand_offset(c.c, H, F, xe, row), CUDA_R_16BF, c.ldc, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT),
                  c.what);
        row += static_cast<std::size_t>(rows);
      }
    }
    return;
  }
  // Grouped: a call per GEMM of the plan, a group per active expert. Descriptors: for step s,
  // call j, the A, B and C pointers of every group at parts 6 s + 3 j + 0, 1, 2 (E each),
  // written at once and copied in one transfer.
  check(cudaEventSynchronize(desc_bwd_done_), "backward descriptors");
  const auto ue = static_cast<std::size_t>(c_.experts);
  void** d = desc_bwd_host_;
  std::vector<int> rows_of;
  std::size_t row = 0;
  for (int e = 0; e < c_.experts; ++e) {
    const int rows = kept_host_[static_cast<std::size_t>(e)];
    const auto xe = static_cast<std::size_t>(e);
    if (rows > 0) {
      const std::size_t i = rows_of.size();
      rows_of.push_back(rows);
      for (int s = 0; s < 2; ++s) {
        const auto calls = steps[s](H, F, rows);
        for (std::size_t j = 0; j < calls.size(); ++j) {
          const GemmCall& c = calls[j];
          const std::size_t part = 6 * static_cast<std::size_t>(s) + 3 * j;
          d[part * ue + i] = operand(c.a) + operand_offset(c.a, H, F, xe, row);
          d[(part + 1) * ue + i] = operand(c.b) + operand_offset(c.b, H, F, xe, row);
          d[(part + 2) * ue + i] = operand(c.c) + operand_offset(c.c, H, F, xe, row);
        }
      }
    }
    row += static_cast<std::size_t>(rows);
  }
  const int groups = static_cast<int>(rows_of.size());
  check(cudaMemcpyAsync(desc_bwd_dev_, desc_bwd_host_, 12 * ue * sizeof(void*), cudaMemcpyHostToDevice, stream_),
        "backward descriptors");
  check(cudaEventRecord(desc_bwd_done_, stream_), "backward descriptors");
  const auto n_groups = rows_of.size();
  std::vector<int> size(n_groups, 1), m(n_groups), n(n_groups), k(n_groups), lda(n_groups), ldb(n_groups), ldc(n_groups);
  std::vector<float> alpha(n_groups, 1.0f), beta(n_groups, 0.0f);
  std::vector<cublasOperation_t> ta(n_groups), tb(n_groups);
  for (int s = 0; s < 2; ++s) {
    if (s == 1) swiglu(row);
    for (std::size_t j = 0; j < 2; ++j) {
      const char* what = "";
      for (std::size_t i = 0; i < n_groups; ++i) {
        const GemmCall c = steps[s](H, F, rows_of[i])[j];
        ta[i] = op(c.trans_a), tb[i] = op(c.trans_b), m[i] = c.m, n[i] = c.n, k[i] = c.k;
        lda[i] = c.lda, ldb[i] = c.ldb, ldc[i] = c.ldc, what = c.what;
      }
      const std::size_t part = 6 * static_cast<std::size_t>(s) + 3 * j;
      check(cublasGemmGroupedBatchedEx(blas_, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
                                       const_cast<const void**>(desc_bwd_dev_ + part * ue), CUDA_R_16BF, lda.data(),
                                       const_cast<const void**>(desc_bwd_dev_ + (part + 1) * ue), CUDA_R_16BF, ldb.data(),
                                       beta.data(), desc_bwd_dev_ + (part + 2) * ue, CUDA_R_16BF, ldc.data(), groups,
                                       size.data(), CUBLAS_COMPUTE_32F),
            what);
    }
  }
}

void Layer::permute_backward(int tokens, __nv_bfloat16* dx) {
  allocate_backward();
  permute_backward_kernel<<<tokens, 256, 0, stream_>>>(dxperm_, row_of_, c_.top_k, c_.hidden, dx);
  check(cudaGetLastError(), "permute backward kernel");
}

void Layer::router_backward(const __nv_bfloat16* x, int tokens, __nv_bfloat16* dx) {
  allocate_backward();
  router_backward_kernel<<<blocks(static_cast<std::size_t>(tokens) * 32, 256), 256, 0, stream_>>>(
      logits_, topk_, gates_, dgates_, tokens, c_.experts, c_.top_k, c_.scoring == Scoring::softmax ? 1 : 0, dlogits_);
  check(cudaGetLastError(), "router backward kernel");
  const float one = 1, zero = 0;
  const auto ptr = [&](Operand o) -> const void* {
    return o == Operand::router ? static_cast<const void*>(router_w_)
           : o == Operand::x    ? static_cast<const void*>(x)
                                : static_cast<const void*>(dlogits_);
  };
  for (const GemmCall& c : router_backward_gemms(c_.hidden, c_.experts, tokens)) {
    void* out = c.c == Operand::dx ? static_cast<void*>(dx) : static_cast<void*>(drouter_);
    check(cublasGemmEx(blas_, c.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, c.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, c.m, c.n, c.k,
                       &one, ptr(c.a), CUDA_R_16BF, c.lda, ptr(c.b), CUDA_R_16BF, c.ldb, c.accumulate ? &one : &zero, out,
                       c.fp32_out ? CUDA_R_32F : CUDA_R_16BF, c.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          c.what);
  }
}

void Layer::backward(const __nv_bfloat16* x, const __nv_bfloat16* dout, int tokens, __nv_bfloat16* dx) {
  combine_backward(dout, tokens);
  experts_backward();
  permute_backward(tokens, dx);
  router_backward(x, tokens, dx);
}

namespace {

template <class T>
std::vector<float> gradient_to_host(const T* p, std::size_t n, cudaStream_t s) {
  check(cudaStreamSynchronize(s), "gradients");
  std::vector<T> raw(n);
  check(cudaMemcpy(raw.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "gradients");
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      out[i] = raw[i];
    } else {
      bf16_bits b;
      std::memcpy(&b, &raw[i], sizeof b);
      out[i] = bf16_to_float(b);
    }
  }
  return out;
}

}  // namespace

std::vector<float> Layer::router_gradient() const {
  return gradient_to_host(drouter_, static_cast<std::size_t>(c_.hidden) * static_cast<std::size_t>(c_.experts), stream_);
}
std::vector<float> Layer::gate_up_gradient() const {
  return gradient_to_host(dgate_up_, static_cast<std::size_t>(c_.experts) * static_cast<std::size_t>(c_.hidden) * 2 *
                                         static_cast<std::size_t>(c_.ffn), stream_);
}
std::vector<float> Layer::down_gradient() const {
  return gradient_to_host(ddown_, static_cast<std::size_t>(c_.experts) * static_cast<std::size_t>(c_.ffn) *
                                      static_cast<std::size_t>(c_.hidden), stream_);
}

Routing Layer::routing(int tokens) const {
  Routing r;
  r.tokens = tokens;
  r.top_k = c_.top_k;
  const std::size_t a = static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c_.top_k);
  r.experts.resize(a);
  r.gates.resize(a);
  check(cudaStreamSynchronize(stream_), "routing");
  check(cudaMemcpy(r.experts.data(), topk_, a * sizeof(int), cudaMemcpyDeviceToHost), "routing");
  check(cudaMemcpy(r.gates.data(), gates_, a * sizeof(float), cudaMemcpyDeviceToHost), "gates");
  assign_ranks(c_, r);
  return r;
}

std::vector<float> Layer::logits(int tokens) const {
  std::vector<float> l(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c_.experts));
  check(cudaStreamSynchronize(stream_), "logits");
  check(cudaMemcpy(l.data(), logits_, l.size() * sizeof(float), cudaMemcpyDeviceToHost), "logits");
  return l;
}

DeviceInfo device_info() {
  DeviceInfo d;
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  d.name = p.name;
  d.sm_count = p.multiProcessorCount;
  int khz = 0;
  if (cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev) == cudaSuccess) d.sm_clock_mhz = khz / 1000;
  if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) == cudaSuccess) d.memory_clock_mhz = khz / 1000;
  cudaRuntimeGetVersion(&d.runtime);
  cudaDriverGetVersion(&d.driver);
  return d;
}

}  // namespace moe
