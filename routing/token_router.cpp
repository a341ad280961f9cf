#include "routing/token_router.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <span>

#include "sim/assert.hpp"
#include "sim/parallel.hpp"

namespace moesim::routing {

namespace {

// Group-limited routing from scores, group_choice best_two: every expert scores log(weight) +
// Gumbel(0, 1), drawn as -log of a unit exponential; groups score their best two summed; the
// token takes the k best experts of the best `max_groups` groups, the best first (ties: lower
// id). (best_expert needs no scores: see route_synthetic.) The logarithm is monotonic, so the
// scores are compared as what they are the logarithm of: an expert's weight / its exponential,
// a group's the product of its best two. The same order, without 256 logarithms a token (which
// made this five times as slow).
void route_by_scores(sim::Rng& rng, const std::vector<double>& weight, int group_size, int max_groups, std::vector<double>& key,
                     std::vector<int>& order, std::vector<int>& candidates, std::span<int> chosen) {
  const int experts = static_cast<int>(weight.size());
  const int groups = experts / group_size;
  constexpr double kNone = 0;  // the score of no expert: exp(-infinity)
  for (std::size_t e = 0; e < weight.size(); ++e) key[e] = weight[e] / rng.exponential(1.0);
  for (int g = 0; g < groups; ++g) {  // group g's score goes to key[experts + g]
    double first = kNone, second = kNone;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) {  // the best two, without branches
      const double x = key[static_cast<std::size_t>(e)];
      second = std::max(second, std::min(first, x));
      first = std::max(first, x);
    }
    key[static_cast<std::size_t>(experts + g)] = first * second;
  }
  const auto better = [&](int a, int b) {
    const double x = key[static_cast<std::size_t>(a)], y = key[static_cast<std::size_t>(b)];
    return x != y ? x > y : a < b;
  };
  order.resize(static_cast<std::size_t>(groups));
  for (int g = 0; g < groups; ++g) order[static_cast<std::size_t>(g)] = experts + g;
  std::partial_sort(order.begin(), order.begin() + max_groups, order.end(), better);
  candidates.clear();
  for (int i = 0; i < max_groups; ++i) {
    const int g = order[static_cast<std::size_t>(i)] - experts;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) candidates.push_back(e);
  }
  const auto k = static_cast<std::ptrdiff_t>(chosen.size());
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(), better);
  std::copy(candidates.begin(), candidates.begin() + k, chosen.begin());
}

}  // namespace

TokenRouter::TokenRouter(const MoeModelSpec& model, const RoutingSpec& spec, int ep, std::uint64_t seed, bool gates)
    : model_(model), spec_(spec), ep_(ep), seed_(seed), gates_(gates) {
  for (int l = 0; l < model.moe_layers; ++l) {
    laws_.push_back(layer_law(spec_, model.experts, ep, seed, l));
    samplers_.emplace_back(laws_.back().weights);
  }
}

std::string TokenRouter::stream(const std::string& what, int layer, int unit, int micro_batch) const {
  // Step 0 and micro-batch 0 keep the stream names of versions without them, so their runs
  // reproduce.
  std::string s = fmt::format("routing/{}layer{}/{}{}", what, layer, what.empty() ? "gpu" : "unit", unit);
  if (spec_.step != 0) s += fmt::format("/step{}", spec_.step);
  if (micro_batch != 0) s += fmt::format("/microbatch{}", micro_batch);
  return s;
}

