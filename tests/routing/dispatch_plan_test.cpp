#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "routing/dispatch_plan.hpp"
#include "routing/expert_sampler.hpp"

using namespace moesim;
using namespace moesim::routing;

namespace {

// A hand-built placement of one slot per GPU.
Placement one_slot_per_gpu(int gpus_per_node, std::vector<int> slot_expert, std::vector<int> slot_replica,
                           std::vector<std::vector<int>> expert_slots) {
  Placement pl;
  pl.experts = static_cast<int>(expert_slots.size());
  pl.ep = static_cast<int>(slot_expert.size());
  pl.slots_per_gpu = 1;
  pl.gpus_per_node = gpus_per_node;
  pl.slot_expert = std::move(slot_expert);
  pl.slot_replica = std::move(slot_replica);
  pl.expert_slots = std::move(expert_slots);
  return pl;
}

MoeModelSpec model(int experts, int top_k) {
  MoeModelSpec m;
  m.experts = experts;
  m.top_k = top_k;
  m.hidden = 1024;
  m.expert_ffn = 1024;
  return m;
}

std::int64_t sum(const std::vector<std::int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), std::int64_t{0});
}

}  // namespace

TEST_CASE("Routed assignments are either computed or dropped on random scenarios", "[routing]") {
  sim::Rng pick(2024, "test/conservation");
  for (int trial = 0; trial < 40; ++trial) {
    const int ep = 1 << pick.uniform_int(4);                      // 1..8
    const int experts = ep * static_cast<int>(1 + pick.uniform_int(8));
    const int top_k = static_cast<int>(1 + pick.uniform_int(static_cast<std::uint64_t>(std::min(experts, 8))));
    RoutingSpec r;
    r.distribution = pick.uniform_int(2) ? Distribution::zipf : Distribution::uniform;
    r.zipf_s = 0.5 + pick.uniform01() * 1.5;
    if (pick.uniform_int(3) != 0) r.capacity_factor = 0.25 + pick.uniform01() * 1.5;
    const std::int64_t tokens = static_cast<std::int64_t>(1 + pick.uniform_int(300));
    const Placement pl = make_placement({}, {}, experts, ep, 0, 1, 0);
    const DispatchPlan p = make_dispatch_plan(model(experts, top_k), r, pl, 7, trial % 3, 0, tokens);
    INFO("trial " << trial << ": ep " << ep << ", experts " << experts << ", top_k " << top_k);
    REQUIRE(p.routed() == tokens * ep * top_k);
    REQUIRE(sum(p.expert_routed) == p.routed());
    REQUIRE(sum(p.expert_computed) + p.dropped() == p.routed());
    REQUIRE(sum(p.sends) == sum(p.expert_computed));
    REQUIRE(sum(p.gpu_dropped) == p.dropped());
    for (int g = 0; g < ep; ++g) REQUIRE(p.kept(g) + p.gpu_dropped[static_cast<std::size_t>(g)] == p.gpu_routed[static_cast<std::size_t>(g)]);
    for (std::size_t e = 0; e < p.expert_computed.size(); ++e) {
      REQUIRE(p.expert_computed[e] <= p.expert_routed[e]);
      if (p.capacity >= 0) REQUIRE(p.expert_computed[e] == std::min(p.expert_routed[e], p.capacity));
    }
    if (!r.capacity_factor) REQUIRE(p.dropped() == 0);
  }
}

