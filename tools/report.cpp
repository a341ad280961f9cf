#include "tools/report.hpp"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "models/moe_costs.hpp"
#include "models/reliability.hpp"
#include "routing/traces.hpp"
#include "sim/assert.hpp"
#include "sim/units.hpp"
#include "topology/cluster.hpp"

namespace moesim::tools {
namespace {

using models::Stage;
using sim::format_us;

// A JSON string's contents: quotes, backslashes and control characters escaped.
std::string json_escape(const std::string& s) {
  std::string o;
  for (const char c : s) {
    if (c == '"' || c == '\\') (o += '\\') += c;
    else if (static_cast<unsigned char>(c) < 0x20) o += fmt::format("\\u{:04x}", static_cast<int>(c));
    else o += c;
  }
  return o;
}


std::size_t idx(Stage s) { return static_cast<std::size_t>(s); }

std::string mean_us(sim::Time sum, int n) {
  return fmt::format("{:.6f}", static_cast<double>(sum.count_ps()) / n / 1e6);
}

// A ratio rounded to 1e-9 first, so that summation-order noise never flips its printed digits.
double steady(double x) { return std::nearbyint(x * 1e9) / 1e9; }

std::string ratio(double num, double den) { return fmt::format("{:.4f}", den > 0 ? num / den : 0.0); }

// Of a GPU's compute time (every stage but the network waits), the share whose kernel times came
// from the measured profile.
double profiled_fraction(const models::GpuStats& g) {
  double compute = 0, profiled = 0;
  for (const Stage s : models::kStages) {
    if (models::is_network_wait(s)) continue;
    compute += static_cast<double>(g.stage_total[idx(s)].count_ps());
    profiled += static_cast<double>(g.stage_profiled[idx(s)].count_ps());
  }
  return compute > 0 ? steady(profiled / compute) : 0.0;
}

// Where a compute stage's time came from, for the summary's breakdown: "  (profile)",
// "  (roofline)", or both with their shares.
std::string time_source(sim::Time total, sim::Time profiled) {
  if (total <= sim::Time::zero()) return "";
  if (profiled >= total) return "  (profile)";
  if (profiled <= sim::Time::zero()) return "  (roofline)";
  const double p = 100 * static_cast<double>(profiled.count_ps()) / static_cast<double>(total.count_ps());
  return fmt::format("  (profile {:.0f}%, roofline {:.0f}%)", p, 100 - p);
}

// Tokens a sequence gains in a decode step on average: its new one, and with draft tokens each
// draft accepted with acceptance_rate if the one before it was: 1 + p + ... + p^d.
double tokens_per_sequence(const models::ForwardSpec& f) {
  double sum = 1, term = 1;
  for (int i = 0; i < f.draft_tokens; ++i) sum += term *= f.acceptance_rate;
  return sum;
}

// Tokens one step processes: every GPU's micro-batch, times the micro-batches of a training
// step; with pipeline stages a micro-batch's tokens pass through every stage, so the GPUs of one
// stage hold them all. Speculative decoding: the tokens the sequences gain (expected), not those
// verified; without draft tokens a "sequence" is a token and gains one.
double step_tokens(const scenarios::Scenario& sc) {
  const auto& f = sc.forward;
  return static_cast<double>(f.sequences()) * tokens_per_sequence(f) * f.micro_batches * sc.cluster.nodes * sc.cluster.gpus_per_node / f.pp;
}

// Decode with chunked prefill: the prompt tokens one step prefills (every GPU's chunk, per
// micro-batch and stage as above).
double step_prompt_tokens(const scenarios::Scenario& sc) {
  const auto& f = sc.forward;
  return static_cast<double>(f.prefill_chunk) * f.micro_batches * sc.cluster.nodes * sc.cluster.gpus_per_node / f.pp;
}

struct Totals {
  std::int64_t routed = 0, computed = 0, dropped = 0, padded = 0, bytes = 0, scale_out_bytes = 0;
  double gpu_imbalance = 0, expert_imbalance = 0, gpu_cv = 0;
};

// Coefficient of variation of the assignments computed per GPU in one layer.
double gpu_cv(const models::LayerStats& l, int gpus) {
  const double mean = static_cast<double>(l.computed) / gpus;
  if (mean <= 0) return 0.0;
  const double var = std::max(l.gpu_tokens_sq / gpus - mean * mean, 0.0);
  return std::sqrt(var) / mean;
}

Totals totals(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  Totals t;
  // A layer runs on its pipeline stage's GPUs.
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node / sc.forward.pp;
  for (const auto& l : r.stats.backward_layers()) {
    t.bytes += l.network_bytes;
    t.scale_out_bytes += l.scale_out_bytes;
  }
  for (const auto& l : r.stats.layers()) {
    t.routed += l.routed;
    t.computed += l.computed;
    t.dropped += l.dropped;
    t.padded += l.padded;
    t.bytes += l.network_bytes;
    t.scale_out_bytes += l.scale_out_bytes;
    const double gpu_mean = static_cast<double>(l.computed) / gpus;
    const double expert_mean = static_cast<double>(l.routed) / static_cast<double>(l.expert_slots);
    if (gpu_mean > 0) t.gpu_imbalance = std::max(t.gpu_imbalance, l.max_gpu_tokens / gpu_mean);
    t.gpu_cv = std::max(t.gpu_cv, gpu_cv(l, gpus));
    if (expert_mean > 0) t.expert_imbalance = std::max(t.expert_imbalance, l.max_expert_tokens / expert_mean);
  }
  return t;
}

// Model FLOPs utilisation and cost of the step.
struct Economics {
  double mfu = 0;
  double cost_per_step = 0;
  double cost_per_million_tokens = 0;
};

Economics economics(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  Economics e;
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const double seconds = r.stats.step_time().to_seconds();
  if (seconds <= 0) return e;
  e.mfu = r.model_flops / (gpus * static_cast<double>(sc.cluster.gpu.peak_bf16.flop_per_s()) * seconds);
  e.cost_per_step = sc.gpu_hour_price * gpus * seconds / 3600;
  const double tokens = step_tokens(sc);
  e.cost_per_million_tokens = tokens > 0 ? e.cost_per_step / tokens * 1e6 : 0;
  return e;
}

// The cluster's power draw (cluster.power: its GPUs at their power, by default the rated board
// power, the servers' other parts, times the PUE) and the energy a million tokens take at it.
// Zero where the GPU's power is not known.
struct Power {
  double kw = 0;
  double kwh_per_million_tokens = 0;
};
Power cluster_power(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  Power p;
  if (sc.gpu_power_w <= 0) return p;
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  p.kw = (gpus * sc.gpu_power_w + sc.cluster.nodes * sc.node_power_w) * sc.pue / 1e3;
  const double seconds = r.stats.step_time().to_seconds(), tokens = step_tokens(sc);
  if (seconds > 0 && tokens > 0) p.kwh_per_million_tokens = p.kw * seconds / 3600 / tokens * 1e6;
  return p;
}

// Failures and checkpoints over a long run at this step time (the reliability section; empty
// without it).
models::Goodput run_goodput(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  return models::goodput(sc.reliability, r.stats.step_time().to_seconds(), sc.cluster.nodes * sc.cluster.gpus_per_node,
                         models::checkpoint_bytes(sc.forward.model, sc.forward.moment_bytes));
}

// With spare nodes (reliability.spare_nodes), the GPUs paid for over those that run: the spares
// sit idle but are the job's. 1 without them.
double spare_factor(const scenarios::Scenario& sc) {
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  if (!sc.reliability.enabled() || sc.reliability.spare_nodes <= 0 || gpus <= 0) return 1;
  return 1 + static_cast<double>(sc.reliability.spare_nodes) * sc.cluster.gpus_per_node / gpus;
}

// A training run's token budget (workload.train_tokens) at this step: the days on the scenario's
// GPUs, their GPU-hours and cost, at the goodput `gp` (run_goodput) where the reliability section
// gives one.
struct Budget {
  double days = 0, gpu_hours = 0, cost = 0;
};
Budget budget(const scenarios::Scenario& sc, const scenarios::RunResult& r, const models::Goodput& gp) {
  Budget b;
  const double seconds = r.stats.step_time().to_seconds(), tokens = step_tokens(sc);
  const double share = sc.reliability.enabled() ? gp.goodput : 1.0;
  if (sc.train_tokens <= 0 || seconds <= 0 || tokens <= 0 || share <= 0) return b;
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const double wall = sc.train_tokens / (tokens / seconds) / share;
  b.days = wall / 86400;
  b.gpu_hours = wall * gpus * spare_factor(sc) / 3600;  // the spare nodes' GPUs included
  b.cost = b.gpu_hours * sc.gpu_hour_price;
  return b;
}

// A count of tokens in words: 14.8T, 500B.
std::string token_count(double n) {
  return n >= 1e12 ? fmt::format("{:.4g}T", n / 1e12) : n >= 1e9 ? fmt::format("{:.4g}B", n / 1e9) : n >= 1e6 ? fmt::format("{:.4g}M", n / 1e6) : fmt::format("{:.4g}", n);
}

// GPU-hours (or money) in words: 184K, 1.2M.
std::string gpu_hours(double hours) {
  return hours >= 1e6 ? fmt::format("{:.4g}M", hours / 1e6) : hours >= 1e3 ? fmt::format("{:.4g}K", hours / 1e3) : fmt::format("{:.4g}", hours);
}

// Memory one GPU needs for the step (bytes), by kind. Weights: the parameters it holds (per MoE
// layer attention, router, shared experts and its expert slots; the dense layers) in the model
// dtype, the linear layers' in model.weight_dtype (models::weight_bytes). Training adds a gradient per weight (model dtype, or
// workload.gradient_dtype) and mixed-precision Adam's fp32 master weight and two moments (12 bytes per
// parameter; 8 with workload.adam_moments_dtype: bf16), and keeps every layer's activations
// for the backward pass (of one micro-batch, the one with the most expert rows on the GPU: with
// gradient accumulation each micro-batch's backward runs before the next one's forward; with
// pipeline stages of as many micro-batches as the stage holds at once); inference holds one
// layer's activations at a time. With activation recomputation a layer keeps only its input (full:
// b T H per layer, plus one layer's activations rebuilt at a time in the backward pass) or its
// attention's input instead of the attention's activations (attention: the same, plus one layer's
// attention rebuilt). With pipeline stages a GPU holds only its stage's layers. Activations are the
// tensors a layer keeps for its backward pass (counted as Korthikanti et al., "Reducing
// Activation Recomputation in Large Transformer Models", 2022, do, with flash attention: no
// S x S scores), per token: the attention block b (2H + L + Q + K + V + O) (its norm's input,
// the QKV projection's input, MLA's latents, Q, K and V, the output projection's input: the
// widths of models/moe_costs.hpp; multi-head: 2H + 2q + 2kv), the MoE block's norm input and
// the router's input b 2H, the router's fp32 logits 4E, each shared expert's SwiGLU b 3F (gate
// and up outputs, the activation); per expert row b (2H + 3F) (the row in, gate and up outputs,
// the activation, the row out, which the combine's gate gradient needs); a dense layer keeps its attention
// block's and b (2H + 3 Fd) a token for its FFN block (the norm's input and output, the FFN's gate and up
// outputs and activation, Fd = dense_ffn). workload.activation_dtype and selective recomputation change
// these per tensor (below). Decode adds the KV cache (T sequences
// x context x the bytes a token caches per layer, routing::kv_cache_token_bytes), prefill its
// prompts' caches (with workload.cached_prefix their prefixes' too). With tensor parallelism (tp GPUs, with sequence
// parallelism) the norm's and the QKV projection's inputs stay the GPU's own T rows (Megatron-LM
// all-gathers the latter again in the backward pass), the latents, Q, K, V and the output
// projection's input are for the tp T tokens of its group and its share of the heads; the KV
// cache is for the group's tp T sequences and its kv heads' share (a latent whole), and the weights its
// shares (moe_costs.hpp). Buffers: the all-to-all's receive buffers for the
// busiest GPU's rows of the busiest layer, dispatch and combine.
struct MemoryUse {
  double weights = 0, optimizer = 0, activations = 0, kv_cache = 0, buffers = 0;
  double states = 0;  // of kv_cache: the linear-attention layers' states (model.linear_attention)
  double total() const { return weights + optimizer + activations + kv_cache + buffers; }
};

// The summary's word on sliding-window attention (model.sliding_window): how many layers slide;
// or on linear attention (model.linear_attention): how many layers are linear.
std::string sliding_note(const routing::MoeModelSpec& m) {
  if (routing::has_linear_attention(m)) {
    const int layers = m.dense_layers + m.moe_layers;
    routing::MoeModelSpec whole = m;
    whole.tp = 1;
    return fmt::format("; linear attention (Gated DeltaNet, a {} KiB state a sequence and layer) on {} of its {} layers",
                       routing::linear_state_bytes(whole) / 1024, routing::linear_layers(m, 0, layers), layers);
  }
  if (m.sliding_window == 0) return {};
  const int layers = m.dense_layers + m.moe_layers;
  int sliding = 0;
  for (int l = 0; l < layers; ++l) sliding += routing::sliding_layer(m, l) ? 1 : 0;
  return fmt::format("; sliding-window attention ({} tokens) on {} of its {} layers", m.sliding_window, sliding, layers);
}

// floor: memory_floor()'s lower bound (r without routing): a layer held between its split
// backward and its weight pass counts once, as a layer does.
MemoryUse memory_use(const scenarios::Scenario& sc, const scenarios::RunResult& r, int gpu, bool floor = false) {
  const auto& f = sc.forward;
  const auto& m = f.model;
  const double b = m.dtype_bytes;
  const double h = static_cast<double>(m.hidden), ffn = static_cast<double>(m.expert_ffn);
  // With tensor parallelism the GPU's attention holds its heads' share for its group's tokens.
  // (Sparse attention in its masked MHA mode, for short prompts, keeps V3's expanded keys and values.)
  routing::AttentionWidths widths =
      routing::is_sparse_mla(m) && f.context_length == 0 && !routing::sparse_mode(m, f.sequence_length, f.cached_prefix)
          ? routing::attention_widths(routing::dense_mla(m))
          : routing::attention_widths(m);
  const double t = static_cast<double>(f.tokens_per_gpu), tp = m.tp;
  // With pipeline stages the GPU holds its stage's MoE layers (stage 0 also the dense layers).
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const int stage_gpus = gpus / f.pp, stage = gpu / stage_gpus;
  const std::vector<int> own = models::stage_layers(f, stage);
  const int per = static_cast<int>(own.size());
  if (routing::has_linear_attention(m)) {
    // Linear-attention layers (model.linear_attention) hold their own widths (queries and keys
    // qk, values and the output gate v): per layer, the mean over the GPU's MoE layers.
    int linear = 0;
    for (const int l : own) linear += routing::linear_layer(m, m.dense_layers + l) ? 1 : 0;
    const std::int64_t qk = routing::linear_qk_width(m), v = routing::linear_v_width(m), n = std::max(per, 1);
    const auto mean = [&](std::int64_t softmax, std::int64_t lin) { return ((n - linear) * softmax + linear * lin) / n; };
    widths = {.latent = 0, .q = mean(widths.q, qk), .k = mean(widths.k, qk), .v = mean(widths.v, v), .out = mean(widths.out, v)};
  }
  const models::GpuParams held = models::stage_params(f, r.placements, stage);
  const double params = static_cast<double>(held.total());
  MemoryUse u;
  u.weights = static_cast<double>(models::weight_bytes(m, held));
  // A sharded optimizer gathering FP8 weights holds them so (Megatron-Core's --fp8-param-gather:
  // the compute weights in FP8, the fp32 masters in the optimizer's share).
  const bool gathers = f.training && f.gradient_sync && f.optimizer_sharding;
  if (gathers && f.fp8_param_gather) u.weights = static_cast<double>(models::gathered_weight_bytes(f, held));
  // Training: a gradient per weight, and Adam's fp32 master weight and two moments (12 bytes)
  // per weight, or per weight of the GPU's shard with a sharded optimizer.
  const int copies = models::weight_copies(f);  // DualPipe: two stages share the shards
  const double updated = f.training && f.gradient_sync && (f.optimizer_sharding || f.parameter_sharding)
                             ? static_cast<double>(models::optimizer_share(held, copies * models::shard_ranks(f, stage_gpus),
                                                                           copies * models::shard_blocks(f, stage_gpus)))
                             : params;
  if (f.training) u.optimizer = params * f.grad_bytes() + updated * (4 + 2 * f.moment_bytes);
  if (f.training && f.parameter_sharding) {
    // Sharded weights (FSDP): the GPU's share of every weight group, and whole the two layers
    // (with the dense layers and embedding, or the LM head, where they go) between their
    // all-gather and their pass's end (the one running and the one gathered for next); its
    // gradients sharded, but one layer's whole before its reduce-scatter.
    // (Over the GPU's shard group's GPUs and blocks, with shard_group.)
    const int group = models::shard_ranks(f, stage_gpus), blocks = models::shard_blocks(f, stage_gpus);
    const auto ceil_div = [](std::int64_t a, std::int64_t b) { return (a + b - 1) / b; };
    const models::GpuParams share{ceil_div(held.replicated, group), ceil_div(held.experts, blocks), ceil_div(held.kept, group)};
    std::vector<double> unit_bytes;
    std::int64_t unit_params = 0;
    for (const int l : own) {
      const models::GpuParams layer = models::layer_params(f, r.placements, l);
      unit_bytes.push_back(static_cast<double>(models::gathered_weight_bytes(f, layer)));
      unit_params = std::max(unit_params, layer.total());
    }
    std::sort(unit_bytes.rbegin(), unit_bytes.rend());
    const double whole = unit_bytes.empty() ? 0.0 : unit_bytes[0] + (unit_bytes.size() > 1 ? unit_bytes[1] : 0.0);
    u.weights = static_cast<double>(models::weight_bytes(m, share)) + whole;
    u.optimizer = (updated + static_cast<double>(unit_params)) * f.grad_bytes() + updated * (4 + 2 * f.moment_bytes);
  }
  // Activations: this GPU's expert rows over its layers (token and padding rows) of one
  // micro-batch, times the micro-batches a pipeline stage holds at once (1F1B: stage s of pp
  // holds up to pp - s, GPipe all of them; interleaved: the most layers' worth its schedule holds,
  // over its layers).
  const double dense_here = models::holds_chunk(f, stage, 0) ? m.dense_layers : 0;
  const double layers = per + dense_here;
  // Bytes an element: a linear layer's or a SwiGLU's input (FP8 activations: 1 and an fp32 scale
  // per 128), the attention output (E5M6); everything else at b. Selective recomputation keeps
  // no norm outputs (layernorm), no MLA queries, keys and values (mla_up_proj: those the up
  // projections make, the shared RoPE key aside) and no SwiGLU outputs (moe_act).
  const double lin = f.activations_fp8 ? 1.0 + 4.0 / 128 : b, att_out = f.activations_fp8 ? 1.5 : b;
  const bool selective = f.training && f.recompute == models::Recompute::selective;
  const bool no_norm = selective && f.recompute_layernorm, no_act = selective && f.recompute_moe_act;
  const double up_made = selective && f.recompute_mla_up_proj
                             ? static_cast<double>((m.mla.q_lora_rank > 0 ? widths.q : 0) + widths.k - m.mla.qk_rope_head_dim + widths.v)
                             : 0.0;
  const double saved = b * static_cast<double>(widths.latent + widths.q + widths.k + widths.v) - b * up_made +
                       att_out * static_cast<double>(widths.out);
  // The attention block: its norm's input and output (the projections' input), its latents, Q, K, V and output.
  const double attention = b * t * h + (no_norm ? 0 : lin * t * h) + tp * t * saved, input = b * t * h;
  // The MoE block: its norm's input and output (the router's and shared experts' input), the
  // router's logits, each shared expert's gate and up outputs and SwiGLU output.
  const double per_layer = attention + b * t * h + (no_norm ? 0 : b * t * h) + 4 * t * m.experts +
                           m.shared_experts * t * lin * (no_act ? 2 : 3) * ffn;
  // A dense layer: its attention block, and its FFN block's norm input and output (the FFN's
  // input, its own rows with tensor parallelism), the FFN's gate and up outputs and SwiGLU output
  // (dense_ffn wide: with tensor parallelism 1/tp of the columns over tp T rows, as many).
  const double dense_layer = attention + b * t * h + (no_norm ? 0 : lin * t * h) + t * lin * 3 * static_cast<double>(m.dense_ffn);
  // Per expert row: the row in, the gate and up outputs, the SwiGLU output, the row out (with
  // expert tensor parallelism the GPU's share of the FFN's columns, over its ETP group's rows).
  const double shard_ffn = ffn / f.etp;
  const double expert_row = lin * h + lin * (no_act ? 2 : 3) * shard_ffn + b * h;
  const double expert_rows = static_cast<double>(r.stats.peak_batch_rows(gpu));
  // The LM head's stage (model.vocab) also holds its logits in fp32 (the tokens that have them),
  // once more for each MTP layer run.
  const bool head = m.vocab > 0 && own.back() + 1 == m.moe_layers;
  const double logits =
      head ? 4.0 * static_cast<double>(m.vocab) * (1 + m.mtp_layers) *
                 (f.prefill ? std::ceil(t / static_cast<double>(f.sequence_length)) : t)
           : 0.0;
  // An MoE layer's activations, at the stage's mean expert rows a layer.
  const double rows_mean = expert_rows / std::max(1, per);
  const double kept_layer = per_layer + rows_mean * expert_row;
  // A weight pass needs what selective recomputation rebuilt for the weight gradients (the
  // norms' outputs, the SwiGLU outputs), kept from the input-gradient pass until it runs: a
  // layer held between the two holds that much more.
  const double for_weights = (no_norm ? lin * t * h + b * t * h : 0) +
                             (no_act ? lin * (ffn * m.shared_experts * t + shard_ffn * rows_mean) : 0);
  const double in_flight =
      !f.training ? 1.0 : models::pipeline_held_layers(f, stage, floor ? 1.0 : (kept_layer + for_weights) / kept_layer) / layers;
  // The logits, of the micro-batches between the head's forward and its backward (counted at
  // their own peak, which may fall elsewhere than the layers': an upper bound).
  const double heads = !f.training ? 1.0 : models::pipeline_held_head(f, stage);
  if (f.training && f.recompute == models::Recompute::full) {
    // Each recomputed layer keeps its input (recompute_layers: the first that many MoE layers of
    // each of the stage's chunks, the dense layers with chunk 0's; the others all their
    // activations, the expert rows counted at the stage's mean per layer); one layer's
    // activations are rebuilt at a time in the backward pass (an MoE or a dense layer's).
    int rebuilt = 0;
    const std::vector<int> bounds = models::pipeline_bounds(f);
    for (std::size_t c = 0; c + 1 < bounds.size(); ++c) {
      if (!models::holds_chunk(f, stage, static_cast<int>(c))) continue;
      const int n = bounds[c + 1] - bounds[c];
      rebuilt += f.recompute_layers > 0 ? std::min(n, f.recompute_layers) : n;
    }
    const double kept = per - rebuilt;
    u.activations = in_flight * ((layers - kept) * input + kept * kept_layer) + heads * logits +
                    std::max(kept_layer, dense_here > 0 ? dense_layer : 0.0);
  } else if (f.training && f.recompute == models::Recompute::attention) {
    // Each layer keeps its attention's input instead of its activations, rebuilt one layer at a time.
    u.activations = in_flight * (per * per_layer + dense_here * dense_layer + layers * (input - attention) + expert_rows * expert_row) +
                    heads * logits + attention;
  } else if (f.training) {
    u.activations = in_flight * (per * per_layer + dense_here * dense_layer + expert_rows * expert_row) + heads * logits;
  } else {
    u.activations = kept_layer + logits;  // one layer at a time
  }
  // Decode: the caches of every micro-batch's sequences stay resident. Prefill: the caches its
  // prompts make, held until the batch is done (and, served disaggregated, sent to the decode
  // GPUs), and with a cached prefix the prefixes' too: T / S prompts of P + S tokens.
  // A sliding layer (model.sliding_window) keeps at most its window of each sequence's keys.
  // A linear-attention layer (model.linear_attention) keeps no keys but a state per sequence.
  int linear_here = 0;
  if (dense_here > 0) linear_here += routing::linear_layers(m, 0, m.dense_layers);
  for (const int l : own) linear_here += routing::linear_layer(m, m.dense_layers + l) ? 1 : 0;
  const double state = static_cast<double>(linear_here) * static_cast<double>(routing::linear_state_bytes(m));
  const auto cached = [&](std::int64_t context) {
    double keys = 0;
    if (dense_here > 0)
      for (int l = 0; l < m.dense_layers; ++l) keys += static_cast<double>(routing::cached_keys(m, l, context));
    for (const int l : own) keys += static_cast<double>(routing::cached_keys(m, m.dense_layers + l, context));
    return keys * static_cast<double>(routing::kv_cache_token_bytes(m)) + state;
  };
  // Decode with chunked prefill: the prompts a step prefills hold their caches too, up to their
  // whole length (chunk / prompt of them, at least one).
  if (f.context_length > 0 && f.varied_contexts()) {
    // Contexts that differ by sequence (the run's draws): each micro-batch's caches of the GPU's
    // group's sequences, their sums of context (and of min(context, window) on the sliding layers).
    MOESIM_ASSERT(!r.contexts.empty(), "a decode with varied contexts ran without its draws");
    const int groups = gpus / f.pp / m.tp, group = models::context_group(f, gpus, gpu);
    double keys = 0;
    for (int mb = 0; mb < f.micro_batches; ++mb) {
      const routing::ContextLoad& l = r.contexts[static_cast<std::size_t>(mb * groups + group)];
      const auto layer_keys = [&](int k) { return routing::linear_layer(m, k) ? 0.0 : routing::sliding_layer(m, k) ? l.window : l.sum; };
      if (dense_here > 0)
        for (int k = 0; k < m.dense_layers; ++k) keys += layer_keys(k);
      for (const int k : own) keys += layer_keys(m.dense_layers + k);
    }
    u.kv_cache = keys * static_cast<double>(routing::kv_cache_token_bytes(m)) +
                 f.micro_batches * tp * static_cast<double>(f.sequences()) * state +
                 f.micro_batches * tp * static_cast<double>(f.prefill_prompts()) * cached(f.sequence_length);
  } else if (f.context_length > 0) {
    u.kv_cache = f.micro_batches * tp *
                 (static_cast<double>(f.sequences()) * cached(f.context_length) +
                  static_cast<double>(f.prefill_prompts()) * cached(f.sequence_length));
  }
  else if (f.prefill)
    u.kv_cache = f.micro_batches * tp * t / static_cast<double>(f.sequence_length) * cached(f.cached_prefix + f.sequence_length);
  if (f.context_length > 0)
    u.states = f.micro_batches * tp * static_cast<double>(f.sequences() + f.prefill_prompts()) * state;
  else if (f.prefill)
    u.states = f.micro_batches * tp * t / static_cast<double>(f.sequence_length) * state;
  std::int64_t rows = 0;
  for (const auto& l : r.stats.layers()) rows = std::max(rows, l.max_gpu_tokens);
  const std::int64_t model_row = models::row_bytes(m.hidden, m.dtype_bytes);
  const double row = static_cast<double>(f.all_to_all.dispatch_row_bytes > 0 ? f.all_to_all.dispatch_row_bytes : model_row) +
                     static_cast<double>(f.all_to_all.combine_row_bytes > 0 ? f.all_to_all.combine_row_bytes : model_row);
  u.buffers = static_cast<double>(rows) * row;
  // Context parallelism: one layer's keys and values gathered from the cp GPUs of the
  // sequences (and in training their gradients before the reduce-scatter).
  if (f.cp > 1)
    u.buffers += (f.training ? 2.0 : 1.0) * f.cp * tp * t * b * static_cast<double>(widths.k + widths.v);
  return u;
}

// workload.recompute_modules, joined: in words (", " and " and " before the last) or for
// summary.csv ("+": selective:layernorm+moe_act).
std::string selective_modules(const models::ForwardSpec& f, bool words) {
  std::vector<std::string> names;
  if (f.recompute_layernorm) names.emplace_back("layernorm");
  if (f.recompute_mla_up_proj) names.emplace_back("mla_up_proj");
  if (f.recompute_moe_act) names.emplace_back("moe_act");
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : !words ? "+" : i + 1 == names.size() ? " and " : ", ") + names[i];
  return out;
}

// summary.csv's recompute: the kind, with a selective one's modules.
std::string recompute_text(const models::ForwardSpec& f) {
  if (f.recompute != models::Recompute::selective) return std::string(models::to_string(f.recompute));
  return "selective:" + selective_modules(f, false);
}

// The GPU that needs the most memory, and how much.
std::pair<int, MemoryUse> peak_memory(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  int best = 0;
  MemoryUse most;
  const int gpus = static_cast<int>(r.stats.gpus().size());
  for (int g = 0; g < gpus; ++g) {
    const MemoryUse u = memory_use(sc, r, g);
    if (u.total() > most.total()) {
      most = u;
      best = g;
    }
  }
  return {best, most};
}

// Empty when the point fits; otherwise why not, in words (no commas: a CSV field as it is).
// gpu, mem: peak_memory()'s answer.
std::string infeasible_reason(const scenarios::Scenario& sc, int g, const MemoryUse& mem) {
  const double capacity = static_cast<double>(sc.cluster.gpu.memory.count());
  if (capacity <= 0 || mem.total() <= capacity) return {};
  std::string parts;
  const auto part = [&](const char* name, double bytes) {
    if (bytes <= 0) return;
    if (!parts.empty()) parts += "; ";
    parts += fmt::format("{} {:.1f}", name, bytes / 1e9);
  };
  part("weights", mem.weights);
  part("gradients and optimizer", mem.optimizer);
  part("activations", mem.activations);
  part("KV cache", mem.kv_cache);
  part("buffers", mem.buffers);
  return fmt::format("GPU {} needs {:.1f} GB of the {:.0f} GB of a {} ({})", g, mem.total() / 1e9, capacity / 1e9,
                     sc.cluster.gpu.name, parts);
}

}  // namespace

