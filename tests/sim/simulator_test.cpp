#include <catch2/catch.hpp>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "sim/assert.hpp"
#include "sim/simulator.hpp"

using namespace moesim::sim;

TEST_CASE("Events run in time order and equal times first-in first-out", "[sim][simulator]") {
  Simulator sim;
  std::vector<std::string> order;
  sim.schedule_at(Time::us(5), [&] { order.push_back("b@5"); });
  sim.schedule_at(Time::us(1), [&] { order.push_back("a@1"); });
  sim.schedule_at(Time::us(5), [&] { order.push_back("c@5"); });
  sim.schedule_at(Time::us(5), [&] { order.push_back("d@5"); });
  sim.schedule_at(Time::us(9), [&] { order.push_back("e@9"); });
  CHECK(sim.run() == 5);
  CHECK(order == std::vector<std::string>{"a@1", "b@5", "c@5", "d@5", "e@9"});
  CHECK(sim.now() == Time::us(9));
}

TEST_CASE("Events scheduled from a running event keep the total order", "[sim][simulator]") {
  // The first event scheduled from a callback replaces the heap root; later ones are pushed.
  Simulator sim;
  std::vector<int> times;
  auto note = [&] { times.push_back(static_cast<int>(sim.now().count_ps())); };
  sim.schedule_at(Time::ps(10), note);
  sim.schedule_at(Time::ps(5), [&] {
    note();
    sim.schedule_at(Time::ps(20), note);
    sim.schedule_at(Time::ps(7), note);
    sim.schedule_at(Time::ps(5), note);  // same time as now: runs after this event
  });
  sim.run();
  CHECK(times == std::vector<int>{5, 5, 7, 10, 20});
}

TEST_CASE("Cancelled events never run and cancel reports what it did", "[sim][simulator]") {
  Simulator sim;
  int ran = 0;
  const EventId a = sim.schedule_at(Time::us(1), [&] { ran += 1; });
  const EventId b = sim.schedule_at(Time::us(2), [&] { ran += 10; });
  sim.schedule_at(Time::us(3), [&] { ran += 100; });
  CHECK(sim.cancel(b));
  CHECK_FALSE(sim.cancel(b));  // already cancelled
  CHECK(sim.pending() == 2);
  sim.run();
  CHECK(ran == 101);
  CHECK_FALSE(sim.cancel(a));  // already ran
  SECTION("a stale id never cancels a later event") {
    const EventId c = sim.schedule_in(Time::us(1), [&] { ran += 1000; });
    CHECK(sim.cancel(c));
    sim.schedule_in(Time::us(1), [&] { ran += 5000; });
    CHECK_FALSE(sim.cancel(c));
    sim.run();
    CHECK(ran == 5101);
  }
}

TEST_CASE("An event can cancel another pending at the same time", "[sim][simulator]") {
  Simulator sim;
  int ran = 0;
  EventId second;
  sim.schedule_at(Time::us(1), [&] { CHECK(sim.cancel(second)); });
  second = sim.schedule_at(Time::us(1), [&] { ++ran; });
  sim.run();
  CHECK(ran == 0);
}

TEST_CASE("run_until stops at the limit and resumes", "[sim][simulator]") {
  Simulator sim;
  std::vector<int> seen;
  for (int t : {1, 2, 3, 4}) sim.schedule_at(Time::us(t), [&, t] { seen.push_back(t); });
  CHECK(sim.run_until(Time::us(2)) == 2);
  CHECK(sim.now() == Time::us(2));
  CHECK(seen == std::vector<int>{1, 2});
  sim.run();
  CHECK(seen == std::vector<int>{1, 2, 3, 4});
}

TEST_CASE("Scheduling in the past is an internal error", "[sim][simulator]") {
  Simulator sim;
  sim.schedule_at(Time::us(5), [] {});
  sim.run();
  CHECK_THROWS_AS(sim.schedule_at(Time::us(4), [] {}), InternalError);
}

TEST_CASE("Two simulators in one process are independent", "[sim][simulator]") {
  Simulator a, b;
  int in_a = 0, in_b = 0;
  a.schedule_at(Time::us(3), [&] { ++in_a; });
  b.schedule_at(Time::us(7), [&] { ++in_b; });
  a.run();
  CHECK(a.now() == Time::us(3));
  CHECK(b.now() == Time::zero());
  CHECK(in_b == 0);
  b.run();
  CHECK(in_a == 1);
  CHECK(in_b == 1);
}

