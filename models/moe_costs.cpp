#include "models/moe_costs.hpp"

#include <algorithm>

namespace moesim::models {

// With tensor parallelism (m.tp = n > 1) a GPU's attention runs over the n T tokens of its
// tensor-parallel group with its share of the heads and weights (attention_widths,
// attention_weights; MLA's down projections whole). Every weight multiplies every token once.
// A cached prefix of P tokens: each of the T tokens also attends to P keys, so the core is
// T (2P + S + 1)(Q + O); the T / S sequences' prefixes are read from the cache (P Dc bytes each),
// and with MLA their latents are first expanded by the keys' and values' up projection
// (kv_lora_rank x heads x (qk_nope + v), 2 FLOPs per weight and token), the expanded keys and
// values written and read (2 b P (K + V) a sequence), as prefill kernels that take per-head keys
// and values need.
namespace {

// T tokens of S-token sequences after a P-token prefix, each attending to at most `most` keys
// (a window, or a top-k): T (2 / S) sum_i min(P + i, most) x `width` (i <= most - P attend to
// P + i keys, the rest to `most`).
std::int64_t capped_core(std::int64_t t, std::int64_t s, std::int64_t prefix, std::int64_t most, std::int64_t width) {
  const std::int64_t below = std::clamp<std::int64_t>(most - prefix, 0, s);
  const sim::int128 keys2 = 2 * (static_cast<sim::int128>(below) * prefix + static_cast<sim::int128>(below) * (below + 1) / 2 +
                                 static_cast<sim::int128>(s - below) * most);
  return static_cast<std::int64_t>(static_cast<sim::int128>(t) * keys2 * width / s);
}

// The layer's memory-bound kernels around its attention (compute.elementwise_kernels): its two
// RMSNorms (before the attention and before the FFN), each fused with the residual add before it,
// reading the residual stream and the branch's output and writing the new residual and the
// normed input, 4 b H a token each, on the GPU's own tokens (with tensor parallelism the
// norms run sequence-parallel); and the rotary embedding of the queries and keys, read and
// written (the group's tokens, the GPU's heads): the whole of every head with multi-head
// attention, MLA's RoPE part (qk_rope_head_dim a head, and the shared key's).
std::int64_t layer_elementwise_bytes(const routing::MoeModelSpec& m, std::int64_t tokens) {
  const std::int64_t b = m.dtype_bytes, t = m.tp * tokens;
  std::int64_t rotary = 0;
  if (routing::is_mla(m)) {
    rotary = (m.attention_heads / m.tp + 1) * m.mla.qk_rope_head_dim;
  } else {
    const routing::AttentionWidths a = routing::attention_widths(m);
    rotary = a.q + a.k;
  }
  return norm_bytes(m, tokens) + 2 * b * t * rotary;
}

// DeepSeek Sparse Attention (model.mla.index_topk K, DeepSeek-V3.2), in whichever of its two
// modes does fewer core FLOPs (routing::sparse_mode): for short prompts the masked MHA mode, V3's
// attention over every earlier key; else MLA run absorbed, its MQA mode (attention_widths: each
// head's query (rkv + dr) and output (rkv) wide, keys and values the cached latent), each token
// over min(P + i, K) keys, the core T (2 / S) sum_i min(P + i, K) (Q + O). In both modes
// the lightning indexer scores every earlier token, 2 Hi Di FLOPs a pair (in FP8 in DeepSeek's
// kernels: counted with the GEMMs), T (2P + S + 1) Hi Di, and reads every key of a cached prefix
// (P Ic bytes a sequence); the sparse mode reads the latents of the prefix's top min(P, K)
// (min(P, K) Dc), the MHA mode expands the whole prefix as V3 does.
KernelCost sparse_attention_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t s, std::int64_t prefix) {
  const std::int64_t h = m.hidden, b = m.dtype_bytes, t = m.tp * tokens, w = routing::attention_weights(m);
  const auto& l = m.mla;
  const std::int64_t index = t * (2 * prefix + s + 1) * l.index_n_heads * l.index_head_dim;
  if (!routing::sparse_mode(m, s, prefix)) {
    // Short prompts: the masked MHA mode, V3's attention (attention_cost of the model without
    // the indexer), and the indexer besides: its weights, its scores and its cache of the prefix.
    const std::int64_t wi = routing::indexer_weights(m);
    KernelCost c = attention_cost(routing::dense_mla(m), tokens, s, prefix);
    c.flops += 2 * t * wi + index;
    c.gemm_flops += 2 * t * wi + index;
    c.bytes += routing::linear_weight_bytes(m, wi) + (prefix > 0 ? t * prefix * routing::index_cache_token_bytes(m) / s : 0);
    return c;
  }
  const routing::AttentionWidths a = routing::attention_widths(m);
  const std::int64_t core = capped_core(t, s, prefix, l.index_topk, a.q + a.out);
  const std::int64_t prefix_bytes =
      prefix > 0 ? t * (std::min(prefix, l.index_topk) * routing::attention_cache_token_bytes(m) +  // the sequences' share
                        prefix * routing::index_cache_token_bytes(m)) / s
                 : 0;
  return KernelCost{
      .flops = 2 * t * w + index + core,
      .bytes = routing::linear_weight_bytes(m, w) + b * t * (2 * h + 2 * (a.latent + a.q + a.k + a.v)) + prefix_bytes,
      .gemm_flops = 2 * t * w + index,
      .core_flops = core,
      .elementwise_bytes = layer_elementwise_bytes(m, tokens),
      .elementwise_launches = 3,
  };
}

}  // namespace