std::vector<double> TokenRouter::batch_weights(int layer, int first_gpu, int micro_batch) const {
  if (spec_.dirichlet_concentration <= 0 && spec_.burst_probability <= 0) return {};
  sim::Rng rng(seed_, stream("batch/", layer, first_gpu, micro_batch));
  const auto& base = laws_[static_cast<std::size_t>(layer)].weights;
  std::vector<double> w = base;
  if (spec_.dirichlet_concentration > 0) {
    double total = 0;
    for (std::size_t e = 0; e < w.size(); ++e)
      total += (w[e] = base[e] > 0 ? rng.gamma(spec_.dirichlet_concentration * base[e]) : 0.0);
    if (total > 0) {
      for (auto& x : w) x /= total;
    } else {
      w = base;  // every gamma underflowed (tiny shapes): keep the law
    }
  }
  if (spec_.burst_probability > 0 && rng.uniform01() < spec_.burst_probability) {
    const auto e = static_cast<std::size_t>(rng.uniform_int(w.size()));
    for (auto& x : w) x *= 1 - spec_.burst_fraction;
    w[e] += spec_.burst_fraction;
  }
  return w;
}

void TokenRouter::route(int layer, int first_gpu, std::int64_t tokens_per_rank, const TokenBatch* previous,
                        TokenBatch& out, int micro_batch) const {
  if (spec_.distribution == Distribution::trace && !spec_.trace->layer_tokens.empty()) {
    out = spec_.trace->layer_tokens[static_cast<std::size_t>(layer)];
    MOESIM_ASSERT(out.ranks == ep_ && out.tokens_per_rank == tokens_per_rank, "token trace of another shape");
    return;
  }
  out.top_k = model_.top_k;
  out.ranks = ep_;
  out.tokens_per_rank = tokens_per_rank;
  out.experts.assign(static_cast<std::size_t>(out.tokens() * out.top_k), 0);
  out.gates.clear();
  if (spec_.distribution == Distribution::trace) deal_counts(layer, first_gpu, micro_batch, out);
  else route_synthetic(layer, first_gpu, micro_batch, previous, out);
  if (gates_) draw_gates(layer, first_gpu, micro_batch, out);
}

