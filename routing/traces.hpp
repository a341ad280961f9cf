// Routing traces, read as streams one line at a time (docs/traces.md is the reference).
//
// Count level: CSV with the header `layer,expert,count` (or `step,layer,expert,count`), one row
// per (step, layer, expert), whole non-negative counts; experts a layer's rows do not mention
// received nothing.
// Token level: CSV with the header `layer,token,experts,gates` (or `...,gates,rank`): one row per
// token and MoE layer; `experts` and `gates` are space-separated lists of top_k expert ids and
// gate weights; `rank` is the token's source rank in the EP group.
// In both, `#` lines and blank lines are skipped, and a bad line is rejected as "file:line: what".
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesim::routing {

// A bad trace: the message names the file and line.
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One MoE layer's routing of one EP group's micro-batch: each token's top-k experts and gates.
// Tokens are in rank order: token t of rank r is entry r * tokens_per_rank + t.
struct TokenBatch {
  int top_k = 1;
  int ranks = 0;
  std::int64_t tokens_per_rank = 0;
  std::vector<int> experts;  // [token * top_k + j]
  std::vector<float> gates;  // same layout; empty when no gates were drawn
  std::int64_t tokens() const { return ranks * tokens_per_rank; }
};

// What a trace-driven routing replays, read once when the scenario is loaded.
struct RoutingTrace {
  std::string path;
  std::vector<std::vector<double>> layer_counts;  // count level: [layer][expert] of routing.step
  std::vector<TokenBatch> layer_tokens;           // token level: [layer], one EP group's batch
};

enum class TraceKind { counts, tokens };
// Which kind of trace the file's header says it is. Throws TraceError.
TraceKind trace_kind(const std::string& path);

struct CountTrace {
  bool stepped = false;                                     // the file has a step column
  std::map<int, std::map<int, std::vector<double>>> steps;  // step -> layer -> counts [expert]
};
// Throws TraceError.
CountTrace read_count_trace(const std::string& path, int experts);
// Per layer 0..layers-1, the mean of the counts over steps [first, last] (an unstepped trace is
// step 0). Throws TraceError naming the first missing (step, layer).
std::vector<std::vector<double>> mean_counts(const CountTrace& trace, const std::string& path, int first,
                                             int last, int layers);

// Reads, for each layer 0..layers-1, the tokens one EP group of `ranks` ranks with
// `tokens_per_rank` tokens each replays: with a rank column, each rank's first tokens_per_rank
// tokens of the layer in file order; without, the layer's first ranks x tokens_per_rank tokens,
// dealt to the ranks in order. Every line is checked; only the tokens needed are kept. Throws
// TraceError (bad line, too few tokens for a layer or rank, missing layer).
std::vector<TokenBatch> read_token_trace(const std::string& path, int experts, int top_k, int layers,
                                         int ranks, std::int64_t tokens_per_rank);

// Writes layers' batches as a token-level trace with a rank column (gates as drawn, or 1/top_k
// each when the batch has none).
void write_token_trace(std::ostream& out, const std::vector<TokenBatch>& layers);

}  // namespace moesim::routing
