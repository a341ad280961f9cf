#include "models/kernel_profile.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "sim/rng.hpp"

namespace moesim::models {

namespace {

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> v;
  std::stringstream ss(line);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(x);
  if (!line.empty() && line.back() == ',') v.emplace_back();
  return v;
}

constexpr const char* kHeader =
    "kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,p90_us";
constexpr const char* kTilesColumn = ",row_tiles";  // optional, after the others

// Linear interpolation of y at x between (x0, y0) and (x1, y1) (any x: extrapolates).
double lerp(double x, double x0, double y0, double x1, double y1) {
  return x1 == x0 ? y0 : y0 + (y1 - y0) * (x - x0) / (x1 - x0);
}

// A curve's time at log-token x inside [pts[i], pts[i + 1]], in log-log: the monotone cubic of
// Fritsch & Carlson (1980) through the measured points, whose slope at each point is the
// weighted harmonic mean of the segments on either side (0 where they disagree in sign; a
// segment's own slope at the curve's ends). It follows a curve that bends between two
// measured counts (the expert GEMMs going from weight-bound to compute-bound) where a straight
// line between the two runs above it, and never overshoots the points around it.
template <class P>
double monotone_log_log(const std::vector<P>& pts, std::size_t i, double x) {
  const auto lx = [&](std::size_t k) { return std::log(pts[k].tokens); };
  const auto ly = [&](std::size_t k) { return std::log(std::max(pts[k].us, 1e-9)); };
  const double x0 = lx(i), x1 = lx(i + 1), h = x1 - x0;
  if (h <= 0) return pts[i].us;
  const double d = (ly(i + 1) - ly(i)) / h;
  const auto slope_at = [&](std::size_t k) {  // the slope at point k, from its two segments
    if (k == 0 || k + 1 >= pts.size()) return d;
    const double ha = lx(k) - lx(k - 1), hb = lx(k + 1) - lx(k);
    const double da = (ly(k) - ly(k - 1)) / ha, db = (ly(k + 1) - ly(k)) / hb;
    if (da * db <= 0) return 0.0;
    const double wa = 2 * hb + ha, wb = hb + 2 * ha;
    return (wa + wb) / (wa / da + wb / db);
  };
  const double m0 = slope_at(i), m1 = slope_at(i + 1);
  const double t = (x - x0) / h, t2 = t * t, t3 = t2 * t;
  const double y = (2 * t3 - 3 * t2 + 1) * ly(i) + (t3 - 2 * t2 + t) * h * m0 + (-2 * t3 + 3 * t2) * ly(i + 1) +
                   (t3 - t2) * h * m1;
  return std::exp(y);
}

}  // namespace

KernelProfile KernelProfile::read(const std::string& path, Repeats repeats) {
  std::ifstream in(path);
  if (!in) throw ProfileError(fmt::format("{}: cannot read the kernel profile", path));
  return parse(in, path, repeats);
}

namespace bundled {
extern const char kH100[];
extern const std::size_t kH100Size;
}  // namespace bundled

std::shared_ptr<const KernelProfile> KernelProfile::bundled(const std::string& gpu_model) {
  if (gpu_model != "H100-SXM") return nullptr;
  static const std::shared_ptr<const KernelProfile> h100 = [] {
    std::istringstream in(std::string(bundled::kH100, bundled::kH100Size));
    return std::make_shared<const KernelProfile>(parse(in, "kernels/profiles/nvidia-h100-80gb-hbm3.csv (built in)"));
  }();
  return h100;
}

