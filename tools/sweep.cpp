#include "tools/sweep.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "scenarios/experiment.hpp"
#include "scenarios/scenario.hpp"
#include "tools/report.hpp"

namespace moesim::tools {

SweepResult run_sweep(const scenarios::Grid& grid, const std::string& out, int jobs,
                      const std::function<void(std::size_t, std::size_t)>& progress) {
  const auto points = grid.points();
  // Check every point first: a bad axis value fails before anything runs.
  std::vector<scenarios::Scenario> scenarios;
  scenarios.reserve(points.size());
  for (const auto& p : points) {
    scenarios.push_back(scenarios::load_scenario_file(grid.base, p));
    scenarios.back().timeline = "off";
  }
  // The header: point, axes, and summary.csv's columns.
  std::string header = "point";
  for (const auto& a : grid.axes) (header += ',') += csv_field(a);
  const auto summary_of = [](const scenarios::Scenario& sc, const scenarios::RunResult& r) {
    std::ostringstream s;
    write_summary_csv(s, sc, r);
    const std::string text = s.str();
    const auto nl = text.find('\n');
    return std::pair<std::string, std::string>(text.substr(0, nl), text.substr(nl + 1, text.size() - nl - 2));
  };

  // Rows from an earlier run of the same sweep.
  std::map<std::size_t, std::string> rows;
  std::string existing_header;
  if (std::filesystem::exists(out)) {
    std::ifstream in(out, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::size_t at = 0;
    bool first = true;
    while (at < text.size()) {
      const auto nl = text.find('\n', at);
      if (nl == std::string::npos) break;  // a partial last row: dropped
      const std::string line = text.substr(at, nl - at);
      at = nl + 1;
      if (first) {
        existing_header = line;
        first = false;
        continue;
      }
      const auto comma = line.find(',');
      try {
        const std::size_t p = std::stoul(line.substr(0, comma));
        if (p < points.size()) rows[p] = line;
      } catch (const std::exception&) {
        throw SweepError(fmt::format("{}: a row that is not a sweep row: '{}'", out, line));
      }
    }
  }
  SweepResult result;
  result.points = points.size();
  result.already = rows.size();
  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < points.size(); ++i)
    if (!rows.count(i)) todo.push_back(i);

  std::mutex lock;
  std::string full_header;  // header + summary columns, known after the first point ran
  if (!existing_header.empty()) full_header = existing_header;
  std::ofstream append;
  auto open_append = [&] {
    if (append.is_open()) return;
    if (const auto parent = std::filesystem::path(out).parent_path(); !parent.empty())
      std::filesystem::create_directories(parent);
    // Rewrite what was read (without a partial last line), then append.
    std::ofstream fresh(out, std::ios::binary | std::ios::trunc);
    fresh << full_header << '\n';
    for (const auto& [p, line] : rows) fresh << line << '\n';
    fresh.close();
    append.open(out, std::ios::binary | std::ios::app);
    if (!append) throw SweepError(fmt::format("cannot write '{}'", out));
  };
  std::atomic<std::size_t> next{0}, done{0};
  std::exception_ptr failure;
  auto work = [&] {
    for (std::size_t k = next++; k < todo.size(); k = next++) {
      const std::size_t p = todo[k];
      try {
        const auto r = scenarios::run_experiment(scenarios[p]);
        const auto [cols, values] = summary_of(scenarios[p], r);
        std::string line = std::to_string(p);
        for (const auto& v : points[p]) (line += ',') += csv_field(v.substr(v.find('=') + 1));
        (line += ',') += values;
        const std::lock_guard<std::mutex> g(lock);
        std::string expected = header;
        (expected += ',') += cols;
        if (full_header.empty()) full_header = expected;
        if (full_header != expected)
          throw SweepError(fmt::format("{} holds rows of another sweep (its header differs); move it away or use --out", out));
        open_append();
        append << line << '\n';
        append.flush();
        rows[p] = line;
        if (progress) progress(++done + result.already, points.size());
      } catch (...) {
        const std::lock_guard<std::mutex> g(lock);
        if (!failure) failure = std::current_exception();
        next = todo.size();
      }
    }
  };
  {
    std::vector<std::jthread> pool;
    const auto n = static_cast<std::size_t>(std::max(1, jobs));
    for (std::size_t t = 1; t < std::min(n, todo.size()); ++t) pool.emplace_back(work);
    work();
  }
  if (failure) std::rethrow_exception(failure);
  result.ran = done;
  if (append.is_open()) append.close();
  // Complete: in point order, atomically.
  if (rows.size() == points.size() && !full_header.empty())
    write_atomically(out, [&](std::ostream& o) {
      o << full_header << '\n';
      for (const auto& [p, line] : rows) o << line << '\n';
    });
  return result;
}

}  // namespace moesim::tools