std::int64_t norm_bytes(const routing::MoeModelSpec& m, std::int64_t tokens) { return 8 * m.dtype_bytes * m.hidden * tokens; }

// A linear-attention layer (routing::kLinearLayer; Gated DeltaNet): W = its weights
// (routing::linear_attention_weights), qk and v its query/key and value widths, h_v its value
// heads; per token the projections, 2 W FLOPs, and the gated delta rule, 8 h_v dk dv (Megatron-LM's
// count, num_floating_point_operations: KK^T, VK^T, the state's update and its product with the
// query, 2 x 4 h_v dv^2 with dk = dv). Prefill and training run it in chunks of 64 tokens (the
// flash-linear-attention kernels'), each chunk's state written and read back once (h_v dk dv at
// b); a prefill writes each sequence's final state (routing::linear_state_bytes) and, after a
// cached prefix, reads the prefix's instead of its keys. Decode reads and writes each sequence's
// state once a step. Activations: x in, out written, the projections' outputs (queries, keys,
// values, the output gate, the two per-head gates) written and read back.
KernelCost linear_attention_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t sequences, bool decode,
                                 bool prefix) {
  const std::int64_t h = m.hidden, b = m.dtype_bytes, t = m.tp * tokens, w = routing::linear_attention_weights(m);
  const std::int64_t qk = routing::linear_qk_width(m), v = routing::linear_v_width(m), heads = m.linear.value_heads / m.tp;
  const std::int64_t matrix = heads * m.linear.key_dim * m.linear.value_dim, state = routing::linear_state_bytes(m);
  const std::int64_t core = 8 * t * matrix;
  std::int64_t states = 0;
  if (decode) {
    states = 2 * sequences * state;
  } else {
    states = 2 * b * matrix * ((t + 63) / 64) + sequences * state * (prefix ? 2 : 1);
  }
  return KernelCost{
      .flops = 2 * t * w + core,
      .bytes = routing::linear_weight_bytes(m, w) + b * t * (2 * h + 2 * (2 * qk + 2 * v + 2 * heads)) + states,
      .gemm_flops = 2 * t * w,
      .core_flops = core,
      .elementwise_bytes = norm_bytes(m, tokens),
      .elementwise_launches = 2,
  };
}

