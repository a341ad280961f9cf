#include "models/run_stats.hpp"

#include <algorithm>

namespace moesim::models {

RunStats::RunStats(int gpus, int layers, int gpus_per_node, int micro_batches)
    : gpus_per_node_(gpus_per_node),
      layers_per_batch_(layers),
      micro_batches_(micro_batches),
      batch_rows_(static_cast<std::size_t>(gpus) * static_cast<std::size_t>(micro_batches), 0),
      layers_(static_cast<std::size_t>(layers) * static_cast<std::size_t>(micro_batches)),
      backward_layers_(static_cast<std::size_t>(layers) * static_cast<std::size_t>(micro_batches)),
      gpus_(static_cast<std::size_t>(gpus)),
      experts_(static_cast<std::size_t>(layers)),
      slots_(static_cast<std::size_t>(layers)),
      slots_padded_(static_cast<std::size_t>(layers)) {}

void RunStats::on_stage(const StageRecord& r) {
  const auto s = static_cast<std::size_t>(r.stage);
  const sim::Time d = r.end - r.start;
  GpuStats& g = gpus_[r.gpu.index()];
  g.stage_total[s] += d;
  if (r.backward) g.backward_total += d;
  if (r.recompute) g.recompute_total += d;
  if (r.profiled) g.stage_profiled[s] += d;
  g.finish = sim::max(g.finish, r.end);
  if (r.stage == Stage::optimizer || r.stage == Stage::grad_sync || r.stage == Stage::dense || r.stage == Stage::pipeline ||
      r.stage == Stage::lm_head || r.layer < 0)
    return;  // once per step or micro-batch (the dense layers together), or between stages: not part of any MoE layer
  LayerStats& l = (r.backward ? backward_layers_ : layers_)[static_cast<std::size_t>(r.micro_batch * layers_per_batch_ + r.layer)];
  l.start = sim::min(l.start, r.start);
  l.end = sim::max(l.end, r.end);
  l.stage_max[s] = sim::max(l.stage_max[s], d);
  l.stage_sum[s] += d;
}

void RunStats::on_routing(int layer, int first_gpu, int stride, const routing::DispatchPlan& plan, int micro_batch) {
  const std::size_t per_gpu = plan.slot_padded.size() / static_cast<std::size_t>(plan.ep);
  for (int r = 0; r < plan.ep; ++r) {
    GpuStats& g = gpus_[static_cast<std::size_t>(first_gpu + r * stride)];
    const auto ur = static_cast<std::size_t>(r);
    g.routed += plan.gpu_routed[ur];
    g.dropped += plan.gpu_dropped[ur];
    std::int64_t rows = plan.computed_on(r);
    g.computed += rows;
    for (std::size_t s = ur * per_gpu; s < (ur + 1) * per_gpu; ++s) {
      g.padded += plan.slot_padded[s];
      rows += plan.slot_padded[s];
    }
    // Every GPU of the rank's expert tensor-parallel group holds activations for these rows.
    const int etp_first = first_gpu - first_gpu % stride + r * stride;
    for (int i = 0; i < stride; ++i)
      batch_rows_[static_cast<std::size_t>(etp_first + i) * static_cast<std::size_t>(micro_batches_) +
                  static_cast<std::size_t>(micro_batch)] += rows;
  }
  LayerStats& l = layers_[static_cast<std::size_t>(micro_batch * layers_per_batch_ + layer)];
  l.routed += plan.routed();
  l.dropped += plan.dropped();
  l.computed += plan.routed() - plan.dropped();
  for (const auto n : plan.expert_padded) l.padded += n;
  for (int d = 0; d < plan.ep; ++d) {
    const std::int64_t n = plan.computed_on(d);
    l.max_gpu_tokens = std::max(l.max_gpu_tokens, n);
    l.gpu_tokens_sq += static_cast<double>(n) * static_cast<double>(n);
  }
  for (const auto n : plan.expert_routed) l.max_expert_tokens = std::max(l.max_expert_tokens, n);
  l.expert_slots += static_cast<std::int64_t>(plan.expert_routed.size());
  auto& e = experts_[static_cast<std::size_t>(layer)];
  e.resize(plan.expert_routed.size());
  for (std::size_t i = 0; i < e.size(); ++i) {
    e[i].routed += plan.expert_routed[i];
    e[i].computed += plan.expert_computed[i];
    e[i].padded += plan.expert_padded[i];
  }
  auto& s = slots_[static_cast<std::size_t>(layer)];
  s.resize(plan.slot_computed.size(), 0);
  auto& sp = slots_padded_[static_cast<std::size_t>(layer)];
  sp.resize(plan.slot_padded.size(), 0);
  for (std::size_t i = 0; i < s.size(); ++i) {
    s[i] += plan.slot_computed[i];
    sp[i] += plan.slot_padded[i];
  }
}

void RunStats::on_flow(const FlowRecord& r) {
  const Flow& flow = r.flow;
  if (r.stage == Stage::grad_sync) {  // once per step, not part of any layer
    gradient_sync_bytes_ += flow.size.count();
    return;
  }
  if (r.stage == Stage::pipeline) {  // between stages, not part of any layer's all-to-all
    pipeline_bytes_ += flow.size.count();
    return;
  }
  if (r.stage == Stage::tp) {  // the tensor-parallel collectives, not the all-to-all
    tp_bytes_ += flow.size.count();
    return;
  }
  if (r.stage == Stage::cp) {  // the context-parallel collectives
    cp_bytes_ += flow.size.count();
    return;
  }
  if (r.stage == Stage::param_gather) {  // parameter sharding's all-gathers of weights
    param_gather_bytes_ += flow.size.count();
    return;
  }
  LayerStats& l = (r.backward ? backward_layers_ : layers_)[static_cast<std::size_t>(r.micro_batch * layers_per_batch_ + r.layer)];
  l.network_bytes += flow.size.count();
  if (static_cast<int>(flow.src.index()) / gpus_per_node_ != static_cast<int>(flow.dst.index()) / gpus_per_node_)
    l.scale_out_bytes += flow.size.count();
  ++l.flows;
}

std::int64_t RunStats::peak_batch_rows(int gpu) const {
  const auto first = batch_rows_.begin() + static_cast<std::ptrdiff_t>(gpu) * micro_batches_;
  return *std::max_element(first, first + micro_batches_);
}

int RunStats::critical_gpu() const {
  int best = 0;
  for (std::size_t g = 1; g < gpus_.size(); ++g)
    if (gpus_[g].finish > gpus_[static_cast<std::size_t>(best)].finish) best = static_cast<int>(g);
  return best;
}

sim::Time RunStats::step_time() const {
  return gpus_.empty() ? sim::Time::zero() : gpus_[static_cast<std::size_t>(critical_gpu())].finish;
}

}  // namespace moesim::models
