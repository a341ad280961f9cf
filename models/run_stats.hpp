// A Recorder that keeps the aggregates the reports need: per layer (span, per-stage maximum and
// mean over GPUs, routing counts and imbalance; with gradient accumulation per micro-batch and
// layer) and per GPU (time in each stage, finish time).
// For one GPU the stages of all layers tile [0, finish) without gaps, so its per-stage totals
// add up to its finish time exactly.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "models/recorder.hpp"

namespace moesim::models {

struct LayerStats {
  sim::Time start = sim::Time::max();
  sim::Time end;
  std::array<sim::Time, kStageCount> stage_max{};
  std::array<sim::Time, kStageCount> stage_sum{};  // over GPUs
  std::int64_t routed = 0, computed = 0, dropped = 0;
  std::int64_t padded = 0;             // pad: padding rows sent and computed
  std::int64_t max_gpu_tokens = 0;     // assignments computed on the busiest GPU
  double gpu_tokens_sq = 0;            // sum over GPUs of (assignments computed)^2, for the CV
  std::int64_t max_expert_tokens = 0;  // assignments routed to the busiest expert (one group)
  std::int64_t expert_slots = 0;       // experts x groups, for the mean
  std::int64_t network_bytes = 0;      // dispatch + combine flows between distinct GPUs
  std::int64_t scale_out_bytes = 0;    // of those, between GPUs of different nodes
  std::int64_t flows = 0;
};

// Per layer and expert, summed over EP groups (and micro-batches).
struct ExpertStats {
  std::int64_t routed = 0, computed = 0, padded = 0;
};

struct GpuStats {
  std::array<sim::Time, kStageCount> stage_total{};  // forward and backward together
  sim::Time backward_total;                          // of that, in backward passes
  sim::Time recompute_total;                         // of that, recomputing forward work (its all-to-all waits included)
  std::array<sim::Time, kStageCount> stage_profiled{};  // of stage_total, timed from the kernel profile
  sim::Time finish;
  // Over all layers: assignments of this GPU's tokens (routed, and of those dropped), and the
  // token rows and padding rows its experts computed.
  std::int64_t routed = 0, dropped = 0, computed = 0, padded = 0;
};

class RunStats final : public Recorder {
 public:
  RunStats(int gpus, int layers, int gpus_per_node, int micro_batches = 1);
  void on_stage(const StageRecord& r) override;
  void on_routing(int layer, int first_gpu, int stride, const routing::DispatchPlan& plan, int micro_batch) override;
  void on_flow(const FlowRecord& r) override;

  // Per MoE layer, [micro_batch * layers + layer]: its forward pass (routing counts included),
  // and in a training step its backward pass (timing, flows and bytes; the routing is the
  // forward's). Empty backward rows never started.
  const std::vector<LayerStats>& layers() const { return layers_; }
  const std::vector<LayerStats>& backward_layers() const { return backward_layers_; }
  int moe_layers() const { return layers_per_batch_; }
  int micro_batches() const { return micro_batches_; }
  const std::vector<GpuStats>& gpus() const { return gpus_; }
  // The most token and padding rows `gpu`'s experts computed in one micro-batch, over all its
  // layers (what its activations hold at once when each micro-batch's backward runs before the
  // next one's forward); with expert tensor parallelism its group's rows, its share of each.
  std::int64_t peak_batch_rows(int gpu) const;
  // [layer][expert] and [layer][slot] (tokens and padding each replica computed), summed over EP
  // groups and micro-batches.
  const std::vector<std::vector<ExpertStats>>& experts() const { return experts_; }
  const std::vector<std::vector<std::int64_t>>& slots() const { return slots_; }
  const std::vector<std::vector<std::int64_t>>& slots_padded() const { return slots_padded_; }
  // The GPU that finishes last (lowest index on ties) and the step time.
  int critical_gpu() const;
  std::int64_t gradient_sync_bytes() const { return gradient_sync_bytes_; }
  // Activations and their gradients sent between pipeline stages.
  std::int64_t pipeline_bytes() const { return pipeline_bytes_; }
  std::int64_t tp_bytes() const { return tp_bytes_; }  // tensor-parallel collectives' flows
  std::int64_t cp_bytes() const { return cp_bytes_; }  // context-parallel collectives' flows
  std::int64_t param_gather_bytes() const { return param_gather_bytes_; }  // parameter sharding's all-gathers
  sim::Time step_time() const;

 private:
  int gpus_per_node_;
  int layers_per_batch_;
  int micro_batches_;
  std::int64_t gradient_sync_bytes_ = 0;
  std::int64_t pipeline_bytes_ = 0;
  std::int64_t tp_bytes_ = 0;
  std::int64_t cp_bytes_ = 0;
  std::int64_t param_gather_bytes_ = 0;
  std::vector<std::int64_t> batch_rows_;  // [gpu * micro_batches + micro_batch]
  std::vector<LayerStats> layers_;
  std::vector<LayerStats> backward_layers_;
  std::vector<GpuStats> gpus_;
  std::vector<std::vector<ExpertStats>> experts_;
  std::vector<std::vector<std::int64_t>> slots_;
  std::vector<std::vector<std::int64_t>> slots_padded_;
};

}  // namespace moesim::models