// A sliding window of W positions: the i-th new token (from 1) attends to min(P + i, W) keys, so
// the core is T (2 / S) sum_i min(P + i, W) (Q + O), which is T (2P + S + 1)(Q + O) where P + S <= W;
// of the prefix, the last min(P, W) tokens are read.
KernelCost attention_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t s, std::int64_t prefix, std::int64_t window) {
  if (window == routing::kLinearLayer) return linear_attention_cost(m, tokens, m.tp * tokens / s, false, prefix > 0);
  if (routing::is_sparse_mla(m)) return sparse_attention_cost(m, tokens, s, prefix);
  const std::int64_t h = m.hidden, b = m.dtype_bytes, t = m.tp * tokens, w = routing::attention_weights(m);
  const routing::AttentionWidths a = routing::attention_widths(m);
  std::int64_t core = t * (2 * prefix + s + 1) * (a.q + a.out);
  if (window > 0 && prefix + s > window) {
    core = capped_core(t, s, prefix, window, a.q + a.out);
    prefix = std::min(prefix, window);
  }
  std::int64_t prefix_gemm = 0, prefix_bytes = 0;
  if (prefix > 0) {
    const std::int64_t cached = t * prefix / s;  // the group's sequences' prefix tokens
    prefix_bytes = cached * routing::kv_cache_token_bytes(m);
    if (routing::is_mla(m)) {
      const auto& l = m.mla;
      prefix_gemm = 2 * cached * l.kv_lora_rank * (m.attention_heads / m.tp) * (l.qk_nope_head_dim + l.v_head_dim);
      prefix_bytes += 2 * b * cached * (a.k + a.v);
    }
  }
  return KernelCost{
      .flops = 2 * t * w + prefix_gemm + core,
      .bytes = routing::linear_weight_bytes(m, w) + b * t * (2 * h + 2 * (a.latent + a.q + a.k + a.v)) + prefix_bytes,
      .gemm_flops = 2 * t * w + prefix_gemm,
      .core_flops = core,
      .elementwise_bytes = layer_elementwise_bytes(m, tokens),
      .elementwise_launches = 3,
  };
}

KernelCost mixed_attention_cost(const routing::MoeModelSpec& m, std::int64_t decode_tokens, std::int64_t context,
                                std::int64_t queries, std::int64_t chunk_tokens, std::int64_t chunk, std::int64_t prompt,
                                std::int64_t window) {
  const KernelCost decode = decode_attention_cost(m, decode_tokens, context, queries, window);
  if (chunk_tokens <= 0) return decode;
  const KernelCost prefill = chunk >= prompt ? attention_cost(m, chunk_tokens, prompt, 0, window)
                                             : attention_cost(m, chunk_tokens, chunk, (prompt - chunk) / 2, window);
  if (decode_tokens <= 0) return prefill;
  const bool linear = window == routing::kLinearLayer;
  const KernelCost shared{.bytes = routing::linear_weight_bytes(m, linear ? routing::linear_attention_weights(m) : routing::attention_weights(m)),
                          .elementwise_launches = linear ? 2 : 3};
  return decode + prefill - shared;
}

KernelCost attention_projection_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool linear) {
  const std::int64_t h = m.hidden, b = m.dtype_bytes, t = m.tp * tokens;
  if (linear) {  // a linear-attention layer's projections: its input and output widths
    const std::int64_t w = routing::linear_attention_weights(m), qk = routing::linear_qk_width(m), v = routing::linear_v_width(m);
    return KernelCost{.flops = 2 * t * w,
                      .bytes = routing::linear_weight_bytes(m, w) + b * t * (2 * h + 2 * (2 * qk + 2 * v + 2 * (m.linear.value_heads / m.tp)) + v),
                      .gemm_flops = 2 * t * w};
  }
  const std::int64_t w = routing::attention_weights(m);
  const routing::AttentionWidths a = routing::attention_widths(m);
  return KernelCost{
      .flops = 2 * t * w,
      .bytes = routing::linear_weight_bytes(m, w) + b * t * (2 * h + 2 * a.latent + a.out + a.q + a.k + a.v),
      .gemm_flops = 2 * t * w,
  };
}

