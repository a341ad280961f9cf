// `moesim plan GRID.yaml --target tokens/s=1e6 --minimize cost`: the planner's last question.
// Runs (or resumes) the grid's sweep, keeps the points that fit the GPUs' memory and meet every
// target, and picks the one with the best value of the objective; explains the choice in one
// paragraph (what it achieves, how many points were ruled out and why, the runner-up).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesim::tools {

// A bad --target or --minimize/--maximize, or a sweep CSV without the column: the user's to fix.
class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A metric of sweep.csv, by column name or by alias: tokens/s, tokens/s/gpu, latency and
// step_time (step_time_us), cost (cost_per_million_tokens), cost/step, memory (memory_gb_max),
// mfu, drop_rate, gpus.
struct Metric {
  std::string column;
  std::string label;      // as the user wrote it
  bool higher_is_better;  // the direction a bare `=` target means (at least / at most)
};
Metric parse_metric(const std::string& name);

// "METRIC>=VALUE", "METRIC<=VALUE", or "METRIC=VALUE" (at least for metrics where more is
// better, at most otherwise). Latency/step_time values take time units ("2ms"), others numbers.
struct Target {
  Metric metric;
  bool at_least;
  double value;  // in the column's unit
};
Target parse_target(const std::string& text);

struct PlanChoice {
  std::optional<std::size_t> best;  // a row index of the CSV (not the point number)
  std::string explanation;          // one paragraph
  std::string table;                // with top > 0: the best `top` points that qualify, ranked, one line each
};

// Chooses among the rows of a sweep CSV (header + rows). `minimize` false: maximize. top > 0
// also ranks that many of the points that qualify in a table: the values of the axes that vary
// over the sweep, the objective, tokens/s per GPU, the step and the memory.
PlanChoice choose_point(const std::string& csv_text, const std::vector<Target>& targets, const Metric& objective,
                        bool minimize, const std::vector<std::string>& axes, std::size_t top = 0);

}  // namespace moesim::tools
