#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "models/maxmin_network.hpp"
#include "models/network.hpp"
#include "sim/simulator.hpp"
#include "sim/units.hpp"
#include "topology/cluster.hpp"

using namespace moesim;
using namespace moesim::topology;
using moesim::models::Flow;
using moesim::models::MaxMinNetwork;

namespace {

GpuId gpu(int i) { return GpuId(static_cast<std::uint32_t>(i)); }

// One node of `gpus` GPUs on an NVSwitch, 100 GB/s and 1 us per port and direction: a flow
// a -> b crosses a->NVSwitch and NVSwitch->b, so its latency is 2 us.
ClusterSpec one_node(int gpus) {
  ClusterSpec s;
  s.nodes = 1;
  s.gpus_per_node = gpus;
  s.gpu = *find_gpu_preset("H100");
  s.node = {sim::parse_bandwidth("100GB/s"), sim::parse_time("1us"), sim::parse_bandwidth("64GB/s"),
            sim::parse_time("0.25us")};
  return s;
}

struct Run {
  std::vector<double> end_s;  // exact completion per flow
  std::vector<sim::Time> callback_at;
  std::uint64_t solves = 0;
};

struct Start {
  int src, dst;
  std::int64_t bytes;
  double start_us;
};

Run run_flows(const Cluster& cluster, const std::vector<Start>& flows, sim::Time resolve_interval = sim::Time::zero()) {
  sim::Simulator sim;
  MaxMinNetwork net(sim, cluster, resolve_interval);
  Run r;
  r.end_s.assign(flows.size(), -1);
  r.callback_at.assign(flows.size(), sim::Time::zero());
  for (std::size_t i = 0; i < flows.size(); ++i) {
    const auto& f = flows[i];
    sim.schedule_at(sim::Time::ps(static_cast<std::int64_t>(std::llround(f.start_us * 1e6))), [&, i, f] {
      net.start_flow(Flow{gpu(f.src), gpu(f.dst), sim::Bytes(f.bytes)}, [&, i] {
        r.end_s[i] = net.last_completion_s();
        r.callback_at[i] = sim.now();
      });
    });
  }
  sim.run();
  r.solves = net.solves();
  for (double e : r.end_s) REQUIRE(e >= 0);
  return r;
}

double us(double s) { return s * 1e6; }

}  // namespace

TEST_CASE("Two flows on one link share it equally and finish together", "[models][maxmin]") {
  const Cluster c(one_node(4));
  // 1 MB each at 50 GB/s after 2 us of latency: 2 + 20 us.
  const Run r = run_flows(c, {{0, 1, 1'000'000, 0}, {0, 2, 1'000'000, 0}});
  CHECK(us(r.end_s[0]) == Approx(22.0).epsilon(1e-12));
  CHECK(us(r.end_s[1]) == Approx(22.0).epsilon(1e-12));
  CHECK(r.callback_at[0] == sim::Time::us(22));
  CHECK(r.solves == 2);  // one for the joint start, one for the joint finish
}

TEST_CASE("A flow held back upstream leaves the rest of a shared link to another", "[models][maxmin]") {
  const Cluster c(one_node(4));
  // B, C, D leave GPU 1 (a third of its port each); A and B enter GPU 2, where A gets what B
  // cannot use: 100 - 33.3 = 66.7 GB/s.
  const Run r = run_flows(c, {{0, 2, 1'000'000, 0},    // A
                              {1, 2, 1'000'000, 0},    // B
                              {1, 3, 1'000'000, 0},    // C
                              {1, 0, 1'000'000, 0}});  // D
  CHECK(us(r.end_s[0]) == Approx(2.0 + 15.0).epsilon(1e-12));
  for (int i = 1; i < 4; ++i) CHECK(us(r.end_s[static_cast<std::size_t>(i)]) == Approx(2.0 + 30.0).epsilon(1e-12));
}

