#include "tools/serve.hpp"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <queue>

#include "routing/moe_spec.hpp"
#include "sim/rng.hpp"
#include "tools/report.hpp"

namespace moesim::tools {

namespace {

double field(const std::map<std::string, std::string>& row, const std::string& column) {
  const auto it = row.find(column);
  if (it == row.end()) throw ServeError(fmt::format("the run's summary has no column '{}'", column));
  return std::stod(it->second);
}

// 1234567 -> "1,234,567".
std::string grouped(double x) {
  const std::string digits = fmt::format("{:.0f}", std::fabs(x));
  std::string s = x < 0 && digits != "0" ? "-" : "";
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s += ',';
    s += digits[i];
  }
  return s;
}

std::string bytes_rate(double bytes_per_s) {
  return bytes_per_s >= 1e9 ? fmt::format("{:.2f} GB/s", bytes_per_s / 1e9) : fmt::format("{:.1f} MB/s", bytes_per_s / 1e6);
}

// The plan's first line: the traffic, with its cache hits.
void print_traffic(std::ostream& out, const char* command, const ServeTraffic& t, double prefill_tokens_per_s) {
  fmt::print(out, "{}: {} prompt tokens/s{}, {} output tokens/s\n", command, grouped(t.input_tokens_per_s),
             t.cache_hit_rate > 0 ? fmt::format(" ({:.1f} % from the KV cache, {} to prefill)", 100 * t.cache_hit_rate,
                                                grouped(prefill_tokens_per_s))
                                  : std::string(),
             grouped(t.output_tokens_per_s));
}

std::string nodes_text(int n) { return fmt::format("{} node{}", grouped(n), n == 1 ? "" : "s"); }

// A queue's times to first token (sorted here): how many, their mean and nearest-rank percentiles.
template <typename Queue>
void set_ttft_figures(Queue& q, std::vector<double>& ttft) {
  std::sort(ttft.begin(), ttft.end());
  q.counted = static_cast<std::int64_t>(ttft.size());
  double total = 0;
  for (const double x : ttft) total += x;
  q.mean_us = total / static_cast<double>(ttft.size());
  const auto rank = [&](double pct) {
    const auto r = static_cast<std::size_t>(std::ceil(pct / 100 * static_cast<double>(ttft.size())));
    return ttft[std::clamp<std::size_t>(r, 1, ttft.size()) - 1];
  };
  q.p50_us = rank(50);
  q.p90_us = rank(90);
  q.p99_us = rank(99);
}

// The fewest units from `from` up to `limit` whose queue (simulate(units)) meets the target: the
// TTFT falls as units are added (fewer prompts waiting on each), so double until it is met, then
// bisect. `hopeless`: the queue at `from` shows no count can (its most tried in `closest`).
template <typename Queue, typename Simulate, typename Meets, typename Hopeless>
std::optional<Queue> fewest_units(int from, int limit, const Simulate& simulate, const Meets& meets, const Hopeless& hopeless,
                                  Queue* closest) {
  Queue q = simulate(from);
  if (meets(q)) return q;
  if (hopeless(q) || from >= limit) {
    if (closest) *closest = q;
    return std::nullopt;
  }
  int low = from, high = from;
  std::optional<Queue> found;
  while (!found) {
    low = high;
    high = std::min(limit, 2 * high);
    q = simulate(high);
    if (meets(q)) found = q;
    else if (high == limit) {
      if (closest) *closest = q;
      return std::nullopt;
    }
  }
  while (high - low > 1) {
    const int mid = low + (high - low) / 2;
    q = simulate(mid);
    if (meets(q)) {
      high = mid;
      found = q;
    } else {
      low = mid;
    }
  }
  return found;
}

}  // namespace

int whole_units(double units) { return std::max(1, static_cast<int>(std::ceil(units * (1 - 1e-12)))); }

void check_traffic(const ServeTraffic& t) {
  if (!(t.input_tokens_per_s > 0)) throw ServeError("--input-tokens-per-s must be a rate > 0 (prompt tokens a second, cache hits included)");
  if (!(t.output_tokens_per_s > 0)) throw ServeError("--output-tokens-per-s must be a rate > 0 (tokens generated a second)");
  if (!(t.cache_hit_rate >= 0 && t.cache_hit_rate < 1))
    throw ServeError(fmt::format("--cache-hit-rate must be in [0, 1) (the share of prompt tokens whose KV cache is found), got {}",
                                 t.cache_hit_rate));
  if (t.prompt_length_sigma > 0 && !t.prompt_lengths.empty())
    throw ServeError("--prompt-length-sigma and --prompt-lengths both give the prompts' lengths: use one");
  (void)prompt_sizes(t, 1);  // a negative spread or a length <= 0
}

void check_serve_scenario(const scenarios::Scenario& sc, bool prefill) {
  const std::string want = prefill ? "prefill" : "decode";
  if (sc.workload_kind != want)
    throw ServeError(fmt::format("{}: the {} scenario must have workload.kind: {} (it has '{}')", sc.source, want, want,
                                 sc.workload_kind));
  if (sc.forward.pp > 1)
    throw ServeError(fmt::format("{}: pipeline stages are not planned for serving here (parallelism.pp: {}); use one stage",
                                 sc.source, sc.forward.pp));
  if (sc.forward.prefill_chunk > 0)
    throw ServeError(fmt::format("{}: its decode steps prefill prompts too (workload.prefill_chunk: {}): serve it colocated "
                                 "(moesim serve --colocated {}), or set the chunk to 0 for a disaggregated decode unit",
                                 sc.source, sc.forward.prefill_chunk, sc.source));
}

void check_colocated_scenario(const scenarios::Scenario& sc) {
  if (sc.workload_kind != "decode" || sc.forward.prefill_chunk == 0)
    throw ServeError(fmt::format("{}: colocated serving needs a decode scenario whose steps prefill prompts too (workload.kind: "
                                 "decode with workload.prefill_chunk; it has kind '{}'{})",
                                 sc.source, sc.workload_kind, sc.workload_kind == "decode" ? " without a chunk" : ""));
  if (sc.forward.pp > 1)
    throw ServeError(fmt::format("{}: pipeline stages are not planned for serving here (parallelism.pp: {}); use one stage",
                                 sc.source, sc.forward.pp));
}

ServeUnit serve_unit(const scenarios::Scenario& sc, const std::map<std::string, std::string>& summary, bool prefill) {
  if (sc.forward.prefill_chunk > 0 && !prefill)
    check_colocated_scenario(sc);
  else
    check_serve_scenario(sc, prefill);
  const auto& f = sc.forward;
  ServeUnit u;
  u.source = sc.source;
  u.gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  u.nodes = sc.cluster.nodes;
  u.tokens_per_s = field(summary, "tokens_per_s");
  u.step_us = field(summary, "step_time_us");
  u.time_per_token_us = prefill ? 0 : field(summary, "time_per_token_us");
  u.local_us = u.step_us - field(summary, "experts_us") - field(summary, "dispatch_wait_us") - field(summary, "combine_wait_us");
  u.tokens_per_gpu = prefill ? f.tokens_per_gpu : f.sequences();
  u.prompt_tokens = prefill || f.prefill_chunk > 0 ? f.sequence_length : 0;
  if (!prefill && f.prefill_chunk > 0) {
    u.prefill_chunk = f.prefill_chunk;
    u.prompt_tokens_per_s = field(summary, "prompt_tokens_per_s");
  }
  u.tp = f.model.tp;
  u.cached_prefix = prefill ? f.cached_prefix : 0;
  u.context_tokens = prefill ? 0 : f.context_length;
  // Every layer with attention caches: the MoE layers (with the MTP layers run) and the dense ones;
  // all of a token's cache, not a tensor-parallel GPU's share of its heads. A sliding layer
  // (model.sliding_window) keeps at most its window of a sequence: per token, its share of the
  // decode scenario's context (the prefill scenario's: its prompts).
  routing::MoeModelSpec whole = f.model;
  whole.tp = 1;
  const std::int64_t context = prefill ? f.cached_prefix + f.sequence_length : f.context_length;
  double layers = 0;
  for (int l = 0; l < f.model.dense_layers + f.model.moe_layers; ++l)
    layers += static_cast<double>(routing::cached_keys(whole, l, context)) / static_cast<double>(context);
  // A linear-attention layer (model.linear_attention) leaves a state per sequence instead: per
  // token, its share over that context.
  const int linear = routing::linear_layers(whole, 0, f.model.dense_layers + f.model.moe_layers);
  u.kv_bytes_per_token = static_cast<double>(routing::kv_cache_token_bytes(whole)) * layers +
                         static_cast<double>(linear) * static_cast<double>(routing::linear_state_bytes(whole)) / static_cast<double>(context);
  u.nic_bytes_per_s = sc.cluster.scale_out.present ? static_cast<double>(sc.cluster.scale_out.nic_bandwidth.bytes_per_s()) : 0;
  u.gpu_hour_price = sc.gpu_hour_price;
  if (const auto pw = summary.find("power_kw"); pw != summary.end() && !pw->second.empty()) u.power_kw = std::stod(pw->second);
  u.memory_gb = field(summary, "memory_gb_max");
  u.gpu_memory_gb = field(summary, "gpu_memory_gb");
  const auto fits = summary.find("fits_memory");
  u.fits = fits == summary.end() || fits->second != "no";
  if (!(u.tokens_per_s > 0)) throw ServeError(fmt::format("{}: the run served no tokens", sc.source));
  return u;
}

