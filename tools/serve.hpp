// `moesim serve PREFILL.yaml DECODE.yaml --input-tokens-per-s I --output-tokens-per-s O`: how
// many GPUs a disaggregated serving deployment needs for a traffic, as DeepSeek serves
// DeepSeek-V3 (prefill and decode on separate instances, each instance one scenario: its
// cluster is a unit that is replicated). Each scenario is simulated once; the plan is then
// arithmetic on their throughputs:
//   prompt tokens to prefill = input tokens/s × (1 − cache hit rate) (a hit's KV cache is
//   loaded, not computed), prefill units = that / a unit's prefill tokens/s;
//   decode units = output tokens/s / a unit's decode tokens/s (at its time per token);
//   each kind's units rounded up to whole units, GPUs = units × the unit's GPUs.
// The prompts' queue for the prefill units is simulated (simulate_prefill_queue): the time to a
// prompt's first token, and with a target for it the units it takes (units_for_ttft), which may
// be more than the load's. Left out: the decode side's queueing and batching (every decode unit
// runs full batches back to back: a floor on its GPUs), prompts and contexts of other lengths
// than the scenarios' (prefill: their workload.sequence_length and cached_prefix; decode:
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

// How the prefill units get their prompts: in turn, or each to the unit with the least work on
// hand (its batch's time left and its waiting prompts' batch; --prefill-router least_work).
enum class PrefillRouter { round_robin, least_work };

struct ServeTraffic {
  double input_tokens_per_s = 0;   // prompt tokens arriving, KV-cache hits included
  double output_tokens_per_s = 0;  // tokens generated
  double cache_hit_rate = 0;       // share of the input tokens whose KV cache is found, in [0, 1)
  // The prompts' lengths (their tokens to prefill), for the prefill queue: all the prefill
  // scenario's workload.sequence_length (the default); log-normal around it with this spread of
  // their logarithm, the mean kept (--prompt-length-sigma); or drawn from these lengths, their
  // mean replacing the scenario's (--prompt-lengths FILE).
  double prompt_length_sigma = 0;
  std::vector<double> prompt_lengths;
  std::string prompt_lengths_source;  // the file they came from
  PrefillRouter prefill_router = PrefillRouter::round_robin;  // how the prompts reach the prefill units
};
// Refuses rates that are not > 0 and a hit rate outside [0, 1).
void check_traffic(const ServeTraffic& t);
// Whole units for a load of `units` (at least one); a load a hair over a whole number of units
// (rounding) does not take one more.
int whole_units(double units);

// One kind of instance, from its scenario and the summary.csv row of its run.
struct ServeUnit {
  std::string source;
  std::string point;  // a grid's point, "point 3 of GRID (workload.tokens_per_gpu=96)"; empty for a scenario
  int gpus = 0, nodes = 0;
  double tokens_per_s = 0;       // prompt tokens prefilled, or output tokens decoded, per second
  double step_us = 0;            // one prefill batch; one decode step
  double time_per_token_us = 0;  // decode: between a sequence's tokens
  double local_us = 0;           // the step less the routed experts and the all-to-all waits
  std::int64_t tokens_per_gpu = 0;  // prefill: prompt tokens per GPU; decode: sequences per GPU
  std::int64_t prompt_tokens = 0;   // prefill: workload.sequence_length
  std::int64_t cached_prefix = 0;   // prefill: workload.cached_prefix
  std::int64_t context_tokens = 0;  // decode: workload.context_length
  double kv_bytes_per_token = 0;    // the KV cache one token leaves over all layers (sliding layers: its share of a window; linear ones: of a sequence's state)
  double nic_bytes_per_s = 0;       // per GPU; 0 on a single node without NICs
  double gpu_hour_price = 0;
  // Decode with chunked prefill (workload.prefill_chunk): the prompt tokens its steps prefill a
  // second, the chunk per GPU and the prompts' length (prompt_tokens); tensor-parallel groups
  // (tp GPUs) take a prompt's chunks together.
  double prompt_tokens_per_s = 0;
  std::int64_t prefill_chunk = 0;
  double decode_only_step_us = 0;  // the same decode without the chunk (0: not known; every step a full chunk's)
  // What a chunk token adds to a step for each position later in its prompt than the scenario's
  // chunk's mean, (sequence_length - 1) / 2 (its attention over more keys), from a run at twice
  // the prompts' length: 2 (step there - step) / (a server's chunk x sequence_length). 0: not known.
  double position_us = 0;
  int tp = 1;
  double power_kw = 0;  // the unit's draw (summary.csv power_kw); 0 where the GPU has no rated power
  double memory_gb = 0, gpu_memory_gb = 0;
  bool fits = true;  // a unit that does not fit the GPUs' memory is never chosen
};
// A scenario a serving unit can be: of the kind (`prefill` or `decode`), on one pipeline stage.
// Throws ServeError otherwise.
void check_serve_scenario(const scenarios::Scenario& sc, bool prefill);
// Checks the scenario as above.
ServeUnit serve_unit(const scenarios::Scenario& sc, const std::map<std::string, std::string>& summary, bool prefill);

