#include "tools/serve.hpp"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <algorithm>
#include <cmath>

#include "routing/moe_spec.hpp"
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

// Whole units for a load of `units` (at least one); a load a hair over a whole number of units
// (rounding) does not take one more.
int whole_units(double units) { return std::max(1, static_cast<int>(std::ceil(units * (1 - 1e-12)))); }

std::string bytes_rate(double bytes_per_s) {
  return bytes_per_s >= 1e9 ? fmt::format("{:.2f} GB/s", bytes_per_s / 1e9) : fmt::format("{:.1f} MB/s", bytes_per_s / 1e6);
}

}  // namespace

void check_traffic(const ServeTraffic& t) {
  if (!(t.input_tokens_per_s > 0)) throw ServeError("--input-tokens-per-s must be a rate > 0 (prompt tokens a second, cache hits included)");
  if (!(t.output_tokens_per_s > 0)) throw ServeError("--output-tokens-per-s must be a rate > 0 (tokens generated a second)");
  if (!(t.cache_hit_rate >= 0 && t.cache_hit_rate < 1))
    throw ServeError(fmt::format("--cache-hit-rate must be in [0, 1) (the share of prompt tokens whose KV cache is found), got {}",
                                 t.cache_hit_rate));
}

void check_serve_scenario(const scenarios::Scenario& sc, bool prefill) {
  const std::string want = prefill ? "prefill" : "decode";
  if (sc.workload_kind != want)
    throw ServeError(fmt::format("{}: the {} scenario must have workload.kind: {} (it has '{}')", sc.source, want, want,
                                 sc.workload_kind));
  if (sc.forward.pp > 1)
    throw ServeError(fmt::format("{}: pipeline stages are not planned for serving here (parallelism.pp: {}); use one stage",
                                 sc.source, sc.forward.pp));
}

ServeUnit serve_unit(const scenarios::Scenario& sc, const std::map<std::string, std::string>& summary, bool prefill) {
  check_serve_scenario(sc, prefill);
  const auto& f = sc.forward;
  ServeUnit u;
  u.source = sc.source;
  u.gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  u.nodes = sc.cluster.nodes;
  u.tokens_per_s = field(summary, "tokens_per_s");
  u.step_us = field(summary, "step_time_us");
  u.time_per_token_us = prefill ? 0 : field(summary, "time_per_token_us");
  u.tokens_per_gpu = prefill ? f.tokens_per_gpu : f.sequences();
  u.prompt_tokens = prefill ? f.sequence_length : 0;
  u.cached_prefix = prefill ? f.cached_prefix : 0;
  u.context_tokens = prefill ? 0 : f.context_length;
  // Every layer with attention caches: the MoE layers (with the MTP layers run) and the dense ones;
  // all of a token's cache, not a tensor-parallel GPU's share of its heads.
  routing::MoeModelSpec whole = f.model;
  whole.tp = 1;
  u.kv_bytes_per_token = static_cast<double>(routing::kv_cache_token_bytes(whole)) *
                         static_cast<double>(f.model.moe_layers + f.model.dense_layers);
  u.nic_bytes_per_s = sc.cluster.scale_out.present ? static_cast<double>(sc.cluster.scale_out.nic_bandwidth.bytes_per_s()) : 0;
  u.gpu_hour_price = sc.gpu_hour_price;
  u.memory_gb = field(summary, "memory_gb_max");
  u.gpu_memory_gb = field(summary, "gpu_memory_gb");
  const auto fits = summary.find("fits_memory");
  u.fits = fits == summary.end() || fits->second != "no";
  if (!(u.tokens_per_s > 0)) throw ServeError(fmt::format("{}: the run served no tokens", sc.source));
  return u;
}

ServeChoice choose_unit(const std::vector<ServeUnit>& candidates, double load_tokens_per_s, double target_us, bool prefill) {
  ServeChoice c;
  std::size_t fit = 0, met = 0;
  double best_gpus = 0, best_full = 0;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const auto& u = candidates[i];
    if (!u.fits) continue;
    ++fit;
    const double time = prefill ? u.step_us : u.time_per_token_us;
    if (target_us > 0 && time > target_us) continue;
    ++met;
    const double full = load_tokens_per_s / u.tokens_per_s * u.gpus;  // GPUs at full use
    const double gpus = static_cast<double>(whole_units(load_tokens_per_s / u.tokens_per_s)) * u.gpus;
    if (!c.best || gpus < best_gpus || (gpus == best_gpus && full < best_full)) {
      c.best = i;
      best_gpus = gpus;
      best_full = full;
    }
  }
  const std::string side = prefill ? "prefill" : "decode";
  const std::string target = prefill ? fmt::format("prefill a batch within {:.3f} ms", target_us / 1e3)
                                     : fmt::format("decode a token within {:.3f} ms", target_us / 1e3);
  if (candidates.size() == 1) {
    const auto& u = candidates[0];
    c.explanation = c.best ? std::string()
                    : !u.fits ? fmt::format("{}: the {} scenario does not fit the GPUs' memory ({:.1f} GB of {:.0f} GB)", u.source,
                                            side, u.memory_gb, u.gpu_memory_gb)
                              : fmt::format("{}: the {} scenario takes {:.3f} ms{}, over the target of {:.3f} ms", u.source, side,
                                            (prefill ? u.step_us : u.time_per_token_us) / 1e3,
                                            prefill ? " a batch" : " a token", target_us / 1e3);
    return c;
  }
  c.explanation = fmt::format("of the {} {} points {} fit the GPUs' memory{}{}", candidates.size(), side, fit,
                              target_us > 0 ? fmt::format(" and {} of those {}", met, target) : std::string(),
                              c.best ? "; this one serves the load on the fewest GPUs" : "");
  return c;
}

