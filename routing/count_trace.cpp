#include "routing/count_trace.hpp"

#include <fmt/format.h>

#include <fstream>
#include <set>
#include <string_view>
#include <utility>

#include "sim/csv.hpp"

namespace moesim::routing {

namespace {

std::int64_t whole(std::string_view f, const char* what, const std::string& where) {
  const auto v = sim::parse_whole(f);
  if (!v) throw TraceError(fmt::format("{}: {} must be a whole number, got '{}'", where, what, f));
  return *v;
}

}  // namespace

std::map<int, std::vector<double>> read_count_trace(const std::string& path, int experts) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TraceError(fmt::format("{}: cannot open the trace file", path));
  std::map<int, std::vector<double>> out;
  std::set<std::pair<std::int64_t, std::int64_t>> seen;
  std::string line;
  std::size_t no = 0;
  bool header = false;
  while (std::getline(in, line)) {
    ++no;
    const std::string where = fmt::format("{}:{}", path, no);
    const std::string_view text = sim::trim_field(line);
    if (text.empty() || text.front() == '#') continue;
    const std::vector<std::string_view> f = sim::split_fields(text);
    if (!header) {
      if (f.size() != 3 || f[0] != "layer" || f[1] != "expert" || f[2] != "count")
        throw TraceError(fmt::format("{}: expected the header 'layer,expert,count', got '{}'", where, text));
      header = true;
      continue;
    }
    if (f.size() != 3) throw TraceError(fmt::format("{}: expected 3 fields (layer,expert,count), got {}", where, f.size()));
    const std::int64_t layer = whole(f[0], "layer", where);
    const std::int64_t expert = whole(f[1], "expert", where);
    const std::int64_t count = whole(f[2], "count", where);
    if (layer < 0 || layer > 1'000'000) throw TraceError(fmt::format("{}: layer {} out of range", where, layer));
    if (expert < 0 || expert >= experts)
      throw TraceError(fmt::format("{}: unknown expert {} (the model has experts 0 to {})", where, expert, experts - 1));
    if (count < 0) throw TraceError(fmt::format("{}: count must not be negative, got {}", where, count));
    if (!seen.emplace(layer, expert).second)
      throw TraceError(fmt::format("{}: layer {} expert {} appears twice", where, layer, expert));
    auto& v = out[static_cast<int>(layer)];
    v.resize(static_cast<std::size_t>(experts), 0.0);
    v[static_cast<std::size_t>(expert)] = static_cast<double>(count);
  }
  if (in.bad()) throw TraceError(fmt::format("{}: read error", path));
  if (!header) throw TraceError(fmt::format("{}: empty trace (expected the header 'layer,expert,count')", path));
  return out;
}

}  // namespace moesim::routing
