// The MoE model shape, the router's behaviour and the expert placement, as validated specs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moesim::routing {

struct MoeModelSpec {
  std::string name;
  int moe_layers = 1;
  std::int64_t hidden = 0;      // model dimension
  std::int64_t expert_ffn = 0;  // intermediate size of one routed (and shared) expert
  int experts = 1;              // routed experts per layer
  int top_k = 1;
  int shared_experts = 0;       // always-on experts every token passes through (DeepSeek)
  int dtype_bytes = 2;          // activations and weights (bf16)
  // Bytes per 32 elements of the linear layers' weights (model.weight_dtype: the routed and shared
  // experts, the attention projections, the dense FFNs): 64 for bf16, 32 for fp8, 18 for NVFP4
  // (4-bit values and an 8-bit scale per 16), 17 for MXFP4 (an 8-bit scale per 32;
  // linear_weight_bytes); the router, the embedding and the LM head stay at dtype_bytes, as in
  // DeepSeek-V3's FP8 checkpoint.
  int weight_bytes32 = 64;
  // The routed experts' alone (model.expert_weight_dtype; by default weight_bytes32's): GPT-OSS's
  // and Kimi K2's checkpoints quantize the routed experts to 4 bits and keep the rest in BF16.
  int expert_weight_bytes32 = 64;
  int attention_heads = 1;
  int kv_heads = 1;
  std::int64_t head_dim = 0;
  std::int64_t kv_cache_dim = 0;      // elements cached per token and layer; 0: 2 * kv_heads * head_dim
  // Bytes per element of the KV cache (model.kv_cache_dtype; decode only): dtype_bytes, or 1 for
  // fp8 (see kv_cache_token_bytes for MLA's).
  int kv_cache_bytes = 2;
  std::int64_t attention_params = 0;  // weights of one attention block; 0: H (q + 2 kv) + q H
  // Gated attention (model.attention_output_gate; Qwen3-Next's and Qwen3.5's full layers): a
  // second query-wide projection of the input gates the attention's output, H q more weights.
  bool output_gate = false;
  // DeepSeek's multi-head latent attention (model.mla; DeepSeek-V2 report, section 2.1): queries
  // through a q_lora_rank-wide latent (0: projected from the hidden state directly), keys and
  // values through a kv_lora_rank-wide latent, each head's query and key a qk_nope_head_dim part
  // from the latent and a qk_rope_head_dim RoPE part (the key's shared by the heads), values
  // v_head_dim wide. kv_lora_rank 0: standard multi-head / grouped-query attention.
  struct Mla {
    std::int64_t q_lora_rank = 0, kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
    // DeepSeek Sparse Attention (DeepSeek-V3.2; its config.json's index_topk, index_n_heads,
    // index_head_dim): a lightning indexer scores every earlier token with index_n_heads heads
    // of index_head_dim (in FP8) and each query attends to the index_topk best; 0: dense MLA.
    std::int64_t index_topk = 0, index_n_heads = 0, index_head_dim = 0;
  } mla;
  // Multi-token prediction (model.mtp_modules; DeepSeek-V3 report, section 2.2): modules after
  // the main model, each a projection of [hidden state, next token's embedding] (2H -> H), one
  // MoE layer of the model's shape and the shared LM head. mtp_modules: the model's (DeepSeek-V3:
  // 1); mtp_layers: those run, which moe_layers includes as its last layers (training: all of
  // them; decode with draft tokens: the drafting one; else none: the main model runs without them).
  int mtp_modules = 0;
  int mtp_layers = 0;
  int dense_layers = 0;           // dense transformer layers before the MoE layers (DeepSeek-V3: 3)
  std::int64_t dense_ffn = 0;     // their FFN intermediate size
  // Vocabulary size: the input embedding (on the first pipeline stage) and the untied output
  // projection, the LM head, with the loss in training (on the last); 0: neither modelled.
  std::int64_t vocab = 0;
  // Sliding-window attention (model.sliding_window; Mistral-7B, GPT-OSS, Gemma 3): a query of a
  // sliding layer attends to the last sliding_window positions, itself included, and the layer
  // caches no more keys than that; 0: every layer attends to its whole context.
  // full_attention_every n: every n-th layer of the model (the n-th, 2n-th, ..., counting the
  // dense layers first, then the MoE layers) attends fully, the others slide (GPT-OSS: 2,
  // Gemma 3: 6); 0: all of them slide.
  std::int64_t sliding_window = 0;
  int full_attention_every = 0;
  // Linear attention (model.linear_attention; Qwen3-Next's and Qwen3.5's Gated DeltaNet, Yang et
  // al., "Gated Delta Networks", ICLR 2025): its layers keep no keys but a recurrent state per
  // sequence, value_heads matrices of key_dim x value_dim (state_bytes an element: SGLang keeps it
  // in fp32 by default) and a short convolution's last conv_kernel - 1 inputs of the queries, keys
  // and values; full_attention_every n: every n-th layer is softmax attention (the model's
  // attention_heads, kv_heads, head_dim), the others linear (Qwen3-Next: 4); 0: all linear.
  // value_heads 0: none. Not with MLA or sliding windows.
  struct LinearAttention {
    int key_heads = 0, value_heads = 0;
    std::int64_t key_dim = 0, value_dim = 0;
    int conv_kernel = 4;
    int state_bytes = 4;
  } linear;
  // Tensor parallelism (parallelism.tp): the attention of every layer, the dense layers' FFN and
  // the LM head are split over this many GPUs (heads, FFN columns, vocabulary), each of them
  // running its share over the tokens of all of them; the figures below are one GPU's.
  int tp = 1;
  // With tensor parallelism, the shared experts too are split over the tp GPUs (each 1/tp of
  // their columns over its group's tokens, between an all-gather and a reduce-scatter, as
  // Megatron-Core, vLLM and SGLang split them), unless replicated (parallelism.shared_experts:
  // replicated: each GPU runs them whole over its own tokens, as SGLang does with DeepEP).
  bool shared_replicated = false;
  int shared_tp() const { return shared_replicated ? 1 : tp; }
};

