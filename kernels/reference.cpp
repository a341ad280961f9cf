#include "reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

namespace moe {

float bf16_to_float(bf16_bits b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

bf16_bits float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffU) > 0x7f800000U) return static_cast<bf16_bits>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffU + ((u >> 16) & 1U);  // round to nearest, ties to even
  return static_cast<bf16_bits>(u >> 16);
}

namespace {

// SplitMix64 stream with a Box-Muller normal: the same numbers on every machine.
struct Random {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {
    const double u = 1 - uniform(), v = uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

// Uniform with standard deviation sd (fast enough for billions of weights; the layer's timing
// does not depend on the values' distribution, and the checks only need them O(1)).
std::vector<bf16_bits> uniform_bf16(std::size_t n, double sd, Random& r) {
  std::vector<bf16_bits> v(n);
  const double half_width = sd * 1.7320508075688772;  // uniform on [-a, a] has sd a / sqrt(3)
  for (auto& x : v) x = float_to_bf16(static_cast<float>(half_width * (2 * r.uniform() - 1)));
  return v;
}

double silu(double x) { return x / (1 + std::exp(-x)); }

}  // namespace

Weights random_weights(const Config& c, std::uint64_t seed) {
  Random r{seed * 0x100000001B3ULL + 1};
  const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn), e = static_cast<std::size_t>(c.experts);
  Weights w;
  w.router = uniform_bf16(h * e, 1 / std::sqrt(static_cast<double>(h)), r);
  w.bias.assign(e, 0.0f);
  if (c.scoring == Scoring::sigmoid)
    for (auto& b : w.bias) b = static_cast<float>(0.01 * r.normal());
  w.gate_up = uniform_bf16(e * h * 2 * f, 1 / std::sqrt(static_cast<double>(h)), r);
  w.down = uniform_bf16(e * f * h, 1 / std::sqrt(static_cast<double>(f)), r);
  return w;
}

std::vector<bf16_bits> random_tokens(const Config& c, int tokens, std::uint64_t seed) {
  Random r{seed * 0x9E3779B97F4A7C15ULL + 7};
  return uniform_bf16(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c.hidden), 1.0, r);
}

std::vector<bf16_bits> clustered_tokens(const Config& c, int tokens, int clusters, double zipf_s, std::uint64_t seed) {
  Random r{seed * 0xD1B54A32D192ED03ULL + 3};
  const auto h = static_cast<std::size_t>(c.hidden);
  std::vector<double> centres(static_cast<std::size_t>(clusters) * h);
  for (auto& x : centres) x = 2 * r.normal();
  std::vector<double> cdf(static_cast<std::size_t>(clusters));
  double total = 0;
  for (int i = 0; i < clusters; ++i) cdf[static_cast<std::size_t>(i)] = total += std::pow(i + 1, -zipf_s);
  std::vector<bf16_bits> x(static_cast<std::size_t>(tokens) * h);
  for (int t = 0; t < tokens; ++t) {
    const double u = r.uniform() * total;
    const auto k = static_cast<std::size_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
    for (std::size_t j = 0; j < h; ++j)
      x[static_cast<std::size_t>(t) * h + j] = float_to_bf16(static_cast<float>(centres[std::min(k, cdf.size() - 1) * h + j] + 0.5 * r.normal()));
  }
  return x;
}

int capacity(const Config& c, int tokens) {
  if (c.capacity_factor <= 0) return -1;
  return static_cast<int>(std::ceil(c.capacity_factor * tokens * c.top_k / c.experts - 1e-9));
}

std::vector<double> router_logits(const Config& c, const Weights& w, const bf16_bits* x, int tokens) {
  const auto h = static_cast<std::size_t>(c.hidden), e = static_cast<std::size_t>(c.experts);
  std::vector<double> logits(static_cast<std::size_t>(tokens) * e, 0.0);
  for (std::size_t t = 0; t < static_cast<std::size_t>(tokens); ++t)
    for (std::size_t i = 0; i < h; ++i) {
      const double xi = bf16_to_float(x[t * h + i]);
      for (std::size_t j = 0; j < e; ++j) logits[t * e + j] += xi * bf16_to_float(w.router[i * e + j]);
    }
  return logits;
}