TEST_CASE("Capacity is ceil(capacity_factor x tokens x top_k / experts) over the EP group", "[routing]") {
  RoutingSpec r;
  const Placement pl = make_placement({}, {}, 8, 4, 0, 1, 0);
  SECTION("exact product") {
    r.capacity_factor = 1.25;  // 1.25 * (4 GPUs * 100 tokens) * 2 / 8 = 125
    CHECK(make_dispatch_plan(model(8, 2), r, pl, 1, 0, 0, 100).capacity == 125);
  }
  SECTION("rounded up") {
    r.capacity_factor = 1.1;  // 1.1 * 400 * 2 / 8 = 110 exactly, not 111 from binary 1.1
    CHECK(make_dispatch_plan(model(8, 2), r, pl, 1, 0, 0, 100).capacity == 110);
    r.capacity_factor = 1.01;  // 1.01 * 400 * 2 / 8 = 101
    CHECK(make_dispatch_plan(model(8, 2), r, pl, 1, 0, 0, 100).capacity == 101);
    r.capacity_factor = 0.333;  // 33.3 -> 34
    CHECK(make_dispatch_plan(model(8, 2), r, pl, 1, 0, 0, 100).capacity == 34);
  }
}

TEST_CASE("Drop by position keeps the group's first assignments of each expert", "[routing]") {
  // top_k == experts sends every token to every expert, whatever the random draws. With
  // capacity 0.5 * (4 * 10) * 4 / 4 = 20 per expert, each expert keeps the tokens of GPUs 0
  // and 1 (positions 0..19) and drops those of GPUs 2 and 3.
  RoutingSpec r;
  r.capacity_factor = 0.5;
  const Placement pl = make_placement({}, {}, 4, 4, 0, 1, 0);
  const DispatchPlan p = make_dispatch_plan(model(4, 4), r, pl, 3, 0, 0, 10);
  CHECK(p.capacity == 20);
  CHECK(p.gpu_dropped == std::vector<std::int64_t>{0, 0, 40, 40});
  for (int d = 0; d < 4; ++d) {
    CHECK(p.send(0, d) == 10);
    CHECK(p.send(1, d) == 10);
    CHECK(p.send(2, d) == 0);
    CHECK(p.send(3, d) == 0);
  }
}

TEST_CASE("Contiguous placement puts consecutive experts on each GPU", "[routing]") {
  const Placement pl = make_placement({}, {}, 16, 4, 0, 1, 0);
  CHECK(pl.slots_per_gpu == 4);
  CHECK(pl.gpu_of_slot(pl.expert_slots[0][0]) == 0);
  CHECK(pl.gpu_of_slot(pl.expert_slots[3][0]) == 0);
  CHECK(pl.gpu_of_slot(pl.expert_slots[4][0]) == 1);
  CHECK(pl.gpu_of_slot(pl.expert_slots[15][0]) == 3);
}

TEST_CASE("Round-robin placement deals experts out to GPUs in turn", "[routing]") {
  PlacementSpec spec;
  spec.policy = PlacementPolicy::round_robin;
  const Placement pl = make_placement(spec, {}, 16, 4, 0, 1, 0);
  for (int e = 0; e < 16; ++e) {
    REQUIRE(pl.expert_slots[static_cast<std::size_t>(e)].size() == 1);
    CHECK(pl.gpu_of_slot(pl.expert_slots[static_cast<std::size_t>(e)][0]) == e % 4);
  }
}

TEST_CASE("Greedy placement packs experts by load without replicas", "[routing]") {
  // Hand-checked: loads 8,7,6,5,4,3,2,1 (experts 0..7) onto 4 GPUs of 2 slots: heaviest first to
  // the lightest GPU with room: 8->0, 7->1, 6->2, 5->3, 4->3 (5 is lightest), 3->2, 2->1, 1->0.
  PlacementSpec spec;
  spec.policy = PlacementPolicy::greedy;
  spec.layer_load = {{8, 7, 6, 5, 4, 3, 2, 1}};
  const Placement pl = make_placement(spec, {}, 8, 4, 0, 1, 0);
  std::vector<int> gpu_of(8);
  for (int e = 0; e < 8; ++e) {
    REQUIRE(pl.expert_slots[static_cast<std::size_t>(e)].size() == 1);
    gpu_of[static_cast<std::size_t>(e)] = pl.gpu_of_slot(pl.expert_slots[static_cast<std::size_t>(e)][0]);
  }
  CHECK(gpu_of == std::vector<int>{0, 1, 2, 3, 3, 2, 1, 0});
}