void TokenRouter::route_synthetic(int layer, int first_gpu, int micro_batch, const TokenBatch* previous,
                                  TokenBatch& out) const {
  const int k = model_.top_k;
  const std::vector<double> varied = batch_weights(layer, first_gpu, micro_batch);
  const ExpertSampler* sampler = &samplers_[static_cast<std::size_t>(layer)];
  std::optional<ExpertSampler> own;
  if (!varied.empty()) sampler = &own.emplace(varied);
  // Group limit: a sampler over the groups' summed weights.
  const int group_size = spec_.max_groups > 0 ? model_.experts / spec_.groups : 0;
  std::optional<ExpertSampler> group_sampler;
  if (spec_.max_groups > 0) {
    std::vector<double> gw(static_cast<std::size_t>(spec_.groups), 0.0);
    for (int e = 0; e < model_.experts; ++e)
      gw[static_cast<std::size_t>(e / group_size)] += sampler->weights()[static_cast<std::size_t>(e)];
    group_sampler.emplace(std::move(gw));
  }
  const bool best_two = spec_.max_groups > 0 && spec_.group_choice == GroupChoice::best_two;
  std::vector<double> key;
  std::vector<int> order, candidates;
  if (best_two) {
    key.resize(sampler->weights().size() + static_cast<std::size_t>(spec_.groups));
  }
  const bool correlated = spec_.layer_correlation > 0 && layer > 0;
  MOESIM_ASSERT(!correlated || (previous && previous->top_k == k && previous->tokens() == out.tokens()),
                "correlated routing needs the previous layer's batch");
  const LayerLaw& now = laws_[static_cast<std::size_t>(layer)];
  const LayerLaw* before = correlated ? &laws_[static_cast<std::size_t>(layer - 1)] : nullptr;
  std::vector<int> picked_groups(static_cast<std::size_t>(std::max(spec_.max_groups, 1)));
  // The experts a token may still take, as a bit set (ExpertSampler::draw_allowed): all of them,
  // or those of its groups, less those taken. every: all experts; in_group[g]: group g's.
  const auto words = static_cast<std::size_t>(sampler->words());
  const auto bit = [](int e) { return std::uint64_t{1} << (e & 63); };
  std::vector<std::uint64_t> every(words, 0), allowed(words), in_group;
  std::vector<int> group_of;
  for (int e = 0; e < model_.experts; ++e) every[static_cast<std::size_t>(e >> 6)] |= bit(e);
  if (group_size > 0) {
    in_group.assign(static_cast<std::size_t>(spec_.groups) * words, 0);
    for (int e = 0; e < model_.experts; ++e) {
      group_of.push_back(e / group_size);
      in_group[static_cast<std::size_t>(e / group_size) * words + static_cast<std::size_t>(e >> 6)] |= bit(e);
    }
  }
  const auto take = [&](int e) { allowed[static_cast<std::size_t>(e >> 6)] &= ~bit(e); };
  std::vector<std::uint64_t> of_groups(words);
  // With few groups (DeepSeek-V3 has 8), the experts of every set of groups, looked up: a token
  // sets its groups once, and building the set each time was a tenth of the routing's time.
  constexpr int kTabledGroups = 10;
  std::vector<std::uint64_t> of_group_set;
  if (group_size > 0 && spec_.groups <= kTabledGroups) {
    const auto sets = std::size_t{1} << spec_.groups;
    of_group_set.assign(sets * words, 0);
    for (std::size_t set = 1; set < sets; ++set) {
      // The set less its lowest group, and that group.
      const auto low = static_cast<std::size_t>(std::countr_zero(set));
      for (std::size_t w = 0; w < words; ++w)
        of_group_set[set * words + w] = of_group_set[(set & (set - 1)) * words + w] | in_group[low * words + w];
    }
  }
  const auto only_groups = [&](std::uint64_t groups) {  // allowed &= the experts of `groups`
    if (!of_group_set.empty()) {
      const std::uint64_t* g = &of_group_set[static_cast<std::size_t>(groups) * words];
      for (std::size_t w = 0; w < words; ++w) allowed[w] &= g[w];
      return;
    }
    std::fill(of_groups.begin(), of_groups.end(), 0);
    for (; groups != 0; groups &= groups - 1) {
      const std::uint64_t* g = &in_group[static_cast<std::size_t>(std::countr_zero(groups)) * words];
      for (std::size_t w = 0; w < words; ++w) of_groups[w] |= g[w];
    }
    for (std::size_t w = 0; w < words; ++w) allowed[w] &= of_groups[w];
  };
  for (int src = 0; src < ep_; ++src) {
    sim::Rng rng(seed_, stream("", layer, first_gpu + src, micro_batch));
    if (!group_sampler && !correlated) {
      const std::size_t at = static_cast<std::size_t>(src * out.tokens_per_rank * k);
      sampler->sample_tokens(rng, std::span<int>(out.experts.data() + at, static_cast<std::size_t>(out.tokens_per_rank * k)), k);
      continue;
    }
    for (std::int64_t t = 0; t < out.tokens_per_rank; ++t) {
      const std::size_t at = static_cast<std::size_t>((src * out.tokens_per_rank + t) * k);
      const std::span<int> chosen(out.experts.data() + at, static_cast<std::size_t>(k));
      if (!group_sampler && !correlated) {
        sampler->sample_top_k(rng, chosen);
        continue;
      }
      if (best_two) {
        route_by_scores(rng, sampler->weights(), group_size, spec_.max_groups, key, order, candidates, chosen);
        continue;
      }
      if (spec_.group_choice == GroupChoice::best_expert) {
        // With scores log(w) + Gumbel noise, the experts in falling score order are a draw
        // without replacement by weight (the Gumbel-top-k trick), and the groups with the best
        // experts are the first max_groups groups to appear in it. So: draw by weight, from all
        // experts until max_groups groups have appeared, then only inside them: the same law
        // as scoring every expert, at k draws a token.
        std::uint64_t seen = 0;
        int count = 0;
        std::copy_n(every.data(), words, allowed.data());
        sampler->draw_allowed_run(rng, allowed.data(), chosen.data(), k, [&](int e, std::uint64_t ok) {
          const std::uint64_t now_seen = seen | ok << group_of[static_cast<std::size_t>(e)];
          count += now_seen != seen;
          seen = now_seen;
          if (count == spec_.max_groups) [[unlikely]] {  // once a token: no group is new after it
            only_groups(seen);
            ++count;
          }
        });
        continue;
      }
      allowed = every;
      if (group_sampler) {
        group_sampler->sample_top_k(rng, picked_groups);
        std::uint64_t mask = 0;
        for (const int g : picked_groups) mask |= std::uint64_t{1} << g;
        only_groups(mask);
      }
      if (!correlated) {
        sampler->draw_allowed_run(rng, allowed.data(), chosen.data(), k, [](int, std::uint64_t) {});
        continue;
      }
      for (int j = 0; j < k; ++j) {
        if (correlated && rng.uniform01() < spec_.layer_correlation) {
          const int was = previous->experts[at + static_cast<std::size_t>(j)];
          const int e = now.expert_of_rank[static_cast<std::size_t>(before->rank_of_expert[static_cast<std::size_t>(was)])];
          if ((allowed[static_cast<std::size_t>(e >> 6)] & bit(e)) != 0) {
            chosen[static_cast<std::size_t>(j)] = e;
            take(e);
            continue;
          }
        }
        const int e = sampler->draw_allowed(rng, allowed.data());
        chosen[static_cast<std::size_t>(j)] = e;
        take(e);
      }
    }
  }
}

