#include "routing/traces.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <ostream>
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

// A line reader that skips comments and blank lines and knows the line number.
class Lines {
 public:
  explicit Lines(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) throw TraceError(fmt::format("{}: cannot open the trace file", path));
  }
  // The next meaningful line, trimmed; false at the end.
  bool next(std::string_view& text) {
    while (std::getline(in_, line_)) {
      ++no_;
      unterminated_ = in_.eof();
      text = sim::trim_field(line_);
      if (!text.empty() && text.front() != '#') return true;
    }
    if (in_.bad()) throw TraceError(fmt::format("{}: read error", path_));
    return false;
  }
  std::string where() const { return fmt::format("{}:{}", path_, no_); }
  // The last line read had no end of line (the file ends inside it).
  bool unterminated() const { return unterminated_; }

 private:
  std::string path_;
  std::ifstream in_;
  std::string line_;
  std::size_t no_ = 0;
  bool unterminated_ = false;
};

std::vector<std::string_view> split_spaces(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

constexpr std::string_view kCountHeader = "layer,expert,count";
constexpr std::string_view kSteppedCountHeader = "step,layer,expert,count";
constexpr std::string_view kTokenHeader = "layer,token,experts,gates";
constexpr std::string_view kRankedTokenHeader = "layer,token,experts,gates,rank";

std::string joined(const std::vector<std::string_view>& f) {
  std::string s;
  for (std::size_t i = 0; i < f.size(); ++i) (s += i ? "," : "") += f[i];
  return s;
}

}  // namespace

TraceKind trace_kind(const std::string& path) {
  Lines lines(path);
  std::string_view text;
  if (!lines.next(text)) throw TraceError(fmt::format("{}: empty trace (no header line)", path));
  const std::string h = joined(sim::split_fields(text));
  if (h == kCountHeader || h == kSteppedCountHeader) return TraceKind::counts;
  if (h == kTokenHeader || h == kRankedTokenHeader) return TraceKind::tokens;
  throw TraceError(fmt::format("{}: unknown trace header '{}' (expected '{}', '{}', '{}' or '{}')", lines.where(), text,
                               kCountHeader, kSteppedCountHeader, kTokenHeader, kRankedTokenHeader));
}