KernelProfile KernelProfile::parse(std::istream& in, const std::string& path, Repeats repeats) {
  KernelProfile p;
  p.source = path;
  std::string line;
  int n = 0;
  bool header = false;
  std::size_t fields = 13;
  std::uint64_t digest = sim::kFnv1a64Offset;
  // Each measurement once: a second row for the same kernel, dimensions, tokens and
  // distribution (two runs concatenated over each other) would be averaged into nonsense.
  std::map<std::tuple<std::string, int, int, int, int, std::int64_t, std::string>, int> seen;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    digest = sim::fnv1a64("\n", sim::fnv1a64(line, digest));
    if (line.empty()) continue;
    if (line[0] == '#') {
      if (line.rfind("# gpu: ", 0) == 0) p.gpu = line.substr(7);
      continue;
    }
    if (!header) {
      if (line == std::string(kHeader) + kTilesColumn)
        fields = 14;
      else if (line != kHeader)
        throw ProfileError(fmt::format("{}:{}: expected the header '{}' (optionally followed by '{}')", path, n, kHeader, kTilesColumn));
      header = true;
      continue;
    }
    const auto f = split(line);
    if (f.size() != fields) throw ProfileError(fmt::format("{}:{}: expected {} fields, got {}", path, n, fields, f.size()));
    try {
      Row r;
      r.kernel = f[0], r.shape = f[1];
      r.hidden = std::stoi(f[2]), r.ffn = std::stoi(f[3]), r.experts = std::stoi(f[4]), r.top_k = std::stoi(f[5]);
      r.tokens = std::stoll(f[6]);
      r.distribution = f[7];
      r.max_expert_tokens = std::stoll(f[8]);
      r.active_experts = std::stoi(f[9]);
      r.median_us = std::stod(f[10]);
      if (fields == 14) r.row_tiles = std::stoll(f[13]);
      if (r.tokens < 1 || r.experts < 1 || r.top_k < 1 || !(r.median_us >= 0) || r.row_tiles < 0)
        throw std::invalid_argument("a count below 1 or a negative time or tile count");
      p.rows.push_back(std::move(r));
    } catch (const std::exception& e) {
      throw ProfileError(fmt::format("{}:{}: bad row ({})", path, n, e.what()));
    }
    const Row& r = p.rows.back();
    const auto [at, fresh] = seen.emplace(std::make_tuple(r.kernel, r.hidden, r.ffn, r.experts, r.top_k, r.tokens, r.distribution), n);
    if (!fresh && repeats == Repeats::refuse)
      throw ProfileError(fmt::format("{}:{}: {} ({} experts, {} tokens, distribution '{}') is already measured on line {}", path,
                                     n, r.kernel, r.experts, r.tokens, r.distribution, at->second));
  }
  if (!header) throw ProfileError(fmt::format("{}: no header line", path));
  p.digest = digest;
  for (const auto& r : p.rows) {
    const double mean = static_cast<double>(r.tokens) * r.top_k / r.experts;
    p.curves_[Key{r.kernel, r.hidden, r.ffn, r.experts, r.top_k}][r.distribution].push_back(
        {static_cast<double>(r.tokens), r.median_us, r.max_expert_tokens > 0 ? static_cast<double>(r.max_expert_tokens) / mean : 1.0,
         static_cast<double>(r.active_experts), static_cast<double>(r.row_tiles)});
  }
  for (auto& [key, by_distribution] : p.curves_)
    for (auto& [name, pts] : by_distribution)
      std::sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.tokens < b.tokens; });
  return p;
}