void TokenRouter::deal_counts(int layer, int first_gpu, int micro_batch, TokenBatch& out) const {
  const int k = out.top_k;
  const auto n_tokens = out.tokens();
  const auto experts = static_cast<std::size_t>(model_.experts);
  std::vector<double> share = batch_weights(layer, first_gpu, micro_batch);
  if (share.empty() || std::count_if(share.begin(), share.end(), [](double x) { return x > 0; }) < k)
    share = laws_[static_cast<std::size_t>(layer)].weights;
  // Water-filling: proportional shares of N k assignments, none above N.
  const double cap = static_cast<double>(n_tokens);
  std::vector<double> real(experts, 0.0);
  std::vector<char> fixed(experts, 0);
  double left = static_cast<double>(n_tokens) * k;
  for (;;) {
    double sum = 0;
    for (std::size_t e = 0; e < experts; ++e)
      if (!fixed[e]) sum += share[e];
    bool capped = false;
    for (std::size_t e = 0; e < experts; ++e)
      if (!fixed[e] && sum > 0 && left * share[e] / sum > cap) {
        fixed[e] = 1;
        real[e] = cap;
        left -= cap;
        capped = true;
      }
    if (!capped) {
      for (std::size_t e = 0; e < experts; ++e)
        if (!fixed[e]) real[e] = sum > 0 ? left * share[e] / sum : 0.0;
      break;
    }
  }
  // Largest remainder (ties: lower expert id), never above N.
  std::vector<std::int64_t> count(experts);
  std::int64_t assigned = 0;
  for (std::size_t e = 0; e < experts; ++e) assigned += (count[e] = static_cast<std::int64_t>(std::floor(real[e])));
  std::vector<std::size_t> order(experts);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return real[a] - std::floor(real[a]) > real[b] - std::floor(real[b]);
  });
  for (std::size_t i = 0; assigned < n_tokens * k; i = (i + 1) % experts) {
    const std::size_t e = order[i];
    if (count[e] < n_tokens && share[e] > 0) {
      ++count[e];
      ++assigned;
    }
  }
  sim::Rng rng(seed_, stream("deal/", layer, first_gpu, micro_batch));
  // The list of assignments, experts in random order.
  std::vector<int> expert_order(experts);
  std::iota(expert_order.begin(), expert_order.end(), 0);
  for (std::size_t i = experts - 1; i > 0; --i) std::swap(expert_order[i], expert_order[rng.uniform_int(i + 1)]);
  std::vector<int> list;
  list.reserve(static_cast<std::size_t>(n_tokens * k));
  for (const int e : expert_order) list.insert(list.end(), static_cast<std::size_t>(count[static_cast<std::size_t>(e)]), e);
  // Token i of the batch is dealt column perm[i]; its k experts in random positions.
  std::vector<std::int64_t> perm(static_cast<std::size_t>(n_tokens));
  std::iota(perm.begin(), perm.end(), 0);
  for (std::size_t i = perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[rng.uniform_int(i + 1)]);
  for (std::int64_t i = 0; i < n_tokens; ++i) {
    int* token = out.experts.data() + i * k;
    for (int j = 0; j < k; ++j) token[j] = list[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)] + j * n_tokens)];
    for (int j = k - 1; j > 0; --j) std::swap(token[j], token[rng.uniform_int(static_cast<std::uint64_t>(j) + 1)]);
  }
}

