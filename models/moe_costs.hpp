// FLOPs and HBM bytes of the kernels of one MoE transformer layer's forward pass, per GPU.
// T = tokens on the GPU, H = hidden, F = expert FFN size, E = experts, k = top_k,
// S = sequence length, b = bytes per element (2 for bf16), q = heads * head_dim,
// kv = kv_heads * head_dim. A multiply-add counts as 2 FLOPs.
//
// attention: W = the block's weights on this GPU (routing::attention_weights; every weight
// multiplies every token once: 2*T*W FLOPs for the projections), and per token the widths of
// routing::attention_widths: L the down projections' latents (MLA only), Q, K, V the queries,
// keys and values the attention core reads, O the output projection's input. Multi-head / GQA:
// W = H*(q + 2*kv) + q*H (or model.attention_params), L = 0, Q = O = q, K = V = kv. DeepSeek's MLA (model.mla, h heads,
// ranks rq and rkv, head dims dn + dr for queries and keys, dv for values):
// W = H*(rq + rkv + dr) + h*(rq*(dn + dr) + rkv*(dn + dv) + dv*H), L = rq + rkv + dr,
// Q = h*(dn + dr), K = h*dn + dr, V = O = h*dv.
// attention (prefill and training, causal, per token t of a length-S sequence attending to
// (S+1)/2 keys on average; MLA with its keys and values expanded per head, as in training):
//   FLOPs = 2*T*W + T*(S+1)*(Q + O)   projections; QK^T and PV: 2 matmuls x 2 FLOPs x (S+1)/2 keys
//   bytes = b*W + b*T*(2*H + 2*(L + Q + K + V))  weights once; x in, out written; the latents and
//                                                q/k/v written and read back
// attention (decode: each of T sequences adds one token and attends to its C cached keys):
//   FLOPs = 2*T*W + 2*T*C*(Q + O);  bytes = b*W + T*C*Dc + b*T*(2*H + 2*(Q + K + V))
//   With speculative decoding each sequence has 1 + d tokens (d drafts): T counts them all, and
//   the cache is read once per sequence, T/(1 + d) times C*Dc (each also attends to the up to d
//   tokens before it in the step, left out).
//   D = elements cached per token: 2*kv, or model.kv_cache_dim; Dc its bytes (routing::kv_cache_token_bytes:
//   D at model.kv_cache_dtype's bytes; an fp8 MLA cache in FlashMLA's layout). MLA decodes absorbed (DeepSeek-V3's
//   inference code, FlashMLA): the keys' and values' up projections fold into the query and the
//   output, so each head scores a (rkv + dr)-wide query against the cached latent and RoPE key
//   (D = rkv + dr) and sums rkv-wide latents: Q = h*(rkv + dr), O = h*rkv, and the projections'
//   FLOPs are still 2*T*W; its intermediates are L + Q + O.
// DeepSeek Sparse Attention (model.mla.index_topk K, index_n_heads Hi, index_head_dim Di): MLA
//   absorbed in every pass (Q = h*(rkv + dr), O = h*rkv, K = rkv + dr, V = 0), each token over
//   min(P + i, K) keys, plus the indexer: 2*Hi*Di FLOPs for every earlier key (GEMM FLOPs), its
//   weights in W, and in decode its cache (Di + 4*ceil(Di/128) bytes a key) read whole while
//   the attention reads min(C, K) latents.
// A sliding layer (model.sliding_window W): in prefill and training the i-th token of a sequence
//   attends to min(i, W) keys (min(P + i, W) after a cached prefix, of which the last min(P, W)
//   are read), so (S+1)/2 above becomes their mean; in decode C becomes min(C, W).
// attention projections' weight gradients (ZB-H1's weight pass; the input gradients and the
// attention core's backward are the rest of the backward's 2x):
//   FLOPs = 2*T*W
//   bytes = b*W                                weight gradients written
//         + b*T*(2*H + 2*L + O + Q + K + V)    their inputs (x, latents, attention output) and
//                                              output gradients (dLatents, dQKV, dOut) read
// The weight reads above (b*W, b*3*H*F) are at model.weight_dtype's bytes (wb; fp8: 1, the
// block scales' 4 bytes per 128 x 128 left out), the routed experts' at
// model.expert_weight_dtype's; the router's, the LM head's and every activation's at b.
// MLA's up projections alone (recomputed in the backward pass with workload.recompute_modules
// mla_up_proj): the query's (with a query latent) and the keys' and values' from their latents,
// Wu = h*(rq*(dn + dr) + rkv*(dn + dv)) (without a query latent only the latter):
//   FLOPs = 2*T*Wu;  bytes = b*Wu + b*T*(rq + rkv + Q + h*dn + V)  latents in, their outputs out
//   (Q only with a query latent).
// router: FLOPs = 2*T*H*E; bytes = b*(H*E + T*H) + 4*T*E (fp32 logits)
// expert with n tokens (SwiGLU: gate and up projections, silu*mul, down projection):
//   FLOPs = 2*n*H*F*3;  bytes = b*(3*H*F) + b*n*(2*H + 6*F)
//   (weights once; tokens in and out; the 2F gate/up output written and read, the F
//   activation written and read; of these the SwiGLU's 3F are activation_bytes, below). A GPU
//   runs its local experts back to back (grouped GEMM).
// reduce (weighted sum of a token's returned expert outputs) over r returned copies:
//   FLOPs = 2*r*H;  bytes = b*H*(r + T)
// MTP input projection (per MTP layer run; the concatenated hidden state and next-token
// embedding, 2H wide, to H) over n tokens: FLOPs = 2*n*2H*H; bytes = b*(2H*H + n*3H).
// LM head (the output projection to V = vocab logits) over n tokens:
//   FLOPs = 2*n*H*V;  bytes = b*(H*V + n*H + n*V)
//   training adds the loss (softmax cross-entropy: the logits read, their gradient written):
//   FLOPs += 4*n*V;  bytes += 2*b*n*V. Its backward: 2x the projection (input and weight
//   gradients). The embedding lookup (n rows of H read) is left out: a few microseconds.
// optimizer (mixed-precision Adam, as Megatron-LM keeps it) over P parameters: per parameter
//   read the gradient (g bytes), read and write the fp32 master weight and both moments (m bytes
//   each), write the weight (w bytes): bytes = (g + 2*4 + 2*2*m + w)*P, with bf16 gradients and
//   weights and fp32 moments 28*P; FLOPs = 12*P (memory-bound).
// A training step's backward pass runs every GEMM twice at the forward's size (input and weight
// gradients): 2x the forward's FLOPs and bytes (models/moe_forward.hpp).
// Tensor parallelism (m.tp = n > 1, routing/moe_spec.hpp): attention, the dense FFN and the LM
// head of one GPU run over the n T tokens of its tensor-parallel group with 1/n of the heads, FFN
// columns and vocabulary (W, the widths, F and V above become the GPU's shares, T becomes n T):
// the same FLOPs per GPU where the heads divide, 1/n of the weights read, and in decode the KV
// cache of n T sequences for its heads (a latent whole: n times the reads). MLA's down
// projections are not split: every GPU of the group runs them whole over the n T tokens. The
// router, the routed experts and the reduce run on the GPU's own T tokens; the shared experts
// are split as the dense FFN is (MoeModelSpec::shared_tp(); the driver passes their share).
// Memory-bound kernels between the GEMMs (apart only with compute.elementwise_kernels; else the
// SwiGLU's bytes count with the expert kernel's and the rest are not modelled): attention's
// elementwise_bytes, per GPU token the layer's two RMSNorms with their residual adds, 8 b H
// (norm_bytes), and per tensor-parallel group token the rotary embedding of its queries and keys
// read and written, 2 b (Q + K) (MLA: 2 b (h + 1) dr, the RoPE parts); the router's, the
// permutation into expert order, b T H (1 + k); an expert's activation_bytes, its SwiGLU, 3 b n F
// (the expert bytes above less these: b*(3*H*F) + b*n*(2*H + 3*F) in the GEMMs' kernel).
// Simplifications, each deepened by a later model: no softmax kernels, no FP8 casts; the
// attention core as FLOPs and bytes (KernelCost::core_flops), at the roofline's FLOP efficiency
// or at compute.attention_efficiency where that is set (no tiling model of its own).
#pragma once

