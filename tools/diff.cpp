#include "tools/diff.hpp"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <vector>

#include "tools/report.hpp"

namespace moesim::tools {
namespace {

struct Summary {
  std::string path;
  std::vector<std::string> names, values;
  const std::string* find(std::string_view name) const {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) return &values[i];
    return nullptr;
  }
};

Summary read_summary(const std::string& given) {
  namespace fs = std::filesystem;
  Summary s;
  s.path = fs::is_directory(given) ? (fs::path(given) / "summary.csv").string() : given;
  std::ifstream in(s.path);
  if (!in) throw DiffInputError(fmt::format("{}: cannot read it (give a run's output directory or its summary.csv)", s.path));
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  if (!header.empty() && header.back() == '\r') header.pop_back();
  if (!row.empty() && row.back() == '\r') row.pop_back();
  s.names = csv_fields(header);
  s.values = csv_fields(row);
  if (s.names.empty() || s.names.front() != "scenario" || row.empty() || s.values.size() != s.names.size())
    throw DiffInputError(fmt::format("{}: not a moesim summary.csv (a header starting with 'scenario' and one row)", s.path));
  return s;
}

// B - A to as many decimals as the columns give (the CSV's own precision).
std::string delta(const std::string& x, const std::string& y, double u, double v) {
  if (v == u) return "0";
  const auto decimals = [](const std::string& s) -> int {
    const auto dot = s.find('.');
    return dot == std::string::npos ? 0 : static_cast<int>(s.size() - dot - 1);
  };
  if (x.find_first_of("eE") != std::string::npos || y.find_first_of("eE") != std::string::npos) return fmt::format("{:+.6g}", v - u);
  return fmt::format("{:+.{}f}", v - u, std::max(decimals(x), decimals(y)));
}

bool number(const std::string& s, double& x) {
  if (s.empty()) return false;
  char* end = nullptr;
  x = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(x);
}

// What a run was: shown where A and B differ.
constexpr std::string_view kSettings[] = {"scenario", "model", "model_config", "workload", "gpu", "gpus", "network_model", "resolve_interval_us", "compute_source", "elementwise_kernels",
                                          "all_to_all", "ep", "etp", "tp", "cp", "cp_gather", "pp", "virtual_stages", "pipeline_schedule", "overlap", "recompute",
                                          "moe_layers", "tokens_per_gpu", "micro_batches", "seed", "checkpoint", "node_fabric",
                                          "parameter_sharding", "shard_group", "param_gather_dtype", "prefill_chunk", "context_sigma", "context_balance"};
// What a comparison turns on: shown where either run has it (not empty or zero in both).
constexpr std::string_view kFigures[] = {
    "step_time_us", "tokens_per_s", "tokens_per_s_per_gpu", "time_per_token_us", "prompt_tokens_per_s", "attention_us", "router_us",
    "shared_experts_us", "dispatch_wait_us", "experts_us", "combine_wait_us", "reduce_us", "optimizer_us", "grad_sync_us",
    "dense_us", "pipeline_wait_us", "lm_head_us", "tp_wait_us", "cp_wait_us", "param_gather_wait_us", "exposed_comm_us",
    "gpu_imbalance_max", "drop_rate", "param_gather_bytes",
    "network_bytes", "scale_out_bytes", "mfu", "cost_per_million_tokens", "memory_gb_max", "fits_memory",
    "job_mtbf_h", "checkpoint_s", "checkpoint_write_s", "checkpoint_every_steps", "goodput", "goodput_tokens_per_s", "train_days",
    "power_kw", "energy_kwh_per_million_tokens"};

bool listed(std::string_view name) {
  for (const auto n : kSettings)
    if (n == name) return true;
  for (const auto n : kFigures)
    if (n == name) return true;
  return false;
}

}  // namespace

int diff_summaries(const std::string& a_path, const std::string& b_path, bool all, std::ostream& out) {
  const Summary a = read_summary(a_path), b = read_summary(b_path);
  if (a.names != b.names)
    throw DiffInputError(fmt::format("{} and {} have different columns (reports of different moesim versions); "
                                     "run both again with one moesim",
                                     a.path, b.path));
  int differ = 0;
  for (std::size_t i = 0; i < a.names.size(); ++i) differ += a.values[i] != b.values[i];
  fmt::print(out, "moesim diff: A = {}, B = {}: {} of {} columns differ\n", a.path, b.path, differ, a.names.size());

  bool heading = false;
  for (const auto name : kSettings) {
    const std::string *x = a.find(name), *y = b.find(name);
    if (!x || !y || *x == *y) continue;
    if (!heading) fmt::print(out, "  settings that differ\n"), heading = true;
    fmt::print(out, "    {:<24} {}  ->  {}\n", name, x->empty() ? "(none)" : *x, y->empty() ? "(none)" : *y);
  }
  const auto figure = [&](std::string_view name, const std::string& x, const std::string& y) {
    double u = 0, v = 0;
    if (number(x, u) && number(y, v)) {
      const std::string ratio = u != 0 ? fmt::format("{:.4f}", v / u) : std::string(v == 0 ? "1" : "-");
      fmt::print(out, "    {:<24} {:>16} {:>16} {:>16} {:>10}\n", name, x, y, delta(x, y, u, v), ratio);
    } else {
      fmt::print(out, "    {:<24} {:>16} {:>16}\n", name, x.empty() ? "-" : x, y.empty() ? "-" : y);
    }
  };
  fmt::print(out, "  {:<26} {:>16} {:>16} {:>16} {:>10}\n", "figures", "A", "B", "B - A", "B / A");
  for (const auto name : kFigures) {
    const std::string *x = a.find(name), *y = b.find(name);
    double u = 0, v = 0;
    if (!x || !y || (x->empty() && y->empty()) || (number(*x, u) && number(*y, v) && u == 0 && v == 0)) continue;  // not in either run
    figure(name, *x, *y);
  }
  if (all) {
    heading = false;
    for (std::size_t i = 0; i < a.names.size(); ++i) {
      if (listed(a.names[i]) || a.values[i] == b.values[i]) continue;
      if (!heading) fmt::print(out, "  other columns that differ\n"), heading = true;
      figure(a.names[i], a.values[i], b.values[i]);
    }
  }
  return differ;
}

}  // namespace moesim::tools