TEST_CASE("The heap keeps order under many random insertions and cancellations", "[sim][simulator]") {
  Simulator sim;
  std::vector<std::pair<std::int64_t, int>> ran;  // (time, insertion index)
  std::vector<EventId> ids;
  std::uint64_t x = 12345;
  auto next = [&] { return (x = x * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  for (int i = 0; i < 5000; ++i) {
    const auto t = static_cast<std::int64_t>(next() % 1000);
    ids.push_back(sim.schedule_at(Time::ps(t), [&, t, i] { ran.emplace_back(t, i); }));
  }
  int cancelled = 0;
  for (std::size_t i = 0; i < ids.size(); i += 3) cancelled += sim.cancel(ids[i]);
  sim.run();
  CHECK(ran.size() == 5000 - static_cast<std::size_t>(cancelled));
  for (std::size_t i = 1; i < ran.size(); ++i) REQUIRE(ran[i - 1] < ran[i]);
  for (const auto& r : ran) REQUIRE(r.second % 3 != 0);
}

TEST_CASE("The queue matches a sorted reference under mixed scheduling and cancelling", "[sim][simulator]") {
  // Events schedule successors at the same time, near, far and very far (high radix levels),
  // cancel random pending events, and the driver interrupts with run_until and schedules
  // between the limit and the next event (the re-basing path). The reference is a std::map on
  // (time, sequence): what the queue runs must be exactly its order.
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    Simulator sim;
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ULL;
    auto next = [&] {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      return x;
    };
    std::map<std::pair<std::int64_t, std::uint64_t>, int> reference;  // (time, seq) -> label
    std::vector<std::pair<std::int64_t, int>> ran;
    std::vector<std::pair<EventId, std::pair<std::int64_t, std::uint64_t>>> handles;
    std::set<int> done;  // labels that ran
    int label = 0;
    std::function<void()> fire;
    auto add = [&](std::int64_t t) {
      const int l = label++;
      const EventId id = sim.schedule_at(Time::ps(t), [&, l] {
        ran.emplace_back(sim.now().count_ps(), l);
        done.insert(l);
        fire();
      });
      // Labels count up in scheduling order, so they are the sequence numbers.
      reference.emplace(std::make_pair(t, static_cast<std::uint64_t>(l)), l);
      handles.emplace_back(id, std::make_pair(t, static_cast<std::uint64_t>(l)));
    };
    auto random_delay = [&]() -> std::int64_t {
      switch (next() % 6) {
        case 0: return 0;
        case 1: return static_cast<std::int64_t>(next() % 64);
        case 2: return static_cast<std::int64_t>(next() % 100'000);
        case 3: return static_cast<std::int64_t>(next() % 1'000'000'000);
        case 4: return static_cast<std::int64_t>(next() % (std::int64_t{1} << 50));
        default: return static_cast<std::int64_t>(next() % 3);
      }
    };
    int budget = 20'000;
    fire = [&] {
      if (budget <= 0) return;
      const int children = static_cast<int>(next() % 3);
      for (int c = 0; c < children && budget > 0; ++c, --budget) add(sim.now().count_ps() + random_delay());
      if (next() % 5 == 0 && !handles.empty()) {
        const auto& h = handles[next() % handles.size()];
        // An id whose event ran (or is running) or was cancelled must not cancel anything.
        const auto it = reference.find(h.second);
        const bool pending = it != reference.end() && done.count(it->second) == 0;
        REQUIRE(sim.cancel(h.first) == pending);
        if (pending) reference.erase(it);
      }
    };
    for (int i = 0; i < 200; ++i) add(random_delay());
    while (sim.pending() > 0) {
      // Peek past a limit, then schedule inside the gap it leaves.
      const Time limit = sim.now() + Time::ps(random_delay());
      sim.run_until(limit);
      if (budget > 0 && next() % 2 == 0) {
        add(sim.now().count_ps() + static_cast<std::int64_t>(next() % 1000));
        --budget;
      }
    }
    // Everything scheduled and not cancelled, in (time, sequence) order.
    std::vector<std::pair<std::int64_t, int>> want;
    for (const auto& [key, l] : reference) want.emplace_back(key.first, l);
    REQUIRE(ran == want);
  }
}

TEST_CASE("Callbacks are destroyed exactly once: run, cancelled or left pending", "[sim][simulator]") {
  auto token = std::make_shared<int>(0);
  {
    Simulator sim;
    // Captures too big or not trivially copyable for inline storage go to the heap.
    std::array<std::int64_t, 8> big{};
    int runs = 0;
    sim.schedule_at(Time::ps(1), [token, &runs] { runs += *token + 1; });
    sim.schedule_at(Time::ps(2), [token, big, &runs] { runs += static_cast<int>(big[0]) + 1; });
    const EventId c = sim.schedule_at(Time::ps(3), [token] {});
    sim.schedule_at(Time::ps(1'000'000), [token] {});
    CHECK(token.use_count() == 5);
    CHECK(sim.cancel(c));
    sim.run_until(Time::ps(10));
    CHECK(runs == 2);
    CHECK(token.use_count() == 2);  // the cancelled one was dropped when it surfaced
  }
  CHECK(token.use_count() == 1);  // the simulator freed what was still pending
}

TEST_CASE("Long runs of same-time events stay first-in first-out", "[sim][simulator]") {
  // Two interleaved zero-delay chains keep the front queue from ever draining.
  Simulator sim;
  std::vector<int> order;
  int left = 20'000;
  std::function<void(int)> chain = [&](int who) {
    order.push_back(who);
    if (--left > 0) sim.schedule_in(Time::zero(), [&chain, who] { chain(who); });
  };
  sim.schedule_at(Time::ps(5), [&] { chain(0); });
  sim.schedule_at(Time::ps(5), [&] { chain(1); });
  sim.run();
  REQUIRE(order.size() == 20'001);
  for (std::size_t i = 0; i < order.size(); ++i) REQUIRE(order[i] == static_cast<int>(i % 2));
  CHECK(sim.now() == Time::ps(5));
}