Routing route_from_logits(const Config& c, const Weights& w, const std::vector<double>& logits, int tokens) {
  const int e = c.experts, k = c.top_k;
  if (k > e) throw std::invalid_argument("top_k larger than the expert count");
  if (c.max_groups > 0 && c.groups > 1 && c.max_groups * (e / c.groups) < k)
    throw std::invalid_argument("max_groups groups hold fewer experts than top_k");
  Routing r;
  r.tokens = tokens;
  r.top_k = k;
  r.experts.resize(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(k));
  r.gates.resize(r.experts.size());
  std::vector<double> score(static_cast<std::size_t>(e)), select(static_cast<std::size_t>(e));
  std::vector<int> order(static_cast<std::size_t>(e));
  const int group_size = c.groups > 0 ? e / c.groups : e;
  for (int t = 0; t < tokens; ++t) {
    const double* l = logits.data() + static_cast<std::size_t>(t) * static_cast<std::size_t>(e);
    if (c.scoring == Scoring::softmax) {
      const double m = *std::max_element(l, l + e);
      double sum = 0;
      for (int j = 0; j < e; ++j) sum += score[static_cast<std::size_t>(j)] = std::exp(l[j] - m);
      for (auto& s : score) s /= sum;
    } else {
      for (int j = 0; j < e; ++j) score[static_cast<std::size_t>(j)] = 1 / (1 + std::exp(-l[j]));
    }
    for (int j = 0; j < e; ++j) select[static_cast<std::size_t>(j)] = score[static_cast<std::size_t>(j)] + w.bias[static_cast<std::size_t>(j)];
    std::vector<char> eligible(static_cast<std::size_t>(e), 1);
    if (c.max_groups > 0 && c.groups > 1) {
      // Group score: the sum of the group's two highest selection scores (one if the group has one).
      std::vector<double> gscore(static_cast<std::size_t>(c.groups));
      for (int g = 0; g < c.groups; ++g) {
        double a = -1e300, b = -1e300;
        for (int j = g * group_size; j < (g + 1) * group_size; ++j) {
          const double s = select[static_cast<std::size_t>(j)];
          if (s > a) b = a, a = s;
          else if (s > b) b = s;
        }
        gscore[static_cast<std::size_t>(g)] = group_size > 1 ? a + b : a;
      }
      std::vector<int> gorder(static_cast<std::size_t>(c.groups));
      std::iota(gorder.begin(), gorder.end(), 0);
      std::stable_sort(gorder.begin(), gorder.end(),
                       [&](int a, int b) { return gscore[static_cast<std::size_t>(a)] > gscore[static_cast<std::size_t>(b)]; });
      std::fill(eligible.begin(), eligible.end(), 0);
      for (int i = 0; i < c.max_groups; ++i)
        for (int j = gorder[static_cast<std::size_t>(i)] * group_size; j < (gorder[static_cast<std::size_t>(i)] + 1) * group_size; ++j)
          eligible[static_cast<std::size_t>(j)] = 1;
    }
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      const auto ua = static_cast<std::size_t>(a), ub = static_cast<std::size_t>(b);
      if (eligible[ua] != eligible[ub]) return eligible[ua] > eligible[ub];
      return select[ua] > select[ub];
    });
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += score[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])];
    for (int j = 0; j < k; ++j) {
      const auto a = static_cast<std::size_t>(t) * static_cast<std::size_t>(k) + static_cast<std::size_t>(j);
      r.experts[a] = order[static_cast<std::size_t>(j)];
      r.gates[a] = static_cast<float>(score[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] / sum);
    }
  }
  assign_ranks(c, r);
  return r;
}