ServePlan plan_service(const ServeTraffic& t, const ServeUnit& prefill, const ServeUnit& decode) {
  check_traffic(t);
  ServePlan p;
  p.traffic = t;
  p.prefill = prefill;
  p.decode = decode;
  p.prefill_tokens_per_s = t.input_tokens_per_s * (1 - t.cache_hit_rate);
  p.prefill_units = p.prefill_tokens_per_s / prefill.tokens_per_s;
  p.decode_units = t.output_tokens_per_s / decode.tokens_per_s;
  p.prefill_units_whole = whole_units(p.prefill_units);
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
  return p;
}

void print_service(std::ostream& out, const ServePlan& p, const std::vector<std::string>& written) {
  const auto& t = p.traffic;
  const auto& pf = p.prefill;
  const auto& dc = p.decode;
  fmt::print(out, "moesim serve: {} prompt tokens/s{}, {} output tokens/s\n", grouped(t.input_tokens_per_s),
             t.cache_hit_rate > 0 ? fmt::format(" ({:.1f} % from the KV cache, {} to prefill)", 100 * t.cache_hit_rate,
                                                grouped(p.prefill_tokens_per_s))
                                  : std::string(),
             grouped(t.output_tokens_per_s));
  const auto nodes = [](int n) { return fmt::format("{} node{}", grouped(n), n == 1 ? "" : "s"); };
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
  // A prompt that arrives while its unit runs a batch waits for that batch, then runs in the next:
  // its first token comes one to two batches after it arrives, more where batches queue.
  fmt::print(out, "              the load takes {:.2f} units: {} ({} GPUs, {}), {:.0f} % busy; a prompt's first token comes one to two batches, "
                  "{:.1f} to {:.1f} ms, after it arrives, more where prompts queue\n",
             p.prefill_units, p.prefill_units_whole, grouped(p.prefill_gpus), nodes(p.prefill_units_whole * pf.nodes),
             100 * p.prefill_units / p.prefill_units_whole, pf.step_us / 1e3, 2 * pf.step_us / 1e3);
  fmt::print(out, "  decode      {}: a unit of {} GPUs ({}) decodes {} tokens/s, {} sequences per GPU ({}-token contexts) at {:.3f} ms a token ({:.1f} tokens/s each)\n",
             dc.source, dc.gpus, nodes(dc.nodes), grouped(dc.tokens_per_s), dc.tokens_per_gpu, dc.context_tokens,
             dc.time_per_token_us / 1e3, 1e6 / dc.time_per_token_us);
  if (!dc.point.empty()) fmt::print(out, "              {}: {}\n", dc.point, p.decode_choice);
  fmt::print(out, "              the load takes {:.2f} units: {} ({} GPUs, {}), {:.0f} % busy; {} sequences decoding at once\n",
             p.decode_units, p.decode_units_whole, grouped(p.decode_gpus), nodes(p.decode_units_whole * dc.nodes),
             100 * p.decode_units / p.decode_units_whole, grouped(p.sequences_decoding));
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
             "cost_per_million_output_tokens,prefill_memory_gb,decode_memory_gb\n");
  fmt::print(out, "{},{},{:.10g},{:.10g},{:.10g},{:.10g},{},{:.10g},{:.6f},{:.6f},{},{},{},{:.10g},{:.6f},{:.6f},{},{},{},{:.10g},{:.0f},{:.10g},{:.10g},{:.10g},{:.10g},{:.3f},{:.3f}\n",
             csv_field(p.prefill.source), csv_field(p.decode.source), p.traffic.input_tokens_per_s, p.traffic.cache_hit_rate,
             p.traffic.output_tokens_per_s, p.prefill_tokens_per_s, p.prefill.gpus, p.prefill.tokens_per_s, p.prefill.step_us,
             p.prefill_units, p.prefill_units_whole, p.prefill_gpus, p.decode.gpus, p.decode.tokens_per_s, p.decode.time_per_token_us,
             p.decode_units, p.decode_units_whole, p.decode_gpus, p.prefill_gpus + p.decode_gpus, p.sequences_decoding,
             p.decode.kv_bytes_per_token, p.kv_prefill_bytes_per_s, p.kv_decode_bytes_per_s, p.price_per_hour,
             p.cost_per_million_output, p.prefill.memory_gb, p.decode.memory_gb);
}

}  // namespace moesim::tools
