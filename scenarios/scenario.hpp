// A scenario: everything one run needs, validated. Parsed from YAML by load_scenario_*():
// parse -> validate -> build. Every problem in a file is collected and reported together as
// "file:line:col: key.path: message" lines in a ScenarioError; nothing is silently defaulted
// that the user wrote wrong. docs/scenario.md is the reference for every key.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <optional>
#include <string>
#include <utility>
#include <string_view>
#include <vector>

#include "models/moe_forward.hpp"
#include "models/reliability.hpp"
#include "models/roofline.hpp"
#include "topology/cluster.hpp"

namespace moesim::scenarios {

struct Scenario {
  std::string source;       // file name as given, for messages and reports
  std::string description;  // one line: what the scenario shows
  // model.hf_config: the config.json the model's keys came from (beside the scenario), its
  // model_type, and what moesim leaves out of it or approximates; empty without one.
  std::string model_config, model_type;
  std::vector<std::string> model_notes;
  std::int64_t model_max_positions = 0;  // its max_position_embeddings; 0: not given
  topology::ClusterSpec cluster;
  models::ForwardSpec forward;
  std::string workload_kind = "forward";
  std::string network_model = "maxmin";
  sim::Time resolve_interval = sim::Time::zero();  // network.resolve_interval (maxmin only); zero: exact
  std::string placement_load = "expected";  // placement.load: expected | trace | observed
  std::string placement_trace;              // placement.trace, as written
  std::optional<std::pair<int, int>> placement_trace_steps;  // placement.trace_steps; all when unset
  std::string routing_trace;                // routing.trace, as written
  std::string compute_model = "auto";  // compute.model: auto (the built-in profile where the GPU has one) | profile | roofline
  std::string compute_profile;  // compute.profile as written (relative to the scenario file)
  models::RooflineSpec roofline;
  std::string output_dir = "moesim-out";
  std::string timeline = "auto";  // output.timeline: auto | on | off
  int steps = 1;                  // workload.steps: consecutive steps, from routing.step on
  int refresh_every = 0;          // placement.refresh_every: re-place every this many steps; 0: never
  double gpu_hour_price = 0;       // cluster.gpu_hour_price, per GPU-hour; 0: not given
  std::map<std::string, double> gpu_prices;  // cluster.gpu_hour_price given per GPU: by GPU name (presets' full names)
  // cluster.power: watts per GPU (default its rated board power; 0: unknown, no power figures),
  // per server besides its GPUs, and the data centre's power usage effectiveness.
  double gpu_power_w = 0, node_power_w = 0, pue = 1;
  models::ReliabilitySpec reliability;  // the reliability section (training): failures and checkpoints
  std::int64_t global_batch = 0;   // workload.global_batch: sequences a training step takes (sets micro_batches); 0: not given
  double train_tokens = 0;         // workload.train_tokens: a training run's token budget; 0: not given
};

class ScenarioError : public std::runtime_error {
 public:
  explicit ScenarioError(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

// Throws ScenarioError for any bad input (missing or unreadable file included). `overrides`:
// "key.path=value" settings applied on top of the file (the CLI's --set), checked like the file.
Scenario load_scenario_file(const std::string& path, const std::vector<std::string>& overrides = {});
// `name` stands for the file name in messages.
Scenario load_scenario_text(std::string_view yaml, const std::string& name, const std::vector<std::string>& overrides = {});

// Why the cluster's nodes cannot run in-switch collectives (`nvls`: a mesh node, or a GPU whose
// NVSwitch has no NVLink SHARP); empty where they can.
std::string in_switch_unavailable(const topology::ClusterSpec& cluster);

}  // namespace moesim::scenarios