#include <cstdint>
#include <vector>

#include "models/roofline.hpp"
#include "routing/dispatch_plan.hpp"
#include "routing/moe_spec.hpp"

namespace moesim::models {

// Tokens of seq_len-token sequences, each attending causally to the ones before it; with a cached
// prefix (prefill with workload.cached_prefix), each also to the prefix's `prefix` tokens, whose
// KV cache is read (MLA: its latents expanded into per-head keys and values first). window > 0
// (a sliding layer, routing::layer_window): each attends to the last `window` positions only
// (itself included), and reads no more of the prefix than that. window == routing::kLinearLayer:
// a linear-attention layer (model.linear_attention), whose cost the context does not change
// (linear_attention_cost in the .cpp; the header comment above gives the formulas' kin).
KernelCost attention_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t seq_len, std::int64_t prefix = 0,
                          std::int64_t window = 0);
// Decode over `tokens` new tokens, `queries` of them per sequence (1 + draft tokens), which read
// their sequence's cache once; with a window, the last `window` keys of it. top_context >= 0: the
// context sparse attention's top-k part reads (a mean of min(context, top-k) over sequences whose
// contexts differ), else min(context, top-k).
KernelCost decode_attention_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t context, std::int64_t queries = 1,
                                 std::int64_t window = 0, std::int64_t top_context = -1);