TEST_CASE("EPLB placement replicates hot experts and the plan spreads their tokens", "[routing]") {
  // Zipf(1.2) over 16 experts on 8 GPUs (2 nodes of 4) with 8 redundant slots: hot experts get
  // replicas; every kept assignment lands on a replica of its expert, on the sender's node when
  // one is there; conservation holds per expert and per slot.
  RoutingSpec r;
  r.distribution = Distribution::zipf;
  r.zipf_s = 1.2;
  PlacementSpec spec;
  spec.policy = PlacementPolicy::eplb;
  spec.redundant_experts = 8;
  const Placement pl = make_placement(spec, r, 16, 8, 4, 3, 0);
  REQUIRE(pl.slots() == 24);
  CHECK(pl.slots_per_gpu == 3);
  const ExpertSampler sampler(layer_law(r, 16, 1, 3, 0).weights);
  const auto& w = sampler.weights();
  const int hottest = static_cast<int>(std::max_element(w.begin(), w.end()) - w.begin());
  CHECK(pl.expert_slots[static_cast<std::size_t>(hottest)].size() >= 2);
  const auto plan = make_dispatch_plan(model(16, 2), r, pl, 3, 0, 0, 4000);
  std::vector<std::int64_t> per_expert(16, 0);
  for (int s = 0; s < 24; ++s)
    per_expert[static_cast<std::size_t>(pl.slot_expert[static_cast<std::size_t>(s)])] += plan.slot_computed[static_cast<std::size_t>(s)];
  CHECK(per_expert == plan.expert_computed);
  std::int64_t received = 0;
  for (int d = 0; d < 8; ++d) received += plan.received(d);
  CHECK(received == std::accumulate(plan.expert_computed.begin(), plan.expert_computed.end(), std::int64_t{0}));
  // GPU load: EPLB against contiguous on the same routing.
  const auto contiguous = make_dispatch_plan(model(16, 2), r, make_placement({}, r, 16, 8, 4, 3, 0), 3, 0, 0, 4000);
  std::int64_t max_eplb = 0, max_contiguous = 0;
  for (int d = 0; d < 8; ++d) {
    max_eplb = std::max(max_eplb, plan.received(d));
    max_contiguous = std::max(max_contiguous, contiguous.received(d));
  }
  CHECK(max_eplb < max_contiguous);
}

TEST_CASE("Replicas on the sender's node are preferred, taken in turn", "[routing]") {
  // Hand-built: 2 experts on 4 GPUs (2 nodes of 2); expert 0 on GPUs 0 and 2, expert 1 on 1 and 3.
  const Placement pl = one_slot_per_gpu(2, {0, 1, 0, 1}, {0, 0, 1, 1}, {{0, 2}, {1, 3}});
  const auto plan = make_dispatch_plan(model(2, 2), {}, pl, 1, 0, 0, 10);
  // top-2 of 2 experts: every token goes to both; every GPU's copies stay on its node.
  for (int src = 0; src < 4; ++src)
    for (int dst = 0; dst < 4; ++dst) CHECK(plan.send(src, dst) == (src / 2 == dst / 2 ? 10 : 0));
}

TEST_CASE("A token's top-k experts are distinct", "[routing]") {
  for (const auto dist : {Distribution::uniform, Distribution::zipf}) {
    RoutingSpec r;
    r.distribution = dist;
    r.zipf_s = 3.0;  // so skewed that repeats are frequent and the exact fallback runs
    const ExpertSampler s(layer_law(r, 8, 1, 1, 0).weights);
    sim::Rng rng(1, "test");
    std::vector<int> out(7);
    for (int t = 0; t < 2000; ++t) {
      s.sample_top_k(rng, out);
      std::vector<int> sorted = out;
      std::sort(sorted.begin(), sorted.end());
      REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
      REQUIRE(sorted.front() >= 0);
      REQUIRE(sorted.back() < 8);
    }
  }
}

