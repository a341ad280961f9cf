#include "tools/plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <sstream>
#include <string_view>
#include <utility>

#include "sim/units.hpp"
#include "tools/report.hpp"

namespace moesim::tools {
namespace {

struct Alias {
  const char* name;
  const char* column;
  bool higher_is_better;
};
constexpr Alias kAliases[] = {
    {"tokens/s", "tokens_per_s", true},         {"throughput", "tokens_per_s", true},
    {"tokens/s/gpu", "tokens_per_s_per_gpu", true}, {"latency", "step_time_us", false},
    {"step_time", "step_time_us", false},       {"cost", "cost_per_million_tokens", false},
    {"cost/step", "cost_per_step", false},      {"memory", "memory_gb_max", false},
    {"mfu", "mfu", true},                       {"drop_rate", "drop_rate", false},
    {"gpus", "gpus", false},                    {"time_per_token", "time_per_token_us", false},
    {"tpot", "time_per_token_us", false},       {"days", "train_days", false},
    {"power", "power_kw", false},               {"energy", "energy_kwh_per_million_tokens", false},
};
// Columns where more is better (for a bare `=` target).
constexpr const char* kHigherColumns[] = {"tokens_per_s", "tokens_per_s_per_gpu", "mfu", "goodput", "goodput_tokens_per_s"};

// 1234567.8 -> "1,234,568"; small values with four significant digits.
std::string number(double x) {
  if (std::fabs(x) < 1000) return fmt::format("{:.4g}", x);
  std::string digits = fmt::format("{:.0f}", std::fabs(x)), grouped;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
    grouped += digits[i];
  }
  return (x < 0 ? "-" : "") + grouped;
}

// A metric's value in words: units where the column has them.
std::string quantity(const Metric& m, double x) {
  if (m.column == "step_time_us" || m.column == "time_per_token_us") return x >= 1000 ? fmt::format("{:.3f} ms", x / 1000) : fmt::format("{:.1f} us", x);
  if (m.column == "memory_gb_max") return fmt::format("{:.1f} GB", x);
  if (m.column == "cost_per_million_tokens" || m.column == "goodput_cost_per_million_tokens") return fmt::format("{:.4g} per million tokens", x);
  if (m.column == "cost_per_step") return fmt::format("{:.4g} per step", x);
  if (m.column == "power_kw") return fmt::format("{} kW", number(x));
  if (m.column == "energy_kwh_per_million_tokens") return fmt::format("{:.4g} kWh per million tokens", x);
  if (m.column == "drop_rate" || m.column == "goodput") return fmt::format("{:.2f}%", 100 * x);
  return number(x);
}

}  // namespace

Metric parse_metric(const std::string& name) {
  for (const auto& a : kAliases)
    if (name == a.name) return {a.column, name, a.higher_is_better};
  if (name.empty() || name.find_first_of("<>=/ ") != std::string::npos)
    throw PlanError(fmt::format("'{}' is not a metric (a summary.csv column, or one of tokens/s, tokens/s/gpu, "
                                "latency, step_time, cost, cost/step, memory, mfu, drop_rate, gpus, days, power, energy)", name));
  const bool higher = std::find(std::begin(kHigherColumns), std::end(kHigherColumns), name) != std::end(kHigherColumns);
  return {name, name, higher};
}

Target parse_target(const std::string& text) {
  std::size_t at = text.find_first_of("<>=");
  if (at == std::string::npos || at == 0)
    throw PlanError(fmt::format("--target '{}': expected METRIC>=VALUE, METRIC<=VALUE or METRIC=VALUE", text));
  Target t{parse_metric(text.substr(0, at)), true, 0};
  std::string value;
  if (text.compare(at, 2, ">=") == 0) {
    value = text.substr(at + 2);
  } else if (text.compare(at, 2, "<=") == 0) {
    t.at_least = false;
    value = text.substr(at + 2);
  } else if (text[at] == '=') {
    t.at_least = t.metric.higher_is_better;
    value = text.substr(at + 1);
  } else {
    throw PlanError(fmt::format("--target '{}': use >= or <= (or = for the usual direction)", text));
  }
  try {
    if ((t.metric.column == "step_time_us" || t.metric.column == "time_per_token_us") && value.find_first_not_of("0123456789.eE+-") != std::string::npos)
      t.value = static_cast<double>(sim::parse_time(value).count_ps()) / 1e6;
    else
      t.value = sim::parse_number(value);
  } catch (const std::exception& e) {
    throw PlanError(fmt::format("--target '{}': {}", text, e.what()));
  }
  return t;
}

