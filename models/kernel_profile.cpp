#include "models/kernel_profile.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

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

// Linear interpolation of y at x between (x0, y0) and (x1, y1) (any x: extrapolates).
double lerp(double x, double x0, double y0, double x1, double y1) {
  return x1 == x0 ? y0 : y0 + (y1 - y0) * (x - x0) / (x1 - x0);
}

}  // namespace

KernelProfile KernelProfile::read(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ProfileError(fmt::format("{}: cannot read the kernel profile", path));
  KernelProfile p;
  p.source = path;
  std::string line;
  int n = 0;
  bool header = false;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line[0] == '#') {
      if (line.rfind("# gpu: ", 0) == 0) p.gpu = line.substr(7);
      continue;
    }
    if (!header) {
      if (line != kHeader) throw ProfileError(fmt::format("{}:{}: expected the header '{}'", path, n, kHeader));
      header = true;
      continue;
    }
    const auto f = split(line);
    if (f.size() != 13) throw ProfileError(fmt::format("{}:{}: expected 13 fields, got {}", path, n, f.size()));
    try {
      Row r;
      r.kernel = f[0], r.shape = f[1];
      r.hidden = std::stoi(f[2]), r.ffn = std::stoi(f[3]), r.experts = std::stoi(f[4]), r.top_k = std::stoi(f[5]);
      r.tokens = std::stoll(f[6]);
      r.distribution = f[7];
      r.max_expert_tokens = std::stoll(f[8]);
      r.active_experts = std::stoi(f[9]);
      r.median_us = std::stod(f[10]);
      if (r.tokens < 1 || r.experts < 1 || r.top_k < 1 || !(r.median_us >= 0))
        throw std::invalid_argument("a count below 1 or a negative time");
      p.rows.push_back(std::move(r));
    } catch (const std::exception& e) {
      throw ProfileError(fmt::format("{}:{}: bad row ({})", path, n, e.what()));
    }
  }
  if (!header) throw ProfileError(fmt::format("{}: no header line", path));
  for (const auto& r : p.rows) {
    const double mean = static_cast<double>(r.tokens) * r.top_k / r.experts;
    p.curves_[Key{r.kernel, r.hidden, r.ffn, r.experts, r.top_k}][r.distribution].push_back(
        {static_cast<double>(r.tokens), r.median_us, r.max_expert_tokens > 0 ? static_cast<double>(r.max_expert_tokens) / mean : 1.0});
  }
  for (auto& [key, by_distribution] : p.curves_)
    for (auto& [name, pts] : by_distribution)
      std::sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.tokens < b.tokens; });
  return p;
}

std::optional<double> KernelProfile::time_us(const std::string& kernel, int hidden, int ffn, int experts, int top_k,
                                             std::int64_t tokens, double imbalance) const {
  if (tokens <= 0) return 0.0;
  const auto found = curves_.find(Key{kernel, hidden, ffn, experts, top_k});
  if (found == curves_.end()) return std::nullopt;
  // Each curve at `tokens` (log-log between the measured counts around it).
  std::vector<std::pair<double, double>> at;  // (imbalance, us)
  const double x = std::log(static_cast<double>(tokens));
  for (const auto& [name, pts] : found->second) {
    if (static_cast<double>(tokens) < pts.front().tokens || static_cast<double>(tokens) > pts.back().tokens) continue;
    const auto hi = std::lower_bound(pts.begin(), pts.end(), static_cast<double>(tokens),
                                     [](const Point& p, double t) { return p.tokens < t; });
    const auto lo = hi->tokens == static_cast<double>(tokens) ? hi : hi - 1;
    const double x0 = std::log(lo->tokens), x1 = std::log(hi->tokens);
    const double us = std::exp(lerp(x, x0, std::log(std::max(lo->us, 1e-9)), x1, std::log(std::max(hi->us, 1e-9))));
    at.emplace_back(lerp(x, x0, lo->imbalance, x1, hi->imbalance), us);
  }
  if (at.empty()) return std::nullopt;
  std::sort(at.begin(), at.end());
  if (at.size() == 1) return at.front().second;
  // Across distributions by imbalance: between the two around it; below the least skewed, its
  // time; above the most skewed, extrapolated from the last two.
  if (imbalance <= at.front().first) return at.front().second;
  auto hi = std::lower_bound(at.begin(), at.end(), std::make_pair(imbalance, 0.0));
  if (hi == at.end()) hi = at.end() - 1;
  const auto lo = hi - 1;
  return std::max(0.0, lerp(imbalance, lo->first, lo->second, hi->first, hi->second));
}

}  // namespace moesim::models