// A decode step with chunked prefill (workload.prefill_chunk): `decode_tokens` as
// decode_attention_cost, and `chunk_tokens` tokens of prompts of `prompt` tokens that the GPU
// prefills `chunk` tokens a step, as attention_cost: a chunk shorter than the prompt at its mean
// offset, (prompt - chunk) / 2 earlier tokens of the prompt cached, whose keys it reads (the
// offsets 0, chunk, 2 chunk, ... of a prompt average so, and the work is linear in them), a
// longer one as whole prompts. The two share the projections' weights, read once, and the
// norms' and rotary embedding's kernels.
KernelCost mixed_attention_cost(const routing::MoeModelSpec& m, std::int64_t decode_tokens, std::int64_t context,
                                std::int64_t queries, std::int64_t chunk_tokens, std::int64_t chunk, std::int64_t prompt,
                                std::int64_t window = 0);
// The attention projections' weight gradients (ZB-H1's weight pass): of a softmax layer, or of a
// linear-attention layer's projections (`linear`).
KernelCost attention_projection_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool linear = false);
// MLA's up projections (nothing without model.mla), over the tensor-parallel group's tokens.
KernelCost mla_up_projection_cost(const routing::MoeModelSpec& m, std::int64_t tokens);
// The keys' and values' up projection alone over `tokens` tokens' latents (the group's, the
// GPU's heads), as context parallelism that gathers MLA's latent (parallelism.cp_gather: latent)
// runs it over the other GPUs' tokens: FLOPs = 2*t*rkv*h*(dn + dv); bytes = the weights once,
// b*t*(rkv + dr) latents read and b*t*(K + V) keys and values written.
KernelCost mla_kv_expansion_cost(const routing::MoeModelSpec& m, std::int64_t tokens);
KernelCost router_cost(const routing::MoeModelSpec& m, std::int64_t tokens);
// A layer's two RMSNorms with their residual adds over the GPU's `tokens` tokens (part of
// attention_cost's elementwise_bytes): 8 b H a token.
std::int64_t norm_bytes(const routing::MoeModelSpec& m, std::int64_t tokens);
// A shared expert's (weights at model.weight_dtype), and a routed one's (model.expert_weight_dtype).
KernelCost expert_cost(const routing::MoeModelSpec& m, std::int64_t tokens);
KernelCost routed_expert_cost(const routing::MoeModelSpec& m, std::int64_t tokens);
// One dense layer's SwiGLU FFN (dense_ffn; the GPU's share with tensor parallelism).
KernelCost dense_ffn_cost(const routing::MoeModelSpec& m, std::int64_t tokens);
KernelCost reduce_cost(const routing::MoeModelSpec& m, std::int64_t tokens, std::int64_t returned);
// A backward pass of `forward`: its GEMMs twice (input and weight gradients), less `weight`, the
// weight gradients a ZB-H1 weight pass runs instead; its memory-bound kernels apart (the norms',
// the rotary embedding's, the permutation's: elementwise_bytes, and every such kernel's launch)
// once, all in this pass, as their backwards move what their forwards move, and the SwiGLU's
// bytes (activation_bytes) twice like the GEMMs.
KernelCost backward_cost(const KernelCost& forward, const KernelCost& weight = {});
// The layer's two RMSNorms rebuilt (recompute_modules layernorm) before its attention's backward:
// norm_bytes and their two kernels, as elementwise work (nothing without `recompute`).
KernelCost norm_recompute_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool recompute);
KernelCost adam_cost(std::int64_t params, std::int64_t grad_bytes = 2, std::int64_t moment_bytes = 4, std::int64_t weight_bytes = 2);
// The LM head over `tokens` tokens, with the loss where `loss`.
KernelCost lm_head_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool loss);
// What runs after the last MoE layer over `tokens` tokens: the LM head, and per MTP layer run
// (m.mtp_layers) its input projection (2H -> H; the GPU's H / tp columns over the tensor-parallel
// group's tokens, like the LM head) and the head again, each with the loss where `loss`.
KernelCost heads_cost(const routing::MoeModelSpec& m, std::int64_t tokens, bool loss);
// An MTP module's input projection's weights on one GPU (2H x H / tp).
std::int64_t mtp_projection_params(const routing::MoeModelSpec& m);

