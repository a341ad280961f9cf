// Typed records that timed components report; tools/ turns them into CSV. Components never
// print or open files.
#pragma once

#include <array>
#include <string_view>
#include <utility>
#include <vector>

#include "models/network.hpp"
#include "routing/dispatch_plan.hpp"
#include "sim/time.hpp"
#include "topology/cluster.hpp"

namespace moesim::models {

// The stages of one MoE layer on one GPU, in order. Compute stages occupy the GPU; `dispatch`
// and `combine` are the time the GPU waits for its inbound all-to-all flows after it could
// have gone on (zero when they had all arrived already).
// In a training step's backward pass the same stages run in reverse order (the "dispatch" wait is
// for the gradients of the combine, the "combine" wait for those of the dispatch); `optimizer`
// runs once at the end of a training step.
// `grad_sync` is the wait for the data-parallel gradient all-reduce before the optimizer;
// `dense` the model's dense layers (attention and FFN), before the MoE layers forward and after
// them backward. `pipeline` (pipeline parallelism) is the wait for a micro-batch's activations
// from the previous stage, or its gradients from the next: transfer and pipeline bubble.
// `lm_head` the output projection (with the loss in training) after the last MoE layer's forward
// and before its backward (model.vocab). `tp` (tensor parallelism, parallelism.tp) is the wait for
// the all-gather of the tensor-parallel group's tokens before a layer's attention (a dense
// layer's attention and FFN, the LM head) and for the reduce-scatter of its output after it; the
// waits around the dense layers and the LM head are recorded with layer -1 (no MoE layer's).
// `cp` (context parallelism, parallelism.cp) is the wait for the all-gather of the keys and
// values of the GPU's sequences from the other GPUs holding them before an attention (forward,
// recomputed or backward; all the dense layers' at once, layer -1) and, after an attention's
// backward, for the reduce-scatter of their gradients. `param_gather` (workload.parameter_sharding,
// FSDP) is the wait for the all-gather of a layer's sharded weights before its forward or backward
// pass (recorded with that layer and pass).
enum class Stage {
  attention, router, shared_experts, dispatch, experts, combine, reduce, optimizer, grad_sync, dense, pipeline, lm_head, tp, cp,
  param_gather
};
inline constexpr std::size_t kStageCount = 15;
inline constexpr std::array<Stage, kStageCount> kStages{
    Stage::attention, Stage::router,    Stage::shared_experts, Stage::dispatch, Stage::experts,  Stage::combine, Stage::reduce,
    Stage::optimizer, Stage::grad_sync, Stage::dense,          Stage::pipeline, Stage::lm_head, Stage::tp,     Stage::cp,
    Stage::param_gather};
std::string_view to_string(Stage s);
bool is_network_wait(Stage s);

struct StageRecord {
  topology::GpuId gpu;
  int layer;  // the optimizer: layer 0, where the backward pass ends
  Stage stage;
  sim::Time start;
  sim::Time end;
  bool backward = false;
  bool profiled = false;  // a compute stage whose time came from the measured kernel profile
  int micro_batch = 0;    // training with gradient accumulation: which micro-batch of the step
  // Activation recomputation (workload.recompute): forward work re-run in a backward pass, to
  // rebuild the activations it did not keep (backward is true too).
  bool recompute = false;
  // ZB-H1 (workload.pipeline_schedule: zb_h1): a weight pass's stage, the layer's weight
  // gradients computed apart from its input gradients (backward is true too).
  bool weight = false;
};

// One flow (src != dst), reported when its last byte has arrived: an all-to-all's, a gradient
// sync's, a pipeline's activations or gradients between stages, or a tensor-parallel collective's.
struct FlowRecord {
  int layer;
  Stage stage;  // dispatch, combine, grad_sync, pipeline or tp
  Flow flow;
  sim::Time start;
  sim::Time end;
  bool backward = false;
  int micro_batch = 0;
  bool recompute = false;  // a recomputed forward's all-to-all (backward is true too)
};

class Recorder {
 public:
  virtual ~Recorder() = default;
  virtual void on_stage(const StageRecord& record) = 0;
  // One layer's routing for the EP group whose rank r is global GPU first_gpu + r x stride
  // (stride: expert tensor parallelism's etp; rank r's expert rows are computed by the etp GPUs
  // from first_gpu - first_gpu mod stride + r x stride on), in micro-batch `micro_batch` of the
  // step (0 without gradient accumulation).
  virtual void on_routing(int layer, int first_gpu, int stride, const routing::DispatchPlan& plan, int micro_batch) = 0;
  virtual void on_flow(const FlowRecord& record) = 0;
};

// Forwards every record to each of several recorders, in order.
class RecorderTee final : public Recorder {
 public:
  explicit RecorderTee(std::vector<Recorder*> to) : to_(std::move(to)) {}
  void on_stage(const StageRecord& r) override {
    for (auto* t : to_) t->on_stage(r);
  }
  void on_routing(int layer, int first_gpu, int stride, const routing::DispatchPlan& plan, int micro_batch) override {
    for (auto* t : to_) t->on_routing(layer, first_gpu, stride, plan, micro_batch);
  }
  void on_flow(const FlowRecord& r) override {
    for (auto* t : to_) t->on_flow(r);
  }

 private:
  std::vector<Recorder*> to_;
};

}  // namespace moesim::models