// One GPU's query width and key/value width of a layer's attention: the heads split over the
// tensor-parallel GPUs (kv heads that do not divide are replicated: each GPU holds
// ceil(kv_heads / tp)).
inline std::int64_t query_width(const MoeModelSpec& m) {
  return static_cast<std::int64_t>(m.attention_heads / m.tp) * m.head_dim;
}
inline std::int64_t kv_width(const MoeModelSpec& m) {
  return static_cast<std::int64_t>((m.kv_heads + m.tp - 1) / m.tp) * m.head_dim;
}
inline bool is_mla(const MoeModelSpec& m) { return m.mla.kv_lora_rank > 0; }
// MLA with DeepSeek Sparse Attention (model.mla.index_topk): its attention runs absorbed (MLA's
// MQA mode) in every pass, each query over its top-k keys, as DeepSeek-V3.2's kernels do.
inline bool is_sparse_mla(const MoeModelSpec& m) { return is_mla(m) && m.mla.index_topk > 0; }
// The indexer's weights: its query projection from the query latent (q_lora_rank x heads x
// head dim), its key projection (H x head dim) and its heads' weights (H x heads), which every
// tensor-parallel GPU holds and runs whole, as DeepSeek's inference code does.
inline std::int64_t indexer_weights(const MoeModelSpec& m) {
  if (!is_sparse_mla(m)) return 0;
  return m.mla.q_lora_rank * m.mla.index_n_heads * m.mla.index_head_dim + m.hidden * m.mla.index_head_dim +
         m.hidden * m.mla.index_n_heads;
}
// The indexer's cache of a token: its key in FP8 with an fp32 scale per 128 (DeepSeek-V3.2: 132
// bytes a token and layer); 0 without it.
inline std::int64_t index_cache_token_bytes(const MoeModelSpec& m) {
  if (!is_sparse_mla(m)) return 0;
  return m.mla.index_head_dim + 4 * ((m.mla.index_head_dim + 127) / 128);
}