// A prefill unit's batch time against the prompts in it, from two runs of its scenario: its own
// batch (full_prompts = GPUs x tokens per GPU / prompt tokens, in full_us) and one prompt per GPU
// (least_prompts = the GPUs, in least_us; the same run where that is the scenario's batch).
// Between the two the time is linear in the prompts. Below one prompt a GPU the busiest GPU
// still runs one prompt's own work (least_local_us: the step less its routed experts and
// all-to-all waits, i.e. attention, router, shared experts, dense layers, reduce, LM head), while
// the rest, the experts and the all-to-all, shrinks with the prompts: an estimate, since the
// simulator runs every GPU with the same tokens.
// A batch's prompts may be counted in fractions (prompts of other lengths than the scenario's,
// PromptSizes): its time is linear in its tokens, and more than a full batch's takes that many
// full batches' time.
// With prompts of several lengths (PromptSizes), square_us: the attention's growth with the
// square of a prompt's length. A prompt of w of the scenario's prompts takes (w^2 - w) square_us
// more than us() gives it (less, for w < 1): square_us is the part of one prompt's time in a
// full batch that grows with its length squared, from a third run of the scenario at half its
// sequence length and the same tokens, 2 (full_us - half_us) / full_prompts. 0: not scaled.
struct PrefillBatchTime {
  int full_prompts = 1, least_prompts = 1;
  double full_us = 0, least_us = 0, least_local_us = 0;
  double square_us = 0;
  double us(double prompts) const;
};

// The prompts' sizes in the queue, each in prompts of the prefill scenario's length: all 1 (the
// default); log-normal, exp(sigma Z - sigma^2 / 2), mean 1; or drawn uniformly from `drawn`.
// A unit's batch then holds prompts up to a full batch's tokens (a longer prompt alone), and
// its time is linear in their tokens, plus each prompt's PrefillBatchTime::square_us share.
// The router (ServeTraffic::prefill_router) comes along with them.
struct PromptSizes {
  double sigma = 0;
  std::vector<double> drawn;
  PrefillRouter router = PrefillRouter::round_robin;
  double mean() const;         // 1 for the log-normal; the list's mean
  double mean_square() const;  // exp(sigma^2) for the log-normal; the list's
  bool varied() const { return sigma > 0 || !drawn.empty(); }
};
// The traffic's prompt lengths in the sizes of a prefill unit's prompts (unit_prompt_tokens each).
// Throws ServeError for a negative spread, or lengths that are not > 0.
PromptSizes prompt_sizes(const ServeTraffic& t, std::int64_t unit_prompt_tokens);
// Lengths from a file: one number a line (a header line or blank lines skipped; with commas,
// the first field). Throws ServeError naming the line of anything else, or for no lengths.
std::vector<double> read_prompt_lengths(const std::string& path);

