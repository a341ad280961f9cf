// Report writers: summary.csv (one row per run), layers.csv (one row per MoE layer), and the
// short human summary. Column names carry their units; times are exact microseconds.
#pragma once

#include <functional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "scenarios/experiment.hpp"
#include "scenarios/scenario.hpp"

namespace moesim::tools {

// The reports could not be written (bad output directory, disk full): the user's to fix.
class ReportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void write_summary_csv(std::ostream& out, const scenarios::Scenario& sc,
                       const scenarios::RunResult& r);
// summary.csv's header line (without the newline).
const std::string& summary_csv_header();
// The memory a scenario's busiest GPU needs whatever the routing, without simulating: the memory
// model of summary.csv without expert rows or all-to-all buffers (the weights with the
// placement's replicas, gradients and optimizer state, the activations the routing does not
// change, a KV cache), so a lower bound of its memory_gb_max.
struct MemoryFloor {
  int gpu = -1;         // the GPU that needs the most
  double bytes = 0;     // what it needs at least
  double capacity = 0;  // the GPU's memory (0: unknown)
  std::string parts;    // "weights 11.9; gradients and optimizer 83.6; ..." (GB)
};
// placements: the scenario's (scenarios::compute_placements()), where the caller has them.
MemoryFloor memory_floor(const scenarios::Scenario& sc, const std::vector<routing::Placement>* placements = nullptr);
// Empty when the floor fits the GPU's memory; otherwise why the scenario cannot fit, in words.
std::string unfit_reason(const scenarios::Scenario& sc, const std::vector<routing::Placement>* placements = nullptr);
void write_layers_csv(std::ostream& out, const scenarios::Scenario& sc,
                      const scenarios::RunResult& r);
// A CSV field: quoted (quotes doubled) when it holds a comma, a quote or a newline.
std::string csv_field(const std::string& s);
// The fields of one CSV line as csv_field writes them (quotes removed, doubled quotes undone).
std::vector<std::string> csv_fields(const std::string& line);
// One row per directed link: what it carried, how long it was busy, its peak utilisation.
void write_links_csv(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r);
// One row per layer and expert slot (replica): what it computed, with its expert's totals.
void write_experts_csv(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r);
// One row per GPU: when it finished, its time per stage, and its tokens' routed and dropped
// assignments and what its experts computed (tokens and padding), over all layers.
void write_gpus_csv(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r);
// workload.steps > 1: one row per step.
void write_steps_csv(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r);
// Chrome trace format (open in Perfetto or chrome://tracing): one process per node, per GPU a
// compute track (its stages, network waits included) and a track of the all-to-all flows it
// sends (async slices: dispatch or combine, destination, bytes, layer). Times in microseconds.
void write_timeline_json(std::ostream& out, const scenarios::Scenario& sc, const scenarios::RunResult& r);
void print_human_summary(std::ostream& out, const scenarios::Scenario& sc,
                         const scenarios::RunResult& r, const std::vector<std::string>& written);

// Writes path through a temporary file renamed into place (creating its folder), so a failure
// never leaves a half-written file. Throws ReportError.
void write_atomically(const std::string& path, const std::function<void(std::ostream&)>& writer);

// Writes summary.csv, layers.csv, experts.csv and (where the network model keeps link accounts)
// links.csv
// into dir (created if needed), each through a temporary
// file renamed into place so a failed run never leaves a half-written report. Returns the paths.
std::vector<std::string> write_reports(const std::string& dir, const scenarios::Scenario& sc,
                                       const scenarios::RunResult& r);

// `moesim place`: placement.csv (one row per layer and slot: its GPU rank, expert, replica, and
// the share of the layer's assignments the routing distribution sends to it) and a summary.
std::string write_placement(const std::string& dir, const scenarios::Scenario& sc,
                            const std::vector<routing::Placement>& placements);
void print_placement_summary(std::ostream& out, const scenarios::Scenario& sc,
                             const std::vector<routing::Placement>& placements, const std::string& written);

// `moesim trace`: a token-level trace (routing/traces.hpp) or a count-level one
// (layer,expert,count), written atomically. Throw ReportError.
void write_token_trace_file(const std::string& path, const std::vector<routing::TokenBatch>& layers, bool binary = false);
// Rewrites a token-level trace in the other form (CSV to binary, binary to CSV), checking every
// token as it goes: the tokens written, and whether the input was the binary form. Throws
// routing::TraceError.
struct ConvertedTrace {
  std::int64_t tokens = 0;
  bool from_binary = false;
};
ConvertedTrace convert_token_trace(const std::string& from, const std::string& to);
void write_count_trace(const std::string& path, const std::vector<std::vector<std::int64_t>>& counts);

}  // namespace moesim::tools