MemoryFloor memory_floor(const scenarios::Scenario& sc, const std::vector<routing::Placement>* placements) {
  // The run's memory model without any routing: no expert rows and no all-to-all buffers, so a
  // lower bound of every GPU's figure (each term grows with the rows). With selective
  // recomputation what a weight pass keeps of a layer is a share of the layer's activations that
  // the rows can shrink: the floor counts such a layer once (the least it can hold, as the most
  // the stage holds at once grows with that share).
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  // The contexts a run would draw and keep (not routing: the seed's and the step's), its last
  // step's with workload.steps.
  models::ForwardSpec last = sc.forward;
  last.routing.step += sc.steps - 1;
  const scenarios::RunResult r{models::RunStats(gpus, sc.forward.model.moe_layers, sc.cluster.gpus_per_node, sc.forward.micro_batches),
                               0, "", "", {}, placements ? *placements : scenarios::compute_placements(sc), nullptr, 0.0,
                               sc.forward.varied_contexts() ? models::decode_context_loads(last, gpus) : std::vector<routing::ContextLoad>{},
                               {}};
  MemoryFloor floor;
  floor.capacity = static_cast<double>(sc.cluster.gpu.memory.count());
  MemoryUse most;
  for (int g = 0; g < gpus; ++g) {
    const MemoryUse u = memory_use(sc, r, g, true);
    if (floor.gpu < 0 || u.total() > most.total()) {
      most = u;
      floor.gpu = g;
    }
  }
  floor.bytes = most.total();
  // The parts in GB, those under 0.05 GB left out.
  floor.parts = fmt::format("weights {:.1f}", most.weights / 1e9);
  const auto part = [&](const char* name, double bytes) {
    if (bytes >= 0.05e9) floor.parts += fmt::format("; {} {:.1f}", name, bytes / 1e9);
  };
  part("gradients and optimizer", most.optimizer);
  part("activations without expert rows", most.activations);
  part("KV cache", most.kv_cache);
  part("context-parallel buffers", most.buffers);
  return floor;
}