std::optional<double> KernelProfile::time_us(const std::string& kernel, int hidden, int ffn, int experts, int top_k,
                                             std::int64_t tokens, double imbalance, double active, double tiles) const {
  if (tokens <= 0) return 0.0;
  const auto found = curves_.find(Key{kernel, hidden, ffn, experts, top_k});
  if (found == curves_.end())
    return kernel == "experts" || kernel == "experts_bwd"
               ? between_expert_counts(kernel, hidden, ffn, experts, top_k, tokens, imbalance, active, tiles)
               : std::nullopt;
  // Each curve at `tokens` (a monotone cubic in log-log through the measured counts; imbalance
  // and active experts linear in log tokens between the two counts around it, tiles in log-log).
  struct At {
    double imbalance, active, tiles, us;
  };
  std::vector<At> at;
  const double x = std::log(static_cast<double>(tokens));
  for (const auto& [name, pts] : found->second) {
    if (static_cast<double>(tokens) < pts.front().tokens || static_cast<double>(tokens) > pts.back().tokens) continue;
    const auto hi = std::lower_bound(pts.begin(), pts.end(), static_cast<double>(tokens),
                                     [](const Point& p, double t) { return p.tokens < t; });
    const auto lo = hi->tokens == static_cast<double>(tokens) ? hi : hi - 1;
    const double x0 = std::log(lo->tokens), x1 = std::log(hi->tokens);
    const double us = lo == hi ? lo->us : monotone_log_log(pts, static_cast<std::size_t>(lo - pts.begin()), x);
    const double t = lo->tiles > 0 && hi->tiles > 0
                         ? std::exp(lerp(x, x0, std::log(lo->tiles), x1, std::log(hi->tiles)))
                         : 0.0;
    at.push_back({lerp(x, x0, lo->imbalance, x1, hi->imbalance), lerp(x, x0, lo->active, x1, hi->active), t, us});
  }
  if (at.empty()) return std::nullopt;
  if (at.size() == 1) return at.front().us;
  // Beyond the measured points a straight line through the last two can run off (two points
  // close in x and apart in time give a steep one): an extrapolated time stays between the
  // edge's own time and that time scaled in proportion (as if all of it grew with the busiest
  // expert's rows, or with the number of experts whose weights are read).
  const auto bounded = [](double x, double x_edge, double us_edge, double line) {
    const double proportional = x_edge > 0 ? us_edge * x / x_edge : us_edge;
    return std::clamp(line, std::min(us_edge, proportional), std::max(us_edge, proportional));
  };
  // Along two or more (x, us) points sorted by x: between the two around x, past either end
  // extrapolated from the last two, bounded.
  const auto along = [&bounded](const std::vector<std::pair<double, double>>& g, double x) {
    if (x < g.front().first) return bounded(x, g[0].first, g[0].second, lerp(x, g[0].first, g[0].second, g[1].first, g[1].second));
    if (x > g.back().first) {
      const auto& last = g.back();
      const auto& before = g[g.size() - 2];
      return bounded(x, last.first, last.second, lerp(x, before.first, before.second, last.first, last.second));
    }
    auto hi = std::lower_bound(g.begin(), g.end(), std::make_pair(x, 0.0));
    if (hi == g.begin()) ++hi;
    const auto lo = hi - 1;
    return std::max(0.0, lerp(x, lo->first, lo->second, hi->first, hi->second));
  };
  // Across distributions by the tiles their rows fill, where both sides know them: between the
  // two around the request, past either end extrapolated from the last two (bounded as above).
  // Distributions within 2 % of each other in tiles are one point, their mean: the same tiles
  // at nearly the same time, which a line through the two would turn into a steep slope.
  if (tiles > 0 && std::all_of(at.begin(), at.end(), [](const At& a) { return a.tiles > 0; })) {
    std::sort(at.begin(), at.end(), [](const At& a, const At& b) { return a.tiles < b.tiles; });
    std::vector<std::pair<double, double>> g;  // (tiles, us), means over each group
    bool one_tile_each = true;  // every distribution one tile per active expert
    for (std::size_t i = 0; i < at.size();) {
      std::size_t j = i;
      double sum_tiles = 0, sum_us = 0;
      for (; j < at.size() && at[j].tiles <= at[i].tiles * 1.02; ++j) {
        sum_tiles += at[j].tiles, sum_us += at[j].us;
        one_tile_each = one_tile_each && at[j].active > 0 && std::abs(at[j].tiles - at[j].active) < 0.5;
      }
      const auto n = static_cast<double>(j - i);
      g.emplace_back(sum_tiles / n, sum_us / n);
      i = j;
    }
    // One point: no slope to follow. With every measured expert holding one tile (few rows: the
    // stage reads each active expert's weights once), time in proportion to the tiles; else the
    // point's own time.
    if (g.size() == 1) return one_tile_each ? g.front().second * tiles / g.front().first : g.front().second;
    return along(g, tiles);
  }
  // Otherwise across distributions by imbalance: between the two around it; below the least skewed, its
  // time; above the most skewed, extrapolated from the last two (bounded as above).
  const auto by_imbalance = [imbalance, &bounded](std::vector<At> pts) {
    std::sort(pts.begin(), pts.end(), [](const At& a, const At& b) { return a.imbalance < b.imbalance; });
    if (pts.size() == 1 || imbalance <= pts.front().imbalance) return pts.front().us;
    auto hi = std::lower_bound(pts.begin(), pts.end(), imbalance, [](const At& a, double v) { return a.imbalance < v; });
    if (hi == pts.end()) {
      const auto& last = pts.back();
      const auto& before = pts[pts.size() - 2];
      return bounded(imbalance, last.imbalance, last.us, lerp(imbalance, before.imbalance, before.us, last.imbalance, last.us));
    }
    const auto lo = hi - 1;
    return std::max(0.0, lerp(imbalance, lo->imbalance, lo->us, hi->imbalance, hi->us));
  };
  // Few rows per expert: the stage reads every active expert's weights, and its time follows
  // the active experts more than the skew. Where the measured distributions differ in active
  // experts and the request says how many it has: by imbalance within each group of the same
  // active count (within half an expert), then linearly in active experts between the groups
  // around the request (beyond them, extrapolated from the last two, bounded). Only where the groups lie
  // 10 % or more apart: with nearly every expert active (DeepSeek, 12,288 rows over 256: 247
  // against 256), a few experts more or less change the weights read by a few percent, the
  // distributions' times differ by their skew, and extrapolating in active experts would read
  // a skewed curve's time as the cost of a missing expert.
  if (active > 0) {
    std::sort(at.begin(), at.end(), [](const At& a, const At& b) { return a.active < b.active; });
    std::vector<std::vector<At>> groups;
    for (const auto& a : at) {
      if (groups.empty() || a.active - groups.back().front().active >= 0.5) groups.emplace_back();
      groups.back().push_back(a);
    }
    if (groups.size() > 1 && groups.back().front().active - groups.front().front().active >= 0.1 * groups.back().front().active) {
      std::vector<std::pair<double, double>> g;  // (mean active, us at the imbalance)
      for (const auto& pts : groups) {
        double sum = 0;
        for (const auto& p : pts) sum += p.active;
        g.emplace_back(sum / static_cast<double>(pts.size()), by_imbalance(pts));
      }
      return along(g, active);
    }
  }
  return by_imbalance(at);
}