PlanChoice choose_point(const std::string& csv_text, const std::vector<Target>& targets, const Metric& objective,
                        bool minimize, const std::vector<std::string>& axes, std::size_t top) {
  std::vector<std::vector<std::string>> rows;
  {
    std::stringstream ss(csv_text);
    for (std::string line; std::getline(ss, line);)
      if (!line.empty()) rows.push_back(csv_fields(line));
  }
  if (rows.empty()) throw PlanError("the sweep wrote no rows");
  const auto& header = rows.front();
  const auto column = [&](const std::string& name) {
    const auto it = std::find(header.begin(), header.end(), name);
    if (it == header.end()) throw PlanError(fmt::format("the sweep has no column '{}'", name));
    return static_cast<std::size_t>(it - header.begin());
  };
  const std::size_t obj = column(objective.column), fits = column("fits_memory"), reason = column("infeasible_reason");
  std::vector<std::size_t> target_cols;
  for (const auto& t : targets) target_cols.push_back(column(t.metric.column));
  const auto value = [&](std::size_t row, std::size_t col) -> std::optional<double> {
    const auto& f = rows[row][col];
    if (f.empty()) return std::nullopt;
    try {
      return std::stod(f);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  };
  // A column the sweep never filled (in the rows of points that ran: a grid's skipped points
  // fill none) is a setting the user left out.
  std::optional<std::size_t> ran;
  for (std::size_t r = 1; r < rows.size() && !ran; ++r)
    if (rows[r].size() == header.size() && !rows[r][reason].starts_with("invalid: ") && !rows[r][reason].starts_with("not simulated: "))
      ran = r;
  if (objective.column.rfind("cost", 0) == 0 && ran && !value(*ran, obj))
    throw PlanError("the sweep has no cost: set cluster.gpu_hour_price in the scenario (or with --set)");
  const bool per_token = objective.column == "time_per_token_us" ||
                         std::any_of(targets.begin(), targets.end(), [](const Target& t) { return t.metric.column == "time_per_token_us"; });
  if (per_token && ran && !value(*ran, column("time_per_token_us")))
    throw PlanError("the sweep has no time per token: only decode has one (workload.kind: decode)");
  // The axes that vary over the sweep's rows: a point is told by those (an axis of one value, as a
  // search's global batch, says nothing about it).
  std::vector<std::size_t> shown;
  for (std::size_t a = 0; a < axes.size(); ++a) {
    bool varies = rows.size() <= 2;
    for (std::size_t r = 2; r < rows.size() && !varies; ++r) varies = rows[r].size() > a + 1 && rows[r][a + 1] != rows[1][a + 1];
    if (varies) shown.push_back(a);
  }
  const auto describe = [&](std::size_t row) {
    std::string s = fmt::format("point {}", rows[row][0]);
    std::string values;
    for (const std::size_t a : shown) {
      if (!values.empty()) values += ", ";
      values += fmt::format("{}={}", axes[a], rows[row][a + 1]);
    }
    return values.empty() ? s : fmt::format("{} ({})", s, values);
  };

  std::size_t infeasible = 0, missed = 0, invalid = 0;
  std::string first_invalid;
  std::map<std::string, std::size_t> invalid_by_key;
  // Of the points that do not fit, the one that comes nearest: the least memory needed (a run's
  // memory_gb_max, or a skipped point's floor, "needs at least X GB").
  std::optional<std::size_t> nearest_unfit;
  double nearest_need = 1e300;
  const auto need_gb = [&](std::size_t r) {
    if (const auto v = value(r, column("memory_gb_max"))) return *v;
    const std::string& why = rows[r][reason];
    const auto at = why.find("needs at least ");
    try {
      return at == std::string::npos ? 1e300 : std::stod(why.substr(at + 15));
    } catch (const std::exception&) {
      return 1e300;
    }
  };
  std::vector<std::size_t> ok;
  // The nearest miss: the point that misses the targets by the smallest relative margin.
  std::optional<std::size_t> nearest;
  double nearest_gap = 1e300;
  std::string nearest_what;
  for (std::size_t r = 1; r < rows.size(); ++r) {
    if (rows[r].size() != header.size()) throw PlanError(fmt::format("row {} of the sweep is malformed", r));
    if (rows[r][fits] == "no") {
      ++infeasible;
      if (const double need = need_gb(r); !nearest_unfit || need < nearest_need) {
        nearest_unfit = r;
        nearest_need = need;
      }
      continue;
    }
    if (rows[r][reason].starts_with("invalid: ")) {  // a point the grid skipped (skip: invalid)
      ++invalid;
      if (first_invalid.empty()) first_invalid = describe(r) + ": " + rows[r][reason].substr(9);
      // By the key that refused it (the first problem's): a search's refusals come in kinds.
      const std::string why = rows[r][reason].substr(9);
      ++invalid_by_key[why.substr(0, why.find(':'))];
      continue;
    }
    double gap = 0;
    std::string what;
    for (std::size_t k = 0; k < targets.size(); ++k) {
      const auto v = value(r, target_cols[k]);
      const auto& t = targets[k];
      const bool met = v && (t.at_least ? *v >= t.value : *v <= t.value);
      if (met) continue;
      const double miss = v ? std::fabs(*v - t.value) / std::max(std::fabs(t.value), 1e-300) : 1e300;
      if (miss > gap) {
        gap = miss;
        what = v ? fmt::format("{} {}", quantity(t.metric, *v), t.metric.label) : fmt::format("no {}", t.metric.label);
      }
    }
    if (gap > 0) {
      ++missed;
      if (gap < nearest_gap) {
        nearest_gap = gap;
        nearest = r;
        nearest_what = what;
      }
      continue;
    }
    if (value(r, obj)) ok.push_back(r);
  }
  std::stable_sort(ok.begin(), ok.end(), [&](std::size_t a, std::size_t b) {
    return minimize ? *value(a, obj) < *value(b, obj) : *value(a, obj) > *value(b, obj);
  });

  std::string goal;
  for (const auto& t : targets)
    goal += fmt::format("{}{} {} {}", goal.empty() ? "" : " and ", t.metric.label, t.at_least ? ">=" : "<=",
                        quantity(t.metric, t.value));
  const std::size_t total = rows.size() - 1;
  std::string ruled_out;
  if (infeasible > 0)
    ruled_out += fmt::format(" {} of the {} points do not fit the GPUs' memory (the nearest, {}: {}).", infeasible, total,
                             describe(*nearest_unfit), rows[*nearest_unfit][reason]);
  if (invalid > 0) {
    std::string kinds;  // "120 by parallelism.pp, 52 by parallelism.virtual_stages; " where more than one key refused
    if (invalid_by_key.size() > 1) {
      std::vector<std::pair<std::string, std::size_t>> by(invalid_by_key.begin(), invalid_by_key.end());
      std::stable_sort(by.begin(), by.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
      for (const auto& [key, n] : by) kinds += fmt::format("{}{} by {}", kinds.empty() ? "" : ", ", n, key);
      kinds += "; ";
    }
    ruled_out += fmt::format(" {} of the {} points are invalid and were not run ({}e.g. {}).", invalid, total, kinds, first_invalid);
  }
  if (missed > 0)
    ruled_out += fmt::format(" {} {} the target{}; the nearest, {}, reaches {}.", missed, missed == 1 ? "misses" : "miss",
                             targets.size() == 1 ? "" : "s", describe(*nearest), nearest_what);
  PlanChoice c;
  if (ok.empty()) {
    c.explanation = fmt::format("No point of the {} meets {}.{}", total, goal.empty() ? "the constraints" : goal, ruled_out);
    return c;
  }
  const std::size_t best = ok.front();
  c.best = best - 1;
  const auto col_of = [&](std::size_t row, const char* name) { return value(row, column(name)).value_or(0); };
  const auto col = [&](const char* name) { return col_of(best, name); };
  const std::string why =
      ok.size() == 1
          ? fmt::format("it is the only point that fits in memory{} ({} {})", goal.empty() ? "" : " and meets " + goal,
                        objective.label, quantity(objective, *value(best, obj)))
          : fmt::format("it has the {} {} ({}) of the {} points that fit in memory{}", minimize ? "lowest" : "highest",
                        objective.label, quantity(objective, *value(best, obj)), ok.size(),
                        goal.empty() ? "" : " and meet " + goal);
  // A column the sweep may not have (an older CSV): nothing where it has not.
  const auto optional_col = [&](const char* name) -> std::optional<double> {
    const auto at = std::find(header.begin(), header.end(), name);
    return at == header.end() ? std::nullopt : value(best, static_cast<std::size_t>(at - header.begin()));
  };
  // Speculative decoding: a sequence's tokens come faster than the steps.
  const std::optional<double> tpot = optional_col("time_per_token_us");
  const std::string token_every = tpot && *tpot != col("step_time_us")
                                    ? fmt::format(" (a token every {} per sequence)", quantity(parse_metric("time_per_token_us"), *tpot))
                                    : "";
  // Where its step goes: the critical GPU's longest wait, where it is a tenth of the step or more.
  std::string waits;
  {
    static constexpr std::pair<const char*, const char*> kWaits[] = {
        {"dispatch_wait_us", "the all-to-all's dispatch"},
        {"combine_wait_us", "the all-to-all's combine"},
        {"grad_sync_us", "the gradient sync (and a sharded optimizer's gathers after it)"},
        {"pipeline_wait_us", "the other pipeline stages (bubble included)"},
        {"tp_wait_us", "the tensor-parallel collectives"},
        {"cp_wait_us", "the context-parallel collectives"},
        {"param_gather_wait_us", "the sharded weights' all-gathers"}};
    const auto wait = [&](const char* name) { return optional_col(name).value_or(0); };
    const double step = col("step_time_us");
    const auto longest = std::max_element(std::begin(kWaits), std::end(kWaits),
                                          [&](const auto& a, const auto& b) { return wait(a.first) < wait(b.first); });
    if (step > 0 && wait(longest->first) >= 0.1 * step)
      waits = fmt::format(" Its critical GPU waits {:.0f}% of the step for {} ({}).", 100 * wait(longest->first) / step,
                          longest->second, longest->first);
  }
  c.explanation = fmt::format(
      "Choose {}: {}. It runs {} tokens/s ({} per GPU, {} GPUs) with a step of {}{}, {:.1f}% of assignments dropped, "
      "and needs up to {:.1f} of {:.0f} GB per GPU.{}{}",
      describe(best), why, number(col("tokens_per_s")), number(col("tokens_per_s_per_gpu")), rows[best][column("gpus")],
      quantity(parse_metric("step_time_us"), col("step_time_us")), token_every, 100 * col("drop_rate"), col("memory_gb_max"),
      col("gpu_memory_gb"), waits, ruled_out);
  if (ok.size() > 1) {
    const double a = *value(best, obj), b = *value(ok[1], obj);
    c.explanation += fmt::format(" The runner-up, {}, has {} ({}).", describe(ok[1]), quantity(objective, b),
                                 a != 0 ? fmt::format("{:+.1f}%", 100 * (b - a) / std::fabs(a)) : "the same");
  }
  if (top > 0) {
    // The ranking: a column per axis that varies (its name's last part), then the figures; aligned.
    std::vector<std::vector<std::string>> cells;
    std::vector<std::string> head{"rank", "point"};
    for (const std::size_t a : shown) head.push_back(axes[a].substr(axes[a].rfind('.') + 1));
    const bool per_gpu = objective.column == "tokens_per_s_per_gpu";  // then the objective's column is it
    for (const char* h : {"", "tokens/s/gpu", "step", "memory_gb"})
      if (!(per_gpu && std::string_view(h) == "tokens/s/gpu")) head.emplace_back(*h ? h : objective.label.c_str());
    cells.push_back(head);
    const double first = *value(best, obj);
    for (std::size_t k = 0; k < std::min(top, ok.size()); ++k) {
      const std::size_t r = ok[k];
      std::vector<std::string> line{std::to_string(k + 1), rows[r][0]};
      for (const std::size_t a : shown) line.push_back(rows[r][a + 1]);
      const double v = *value(r, obj);
      line.push_back(quantity(objective, v) + (k > 0 && first != 0 ? fmt::format(" ({:+.1f}%)", 100 * (v - first) / std::fabs(first)) : ""));
      if (!per_gpu) line.push_back(number(col_of(r, "tokens_per_s_per_gpu")));
      line.push_back(quantity(parse_metric("step_time_us"), col_of(r, "step_time_us")));
      line.push_back(fmt::format("{:.1f}", col_of(r, "memory_gb_max")));
      cells.push_back(std::move(line));
    }
    std::vector<std::size_t> width(head.size(), 0);
    for (const auto& line : cells)
      for (std::size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
    for (const auto& line : cells) {
      std::string text;
      for (std::size_t i = 0; i < line.size(); ++i) text += fmt::format("{:<{}}", line[i], i + 1 < line.size() ? width[i] + 2 : 0);
      c.table += text + '\n';
    }
    if (ok.size() > top)
      c.table += ok.size() - top == 1 ? std::string("(1 more point qualifies)\n") : fmt::format("({} more points qualify)\n", ok.size() - top);
  }
  return c;
}

}  // namespace moesim::tools