namespace {

// Of the candidates that fit memory, those `gpus_of` gives a GPU count (the others miss the
// target), the one on the fewest GPUs (ties: the fewest at full use, then the first).
struct Fewest {
  std::optional<std::size_t> best;
  std::size_t fit = 0, met = 0;
};
template <typename GpusOf>
Fewest fewest_gpus(const std::vector<ServeUnit>& candidates, double load_tokens_per_s, const GpusOf& gpus_of) {
  Fewest f;
  double best_gpus = 0, best_full = 0;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const auto& u = candidates[i];
    if (!u.fits) continue;
    ++f.fit;
    const std::optional<double> gpus = gpus_of(i);
    if (!gpus) continue;
    ++f.met;
    const double full = load_tokens_per_s / u.tokens_per_s * u.gpus;  // GPUs at full use
    if (!f.best || *gpus < best_gpus || (*gpus == best_gpus && full < best_full)) {
      f.best = i;
      best_gpus = *gpus;
      best_full = full;
    }
  }
  return f;
}

}  // namespace

ServeChoice choose_unit(const std::vector<ServeUnit>& candidates, double load_tokens_per_s, double target_us, bool prefill) {
  if (prefill) target_us = 0;  // the queue's (choose_prefill_for_ttft)
  const Fewest f = fewest_gpus(candidates, load_tokens_per_s, [&](std::size_t i) -> std::optional<double> {
    const auto& u = candidates[i];
    if (target_us > 0 && u.time_per_token_us > target_us) return std::nullopt;
    return static_cast<double>(whole_units(load_tokens_per_s / u.tokens_per_s)) * u.gpus;
  });
  ServeChoice c;
  c.best = f.best;
  const std::string side = prefill ? "prefill" : "decode";
  if (candidates.size() == 1) {
    const auto& u = candidates[0];
    c.explanation = c.best ? std::string()
                    : !u.fits ? fmt::format("{}: the {} scenario does not fit the GPUs' memory ({:.1f} GB of {:.0f} GB)", u.source,
                                            side, u.memory_gb, u.gpu_memory_gb)
                              : fmt::format("{}: the decode scenario takes {:.3f} ms a token, over the target of {:.3f} ms", u.source,
                                            u.time_per_token_us / 1e3, target_us / 1e3);
    return c;
  }
  c.explanation = fmt::format("of the {} {} points {} fit the GPUs' memory{}{}", candidates.size(), side, f.fit,
                              target_us > 0 ? fmt::format(" and {} of those decode a token within {:.3f} ms", f.met, target_us / 1e3)
                                            : std::string(),
                              c.best ? "; this one serves the load on the fewest GPUs" : "");
  return c;
}

ServeChoice choose_prefill_for_ttft(const std::vector<ServeUnit>& candidates, const std::vector<std::optional<int>>& units,
                                    double load_tokens_per_s, const std::string& target) {
  const Fewest f = fewest_gpus(candidates, load_tokens_per_s, [&](std::size_t i) -> std::optional<double> {
    if (!units.at(i)) return std::nullopt;
    return static_cast<double>(*units[i]) * candidates[i].gpus;
  });
  ServeChoice c;
  c.best = f.best;
  c.explanation = fmt::format("of the {} prefill points {} fit the GPUs' memory and {} of those meet the time to first token ({}) "
                              "with some count of units{}",
                              candidates.size(), f.fit, f.met, target, c.best ? "; this one does so on the fewest GPUs" : "");
  return c;
}

double PrefillBatchTime::us(double prompts) const {
  const double full = full_prompts, least = least_prompts;
  if (prompts > full) return full_us * prompts / full;  // more than a batch: that many batches
  if (prompts >= full) return full_us;
  if (prompts >= least)  // here full_prompts > least_prompts
    return least_us + (full_us - least_us) * (prompts - least) / (full - least);
  return least_local_us + (least_us - least_local_us) * prompts / least;
}

double PromptSizes::mean() const {
  if (drawn.empty()) return 1;
  double total = 0;
  for (const double w : drawn) total += w;
  return total / static_cast<double>(drawn.size());
}

double PromptSizes::mean_square() const {
  if (drawn.empty()) return std::exp(sigma * sigma);
  double total = 0;
  for (const double w : drawn) total += w * w;
  return total / static_cast<double>(drawn.size());
}

PromptSizes prompt_sizes(const ServeTraffic& t, std::int64_t unit_prompt_tokens) {
  if (!(t.prompt_length_sigma >= 0) || !std::isfinite(t.prompt_length_sigma))
    throw ServeError(fmt::format("--prompt-length-sigma must be a number >= 0, got {}", t.prompt_length_sigma));
  PromptSizes p;
  p.router = t.prefill_router;
  p.sigma = t.prompt_length_sigma;
  const double unit = static_cast<double>(std::max<std::int64_t>(unit_prompt_tokens, 1));
  for (const double l : t.prompt_lengths) {
    if (!(l > 0) || !std::isfinite(l)) throw ServeError(fmt::format("a prompt length must be > 0, got {}", l));
    p.drawn.push_back(l / unit);
  }
  return p;
}

std::vector<double> read_prompt_lengths(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ServeError(fmt::format("--prompt-lengths: cannot read {}", path));
  std::vector<double> lengths;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string field = line.substr(0, line.find(','));
    const auto first = field.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;  // blank
    const std::string text = field.substr(first, field.find_last_not_of(" \t\r") - first + 1);
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (*end != '\0' || text.empty()) {
      if (n == 1) continue;  // a header
      throw ServeError(fmt::format("{}:{}: '{}' is not a prompt length", path, n, text));
    }
    if (!(v > 0) || !std::isfinite(v)) throw ServeError(fmt::format("{}:{}: a prompt length must be > 0, got {}", path, n, text));
    lengths.push_back(v);
  }
  if (lengths.empty()) throw ServeError(fmt::format("--prompt-lengths: {} has no lengths", path));
  return lengths;
}