bool KernelProfile::measures(const std::string& kernel) const {
  const auto it = curves_.lower_bound(Key{kernel, 0, 0, 0, 0});
  return it != curves_.end() && std::get<0>(it->first) == kernel;
}

std::optional<double> KernelProfile::between_expert_counts(const std::string& kernel, int hidden, int ffn, int experts,
                                                           int top_k, std::int64_t tokens, double imbalance, double active,
                                                           double tiles) const {
  // The measured local-expert counts on either side (same shape and top-k).
  int lo = 0, hi = 0;
  for (auto it = curves_.lower_bound(Key{kernel, hidden, ffn, 0, 0}); it != curves_.end(); ++it) {
    const auto& [k, h, f, e, t] = it->first;
    if (k != kernel || h != hidden || f != ffn) break;
    if (t != top_k) continue;
    if (e < experts) lo = std::max(lo, e);
    if (e > experts && (hi == 0 || e < hi)) hi = e;
  }
  if (lo == 0 || hi == 0) return std::nullopt;
  // The same rows on fewer or more local experts, spread alike. The active experts: rows thrown
  // at random onto E experts leave E (1 - (1 - 1/E)^n) of them with rows after n rows; the
  // request's active count gives its n, and the same n on e experts the count there. So a few
  // active among many stay as many (few rows: each its own expert), nearly all active stay
  // nearly all. One tile more or less per active expert, the others (those of experts with
  // more than 64 rows) the same; the busiest expert's rows the same, so the imbalance, relative
  // to the mean, scales with the count.
  const auto alike = [&](int e) {
    if (active >= experts) return static_cast<double>(e);
    const double n = std::log1p(-active / experts) / std::log1p(-1.0 / experts);
    return std::clamp(e * -std::expm1(n * std::log1p(-1.0 / e)), 1.0, static_cast<double>(e));
  };
  struct At {
    double active;
    std::optional<double> us;
  };
  const auto at = [&](int e) {
    const double imb = std::max(1.0, imbalance * e / experts);
    double act = active, til = tiles;
    if (active > 0) {
      act = e == 1 ? 1.0 : alike(e);
      if (tiles > 0) til = std::max(act, tiles - active + act);
    }
    return At{act, time_us(kernel, hidden, ffn, e, top_k, tokens, imb, act, til)};
  };
  const At a = at(lo), b = at(hi);
  if (!a.us || !b.us) return std::nullopt;
  // Between the two: linearly in the active experts (whose weights the stage reads) where they
  // differ, else in the expert count.
  if (active > 0 && b.active - a.active >= 0.5) return lerp(active, a.active, *a.us, b.active, *b.us);
  return lerp(experts, lo, *a.us, hi, *b.us);
}