// The bytes of n linear-layer weights at model.weight_dtype (rounded up to the byte).
inline std::int64_t linear_weight_bytes(const MoeModelSpec& m, std::int64_t n) { return (m.weight_bytes32 * n + 31) / 32; }
// The bytes of n routed experts' weights (model.expert_weight_dtype).
inline std::int64_t expert_weight_bytes(const MoeModelSpec& m, std::int64_t n) { return (m.expert_weight_bytes32 * n + 31) / 32; }
// Whether the linear layers' weights are at model.dtype (no model.weight_dtype or
// model.expert_weight_dtype of their own).
inline bool weights_at_dtype(const MoeModelSpec& m) {
  return m.weight_bytes32 == 32 * m.dtype_bytes && m.expert_weight_bytes32 == m.weight_bytes32;
}
// Elements one GPU caches per token and layer: its kv heads' keys and values, MLA's kv latent
// and RoPE key, or a given kv_cache_dim; a latent is cached whole by every tensor-parallel GPU.
inline std::int64_t kv_cache_width(const MoeModelSpec& m) {
  if (is_mla(m)) return m.mla.kv_lora_rank + m.mla.qk_rope_head_dim;
  return m.kv_cache_dim > 0 ? m.kv_cache_dim : 2 * kv_width(m);
}
// Bytes one GPU caches per token and layer: kv_cache_width elements of kv_cache_bytes each, but
// an MLA cache in fp8 in FlashMLA's FP8 layout (its decoding kernel for DeepSeek-V3.2; V3's dims: 656 bytes a
// token): the latent in fp8 with one fp32 scale per 128 of its channels, the RoPE key at dtype_bytes.
// Other fp8 caches take per-tensor scales (vLLM's fp8 KV cache), a few bytes a layer, left out.
// With sparse attention the indexer's cache (index_cache_token_bytes) comes on top.
inline std::int64_t attention_cache_token_bytes(const MoeModelSpec& m) {
  if (is_mla(m) && m.kv_cache_bytes == 1)
    return m.mla.kv_lora_rank + 4 * ((m.mla.kv_lora_rank + 127) / 128) + m.dtype_bytes * m.mla.qk_rope_head_dim;
  return m.kv_cache_bytes * kv_cache_width(m);
}
inline std::int64_t kv_cache_token_bytes(const MoeModelSpec& m) { return attention_cache_token_bytes(m) + index_cache_token_bytes(m); }

// Whether the model's layer `layer` (from 0: the dense layers, then the MoE layers) attends within
// model.sliding_window.
inline bool sliding_layer(const MoeModelSpec& m, int layer) {
  return m.sliding_window > 0 && (m.full_attention_every == 0 || (layer + 1) % m.full_attention_every != 0);
}

inline bool has_linear_attention(const MoeModelSpec& m) { return m.linear.value_heads > 0; }
// Whether the model's layer `layer` is a linear-attention layer (model.linear_attention).
inline bool linear_layer(const MoeModelSpec& m, int layer) {
  return has_linear_attention(m) && (m.full_attention_every == 0 || (layer + 1) % m.full_attention_every != 0);
}
// The model's layers of linear attention among [first, first + count).
inline int linear_layers(const MoeModelSpec& m, int first, int count) {
  int n = 0;
  for (int l = first; l < first + count; ++l) n += linear_layer(m, l) ? 1 : 0;
  return n;
}

// What the cost model's window argument says of a linear-attention layer (models/moe_costs.hpp).
inline constexpr std::int64_t kLinearLayer = -1;
// The window of the model's layer `layer`: model.sliding_window where it slides, kLinearLayer on
// a linear-attention layer, else 0 (none).
inline std::int64_t layer_window(const MoeModelSpec& m, int layer) {
  return linear_layer(m, layer) ? kLinearLayer : sliding_layer(m, layer) ? m.sliding_window : 0;
}

// The keys the model's layer `layer` caches (and a decode query reads) for a context of `context`
// tokens: all of them, or with a sliding window at most the window; none on a linear layer (its
// state is per sequence: linear_state_bytes).
inline std::int64_t cached_keys(const MoeModelSpec& m, int layer, std::int64_t context) {
  if (linear_layer(m, layer)) return 0;
  return sliding_layer(m, layer) ? std::min(context, m.sliding_window) : context;
}

// One GPU's widths of a linear-attention layer (its heads split over the tensor-parallel GPUs):
// queries and keys key_heads x key_dim, values (and the output gate) value_heads x value_dim.
inline std::int64_t linear_qk_width(const MoeModelSpec& m) { return static_cast<std::int64_t>(m.linear.key_heads / m.tp) * m.linear.key_dim; }
inline std::int64_t linear_v_width(const MoeModelSpec& m) { return static_cast<std::int64_t>(m.linear.value_heads / m.tp) * m.linear.value_dim; }
// Weights of one linear-attention layer on one GPU (Gated DeltaNet as Qwen3-Next has it): the
// input projection to queries, keys, values, the output gate and the two per-head gates
// (H (2 qk + 2 v + 2 value heads)), the depthwise convolution over queries, keys and values
// (conv_kernel (2 qk + v)) and the output projection (v H); its norms and per-head constants
// left out (Qwen3-Next: 33,718,272 a layer).
inline std::int64_t linear_attention_weights(const MoeModelSpec& m) {
  const std::int64_t qk = linear_qk_width(m), v = linear_v_width(m), heads = m.linear.value_heads / m.tp;
  return m.hidden * (2 * qk + 2 * v + 2 * heads) + m.linear.conv_kernel * (2 * qk + v) + v * m.hidden;
}
// The state one GPU keeps per sequence and linear layer: its value heads' key_dim x value_dim
// matrices at state_bytes, and the convolution's last conv_kernel - 1 inputs at dtype_bytes
// (Qwen3-Next in fp32: 2,097,152 + 49,152 bytes).
inline std::int64_t linear_state_bytes(const MoeModelSpec& m) {
  const std::int64_t heads = m.linear.value_heads / m.tp;
  return heads * m.linear.key_dim * m.linear.value_dim * m.linear.state_bytes +
         (m.linear.conv_kernel - 1) * (2 * linear_qk_width(m) + linear_v_width(m)) * m.dtype_bytes;
}

