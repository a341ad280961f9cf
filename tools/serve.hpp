// `moesim serve PREFILL.yaml DECODE.yaml --input-tokens-per-s I --output-tokens-per-s O`: how
// many GPUs a disaggregated serving deployment needs for a traffic, as DeepSeek serves
// DeepSeek-V3 (prefill and decode on separate instances, each instance one scenario: its
// cluster is a unit that is replicated). Each scenario is simulated once; the plan is then
// arithmetic on their throughputs:
//   prompt tokens to prefill = input tokens/s × (1 − cache hit rate) (a hit's KV cache is
//   loaded, not computed), prefill units = that / a unit's prefill tokens/s;
//   decode units = output tokens/s / a unit's decode tokens/s (at its time per token);
//   each kind's units rounded up to whole units, GPUs = units × the unit's GPUs.
// Left out: queueing and the batching of requests as they arrive (every unit runs full batches
// back to back: a floor on the GPUs; a prompt's first token comes one to two prefill steps after
// it arrives, more when prompts queue), prompts and contexts of other lengths than the
// scenarios' (prefill: their workload.sequence_length and cached_prefix; decode:
// workload.context_length), and the KV caches' transfer from prefill to decode GPUs, whose rate
// the plan reports against the NICs without simulating it.
#pragma once

#include <map>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "scenarios/scenario.hpp"

namespace moesim::tools {

// Bad traffic figures, or scenarios of the wrong kind: the user's to fix.
class ServeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ServeTraffic {
  double input_tokens_per_s = 0;   // prompt tokens arriving, KV-cache hits included
  double output_tokens_per_s = 0;  // tokens generated
  double cache_hit_rate = 0;       // share of the input tokens whose KV cache is found, in [0, 1)
};
// Refuses rates that are not > 0 and a hit rate outside [0, 1).
void check_traffic(const ServeTraffic& t);

// One kind of instance, from its scenario and the summary.csv row of its run.
struct ServeUnit {
  std::string source;
  std::string point;  // a grid's point, "point 3 of GRID (workload.tokens_per_gpu=96)"; empty for a scenario
  int gpus = 0, nodes = 0;
  double tokens_per_s = 0;       // prompt tokens prefilled, or output tokens decoded, per second
  double step_us = 0;            // one prefill batch; one decode step
  double time_per_token_us = 0;  // decode: between a sequence's tokens
  std::int64_t tokens_per_gpu = 0;  // prefill: prompt tokens per GPU; decode: sequences per GPU
  std::int64_t prompt_tokens = 0;   // prefill: workload.sequence_length
  std::int64_t cached_prefix = 0;   // prefill: workload.cached_prefix
  std::int64_t context_tokens = 0;  // decode: workload.context_length
  double kv_bytes_per_token = 0;    // the KV cache one token leaves over all layers
  double nic_bytes_per_s = 0;       // per GPU; 0 on a single node without NICs
  double gpu_hour_price = 0;
  double memory_gb = 0, gpu_memory_gb = 0;
  bool fits = true;  // a unit that does not fit the GPUs' memory is never chosen
};
// A scenario a serving unit can be: of the kind (`prefill` or `decode`), on one pipeline stage.
// Throws ServeError otherwise.
void check_serve_scenario(const scenarios::Scenario& sc, bool prefill);
// Checks the scenario as above.
ServeUnit serve_unit(const scenarios::Scenario& sc, const std::map<std::string, std::string>& summary, bool prefill);

struct ServePlan {
  ServeTraffic traffic;
  ServeUnit prefill, decode;
  double prefill_tokens_per_s = 0;          // computed prompt tokens
  double prefill_units = 0, decode_units = 0;  // fractional: the load over one unit's throughput
  int prefill_units_whole = 0, decode_units_whole = 0;
  int prefill_gpus = 0, decode_gpus = 0;
  double sequences_decoding = 0;        // output tokens/s × time per token
  double kv_prefill_bytes_per_s = 0;    // per prefill GPU: the KV caches it computes
  double kv_decode_bytes_per_s = 0;     // per decode GPU: every prompt token's KV cache
  double price_per_hour = 0;            // 0 without prices
  double cost_per_million_output = 0;
  std::string prefill_choice, decode_choice;  // with grids: how each side's point was chosen
};
// Of a side's candidates (a scenario, or a grid's points) the one that serves its load on the
// fewest GPUs in whole units (ties: the fewest at full use, then the first), among those that fit
// the GPUs' memory and meet the target: prefill, a batch's step within `target_us` (the time to
// a prompt's first token at the least); decode, the time per token within it. No target: 0.
struct ServeChoice {
  std::optional<std::size_t> best;
  std::string explanation;  // how many candidates, how many fit, how many meet the target
};
ServeChoice choose_unit(const std::vector<ServeUnit>& candidates, double load_tokens_per_s, double target_us, bool prefill);

ServePlan plan_service(const ServeTraffic& t, const ServeUnit& prefill, const ServeUnit& decode);

void print_service(std::ostream& out, const ServePlan& p, const std::vector<std::string>& written);
void write_service_csv(std::ostream& out, const ServePlan& p);

}  // namespace moesim::tools