void assign_ranks(const Config& c, Routing& r) {
  r.counts.assign(static_cast<std::size_t>(c.experts), 0);
  r.rank.resize(r.experts.size());
  for (std::size_t a = 0; a < r.experts.size(); ++a) r.rank[a] = r.counts[static_cast<std::size_t>(r.experts[a])]++;
  r.capacity = capacity(c, r.tokens);
}

std::vector<double> forward(const Config& c, const Weights& w, const bf16_bits* x, const Routing& r) {
  const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
  const auto k = static_cast<std::size_t>(r.top_k);
  std::vector<double> out(static_cast<std::size_t>(r.tokens) * h, 0.0);
  std::vector<double> up(2 * f), act(f);
  for (std::size_t t = 0; t < static_cast<std::size_t>(r.tokens); ++t)
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t a = t * k + j;
      if (!r.kept(a)) continue;
      const auto e = static_cast<std::size_t>(r.experts[a]);
      const bf16_bits* gu = w.gate_up.data() + e * h * 2 * f;
      const bf16_bits* dn = w.down.data() + e * f * h;
      std::fill(up.begin(), up.end(), 0.0);
      for (std::size_t i = 0; i < h; ++i) {
        const double xi = bf16_to_float(x[t * h + i]);
        for (std::size_t m = 0; m < 2 * f; ++m) up[m] += xi * bf16_to_float(gu[i * 2 * f + m]);
      }
      for (std::size_t m = 0; m < f; ++m) act[m] = silu(up[m]) * up[f + m];
      const double g = r.gates[a];
      for (std::size_t m = 0; m < f; ++m)
        for (std::size_t o = 0; o < h; ++o) out[t * h + o] += g * act[m] * bf16_to_float(dn[m * h + o]);
    }
  return out;
}

Values values(const Config& c, const Weights& w, const bf16_bits* x, int tokens) {
  const auto to_double = [](const bf16_bits* p, std::size_t n) {
    std::vector<double> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = bf16_to_float(p[i]);
    return out;
  };
  return {to_double(x, static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c.hidden)),
          to_double(w.router.data(), w.router.size()), to_double(w.gate_up.data(), w.gate_up.size()),
          to_double(w.down.data(), w.down.size())};
}

namespace {

// Per token: the chosen experts' scores (softmax over all experts, or sigmoid) and their sum.
struct Chosen {
  std::vector<double> score;  // T x k
  std::vector<double> sum;    // T
};

Chosen chosen_scores(const Config& c, const Values& v, const Routing& r) {
  const auto h = static_cast<std::size_t>(c.hidden), e = static_cast<std::size_t>(c.experts);
  const auto k = static_cast<std::size_t>(r.top_k), tokens = static_cast<std::size_t>(r.tokens);
  Chosen out{std::vector<double>(tokens * k), std::vector<double>(tokens)};
  std::vector<double> l(e);
  for (std::size_t t = 0; t < tokens; ++t) {
    std::fill(l.begin(), l.end(), 0.0);
    for (std::size_t i = 0; i < h; ++i)
      for (std::size_t j = 0; j < e; ++j) l[j] += v.x[t * h + i] * v.router[i * e + j];
    double norm = 1;  // softmax's denominator over all experts (cancels in the gates)
    if (c.scoring == Scoring::softmax) {
      const double m = *std::max_element(l.begin(), l.end());
      norm = 0;
      for (auto& z : l) norm += z = std::exp(z - m);
    }
    for (std::size_t j = 0; j < k; ++j) {
      const double z = l[static_cast<std::size_t>(r.experts[t * k + j])];
      out.sum[t] += out.score[t * k + j] = c.scoring == Scoring::softmax ? z / norm : 1 / (1 + std::exp(-z));
    }
  }
  return out;
}

// One expert on one token's row, in float64: up = x Wgu (2F), act = silu(gate) * up (F) and
// y = act Wd (H), into the caller's buffers.
void expert_row(const double* x, const double* gu, const double* dn, std::size_t h, std::size_t f, std::vector<double>& up,
                std::vector<double>& act, std::vector<double>& y) {
  std::fill(up.begin(), up.end(), 0.0);
  for (std::size_t i = 0; i < h; ++i)
    for (std::size_t m = 0; m < 2 * f; ++m) up[m] += x[i] * gu[i * 2 * f + m];
  for (std::size_t m = 0; m < f; ++m) act[m] = silu(up[m]) * up[f + m];
  std::fill(y.begin(), y.end(), 0.0);
  for (std::size_t m = 0; m < f; ++m)
    for (std::size_t o = 0; o < h; ++o) y[o] += act[m] * dn[m * h + o];
}

}  // namespace