std::string unfit_reason(const scenarios::Scenario& sc, const std::vector<routing::Placement>* placements) {
  const MemoryFloor floor = memory_floor(sc, placements);
  if (floor.capacity <= 0 || floor.bytes <= floor.capacity) return {};
  return fmt::format("not simulated: GPU {} needs at least {:.1f} GB of the {:.0f} GB of a {} whatever the routing ({})", floor.gpu,
                     floor.bytes / 1e9, floor.capacity / 1e9, sc.cluster.gpu.name, floor.parts);
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> v(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '"') {
      if (quoted && i + 1 < line.size() && line[i + 1] == '"') {
        v.back() += '"';
        ++i;
      } else {
        quoted = !quoted;
      }
    } else if (c == ',' && !quoted) {
      v.emplace_back();
    } else {
      v.back() += c;
    }
  }
  return v;
}

// Each pipeline stage's compute (its busiest GPU's time in anything but waits), what a split of
// the layers (parallelism.pipeline_layers) evens out: the busiest stage and its share over the mean.
struct StageCompute {
  std::vector<sim::Time> busy;
  std::size_t most = 0;
  double over = 1.0;
};

StageCompute stage_compute(const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node, per_stage = gpus / sc.forward.pp;
  StageCompute c;
  c.busy.resize(static_cast<std::size_t>(sc.forward.pp));
  for (int gpu = 0; gpu < gpus; ++gpu) {
    sim::Time b;
    for (const Stage s : models::kStages)
      if (!models::is_network_wait(s)) b += r.stats.gpus()[static_cast<std::size_t>(gpu)].stage_total[idx(s)];
    auto& stage = c.busy[static_cast<std::size_t>(gpu / per_stage)];
    stage = sim::max(stage, b);
  }
  double sum = 0;
  for (std::size_t st = 0; st < c.busy.size(); ++st) {
    sum += c.busy[st].to_us();
    if (c.busy[st] > c.busy[c.most]) c.most = st;
  }
  const double mean = sum / static_cast<double>(c.busy.size());
  c.over = mean > 0 ? c.busy[c.most].to_us() / mean : 1.0;
  return c;
}

const std::string& summary_csv_header() {
  static const std::string header =
      "scenario,workload,network_model,resolve_interval_us,compute_source,profiled_fraction,seed,gpus,gpu,ep,tp,cp,pp,virtual_stages,pipeline_schedule,overlap,"
      "moe_layers,tokens_per_gpu,"
      "micro_batches,tokens_per_step,step_time_us,tokens_per_s,tokens_per_s_per_gpu,time_per_token_us,critical_gpu,"
      "attention_us,router_us,shared_experts_us,dispatch_wait_us,experts_us,combine_wait_us,"
      "reduce_us,optimizer_us,grad_sync_us,dense_us,pipeline_wait_us,lm_head_us,tp_wait_us,cp_wait_us,param_gather_wait_us,exposed_comm_us,exposed_comm_fraction,routed,computed,dropped,drop_rate,"
      "gpu_imbalance_max,expert_imbalance_max,network_bytes,events,gpu_cv_max,padded,all_to_all,scale_out_bytes,backward_us,recompute,"
      "recompute_us,model_flops,mfu,"
      "gpu_hour_price,cost_per_step,cost_per_million_tokens,gradient_sync_bytes,pipeline_bytes,tp_bytes,cp_bytes,stage_compute_imbalance,"
      "memory_gb_max,gpu_memory_gb,fits_memory,infeasible_reason,elementwise_kernels,cp_gather,"
      "job_mtbf_h,checkpoint,checkpoint_gb,checkpoint_s,checkpoint_write_s,checkpoint_every_steps,goodput,goodput_tokens_per_s,goodput_cost_per_million_tokens,"
      "train_tokens,train_days,train_gpu_hours,train_cost,etp,node_fabric,power_kw,energy_kwh_per_million_tokens,spare_nodes,spare_wait_s,parameter_sharding,"
      "param_gather_bytes,shard_group,param_gather_dtype,prefill_chunk,prompt_tokens_per_s,model,model_config,context_sigma,context_balance";
  return header;
}