// MLA's down projections (H x q_lora_rank for the queries, H x (kv_lora_rank + RoPE key) for the
// keys and values), which every tensor-parallel GPU holds and runs whole, as DeepSeek-V3's
// inference code and Megatron-Core replicate them; 0 without MLA.
inline std::int64_t mla_down_weights(const MoeModelSpec& m) {
  if (!is_mla(m)) return 0;
  return m.hidden * (m.mla.q_lora_rank + m.mla.kv_lora_rank + m.mla.qk_rope_head_dim);
}

// Weights of one layer's attention block on one GPU. MLA: the down projections whole, and for
// the GPU's heads (attention_heads / tp) the query up projection, the keys' and values' up
// projection and the output projection (DeepSeek-V3: 187,105,280 without tensor parallelism);
// else the given count (its 1/tp share, rounded up); else those of multi-head attention with the
// GPU's head counts (Q, K, V and output projections).
inline std::int64_t attention_weights(const MoeModelSpec& m) {
  if (is_mla(m)) {
    const auto& a = m.mla;
    const std::int64_t heads = m.attention_heads / m.tp, q_in = a.q_lora_rank > 0 ? a.q_lora_rank : m.hidden;
    return mla_down_weights(m) + indexer_weights(m) +
           heads * (q_in * (a.qk_nope_head_dim + a.qk_rope_head_dim) + a.kv_lora_rank * (a.qk_nope_head_dim + a.v_head_dim) +
                    a.v_head_dim * m.hidden);
  }
  if (m.attention_params > 0) return (m.attention_params + m.tp - 1) / m.tp;
  const std::int64_t q = query_width(m), kv = kv_width(m);
  return m.hidden * (q + 2 * kv) + q * m.hidden + (m.output_gate ? m.hidden * q : 0);
}

// Weights of the model's layer `layer`'s attention block on one GPU: a linear layer's or attention_weights.
inline std::int64_t layer_attention_weights(const MoeModelSpec& m, int layer) {
  return linear_layer(m, layer) ? linear_attention_weights(m) : attention_weights(m);
}

// One GPU's attention activations per token, in elements, as the cost and memory models use
// them: the down projections' outputs (MLA's query and kv latents and RoPE key; 0 otherwise),
// the queries, keys and values the attention core reads in prefill and training (MLA: keys and
// values expanded from the latent per head, the RoPE key shared), and the output projection's
// input; for this GPU's heads.
struct AttentionWidths {
  std::int64_t latent = 0, q = 0, k = 0, v = 0, out = 0;
};
inline AttentionWidths attention_widths(const MoeModelSpec& m) {
  if (!is_mla(m)) {
    const std::int64_t q = query_width(m), kv = kv_width(m);
    return {.latent = 0, .q = q, .k = kv, .v = kv, .out = q};
  }
  const auto& a = m.mla;
  const std::int64_t heads = m.attention_heads / m.tp;
  if (is_sparse_mla(m))  // absorbed: each head's query and output in the kv latent's space, keys and values the latent
    return {.latent = a.q_lora_rank + a.kv_lora_rank + a.qk_rope_head_dim,
            .q = heads * (a.kv_lora_rank + a.qk_rope_head_dim),
            .k = a.kv_lora_rank + a.qk_rope_head_dim,
            .v = 0,
            .out = heads * a.kv_lora_rank};
  return {.latent = a.q_lora_rank + a.kv_lora_rank + a.qk_rope_head_dim,
          .q = heads * (a.qk_nope_head_dim + a.qk_rope_head_dim),
          .k = heads * a.qk_nope_head_dim + a.qk_rope_head_dim,
          .v = heads * a.v_head_dim,
          .out = heads * a.v_head_dim};
}