std::vector<double> forward_values(const Config& c, const Values& v, const Routing& r) {
  const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
  const auto k = static_cast<std::size_t>(r.top_k);
  const Chosen s = chosen_scores(c, v, r);
  std::vector<double> out(static_cast<std::size_t>(r.tokens) * h, 0.0);
  std::vector<double> up(2 * f), act(f), y(h);
  for (std::size_t t = 0; t < static_cast<std::size_t>(r.tokens); ++t)
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t a = t * k + j;
      if (!r.kept(a)) continue;
      const auto e = static_cast<std::size_t>(r.experts[a]);
      expert_row(v.x.data() + t * h, v.gate_up.data() + e * h * 2 * f, v.down.data() + e * f * h, h, f, up, act, y);
      const double g = s.score[a] / s.sum[t];
      for (std::size_t o = 0; o < h; ++o) out[t * h + o] += g * y[o];
    }
  return out;
}

Values backward(const Config& c, const Values& v, const Routing& r, const std::vector<double>& dout) {
  const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
  const auto e = static_cast<std::size_t>(c.experts), k = static_cast<std::size_t>(r.top_k);
  const auto tokens = static_cast<std::size_t>(r.tokens);
  const Chosen s = chosen_scores(c, v, r);
  Values d{std::vector<double>(v.x.size(), 0.0), std::vector<double>(v.router.size(), 0.0),
           std::vector<double>(v.gate_up.size(), 0.0), std::vector<double>(v.down.size(), 0.0)};
  std::vector<double> up(2 * f), act(f), y(h), dact(f), dup(2 * f), dg(k);
  for (std::size_t t = 0; t < tokens; ++t) {
    const double* x = v.x.data() + t * h;
    const double* go = dout.data() + t * h;
    std::fill(dg.begin(), dg.end(), 0.0);
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t a = t * k + j;
      if (!r.kept(a)) continue;  // a dropped assignment has no output: dg = 0
      const auto ex = static_cast<std::size_t>(r.experts[a]);
      const double* gu = v.gate_up.data() + ex * h * 2 * f;
      const double* dn = v.down.data() + ex * f * h;
      double* dgu = d.gate_up.data() + ex * h * 2 * f;
      double* ddn = d.down.data() + ex * f * h;
      expert_row(x, gu, dn, h, f, up, act, y);
      const double g = s.score[a] / s.sum[t];
      for (std::size_t o = 0; o < h; ++o) dg[j] += y[o] * go[o];
      // dy = g dout[t]: the down projection's gradients.
      std::fill(dact.begin(), dact.end(), 0.0);
      for (std::size_t m = 0; m < f; ++m)
        for (std::size_t o = 0; o < h; ++o) {
          ddn[m * h + o] += act[m] * g * go[o];
          dact[m] += g * go[o] * dn[m * h + o];
        }
      // SwiGLU: act = silu(gate) * up.
      for (std::size_t m = 0; m < f; ++m) {
        const double z = up[m], sg = 1 / (1 + std::exp(-z));
        dup[m] = dact[m] * up[f + m] * sg * (1 + z * (1 - sg));  // silu'(z) = sigma(z) (1 + z (1 - sigma(z)))
        dup[f + m] = dact[m] * silu(z);
      }
      for (std::size_t i = 0; i < h; ++i)
        for (std::size_t m = 0; m < 2 * f; ++m) {
          dgu[i * 2 * f + m] += x[i] * dup[m];
          d.x[t * h + i] += dup[m] * gu[i * 2 * f + m];
        }
    }
    // The gates: g_j = s_j / sum over the chosen of s_i.
    double mean = 0;  // sum_i g_i dg_i
    for (std::size_t j = 0; j < k; ++j) mean += s.score[t * k + j] / s.sum[t] * dg[j];
    for (std::size_t j = 0; j < k; ++j) {
      const double sj = s.score[t * k + j], g = sj / s.sum[t];
      // softmax: the full softmax's denominator cancels, so the gates are a softmax over the
      // chosen logits; sigmoid: through the renormalisation, then sigma'.
      const double dl = c.scoring == Scoring::softmax ? g * (dg[j] - mean) : (dg[j] - mean) / s.sum[t] * sj * (1 - sj);
      const auto ex = static_cast<std::size_t>(r.experts[t * k + j]);
      for (std::size_t i = 0; i < h; ++i) {
        d.router[i * e + ex] += x[i] * dl;
        d.x[t * h + i] += dl * v.router[i * e + ex];
      }
    }
  }
  return d;
}