CountTrace read_count_trace(const std::string& path, int experts) {
  Lines lines(path);
  CountTrace out;
  std::set<std::tuple<std::int64_t, std::int64_t, std::int64_t>> seen;
  std::string_view text;
  bool header = false;
  while (lines.next(text)) {
    const std::string where = lines.where();
    const std::vector<std::string_view> f = sim::split_fields(text);
    if (!header) {
      const std::string h = joined(f);
      if (h != kCountHeader && h != kSteppedCountHeader)
        throw TraceError(fmt::format("{}: expected the header '{}' or '{}', got '{}'", where, kCountHeader,
                                     kSteppedCountHeader, text));
      out.stepped = h == kSteppedCountHeader;
      header = true;
      continue;
    }
    const std::size_t n = out.stepped ? 4 : 3;
    if (f.size() != n)
      throw TraceError(fmt::format("{}: expected {} fields ({}), got {}", where, n,
                                   out.stepped ? kSteppedCountHeader : kCountHeader, f.size()));
    const std::size_t o = out.stepped ? 1 : 0;
    const std::int64_t step = out.stepped ? whole(f[0], "step", where) : 0;
    const std::int64_t layer = whole(f[o], "layer", where);
    const std::int64_t expert = whole(f[o + 1], "expert", where);
    const std::int64_t count = whole(f[o + 2], "count", where);
    if (step < 0 || step > 1'000'000'000) throw TraceError(fmt::format("{}: step {} out of range", where, step));
    if (layer < 0 || layer > 1'000'000) throw TraceError(fmt::format("{}: layer {} out of range", where, layer));
    if (expert < 0 || expert >= experts)
      throw TraceError(fmt::format("{}: unknown expert {} (the model has experts 0 to {})", where, expert, experts - 1));
    if (count < 0) throw TraceError(fmt::format("{}: count must not be negative, got {}", where, count));
    if (!seen.emplace(step, layer, expert).second)
      throw TraceError(out.stepped ? fmt::format("{}: step {} layer {} expert {} appears twice", where, step, layer, expert)
                                   : fmt::format("{}: layer {} expert {} appears twice", where, layer, expert));
    auto& v = out.steps[static_cast<int>(step)][static_cast<int>(layer)];
    v.resize(static_cast<std::size_t>(experts), 0.0);
    v[static_cast<std::size_t>(expert)] = static_cast<double>(count);
  }
  if (!header)
    throw TraceError(fmt::format("{}: empty trace (expected the header '{}' or '{}')", path, kCountHeader, kSteppedCountHeader));
  return out;
}

std::vector<std::vector<double>> mean_counts(const CountTrace& trace, const std::string& path, int first,
                                             int last, int layers) {
  std::vector<std::vector<double>> out(static_cast<std::size_t>(layers));
  for (int s = first; s <= last; ++s) {
    const auto st = trace.steps.find(s);
    if (st == trace.steps.end())
      throw TraceError(trace.stepped ? fmt::format("{}: no counts for step {}", path, s)
                                     : fmt::format("{}: has no counts", path));
    for (int l = 0; l < layers; ++l) {
      const auto it = st->second.find(l);
      if (it == st->second.end())
        throw TraceError(trace.stepped ? fmt::format("{}: no counts for step {} layer {} (the model has {} MoE layers)",
                                                     path, s, l, layers)
                                       : fmt::format("{}: no counts for MoE layer {} (the model has {})", path, l, layers));
      auto& v = out[static_cast<std::size_t>(l)];
      v.resize(it->second.size(), 0.0);
      for (std::size_t e = 0; e < v.size(); ++e) v[e] += it->second[e];
    }
  }
  const double steps = last - first + 1;
  for (auto& v : out)
    for (auto& x : v) x /= steps;
  return out;
}

std::vector<TokenBatch> read_token_trace(const std::string& path, int experts, int top_k, int layers, int ranks,
                                         std::int64_t tokens_per_rank) {
  Lines lines(path);
  std::vector<TokenBatch> out(static_cast<std::size_t>(layers));
  for (auto& b : out) {
    b.top_k = top_k;
    b.ranks = ranks;
    b.tokens_per_rank = tokens_per_rank;
  }
  // Tokens taken so far: [layer * ranks + rank] with a rank column, [layer * ranks] without.
  std::vector<std::int64_t> taken(static_cast<std::size_t>(layers) * static_cast<std::size_t>(ranks), 0);
  std::string_view text;
  bool header = false, ranked = false;
  std::vector<int> ids(static_cast<std::size_t>(top_k));
  std::vector<float> gates(static_cast<std::size_t>(top_k));
  while (lines.next(text)) {
    const std::string where = lines.where();
    const std::vector<std::string_view> f = sim::split_fields(text);
    if (!header) {
      const std::string h = joined(f);
      if (h != kTokenHeader && h != kRankedTokenHeader)
        throw TraceError(fmt::format("{}: expected the header '{}' or '{}', got '{}'", where, kTokenHeader,
                                     kRankedTokenHeader, text));
      ranked = h == kRankedTokenHeader;
      header = true;
      continue;
    }
    if (lines.unterminated())
      throw TraceError(fmt::format("{}: the last line has no end of line; the file looks truncated", where));
    const std::size_t n = ranked ? 5 : 4;
    if (f.size() != n)
      throw TraceError(fmt::format("{}: expected {} fields ({}), got {}", where, n, ranked ? kRankedTokenHeader : kTokenHeader,
                                   f.size()));
    const std::int64_t layer = whole(f[0], "layer", where);
    const std::int64_t token = whole(f[1], "token", where);
    if (layer < 0 || layer > 1'000'000) throw TraceError(fmt::format("{}: layer {} out of range", where, layer));
    if (token < 0) throw TraceError(fmt::format("{}: token must not be negative, got {}", where, token));
    const auto e = split_spaces(f[2]);
    const auto g = split_spaces(f[3]);
    if (static_cast<int>(e.size()) != top_k)
      throw TraceError(fmt::format("{}: {} expert ids, but the model routes each token to top_k = {}", where, e.size(), top_k));
    if (g.size() != e.size())
      throw TraceError(fmt::format("{}: {} gate weights for {} experts", where, g.size(), e.size()));
    for (int j = 0; j < top_k; ++j) {
      const auto id = whole(e[static_cast<std::size_t>(j)], "an expert id", where);
      if (id < 0 || id >= experts)
        throw TraceError(fmt::format("{}: unknown expert {} (the model has experts 0 to {})", where, id, experts - 1));
      ids[static_cast<std::size_t>(j)] = static_cast<int>(id);
      for (int i = 0; i < j; ++i)
        if (ids[static_cast<std::size_t>(i)] == id) throw TraceError(fmt::format("{}: expert {} twice in one token", where, id));
      const std::string_view gs = g[static_cast<std::size_t>(j)];
      double w = 0;
      const auto [end, ec] = std::from_chars(gs.data(), gs.data() + gs.size(), w);
      if (ec != std::errc() || end != gs.data() + gs.size() || !std::isfinite(w) || w < 0)
        throw TraceError(fmt::format("{}: a gate weight must be a number >= 0, got '{}'", where, gs));
      gates[static_cast<std::size_t>(j)] = static_cast<float>(w);
    }
    std::int64_t rank = 0;
    if (ranked) {
      rank = whole(f[4], "rank", where);
      if (rank < 0) throw TraceError(fmt::format("{}: rank must not be negative, got {}", where, rank));
      if (rank >= ranks) continue;  // a rank the EP group does not have
    }
    if (layer >= layers) continue;  // a layer the model does not have
    auto& b = out[static_cast<std::size_t>(layer)];
    auto& t = taken[static_cast<std::size_t>(layer * ranks + rank)];
    std::int64_t index;  // the token's place in the batch
    if (ranked) {
      if (t >= tokens_per_rank) continue;
      index = rank * tokens_per_rank + t++;
    } else {
      if (t >= b.tokens()) continue;
      index = t++;
    }
    if (b.experts.empty()) {
      b.experts.assign(static_cast<std::size_t>(b.tokens() * top_k), -1);
      b.gates.assign(static_cast<std::size_t>(b.tokens() * top_k), 0.0f);
    }
    std::copy(ids.begin(), ids.end(), b.experts.begin() + index * top_k);
    std::copy(gates.begin(), gates.end(), b.gates.begin() + index * top_k);
  }
  if (!header)
    throw TraceError(fmt::format("{}: empty trace (expected the header '{}' or '{}')", path, kTokenHeader, kRankedTokenHeader));
  for (int l = 0; l < layers; ++l) {
    const auto& b = out[static_cast<std::size_t>(l)];
    if (ranked) {
      for (int r = 0; r < ranks; ++r) {
        const auto t = taken[static_cast<std::size_t>(l * ranks + r)];
        if (t < tokens_per_rank)
          throw TraceError(fmt::format("{}: layer {} rank {} has {} tokens; the scenario needs {} per rank "
                                       "(workload.tokens_per_gpu; in speculative decoding times 1 + draft_tokens)", path, l, r, t, tokens_per_rank));
      }
    } else {
      const auto t = taken[static_cast<std::size_t>(l * ranks)];
      if (t < b.tokens())
        throw TraceError(fmt::format("{}: layer {} has {} tokens; the scenario needs {} ({} ranks x {} tokens per GPU)",
                                     path, l, t, b.tokens(), ranks, tokens_per_rank));
    }
  }
  return out;
}

void write_token_trace(std::ostream& out, const std::vector<TokenBatch>& layers) {
  out << kRankedTokenHeader << '\n';
  std::string line;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const TokenBatch& b = layers[l];
    const auto k = static_cast<std::size_t>(b.top_k);
    for (std::int64_t t = 0; t < b.tokens(); ++t) {
      line.clear();
      const auto at = static_cast<std::size_t>(t) * k;
      fmt::format_to(std::back_inserter(line), "{},{},", l, t);
      for (std::size_t j = 0; j < k; ++j) fmt::format_to(std::back_inserter(line), "{}{}", j ? " " : "", b.experts[at + j]);
      line += ',';
      for (std::size_t j = 0; j < k; ++j)
        fmt::format_to(std::back_inserter(line), "{}{}", j ? " " : "",
                       b.gates.empty() ? 1.0f / static_cast<float>(k) : b.gates[at + j]);
      fmt::format_to(std::back_inserter(line), ",{}\n", t / b.tokens_per_rank);
      out << line;
    }
  }
}

}  // namespace moesim::routing