void write_summary_csv(std::ostream& out, const scenarios::Scenario& sc,
                       const scenarios::RunResult& r) {
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const auto& f = sc.forward;
  const int crit = r.stats.critical_gpu();
  const auto& g = r.stats.gpus()[static_cast<std::size_t>(crit)].stage_total;
  const sim::Time step = r.stats.step_time();
  const sim::Time exposed =
      g[idx(Stage::dispatch)] + g[idx(Stage::combine)] + g[idx(Stage::grad_sync)] + g[idx(Stage::tp)] + g[idx(Stage::cp)] +
      g[idx(Stage::param_gather)];
  const double step_tokens_exact = step_tokens(sc);  // fractional with draft tokens (expected)
  // Whole tokens, or with draft tokens the expected count to the hundredth (tokens_per_s is it
  // over the step exactly).
  const std::string tokens = step_tokens_exact == std::floor(step_tokens_exact)
                                 ? fmt::format("{}", std::llround(step_tokens_exact))
                                 : fmt::format("{:.2f}", step_tokens_exact);
  const Totals t = totals(sc, r);
  const double seconds = step.to_seconds();
  out << summary_csv_header() << '\n';
  // The pipeline schedule: empty without stages, "pipelined" for forward-only work.
  const std::string schedule = f.pp == 1            ? ""
                               : !f.training        ? "pipelined"
                               : f.pipeline_schedule != models::PipelineSchedule::one_f_one_b ? std::string(models::to_string(f.pipeline_schedule))
                               : f.virtual_stages > 1 ? "interleaved_1f1b"
                                                      : "1f1b";
  const char* overlap = f.two_batch_staggered ? "two_batch_staggered"
                        : f.two_batch_overlap  ? "two_batch"
                        : f.forward_backward_overlap ? "forward_backward"
                                                     : "none";
  // Decode: the time between a sequence's tokens, the step over the tokens it gains per step.
  // (the expected gain with draft tokens, to the picosecond).
  const std::string per_token =
      f.context_length > 0
          ? format_us(sim::Time::ps(std::llround(static_cast<double>(step.count_ps()) / tokens_per_sequence(f))))
          : std::string();
  // The max-min model's re-solve interval (0: exact); none for the analytical model.
  const std::string resolve_interval = r.network_model == "maxmin" ? format_us(sc.resolve_interval) : std::string();
  fmt::print(out, "{},{},{},{},{},{:.4f},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1f},{:.1f},{},{},", csv_field(sc.source),
             sc.workload_kind, r.network_model, resolve_interval, r.compute_source, profiled_fraction(r.stats.gpus()[static_cast<std::size_t>(crit)]), f.seed, gpus,
             csv_field(sc.cluster.gpu.name), f.ep,
             f.model.tp, f.cp, f.pp, f.virtual_stages, schedule, overlap, f.model.moe_layers, f.sequences(), f.micro_batches, tokens, format_us(step),
             seconds > 0 ? step_tokens_exact / seconds : 0.0, seconds > 0 ? step_tokens_exact / seconds / gpus : 0.0, per_token, crit);
  for (const Stage s : models::kStages) fmt::print(out, "{},", format_us(g[idx(s)]));
  fmt::print(out, "{},{},{},{},{},{},{},{},{},{},{:.4f},{},{},{},{},{},{},", format_us(exposed),
             ratio(static_cast<double>(exposed.count_ps()), static_cast<double>(step.count_ps())),
             t.routed, t.computed, t.dropped,
             ratio(static_cast<double>(t.dropped), static_cast<double>(t.routed)),
             fmt::format("{:.4f}", t.gpu_imbalance), fmt::format("{:.4f}", t.expert_imbalance),
             t.bytes, r.events, t.gpu_cv, t.padded,
             models::to_string(f.all_to_all.algorithm),
             t.scale_out_bytes, format_us(r.stats.gpus()[static_cast<std::size_t>(crit)].backward_total),
             recompute_text(f), format_us(r.stats.gpus()[static_cast<std::size_t>(crit)].recompute_total));
  const Economics e = economics(sc, r);
  const auto [peak_gpu, mem] = peak_memory(sc, r);
  const double capacity = static_cast<double>(sc.cluster.gpu.memory.count());
  fmt::print(out, "{:.0f},{:.4f},{},{},{},{},{},{},{},{},{:.3f},{:.3f},{},{},{},{},", r.model_flops, e.mfu,
             sc.gpu_hour_price > 0 ? fmt::format("{}", sc.gpu_hour_price) : "",
             sc.gpu_hour_price > 0 ? fmt::format("{:.6g}", e.cost_per_step) : "",
             sc.gpu_hour_price > 0 ? fmt::format("{:.6g}", e.cost_per_million_tokens) : "",
             r.stats.gradient_sync_bytes(), r.stats.pipeline_bytes(), r.stats.tp_bytes(), r.stats.cp_bytes(),
             f.pp > 1 ? fmt::format("{:.4f}", stage_compute(sc, r).over) : std::string(), mem.total() / 1e9, capacity / 1e9,
             capacity <= 0 ? "unknown" : mem.total() <= capacity ? "yes" : "no", csv_field(infeasible_reason(sc, peak_gpu, mem)),
             sc.roofline.elementwise_kernels ? "yes" : "no", f.cp == 1 ? "" : f.cp_latent ? "latent" : "kv");
  // Failures and checkpoints (the reliability section): empty without it.
  const models::Goodput gp = run_goodput(sc, r);
  if (gp.goodput > 0 || sc.reliability.enabled())
    fmt::print(out, "{:.6g},{},{},{:.6g},{},{},{:.6g},{:.1f},{},", gp.job_mtbf_s / 3600, sc.reliability.async ? "async" : "sync",
               gp.checkpoint_bytes > 0 ? fmt::format("{:.6g}", gp.checkpoint_bytes / 1e9) : std::string(), gp.checkpoint_s,
               sc.reliability.async ? fmt::format("{:.6g}", gp.write_s) : std::string(), gp.every_steps, gp.goodput,
               seconds > 0 ? step_tokens_exact / seconds * gp.goodput : 0.0,
               sc.gpu_hour_price > 0 && gp.goodput > 0 ? fmt::format("{:.6g}", e.cost_per_million_tokens * spare_factor(sc) / gp.goodput)
                                                       : std::string());
  else
    out << ",,,,,,,,,";
  // The token budget (workload.train_tokens): empty without it, and its days empty where no step counts.
  const Budget b = budget(sc, r, gp);
  if (sc.train_tokens > 0)
    fmt::print(out, "{:.6g},{},{},{},", sc.train_tokens, b.days > 0 ? fmt::format("{:.6g}", b.days) : std::string(),
               b.days > 0 ? fmt::format("{:.6g}", b.gpu_hours) : std::string(),
               b.days > 0 && sc.gpu_hour_price > 0 ? fmt::format("{:.6g}", b.cost) : std::string());
  else
    out << ",,,,";
  const Power pw = cluster_power(sc, r);
  const bool sharded = f.training && f.gradient_sync && f.optimizer_sharding;
  fmt::print(out, "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", f.etp, sc.cluster.node.fabric == topology::NodeFabric::mesh ? "mesh" : "nvswitch",
             pw.kw > 0 ? fmt::format("{:.6g}", pw.kw) : std::string(),
             pw.kwh_per_million_tokens > 0 ? fmt::format("{:.6g}", pw.kwh_per_million_tokens) : std::string(),
             sc.reliability.enabled() && sc.reliability.spares() ? std::to_string(sc.reliability.spare_nodes) : std::string(),
             sc.reliability.enabled() && sc.reliability.spares() ? fmt::format("{:.6g}", gp.spare_wait_s) : std::string(),
             f.training && f.parameter_sharding ? "yes" : "no", r.stats.param_gather_bytes(),
             sharded ? std::to_string(models::shard_gpus(f, sc.cluster.nodes * sc.cluster.gpus_per_node / f.pp)) : std::string(),
             sharded && f.fp8_param_gather ? "fp8" : "", f.prefill_chunk > 0 ? std::to_string(f.prefill_chunk) : std::string(),
             f.prefill_chunk > 0 && seconds > 0 ? fmt::format("{:.1f}", step_prompt_tokens(sc) / seconds) : std::string(),
             csv_field(f.model.name), csv_field(sc.model_config), f.varied_contexts() ? fmt::format("{}", f.context_sigma) : std::string(),
             f.varied_contexts() ? (f.context_balanced ? "kv_cache" : "none") : "");
}

void write_layers_csv(std::ostream& out, const scenarios::Scenario& sc,
                      const scenarios::RunResult& r) {
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node / sc.forward.pp;  // the layer's stage's
  out << "layer,pass,micro_batch,start_us,end_us,time_us,attention_max_us,router_max_us,shared_experts_max_us,"
         "dispatch_wait_max_us,dispatch_wait_mean_us,experts_max_us,experts_mean_us,"
         "combine_wait_max_us,combine_wait_mean_us,reduce_max_us,routed,computed,dropped,"
         "network_bytes,flows,gpu_tokens_max,gpu_tokens_mean,gpu_imbalance,expert_tokens_max,"
         "expert_tokens_mean,expert_imbalance,gpu_tokens_cv,padded,scale_out_bytes,tp_wait_max_us\n";
  const auto row = [&](std::size_t i, const char* pass, int micro_batch, const models::LayerStats& l,
                       const models::LayerStats& routing) {
    const auto& g = routing;  // the routing columns: the layer's forward routing
    const double gpu_mean = static_cast<double>(g.computed) / gpus;
    const double expert_mean =
        g.expert_slots > 0 ? static_cast<double>(g.routed) / static_cast<double>(g.expert_slots) : 0.0;
    fmt::print(out, "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3f},{},{},{:.3f},{},{:.4f},{},{},{}\n",
               i, pass, micro_batch, format_us(l.start), format_us(l.end), format_us(l.end - l.start),
               format_us(l.stage_max[idx(Stage::attention)]), format_us(l.stage_max[idx(Stage::router)]),
               format_us(l.stage_max[idx(Stage::shared_experts)]),
               format_us(l.stage_max[idx(Stage::dispatch)]), mean_us(l.stage_sum[idx(Stage::dispatch)], gpus),
               format_us(l.stage_max[idx(Stage::experts)]), mean_us(l.stage_sum[idx(Stage::experts)], gpus),
               format_us(l.stage_max[idx(Stage::combine)]), mean_us(l.stage_sum[idx(Stage::combine)], gpus),
               format_us(l.stage_max[idx(Stage::reduce)]), g.routed, g.computed, g.dropped,
               l.network_bytes, l.flows, g.max_gpu_tokens, gpu_mean,
               ratio(static_cast<double>(g.max_gpu_tokens), gpu_mean), g.max_expert_tokens,
               expert_mean, ratio(static_cast<double>(g.max_expert_tokens), expert_mean), gpu_cv(g, gpus),
               g.padded, l.scale_out_bytes, format_us(l.stage_max[idx(Stage::tp)]));
  };
  // In the order they ran: per micro-batch every layer forward, then backward.
  const auto& layers = r.stats.layers();
  const auto& back = r.stats.backward_layers();
  const auto per = static_cast<std::size_t>(r.stats.moe_layers());
  for (int mb = 0; mb < r.stats.micro_batches(); ++mb) {
    const std::size_t first = static_cast<std::size_t>(mb) * per;
    for (std::size_t i = 0; i < per; ++i) row(i, "forward", mb, layers[first + i], layers[first + i]);
    for (std::size_t i = per; i-- > 0;)
      if (back[first + i].start != sim::Time::max()) row(i, "backward", mb, back[first + i], layers[first + i]);
  }
}

