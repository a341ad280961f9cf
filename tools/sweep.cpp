#include "tools/sweep.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <string_view>
#include <thread>

#include "scenarios/experiment.hpp"
#include "sim/assert.hpp"
#include "sim/rng.hpp"
#include "tools/report.hpp"

namespace moesim::tools {
namespace detail {

Sweep::Sweep(const scenarios::Grid& grid, const SweepOptions& o) : points(grid.points()), opts(o) {
  // Check every point first: a bad axis value fails before anything runs.
  scenarios.reserve(points.size());
  skipped.resize(points.size());
  unfit.resize(points.size(), 0);
  std::exception_ptr first_invalid;
  for (std::size_t i = 0; i < points.size(); ++i) {
    std::vector<std::string> sets = opts.sets;
    sets.insert(sets.end(), points[i].begin(), points[i].end());
    try {
      scenarios.push_back(scenarios::load_scenario_file(grid.base, sets));
    } catch (const scenarios::ScenarioError& e) {
      if (!grid.skip_invalid) throw;
      if (!first_invalid) first_invalid = std::current_exception();
      skipped[i] = "invalid: " + scenarios::invalid_point_reason(grid, e);
      scenarios.emplace_back();
    }
    if (opts.reports.empty()) scenarios.back().timeline = "off";
  }
  // Where no point is valid the mistake is the base scenario's or --set's, not a layout's: say so.
  if (first_invalid && std::all_of(skipped.begin(), skipped.end(), [](const std::string& why) { return !why.empty(); }))
    std::rethrow_exception(first_invalid);
  if (grid.skip_unfit) {
    // Points that cannot fit, from the memory that needs no simulation (placements are computed,
    // which may take a while for big clusters: on all the jobs' threads). A point that may fit
    // keeps its placements for its run (one step's: a run of several makes its own each step).
    std::vector<std::size_t> valid;
    for (std::size_t i = 0; i < points.size(); ++i)
      if (skipped[i].empty()) valid.push_back(i);
    parallel_for(valid, opts.jobs, [&](std::size_t i) {
      auto& sc = scenarios[i];
      std::vector<routing::Placement> placements = scenarios::compute_placements(sc);
      skipped[i] = unfit_reason(sc, &placements);
      unfit[i] = skipped[i].empty() ? 0 : 1;
      if (!unfit[i] && sc.steps <= 1 && sc.forward.placements.empty()) sc.forward.placements = std::move(placements);
    });
  }
  // What each point runs: a hash (FNV-1a, 64 bits) of the base scenario's text and its overrides.
  std::string base_text;
  {
    std::ifstream in(grid.base, std::ios::binary);
    base_text.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  // And what the point reads besides: the kernel profile (built in or a file) and the traces
  // it names, by content (each file read once), so that new measurements or a changed trace
  // make the earlier rows stale too; and the moesim build that computes it (its executable's
  // bytes), so that rows from before an upgrade that changed the models are not kept beside
  // rows from after it.
  const auto digest_of = [](const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::string("unreadable");
    std::uint64_t h = sim::kFnv1a64Offset;
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
      h = sim::fnv1a64(std::string_view(buf, static_cast<std::size_t>(in.gcount())), h);
      if (!in) break;
    }
    return fmt::format("{:016x}", h);
  };
  std::map<std::string, std::string> file_digests;
  const auto file_digest = [&](const scenarios::Scenario& sc, const std::string& written) -> const std::string& {
    std::filesystem::path path(written);
    if (path.is_relative()) path = std::filesystem::path(sc.source).parent_path() / path;
    auto [it, fresh] = file_digests.try_emplace(path.string());
    if (fresh) it->second = digest_of(path);
    return it->second;
  };
  const std::string build = "build " + digest_of("/proc/self/exe");  // Linux: the running executable
  for (std::size_t i = 0; i < points.size(); ++i) {
    const auto& p = points[i];
    const auto& sc = scenarios[i];
    std::uint64_t h = sim::kFnv1a64Offset;
    const auto mix = [&](const std::string& text) { h = sim::fnv1a64("\xff", sim::fnv1a64(text, h)); };  // 0xff: a separator no text holds
    mix(base_text);
    mix(build);
    for (const auto& x : opts.sets) mix(x);
    for (const auto& x : p) mix(x);
    // A skipped point's row is not what running it gives: without the skip it runs again.
    if (!skipped[i].empty()) mix("skipped");
    if (sc.forward.profile) mix(fmt::format("profile {:016x}", sc.forward.profile->digest));
    for (const auto* trace : {&sc.routing_trace, &sc.placement_trace})
      if (!trace->empty()) mix("trace " + file_digest(sc, *trace));
    configs.push_back(fmt::format("{:016x}", h));
  }
  axes_header = "point";
  for (const auto& a : grid.axes) (axes_header += ',') += csv_field(a);
}

std::vector<std::vector<std::size_t>> Sweep::groups(const std::vector<std::size_t>& todo) const {
  // An override the simulation does not read: only the summary's goodput, budget, cost and power do.
  const auto reports_only = [](const std::string& set) {
    const std::string key = set.substr(0, set.find('='));
    return key == "cluster.gpu_hour_price" || key == "workload.train_tokens" || key.starts_with("reliability.") ||
           key == "cluster.power" || key.starts_with("cluster.power.");
  };
  std::map<std::vector<std::string>, std::size_t> index;  // the overrides the simulation reads -> group
  std::vector<std::vector<std::size_t>> out;
  for (const std::size_t p : todo) {
    if (!skipped[p].empty()) {  // nothing to simulate: a group of its own
      out.push_back({p});
      continue;
    }
    std::vector<std::string> read;
    for (const auto& set : points[p])
      if (!reports_only(set)) read.push_back(set);
    const auto [it, fresh] = index.try_emplace(std::move(read), out.size());
    if (fresh) out.emplace_back();
    out[it->second].push_back(p);
  }
  return out;
}

bool Sweep::simulates(const std::vector<std::size_t>& group) const { return skipped[group.front()].empty(); }

std::vector<std::pair<std::string, std::string>> Sweep::run_group(const std::vector<std::size_t>& group) const {
  std::vector<std::pair<std::string, std::string>> out;
  const std::string header = axes_header + "," + summary_csv_header() + ",point_config";
  if (!simulates(group)) {
    // A skipped point: its axes' values, and of summary.csv's columns fits_memory (no where it
    // cannot fit, unknown where it is invalid), gpu_memory_gb and infeasible_reason.
    const std::size_t p = group.front();
    const auto columns = csv_fields(summary_csv_header());
    std::vector<std::string> fields(columns.size());
    const auto set = [&](const char* name, std::string value) {
      const auto at = std::find(columns.begin(), columns.end(), name);
      MOESIM_ASSERT(at != columns.end(), "summary.csv lost a column a skipped row fills");
      fields[static_cast<std::size_t>(at - columns.begin())] = std::move(value);
    };
    set("fits_memory", unfit[p] ? "no" : "");
    if (unfit[p]) set("gpu_memory_gb", fmt::format("{:.3f}", static_cast<double>(scenarios[p].cluster.gpu.memory.count()) / 1e9));
    set("infeasible_reason", skipped[p]);
    std::string row = std::to_string(p);
    for (const auto& v : points[p]) (row += ',') += csv_field(v.substr(v.find('=') + 1));
    for (const auto& f : fields) (row += ',') += csv_field(f);
    (row += ',') += configs[p];
    out.emplace_back(header, std::move(row));
    return out;
  }
  const auto r = scenarios::run_experiment(scenarios[group.front()]);
  for (const std::size_t p : group) {
    const auto& sc = scenarios[p];
    if (!opts.reports.empty())
      write_reports((std::filesystem::path(opts.reports) / fmt::format("point-{:04}", p)).string(), sc, r);
    std::ostringstream s;
    write_summary_csv(s, sc, r);
    const std::string text = s.str();
    const auto nl = text.find('\n');
    std::string row = std::to_string(p);
    for (const auto& v : points[p]) (row += ',') += csv_field(v.substr(v.find('=') + 1));
    (row += ',') += text.substr(nl + 1, text.size() - nl - 2);
    (row += ',') += configs[p];
    out.emplace_back(std::move(header), std::move(row));
  }
  return out;
}

SweepFile::SweepFile(std::string path, std::vector<std::string> configs)
    : path_(std::move(path)), configs_(std::move(configs)) {
  if (!std::filesystem::exists(path_)) return;
  std::ifstream in(path_, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t at = 0;
  bool first = true;
  while (at < text.size()) {
    const auto nl = text.find('\n', at);
    if (nl == std::string::npos) break;  // a partial last row: dropped
    const std::string line = text.substr(at, nl - at);
    at = nl + 1;
    if (first) {
      header_ = line;
      first = false;
      continue;
    }
    try {
      const std::size_t p = std::stoul(line.substr(0, line.find(',')));
      if (p >= configs_.size()) continue;
      if (line.size() > configs_[p].size() && line.ends_with(configs_[p]) && line[line.size() - configs_[p].size() - 1] == ',')
        rows_[p] = line;
      else
        ++stale_;
    } catch (const std::exception&) {
      throw SweepError(fmt::format("{}: a row that is not a sweep row: '{}'", path_, line));
    }
  }
  already_ = rows_.size();
}

std::vector<std::size_t> SweepFile::missing() const {
  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < configs_.size(); ++i)
    if (!rows_.count(i)) todo.push_back(i);
  return todo;
}

void SweepFile::open_append() {
  if (append_) return;
  if (const auto parent = std::filesystem::path(path_).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent);
  // Rewrite what was read (without a partial last line), then append.
  {
    std::ofstream fresh(path_, std::ios::binary | std::ios::trunc);
    fresh << header_ << '\n';
    for (const auto& [p, line] : rows_) fresh << line << '\n';
    if (!fresh) throw SweepError(fmt::format("cannot write '{}'", path_));
  }
  append_ = std::make_unique<std::ofstream>(path_, std::ios::binary | std::ios::app);
  if (!*append_) throw SweepError(fmt::format("cannot write '{}'", path_));
}

void SweepFile::add(std::size_t point, const std::string& header, const std::string& row) {
  const std::lock_guard<std::mutex> g(lock_);
  if (header_.empty()) header_ = header;
  if (header_ != header)
    throw SweepError(fmt::format("{} holds rows of another sweep (its header differs); move it away or use --out", path_));
  open_append();
  *append_ << row << '\n';  // one write per row, flushed: never half a row from a finished point
  append_->flush();
  if (!*append_) throw SweepError(fmt::format("cannot write '{}'", path_));
  rows_[point] = row;
}

std::size_t SweepFile::rows() const {
  const std::lock_guard<std::mutex> g(lock_);
  return rows_.size();
}

std::size_t SweepFile::infeasible() const {
  const std::lock_guard<std::mutex> g(lock_);
  // The fits_memory column, found by name.
  const auto h = csv_fields(header_);
  const auto col = std::find(h.begin(), h.end(), "fits_memory") - h.begin();
  std::size_t n = 0;
  for (const auto& [p, line] : rows_) {
    const auto f = csv_fields(line);
    if (static_cast<std::size_t>(col) < f.size() && f[static_cast<std::size_t>(col)] == "no") ++n;
  }
  return n;
}

std::size_t SweepFile::invalid() const { return count_reasons("invalid: "); }
std::size_t SweepFile::unfit() const { return count_reasons("not simulated: "); }

std::size_t SweepFile::count_reasons(std::string_view prefix) const {
  const std::lock_guard<std::mutex> g(lock_);
  const auto h = csv_fields(header_);
  const auto col = static_cast<std::size_t>(std::find(h.begin(), h.end(), "infeasible_reason") - h.begin());
  std::size_t n = 0;
  for (const auto& [p, line] : rows_) {
    const auto f = csv_fields(line);
    if (col < f.size() && f[col].starts_with(prefix)) ++n;
  }
  return n;
}

void SweepFile::finish() {
  const std::lock_guard<std::mutex> g(lock_);
  if (append_) append_->close();
  append_.reset();
  if (rows_.size() != configs_.size() || header_.empty()) return;
  write_atomically(path_, [&](std::ostream& o) {
    o << header_ << '\n';
    for (const auto& [p, line] : rows_) o << line << '\n';
  });
}

void parallel_for(const std::vector<std::size_t>& indices, int jobs, const std::function<void(std::size_t)>& fn) {
  std::atomic<std::size_t> next{0};
  std::mutex lock;
  std::exception_ptr failure;
  auto work = [&] {
    for (std::size_t k = next++; k < indices.size(); k = next++) {
      try {
        fn(indices[k]);
      } catch (...) {
        const std::lock_guard<std::mutex> g(lock);
        if (!failure) failure = std::current_exception();
        next = indices.size();
      }
    }
  };
  {
    std::vector<std::jthread> pool;
    const auto n = static_cast<std::size_t>(std::max(1, jobs));
    for (std::size_t t = 1; t < std::min(n, indices.size()); ++t) pool.emplace_back(work);
    work();
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace detail

SweepResult run_sweep(const scenarios::Grid& grid, const std::string& out, const SweepOptions& opts) {
  const detail::Sweep sweep(grid, opts);
  detail::SweepFile file(out, sweep.configs);
  const auto todo = file.missing();
  SweepResult result;
  result.points = sweep.points.size();
  result.already = file.already();
  result.stale = file.stale();
  std::atomic<std::size_t> ran{0}, simulated{0};
  // Points that differ only in what the reports read share one simulation. Skipped points first:
  // their rows take no time, and the progress's estimate then times simulations alone.
  const auto groups = sweep.groups(todo);
  std::vector<std::size_t> each(groups.size());
  std::iota(each.begin(), each.end(), std::size_t{0});
  std::stable_partition(each.begin(), each.end(), [&](std::size_t g) { return !sweep.simulates(groups[g]); });
  detail::parallel_for(each, opts.jobs, [&](std::size_t g) {
    const auto rows = sweep.run_group(groups[g]);
    for (std::size_t i = 0; i < rows.size(); ++i) file.add(groups[g][i], rows[i].first, rows[i].second);
    ran += rows.size();
    if (sweep.simulates(groups[g])) simulated += rows.size();
    if (opts.progress) opts.progress(file.rows(), result.points, simulated);
  });
  result.ran = ran;
  result.simulations = static_cast<std::size_t>(
      std::count_if(groups.begin(), groups.end(), [&](const auto& g) { return sweep.simulates(g); }));
  result.skipped = groups.size() - result.simulations;  // one point each
  file.finish();
  result.infeasible = file.infeasible();
  result.invalid = file.invalid();
  result.unfit = file.unfit();
  return result;
}

bool launched_under_mpi() {
#ifdef MOESIM_MPI
  // OpenMPI's launcher, and the PMI/PMIx variables of others (MPICH, Slurm's srun).
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (std::getenv(v) != nullptr) return true;
#endif
  return false;
}

#ifndef MOESIM_MPI
SweepResult run_sweep_mpi(const scenarios::Grid&, const std::string&, const SweepOptions&, int*) {
  throw SweepError("this moesim was built without MPI (install libopenmpi-dev and rebuild)");
}
#endif

}  // namespace moesim::tools
