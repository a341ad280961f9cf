// The MoE layer's definition, as a float64 CPU reference (plain C++17, no CUDA), and the data
// both the GPU layer and the reference start from. The GPU layer (moe_layer.cuh) computes the
// same function in bf16 with fp32 accumulation; its checks compare against this.
//
// The layer, for tokens x (T x H, bf16):
//   1. router: logits = x Wr (Wr: H x E); scores = softmax(logits) or sigmoid(logits)
//      (DeepSeek-V3 style); with groups > 1 and max_groups > 0 only experts in the max_groups
//      groups of highest group score (the sum of the group's two highest selection scores) are
//      eligible; top-k by selection score = score + bias (the bias only chooses, as in
//      DeepSeek-V3); gates = the chosen scores renormalised to sum 1;
//   2. capacity (capacity_factor > 0): C = ceil(cf x T x k / E) per expert; assignments are
//      kept in position order (token, then k-slot) and the ones past C are dropped;
//   3. experts: per kept assignment of token t to expert e, y = (silu(x We_gate) * (x We_up)) We_down
//      with We_gate | We_up = the H x 2F matrix Wgu[e] (gate the first F columns) and We_down F x H;
//   4. combine: out[t] = sum over t's kept assignments of gate x y.
// Matrices are row-major; weights and activations are bf16 (stored as their 16-bit patterns).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

enum class Scoring { softmax, sigmoid };

struct Config {
  std::string name = "small";
  int hidden = 256;
  int ffn = 512;
  int experts = 8;
  int top_k = 2;
  Scoring scoring = Scoring::softmax;
  int groups = 1;      // expert groups (consecutive ids), for group-limited routing
  int max_groups = 0;  // > 0: a token's experts lie in at most this many groups
  double capacity_factor = 0;  // 0: dropless
};

using bf16_bits = std::uint16_t;
float bf16_to_float(bf16_bits b);
bf16_bits float_to_bf16(float f);  // round to nearest even (NaN kept a NaN)

struct Weights {
  std::vector<bf16_bits> router;   // H x E
  std::vector<float> bias;         // E (selection only; zeros for softmax scoring)
  std::vector<bf16_bits> gate_up;  // E x (H x 2F)
  std::vector<bf16_bits> down;     // E x (F x H)
};

// Deterministic pseudo-random weights (scaled so activations stay O(1)) and tokens.
Weights random_weights(const Config& c, std::uint64_t seed);
std::vector<bf16_bits> random_tokens(const Config& c, int tokens, std::uint64_t seed);
// Tokens drawn around `clusters` centres with Zipf(s) cluster frequencies: inputs with structure,
// so that the router's choices are skewed the way real text skews them.
std::vector<bf16_bits> clustered_tokens(const Config& c, int tokens, int clusters, double zipf_s, std::uint64_t seed);

struct Routing {
  int tokens = 0, top_k = 0;
  std::vector<int> experts;   // T x k, by descending selection score
  std::vector<float> gates;   // T x k, summing to 1 per token
  std::vector<int> rank;      // T x k: the assignment's position among its expert's (0-based)
  std::vector<int> counts;    // E: assignments routed to each expert
  int capacity = -1;          // -1: dropless
  bool kept(std::size_t a) const { return capacity < 0 || rank[a] < capacity; }
};

int capacity(const Config& c, int tokens);  // -1 when dropless

// Router logits in float64 (T x E).
std::vector<double> router_logits(const Config& c, const Weights& w, const bf16_bits* x, int tokens);
// Top-k, gates and capacity ranks from logits (any precision, given as double).
Routing route_from_logits(const Config& c, const Weights& w, const std::vector<double>& logits, int tokens);
// Ranks and counts for a given choice of experts and gates (e.g. the GPU's, or a generated
// distribution): fills rank, counts and capacity.
void assign_ranks(const Config& c, Routing& r);

// The layer's output (T x H) in float64, for the given routing.
std::vector<double> forward(const Config& c, const Weights& w, const bf16_bits* x, const Routing& r);

// The layer's backward pass, in float64. Inputs and weights as float64 values (from bf16 by
// values(), or perturbed, to check the gradients by finite differences).
struct Values {
  std::vector<double> x;        // T x H
  std::vector<double> router;   // H x E
  std::vector<double> gate_up;  // E x (H x 2F)
  std::vector<double> down;     // E x (F x H)
};
Values values(const Config& c, const Weights& w, const bf16_bits* x, int tokens);
// The layer's output with r's choice of experts held fixed (top-k selection, group limits and
// capacity drops are piecewise constant: no gradient flows through them) and the gates computed
// from the logits x Wr: the chosen experts' softmax (or sigmoid) scores renormalised to sum 1
// over all k chosen, dropped ones included. Equals forward() for a routing route_from_logits made.
std::vector<double> forward_values(const Config& c, const Values& v, const Routing& r);
// The gradients of sum(out .* dout) (dout: T x H, the gradient arriving at the layer's output)
// with respect to the tokens and every weight, through forward_values: per kept assignment a of
// token t to expert e, dy = g dout[t] and dg = y . dout[t]; the SwiGLU expert backward (d act =
// dy Wd^T, dWd += act^T dy, d gate = d act * up * silu'(gate), d up = d act * silu(gate), dWgu
// += x^T [d gate, d up], dx += [d gate, d up] Wgu^T); the gates' renormalisation and scoring
// (softmax: dl_j = g_j (dg_j - sum_i g_i dg_i) over the chosen; sigmoid: ds_j = (dg_j - sum_i
// g_i dg_i) / sum_i s_i, dl_j = ds_j s_j (1 - s_j)); dx += dl Wr^T, dWr += x^T dl.
Values backward(const Config& c, const Values& v, const Routing& r, const std::vector<double>& dout);

// Routing drawn from a named per-expert distribution, for timing the stages after the router on
// controlled histograms: "uniform", "zipf:S" (expert i weighted (i+1)^-S) or "hot:P" (expert 0
// draws P of the weight, the rest share 1 - P equally). Each token takes top_k distinct experts
// by weight; gates are 1/k. Throws std::invalid_argument on an unknown name.
Routing generated_routing(const Config& c, int tokens, const std::string& distribution, std::uint64_t seed);

// The largest |got - want| over the largest |want|: the error measure of the checks (infinite
// where got is shorter, or has a NaN or an infinity).
double relative_error(const std::vector<float>& got, const std::vector<double>& want);

}  // namespace moe