// The prefill units' queue. Prompts of one length arrive as a Poisson process, prompts_per_s of
// them; a router hands them to the units in turn (round robin; or with PromptSizes::router
// least_work each to the unit with the least work on hand), and a unit that falls free takes
// every prompt waiting for it, up to a full batch, at once, as continuous-batching prefill
// servers do (an idle unit starts as soon as a prompt comes, alone). A prompt's first token
// comes when its batch ends: its time to first token (TTFT) is that less its arrival (the
// decode's first step and the KV cache's transfer left out). Runs `prompts` prompts (seeded: the
// same inputs give the same figures); the first 10 % warm the queue up and are not counted.
// (A shared queue that any free unit takes from was tried first: there idle units start batches
// of one or two prompts as they come, each nearly as long as a batch of one prompt a GPU, and
// more units made the TTFT worse.)
struct PrefillQueue {
  int units = 0;
  double prompts_per_s = 0;
  double busy = 0;  // the load over the units' throughput at full batches
  std::int64_t counted = 0;
  double mean_us = 0, p50_us = 0, p90_us = 0, p99_us = 0;
  double mean_batch = 0;  // prompts a batch
  double percentile_us(int p) const { return p == 50 ? p50_us : p == 90 ? p90_us : p99_us; }
};
PrefillQueue simulate_prefill_queue(double prompts_per_s, int units, const PrefillBatchTime& batch, std::uint64_t seed,
                                    std::int64_t prompts = 200'000, const PromptSizes& sizes = {});
// The fewest units from `from` up to `limit` whose TTFT at `percentile` (50, 90 or 99) is within
// target_us; nullopt when none is (the last one tried in `closest`).
std::optional<PrefillQueue> units_for_ttft(double prompts_per_s, int from, int limit, const PrefillBatchTime& batch, int percentile,
                                           double target_us, std::uint64_t seed, PrefillQueue* closest = nullptr,
                                           const PromptSizes& sizes = {});
// The time a prompt token takes at these sizes against the scenario's prompts, from the
// attention's growth with the square of a prompt's length (square_us): 1 + (E[w^2] - E[w])
// square_us / (E[w] x a prompt's share of a full batch). Above 1 for spread or longer prompts,
// below for shorter ones; 1 where square_us is 0.
double prompt_time_factor(const PrefillBatchTime& batch, const PromptSizes& sizes);
// A prefill unit's prompts for a load of prompt tokens a second (its prompts' new tokens each,
// or `sizes.mean()` times that).
double prompts_per_s(const ServeUnit& unit, double load_tokens_per_s, const PromptSizes& sizes = {});
// units_for_ttft for a load on `unit`: from the units the load takes up to 64 times as many.
std::optional<PrefillQueue> units_for_ttft(const ServeUnit& unit, double load_tokens_per_s, const PrefillBatchTime& batch,
                                           int percentile, double target_us, std::uint64_t seed, PrefillQueue* closest = nullptr,
                                           const PromptSizes& sizes = {});

// Spare units for failures (moesim serve --gpu-mtbf-hours, --repair-time, --availability): a
// unit of g GPUs fails every gpu_mtbf_hours / g hours on average (any of its GPUs failing takes
// it out) and is down repair_s each time; units fail independently, so each is down
// q = R / (M / g + R) of the time, and of n + s units more than s are down with the binomial's
// tail. Left out: the work a failing unit loses (a decode unit's sequences start over
// elsewhere) and the load's swings.
struct ServeSpares {
  double gpu_mtbf_hours = 0;  // 0: no spares
  double repair_s = 0;
  double availability = 0.999;  // the share of time at least the load's units are up
  bool enabled() const { return gpu_mtbf_hours > 0; }
};
// The share of time a unit of `unit_gpus` GPUs is down.
double unit_down_share(int unit_gpus, const ServeSpares& s);
// The probability that more than `spares` of `units` + `spares` units are down, each down with
// probability `down` independently.
double short_probability(int units, int spares, double down);
// The fewest spares that keep `units` up `s.availability` of the time (0 without spares).
int spare_units(int units, int unit_gpus, const ServeSpares& s);

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
  double power_kw = 0;                  // the whole units' draw; 0 where a side's is unknown
  double energy_per_million_output_kwh = 0;
  std::string prefill_choice, decode_choice;  // with grids: how each side's point was chosen
  // The prefill queue at prefill_units_whole units; with a TTFT target the units may be more than
  // the load takes (prefill_units_for_load).
  PrefillBatchTime prefill_batch;
  PrefillQueue prefill_queue;
  int prefill_units_for_load = 0;
  double ttft_target_us = 0;
  int ttft_percentile = 99;
  bool ttft_met = true;    // false: no unit count meets the target (prefill_queue: the most tried)
  std::string batch_note;  // how the batch time was had, where not from two runs
  ServeSpares spares;
  int prefill_spares = 0, decode_spares = 0;  // units beyond the whole units, for failures
  double spare_price_per_hour = 0;            // the spares' price (0 without prices or spares)
  // The decode scenario run again at the sequences a GPU the load keeps decoding, where fewer
  // than its batch (the caller's; 0: not run): the time per token every unit sees at the load.
  std::int64_t decode_at_load_sequences = 0;
  double decode_at_load_time_per_token_us = 0;
  std::string decode_at_load_note;  // why it was not run, where it could not be
};
// Of a side's candidates (a scenario, or a grid's points) the one that serves its load on the
// fewest GPUs in whole units (ties: the fewest at full use, then the first), among those that fit
// the GPUs' memory and, decode, decode a token within `target_us` (no target: 0). A prefill
// target, the time to first token, is the queue's: choose_prefill_for_ttft.
struct ServeChoice {
  std::optional<std::size_t> best;
  std::string explanation;  // how many candidates, how many fit, how many meet the target
};
ServeChoice choose_unit(const std::vector<ServeUnit>& candidates, double load_tokens_per_s, double target_us, bool prefill);
// Prefill candidates under a TTFT target: units[i], the fewest units with which candidate i's
// queue meets it (units_for_ttft; none where it does not, or it does not fit memory). The one on
// the fewest GPUs (ties: the fewest at full use, then the first). `target`: the target in words.
ServeChoice choose_prefill_for_ttft(const std::vector<ServeUnit>& candidates, const std::vector<std::optional<int>>& units,
                                    double load_tokens_per_s, const std::string& target);