void write_links_csv(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  const topology::Cluster cluster(sc.cluster);
  fmt::print(out, "link,from,to,kind,bandwidth_GBps,latency_us,bytes,busy_us,mean_utilisation,peak_utilisation\n");
  for (std::size_t i = 0; i < cluster.links().size() && i < r.links.size(); ++i) {
    const auto& l = cluster.links()[i];
    const auto& u = r.links[i];
    const double bw = static_cast<double>(l.bandwidth.bytes_per_s());
    // Mean utilisation while busy: bytes carried over what the link could carry in that time.
    const double mean = u.busy_s > 0 ? u.bytes / (bw * u.busy_s) : 0.0;
    fmt::print(out, "{},{},{},{},{:.3f},{},{:.0f},{:.6f},{:.4f},{:.4f}\n", i, cluster.device_name(l.src),
               cluster.device_name(l.dst), topology::to_string(l.kind), bw / 1e9, sim::format_us(l.latency),
               u.bytes, u.busy_s * 1e6, steady(mean), steady(u.peak_utilisation));
  }
}

void write_experts_csv(std::ostream& out, const scenarios::Scenario&, const scenarios::RunResult& r) {
  fmt::print(out, "layer,slot,ep_rank,expert,replica,replicas,replica_computed,expert_routed,expert_computed,expert_dropped,replica_padded,expert_padded\n");
  for (std::size_t l = 0; l < r.placements.size(); ++l) {
    const auto& pl = r.placements[l];
    const auto& ex = r.stats.experts()[l];
    const auto& sl = r.stats.slots()[l];
    const auto& sp = r.stats.slots_padded()[l];
    for (int s = 0; s < pl.slots(); ++s) {
      const auto e = static_cast<std::size_t>(pl.slot_expert[static_cast<std::size_t>(s)]);
      fmt::print(out, "{},{},{},{},{},{},{},{},{},{},{},{}\n", l, s, pl.gpu_of_slot(s), e,
                 pl.slot_replica[static_cast<std::size_t>(s)], pl.expert_slots[e].size(),
                 sl[static_cast<std::size_t>(s)], ex[e].routed, ex[e].computed, ex[e].routed - ex[e].computed,
                 sp[static_cast<std::size_t>(s)], ex[e].padded);
    }
  }
}

void write_gpus_csv(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  out << "gpu,node,ep_group,ep_rank,finish_us";
  for (const Stage s : models::kStages) fmt::print(out, ",{}{}_us", to_string(s), models::is_network_wait(s) ? "_wait" : "");
  out << ",routed,dropped,drop_rate,computed,padded,busy_us,network_wait_us,idle_us,memory_gb\n";
  const auto& gpus = r.stats.gpus();
  for (std::size_t i = 0; i < gpus.size(); ++i) {
    const auto& g = gpus[i];
    const int gpu = static_cast<int>(i);
    // The EP group counted over the cluster (as if one stage of all its GPUs).
    fmt::print(out, "{},{},{},{},{}", gpu, gpu / sc.cluster.gpus_per_node,
               models::ep_group_in_stage(sc.forward, static_cast<int>(gpus.size()), gpu), models::ep_rank(sc.forward, gpu),
               format_us(g.finish));
    for (const Stage s : models::kStages) fmt::print(out, ",{}", format_us(g.stage_total[idx(s)]));
    sim::Time busy, wait;
    for (const Stage s : models::kStages) (models::is_network_wait(s) ? wait : busy) += g.stage_total[idx(s)];
    fmt::print(out, ",{},{},{},{},{},{},{},{},{:.3f}\n", g.routed, g.dropped,
               ratio(static_cast<double>(g.dropped), static_cast<double>(g.routed)), g.computed, g.padded,
               format_us(busy), format_us(wait), format_us(r.stats.step_time() - g.finish),
               memory_use(sc, r, gpu).total() / 1e9);
  }
}

void write_steps_csv(std::ostream& out, const scenarios::Scenario&, const scenarios::RunResult& r) {
  out << "step,step_time_us,gpu_imbalance_max,placement_refreshed,moved_bytes,rebalance_us\n";
  for (const auto& s : r.steps)
    fmt::print(out, "{},{},{:.4f},{},{},{}\n", s.step, format_us(s.time), s.gpu_imbalance, s.refreshed ? 1 : 0,
               s.moved_bytes, format_us(s.rebalance));
}

void write_timeline_json(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r) {
  const auto& t = *r.timeline;
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const int gpn = sc.cluster.gpus_per_node;
  const auto us = [](sim::Time x) { return sim::format_us(x); };
  out << "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"scenario\":\"" << json_escape(sc.source) << "\"},\"traceEvents\":[\n";
  bool first = true;
  const auto sep = [&] {
    if (!first) out << ",\n";
    first = false;
  };
  for (int n = 0; n < sc.cluster.nodes; ++n) {
    sep();
    fmt::print(out, R"({{"ph":"M","name":"process_name","pid":{},"args":{{"name":"node {}"}}}})", n, n);
  }
  for (int g = 0; g < gpus; ++g) {
    sep();
    fmt::print(out, R"({{"ph":"M","name":"thread_name","pid":{},"tid":{},"args":{{"name":"GPU {} compute"}}}})", g / gpn, g, g);
    sep();
    fmt::print(out, R"({{"ph":"M","name":"thread_name","pid":{},"tid":{},"args":{{"name":"GPU {} sends"}}}})", g / gpn,
               gpus + g, g);
  }
  // With gradient accumulation every slice and flow also says its micro-batch.
  const bool batches = sc.forward.micro_batches > 1;
  const auto micro_batch = [&](int mb) { return batches ? fmt::format(R"(,"micro_batch":{})", mb) : std::string(); };
  for (const auto& s : t.stages()) {
    const int g = static_cast<int>(s.gpu.index());
    sep();
    const bool wait = models::is_network_wait(s.stage);
    fmt::print(out, R"({{"ph":"X","name":"{}{}","cat":"{}","pid":{},"tid":{},"ts":{},"dur":{},"args":{{"layer":{}{}{}}}}})",
               wait ? fmt::format("{} wait", to_string(s.stage)) : std::string(to_string(s.stage)),
               s.recompute ? " (recompute)" : s.weight ? " (weight gradients)" : s.backward ? " (backward)" : "", wait ? "wait" : "compute", g / gpn, g, us(s.start), us(s.end - s.start), s.layer,
               micro_batch(s.micro_batch), wait ? "" : s.profiled ? R"(,"source":"profile")" : R"(,"source":"roofline")");
  }
  // Links: one process, a track per link that was ever busy.
  if (!t.link_busy().empty()) {
    const topology::Cluster cluster(sc.cluster);
    const int pid = sc.cluster.nodes;
    sep();
    fmt::print(out, R"({{"ph":"M","name":"process_name","pid":{},"args":{{"name":"links"}}}})", pid);
    std::vector<char> named(cluster.links().size(), 0);
    for (const auto& b : t.link_busy()) {
      const auto& l = cluster.links()[b.link];
      if (!named[b.link]) {
        named[b.link] = 1;
        sep();
        fmt::print(out, R"J({{"ph":"M","name":"thread_name","pid":{},"tid":{},"args":{{"name":"link {} {} -> {} ({})"}}}})J", pid,
                   b.link, b.link, cluster.device_name(l.src), cluster.device_name(l.dst), topology::to_string(l.kind));
      }
      sep();
      fmt::print(out, R"({{"ph":"X","name":"busy","cat":"link","pid":{},"tid":{},"ts":{},"dur":{}}})", pid, b.link, us(b.start),
                 us(b.end - b.start));
    }
  }
  std::size_t id = 0;
  for (const auto& f : t.flows()) {
    const int src = static_cast<int>(f.flow.src.index()), dst = static_cast<int>(f.flow.dst.index());
    const std::string name =
        fmt::format("{}{} {}->{}", to_string(f.stage), f.recompute ? " (recompute)" : f.backward ? " gradient" : "", src, dst);
    sep();
    fmt::print(out,
               R"({{"ph":"b","name":"{}","cat":"{}","id":{},"pid":{},"tid":{},"ts":{},"args":{{"layer":{}{},"bytes":{}}}}})",
               name, to_string(f.stage), id, src / gpn, gpus + src, us(f.start), f.layer, micro_batch(f.micro_batch),
               f.flow.size.count());
    sep();
    fmt::print(out, R"({{"ph":"e","name":"{}","cat":"{}","id":{},"pid":{},"tid":{},"ts":{}}})", name, to_string(f.stage), id,
               src / gpn, gpus + src, us(f.end));
    ++id;
  }
  out << "\n]}\n";
}