TEST_CASE("A late flow slows an early one from the moment it arrives", "[models][maxmin]") {
  const Cluster c(one_node(4));
  // A active at 1+2=... A starts at 0 (active at 2 us), alone at 100 GB/s: 0.4 MB by 6 us,
  // when B (started at 4 us) becomes active. Both at 50 GB/s: A's 0.6 MB left take 12 us
  // (A ends at 18 us), then B, 0.6 MB sent, has 0.4 MB alone: 4 us more, ends at 22 us.
  const Run r = run_flows(c, {{0, 1, 1'000'000, 0}, {0, 2, 1'000'000, 4}});
  CHECK(us(r.end_s[0]) == Approx(18.0).epsilon(1e-12));
  CHECK(us(r.end_s[1]) == Approx(22.0).epsilon(1e-12));
}

TEST_CASE("A re-solve interval holds a change back until the interval since the last re-solve has passed", "[models][maxmin]") {
  const Cluster c(one_node(4));
  // As above with a 5 us interval: A's activation at 2 us is re-solved at once (the first), B's
  // at 6 us waits until 7 us, so A has 0.5 MB alone; then both at 50 GB/s: A's 0.5 MB left end
  // at 17 us. That departure comes 10 us after the last re-solve, so B gets the port at once:
  // its 0.5 MB left take 5 us, to 22 us.
  {
    const Run r = run_flows(c, {{0, 1, 1'000'000, 0}, {0, 2, 1'000'000, 4}}, sim::Time::us(5));
    CHECK(us(r.end_s[0]) == Approx(17.0).epsilon(1e-12));
    CHECK(us(r.end_s[1]) == Approx(22.0).epsilon(1e-12));
    CHECK(r.callback_at[0] == sim::Time::us(17));
    CHECK(r.solves == 3);  // at 2, 7 and 17 us
  }
  // Bandwidth a finished flow frees waits too. X, Y, Z (0.5, 1 and 1.5 MB) leave GPU 0 at once,
  // active at 2 us at a third of 100 GB/s each; X ends at 17 us. Exactly, Y and Z then get
  // 50 GB/s (Y ends at 27, Z at 32 us). With a 20 us interval they keep 33.3 GB/s until 22 us
  // (Y: 0.667 MB sent), then 50 GB/s: Y ends at 28.667 us; Z, with 0.5 MB left then, is held at
  // 50 GB/s (the next re-solve would be at 42 us) and ends at 38.667 us. Every byte is sent.
  {
    const std::vector<Start> flows{{0, 1, 500'000, 0}, {0, 2, 1'000'000, 0}, {0, 3, 1'500'000, 0}};
    const Run exact = run_flows(c, flows);
    CHECK(us(exact.end_s[1]) == Approx(27.0).epsilon(1e-12));
    CHECK(us(exact.end_s[2]) == Approx(32.0).epsilon(1e-12));
    const Run r = run_flows(c, flows, sim::Time::us(20));
    CHECK(us(r.end_s[0]) == Approx(17.0).epsilon(1e-12));
    CHECK(us(r.end_s[1]) == Approx(22.0 + 1.0 / 3.0 * 20.0).epsilon(1e-12));
    CHECK(us(r.end_s[2]) == Approx(22.0 + 1.0 / 3.0 * 20.0 + 10.0).epsilon(1e-12));
    CHECK(r.solves == 2);  // at 2 and 22 us; the network is idle when Z ends
    // Idle again: a flow started later gets its rate at once, though within 20 us of the last
    // change (1 MB alone: 2 + 10 us).
    std::vector<Start> later = flows;
    later.push_back({0, 1, 1'000'000, 40});
    CHECK(us(run_flows(c, later, sim::Time::us(20)).end_s[3]) == Approx(52.0).epsilon(1e-12));
  }
}

TEST_CASE("Completions between picoseconds keep their exact times", "[models][maxmin]") {
  const Cluster c(one_node(4));
  // 1000 bytes at 100 GB/s alone = 10 ns; 333 bytes at 50 GB/s = 6.66 ns (not a whole ps).
  const Run r = run_flows(c, {{0, 1, 333, 0}, {0, 2, 1000, 0}});
  CHECK(r.end_s[0] * 1e12 == Approx(2e6 + 6660.0).epsilon(1e-15));
  // The second flow had 667 bytes left at 6.66 ns, then the whole port: 6.67 ns more.
  CHECK(r.end_s[1] * 1e12 == Approx(2e6 + 6660.0 + 6670.0).epsilon(1e-15));
  CHECK(r.callback_at[0] == sim::Time::ps(2'006'660));
  CHECK(r.callback_at[1] == sim::Time::ps(2'013'330));
}

TEST_CASE("Empty flows and local copies complete without bandwidth", "[models][maxmin]") {
  const Cluster c(one_node(2));
  const Run r = run_flows(c, {{0, 1, 0, 1}, {1, 1, 5'000'000, 3}});
  CHECK(us(r.end_s[0]) == Approx(3.0));  // latency only
  CHECK(us(r.end_s[1]) == Approx(3.0));  // a copy to itself is immediate
}

namespace {

// An independent reference: a fluid simulation that recomputes max-min shares from scratch at
// every arrival and departure, by the textbook definition (raise all unfrozen flows together;
// a link is saturated when the rates on it reach its capacity; freeze its flows), with sums
// recomputed from the frozen rates rather than kept incrementally. With an interval it follows
// the re-solve interval's rule (MaxMinNetwork's constructor): a change within the interval of
// the last recompute waits for the recompute at the last one plus the interval (new flows at
// rate 0 until then, the others at their rates); an idle network recomputes at once. Times are
// compared in whole picoseconds, rounded up, as the model's clock has them.
std::vector<double> reference_end_times(const Cluster& c, const std::vector<Start>& flows, double interval_s = 0) {
  struct F {
    std::vector<std::uint32_t> links;
    double active_at, left;
    bool active = false, done = false;
  };
  std::vector<F> fs;
  for (const auto& f : flows) {
    F x;
    double lat = 0;
    if (f.src != f.dst) {
      const Path p = c.path(gpu(f.src), gpu(f.dst));
      for (auto l : p.links) x.links.push_back(l.value);
      lat = static_cast<double>(p.latency.count_ps()) / 1e12;
    }
    x.active_at = f.start_us * 1e-6 + lat;
    x.left = static_cast<double>(f.bytes);
    fs.push_back(x);
  }
  const auto ps = [](double t) {
    const double x = t * 1e12, r = std::nearbyint(x);
    return static_cast<std::int64_t>(std::abs(x - r) < 1e-3 ? r : std::ceil(x));
  };
  const std::int64_t interval_ps = std::llround(interval_s * 1e12);
  const std::int64_t never = std::numeric_limits<std::int64_t>::min() / 2;
  std::int64_t last_ps = never, pending_ps = -1;
  std::vector<double> end(flows.size(), -1);
  std::vector<double> rate(fs.size(), 0);
  const auto& links = c.links();
  const auto recompute = [&](const std::vector<std::size_t>& act) {
    std::vector<bool> frozen(fs.size(), false);
    auto crosses = [&](std::size_t i, std::size_t l) {
      return std::find(fs[i].links.begin(), fs[i].links.end(), l) != fs[i].links.end();
    };
    // A link's fair share for its unfrozen flows (infinite when it has none).
    auto share_of = [&](std::size_t l) {
      double used = 0;
      int n = 0;
      for (auto i : act) {
        if (!crosses(i, l)) continue;
        if (frozen[i]) used += rate[i];
        else ++n;
      }
      return n > 0 ? (static_cast<double>(links[l].bandwidth.bytes_per_s()) - used) / n
                   : std::numeric_limits<double>::infinity();
    };
    for (;;) {
      double best = std::numeric_limits<double>::infinity();
      for (std::size_t l = 0; l < links.size(); ++l) best = std::min(best, share_of(l));
      if (best == std::numeric_limits<double>::infinity()) break;
      // Freeze flows on every link whose share is the minimum (within rounding).
      std::vector<std::size_t> to_freeze;
      for (std::size_t l = 0; l < links.size(); ++l) {
        if (share_of(l) <= best * (1 + 1e-13))
          for (auto i : act)
            if (!frozen[i] && crosses(i, l)) to_freeze.push_back(i);
      }
      for (auto i : to_freeze) {
        frozen[i] = true;
        rate[i] = best;
      }
    }
  };
  double t = 0;
  bool departed = false;
  for (;;) {
    bool changed = departed;
    departed = false;
    for (std::size_t i = 0; i < fs.size(); ++i) {
      if (fs[i].done || fs[i].active || fs[i].active_at > t) continue;
      if (fs[i].left <= 0 || fs[i].links.empty()) {  // zero-byte or local flows finish at activation
        fs[i].done = true;
        end[i] = std::max(t, fs[i].active_at);
        continue;
      }
      fs[i].active = true;
      rate[i] = 0;
      changed = true;
    }
    std::vector<std::size_t> act;
    for (std::size_t i = 0; i < fs.size(); ++i)
      if (fs[i].active && !fs[i].done) act.push_back(i);
    const std::int64_t now_ps = ps(t);
    if (changed && act.empty()) {
      last_ps = never;
      pending_ps = -1;
    } else if (changed || (pending_ps >= 0 && now_ps >= pending_ps)) {
      if (interval_ps == 0 || now_ps >= last_ps + interval_ps) {
        recompute(act);
        last_ps = now_ps;
        pending_ps = -1;
      } else {
        pending_ps = last_ps + interval_ps;
      }
    }
    double next = pending_ps >= 0 ? static_cast<double>(pending_ps) / 1e12 : std::numeric_limits<double>::infinity();
    for (auto i : act)
      if (rate[i] > 0) next = std::min(next, t + fs[i].left / rate[i]);
    for (std::size_t i = 0; i < fs.size(); ++i)
      if (!fs[i].done && !fs[i].active) next = std::min(next, fs[i].active_at);
    if (next == std::numeric_limits<double>::infinity()) break;
    for (auto i : act) {
      fs[i].left -= rate[i] * (next - t);
      if (rate[i] > 0 && fs[i].left <= 1e-9 * static_cast<double>(flows[i].bytes)) {
        fs[i].done = true;
        end[i] = next;
        departed = true;
      }
    }
    t = next;
  }
  return end;
}

}  // namespace

TEST_CASE("Max-min completion times match a brute-force reference on random flow sets", "[models][maxmin]") {
  // Two nodes of four GPUs on a leaf, plus a second leaf: flows of unequal path latency
  // (NVLink, same leaf, across the spine) with random sizes and start times.
  ClusterSpec s = one_node(4);
  s.nodes = 4;
  s.scale_out = {true, sim::parse_bandwidth("25GB/s"), sim::parse_time("1.5us"), 2};
  s.scale_out.oversubscription = 2.0;
  const Cluster c(s);
  std::uint64_t x = 42;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  std::array<int, 2> moved{};  // flows whose time an interval moved: exactly (none), with one (many)
  for (int set = 0; set < 20; ++set) {
    std::vector<Start> flows;
    const int n = 5 + static_cast<int>(next() % 40);
    for (int i = 0; i < n; ++i) {
      const int src = static_cast<int>(next() % 16);
      int dst = static_cast<int>(next() % 16);
      if (next() % 10 != 0 && dst == src) dst = (dst + 1) % 16;
      const std::int64_t bytes = next() % 8 == 0 ? 0 : static_cast<std::int64_t>(next() % 4'000'000);
      const double start = next() % 3 == 0 ? 0.0 : static_cast<double>(next() % 50'000) / 1000.0;
      flows.push_back({src, dst, bytes, start});
    }
    // Exactly, and with re-solve intervals of a few flows' durations (flows of up to 4 MB take
    // up to hundreds of microseconds here), where most changes wait.
    const auto exact = reference_end_times(c, flows);
    for (const double interval_us : {0.0, 2.0, 15.0}) {
      const Run got = run_flows(c, flows, sim::Time::ps(std::llround(interval_us * 1e6)));
      const auto want = reference_end_times(c, flows, interval_us * 1e-6);
      for (std::size_t i = 0; i < flows.size(); ++i) moved[interval_us > 0] += std::abs(want[i] - exact[i]) > 1e-12;
      for (std::size_t i = 0; i < flows.size(); ++i) {
        INFO("set " << set << " interval " << interval_us << " us, flow " << i << " " << flows[i].src << "->" << flows[i].dst
                    << " " << flows[i].bytes << " B at " << flows[i].start_us << " us");
        const double dur = want[i] - flows[i].start_us * 1e-6;
        REQUIRE(std::abs(got.end_s[i] - want[i]) <= 1e-9 * std::max(dur, 1e-12));
      }
    }
  }
  CHECK(moved[0] == 0);
  CHECK(moved[1] > 200);
}

TEST_CASE("A flow in parts reports each part when its last byte arrives, at the rates in force", "[models][maxmin]") {
  // A: 1 MB from GPU 0 to 1 in 4 parts, active at 2 us, alone at 100 GB/s until B (started at
  // 4 us) is active at 6 us: part 0 (250 kB) at 4.5 us; 0.4 MB moved by 6 us; then 50 GB/s:
  // part 1 (500 kB) at 6 + 0.1 MB / 50 GB/s = 8 us, part 2 (750 kB) at 13 us, the whole at 18 us.
  // Parts do not re-solve: the solves are those of the same flows without parts.
  const Cluster c(one_node(4));
  for (const bool maxmin : {true, false}) {
    sim::Simulator sim;
    std::unique_ptr<models::NetworkModel> net = models::make_network_model(maxmin ? "maxmin" : "analytical", sim, c);
    std::vector<std::pair<std::uint32_t, double>> parts;
    double a_end = -1, b_end = -1;
    sim.schedule_at(sim::Time::zero(), [&] {
      net->start_flow_in_parts(
          Flow{gpu(0), gpu(1), sim::Bytes(1'000'000)}, 4,
          [&](std::uint32_t j) {
            parts.emplace_back(j, net->last_completion_s());
            CHECK(std::abs(static_cast<double>(sim.now().count_ps()) - net->last_completion_s() * 1e12) < 1.0);
          },
          [&] { a_end = net->last_completion_s(); });
    });
    sim.schedule_at(sim::Time::us(4), [&] {
      net->start_flow(Flow{gpu(0), gpu(2), sim::Bytes(1'000'000)}, [&] { b_end = net->last_completion_s(); });
    });
    sim.run();
    REQUIRE(parts.size() == 3);
    for (std::uint32_t j = 0; j < 3; ++j) CHECK(parts[j].first == j);
    if (maxmin) {
      CHECK(us(parts[0].second) == Approx(4.5).epsilon(1e-12));
      CHECK(us(parts[1].second) == Approx(8.0).epsilon(1e-12));
      CHECK(us(parts[2].second) == Approx(13.0).epsilon(1e-12));
      CHECK(us(a_end) == Approx(18.0).epsilon(1e-12));
      CHECK(us(b_end) == Approx(22.0).epsilon(1e-12));
      CHECK(static_cast<MaxMinNetwork&>(*net).solves() == run_flows(c, {{0, 1, 1'000'000, 0}, {0, 2, 1'000'000, 4}}).solves);
    } else {  // no contention: 2 us + bytes / 100 GB/s for each part
      CHECK(us(parts[0].second) == Approx(4.5).epsilon(1e-12));
      CHECK(us(parts[1].second) == Approx(7.0).epsilon(1e-12));
      CHECK(us(parts[2].second) == Approx(9.5).epsilon(1e-12));
      CHECK(us(a_end) == Approx(12.0).epsilon(1e-12));
    }
  }
  // Empty and local flows deliver every part at once, in order, before the whole.
  for (const bool maxmin : {true, false}) {
    sim::Simulator sim;
    std::unique_ptr<models::NetworkModel> net = models::make_network_model(maxmin ? "maxmin" : "analytical", sim, c);
    std::vector<int> order;
    net->start_flow_in_parts(Flow{gpu(0), gpu(1), sim::Bytes(0)}, 3, [&](std::uint32_t j) { order.push_back(static_cast<int>(j)); },
                             [&] { order.push_back(9); });
    net->start_flow_in_parts(Flow{gpu(2), gpu(2), sim::Bytes(500)}, 2, [&](std::uint32_t j) { order.push_back(10 + static_cast<int>(j)); },
                             [&] { order.push_back(19); });
    sim.run();
    CHECK(order.size() == 5);
    CHECK(std::find(order.begin(), order.end(), 0) < std::find(order.begin(), order.end(), 1));
    CHECK(std::find(order.begin(), order.end(), 1) < std::find(order.begin(), order.end(), 9));
    CHECK(std::find(order.begin(), order.end(), 10) < std::find(order.begin(), order.end(), 19));
  }
}