std::optional<double> KernelProfile::layer_us(int hidden, int ffn, int experts, int top_k, std::int64_t tokens,
                                              double imbalance, double active, double tiles, bool backward) const {
  double us = 0;
  for (const auto& [kernel, e, k, n, imb, act, til] :
       {std::tuple<const char*, int, int, std::int64_t, double, double, double>{"router", experts, top_k, tokens, 1.0, -1.0, -1.0},
        {"permute", experts, top_k, tokens, 1.0, -1.0, -1.0},
        {"experts", experts, 1, tokens * top_k, imbalance, active, tiles},
        {"combine", experts, top_k, tokens, 1.0, -1.0, -1.0}}) {
    const auto t = time_us(backward ? std::string(kernel) + "_bwd" : std::string(kernel), hidden, ffn, e, k, n, imb, act, til);
    if (!t) return std::nullopt;
    us += *t;
  }
  return us;
}

namespace {
// A row's own point in its curve (the profile's rows are its points: it is there).
template <class P>
const P& own_point(const std::vector<P>& pts, std::int64_t tokens) {
  return *std::find_if(pts.begin(), pts.end(), [&](const P& p) { return p.tokens == static_cast<double>(tokens); });
}
}  // namespace

void KernelProfile::Check::add(const Row& measured, double imbalance, std::optional<double> predicted_us) {
  if (!predicted_us || measured.median_us <= 0) {
    ++uncovered;
    return;
  }
  cases.push_back({measured, imbalance, *predicted_us, (*predicted_us - measured.median_us) / measured.median_us});
}

KernelProfile::Check KernelProfile::check(const KernelProfile& measured) const {
  Check c;
  for (const auto& r : measured.rows) {
    const bool layer = r.kernel == "layer" || r.kernel == "layer_bwd";
    if ((!layer && r.kernel != "experts" && r.kernel != "experts_bwd") || r.tokens <= 0) continue;
    const double mean = static_cast<double>(r.tokens) * r.top_k / r.experts;
    const double imbalance = std::max(1.0, static_cast<double>(r.max_expert_tokens) / mean);
    const double tiles = r.row_tiles > 0 ? static_cast<double>(r.row_tiles) : -1.0;
    const auto us = layer ? layer_us(r.hidden, r.ffn, r.experts, r.top_k, r.tokens, imbalance, r.active_experts, tiles,
                                     r.kernel == "layer_bwd")
                          : time_us(r.kernel, r.hidden, r.ffn, r.experts, r.top_k, r.tokens, imbalance, r.active_experts, tiles);
    c.add(r, imbalance, us);
  }
  return c;
}