void print_human_summary(std::ostream& out, const scenarios::Scenario& sc,
                         const scenarios::RunResult& r, const std::vector<std::string>& written) {
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const auto& f = sc.forward;
  const sim::Time step = r.stats.step_time();
  const int crit = r.stats.critical_gpu();
  const auto& g = r.stats.gpus()[static_cast<std::size_t>(crit)].stage_total;
  const double tokens = step_tokens(sc);
  const Totals t = totals(sc, r);
  fmt::print(out, "moesim: {}{}\n", sc.source, f.model.name.empty() ? "" : " (" + f.model.name + ")");
  const bool mesh = sc.cluster.node.fabric == topology::NodeFabric::mesh;
  fmt::print(out, "  cluster     {} x {} ({} node{} x {}{}), EP{}{}{}{}, {} tokens per GPU{}\n", gpus,
             sc.cluster.gpu.name, sc.cluster.nodes, sc.cluster.nodes == 1 ? "" : "s", sc.cluster.gpus_per_node,
             mesh ? fmt::format(", a mesh of {:.4g} GB/s links", static_cast<double>(sc.cluster.node.link_bandwidth.bytes_per_s()) / 1e9)
                  : std::string(),
             f.etp > 1 ? fmt::format("{}, ETP{} (each expert over {} GPUs)", f.ep, f.etp, f.etp) : std::to_string(f.ep),
             f.model.tp > 1 ? fmt::format(", TP{} (attention{}{}{}{})", f.model.tp, f.model.dense_layers > 0 ? ", dense layers" : "",
                                          f.model.shared_experts > 0 && !f.model.shared_replicated ? ", shared experts" : "",
                                          f.model.vocab > 0 ? ", LM head" : "",
                                          f.tp_algorithm == models::CollectiveAlgorithm::nvls ? "; collectives in the NVSwitch" : "")
                            : std::string(),
             f.cp > 1 ? fmt::format(", CP{} ({}-token sequences, {} tokens of each a {})", f.cp, f.sequence_length, f.sequence_length / f.cp,
                                    f.model.tp > 1 ? "tensor-parallel group" : "GPU")
                      : std::string(),
             f.pp > 1 ? fmt::format(", PP{} ({}{})", f.pp,
                                    f.virtual_stages > 1 ? fmt::format("{} chunks per stage, ", f.virtual_stages) : "",
                                    !f.training                                                  ? "pipelined"
                                    : f.pipeline_schedule == models::PipelineSchedule::gpipe ? "GPipe"
                                    : f.pipeline_schedule == models::PipelineSchedule::zb_h1 ? "ZB-H1"
                                    : f.pipeline_schedule == models::PipelineSchedule::dualpipev ? "DualPipeV, chunks in a V"
                                    : f.pipeline_schedule == models::PipelineSchedule::dualpipe
                                        ? "DualPipe, half the micro-batches each way, stage s holding chunks s and pp - 1 - s"
                                    : f.virtual_stages > 1                                   ? "interleaved 1F1B"
                                                                                             : "1F1B")
                     : std::string(),
             f.sequences(),
             f.micro_batches > 1 ? fmt::format(" per micro-batch, {} micro-batches", f.micro_batches) : "");
  if (const auto& speeds = sc.cluster.scale_out.nic_speed; sc.cluster.scale_out.present && !speeds.empty()) {
    // The NICs the scenario slows (or speeds up), by GPU.
    std::vector<std::string> odd;
    for (std::size_t g = 0; g < speeds.size(); ++g)
      if (speeds[g] != 1.0)
        odd.push_back(fmt::format("GPU {}'s at {:g} ({:.4g} GB/s)", g, speeds[g],
                                  static_cast<double>(sc.cluster.scale_out.nic_bandwidth.bytes_per_s()) * speeds[g] / 1e9));
    if (!odd.empty())
      fmt::print(out, "  note        {} NIC{} not at {:.4g} GB/s (cluster.scale_out.nic_speed): {}{}\n", odd.size(), odd.size() == 1 ? "" : "s",
                 static_cast<double>(sc.cluster.scale_out.nic_bandwidth.bytes_per_s()) / 1e9,
                 fmt::join(odd.begin(), odd.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(odd.size(), 4)), ", "),
                 odd.size() > 4 ? ", ..." : "");
  }
  if (sc.cluster.node.fabric != sc.cluster.gpu.fabric)
    fmt::print(out, "  note        the {} comes in servers with {}; this node puts it on {} (cluster.node.fabric)\n", sc.cluster.gpu.name,
               sc.cluster.gpu.fabric == topology::NodeFabric::mesh ? "a mesh of links, one per GPU pair" : "an NVSwitch",
               mesh ? "a mesh" : "an NVSwitch");
  {
    // A NIC faster than its PCIe link (an 800 Gb/s NIC on the default PCIe Gen5 x16) moves no
    // more than the PCIe link does: say so, since the NIC bandwidth alone suggests otherwise.
    const double nic = static_cast<double>(sc.cluster.scale_out.nic_bandwidth.bytes_per_s());
    const double pcie = static_cast<double>(sc.cluster.node.pcie_bandwidth.bytes_per_s());
    if (sc.cluster.scale_out.present && nic > pcie)
      fmt::print(out,
                 "  note        each NIC's {:.0f} GB/s is more than its PCIe link's {:.0f} GB/s, which caps it (cluster.node.pcie_bandwidth; "
                 "an 800 Gb/s NIC needs PCIe Gen6 x16, 128GB/s)\n",
                 nic / 1e9, pcie / 1e9);
  }
  // Sequences longer than the tokens a GPU's attention sees (its own, or with tensor parallelism
  // its group's, which the all-gather brings together): each GPU holds part of each, and its
  // attention's keys and values live on the other GPUs of the sequence (context parallelism),
  // which is not modelled. Say so, since the attention's FLOPs are those of the whole sequence.
  if (f.context_length == 0 && f.cp == 1 && f.sequence_length > f.model.tp * f.tokens_per_gpu)
    fmt::print(out,
               "  note        sequence_length {} is more than the {} tokens {} holds: each GPU has part of each sequence, and its "
               "attention the FLOPs of the whole; the exchange of keys and values between the GPUs of a sequence (context "
               "parallelism, parallelism.cp) is not modelled\n",
               f.sequence_length, f.model.tp * f.tokens_per_gpu, f.model.tp > 1 ? "a tensor-parallel group" : "a GPU");
  if (!sc.model_config.empty()) {
    fmt::print(out, "  config      the model's keys from {}{}{}\n", sc.model_config,
               sc.model_type.empty() ? std::string() : fmt::format(" ({})", sc.model_type),
               sc.model_notes.empty() ? std::string() : ", with what moesim leaves out or approximates:");
    for (const auto& n : sc.model_notes) fmt::print(out, "              - {}\n", n);
    // Longer contexts than the model was built for (max_position_embeddings) are simulated all
    // the same; say so.
    // (With contexts that differ, workload.context_sigma, the longest sequence drawn.)
    std::int64_t context = f.context_length;
    for (const auto& l : r.contexts) context = std::max(context, l.longest);
    const std::int64_t longest = f.context_length > 0 ? context + 1 + f.draft_tokens : f.cached_prefix + f.sequence_length;
    if (sc.model_max_positions > 0 && longest > sc.model_max_positions)
      fmt::print(out, "  note        {} tokens of context{} is more than the {} positions the model was built for (max_position_embeddings)\n",
                 longest, context > f.context_length ? " (the longest sequence drawn)" : "", sc.model_max_positions);
  }
  const models::ModelParams params = models::model_params(f.model);
  const int mtp = f.model.mtp_modules;
  fmt::print(out, "  model       {:.1f} B parameters, {:.1f} B active per token{}{}\n", static_cast<double>(params.total) / 1e9,
             static_cast<double>(params.active) / 1e9,
             mtp == 0 ? std::string()
                      : fmt::format(", and {:.1f} B in {} MTP module{} ({})", static_cast<double>(params.mtp) / 1e9, mtp,
                                    mtp > 1 ? "s" : "",
                                    f.training                ? "trained after the main layers"
                                    : f.model.mtp_layers > 0 ? "drafting"
                                                             : "not run: it drafts only in decode, with workload.draft_tokens"),
             routing::is_sparse_mla(f.model)
                 ? fmt::format("; multi-head latent attention, sparse: each query over its top {} keys (DeepSeek Sparse Attention)",
                               f.model.mla.index_topk)
             : routing::is_mla(f.model) ? std::string("; multi-head latent attention")
                                        : sliding_note(f.model));
  const int main_layers = f.model.moe_layers - f.model.mtp_layers;
  const std::string layers_said =
      f.model.mtp_layers == 0
          ? fmt::format("{} MoE layers", main_layers)
          : fmt::format("{} MoE layers and {} MTP layer{}", main_layers, f.model.mtp_layers, f.model.mtp_layers > 1 ? "s" : "");
  const std::string what =
      f.training && f.micro_batches > 1
          ? fmt::format("training step: {} micro-batches (gradient accumulation) forward and backward through {}, "
                        "then one optimizer update",
                        f.micro_batches, layers_said)
          : fmt::format("{} through {}",
                        f.training ? std::string("training step: forward, backward and optimizer of one micro-batch")
                        : f.context_length > 0 && f.draft_tokens > 0
                            ? fmt::format("decode step: {} sequences per GPU{} each verify {} draft token{} with their new "
                                          "one and gain {:.3g} tokens on average (acceptance {:.3g})",
                                          f.sequences(),
                                          f.micro_batches > 1 ? fmt::format(" in each of {} micro-batches", f.micro_batches) : "",
                                          f.draft_tokens, f.draft_tokens > 1 ? "s" : "", tokens_per_sequence(f), f.acceptance_rate)
                        : f.context_length > 0
                            ? fmt::format("decode step: one new token for each of {} sequences per GPU{}", f.sequences(),
                                          f.micro_batches > 1 ? fmt::format(" in each of {} micro-batches", f.micro_batches) : "")
                        : sc.workload_kind == "prefill"
                            ? (f.micro_batches > 1 ? fmt::format("prefill of {} batches of prompts", f.micro_batches)
                                                   : std::string("prefill of one batch of prompts")) +
                                  (f.cached_prefix > 0 ? fmt::format(", each {} new tokens after a cached prefix of {},",
                                                                     f.sequence_length, f.cached_prefix)
                                                       : std::string())
                            : (f.micro_batches > 1 ? fmt::format("forward pass of {} micro-batches", f.micro_batches)
                                                   : std::string("forward pass of one micro-batch")),
                        layers_said) +
      (f.prefill_chunk > 0 ? fmt::format(", with {} prompt tokens per GPU (chunked prefill of {}-token prompts)", f.prefill_chunk,
                                         f.sequence_length)
                           : std::string());
  const int stage_gpus = gpus / f.pp;
  const std::string groups =
      f.shard_group > 0 && f.shard_group < stage_gpus
          ? fmt::format(" in groups of {} GPUs, {} copies (hybrid: reduce-scattered in a group, all-reduced across)", f.shard_group,
                        stage_gpus / f.shard_group)
          : std::string();
  const std::string sharding =
      !f.training || !f.gradient_sync ? std::string()
      : f.parameter_sharding
          ? fmt::format("; weights, gradients and optimizer sharded ({}){}, each layer's weights gathered{} before its passes",
                        groups.empty() ? "FSDP" : "HSDP", groups, f.fp8_param_gather ? " in fp8" : "")
      : f.optimizer_sharding ? fmt::format("; optimizer sharded (ZeRO-1){}{}", groups, f.fp8_param_gather ? ", weights gathered in fp8" : "")
                             : std::string();
  fmt::print(out, "  step time   {:.3f} ms  ({}{}){}\n", step.to_us() / 1e3, what, sharding,
             f.draft_tokens > 0 ? fmt::format(": a token every {:.3f} ms per sequence", step.to_us() / 1e3 / tokens_per_sequence(f))
                                : std::string());
  if (step > sim::Time::zero()) {
    const Economics e = economics(sc, r);
    const double per_s = tokens / step.to_seconds();
    fmt::print(out, "  throughput  {:.0f} tokens/s ({:.0f} per GPU), MFU {:.1f}%\n", per_s, per_s / gpus, 100 * e.mfu);
    if (f.prefill_chunk > 0) {
      const double prompts_per_s = step_prompt_tokens(sc) / step.to_seconds();
      fmt::print(out, "  prompts     {:.0f} prompt tokens/s prefilled beside them ({:.0f} per GPU, {:.3g} prompts/s of {} tokens)\n",
                 prompts_per_s, prompts_per_s / gpus, prompts_per_s / static_cast<double>(f.sequence_length), f.sequence_length);
    }
    if (f.training) {
      // How pre-training budgets are stated (DeepSeek-V3's report: 180K H800 GPU hours per
      // trillion tokens, 3.7 days on its 2,048 GPUs): at this step's throughput.
      const double seconds = 1e12 / per_s;
      const double hours = seconds * gpus / 3600;
      const auto priced = [&](double h) {
        return sc.gpu_hour_price > 0 ? fmt::format(", {} at {} per GPU-hour", gpu_hours(h * sc.gpu_hour_price), sc.gpu_hour_price) : std::string();
      };
      fmt::print(out, "  1T tokens   {:.4g} days on these {} GPUs, {} GPU-hours{}{}\n", seconds / 86400, gpus, gpu_hours(hours), priced(hours),
                 sc.reliability.enabled() ? " (without failures)" : "");
      const models::Goodput gp = run_goodput(sc, r);
      if (sc.reliability.enabled()) {
        const auto duration = [](double s) {
          const auto in = [](double x, const char* unit) { return x >= 100 ? fmt::format("{:.0f} {}", x, unit) : fmt::format("{:.3g} {}", x, unit); };
          return s >= 2 * 86400 ? in(s / 86400, "days") : s >= 5400 ? in(s / 3600, "h") : s >= 90 ? in(s / 60, "min") : in(s, "s");
        };
        const std::string rate = sim::format_bandwidth(sim::Bandwidth(static_cast<std::int64_t>(sc.reliability.checkpoint_bytes_per_s)));
        const std::string checkpoint =
            sc.reliability.async
                ? fmt::format("an asynchronous checkpoint ({:.3g} TB) stalls the steps {}{} and is written in {} at {}", gp.checkpoint_bytes / 1e12,
                              duration(gp.checkpoint_s),
                              sc.reliability.checkpoint_s > 0 ? std::string()
                                                              : fmt::format(" (each GPU's share to host memory at {})",
                                                                            sim::format_bandwidth(sim::Bandwidth(static_cast<std::int64_t>(sc.reliability.host_bytes_per_s)))),
                              duration(gp.write_s), rate)
                : fmt::format("a checkpoint{} takes {}", gp.checkpoint_bytes > 0 ? fmt::format(" ({:.3g} TB at {})", gp.checkpoint_bytes / 1e12, rate) : std::string(),
                              duration(gp.checkpoint_s));
        // Spare nodes: the wait for a node besides the restart, and the spares' GPUs paid for.
        const auto& rel = sc.reliability;
        const std::string spares_said =
            !rel.spares() ? std::string()
            : rel.spare_nodes == 0
                ? fmt::format(" and, with no spare node, the failed node's repair ({})", duration(rel.repair_s))
                : fmt::format(" and, with {} spare node{} ({} GPUs idle, in the GPU-hours) and a node out {}, {:.3g} % of failures "
                              "finding none free, {} on average waiting for one",
                              rel.spare_nodes, rel.spare_nodes == 1 ? "" : "s", rel.spare_nodes * sc.cluster.gpus_per_node,
                              duration(rel.repair_s), 100 * gp.short_share, duration(gp.spare_wait_s));
        fmt::print(out, "  failures    the job stops every {} on average ({} GPUs, each every {:.0f} h); {}, every {} step{} ({}{}), a restart {}: {}\n",
                   duration(gp.job_mtbf_s), gpus, sc.reliability.gpu_mtbf_hours, checkpoint, gp.every_steps, gp.every_steps > 1 ? "s" : "",
                   duration(gp.interval_s),
                   gp.wait_s > 0 ? fmt::format("; each copy waits {} more for the previous write", duration(gp.wait_s)) : std::string(),
                   duration(sc.reliability.restart_s) + spares_said,
                   gp.goodput > 0 ? fmt::format("goodput {:.2f}%, 1T tokens in {:.4g} days, {} GPU-hours{}", 100 * gp.goodput,
                                                seconds / gp.goodput / 86400, gpu_hours(hours * spare_factor(sc) / gp.goodput),
                                                priced(hours * spare_factor(sc) / gp.goodput))
                                  : std::string("no goodput: the steps between checkpoints (and the restart) take hundreds of times the "
                                                "job's time between failures"));
      }
      if (sc.train_tokens > 0) {
        const Budget b = budget(sc, r, gp);
        if (b.days > 0)
          fmt::print(out, "  budget      {} tokens in {:.4g} days on these {} GPUs, {} GPU-hours{}{}\n", token_count(sc.train_tokens), b.days, gpus,
                     gpu_hours(b.gpu_hours), priced(b.gpu_hours), sc.reliability.enabled() ? " (with failures and checkpoints)" : "");
        else
          fmt::print(out, "  budget      {} tokens: never (no goodput, above)\n", token_count(sc.train_tokens));
      }
    }
    if (sc.gpu_hour_price > 0)
      fmt::print(out, "  cost        {:.4g} per million tokens ({:.4g} per step at {} per GPU-hour)\n",
                 e.cost_per_million_tokens, e.cost_per_step, sc.gpu_hour_price);
    if (const Power pw = cluster_power(sc, r); pw.kw > 0) {
      const bool rated = sc.gpu_power_w == sc.cluster.gpu.board_power_w;
      const std::string parts =
          sc.node_power_w > 0 || sc.pue > 1
              ? fmt::format("{} server{} other parts at {:.4g} kW each, PUE {:.3g}", sc.cluster.nodes, sc.cluster.nodes == 1 ? "'s" : "s'",
                            sc.node_power_w / 1e3, sc.pue)
              : std::string("the servers' CPUs, NICs and fans, the network and cooling not counted: cluster.power");
      fmt::print(out, "  power       {:.4g} kW ({} GPUs at {:.4g} W{}; {}), {:.4g} kWh per million tokens{}\n", pw.kw, gpus, sc.gpu_power_w,
                 rated ? ", rated board power" : "", parts, pw.kwh_per_million_tokens,
                 f.training ? fmt::format(", {:.4g} MWh per trillion", pw.kwh_per_million_tokens * 1e3) : std::string());
    }
  }
  const models::GpuStats& gp = r.stats.gpus()[static_cast<std::size_t>(crit)];
  fmt::print(out, "  where the time goes on GPU {} (the last to finish):\n", crit);
  for (const Stage s : models::kStages) {
    const sim::Time d = g[idx(s)];
    if (d == sim::Time::zero() &&
        (s == Stage::shared_experts || s == Stage::pipeline || s == Stage::lm_head || s == Stage::tp || s == Stage::cp ||
         s == Stage::param_gather))
      continue;
    // A label longer than its column ("param_gather wait") takes its excess from the figure's.
    const std::string label = std::string(models::to_string(s)) + (models::is_network_wait(s) ? " wait" : "");
    fmt::print(out, "    {:<15} {:>{}.3f} ms  {:>5.1f}%{}\n", label, d.to_us() / 1e3,
               std::max(1, 10 - std::max(0, static_cast<int>(label.size()) - 15)),
               step > sim::Time::zero() ? 100.0 * static_cast<double>(d.count_ps()) / static_cast<double>(step.count_ps()) : 0.0,
               s == Stage::pipeline           ? std::string("  (bubble and transfers between pipeline stages)")
               : s == Stage::tp             ? std::string("  (network: the tensor-parallel all-gathers and reduce-scatters)")
               : s == Stage::param_gather   ? std::string("  (network: the sharded weights' all-gathers before each layer's passes)")
               : s == Stage::cp             ? std::string(sc.forward.cp_latent
                                                              ? "  (network: the context-parallel kv latents' all-gathers, their gradients' reduce-scatters)"
                                                              : "  (network: the context-parallel keys' and values' all-gathers, their gradients' reduce-scatters)")
               : models::is_network_wait(s) ? std::string("  (network)")
                                            : time_source(d, gp.stage_profiled[idx(s)]));
  }
  if (gp.recompute_total > sim::Time::zero())
    fmt::print(out, "    {:<15} {:>10.3f} ms  {:>5.1f}%  (of the stages above: forward work run again in the backward passes, "
                    "its all-to-all waits included; recompute: {})\n",
               "recomputation", gp.recompute_total.to_us() / 1e3,
               100.0 * static_cast<double>(gp.recompute_total.count_ps()) / static_cast<double>(step.count_ps()),
               f.recompute == models::Recompute::full && f.recompute_layers > 0
                   ? fmt::format("full, the first {} MoE layers of each model chunk", f.recompute_layers)
               : f.recompute == models::Recompute::selective ? "selective of " + selective_modules(f, true)
                                                             : std::string(models::to_string(f.recompute)));
  if (f.pp > 1) {
    const StageCompute c = stage_compute(sc, r);
    std::string list;
    for (std::size_t st = 0; st < c.busy.size(); ++st) list += fmt::format("{}{}: {:.3f}", st > 0 ? ", " : "", st, c.busy[st].to_us() / 1e3);
    fmt::print(out, "  stages      compute of each pipeline stage's busiest GPU (ms): {}; stage {} does {:.2f}x the mean{}\n", list,
               c.most, c.over, c.over > 1.05 ? " (parallelism.pipeline_layers can give it fewer MoE layers; that evens the compute, but where "
                                   "the stages' all-to-alls share links it can make the step slower: compare the steps)"
                                 : "");
  }
  fmt::print(out, "  routing     {} assignments, {} dropped ({}), max/mean tokens per GPU {:.3f}\n",
             t.routed, t.dropped,
             f.routing.capacity_factor ? fmt::format("capacity factor {}", *f.routing.capacity_factor)
                                       : std::string("dropless"),
             t.gpu_imbalance);
  if (!r.contexts.empty()) {
    // The attention groups' mean contexts (over the micro-batches' draws) and the longest.
    const std::vector<routing::ContextLoad>& loads = r.contexts;
    const double n = static_cast<double>(f.model.tp * f.sequences());
    double lo = 1e300, hi = 0;
    std::int64_t longest = 0;
    for (const auto& l : loads) {
      lo = std::min(lo, l.sum / n);
      hi = std::max(hi, l.sum / n);
      longest = std::max(longest, l.longest);
    }
    fmt::print(out, "  contexts    log-normal around {} tokens (sigma {}), {}: a {}'s mean context {:.0f} to {:.0f} ({:+.1f} % "
               "at most), the longest sequence {}\n",
               f.context_length, f.context_sigma, f.context_balanced ? "dealt to even out the caches" : "as they come",
               f.model.tp > 1 ? "tensor-parallel group" : "GPU", lo, hi, (hi / static_cast<double>(f.context_length) - 1) * 100,
               longest);
  }
  // Which measurements a profiled run's kernel times come from: the GPU they were taken on and the file.
  const std::string measured_on =
      r.compute_source != "roofline" && f.profile
          ? fmt::format(" (measured on {}: {})", f.profile->gpu.empty() ? std::string("an unnamed GPU") : f.profile->gpu, f.profile->source)
          : "";
  const double profiled = profiled_fraction(gp);
  fmt::print(out, "  models      network: {} ({}), all-to-all: {}, compute: {}{}{}{}\n", r.network_model,
             r.network_model != "maxmin"              ? std::string("no contention")
             : sc.resolve_interval == sim::Time::zero() ? std::string("max-min fair sharing of every link")
                                                        : fmt::format("max-min fair sharing of every link, re-solved at most every {}",
                                                                      sim::format_time(sc.resolve_interval)),
             f.all_to_all.algorithm != models::AllToAllAlgorithm::hierarchical ? std::string(models::to_string(f.all_to_all.algorithm))
             : f.all_to_all.forward_chunks > 1 ? fmt::format("hierarchical (relays forward in {} chunks)", f.all_to_all.forward_chunks)
                                               : std::string("hierarchical (relays store and forward whole flows)"),
             r.compute_source, measured_on,
             r.compute_source == "roofline"
                 ? (sc.roofline.gemm_dtype == models::GemmDtype::bf16
                        ? std::string()
                        : fmt::format(" with {} GEMMs (experts, dense FFNs, attention projections)",
                                      sc.roofline.gemm_dtype == models::GemmDtype::fp8 ? "FP8" : "FP4"))
                 : fmt::format("; {:.1f}% of GPU {}'s compute time from the profile, the rest from the roofline{}", 100 * profiled,
                               crit,
                               !f.training ? ""
                               : f.profile && f.profile->measures("experts_bwd") ? " (the optimizer among it)"
                                                                                  : " (backward passes and the optimizer among it)"),
             sc.roofline.elementwise_kernels ? "; the roofline's norms, rotary embeddings, permutations and SwiGLU activations as "
                                               "memory-bound kernels of their own"
                                             : "");
  if (f.two_batch_overlap)
    fmt::print(out, "  overlap     two-batch{}: each micro-batch runs as two halves, each half's all-to-alls beside the other's compute{}; "
                    "the all-to-all kernels hold {:.1f}% of the SMs\n",
               f.two_batch_staggered ? ", staggered" : "", f.two_batch_staggered ? " (the second half half a layer behind)" : "",
               100 * f.comm_sm_fraction);
  if (f.forward_backward_overlap) {
    int paired = 0, backwards = 0;  // on the critical GPU's stage
    for (const auto& it : models::pipeline_order(f, crit / (gpus / f.pp))) {
      paired += it.overlapped;
      backwards += it.backward;
    }
    fmt::print(out, "  overlap     forward-backward ({}): {} of the stage's {} backward passes ran together with a forward, "
                    "layer by layer, each one's all-to-alls beside the other's compute; the all-to-all kernels hold {:.1f}% of the "
                    "SMs meanwhile\n",
               f.pipeline_schedule == models::PipelineSchedule::dualpipev  ? "DualPipeV's pairs"
               : f.pipeline_schedule == models::PipelineSchedule::dualpipe ? "DualPipe's pairs"
                                                                           : "combined 1F1B",
               paired, backwards,
               100 * f.comm_sm_fraction);
  }
  if (r.compute_source != "profile" && f.profile) {
    // A profile was there but (some) stages fell back: say what it measures, so that the reason
    // (another shape, expert count or top-k, or tokens past its range) can be seen.
    std::set<std::tuple<int, int, int, int>> shapes;  // hidden, ffn, experts, top_k of its router rows
    for (const auto& row : f.profile->rows)
      if (row.kernel == "router") shapes.insert({row.hidden, row.ffn, row.experts, row.top_k});
    std::string measured;
    for (const auto& [h, ff, e, k] : shapes) {
      if (!measured.empty()) measured += "; ";
      measured += fmt::format("H {} F {} E {} k {}", h, ff, e, k);
    }
    const auto& m = f.model;
    const bool shape = shapes.count({static_cast<int>(m.hidden), static_cast<int>(m.expert_ffn), m.experts, m.top_k}) > 0;
    std::string why;
    if (shape) {
      // Its range for this shape: the router's tokens, the expert stage's local experts and rows.
      // With expert tensor parallelism the expert stage is a shard's: F / etp wide.
      const std::int64_t shard = m.expert_ffn / f.etp;
      std::int64_t tokens = 0, rows = 0;
      std::set<int> locals;
      for (const auto& row : f.profile->rows) {
        if (row.hidden != m.hidden) continue;
        if (row.ffn == m.expert_ffn && row.kernel == "router" && row.experts == m.experts && row.top_k == m.top_k)
          tokens = std::max(tokens, row.tokens);
        if (row.ffn == shard && row.kernel == "experts") locals.insert(row.experts), rows = std::max(rows, row.tokens);
      }
      std::string counts;
      for (const int e : locals) {
        if (!counts.empty()) counts += ',';
        counts += std::to_string(e);
      }
      why = locals.empty() && f.etp > 1
                ? fmt::format(": this shape is measured up to {} tokens, but not its experts' shard with parallelism.etp {} (H {} F {}): "
                              "the expert stage is the roofline's, and so is every other stage beyond that",
                              tokens, f.etp, m.hidden, shard)
                : fmt::format(": this shape is measured up to {} tokens, the expert stage on {} local experts up to {} rows; the stage "
                              "times beyond that are the roofline's",
                              tokens, counts, rows);
    } else {
      why = fmt::format("; this model, H {} F {} E {} k {}, is not among them: its stages are the roofline's", m.hidden,
                        m.expert_ffn, m.experts, m.top_k);
    }
    fmt::print(out, "  profile     {} measures {}{}\n", f.profile->source, measured.empty() ? std::string("no router rows") : measured,
               why);
  }
  if (!r.links.empty()) {
    // The link that was busy longest: where the fabric's time went. Links in series carrying the
    // same flows (a NIC's PCIe link and its port on the leaf) are busy for the same time; of
    // those the one that ran fullest, the narrower, is the bottleneck.
    const topology::Cluster cluster(sc.cluster);
    std::size_t busiest = 0;
    for (std::size_t i = 1; i < r.links.size(); ++i) {
      const auto& a = r.links[i];
      const auto& b = r.links[busiest];
      const bool same_time = std::abs(a.busy_s - b.busy_s) <= 1e-9 * std::max(a.busy_s, b.busy_s);
      if (same_time ? a.peak_utilisation > b.peak_utilisation : a.busy_s > b.busy_s) busiest = i;
    }
    const auto& l = cluster.links()[busiest];
    if (r.links[busiest].busy_s > 0)
      fmt::print(out, "  busiest     link {} {} -> {} ({}): busy {:.3f} ms, peak utilisation {:.0f}%\n", busiest,
                 cluster.device_name(l.src), cluster.device_name(l.dst), topology::to_string(l.kind),
                 r.links[busiest].busy_s * 1e3, 100 * r.links[busiest].peak_utilisation);
    // The link whose bytes take longest at its full rate, where that is another: a narrow link
    // (a slowed NIC, a mesh link) can be busy for less time than a wide one that carries a trickle
    // for longer, yet be what the others wait for.
    std::size_t loaded = 0;
    const auto full_rate_s = [&](std::size_t i) {
      return r.links[i].bytes / static_cast<double>(cluster.links()[i].bandwidth.bytes_per_s());
    };
    for (std::size_t i = 1; i < r.links.size(); ++i)
      if (full_rate_s(i) > full_rate_s(loaded) * (1 + 1e-9)) loaded = i;
    if (loaded != busiest && full_rate_s(loaded) > full_rate_s(busiest) * (1 + 1e-9) && step > sim::Time::zero()) {
      const auto& m = cluster.links()[loaded];
      fmt::print(out, "  most loaded link {} {} -> {} ({}): its bytes take {:.3f} ms at its {:.4g} GB/s ({:.0f}% of the step)\n", loaded,
                 cluster.device_name(m.src), cluster.device_name(m.dst), topology::to_string(m.kind), full_rate_s(loaded) * 1e3,
                 static_cast<double>(m.bandwidth.bytes_per_s()) / 1e9, 100 * full_rate_s(loaded) / step.to_seconds());
    }
  }
  {
    const auto [mg, mem] = peak_memory(sc, r);
    const double capacity = static_cast<double>(sc.cluster.gpu.memory.count());
    fmt::print(out, "  memory      up to {:.1f} GB on GPU {} (weights {:.1f}, gradients and optimizer {:.1f}, activations {:.1f}{}, "
                    "KV cache {:.1f}{}, buffers {:.1f}){}\n",
               mem.total() / 1e9, mg, mem.weights / 1e9, mem.optimizer / 1e9, mem.activations / 1e9,
               sc.forward.activations_fp8 ? " with FP8 inputs of the linear layers" : "", mem.kv_cache / 1e9,
               mem.states > 0 ? fmt::format(" with {:.1f} of linear-attention states", mem.states / 1e9) : std::string(),
               mem.buffers / 1e9,
               capacity <= 0                ? std::string()
               : mem.total() <= capacity   ? fmt::format(" of {:.0f} GB", capacity / 1e9)
                                           : fmt::format(" -- DOES NOT FIT the {:.0f} GB of a {}", capacity / 1e9, sc.cluster.gpu.name));
  }
  if (!r.steps.empty()) {
    sim::Time total, moving;
    int refreshes = 0;
    double best = 1e300, worst = 0;
    for (const auto& st : r.steps) {
      total += st.time;
      moving += st.rebalance;
      refreshes += st.refreshed;
      best = std::min(best, st.gpu_imbalance);
      worst = std::max(worst, st.gpu_imbalance);
    }
    fmt::print(out, "  steps       {} (the rows above: the last), mean step {:.3f} ms, GPU max/mean {:.3f} to {:.3f}; "
                    "{} placement refreshes moving weights for {:.3f} ms\n",
               r.steps.size(), total.to_us() / 1e3 / static_cast<double>(r.steps.size()), best, worst, refreshes,
               moving.to_us() / 1e3);
  }
  if (r.timeline && !r.timeline->complete())
    fmt::print(out, "  timeline    not written: more than {} records (output.timeline: on keeps them all)\n",
               r.timeline->limit());
  if (!written.empty()) fmt::print(out, "  wrote       {}\n", fmt::join(written, ", "));
}

