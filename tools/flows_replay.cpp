#include "tools/flows_replay.hpp"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <fstream>
#include <string_view>
#include <vector>

#include "models/network.hpp"
#include "sim/csv.hpp"
#include "sim/simulator.hpp"
#include "sim/units.hpp"
#include "tools/report.hpp"
#include "topology/cluster.hpp"

namespace moesim::tools {
namespace {

struct Row {
  std::uint32_t src, dst;
  std::int64_t bytes;
  sim::Time start;
};

std::int64_t whole_number(std::string_view field, const char* what, const std::string& where) {
  const auto v = sim::parse_whole(field);
  if (!v) throw FlowsInputError(fmt::format("{}: {} must be a whole number, got '{}'", where, what, field));
  return *v;
}

std::vector<Row> read_flows(const std::string& path, int gpus) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FlowsInputError(fmt::format("{}: cannot open the flows file", path));
  std::vector<Row> rows;
  std::string line;
  std::size_t line_no = 0;
  bool header_seen = false;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string where = fmt::format("{}:{}", path, line_no);
    const std::string_view text = sim::trim_field(line);
    if (text.empty() || text.front() == '#') continue;
    const auto fields = sim::split_fields(text);
    if (!header_seen) {
      if (fields.size() != 4 || fields[0] != "src" || fields[1] != "dst" || fields[2] != "bytes" ||
          fields[3] != "start_us")
        throw FlowsInputError(fmt::format("{}: expected the header 'src,dst,bytes,start_us', got '{}'", where, text));
      header_seen = true;
      continue;
    }
    if (fields.size() != 4)
      throw FlowsInputError(fmt::format("{}: expected 4 fields (src,dst,bytes,start_us), got {}", where, fields.size()));
    const std::int64_t src = whole_number(fields[0], "src", where);
    const std::int64_t dst = whole_number(fields[1], "dst", where);
    for (const std::int64_t g : {src, dst})
      if (g < 0 || g >= gpus)
        throw FlowsInputError(fmt::format("{}: unknown GPU {} (the cluster has GPUs 0 to {})", where, g, gpus - 1));
    const std::int64_t bytes = whole_number(fields[2], "bytes", where);
    if (bytes < 0) throw FlowsInputError(fmt::format("{}: bytes must not be negative, got {}", where, bytes));
    sim::Time start;
    try {
      start = sim::parse_time(std::string(fields[3]) + "us");
    } catch (const std::exception&) {
      throw FlowsInputError(fmt::format("{}: start_us must be a number of microseconds, got '{}'", where, fields[3]));
    }
    if (start < sim::Time::zero())
      throw FlowsInputError(fmt::format("{}: start_us must not be negative, got '{}'", where, fields[3]));
    rows.push_back(Row{static_cast<std::uint32_t>(src), static_cast<std::uint32_t>(dst), bytes, start});
  }
  if (in.bad()) throw FlowsInputError(fmt::format("{}: read error", path));
  if (!header_seen) throw FlowsInputError(fmt::format("{}: empty flows file (expected the header 'src,dst,bytes,start_us')", path));
  return rows;
}

}  // namespace

FlowsReplayResult replay_flows(const scenarios::Scenario& sc, const std::string& flows_path,
                               const std::string& out_path) {
  const topology::Cluster cluster(sc.cluster);
  const std::vector<Row> rows = read_flows(flows_path, cluster.gpu_count());

  sim::Simulator simulator;
  const auto net = models::make_network_model(sc.network_model, simulator, cluster, sc.resolve_interval);
  std::vector<double> end_s(rows.size(), -1);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    simulator.schedule_at(rows[i].start, [&, i] {
      const Row& r = rows[i];
      net->start_flow({topology::GpuId(r.src), topology::GpuId(r.dst), sim::Bytes(r.bytes)},
                      [&, i] { end_s[i] = net->last_completion_s(); });
    });
  }
  FlowsReplayResult result;
  result.events = simulator.run();
  result.flows = rows.size();

  write_atomically(out_path, [&](std::ostream& out) {
    fmt::print(out, "flow,src,dst,bytes,start_us,end_us\n");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      fmt::print(out, "{},{},{},{},{},{:.6f}\n", i, r.src, r.dst, r.bytes, sim::format_us(r.start), end_s[i] * 1e6);
      result.last_end_us = std::max(result.last_end_us, end_s[i] * 1e6);
    }
  });
  return result;
}

}  // namespace moesim::tools
