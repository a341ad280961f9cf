#include "routing/traces.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
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

// The binary token-level form (docs/traces.md): its header, and each block's head.
constexpr char kBinaryMagic[8] = {'M', 'O', 'E', 'S', 'I', 'M', 'T', 'T'};
constexpr std::uint32_t kBinaryVersion = 1;
constexpr std::uint16_t kRankedFlag = 1;
constexpr std::size_t kBinaryHeaderBytes = 16, kBlockHeadBytes = 12;
constexpr std::uint32_t kMaxBlockTokens = 1U << 20;  // a writer's block; a reader takes any size
static_assert(std::endian::native == std::endian::little, "the binary trace form is read and written as little-endian");

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void store(std::string& out, T v) {
  char b[sizeof v];
  std::memcpy(b, &v, sizeof v);
  out.append(b, sizeof v);
}

bool has_binary_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[sizeof kBinaryMagic] = {};
  return in.read(head, sizeof head) && std::memcmp(head, kBinaryMagic, sizeof head) == 0;
}

}  // namespace

TraceKind trace_kind(const std::string& path) {
  if (has_binary_magic(path)) return TraceKind::tokens;
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

struct TokenTraceReader::Impl {
  std::string path;
  int experts = 0, top_k = 0;
  bool binary = false, ranked = false;
  std::vector<int> ids;
  std::vector<float> gates;
  // CSV.
  std::optional<Lines> lines;
  // Binary: the block being read and the tokens each layer has had so far.
  std::ifstream in;
  std::uint64_t block = 0;
  std::int64_t block_layer = 0, block_rank = 0;
  std::uint32_t block_tokens = 0, block_at = 0;
  std::vector<std::uint16_t> block_ids;
  std::vector<float> block_gates;
  std::vector<std::int64_t> layer_tokens;
};

namespace {

// An expert id of a token: known (below `experts`, or without a model below 65536, what the
// binary form holds) and not one the token already has (ids[0..j)).
template <typename Where>
void check_expert(std::int64_t id, const std::vector<int>& ids, std::size_t j, int experts, const Where& where) {
  const std::int64_t bound = experts > 0 ? experts : 65536;
  if (id < 0 || id >= bound)
    throw TraceError(experts > 0 ? fmt::format("{}: unknown expert {} (the model has experts 0 to {})", where(), id, experts - 1)
                                 : fmt::format("{}: expert {} out of range (0 to 65535)", where(), id));
  for (std::size_t i = 0; i < j; ++i)
    if (ids[i] == id) throw TraceError(fmt::format("{}: expert {} twice in one token", where(), id));
}

// A whole number of a CSV field; the message names the place only when it fails.
template <typename Where>
std::int64_t whole_at(std::string_view f, const char* what, const Where& where) {
  const auto v = sim::parse_whole(f);
  if (!v) throw TraceError(fmt::format("{}: {} must be a whole number, got '{}'", where(), what, f));
  return *v;
}

}  // namespace

TokenTraceReader::TokenTraceReader(const std::string& path, int experts, int top_k) : impl_(new Impl) {
  Impl& d = *impl_;
  d.path = path;
  d.experts = experts;
  d.top_k = top_k;
  try {
    if (has_binary_magic(path)) {
      d.binary = true;
      d.in.open(path, std::ios::binary);
      char head[kBinaryHeaderBytes];
      if (!d.in.read(head, sizeof head)) throw TraceError(fmt::format("{}: the binary header is cut short", path));
      const auto version = load<std::uint32_t>(head + 8);
      const auto k = load<std::uint16_t>(head + 12);
      const auto flags = load<std::uint16_t>(head + 14);
      if (version != kBinaryVersion)
        throw TraceError(fmt::format("{}: binary trace version {}; this moesim reads version {}", path, version, kBinaryVersion));
      if ((flags & ~kRankedFlag) != 0) throw TraceError(fmt::format("{}: unknown flags {:#x} in the binary header", path, flags));
      if (k < 1) throw TraceError(fmt::format("{}: top_k 0 in the binary header", path));
      if (top_k > 0 && k != top_k)
        throw TraceError(fmt::format("{}: the trace routes each token to {} experts, the model to top_k = {}", path, k, top_k));
      d.top_k = k;
      d.ranked = (flags & kRankedFlag) != 0;
    } else {
      d.lines.emplace(path);
      std::string_view text;
      if (!d.lines->next(text))
        throw TraceError(fmt::format("{}: empty trace (expected the header '{}' or '{}')", path, kTokenHeader, kRankedTokenHeader));
      const std::string h = joined(sim::split_fields(text));
      if (h != kTokenHeader && h != kRankedTokenHeader)
        throw TraceError(fmt::format("{}: expected the header '{}' or '{}', got '{}'", d.lines->where(), kTokenHeader,
                                     kRankedTokenHeader, text));
      d.ranked = h == kRankedTokenHeader;
    }
  } catch (...) {
    delete impl_;
    throw;
  }
  if (d.top_k > 0) {
    d.ids.resize(static_cast<std::size_t>(d.top_k));
    d.gates.resize(static_cast<std::size_t>(d.top_k));
  }
}

TokenTraceReader::~TokenTraceReader() { delete impl_; }

bool TokenTraceReader::binary() const { return impl_->binary; }
bool TokenTraceReader::ranked() const { return impl_->ranked; }
int TokenTraceReader::top_k() const { return impl_->top_k; }

std::string TokenTraceReader::where() const {
  const Impl& d = *impl_;
  if (!d.binary) return d.lines->where();
  return fmt::format("{}: block {} (layer {}, rank {}), token {}", d.path, d.block, d.block_layer, d.block_rank,
                     d.block_at == 0 ? 0 : d.block_at - 1);
}

bool TokenTraceReader::next(std::int64_t& layer, std::int64_t& token, std::int64_t& rank, const int*& experts,
                            const float*& gates) {
  Impl& d = *impl_;
  const auto where = [&] { return this->where(); };
  if (d.binary) {
    if (d.block_at == d.block_tokens) {
      char head[kBlockHeadBytes];
      d.in.read(head, sizeof head);
      if (d.in.gcount() == 0 && d.in.eof()) return false;
      ++d.block;
      d.block_at = 0;
      if (d.in.gcount() != static_cast<std::streamsize>(sizeof head))
        throw TraceError(fmt::format("{}: block {}'s head is cut short; the file looks truncated", d.path, d.block));
      d.block_layer = load<std::uint32_t>(head);
      d.block_rank = load<std::uint32_t>(head + 4);
      d.block_tokens = load<std::uint32_t>(head + 8);
      if (d.block_layer > 1'000'000) throw TraceError(fmt::format("{}: layer {} out of range", where(), d.block_layer));
      if (!d.ranked && d.block_rank != 0)
        throw TraceError(fmt::format("{}: rank {} in a trace whose header says its blocks carry no ranks", where(), d.block_rank));
      if (d.block_tokens == 0) throw TraceError(fmt::format("{}: a block of no tokens", where()));
      const auto n = static_cast<std::size_t>(d.block_tokens) * static_cast<std::size_t>(d.top_k);
      d.block_ids.resize(n);
      d.block_gates.resize(n);
      const auto ids_bytes = static_cast<std::streamsize>(n * sizeof(std::uint16_t));
      const auto gates_bytes = static_cast<std::streamsize>(n * sizeof(float));
      if (!d.in.read(reinterpret_cast<char*>(d.block_ids.data()), ids_bytes) ||
          !d.in.read(reinterpret_cast<char*>(d.block_gates.data()), gates_bytes))
        throw TraceError(fmt::format("{}: the block declares {} tokens and the file ends inside them; it looks truncated", where(),
                                     d.block_tokens));
    }
    const auto at = static_cast<std::size_t>(d.block_at++) * static_cast<std::size_t>(d.top_k);
    for (std::size_t j = 0; j < d.ids.size(); ++j) {
      check_expert(d.block_ids[at + j], d.ids, j, d.experts, where);
      d.ids[j] = d.block_ids[at + j];
      const float w = d.block_gates[at + j];
      if (!std::isfinite(w) || w < 0) throw TraceError(fmt::format("{}: a gate weight must be a number >= 0, got {}", where(), w));
      d.gates[j] = w;
    }
    layer = d.block_layer;
    rank = d.block_rank;
    if (d.layer_tokens.size() <= static_cast<std::size_t>(layer)) d.layer_tokens.resize(static_cast<std::size_t>(layer) + 1, 0);
    token = d.layer_tokens[static_cast<std::size_t>(layer)]++;
    experts = d.ids.data();
    gates = d.gates.data();
    return true;
  }
  std::string_view text;
  if (!d.lines->next(text)) return false;
  if (d.lines->unterminated())
    throw TraceError(fmt::format("{}: the last line has no end of line; the file looks truncated", where()));
  const std::vector<std::string_view> f = sim::split_fields(text);
  const std::size_t n = d.ranked ? 5 : 4;
  if (f.size() != n)
    throw TraceError(fmt::format("{}: expected {} fields ({}), got {}", where(), n, d.ranked ? kRankedTokenHeader : kTokenHeader,
                                 f.size()));
  layer = whole_at(f[0], "layer", where);
  token = whole_at(f[1], "token", where);
  if (layer < 0 || layer > 1'000'000) throw TraceError(fmt::format("{}: layer {} out of range", where(), layer));
  if (token < 0) throw TraceError(fmt::format("{}: token must not be negative, got {}", where(), token));
  const auto e = split_spaces(f[2]);
  const auto g = split_spaces(f[3]);
  if (d.top_k == 0) {  // the first token's count sets it
    d.top_k = static_cast<int>(e.size());
    d.ids.resize(e.size());
    d.gates.resize(e.size());
  }
  if (static_cast<int>(e.size()) != d.top_k)
    throw TraceError(fmt::format("{}: {} expert ids, but {} routes each token to top_k = {}", where(), e.size(),
                                 d.experts > 0 ? "the model" : "the trace's first token", d.top_k));
  if (g.size() != e.size()) throw TraceError(fmt::format("{}: {} gate weights for {} experts", where(), g.size(), e.size()));
  for (std::size_t j = 0; j < e.size(); ++j) {
    const auto id = whole_at(e[j], "an expert id", where);
    check_expert(id, d.ids, j, d.experts, where);
    d.ids[j] = static_cast<int>(id);
    double w = 0;
    const std::string_view gs = g[j];
    const auto [end, ec] = std::from_chars(gs.data(), gs.data() + gs.size(), w);
    if (ec != std::errc() || end != gs.data() + gs.size() || !std::isfinite(w) || w < 0)
      throw TraceError(fmt::format("{}: a gate weight must be a number >= 0, got '{}'", where(), gs));
    d.gates[j] = static_cast<float>(w);
  }
  rank = 0;
  if (d.ranked) {
    rank = whole_at(f[4], "rank", where);
    if (rank < 0) throw TraceError(fmt::format("{}: rank must not be negative, got {}", where(), rank));
  }
  experts = d.ids.data();
  gates = d.gates.data();
  return true;
}

std::vector<TokenBatch> read_token_trace(const std::string& path, int experts, int top_k, int layers, int ranks,
                                         std::int64_t tokens_per_rank) {
  TokenTraceReader reader(path, experts, top_k);
  const bool ranked = reader.ranked();
  std::vector<TokenBatch> out(static_cast<std::size_t>(layers));
  for (auto& b : out) {
    b.top_k = top_k;
    b.ranks = ranks;
    b.tokens_per_rank = tokens_per_rank;
  }
  // Tokens taken so far: [layer * ranks + rank] with a rank column, [layer * ranks] without.
  std::vector<std::int64_t> taken(static_cast<std::size_t>(layers) * static_cast<std::size_t>(ranks), 0);
  std::int64_t layer = 0, token = 0, rank = 0;
  const int* ids = nullptr;
  const float* gates = nullptr;
  while (reader.next(layer, token, rank, ids, gates)) {
    if (ranked && rank >= ranks) continue;  // a rank the EP group does not have
    if (layer >= layers) continue;          // a layer the model does not have
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
    std::copy(ids, ids + top_k, b.experts.begin() + index * top_k);
    std::copy(gates, gates + top_k, b.gates.begin() + index * top_k);
  }
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

TokenTraceWriter::TokenTraceWriter(std::ostream& out, bool binary, int top_k) : out_(out), binary_(binary), top_k_(top_k) {
  if (!binary_) {
    out_ << kRankedTokenHeader << '\n';
    return;
  }
  if (top_k < 1 || top_k > 65535) throw TraceError(fmt::format("a binary trace holds top_k 1 to 65535, not {}", top_k));
  std::string head(kBinaryMagic, sizeof kBinaryMagic);
  store(head, kBinaryVersion);
  store(head, static_cast<std::uint16_t>(top_k));
  store(head, kRankedFlag);
  out_.write(head.data(), static_cast<std::streamsize>(head.size()));
}

void TokenTraceWriter::add(std::int64_t layer, std::int64_t token, std::int64_t rank, const int* experts, const float* gates) {
  const auto k = static_cast<std::size_t>(top_k_);
  if (!binary_) {
    line_.clear();
    fmt::format_to(std::back_inserter(line_), "{},{},", layer, token);
    for (std::size_t j = 0; j < k; ++j) fmt::format_to(std::back_inserter(line_), "{}{}", j ? " " : "", experts[j]);
    line_ += ',';
    for (std::size_t j = 0; j < k; ++j) fmt::format_to(std::back_inserter(line_), "{}{}", j ? " " : "", gates[j]);
    fmt::format_to(std::back_inserter(line_), ",{}\n", rank);
    out_ << line_;
    return;
  }
  if (layer < 0 || layer > 1'000'000 || rank < 0 || rank > 0xFFFFFFFFLL)
    throw TraceError(fmt::format("layer {} rank {}: out of the binary form's range", layer, rank));
  if (layer != block_layer_ || rank != block_rank_ || block_ids_.size() >= kMaxBlockTokens * k) {
    flush_block();
    block_layer_ = layer;
    block_rank_ = rank;
  }
  for (std::size_t j = 0; j < k; ++j) {
    if (experts[j] < 0 || experts[j] > 65535)
      throw TraceError(fmt::format("layer {} token {}: expert {} does not fit the binary form's 16-bit ids", layer, token, experts[j]));
    block_ids_.push_back(static_cast<std::uint16_t>(experts[j]));
    block_gates_.push_back(gates[j]);
  }
}

void TokenTraceWriter::flush_block() {
  if (block_ids_.empty()) return;
  std::string head;
  store(head, static_cast<std::uint32_t>(block_layer_));
  store(head, static_cast<std::uint32_t>(block_rank_));
  store(head, static_cast<std::uint32_t>(block_ids_.size() / static_cast<std::size_t>(top_k_)));
  out_.write(head.data(), static_cast<std::streamsize>(head.size()));
  out_.write(reinterpret_cast<const char*>(block_ids_.data()), static_cast<std::streamsize>(block_ids_.size() * sizeof(std::uint16_t)));
  out_.write(reinterpret_cast<const char*>(block_gates_.data()), static_cast<std::streamsize>(block_gates_.size() * sizeof(float)));
  block_ids_.clear();
  block_gates_.clear();
}

void TokenTraceWriter::finish() {
  if (binary_) flush_block();
}

void write_token_trace(std::ostream& out, const std::vector<TokenBatch>& layers, bool binary) {
  const int k = layers.empty() ? 1 : layers.front().top_k;
  TokenTraceWriter w(out, binary, k);
  const std::vector<float> uniform(static_cast<std::size_t>(k), 1.0f / static_cast<float>(k));
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const TokenBatch& b = layers[l];
    for (std::int64_t t = 0; t < b.tokens(); ++t) {
      const auto at = static_cast<std::size_t>(t) * static_cast<std::size_t>(k);
      w.add(static_cast<std::int64_t>(l), t, t / b.tokens_per_rank, b.experts.data() + at,
            b.gates.empty() ? uniform.data() : b.gates.data() + at);
    }
  }
  w.finish();
}

}  // namespace moesim::routing