void TokenRouter::draw_gates(int layer, int first_gpu, int micro_batch, TokenBatch& out) const {
  const auto k = static_cast<std::size_t>(out.top_k);
  out.gates.assign(out.experts.size(), 0.0f);
  std::vector<double> g(k);
  for (int src = 0; src < out.ranks; ++src) {
    sim::Rng rng(seed_, stream("gates/", layer, first_gpu + src, micro_batch));
    for (std::int64_t t = 0; t < out.tokens_per_rank; ++t) {
      double total = 0;
      for (auto& x : g) total += (x = rng.exponential(1.0));
      std::sort(g.begin(), g.end(), std::greater<>());
      float* gate = out.gates.data() + (src * out.tokens_per_rank + t) * static_cast<std::int64_t>(k);
      for (std::size_t j = 0; j < k; ++j) gate[j] = static_cast<float>(g[j] / total);
    }
  }
}

std::vector<std::vector<double>> observed_load(const MoeModelSpec& model, const RoutingSpec& spec, int ep, int groups,
                                               std::int64_t tokens_per_rank, std::uint64_t seed, int history,
                                               int micro_batches, const std::vector<int>& layer_first_gpu) {
  MOESIM_ASSERT(layer_first_gpu.empty() || layer_first_gpu.size() == static_cast<std::size_t>(model.moe_layers),
                "one first GPU per layer");
  MOESIM_ASSERT(history >= 1 && spec.step >= history, "observed load needs earlier steps");
  const auto layers = static_cast<std::size_t>(model.moe_layers), experts = static_cast<std::size_t>(model.experts);
  // One work item per (earlier step, micro-batch, group), each routing its layers in order.
  const auto per_step = static_cast<std::size_t>(micro_batches) * static_cast<std::size_t>(groups);
  const std::size_t items = static_cast<std::size_t>(history) * per_step;
  std::vector<std::vector<double>> partial(items, std::vector<double>(layers * experts, 0.0));
  std::vector<TokenRouter> routers;
  for (int h = 0; h < history; ++h) {
    RoutingSpec s = spec;
    s.step = spec.step - history + h;
    routers.emplace_back(model, s, ep, seed, false);
  }
  sim::parallel_for(items, [&](std::size_t i) {
    const TokenRouter& router = routers[i / per_step];
    const int micro_batch = static_cast<int>(i % per_step / static_cast<std::size_t>(groups));
    const int group_gpu = static_cast<int>(i % static_cast<std::size_t>(groups)) * ep;
    TokenBatch batch, previous;
    for (std::size_t l = 0; l < layers; ++l) {
      const int first_gpu = (layer_first_gpu.empty() ? 0 : layer_first_gpu[l]) + group_gpu;
      router.route(static_cast<int>(l), first_gpu, tokens_per_rank, &previous, batch, micro_batch);
      for (const int e : batch.experts) partial[i][l * experts + static_cast<std::size_t>(e)] += 1;
      std::swap(batch, previous);
    }
  });
  std::vector<std::vector<double>> out(layers, std::vector<double>(experts, 0.0));
  for (const auto& p : partial)
    for (std::size_t l = 0; l < layers; ++l)
      for (std::size_t e = 0; e < experts; ++e) out[l][e] += p[l * experts + e] / history;
  return out;
}

}  // namespace moesim::routing