PrefillQueue simulate_prefill_queue(double prompts_per_s, int units, const PrefillBatchTime& batch, std::uint64_t seed,
                                    std::int64_t prompts, const PromptSizes& sizes) {
  if (!(prompts_per_s > 0) || units < 1 || prompts < 10 || batch.full_prompts < 1)
    throw ServeError("the prefill queue needs a rate > 0, a unit, a batch of a prompt or more and 10 prompts or more");
  sim::Rng rng(seed, "serve/prompt-arrivals");
  const auto n = static_cast<std::size_t>(prompts);
  std::vector<double> arrival(n);
  double now = 0;
  for (auto& a : arrival) a = now += rng.exponential(1e6 / prompts_per_s);  // microseconds
  // Each prompt's size in the scenario's prompts (a stream of its own: the arrivals stay those
  // of prompts of one length).
  std::vector<double> size(n, 1.0);
  if (sizes.sigma > 0 || !sizes.drawn.empty()) {
    sim::Rng lengths(seed, "serve/prompt-lengths");
    for (auto& w : size)
      w = !sizes.drawn.empty() ? sizes.drawn[lengths.uniform_int(sizes.drawn.size())]
                               : std::exp(sizes.sigma * lengths.normal() - sizes.sigma * sizes.sigma / 2);
  }
  // Prompt i goes to unit i mod units (a round-robin router); each unit, when it falls free,
  // takes every prompt waiting for it, up to a full batch's tokens (the first one whatever its
  // length), or else the next one to come.
  const std::size_t skip = n / 10;
  std::vector<double> ttft;
  ttft.reserve(n - skip);
  std::size_t batches = 0, batched = 0;
  const double most = batch.full_prompts;
  const auto stride = static_cast<std::size_t>(units);
  const auto batch_us = [&](double load, double square) { return batch.us(load) + batch.square_us * square; };
  // Each unit's prompts in the order they came, and the scenario-prompts and squares of those
  // still waiting.
  struct Unit {
    double free_at = 0;
    std::vector<std::size_t> waiting;
    double load = 0, square = 0;
  };
  std::vector<Unit> all(stride);
  // Starts the unit's batches that begin by `now`: at its first waiting prompt's arrival or when
  // the unit falls free, each with the waiting prompts that have come by then, up to a full
  // batch's tokens.
  const auto advance = [&](Unit& u, double now) {
    std::size_t first = 0;
    while (first < u.waiting.size() && u.free_at <= now) {
      const double start = std::max(u.free_at, arrival[u.waiting[first]]);
      if (start > now) break;
      std::size_t end = first;
      double load = 0, square = 0;
      while (end < u.waiting.size() && (end == first || load + size[u.waiting[end]] <= most) && arrival[u.waiting[end]] <= start) {
        load += size[u.waiting[end]];
        square += size[u.waiting[end]] * (size[u.waiting[end]] - 1);
        ++end;
      }
      const double done = start + batch_us(load, square);
      for (std::size_t i = first; i < end; ++i)
        if (u.waiting[i] >= skip) ttft.push_back(done - arrival[u.waiting[i]]);
      if (u.waiting[first] >= skip) {
        ++batches;
        batched += end - first;
      }
      u.load -= load;
      u.square -= square;
      u.free_at = done;
      first = end;
    }
    u.waiting.erase(u.waiting.begin(), u.waiting.begin() + static_cast<std::ptrdiff_t>(first));
    if (u.waiting.empty()) u.load = u.square = 0;  // no rounding left over
  };
  const auto give = [&](Unit& u, std::size_t i) {
    u.waiting.push_back(i);
    u.load += size[i];
    u.square += size[i] * (size[i] - 1);
  };
  if (sizes.router == PrefillRouter::least_work) {
    // Each prompt goes to the unit whose work on hand is least when it comes: what is left of its
    // batch and the time of a batch of what waits for it (the lowest-numbered unit of those that
    // tie, idle ones first), in time order across the units.
    for (std::size_t i = 0; i < n; ++i) {
      const double now = arrival[i];
      std::size_t best = 0;
      double least = 0;
      for (std::size_t k = 0; k < stride; ++k) {
        Unit& u = all[k];
        advance(u, now);
        const double work = std::max(0.0, u.free_at - now) + (u.waiting.empty() ? 0.0 : batch_us(u.load, u.square));
        if (k == 0 || work < least) {
          best = k;
          least = work;
        }
      }
      give(all[best], i);
      advance(all[best], now);  // an idle unit starts at once
    }
  } else {
    // Round robin: prompt i to unit i mod units, whose own prompts alone decide its batches.
    for (std::size_t i = 0; i < n; ++i) give(all[i % stride], i);
  }
  for (auto& u : all) advance(u, std::numeric_limits<double>::infinity());
  PrefillQueue q;
  q.units = units;
  q.prompts_per_s = prompts_per_s;
  q.busy = prompts_per_s * (sizes.mean() * batch.full_us / batch.full_prompts + (sizes.mean_square() - sizes.mean()) * batch.square_us) /
           1e6 / static_cast<double>(units);
  set_ttft_figures(q, ttft);
  q.mean_batch = batches > 0 ? static_cast<double>(batched) / static_cast<double>(batches) : 0;
  return q;
}