namespace {

// Expected share of a layer's assignments on each slot (expert load / replicas), and the
// resulting GPU max/mean.
std::vector<double> slot_shares(const routing::Placement& pl, const std::vector<double>& weight) {
  const double total = std::accumulate(weight.begin(), weight.end(), 0.0);
  std::vector<double> share(static_cast<std::size_t>(pl.slots()));
  for (int s = 0; s < pl.slots(); ++s) {
    const auto e = static_cast<std::size_t>(pl.slot_expert[static_cast<std::size_t>(s)]);
    share[static_cast<std::size_t>(s)] =
        total > 0 ? weight[e] / total / static_cast<double>(pl.expert_slots[e].size()) : 0.0;
  }
  return share;
}

double gpu_max_over_mean(const routing::Placement& pl, const std::vector<double>& share) {
  std::vector<double> gpu(static_cast<std::size_t>(pl.ep), 0.0);
  for (int s = 0; s < pl.slots(); ++s) gpu[static_cast<std::size_t>(pl.gpu_of_slot(s))] += share[static_cast<std::size_t>(s)];
  const double mean = std::accumulate(gpu.begin(), gpu.end(), 0.0) / pl.ep;
  return mean > 0 ? *std::max_element(gpu.begin(), gpu.end()) / mean : 0.0;
}

}  // namespace