// Parameters one GPU holds: `replicated` on every GPU (per MoE layer attention, router and
// shared experts; the dense layers; the embedding and the LM head), `experts` in its expert
// slots (replicas included; every GPU has the same number of slots).
struct GpuParams {
  std::int64_t replicated = 0, experts = 0;
  std::int64_t kept = 0;  // of replicated: the routers', embedding's and LM head's, at model.dtype
  std::int64_t total() const { return replicated + experts; }
};
// The bytes of those weights: the linear layers' at model.weight_dtype, the routed experts' at
// model.expert_weight_dtype, the kept ones at model.dtype.
std::int64_t weight_bytes(const routing::MoeModelSpec& m, const GpuParams& p);
GpuParams gpu_params(const routing::MoeModelSpec& m, const std::vector<routing::Placement>& placements);
// The same for a pipeline stage holding MoE layers [first, last) (and the dense layers and the
// embedding when first is 0, the LM head when last is the model's last).
GpuParams gpu_params(const routing::MoeModelSpec& m, const std::vector<routing::Placement>& placements, int first, int last);
// The weights every GPU holds for MoE layer `layer` (attention, router, shared experts) and for
// all dense layers together; gpu_params' replicated count is their sum over the layers.
std::int64_t moe_layer_replicated(const routing::MoeModelSpec& m, int layer);
std::int64_t dense_layers_params(const routing::MoeModelSpec& m);
// The embedding's weights, and as many the LM head's (vocab x hidden each; with tensor
// parallelism a GPU's share of the vocabulary, vocab_share).
std::int64_t embedding_params(const routing::MoeModelSpec& m);
std::int64_t vocab_share(const routing::MoeModelSpec& m);
// The whole model's parameters (every expert once, tensor parallelism aside) and those one token
// uses: per MoE layer the attention, the router and its top_k routed and shared experts; the dense
// layers; the LM head (the embedding's lookup reads one row, left out). The main model's: the MTP
// modules' apart (they share the embedding and the head).
struct ModelParams {
  std::int64_t total = 0, active = 0;
  std::int64_t mtp = 0;  // the MTP modules' own (m.mtp_modules: a layer and a projection each), not in total
};
ModelParams model_params(const routing::MoeModelSpec& m);
// A sharded optimizer's share of a GPU's parameters: the replicated ones over all `gpus`, the
// experts over the `groups` EP groups (rounded up).
std::int64_t optimizer_share(const GpuParams& p, int gpus, int groups);

}  // namespace moesim::models