Routing generated_routing(const Config& c, int tokens, const std::string& distribution, std::uint64_t seed) {
  const auto e = static_cast<std::size_t>(c.experts);
  std::vector<double> weight(e, 1.0);
  const auto colon = distribution.find(':');
  const std::string kind = distribution.substr(0, colon);
  const double p = colon == std::string::npos ? 0 : std::stod(distribution.substr(colon + 1));
  if (kind == "zipf") {
    for (std::size_t i = 0; i < e; ++i) weight[i] = std::pow(static_cast<double>(i + 1), -p);
  } else if (kind == "hot") {
    if (!(p > 0 && p < 1) || e < 2) throw std::invalid_argument("hot:P needs 0 < P < 1 and two experts");
    weight[0] = p;
    for (std::size_t i = 1; i < e; ++i) weight[i] = (1 - p) / static_cast<double>(e - 1);
  } else if (kind != "uniform") {
    throw std::invalid_argument("unknown distribution '" + distribution + "' (uniform, zipf:S, hot:P)");
  }
  std::vector<double> cdf(e);
  double total = 0;
  for (std::size_t i = 0; i < e; ++i) cdf[i] = total += weight[i];
  Random r{seed * 0xA24BAED4963EE407ULL + 11};
  Routing out;
  out.tokens = tokens;
  out.top_k = c.top_k;
  out.experts.resize(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c.top_k));
  out.gates.assign(out.experts.size(), 1.0f / static_cast<float>(c.top_k));
  for (std::size_t t = 0; t < static_cast<std::size_t>(tokens); ++t) {
    int* chosen = out.experts.data() + t * static_cast<std::size_t>(c.top_k);
    for (int j = 0; j < c.top_k;) {
      const auto x = static_cast<int>(std::lower_bound(cdf.begin(), cdf.end(), r.uniform() * total) - cdf.begin());
      const int pick = std::min(x, c.experts - 1);
      if (std::find(chosen, chosen + j, pick) == chosen + j) chosen[j++] = pick;
    }
  }
  assign_ranks(c, out);
  return out;
}

double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  if (got.size() < want.size()) return HUGE_VAL;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!std::isfinite(d)) return HUGE_VAL;  // a NaN or infinity (an unwritten, poisoned element) never passes
    worst = std::max(worst, d);
    scale = std::max(scale, std::fabs(want[i]));
  }
  return scale > 0 ? worst / scale : worst;
}

}  // namespace moe