std::string write_placement(const std::string& dir, const scenarios::Scenario&,
                            const std::vector<routing::Placement>& placements) {
  const std::string path = (std::filesystem::path(dir) / "placement.csv").string();
  write_atomically(path, [&](std::ostream& out) {
    fmt::print(out, "layer,slot,ep_rank,expert,replica,replicas,expected_share\n");
    for (std::size_t l = 0; l < placements.size(); ++l) {
      const auto& pl = placements[l];
      const auto share = slot_shares(pl, pl.load);
      for (int s = 0; s < pl.slots(); ++s) {
        const auto e = static_cast<std::size_t>(pl.slot_expert[static_cast<std::size_t>(s)]);
        fmt::print(out, "{},{},{},{},{},{},{:.6f}\n", l, s, pl.gpu_of_slot(s), e,
                   pl.slot_replica[static_cast<std::size_t>(s)], pl.expert_slots[e].size(),
                   share[static_cast<std::size_t>(s)]);
      }
    }
  });
  return path;
}

void print_placement_summary(std::ostream& out, const scenarios::Scenario& sc,
                             const std::vector<routing::Placement>& placements, const std::string& written) {
  if (placements.empty()) return;
  const auto& first = placements.front();
  fmt::print(out, "moesim: placement for {} ({} experts, EP{}, {} slots per GPU, {} MoE layers)\n", sc.source,
             first.experts, first.ep, first.slots_per_gpu, placements.size());
  double worst = 0, best = 1e300, contiguous_worst = 0;
  for (std::size_t l = 0; l < placements.size(); ++l) {
    const double r = gpu_max_over_mean(placements[l], slot_shares(placements[l], placements[l].load));
    worst = std::max(worst, r);
    best = std::min(best, r);
    if (first.experts % first.ep == 0) {
      const auto c = routing::make_placement({}, sc.forward.routing, first.experts, first.ep, sc.cluster.gpus_per_node,
                                             sc.forward.seed, static_cast<int>(l));
      contiguous_worst = std::max(contiguous_worst, gpu_max_over_mean(c, slot_shares(c, placements[l].load)));
    }
  }
  fmt::print(out, "  expected GPU load max/mean over layers: {:.3f} to {:.3f}", best, worst);
  if (contiguous_worst > 0) fmt::print(out, " (contiguous placement: up to {:.3f})", contiguous_worst);
  fmt::print(out, "\n  wrote       {}\n", written);
}

void write_token_trace_file(const std::string& path, const std::vector<routing::TokenBatch>& layers, bool binary) {
  write_atomically(path, [&](std::ostream& out) { routing::write_token_trace(out, layers, binary); });
}

ConvertedTrace convert_token_trace(const std::string& from, const std::string& to) {
  routing::TokenTraceReader in(from, 0, 0);
  const bool binary = !in.binary();
  ConvertedTrace done{0, in.binary()};
  std::int64_t& tokens = done.tokens;
  write_atomically(to, [&](std::ostream& out) {
    std::int64_t layer = 0, token = 0, rank = 0;
    const int* ids = nullptr;
    const float* gates = nullptr;
    std::optional<routing::TokenTraceWriter> w;
    while (in.next(layer, token, rank, ids, gates)) {
      if (!w) w.emplace(out, binary, in.top_k());  // a CSV's top_k is its first token's
      w->add(layer, token, rank, ids, gates);
      ++tokens;
    }
    if (!w) throw routing::TraceError(fmt::format("{}: no tokens to convert", from));
    w->finish();
  });
  return done;
}

void write_count_trace(const std::string& path, const std::vector<std::vector<std::int64_t>>& counts) {
  write_atomically(path, [&](std::ostream& out) {
    out << "layer,expert,count\n";
    for (std::size_t l = 0; l < counts.size(); ++l)
      for (std::size_t e = 0; e < counts[l].size(); ++e) fmt::print(out, "{},{},{}\n", l, e, counts[l][e]);
  });
}

void write_atomically(const std::string& path, const std::function<void(std::ostream&)>& writer) {
  namespace fs = std::filesystem;
  const fs::path final_path(path);
  std::error_code ec;
  if (final_path.has_parent_path()) {
    fs::create_directories(final_path.parent_path(), ec);
    if (ec)
      throw ReportError(fmt::format("cannot create the output directory '{}': {}", final_path.parent_path().string(),
                                    ec.message()));
  }
  const fs::path tmp = final_path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw ReportError(fmt::format("cannot write '{}'", tmp.string()));
    writer(out);
    out.flush();
    if (!out) throw ReportError(fmt::format("cannot write '{}'", tmp.string()));
  }
  fs::rename(tmp, final_path, ec);
  if (ec) throw ReportError(fmt::format("cannot write '{}': {}", final_path.string(), ec.message()));
}

std::vector<std::string> write_reports(const std::string& dir, const scenarios::Scenario& sc,
                                       const scenarios::RunResult& r) {
  std::vector<std::string> written;
  auto write = [&](const std::string& name, auto&& writer) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    write_atomically(path, [&](std::ostream& out) { writer(out, sc, r); });
    written.push_back(path);
  };
  write("summary.csv", write_summary_csv);
  write("layers.csv", write_layers_csv);
  write("experts.csv", write_experts_csv);
  write("gpus.csv", write_gpus_csv);
  if (!r.steps.empty()) write("steps.csv", write_steps_csv);
  if (r.timeline && r.timeline->complete()) write("timeline.json", write_timeline_json);
  if (!r.links.empty()) write("links.csv", write_links_csv);
  return written;
}

}  // namespace moesim::tools