std::optional<PrefillQueue> units_for_ttft(double prompts_per_s, int from, int limit, const PrefillBatchTime& batch, int percentile,
                                           double target_us, std::uint64_t seed, PrefillQueue* closest, const PromptSizes& sizes) {
  return fewest_units<PrefillQueue>(
      from, limit, [&](int units) { return simulate_prefill_queue(prompts_per_s, units, batch, seed, 200'000, sizes); },
      [&](const PrefillQueue& q) { return q.percentile_us(percentile) <= target_us; },
      // No prompt's first token comes sooner than a batch of one: more units cannot help (with
      // prompts of several lengths, the queue's own figure at the most units decides).
      [&](const PrefillQueue&) { return sizes.sigma == 0 && sizes.drawn.empty() && batch.us(1) > target_us; }, closest);
}

double prompt_time_factor(const PrefillBatchTime& batch, const PromptSizes& sizes) {
  if (batch.square_us == 0 || batch.full_us <= 0) return 1;
  return 1 + (sizes.mean_square() - sizes.mean()) * batch.square_us / (sizes.mean() * batch.full_us / batch.full_prompts);
}

double prompts_per_s(const ServeUnit& unit, double load_tokens_per_s, const PromptSizes& sizes) {
  return load_tokens_per_s / (static_cast<double>(std::max<std::int64_t>(unit.prompt_tokens, 1)) * sizes.mean());
}

std::optional<PrefillQueue> units_for_ttft(const ServeUnit& unit, double load_tokens_per_s, const PrefillBatchTime& batch,
                                           int percentile, double target_us, std::uint64_t seed, PrefillQueue* closest,
                                           const PromptSizes& sizes) {
  const int from = whole_units(load_tokens_per_s / unit.tokens_per_s * prompt_time_factor(batch, sizes));
  return units_for_ttft(prompts_per_s(unit, load_tokens_per_s, sizes), from, 64 * from, batch, percentile, target_us, seed, closest,
                        sizes);
}

double unit_down_share(int unit_gpus, const ServeSpares& s) {
  if (!s.enabled() || unit_gpus <= 0) return 0;
  const double up = s.gpu_mtbf_hours * 3600 / unit_gpus;
  return s.repair_s / (up + s.repair_s);
}

double short_probability(int units, int spares, double down) {
  if (down <= 0) return 0;
  if (down >= 1) return 1;
  const int m = units + spares;
  double p = 0;
  for (int k = spares + 1; k <= m; ++k)
    p += std::exp(std::lgamma(m + 1.0) - std::lgamma(k + 1.0) - std::lgamma(m - k + 1.0) + k * std::log(down) + (m - k) * std::log1p(-down));
  return std::min(p, 1.0);
}

int spare_units(int units, int unit_gpus, const ServeSpares& s) {
  const double down = unit_down_share(unit_gpus, s);
  if (down <= 0) return 0;
  for (int spares = 0;; ++spares)
    if (short_probability(units, spares, down) <= 1 - s.availability || spares > 10 * units + 1000) return spares;
}

ServePlan plan_service(const ServeTraffic& t, const ServeUnit& prefill, const ServeUnit& decode, const PrefillBatchTime& batch,
                       double ttft_target_us, int percentile, std::uint64_t seed, const ServeSpares& spares) {
  check_traffic(t);
  if (percentile != 50 && percentile != 90 && percentile != 99)
    throw ServeError(fmt::format("--ttft-percentile must be 50, 90 or 99, got {}", percentile));
  ServePlan p;
  p.traffic = t;
  p.prefill = prefill;
  p.decode = decode;
  p.prefill_batch = batch;
  p.ttft_target_us = ttft_target_us;
  p.ttft_percentile = percentile;
  p.prefill_tokens_per_s = t.input_tokens_per_s * (1 - t.cache_hit_rate);
  // The queue: prompts of the scenario's new tokens (or the traffic's lengths), at the rate the
  // computed tokens make; their lengths' spread makes a token's attention dearer (square_us).
  const PromptSizes sizes = prompt_sizes(t, prefill.prompt_tokens);
  p.prefill_units = p.prefill_tokens_per_s / prefill.tokens_per_s * prompt_time_factor(batch, sizes);
  p.decode_units = t.output_tokens_per_s / decode.tokens_per_s;
  p.prefill_units_for_load = whole_units(p.prefill_units);
  if (ttft_target_us > 0) {
    const auto q = units_for_ttft(prefill, p.prefill_tokens_per_s, batch, percentile, ttft_target_us, seed, &p.prefill_queue, sizes);
    p.ttft_met = q.has_value();
    if (q) p.prefill_queue = *q;
  } else {
    p.prefill_queue = simulate_prefill_queue(prompts_per_s(prefill, p.prefill_tokens_per_s, sizes), p.prefill_units_for_load, batch,
                                             seed, 200'000, sizes);
  }
  p.prefill_units_whole = p.ttft_met ? p.prefill_queue.units : p.prefill_units_for_load;
  p.decode_units_whole = whole_units(p.decode_units);
  p.prefill_gpus = p.prefill_units_whole * prefill.gpus;
  p.decode_gpus = p.decode_units_whole * decode.gpus;
  p.sequences_decoding = t.output_tokens_per_s * decode.time_per_token_us / 1e6;
  // The caches in the decode scenario's layout (its model.kv_cache_dtype), which is what moves.
  p.kv_prefill_bytes_per_s = p.prefill_tokens_per_s * decode.kv_bytes_per_token / p.prefill_gpus;
  p.kv_decode_bytes_per_s = t.input_tokens_per_s * decode.kv_bytes_per_token / p.decode_gpus;
  if (prefill.gpu_hour_price > 0 && decode.gpu_hour_price > 0) {
    p.price_per_hour = p.prefill_gpus * prefill.gpu_hour_price + p.decode_gpus * decode.gpu_hour_price;
    p.cost_per_million_output = p.price_per_hour / (t.output_tokens_per_s * 3600 / 1e6);
  }
  if (prefill.power_kw > 0 && decode.power_kw > 0) {
    p.power_kw = p.prefill_units_whole * prefill.power_kw + p.decode_units_whole * decode.power_kw;
    p.energy_per_million_output_kwh = p.power_kw / (t.output_tokens_per_s * 3600 / 1e6);
  }
  p.spares = spares;
  if (spares.enabled()) {
    if (!(spares.availability > 0 && spares.availability < 1))
      throw ServeError(fmt::format("--availability must be between 0 and 1, got {}", spares.availability));
    if (!(spares.repair_s > 0)) throw ServeError("--gpu-mtbf-hours needs --repair-time (how long a failed unit is out, e.g. 4h)");
    p.prefill_spares = spare_units(p.prefill_units_whole, prefill.gpus, spares);
    p.decode_spares = spare_units(p.decode_units_whole, decode.gpus, spares);
    if (p.price_per_hour > 0)
      p.spare_price_per_hour = p.prefill_spares * prefill.gpus * prefill.gpu_hour_price + p.decode_spares * decode.gpus * decode.gpu_hour_price;
  }
  return p;
}

namespace {

// The traffic's prompt lengths in words, empty when they are the prefill scenario's.
std::string prompt_lengths_text(const ServeTraffic& t, std::int64_t unit_prompt_tokens) {
  if (t.prompt_length_sigma > 0)
    return fmt::format("log-normal lengths around the scenario's {} tokens (sigma {:g} of their log, the mean kept)", unit_prompt_tokens,
                       t.prompt_length_sigma);
  if (t.prompt_lengths.empty()) return {};
  std::vector<double> sorted = t.prompt_lengths;
  std::sort(sorted.begin(), sorted.end());
  double total = 0;
  for (const double l : sorted) total += l;
  const auto at = [&](double pct) { return sorted[std::min(sorted.size() - 1, static_cast<std::size_t>(pct / 100 * static_cast<double>(sorted.size())))]; };
  return fmt::format("lengths drawn from {} ({} of them: mean {:.0f} tokens, p50 {:.0f}, p99 {:.0f}; the scenario's {})",
                     t.prompt_lengths_source.empty() ? std::string("a list") : t.prompt_lengths_source, sorted.size(),
                     total / static_cast<double>(sorted.size()), at(50), at(99), unit_prompt_tokens);
}

}  // namespace

namespace {

// The least of the servers' work on hand, and the first server that has it (a segment tree over
// the servers: set() and least() in log time).
class LeastWork {
 public:
  explicit LeastWork(std::size_t n) : size_(1) {
    while (size_ < n) size_ *= 2;
    tree_.assign(2 * size_, kNone);
    for (std::size_t i = 0; i < n; ++i) tree_[size_ + i] = Entry{0, static_cast<std::uint32_t>(i)};
    for (std::size_t i = size_ - 1; i >= 1; --i) tree_[i] = std::min(tree_[2 * i], tree_[2 * i + 1]);
  }
  void set(std::size_t i, std::int64_t work) {
    std::size_t k = size_ + i;
    tree_[k].work = work;
    for (k /= 2; k >= 1; k /= 2) tree_[k] = std::min(tree_[2 * k], tree_[2 * k + 1]);
  }
  std::size_t least() const { return tree_[1].server; }

 private:
  struct Entry {
    std::int64_t work;
    std::uint32_t server;
    friend bool operator<(const Entry& a, const Entry& b) { return a.work != b.work ? a.work < b.work : a.server < b.server; }
  };
  static constexpr Entry kNone{std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::uint32_t>::max()};
  std::size_t size_;
  std::vector<Entry> tree_;
};

}  // namespace

ChunkedQueue simulate_chunked_queue(const ServeUnit& unit, int units, double prompts_per_s, std::uint64_t seed, std::int64_t prompts,
                                    const PromptSizes& sizes) {
  if (!(prompts_per_s > 0) || units < 1 || prompts < 10 || unit.prefill_chunk < 1 || unit.prompt_tokens < 1 || !(unit.step_us > 0))
    throw ServeError("the chunked prefill queue needs a rate > 0, a unit whose steps prefill a chunk, and 10 prompts or more");
  ChunkedQueue q;
  q.units = units;
  const auto per_unit = static_cast<std::size_t>(std::max(1, unit.gpus / std::max(1, unit.tp)));
  q.servers = units * static_cast<int>(per_unit);
  q.server_chunk = unit.prefill_chunk * std::max(1, unit.tp);
  q.prompts_per_s = prompts_per_s;
  // A step's time: the decode's alone, and what a full chunk adds, in proportion to the fullest
  // chunk of the unit's servers (they step together); without the decode's alone, every step a
  // full chunk's.
  const double full = unit.step_us, alone = unit.decode_only_step_us > 0 ? std::min(unit.decode_only_step_us, full) : full;
  const std::int64_t length = unit.prompt_tokens, chunk = q.server_chunk;
  const auto step_of = [&](std::int64_t fill) { return alone + (full - alone) * static_cast<double>(fill) / static_cast<double>(chunk); };
  // A server's share of a step over the decode alone: its chunk's tokens, and their positions in
  // their prompts against the scenario's chunk's mean position, (length - 1) / 2 (the later a
  // token, the more keys it attends to: ServeUnit::position_us a token and position).
  const double reference = static_cast<double>(unit.prompt_tokens - 1) / 2;
  const auto server_work = [&](std::int64_t fill, double positions) {
    return (full - alone) * static_cast<double>(fill) / static_cast<double>(chunk) +
           unit.position_us * (positions - static_cast<double>(fill) * reference);
  };
  q.busy = prompts_per_s * static_cast<double>(length) * sizes.mean() * full / 1e6 /
           (static_cast<double>(q.servers) * static_cast<double>(chunk));
  // The scenario's prompt alone: its chunks one after another, each at its own positions.
  for (std::int64_t done = 0; done < length; done += chunk) {
    const std::int64_t fill = std::min(chunk, length - done);
    q.alone_us += alone + std::max(0.0, server_work(fill, static_cast<double>(fill) * (static_cast<double>(done) + static_cast<double>(fill - 1) / 2)));
  }
  sim::Rng rng(seed, "serve/colocated-arrivals");
  const auto n = static_cast<std::size_t>(prompts);
  const std::size_t skip = n / 10;  // warm-up
  std::vector<double> arrival(n);
  double now = 0;
  for (auto& a : arrival) a = now += rng.exponential(1e6 / prompts_per_s);  // microseconds
  // Each prompt's tokens: the scenario's length, or that many times its size (a stream of its own).
  std::vector<std::int64_t> tokens(n, length);
  if (sizes.varied()) {
    sim::Rng lengths(seed, "serve/prompt-lengths");
    for (auto& k : tokens) {
      const double w = !sizes.drawn.empty() ? sizes.drawn[lengths.uniform_int(sizes.drawn.size())]
                                            : std::exp(sizes.sigma * lengths.normal() - sizes.sigma * sizes.sigma / 2);
      k = std::max<std::int64_t>(1, std::llround(w * static_cast<double>(length)));
    }
  }
  // Per server: the prompts dealt to it in arrival order and the first unfinished (front), that
  // one's tokens left, and the tokens on hand (dealt and not yet in a step's chunk).
  const auto servers = static_cast<std::size_t>(q.servers);
  std::vector<std::vector<std::uint32_t>> dealt(servers);
  std::vector<std::size_t> front(servers, 0);
  std::vector<std::int64_t> left(servers, 0), backlog(servers, 0), fill(per_unit);
  const bool least_work = sizes.router == PrefillRouter::least_work;
  std::optional<LeastWork> work;
  if (least_work) work.emplace(servers);
  // Per unit: the start of its next step, or (idle) the start of the first of the decode-alone
  // steps it runs until a prompt comes for it.
  std::vector<double> next_start(static_cast<std::size_t>(units), 0);
  std::vector<char> idle(static_cast<std::size_t>(units), 1);
  using Start = std::pair<double, std::size_t>;
  std::priority_queue<Start, std::vector<Start>, std::greater<>> starts;  // the units not idle
  std::vector<double> ttft;
  ttft.reserve(n - skip);
  const double counted_from = arrival[skip];
  double step_total = 0, busy_total = 0;
  std::int64_t steps = 0, busy_steps = 0;
  const auto count_steps = [&](double first, std::int64_t k, double each) {  // k steps of `each` from `first`: those after warm-up
    if (k <= 0) return;
    const auto before = first >= counted_from ? 0 : std::min<std::int64_t>(k, static_cast<std::int64_t>(std::ceil((counted_from - first) / each)));
    step_total += static_cast<double>(k - before) * each;
    steps += k - before;
  };
  std::size_t next = 0;  // the next prompt to come
  while (next < n || !starts.empty()) {
    if (next < n && (starts.empty() || arrival[next] < starts.top().first)) {
      // A prompt comes: to its server (in turn, or the one with the least work on hand).
      const std::size_t sv = least_work ? work->least() : next % servers;
      if (front[sv] == dealt[sv].size()) left[sv] = tokens[next];
      dealt[sv].push_back(static_cast<std::uint32_t>(next));
      backlog[sv] += tokens[next];
      if (least_work) work->set(sv, backlog[sv]);
      const std::size_t u = sv / per_unit;
      if (idle[u]) {
        // Decode-alone steps since it went idle, up to the first that starts after the prompt.
        const auto k = static_cast<std::int64_t>(std::floor((arrival[next] - next_start[u]) / alone)) + 1;
        count_steps(next_start[u], k, alone);
        next_start[u] += static_cast<double>(k) * alone;
        idle[u] = 0;
        starts.emplace(next_start[u], u);
      }
      ++next;
      continue;
    }
    const auto [t, u] = starts.top();
    starts.pop();
    const std::size_t first = u * per_unit;
    std::int64_t fullest = 0;
    for (std::size_t j = 0; j < per_unit; ++j) {
      fill[j] = std::min(chunk, backlog[first + j]);
      fullest = std::max(fullest, fill[j]);
    }
    if (fullest == 0) {  // nothing on hand: idle until a prompt comes
      idle[u] = 1;
      next_start[u] = t;
      continue;
    }
    double end = t + step_of(fullest);
    if (unit.position_us > 0) {
      // The unit steps at its slowest server's pace: each chunk's tokens at their positions.
      double most = 0;
      for (std::size_t j = 0; j < per_unit; ++j) {
        if (fill[j] == 0) continue;
        const std::size_t sv = first + j;
        double positions = 0;
        std::size_t f = front[sv];
        std::int64_t l = left[sv];
        for (std::int64_t todo = fill[j]; todo > 0;) {
          const std::int64_t take = std::min(todo, l), done = tokens[dealt[sv][f]] - l;
          positions += static_cast<double>(take) * (static_cast<double>(done) + static_cast<double>(take - 1) / 2);
          todo -= take;
          if (++f < dealt[sv].size()) l = tokens[dealt[sv][f]];
        }
        most = std::max(most, server_work(fill[j], positions));
      }
      end = t + alone + std::max(0.0, most);
    }
    count_steps(t, 1, end - t);
    if (t >= counted_from) busy_total += end - t, ++busy_steps;
    for (std::size_t j = 0; j < per_unit; ++j) {
      const std::size_t sv = first + j;
      if (fill[j] == 0) continue;
      backlog[sv] -= fill[j];
      if (least_work) work->set(sv, backlog[sv]);
      for (std::int64_t todo = fill[j]; todo > 0;) {
        const std::int64_t take = std::min(todo, left[sv]);
        todo -= take;
        left[sv] -= take;
        if (left[sv] == 0) {
          const std::uint32_t done = dealt[sv][front[sv]];
          if (done >= skip) ttft.push_back(end - arrival[done]);
          ++front[sv];
          if (front[sv] < dealt[sv].size()) left[sv] = tokens[dealt[sv][front[sv]]];
        }
      }
    }
    next_start[u] = end;
    starts.emplace(end, u);
  }
  set_ttft_figures(q, ttft);
  q.step_mean_us = steps > 0 ? step_total / static_cast<double>(steps) : full;
  // The load against the chunks at the pace the steps with prompts actually went.
  q.busy_at_pace = busy_steps > 0 ? q.busy * busy_total / static_cast<double>(busy_steps) / full : q.busy;
  return q;
}

std::optional<ChunkedQueue> colocated_units_for_ttft(const ServeUnit& unit, int from, double prompts_per_s, int percentile,
                                                     double target_us, std::uint64_t seed, ChunkedQueue* closest,
                                                     const PromptSizes& sizes) {
  return fewest_units<ChunkedQueue>(
      from, 64 * from, [&](int units) { return simulate_chunked_queue(unit, units, prompts_per_s, seed, 200'000, sizes); },
      [&](const ChunkedQueue& q) { return q.percentile_us(percentile) <= target_us; },
      // A prompt alone takes its steps: more units cannot bring it under that (with prompts of
      // several lengths, the queue's own figure at the most units decides).
      [&](const ChunkedQueue& q) { return !sizes.varied() && q.alone_us > target_us; }, closest);
}

ColocatedPlan plan_colocated(const ServeTraffic& t, const ServeUnit& unit, double ttft_target_us, int percentile, std::uint64_t seed,
                             const ServeSpares& spares) {
  check_traffic(t);
  if (percentile != 50 && percentile != 90 && percentile != 99)
    throw ServeError(fmt::format("--ttft-percentile must be 50, 90 or 99, got {}", percentile));
  if (unit.prefill_chunk < 1 || !(unit.prompt_tokens_per_s > 0))
    throw ServeError(fmt::format("{}: the scenario's steps prefill no prompts (workload.prefill_chunk)", unit.source));
  ColocatedPlan p;
  p.traffic = t;
  p.unit = unit;
  p.ttft_target_us = ttft_target_us;
  p.ttft_percentile = percentile;
  p.prefill_tokens_per_s = t.input_tokens_per_s * (1 - t.cache_hit_rate);
  p.output_units = t.output_tokens_per_s / unit.tokens_per_s;
  p.prompt_units = p.prefill_tokens_per_s / unit.prompt_tokens_per_s;
  p.units_for_load = whole_units(std::max(p.output_units, p.prompt_units));
  const PromptSizes sizes = prompt_sizes(t, unit.prompt_tokens);
  const double prompts = prompts_per_s(unit, p.prefill_tokens_per_s, sizes);
  if (ttft_target_us > 0) {
    const auto q = colocated_units_for_ttft(unit, p.units_for_load, prompts, percentile, ttft_target_us, seed, &p.queue, sizes);
    p.ttft_met = q.has_value();
    if (q) p.queue = *q;
  } else {
    p.queue = simulate_chunked_queue(unit, p.units_for_load, prompts, seed, 200'000, sizes);
  }
  p.units_whole = p.ttft_met ? p.queue.units : p.units_for_load;
  p.gpus = p.units_whole * unit.gpus;
  p.time_per_token_mean_us = p.queue.step_mean_us * unit.time_per_token_us / unit.step_us;
  p.sequences_decoding = t.output_tokens_per_s * p.time_per_token_mean_us / 1e6;
  if (unit.gpu_hour_price > 0) {
    p.price_per_hour = p.gpus * unit.gpu_hour_price;
    p.cost_per_million_output = p.price_per_hour / (t.output_tokens_per_s * 3600 / 1e6);
  }
  if (unit.power_kw > 0) {
    p.power_kw = p.units_whole * unit.power_kw;
    p.energy_per_million_output_kwh = p.power_kw / (t.output_tokens_per_s * 3600 / 1e6);
  }
  p.spares = spares;
  if (spares.enabled()) p.spare_units = spare_units(p.units_whole, unit.gpus, spares);
  return p;
}

ServeChoice choose_colocated(const std::vector<ServeUnit>& candidates, const ServeTraffic& t, double tpot_us, double ttft_target_us,
                             int percentile, std::uint64_t seed, std::vector<ColocatedPoint>* points) {
  std::size_t fit = 0, fast = 0, met = 0;
  std::optional<std::size_t> best;
  double best_gpus = 0, best_full = 0;
  const double prefill = t.input_tokens_per_s * (1 - t.cache_hit_rate);
  std::vector<ColocatedPoint> seen(candidates.size());
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const auto& u = candidates[i];
    ColocatedPoint& pt = seen[i];
    pt.output_units = t.output_tokens_per_s / u.tokens_per_s;
    pt.prompt_units = prefill / u.prompt_tokens_per_s;
    if (!u.fits) {
      pt.verdict = "does not fit the GPUs' memory";
      continue;
    }
    ++fit;
    if (tpot_us > 0 && u.time_per_token_us > tpot_us) {
      pt.verdict = "over --tpot";
      continue;
    }
    ++fast;
    const double full = std::max(pt.output_units, pt.prompt_units);
    int units = whole_units(full);
    if (ttft_target_us > 0) {
      const PromptSizes sizes = prompt_sizes(t, u.prompt_tokens);
      const auto q = colocated_units_for_ttft(u, units, prompts_per_s(u, prefill, sizes), percentile, ttft_target_us, seed, nullptr, sizes);
      if (!q) {
        pt.verdict = "no count of units meets --ttft";
        continue;
      }
      units = q->units;
    }
    ++met;
    pt.units = units;
    pt.gpus = units * u.gpus;
    pt.verdict = "serves";
    const double gpus = static_cast<double>(units) * u.gpus, full_gpus = full * u.gpus;
    if (!best || gpus < best_gpus || (gpus == best_gpus && full_gpus < best_full)) {
      best = i;
      best_gpus = gpus;
      best_full = full_gpus;
    }
  }
  if (best) seen[*best].verdict = "chosen";
  if (points) *points = std::move(seen);
  ServeChoice c;
  c.best = best;
  c.explanation = fmt::format("of the {} points {} fit the GPUs' memory{}{}{}", candidates.size(), fit,
                              tpot_us > 0 ? fmt::format(", {} of those decode a token within {:.3f} ms", fast, tpot_us / 1e3) : std::string(),
                              ttft_target_us > 0 ? fmt::format(", {} of those meet the time to first token (p{} within {:.4g} ms) with "
                                                               "some count of units",
                                                               met, percentile, ttft_target_us / 1e3)
                                                 : std::string(),
                              best ? "; this one serves the traffic on the fewest GPUs" : "");
  return c;
}

void write_colocated_points_csv(std::ostream& out, const std::vector<ServeUnit>& candidates, const std::vector<ColocatedPoint>& points) {
  out << "point,time_per_token_us,output_units,prompt_units,units,gpus,verdict\n";
  for (std::size_t i = 0; i < candidates.size() && i < points.size(); ++i) {
    const auto& pt = points[i];
    fmt::print(out, "{},{:.6f},{:.6f},{:.6f},{},{},{}\n", csv_field(candidates[i].point.empty() ? candidates[i].source : candidates[i].point),
               candidates[i].time_per_token_us, pt.output_units, pt.prompt_units, pt.units > 0 ? std::to_string(pt.units) : std::string(),
               pt.gpus > 0 ? std::to_string(pt.gpus) : std::string(), csv_field(pt.verdict));
  }
}

void print_colocated(std::ostream& out, const ColocatedPlan& p, const std::vector<std::string>& written) {
  const auto& t = p.traffic;
  const auto& u = p.unit;
  const auto& q = p.queue;
  print_traffic(out, "moesim serve --colocated", t, p.prefill_tokens_per_s);
  const auto nodes = nodes_text;
  fmt::print(out, "  unit        {}: {} GPUs ({}), each step one token for {} sequences per GPU ({}-token contexts) and {} prompt "
                  "tokens per GPU of {}-token prompts, in {:.3f} ms (a token every {:.3f} ms per sequence with full chunks): {} output and {} "
                  "prompt tokens/s a unit\n",
             u.source, u.gpus, nodes(u.nodes), u.tokens_per_gpu, u.context_tokens, u.prefill_chunk, u.prompt_tokens, u.step_us / 1e3,
             u.time_per_token_us / 1e3, grouped(u.tokens_per_s), grouped(u.prompt_tokens_per_s));
  if (!u.point.empty()) fmt::print(out, "              {}: {}\n", u.point, p.choice);
  const bool output_binds = p.output_units >= p.prompt_units;
  fmt::print(out, "  units       the output takes {:.2f} units, the prompts {:.2f}: {} ({} GPUs, {}); the {} {:.0f} % used, the {} "
                  "{:.0f} %{}\n",
             p.output_units, p.prompt_units, p.units_whole, grouped(p.gpus), nodes(p.units_whole * u.nodes),
             output_binds ? "decode batches" : "prefill chunks", 100 * std::max(p.output_units, p.prompt_units) / p.units_whole,
             output_binds ? "prefill chunks" : "decode batches", 100 * std::min(p.output_units, p.prompt_units) / p.units_whole,
             p.units_whole > p.units_for_load
                 ? fmt::format(" ({} units for the load, {} more for the time to first token)", p.units_for_load,
                               p.units_whole - p.units_for_load)
                 : std::string());
  fmt::print(out, "              a token every {:.3f} ms per sequence on average ({}); {} sequences decoding at once\n",
             p.time_per_token_mean_us / 1e3,
             u.decode_only_step_us > 0
                 ? fmt::format("steps of {:.3f} ms decoding alone, {:.3f} with a full chunk on a server of the unit, {:.3f} on average",
                               u.decode_only_step_us / 1e3, u.step_us / 1e3, q.step_mean_us / 1e3)
                 : std::string("every step taken at a full chunk's time: the decode alone was not run"),
             grouped(p.sequences_decoding));
  if (u.position_us > 0)
    fmt::print(out, "              a chunk token adds {:.3g} ns to a step for each position past the scenario's mean, {:.0f} (from a run "
                    "at {}-token prompts): a unit steps at its slowest server's pace\n",
               u.position_us * 1e3, static_cast<double>(u.prompt_tokens - 1) / 2, 2 * u.prompt_tokens);
  if (p.at_load_sequences > 0)
    fmt::print(out, "              at the load, {} sequences a GPU (run again so, the chunk kept): {:.3f} ms a token with a full chunk\n",
               p.at_load_sequences, p.at_load_time_per_token_us / 1e3);
  else if (!p.at_load_note.empty())
    fmt::print(out, "              note: {}\n", p.at_load_note);
  if (const std::string lengths = prompt_lengths_text(t, u.prompt_tokens); !lengths.empty())
    fmt::print(out, "  prompts     {}; each prefilled a chunk a step, {}\n", lengths,
               u.position_us > 0 ? "its later chunks slowing its unit's steps"
                                 : "a chunk's time the scenario's wherever it stands in its prompt (twice the length was not run)");
  fmt::print(out, "  first token {:.1f} prompts/s dealt {} {} server{} ({} tokens of prompts a step each{}), {} "
                  "(simulated, {} prompts): mean {:.1f} ms, p50 {:.1f}, p90 {:.1f}, p99 {:.1f} ms; a prompt alone takes {:.1f} ms of "
                  "steps{}\n",
             q.prompts_per_s, t.prefill_router == PrefillRouter::least_work ? "each to the one with the least work on hand of the" : "in turn to the",
             grouped(q.servers), q.servers == 1 ? "" : "s", grouped(static_cast<double>(q.server_chunk)),
             u.tp > 1 ? fmt::format(": a tensor-parallel group of {}", u.tp) : std::string(": a GPU"),
             std::fabs(q.busy_at_pace - q.busy) >= 0.005
                 ? fmt::format("{:.0f} % busy at the scenario's steps, {:.0f} % at the pace its steps with prompts went", 100 * q.busy,
                               100 * q.busy_at_pace)
                 : fmt::format("{:.0f} % busy", 100 * q.busy),
             grouped(static_cast<double>(q.counted)), q.mean_us / 1e3, q.p50_us / 1e3, q.p90_us / 1e3, q.p99_us / 1e3, q.alone_us / 1e3,
             p.ttft_target_us > 0 ? fmt::format(" (target: p{} within {:.1f} ms)", p.ttft_percentile, p.ttft_target_us / 1e3)
                                  : std::string());
  if (q.busy_at_pace >= 1)
    fmt::print(out, "              note: at the pace its steps went the prompts take more than these units' chunks: the queue "
                    "grows for as long as prompts come, and its figures are those of the {} simulated (more units: --ttft)\n",
               grouped(static_cast<double>(q.counted) / 0.9));
  if (p.price_per_hour > 0)
    fmt::print(out, "  cost        {} per hour, {} per day; {:.4g} per million output tokens (prompts included)\n",
               grouped(p.price_per_hour), grouped(24 * p.price_per_hour), p.cost_per_million_output);
  if (p.power_kw > 0)
    fmt::print(out, "  power       {} kW ({:.4g} MWh a day, cluster.power), {:.4g} kWh per million output tokens\n",
               p.power_kw >= 1000 ? grouped(p.power_kw) : fmt::format("{:.4g}", p.power_kw), 24 * p.power_kw / 1e3,
               p.energy_per_million_output_kwh);
  if (p.spares.enabled()) {
    const auto& sp = p.spares;
    fmt::print(out, "  spares      a GPU failing every {} h, a unit out {:.3g} h after: a unit is down {:.3g} % of the time; {} "
                    "more {} the load's {} up {:.4g} % of the time: {} GPUs in all{}\n",
               grouped(sp.gpu_mtbf_hours), sp.repair_s / 3600, 100 * unit_down_share(u.gpus, sp),
               p.spare_units == 1 ? std::string("1 unit") : fmt::format("{} units", p.spare_units), p.spare_units == 1 ? "keeps" : "keep",
               p.units_whole, 100 * sp.availability, grouped(p.gpus + p.spare_units * u.gpus),
               p.price_per_hour > 0 ? fmt::format(", {} per hour", grouped(p.price_per_hour * (p.units_whole + p.spare_units) / p.units_whole))
                                    : std::string());
  }
  fmt::print(out, "  memory      per GPU: {:.1f} of {:.0f} GB\n", u.memory_gb, u.gpu_memory_gb);
  if (!written.empty()) {
    std::string list;
    for (const auto& w : written) list += (list.empty() ? "" : ", ") + w;
    fmt::print(out, "  wrote       {}\n", list);
  }
}

void write_colocated_csv(std::ostream& out, const ColocatedPlan& p) {
  const auto& u = p.unit;
  const auto& q = p.queue;
  fmt::print(out,
             "scenario,input_tokens_per_s,cache_hit_rate,output_tokens_per_s,prefill_tokens_per_s,unit_gpus,sequences_per_gpu,"
             "prefill_chunk,prompt_tokens,step_us,time_per_token_us,unit_output_tokens_per_s,unit_prompt_tokens_per_s,output_units,"
             "prompt_units,units_for_load,units_whole,gpus,sequences_decoding,prompts_per_s,servers,server_chunk,prefill_busy,"
             "ttft_mean_us,ttft_p50_us,ttft_p90_us,ttft_p99_us,prompt_alone_us,price_per_hour,cost_per_million_output_tokens,memory_gb,"
             "decode_only_step_us,step_mean_us,time_per_token_mean_us,prompt_tokens_mean,prompt_length_sigma,prompt_lengths_file,"
             "prefill_router,availability,spare_units,gpus_with_spares,power_kw,energy_kwh_per_million_output_tokens,at_load_sequences,"
             "at_load_time_per_token_us,position_us,prefill_busy_at_pace\n");
  fmt::print(out, "{},{:.10g},{:.10g},{:.10g},{:.10g},{},{},{},{},{:.6f},{:.6f},{:.10g},{:.10g},{:.6f},{:.6f},{},{},{},{:.10g},{:.10g},{},{},"
                  "{:.6f},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},{:.10g},{:.10g},{:.3f},{},{:.3f},{:.3f},{:.10g},{:.10g},{},{},",
             csv_field(u.source), p.traffic.input_tokens_per_s, p.traffic.cache_hit_rate, p.traffic.output_tokens_per_s,
             p.prefill_tokens_per_s, u.gpus, u.tokens_per_gpu, u.prefill_chunk, u.prompt_tokens, u.step_us, u.time_per_token_us,
             u.tokens_per_s, u.prompt_tokens_per_s, p.output_units, p.prompt_units, p.units_for_load, p.units_whole, p.gpus,
             p.sequences_decoding, q.prompts_per_s, q.servers, q.server_chunk, q.busy, q.mean_us, q.p50_us, q.p90_us, q.p99_us,
             q.alone_us, p.price_per_hour, p.cost_per_million_output, u.memory_gb,
             u.decode_only_step_us > 0 ? fmt::format("{:.6f}", u.decode_only_step_us) : std::string(), q.step_mean_us,
             p.time_per_token_mean_us, static_cast<double>(u.prompt_tokens) * prompt_sizes(p.traffic, u.prompt_tokens).mean(),
             p.traffic.prompt_length_sigma, csv_field(p.traffic.prompt_lengths_source),
             p.traffic.prefill_router == PrefillRouter::least_work ? "least_work" : "round_robin");
  if (p.spares.enabled())
    fmt::print(out, "{:.10g},{},{},", p.spares.availability, p.spare_units, p.gpus + p.spare_units * u.gpus);
  else
    out << ",,,";
  if (p.power_kw > 0)
    fmt::print(out, "{:.10g},{:.10g},", p.power_kw, p.energy_per_million_output_kwh);
  else
    out << ",,";
  if (p.at_load_sequences > 0)
    fmt::print(out, "{},{:.6f},", p.at_load_sequences, p.at_load_time_per_token_us);
  else
    out << ",,";
  fmt::print(out, "{:.6g},{:.6f}\n", u.position_us, q.busy_at_pace);
}

void print_service(std::ostream& out, const ServePlan& p, const std::vector<std::string>& written) {
  const auto& t = p.traffic;
  const auto& pf = p.prefill;
  const auto& dc = p.decode;
  print_traffic(out, "moesim serve", t, p.prefill_tokens_per_s);
  const auto nodes = nodes_text;
  fmt::print(out, "  prefill     {}: a unit of {} GPUs ({}) prefills {} tokens/s, {} tokens per GPU ({}) in {:.1f} ms\n",
             pf.source, pf.gpus, nodes(pf.nodes), grouped(pf.tokens_per_s), grouped(static_cast<double>(pf.tokens_per_gpu)),
             pf.cached_prefix > 0 ? fmt::format("prompts of {} new tokens after {} cached", pf.prompt_tokens, pf.cached_prefix)
                                  : fmt::format("{}-token prompts", pf.prompt_tokens),
             pf.step_us / 1e3);
  // The scenario's prompts against the traffic's cache hits: the new tokens of a prompt with a
  // cached prefix attend to it, which the scenario models only with workload.cached_prefix.
  const double cached_share =
      static_cast<double>(pf.cached_prefix) / static_cast<double>(pf.cached_prefix + std::max<std::int64_t>(pf.prompt_tokens, 1));
  if (std::fabs(cached_share - t.cache_hit_rate) > 0.05)
    fmt::print(out, "              note: {:.1f} % of the traffic's prompt tokens are cache hits, {:.1f} % of the scenario's prompts "
                    "(workload.cached_prefix over the whole prompt): its new tokens attend to {} prefix than the traffic's\n",
               100 * t.cache_hit_rate, 100 * cached_share, cached_share < t.cache_hit_rate ? "a shorter" : "a longer");
  if (!pf.point.empty()) fmt::print(out, "              {}: {}\n", pf.point, p.prefill_choice);
  const auto& b = p.prefill_batch;
  const auto& q = p.prefill_queue;
  fmt::print(out, "              the load takes {:.2f} units: {} ({} GPUs, {}), {:.0f} % busy{}\n", p.prefill_units,
             p.prefill_units_whole, grouped(p.prefill_gpus), nodes(p.prefill_units_whole * pf.nodes),
             100 * p.prefill_units / p.prefill_units_whole,
             p.prefill_units_whole > p.prefill_units_for_load
                 ? fmt::format(" ({} units for the load, {} more for the time to first token)", p.prefill_units_for_load,
                               p.prefill_units_whole - p.prefill_units_for_load)
                 : std::string());
  if (b.full_prompts == 1)  // a prompt a batch (or more batches a prompt: the note below)
    fmt::print(out, "              a batch: one prompt in {:.1f} ms\n", b.full_us / 1e3);
  else
    fmt::print(out, "              a batch: {} prompts in {:.1f} ms{}; one prompt in about {:.1f} ms (estimated)\n", grouped(b.full_prompts),
               b.full_us / 1e3,
               b.full_prompts > b.least_prompts
                   ? fmt::format(", {} (one a GPU) in {:.1f} ms, linear between", grouped(b.least_prompts), b.least_us / 1e3)
                   : std::string(),
               b.us(1) / 1e3);
  if (!p.batch_note.empty()) fmt::print(out, "              note: {}\n", p.batch_note);
  if (const std::string lengths = prompt_lengths_text(p.traffic, pf.prompt_tokens); !lengths.empty())
    fmt::print(out, "  prompts     {}; a batch holds up to a full batch's tokens, its time linear in them{}\n", lengths,
               b.square_us > 0
                   ? fmt::format(", and a prompt's attention growing with the square of its length (a prompt of twice the scenario's "
                                 "length takes {:.2f} ms more than two; from a run at half the length): a prompt token takes {:.3f} "
                                 "times the scenario's",
                                 2 * b.square_us / 1e3, prompt_time_factor(b, prompt_sizes(p.traffic, pf.prompt_tokens)))
                   : std::string(" (a long prompt's attention, which grows with the square of its length, is not scaled)"));
  fmt::print(out, "  first token {:.1f} prompts/s into the {} unit{} queue{} (simulated, {} prompts, batches of {:.1f} on average): "
                  "mean {:.1f} ms, p50 {:.1f}, p90 {:.1f}, p99 {:.1f} ms{}\n",
             q.prompts_per_s, q.units, q.units == 1 ? "'s" : "s'",
             t.prefill_router == PrefillRouter::least_work ? ", each prompt to the unit with the least work on hand" : "",
             grouped(static_cast<double>(q.counted)), q.mean_batch, q.mean_us / 1e3, q.p50_us / 1e3,
             q.p90_us / 1e3, q.p99_us / 1e3,
             p.ttft_target_us > 0 ? fmt::format(" (target: p{} within {:.1f} ms)", p.ttft_percentile, p.ttft_target_us / 1e3)
                                  : std::string());
  fmt::print(out, "  decode      {}: a unit of {} GPUs ({}) decodes {} tokens/s, {} sequences per GPU ({}-token contexts) at {:.3f} ms a token ({:.1f} tokens/s each)\n",
             dc.source, dc.gpus, nodes(dc.nodes), grouped(dc.tokens_per_s), dc.tokens_per_gpu, dc.context_tokens,
             dc.time_per_token_us / 1e3, 1e6 / dc.time_per_token_us);
  if (!dc.point.empty()) fmt::print(out, "              {}: {}\n", dc.point, p.decode_choice);
  fmt::print(out, "              the load takes {:.2f} units: {} ({} GPUs, {}), {:.0f} % busy; {} sequences decoding at once\n",
             p.decode_units, p.decode_units_whole, grouped(p.decode_gpus), nodes(p.decode_units_whole * dc.nodes),
             100 * p.decode_units / p.decode_units_whole, grouped(p.sequences_decoding));
  if (p.decode_at_load_sequences > 0)
    fmt::print(out, "              at the load, {} sequences a GPU (run again so): {:.3f} ms a token ({:.1f} tokens/s each)\n",
               p.decode_at_load_sequences, p.decode_at_load_time_per_token_us / 1e3, 1e6 / p.decode_at_load_time_per_token_us);
  else if (!p.decode_at_load_note.empty())
    fmt::print(out, "              note: {}\n", p.decode_at_load_note);
  const int gpus = p.prefill_gpus + p.decode_gpus;
  fmt::print(out, "  service     {} GPUs ({}), {:.0f} % prefill; {:.1f} GPUs at full use ({:.2f} prefill units, {:.2f} decode units)\n",
             grouped(gpus), nodes(p.prefill_units_whole * pf.nodes + p.decode_units_whole * dc.nodes), 100.0 * p.prefill_gpus / gpus,
             p.prefill_units * pf.gpus + p.decode_units * dc.gpus, p.prefill_units, p.decode_units);
  const auto nic = [](double rate, double nic_rate) {
    return nic_rate > 0 ? fmt::format(" ({:.1f} % of its NIC)", 100 * rate / nic_rate) : std::string();
  };
  fmt::print(out, "  KV caches   {:.1f} KB a token; each prefill GPU sends {}{}, each decode GPU receives {}{} (not simulated)\n",
             dc.kv_bytes_per_token / 1e3, bytes_rate(p.kv_prefill_bytes_per_s), nic(p.kv_prefill_bytes_per_s, pf.nic_bytes_per_s),
             bytes_rate(p.kv_decode_bytes_per_s), nic(p.kv_decode_bytes_per_s, dc.nic_bytes_per_s));
  if (p.price_per_hour > 0)
    fmt::print(out, "  cost        {} per hour, {} per day; {:.4g} per million output tokens (prompts included)\n",
               grouped(p.price_per_hour), grouped(24 * p.price_per_hour), p.cost_per_million_output);
  else if (pf.gpu_hour_price > 0 || dc.gpu_hour_price > 0)
    fmt::print(out, "  cost        not priced: only the {} scenario has cluster.gpu_hour_price\n",
               pf.gpu_hour_price > 0 ? "prefill" : "decode");
  if (p.power_kw > 0)
    fmt::print(out, "  power       {} kW ({:.4g} MWh a day, cluster.power of each scenario), {:.4g} kWh per million output tokens\n",
               p.power_kw >= 1000 ? grouped(p.power_kw) : fmt::format("{:.4g}", p.power_kw), 24 * p.power_kw / 1e3,
               p.energy_per_million_output_kwh);
  if (p.spares.enabled()) {
    const auto& sp = p.spares;
    const int spare_gpus = p.prefill_spares * pf.gpus + p.decode_spares * dc.gpus;
    fmt::print(out, "  spares      a GPU failing every {} h, a unit out {:.3g} h after: a prefill unit is down {:.3g} % of the time, a decode "
                    "unit {:.3g} %; {} prefill and {} decode unit{} more keep the load's {} and {} up {:.4g} % of the time: {} GPUs in all{}\n",
               grouped(sp.gpu_mtbf_hours), sp.repair_s / 3600, 100 * unit_down_share(pf.gpus, sp), 100 * unit_down_share(dc.gpus, sp),
               p.prefill_spares, p.decode_spares, p.decode_spares == 1 ? "" : "s", p.prefill_units_whole, p.decode_units_whole,
               100 * sp.availability, grouped(gpus + spare_gpus),
               p.price_per_hour > 0 ? fmt::format(", {} per hour", grouped(p.price_per_hour + p.spare_price_per_hour)) : std::string());
  }
  fmt::print(out, "  memory      per GPU: prefill {:.1f} of {:.0f} GB, decode {:.1f} of {:.0f} GB\n", pf.memory_gb, pf.gpu_memory_gb,
             dc.memory_gb, dc.gpu_memory_gb);
  if (!written.empty()) {
    std::string list;
    for (const auto& w : written) list += (list.empty() ? "" : ", ") + w;
    fmt::print(out, "  wrote       {}\n", list);
  }
}

void write_service_csv(std::ostream& out, const ServePlan& p) {
  fmt::print(out,
             "prefill_scenario,decode_scenario,input_tokens_per_s,cache_hit_rate,output_tokens_per_s,prefill_tokens_per_s,"
             "prefill_unit_gpus,prefill_unit_tokens_per_s,prefill_step_us,prefill_units,prefill_units_whole,prefill_gpus,"
             "decode_unit_gpus,decode_unit_tokens_per_s,time_per_token_us,decode_units,decode_units_whole,decode_gpus,gpus,"
             "sequences_decoding,kv_bytes_per_token,kv_prefill_bytes_per_s_per_gpu,kv_decode_bytes_per_s_per_gpu,price_per_hour,"
             "cost_per_million_output_tokens,prefill_memory_gb,decode_memory_gb,prefill_units_for_load,batch_prompts,"
             "batch_least_prompts,batch_least_us,batch_one_prompt_us,prompts_per_s,ttft_mean_us,ttft_p50_us,ttft_p90_us,ttft_p99_us,mean_batch_prompts,"
             "prompt_tokens_mean,prompt_length_sigma,prompt_lengths_file,prompt_square_us,prefill_router,"
             "availability,prefill_spares,decode_spares,gpus_with_spares,power_kw,energy_kwh_per_million_output_tokens,"
             "decode_at_load_sequences,decode_at_load_time_per_token_us\n");
  const auto& b = p.prefill_batch;
  const auto& q = p.prefill_queue;
  fmt::print(out, "{},{},{:.10g},{:.10g},{:.10g},{:.10g},{},{:.10g},{:.6f},{:.6f},{},{},{},{:.10g},{:.6f},{:.6f},{},{},{},{:.10g},{:.0f},{:.10g},{:.10g},{:.10g},{:.10g},{:.3f},{:.3f},"
                  "{},{},{},{:.6f},{:.6f},{:.10g},{:.3f},{:.3f},{:.3f},{:.3f},{:.4f},{:.10g},{:.10g},{},{:.6f},{},",
             csv_field(p.prefill.source), csv_field(p.decode.source), p.traffic.input_tokens_per_s, p.traffic.cache_hit_rate,
             p.traffic.output_tokens_per_s, p.prefill_tokens_per_s, p.prefill.gpus, p.prefill.tokens_per_s, p.prefill.step_us,
             p.prefill_units, p.prefill_units_whole, p.prefill_gpus, p.decode.gpus, p.decode.tokens_per_s, p.decode.time_per_token_us,
             p.decode_units, p.decode_units_whole, p.decode_gpus, p.prefill_gpus + p.decode_gpus, p.sequences_decoding,
             p.decode.kv_bytes_per_token, p.kv_prefill_bytes_per_s, p.kv_decode_bytes_per_s, p.price_per_hour,
             p.cost_per_million_output, p.prefill.memory_gb, p.decode.memory_gb, p.prefill_units_for_load, b.full_prompts,
             b.least_prompts, b.least_us, b.us(1), q.prompts_per_s, q.mean_us, q.p50_us, q.p90_us, q.p99_us, q.mean_batch,
             static_cast<double>(p.prefill.prompt_tokens) * prompt_sizes(p.traffic, p.prefill.prompt_tokens).mean(),
             p.traffic.prompt_length_sigma, csv_field(p.traffic.prompt_lengths_source), b.square_us,
             p.traffic.prefill_router == PrefillRouter::least_work ? "least_work" : "round_robin");
  if (p.spares.enabled())
    fmt::print(out, "{:.10g},{},{},{},", p.spares.availability, p.prefill_spares, p.decode_spares,
               p.prefill_gpus + p.decode_gpus + p.prefill_spares * p.prefill.gpus + p.decode_spares * p.decode.gpus);
  else
    out << ",,,,";
  if (p.power_kw > 0)
    fmt::print(out, "{:.10g},{:.10g},", p.power_kw, p.energy_per_million_output_kwh);
  else
    out << ",,";
  if (p.decode_at_load_sequences > 0)
    fmt::print(out, "{},{:.6f}\n", p.decode_at_load_sequences, p.decode_at_load_time_per_token_us);
  else
    out << ",\n";
}

}  // namespace moesim::tools