KernelProfile::Check KernelProfile::leave_one_out() const {
  Check c;
  KernelProfile without = *this;  // each row's point is taken out of its curve, then put back
  for (const auto& r : rows) {
    auto& pts = without.curves_.at(Key{r.kernel, r.hidden, r.ffn, r.experts, r.top_k}).at(r.distribution);
    const auto at = std::find_if(pts.begin(), pts.end(), [&](const auto& p) { return p.tokens == static_cast<double>(r.tokens); });
    if (at == pts.end() || at == pts.begin() || at + 1 == pts.end()) continue;  // an end of its curve
    const Point point = *at;
    const auto index = at - pts.begin();
    pts.erase(at);
    const bool experts = r.kernel == "experts" || r.kernel == "experts_bwd";
    const auto us = without.time_us(r.kernel, r.hidden, r.ffn, r.experts, r.top_k, r.tokens, point.imbalance,
                                    experts ? point.active : -1.0, experts && point.tiles > 0 ? point.tiles : -1.0);
    pts.insert(pts.begin() + index, point);
    c.add(r, point.imbalance, us);
  }
  return c;
}

KernelProfile::Check KernelProfile::leave_one_distribution_out() const {
  Check c;
  KernelProfile without = *this;  // each row's distribution is taken out of its group, then put back
  for (const auto& r : rows) {
    if (r.kernel != "experts") continue;
    auto& by_distribution = without.curves_.at(Key{r.kernel, r.hidden, r.ffn, r.experts, r.top_k});
    if (by_distribution.size() < 3) continue;
    auto node = by_distribution.extract(r.distribution);
    const auto& pts = node.mapped();
    const Point point = own_point(pts, r.tokens);
    const auto us = without.time_us(r.kernel, r.hidden, r.ffn, r.experts, r.top_k, r.tokens, point.imbalance, point.active,
                                    point.tiles > 0 ? point.tiles : -1.0);
    by_distribution.insert(std::move(node));
    c.add(r, point.imbalance, us);
  }
  return c;
}

KernelProfile::Check KernelProfile::leave_one_expert_count_out() const {
  Check c;
  KernelProfile without = *this;  // each row's local-expert count is taken out, then put back
  for (const auto& r : rows) {
    if (r.kernel != "experts") continue;
    auto node = without.curves_.extract(Key{r.kernel, r.hidden, r.ffn, r.experts, r.top_k});
    const auto& pts = node.mapped().at(r.distribution);
    const Point point = own_point(pts, r.tokens);
    const auto us = without.between_expert_counts("experts", r.hidden, r.ffn, r.experts, r.top_k, r.tokens, point.imbalance, point.active,
                                                  point.tiles > 0 ? point.tiles : -1.0);
    without.curves_.insert(std::move(node));
    c.add(r, point.imbalance, us);
  }
  return c;
}

namespace {
std::vector<double> abs_errors(const KernelProfile::Check& c) {
  std::vector<double> e;
  for (const auto& x : c.cases) e.push_back(std::abs(x.error));
  std::sort(e.begin(), e.end());
  return e;
}
}  // namespace

KernelProfile::Check KernelProfile::Check::only(const std::string& kernel) const {
  Check c;
  for (const auto& x : cases)
    if (x.measured.kernel == kernel) c.cases.push_back(x);
  return c;
}

double KernelProfile::Check::median_abs_error() const {
  const auto e = abs_errors(*this);
  if (e.empty()) return 0;
  const std::size_t n = e.size();
  return n % 2 ? e[n / 2] : (e[n / 2 - 1] + e[n / 2]) / 2;
}

double KernelProfile::Check::p90_abs_error() const {
  const auto e = abs_errors(*this);
  return e.empty() ? 0 : e[static_cast<std::size_t>(0.9 * static_cast<double>(e.size() - 1) + 0.5)];
}

double KernelProfile::Check::worst_abs_error() const {
  const auto e = abs_errors(*this);
  return e.empty() ? 0 : e.back();
}

}  // namespace moesim::models
