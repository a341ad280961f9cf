// A runnable experiment: builds the cluster, the network and compute models and the workload
// from a validated Scenario, runs the simulation to the end and returns what was recorded.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/network.hpp"
#include "models/run_stats.hpp"
#include "models/timeline.hpp"
#include "scenarios/scenario.hpp"

namespace moesim::scenarios {

struct RunResult {
  models::RunStats stats;
  std::uint64_t events = 0;
  std::string network_model;
  std::string compute_source;  // which compute model produced the kernel times
  std::vector<models::LinkUsage> links;  // per link; empty where the network model has none
  std::vector<routing::Placement> placements;  // per layer
  std::shared_ptr<models::TimelineRecorder> timeline;  // null with output.timeline: off
  double model_flops = 0;  // MoeForward::model_flops()
  // Decode with varied contexts (workload.context_sigma): the contexts the run drew
  // (models::decode_context_loads; with workload.steps, the last step's); empty otherwise.
  std::vector<routing::ContextLoad> contexts;
  // workload.steps > 1: one row per step (the reports above describe the last step).
  struct Step {
    int step = 0;                   // routing.step it routed
    sim::Time time;                 // its step time
    double gpu_imbalance = 0;       // worst layer's max/mean tokens per GPU
    bool refreshed = false;         // the placement was recomputed before it
    std::int64_t moved_bytes = 0;   // expert weights moved to realise the new placement
    sim::Time rebalance;            // how long moving them took (before the step)
  };
  std::vector<Step> steps;
};

// Called now and then during a run with the share of the work done, in [0, 1].
using Progress = std::function<void(double done)>;

// output.timeline: auto keeps at most this many timeline records (stages and flows).
inline constexpr std::size_t kTimelineAutoLimit = 1'000'000;

// Runs the scenario's workload.steps steps (each its own simulation, one after another; between
// steps the placement may be refreshed and expert weights moved, see docs/scenario.md).
// `preparing`: the share of a step's routing and dispatch plans built, before it simulates.
RunResult run_experiment(const Scenario& scenario, const Progress& progress = {}, const Progress& preparing = {});

// The expert placement of every MoE layer, as a run would use it, without simulating.
std::vector<routing::Placement> compute_placements(const Scenario& scenario);

// The routed tokens (with gate weights) of every MoE layer of EP group `group`, as a run routes
// them (its first micro-batch; 0 <= group < GPUs / pp / ep, with pipeline stages the group's
// index within each layer's stage).
std::vector<routing::TokenBatch> route_group(const Scenario& scenario, int group);

// Per MoE layer and expert, the assignments routed over all EP groups and micro-batches (what a
// run's experts.csv reports as expert_routed), without simulating.
std::vector<std::vector<std::int64_t>> routed_counts(const Scenario& scenario);

}  // namespace moesim::scenarios