TEST_CASE("A draw from a set of experts follows the weights renormalised over the set", "[routing][stats]") {
  // 130 experts (three words of bits). Case 1: the set holds a fair share of the weight, so
  // draws are mostly accepted at once. Case 2: it holds 1e-6 of it, so every draw takes the
  // exact fallback after 64 rejections. Case 3: only zero-weight experts are allowed: uniform
  // among them.
  const int experts = 130;
  std::vector<double> w(experts);
  for (int e = 0; e < experts; ++e) w[static_cast<std::size_t>(e)] = 1.0 + e % 7;
  const auto set_of = [&](const std::vector<int>& members) {
    std::vector<std::uint64_t> bits(3, 0);
    for (const int e : members) bits[static_cast<std::size_t>(e / 64)] |= std::uint64_t{1} << (e % 64);
    return bits;
  };
  const auto check_law = [&](const ExpertSampler& s, const std::vector<int>& members, const std::vector<double>& weight) {
    REQUIRE(s.words() == 3);
    const std::vector<std::uint64_t> bits = set_of(members);
    sim::Rng rng(9, "allowed");
    std::vector<double> count(experts, 0.0);
    const int n = 60'000;
    for (int i = 0; i < n; ++i) count[static_cast<std::size_t>(s.draw_allowed(rng, bits.data()))] += 1;
    double total = 0;
    for (const int e : members) total += weight[static_cast<std::size_t>(e)];
    double inside = 0;
    for (const int e : members) {
      const double p = weight[static_cast<std::size_t>(e)] / total;
      INFO("expert " << e);
      CHECK(count[static_cast<std::size_t>(e)] / n == Approx(p).margin(5 * std::sqrt(p * (1 - p) / n)));
      inside += count[static_cast<std::size_t>(e)];
    }
    CHECK(inside == n);  // nothing outside the set
  };
  const std::vector<int> members = {0, 5, 63, 64, 100, 127, 128, 129};
  check_law(ExpertSampler(w), members, w);
  std::vector<double> rare = w;
  for (const int e : members) rare[static_cast<std::size_t>(e)] *= 1e-6;
  check_law(ExpertSampler(rare), members, rare);
  std::vector<double> zero = w;
  for (const int e : {3, 64, 129}) zero[static_cast<std::size_t>(e)] = 0;
  check_law(ExpertSampler(zero), {3, 64, 129}, {std::vector<double>(experts, 1.0)});
}

TEST_CASE("A run of draws from a shrinking set is the same draws as draw_allowed one at a time", "[routing]") {
  // draw_allowed_run has no branch on a draw's outcome; it must draw what k calls of
  // draw_allowed draw, taking each drawn expert, the exact fallback after 64 rejections included,
  // leave the generator where they leave it, and call after() once a draw with what it did.
  const int experts = 130, k = 6;
  std::vector<double> w(experts);
  for (int e = 0; e < experts; ++e) w[static_cast<std::size_t>(e)] = 1.0 + e % 7;
  std::vector<double> rare = w;  // most of the allowed weight 1e-6 of the rest: fallbacks
  for (const int e : {0, 5, 63, 64, 100, 127, 128, 129}) rare[static_cast<std::size_t>(e)] *= 1e-6;
  for (const bool fallback : {false, true}) {
    const ExpertSampler s(fallback ? rare : w);
    std::vector<std::uint64_t> start(3, 0);
    for (const int e : {0, 5, 63, 64, 100, 127, 128, 129, 7, 70}) start[static_cast<std::size_t>(e / 64)] |= std::uint64_t{1} << (e % 64);
    sim::Rng one(4, "run"), run(4, "run");
    int fallbacks = 0;
    for (int token = 0; token < 2000; ++token) {
      std::vector<std::uint64_t> a = start, b = start;
      std::vector<int> expected, got(k, -1);
      int draws = 0;
      for (int j = 0; j < k; ++j) {
        const int e = s.draw_allowed(one, a.data());
        expected.push_back(e);
        a[static_cast<std::size_t>(e / 64)] &= ~(std::uint64_t{1} << (e % 64));
      }
      int taken = 0;
      s.draw_allowed_run(run, b.data(), got.data(), k, [&](int e, std::uint64_t ok) {
        REQUIRE(e >= 0);
        REQUIRE(e < experts);
        ++draws;
        taken += static_cast<int>(ok);
      });
      REQUIRE(got == expected);
      REQUIRE(b == a);
      REQUIRE(taken == k);
      REQUIRE(run.next_u64() == one.next_u64());
      fallbacks += draws > 64;
    }
    if (fallback) CHECK(fallbacks > 1000);
  }
}