// The model without sparse attention's indexer: DeepSeek-V3.2's MLA as V3 runs it.
inline MoeModelSpec dense_mla(MoeModelSpec m) {
  m.mla.index_topk = m.mla.index_n_heads = m.mla.index_head_dim = 0;
  return m;
}

// Whether sparse attention runs prompts of S new tokens after P cached ones in its sparse MQA
// mode (each token over its top-k keys, MLA absorbed), or in the masked MHA mode DeepSeek uses
// for short prompts (V3's expanded attention over every earlier key, the indexer's choice a mask):
// whichever does fewer core FLOPs, 2 sum_i min(P + i, K) (Q + O) absorbed against
// S (2P + S + 1) (Q + O) expanded (DeepSeek-V3.2's dims: from 12,813 tokens on). Decode always
// runs the sparse mode.
inline bool sparse_mode(const MoeModelSpec& m, std::int64_t s, std::int64_t prefix) {
  if (!is_sparse_mla(m) || s <= 0) return false;
  const AttentionWidths a = attention_widths(m), e = attention_widths(dense_mla(m));
  const std::int64_t k = m.mla.index_topk, below = std::clamp<std::int64_t>(k - prefix, 0, s);
  const long double sparse = 2.0L * (static_cast<long double>(below) * prefix + static_cast<long double>(below) * (below + 1) / 2 +
                                     static_cast<long double>(s - below) * k) * static_cast<long double>(a.q + a.out);
  const long double dense = static_cast<long double>(s) * static_cast<long double>(2 * prefix + s + 1) * static_cast<long double>(e.q + e.out);
  return sparse < dense;
}

enum class Distribution { uniform, zipf, hot_experts, lognormal, hot_ranks, trace };
// Over capacity: drop the latest assignments in group order (position), the ones with the lowest
// gate weight (gate), or use GShard's fixed-shape dispatch with padding (pad). See dispatch_plan.hpp.
enum class DropPolicy { position, gate, pad };

// Group-limited routing: how a token's groups are chosen (routing/token_router.hpp).
enum class GroupChoice { draw, best_expert, best_two };

struct RoutingTrace;  // routing/traces.hpp

// Token -> expert routing law (routing/token_router.hpp documents every generator).
struct RoutingSpec {
  Distribution distribution = Distribution::uniform;
  double zipf_s = 1.0;                    // zipf: exponent
  int hot_experts = 1;                    // hot_experts: how many experts are hot
  double hot_fraction = 0.5;              // hot_experts, hot_ranks: the hot share of the routing
  int hot_ranks = 1;                      // hot_ranks: how many EP ranks' experts are hot
  double lognormal_sigma = 1.0;           // lognormal: sigma of log(expert weight)
  int step = 0;                           // the training/inference step this run routes
  int rotate = 0;                         // popularity ranks move by this many experts per step
  double dirichlet_concentration = 0;     // > 0: per-batch weights ~ Dirichlet(this x weights)
  double burst_probability = 0;           // per batch, chance of a burst on one random expert
  double burst_fraction = 0;              // the share of the batch's routing the burst takes
  double layer_correlation = 0;           // chance a token keeps its popularity rank at l+1
  int groups = 1;                         // contiguous expert groups, for max_groups
  int max_groups = 0;                     // > 0: a token's experts span at most this many groups
  GroupChoice group_choice = GroupChoice::draw;  // how a token's max_groups groups are chosen
  std::optional<double> capacity_factor;  // nullopt: dropless
  DropPolicy drop_policy = DropPolicy::position;
  std::shared_ptr<const RoutingTrace> trace;  // distribution == trace
};

enum class PlacementPolicy { contiguous, round_robin, greedy, eplb };
enum class ReplicaChoice { round_robin, least_loaded };

struct PlacementSpec {
  PlacementPolicy policy = PlacementPolicy::contiguous;
  int redundant_experts = 0;  // eplb: extra expert slots per EP group, for replicas
  int expert_groups = 1;      // eplb: hierarchical when the groups divide over the group's nodes
  ReplicaChoice replica_choice = ReplicaChoice::round_robin;  // among a token's candidate replicas
  bool replica_locality = true;  // candidates: the replicas on the sender's node when there are any
  // greedy, eplb: per MoE layer, the load to balance (from a count-level trace); empty: the
  // routing distribution's expected load.
  std::vector<std::vector<double>> layer_load;
};

}  // namespace moesim::routing