KernelCost mla_up_projection_cost(const routing::MoeModelSpec& m, std::int64_t tokens) {
  if (!routing::is_mla(m)) return {};
  const auto& l = m.mla;
  const std::int64_t b = m.dtype_bytes, t = m.tp * tokens, heads = m.attention_heads / m.tp;
  const std::int64_t q_out = l.q_lora_rank > 0 ? heads * (l.qk_nope_head_dim + l.qk_rope_head_dim) : 0;
  const std::int64_t kv_out = heads * (l.qk_nope_head_dim + l.v_head_dim);
  const std::int64_t w = l.q_lora_rank * q_out + l.kv_lora_rank * kv_out;
  return KernelCost{
      .flops = 2 * t * w,
      .bytes = routing::linear_weight_bytes(m, w) + b * t * (l.q_lora_rank + l.kv_lora_rank + q_out + kv_out),
      .gemm_flops = 2 * t * w,
  };
}

KernelCost mla_kv_expansion_cost(const routing::MoeModelSpec& m, std::int64_t tokens) {
  if (!routing::is_mla(m) || tokens <= 0) return {};
  const auto& l = m.mla;
  const std::int64_t b = m.dtype_bytes, t = m.tp * tokens, heads = m.attention_heads / m.tp;
  const std::int64_t w = l.kv_lora_rank * heads * (l.qk_nope_head_dim + l.v_head_dim);
  const routing::AttentionWidths a = routing::attention_widths(m);
  return KernelCost{
      .flops = 2 * t * w,
      .bytes = routing::linear_weight_bytes(m, w) + b * t * (routing::kv_cache_width(m) + a.k + a.v),
      .gemm_flops = 2 * t * w,
  };
}

KernelCost decode_attention_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t c, std::int64_t queries,
                                 std::int64_t window, std::int64_t top_context) {
  if (window == routing::kLinearLayer) return linear_attention_cost(m, tokens, m.tp * tokens / queries, true, false);
  if (window > 0) c = std::min(c, window);
  const std::int64_t h = m.hidden, b = m.dtype_bytes, t = m.tp * tokens, w = routing::attention_weights(m);
  const routing::AttentionWidths a = routing::attention_widths(m);
  if (routing::is_sparse_mla(m)) {
    // DeepSeek Sparse Attention: the indexer scores all C cached keys (reading their index cache),
    // the attention reads and scores the top min(C, K) latents.
    const auto& l = m.mla;
    const std::int64_t top = top_context >= 0 ? std::min(top_context, l.index_topk) : std::min(c, l.index_topk);
    const std::int64_t cache = t * (top * routing::attention_cache_token_bytes(m) + c * routing::index_cache_token_bytes(m)) / queries;
    const std::int64_t index = 2 * t * c * l.index_n_heads * l.index_head_dim;
    return KernelCost{.flops = 2 * t * w + index + 2 * t * top * (a.q + a.out),
                      .bytes = routing::linear_weight_bytes(m, w) + cache + b * t * (2 * h + 2 * (a.latent + a.q + a.out)),
                      .gemm_flops = 2 * t * w + index,
                      .core_flops = 2 * t * top * (a.q + a.out),
                      .elementwise_bytes = layer_elementwise_bytes(m, tokens),
                      .elementwise_launches = 3};
  }
  const std::int64_t cache = t * c * routing::kv_cache_token_bytes(m) / queries;
  if (routing::is_mla(m)) {
    // Absorbed: each head's query and output live in the kv latent's space (kv_lora_rank, the
    // query with its RoPE part), scored against the cached latent and RoPE key, the latent as values.
    const auto& l = m.mla;
    const std::int64_t heads = m.attention_heads / m.tp, q = heads * (l.kv_lora_rank + l.qk_rope_head_dim),
                       out = heads * l.kv_lora_rank;
    return KernelCost{.flops = 2 * t * w + 2 * t * c * (q + out),
                      .bytes = routing::linear_weight_bytes(m, w) + cache + b * t * (2 * h + 2 * (a.latent + q + out)),
                      .gemm_flops = 2 * t * w,
                      .core_flops = 2 * t * c * (q + out),
                      .elementwise_bytes = layer_elementwise_bytes(m, tokens),
                      .elementwise_launches = 3};
  }
  return KernelCost{.flops = 2 * t * w + 2 * t * c * (a.q + a.out),
                    .bytes = routing::linear_weight_bytes(m, w) + cache + b * t * (2 * h + 2 * (a.q + a.k + a.v)),
                    .gemm_flops = 2 * t * w,
                    .core_flops = 2 * t * c * (a.q + a.out),
                    .elementwise_bytes = layer_elementwise_bytes(m, tokens),
                    .elementwise_launches = 3};
}