TEST_CASE("Zipf routing follows its weights and uniform routing is flat", "[routing]") {
  RoutingSpec zipf;
  zipf.distribution = Distribution::zipf;
  zipf.zipf_s = 1.2;
  const ExpertSampler s(layer_law(zipf, 16, 1, 5, 2).weights);
  // Weights r^-1.2 / sum over r = 1..16: the hottest is 1/H where H = sum r^-1.2.
  double h = 0;
  for (int r = 1; r <= 16; ++r) h += std::pow(r, -1.2);
  const auto& w = s.weights();
  CHECK(*std::max_element(w.begin(), w.end()) == Approx(1.0 / h));
  sim::Rng rng(5, "test");
  std::vector<int> counts(16, 0), one(1);
  const int n = 200'000;
  for (int i = 0; i < n; ++i) {
    s.sample_top_k(rng, one);
    ++counts[static_cast<std::size_t>(one[0])];
  }
  for (std::size_t e = 0; e < 16; ++e) CHECK(counts[e] / double(n) == Approx(w[e]).margin(0.005));

  RoutingSpec uniform;
  const ExpertSampler u(layer_law(uniform, 16, 1, 5, 2).weights);
  for (double x : u.weights()) CHECK(x == Approx(1.0 / 16));
}

TEST_CASE("Different seeds route differently and the same seed identically", "[routing]") {
  RoutingSpec r;
  const Placement pl = make_placement({}, {}, 8, 2, 0, 1, 0);
  const auto a = make_dispatch_plan(model(8, 2), r, pl, 1, 0, 0, 500);
  const auto b = make_dispatch_plan(model(8, 2), r, pl, 1, 0, 0, 500);
  const auto c = make_dispatch_plan(model(8, 2), r, pl, 2, 0, 0, 500);
  CHECK(a.expert_routed == b.expert_routed);
  CHECK(a.sends == b.sends);
  CHECK(a.expert_routed != c.expert_routed);
}

TEST_CASE("The Zipf exponent is recovered from routed counts", "[routing][stats]") {
  // Top-1 routing (no sampling without replacement to bend the law): regress log(count) on
  // log(rank), ranks taken from the sampler's own weights.
  for (const double s : {0.6, 1.2}) {
    RoutingSpec r;
    r.distribution = Distribution::zipf;
    r.zipf_s = s;
    const int experts = 64;
    const ExpertSampler sampler(layer_law(r, experts, 1, 11, 3).weights);
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      return sampler.weights()[static_cast<std::size_t>(a)] > sampler.weights()[static_cast<std::size_t>(b)];
    });
    std::vector<double> count(experts, 0.0);
    moesim::sim::Rng rng(5, "zipf-recovery");
    std::vector<int> one(1);
    for (int i = 0; i < 400'000; ++i) {
      sampler.sample_top_k(rng, one);
      count[static_cast<std::size_t>(one[0])] += 1;
    }
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int rank = 1; rank <= experts; ++rank) {
      const double x = std::log(rank), y = std::log(count[static_cast<std::size_t>(order[static_cast<std::size_t>(rank - 1)])]);
      sx += x;
      sy += y;
      sxx += x * x;
      sxy += x * y;
    }
    const double slope = (experts * sxy - sx * sy) / (experts * sxx - sx * sx);
    INFO("zipf_s " << s << ": fitted " << -slope);
    CHECK(-slope == Approx(s).margin(0.03));
  }
}