// The plan at the load's whole units; with ttft_target_us > 0 the prefill units are raised until
// the simulated TTFT at `percentile` meets it (ServeError when no count up to 64 times the
// load's does: the batch time itself is over the target).
// With `spares` enabled, the spare units each side's whole units need (spare_units).
ServePlan plan_service(const ServeTraffic& t, const ServeUnit& prefill, const ServeUnit& decode, const PrefillBatchTime& batch,
                       double ttft_target_us = 0, int percentile = 99, std::uint64_t seed = 1, const ServeSpares& spares = {});

// Colocated serving with chunked prefill (moesim serve --colocated SCENARIO): one decode scenario
// whose steps also prefill workload.prefill_chunk prompt tokens a GPU, as vLLM and SGLang serve
// by default, its cluster a unit that is replicated. A unit decodes summary.csv's tokens_per_s
// and prefills its prompt_tokens_per_s; the load takes the more of output / the first and the
// prompt tokens to prefill / the second, in whole units.
// The prompts' queue (simulate_chunked_queue): prompts of the scenario's workload.sequence_length
// new tokens arrive as a Poisson process and are dealt in turn to the servers, each tensor-
// parallel group of the units (a GPU without tensor parallelism), or with PromptSizes::router
// least_work each to the server with the fewest prompt tokens on hand (the first of those that
// tie), as data-parallel attention's load balancers do; a server prefills the prompts
// it was dealt first come first served, tp x prefill_chunk of their tokens in each step, the
// steps following one another; a prompt joins from the first step that starts
// after it comes, and its first token comes at the end of the step that prefills its last
// token. A unit's servers step together (its GPUs meet in every layer's all-to-all): a step takes
// the decode's time alone (ServeUnit::decode_only_step_us, from a run without the chunk) and what
// the scenario's full chunk adds to it in proportion to the fullest chunk of the unit's servers,
// idle units stepping at the decode's time; where the decode alone is not known, every step takes
// the full chunk's time. With ServeUnit::position_us a server's chunk costs more or less as its
// tokens stand later or earlier in their prompts than the scenario's chunk (its mean offset), and
// the unit steps at its slowest server's pace. Left out as for disaggregated serving: the
// decode's own batching (sequences join as prompts finish; each unit is taken to keep its
// sequences). Prompts of several lengths (PromptSizes, --prompt-length-sigma or
// --prompt-lengths) take their own tokens' chunks, at their own positions.
struct ChunkedQueue {
  int units = 0, servers = 0;
  std::int64_t server_chunk = 0;  // prompt tokens a server prefills a step
  double prompts_per_s = 0;
  double busy = 0;  // the prompt load over the servers' chunks
  std::int64_t counted = 0;
  double mean_us = 0, p50_us = 0, p90_us = 0, p99_us = 0;
  double alone_us = 0;  // a prompt's steps alone (the ones it needs), without waiting for the first to start
  double step_mean_us = 0;  // the steps' mean: the time between a sequence's tokens on average
  double busy_at_pace = 0;  // busy at the pace the steps with prompts went (>= 1: the queue only grows)
  double percentile_us(int p) const { return p == 50 ? p50_us : p == 90 ? p90_us : p99_us; }
};
ChunkedQueue simulate_chunked_queue(const ServeUnit& unit, int units, double prompts_per_s, std::uint64_t seed,
                                    std::int64_t prompts = 200'000, const PromptSizes& sizes = {});
// The fewest units from `from` up to 64 times that whose TTFT at `percentile` is within target_us
// (nullopt where none is; the most tried in `closest`).
std::optional<ChunkedQueue> colocated_units_for_ttft(const ServeUnit& unit, int from, double prompts_per_s, int percentile,
                                                     double target_us, std::uint64_t seed, ChunkedQueue* closest = nullptr,
                                                     const PromptSizes& sizes = {});
struct ColocatedPlan {
  ServeTraffic traffic;
  ServeUnit unit;
  double prefill_tokens_per_s = 0;  // prompt tokens to prefill: input less cache hits
  double output_units = 0, prompt_units = 0;  // fractional: each load over a unit's rate
  int units_for_load = 0, units_whole = 0, gpus = 0;
  double sequences_decoding = 0;      // output tokens/s x the mean time per token
  double time_per_token_mean_us = 0;  // the queue's steps' mean (over the tokens a sequence gains a step)
  ChunkedQueue queue;
  double ttft_target_us = 0;
  int ttft_percentile = 99;
  bool ttft_met = true;
  double price_per_hour = 0, cost_per_million_output = 0, power_kw = 0, energy_per_million_output_kwh = 0;
  std::string choice;  // with a grid: how its point was chosen
  ServeSpares spares;
  int spare_units = 0;
  // The scenario run again at the sequences a GPU the load keeps decoding (its chunk kept), where
  // fewer than its batch (the caller's; 0: not run): a full chunk's step at the load.
  std::int64_t at_load_sequences = 0;
  double at_load_time_per_token_us = 0;
  std::string at_load_note;
};
// A scenario a colocated unit can be: decode with workload.prefill_chunk, one pipeline stage.
void check_colocated_scenario(const scenarios::Scenario& sc);
// The units the load takes (output or prompts, whichever needs more); with ttft_target_us > 0
// raised until the simulated TTFT at `percentile` meets it (ttft_met false where no count up to
// 64 times the load's does).
ColocatedPlan plan_colocated(const ServeTraffic& t, const ServeUnit& unit, double ttft_target_us = 0, int percentile = 99,
                             std::uint64_t seed = 1, const ServeSpares& spares = {});
// Of a grid's points, the one that serves the traffic on the fewest GPUs (ties: the fewest at full
// use, then the first) of those that fit memory, decode a token within tpot_us (0: no target) and,
// with ttft_target_us, meet it with some count of units.
// Each point's part in the choice (`points`, where given): the units and GPUs the traffic takes
// on it, or why it was passed over.
struct ColocatedPoint {
  double output_units = 0, prompt_units = 0;  // each load over a unit's rate
  int units = 0, gpus = 0;                    // whole units: the load's, or with a TTFT target the queue's; 0 where passed over
  std::string verdict;                        // "chosen", "serves", or why not
};
ServeChoice choose_colocated(const std::vector<ServeUnit>& candidates, const ServeTraffic& t, double tpot_us, double ttft_target_us,
                             int percentile, std::uint64_t seed, std::vector<ColocatedPoint>* points = nullptr);
// One row a candidate (a grid's points): its point, time per token, both loads' units, the units
// and GPUs it would take, and its verdict.
void write_colocated_points_csv(std::ostream& out, const std::vector<ServeUnit>& candidates, const std::vector<ColocatedPoint>& points);
void print_colocated(std::ostream& out, const ColocatedPlan& p, const std::vector<std::string>& written);
void write_colocated_csv(std::ostream& out, const ColocatedPlan& p);

void print_service(std::ostream& out, const ServePlan& p, const std::vector<std::string>& written);
void write_service_csv(std::ostream& out, const ServePlan& p);

}  // namespace moesim::tools