KernelCost router_cost(const routing::MoeModelSpec& m, std::int64_t t) {
  const std::int64_t h = m.hidden, b = m.dtype_bytes, e = m.experts;
  return KernelCost{.flops = 2 * t * h * e, .bytes = b * (h * e + t * h) + 4 * t * e, .elementwise_bytes = b * t * h * (1 + m.top_k),
                    .elementwise_launches = 1};
}

namespace {

// A SwiGLU FFN of width f over n rows, its 3 h f weights `weight_bytes` bytes.
KernelCost swiglu_cost(const routing::MoeModelSpec& m, std::int64_t n, std::int64_t f, std::int64_t weight_bytes) {
  if (n <= 0) return {};
  const std::int64_t h = m.hidden, b = m.dtype_bytes;
  return KernelCost{.flops = 2 * n * h * f * 3,
                    .bytes = weight_bytes + b * n * (2 * h + 3 * f),
                    .gemm_flops = 2 * n * h * f * 3,
                    .activation_bytes = 3 * b * n * f,
                    .elementwise_launches = 1};
}

}  // namespace

KernelCost expert_cost(const routing::MoeModelSpec& m, std::int64_t n) {
  return swiglu_cost(m, n, m.expert_ffn, routing::linear_weight_bytes(m, 3 * m.hidden * m.expert_ffn));
}

KernelCost routed_expert_cost(const routing::MoeModelSpec& m, std::int64_t n) {
  return swiglu_cost(m, n, m.expert_ffn, routing::expert_weight_bytes(m, 3 * m.hidden * m.expert_ffn));
}

KernelCost reduce_cost(const routing::MoeModelSpec& m, std::int64_t t, std::int64_t r) {
  const std::int64_t h = m.hidden, b = m.dtype_bytes;
  return KernelCost{.flops = 2 * r * h, .bytes = b * h * (r + t)};
}

KernelCost backward_cost(const KernelCost& forward, const KernelCost& weight) {
  KernelCost b = 2 * forward - weight;
  b.elementwise_bytes = forward.elementwise_bytes;  // all in the input-gradient pass
  b.elementwise_launches = forward.elementwise_launches;
  return b;
}

KernelCost norm_recompute_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool recompute) {
  if (!recompute) return {};
  return KernelCost{.elementwise_bytes = norm_bytes(m, tokens), .elementwise_launches = 2};
}

KernelCost adam_cost(std::int64_t params, std::int64_t grad_bytes, std::int64_t moment_bytes, std::int64_t weight_bytes) {
  return KernelCost{.flops = 12 * params, .bytes = (grad_bytes + 2 * 4 + 4 * moment_bytes + weight_bytes) * params};
}

KernelCost dense_ffn_cost(const routing::MoeModelSpec& m, std::int64_t tokens) {
  // The dense FFN's columns split over the tensor-parallel GPUs, each over all their tokens.
  const std::int64_t f = m.dense_ffn / m.tp;
  return swiglu_cost(m, m.tp * tokens, f, routing::linear_weight_bytes(m, 3 * m.hidden * f));
}

KernelCost lm_head_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool loss) {
  // Vocabulary-parallel with tensor parallelism: a GPU's share of the vocabulary over all the
  // tensor-parallel GPUs' tokens.
  const std::int64_t h = m.hidden, v = vocab_share(m), b = m.dtype_bytes, n = m.tp * tokens;
  KernelCost c{.flops = 2 * n * h * v, .bytes = b * (h * v + n * h + n * v)};
  if (loss) {
    c.flops += 4 * n * v;
    c.bytes += 2 * b * n * v;
  }
  return c;
}