TEST_CASE("Hot experts draw their share of the routing", "[routing][stats]") {
  RoutingSpec r;
  r.distribution = Distribution::hot_experts;
  r.hot_experts = 4;
  r.hot_fraction = 0.6;
  const ExpertSampler sampler(layer_law(r, 32, 1, 2, 0).weights);
  int hot_seen = 0;
  double hot_weight = 0;
  for (double w : sampler.weights()) {
    if (w > 0.1) {
      ++hot_seen;
      hot_weight += w;
    }
  }
  CHECK(hot_seen == 4);
  CHECK(hot_weight == Approx(0.6));
  // Top-1 draws land on the hot set 60 % of the time (5 sigma).
  moesim::sim::Rng rng(3, "hot");
  std::vector<int> one(1);
  const int n = 200'000;
  int hot = 0;
  for (int i = 0; i < n; ++i) {
    sampler.sample_top_k(rng, one);
    hot += sampler.weights()[static_cast<std::size_t>(one[0])] > 0.1;
  }
  CHECK(std::abs(hot - 0.6 * n) < 5 * std::sqrt(n * 0.6 * 0.4));
}

TEST_CASE("Least-loaded replica choice evens out the replicas of an expert", "[routing]") {
  // One expert on 4 GPUs of one node (4 replicas), top-1: round-robin and least-loaded both
  // spread a sender's copies; least-loaded also evens out across senders, to within one.
  Placement pl = one_slot_per_gpu(4, {0, 0, 0, 0}, {0, 1, 2, 3}, {{0, 1, 2, 3}});
  pl.replica_choice = ReplicaChoice::least_loaded;
  const auto plan = make_dispatch_plan(model(1, 1), {}, pl, 1, 0, 0, 7);
  const auto [lo, hi] = std::minmax_element(plan.slot_computed.begin(), plan.slot_computed.end());
  CHECK(*hi - *lo <= 1);
  CHECK(std::accumulate(plan.slot_computed.begin(), plan.slot_computed.end(), std::int64_t{0}) == 28);
  // Round-robin restarts at the first replica for every sender: 8, 8, 8, 4.
  pl.replica_choice = ReplicaChoice::round_robin;
  const auto rr = make_dispatch_plan(model(1, 1), {}, pl, 1, 0, 0, 7);
  CHECK(rr.slot_computed == std::vector<std::int64_t>{8, 8, 8, 4});
}

TEST_CASE("Without replica locality, replicas on other nodes share the load", "[routing]") {
  // Expert 0 has replicas on GPUs 0, 1 (node 0) and 2 (node 1); expert 1 is on GPU 3.
  Placement pl = one_slot_per_gpu(2, {0, 0, 0, 1}, {0, 1, 2, 0}, {{0, 1, 2}, {3}});
  pl.replica_choice = ReplicaChoice::least_loaded;
  // Local first: node 1's copies of expert 0 all land on GPU 2, node 0's split over GPUs 0 and 1.
  const auto local = make_dispatch_plan(model(2, 2), {}, pl, 1, 0, 0, 60);
  CHECK(local.slot_computed == std::vector<std::int64_t>{60, 60, 120, 240});
  PlacementSpec spec;
  spec.replica_locality = false;
  CHECK_FALSE(make_placement(spec, {}, 8, 4, 2, 1, 0).replica_locality);
  pl.replica_locality = false;
  const auto spread = make_dispatch_plan(model(2, 2), {}, pl, 1, 0, 0, 60);
  CHECK(spread.slot_computed == std::vector<std::int64_t>{80, 80, 80, 240});
}