std::int64_t mtp_projection_params(const routing::MoeModelSpec& m) { return 2 * m.hidden * (m.hidden / m.tp); }

KernelCost heads_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool loss) {
  const std::int64_t h = m.hidden, b = m.dtype_bytes, n = m.tp * tokens, w = mtp_projection_params(m);
  const KernelCost projection{.flops = 2 * n * w, .bytes = routing::linear_weight_bytes(m, w) + b * n * (2 * h + h / m.tp), .gemm_flops = 2 * n * w};
  const KernelCost head = m.vocab > 0 ? lm_head_cost(m, tokens, loss) : KernelCost{};
  return (1 + m.mtp_layers) * head + m.mtp_layers * projection;
}

std::int64_t vocab_share(const routing::MoeModelSpec& m) { return (m.vocab + m.tp - 1) / m.tp; }

std::int64_t embedding_params(const routing::MoeModelSpec& m) { return vocab_share(m) * m.hidden; }

std::int64_t moe_layer_replicated(const routing::MoeModelSpec& m, int layer) {
  return routing::layer_attention_weights(m, m.dense_layers + layer) + m.hidden * m.experts +
         m.shared_experts * 3 * m.hidden * (m.expert_ffn / m.shared_tp());
}

std::int64_t dense_layers_params(const routing::MoeModelSpec& m) {
  std::int64_t p = 0;
  for (int l = 0; l < m.dense_layers; ++l) p += routing::layer_attention_weights(m, l) + 3 * m.hidden * (m.dense_ffn / m.tp);
  return p;
}

GpuParams gpu_params(const routing::MoeModelSpec& m, const std::vector<routing::Placement>& placements) {
  return gpu_params(m, placements, 0, static_cast<int>(placements.size()));
}

GpuParams gpu_params(const routing::MoeModelSpec& m, const std::vector<routing::Placement>& placements, int first, int last) {
  const std::int64_t expert = 3 * m.hidden * m.expert_ffn;
  GpuParams p;
  p.replicated = (first == 0 ? dense_layers_params(m) + embedding_params(m) : 0) +
                 (last == m.moe_layers ? embedding_params(m) + m.mtp_layers * mtp_projection_params(m) : 0);
  p.kept = (first == 0 ? embedding_params(m) : 0) + (last == m.moe_layers ? embedding_params(m) : 0);
  for (int l = first; l < last; ++l) {
    p.replicated += moe_layer_replicated(m, l);
    p.kept += m.hidden * m.experts;
    p.experts += placements[static_cast<std::size_t>(l)].slots_per_gpu * expert;
  }
  return p;
}

std::int64_t weight_bytes(const routing::MoeModelSpec& m, const GpuParams& p) {
  return routing::linear_weight_bytes(m, p.replicated - p.kept) + routing::expert_weight_bytes(m, p.experts) + m.dtype_bytes * p.kept;
}

ModelParams model_params(const routing::MoeModelSpec& spec) {
  routing::MoeModelSpec m = spec;
  m.tp = 1;
  const std::int64_t expert = 3 * m.hidden * m.expert_ffn, rest = dense_layers_params(m) + embedding_params(m);
  const int main = m.moe_layers - m.mtp_layers;
  std::int64_t replicated = 0;  // the main model's MoE layers' (their attention may differ by layer)
  for (int l = 0; l < main; ++l) replicated += moe_layer_replicated(m, l);
  // An MTP module's layer: the model's next layer's shape.
  const std::int64_t mtp_layer = moe_layer_replicated(m, main) + m.experts * expert;
  return {.total = replicated + main * m.experts * expert + rest + embedding_params(m),
          .active = replicated + main * m.top_k * expert + rest,
          .mtp = m.mtp_modules * (mtp_layer + mtp_projection_params(m))};
}

std::int64_t optimizer_share(const GpuParams& p, int gpus, int groups) {
  return (p.replicated + gpus - 1) / gpus + (p.experts + groups - 1) / groups;
}

}  // namespace moesim::models
