// Benchmark of the event core: the classic "hold" model (Vaucher & Duval, 1975). The queue is
// filled with N pending events; each event, when it runs, schedules one successor at
// now + Exp(mean 1us), so the queue stays at N. Prints events per second of wall time.
//   moesim-bench-hold [--pending N] [--events M] [--repeats R]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <queue>
#include <string_view>
#include <tuple>
#include <vector>

#include "sim/rng.hpp"
#include "sim/simulator.hpp"

namespace {

using namespace moesim;

struct Hold {
  sim::Simulator& simulator;
  sim::Rng& rng;
  void fire() {
    const auto dt = sim::Time::ps(static_cast<std::int64_t>(rng.exponential(1e6)) + 1);
    simulator.schedule_in(dt, [this] { fire(); });
  }
};

double run_once(std::size_t pending, std::uint64_t events) {
  sim::Simulator simulator;
  sim::Rng rng(1, "bench/hold");
  Hold hold{simulator, rng};
  for (std::size_t i = 0; i < pending; ++i)
    simulator.schedule_at(sim::Time::ps(static_cast<std::int64_t>(rng.exponential(1e6))),
                          [&hold] { hold.fire(); });
  // Warm up the heap's shape before timing.
  simulator.run_until(sim::Time::ps(static_cast<std::int64_t>(2e6)));
  const std::uint64_t start_events = simulator.events_run();
  const auto t0 = std::chrono::steady_clock::now();
  while (simulator.events_run() - start_events < events)
    simulator.run_until(simulator.now() + sim::Time::us(10));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(simulator.events_run() - start_events) / secs;
}

// The same model on the textbook structure, a binary heap (std::priority_queue) of
// (time, sequence, std::function): run alongside, so that the ratio between the two is a figure
// that does not swing with the load of a shared machine the way absolute rates do.
double run_baseline(std::size_t pending, std::uint64_t events) {
  using Item = std::tuple<std::int64_t, std::uint64_t, std::function<void()>>;
  struct Later {
    bool operator()(const Item& a, const Item& b) const {
      return std::tie(std::get<0>(a), std::get<1>(a)) > std::tie(std::get<0>(b), std::get<1>(b));
    }
  };
  std::priority_queue<Item, std::vector<Item>, Later> heap;
  sim::Rng rng(1, "bench/hold");
  std::int64_t now = 0;
  std::uint64_t seq = 0;
  std::function<void()> fire = [&] {
    heap.emplace(now + static_cast<std::int64_t>(rng.exponential(1e6)) + 1, seq++, fire);
  };
  for (std::size_t i = 0; i < pending; ++i)
    heap.emplace(static_cast<std::int64_t>(rng.exponential(1e6)), seq++, fire);
  auto step = [&] {
    auto cb = std::move(std::get<2>(const_cast<Item&>(heap.top())));
    now = std::get<0>(heap.top());
    heap.pop();
    cb();
  };
  for (std::uint64_t i = 0; i < events / 10; ++i) step();
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < events; ++i) step();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(events) / secs;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t pending = 100'000;
  std::uint64_t events = 20'000'000;
  int repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    if (a == "--pending") pending = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--events") events = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--repeats") repeats = std::atoi(argv[i + 1]);
    else {
      fmt::print(stderr, "usage: moesim-bench-hold [--pending N] [--events M] [--repeats R]\n");
      return 2;
    }
  }
  if (pending == 0 || events == 0 || repeats <= 0) {
    fmt::print(stderr, "moesim-bench-hold: --pending, --events and --repeats must be positive\n");
    return 2;
  }
  // Interleave the two so that both see the same machine.
  std::vector<double> rates, baseline, ratios;
  for (int r = 0; r < repeats; ++r) {
    rates.push_back(run_once(pending, events));
    baseline.push_back(run_baseline(pending, events / 4));
    ratios.push_back(rates.back() / baseline.back());
  }
  fmt::print("hold model: {} pending events, {} events per run, {} runs\n", pending, events, repeats);
  fmt::print("events/s: median {:.2f} M, best {:.2f} M, worst {:.2f} M\n", median(rates) / 1e6,
             *std::max_element(rates.begin(), rates.end()) / 1e6,
             *std::min_element(rates.begin(), rates.end()) / 1e6);
  fmt::print("binary heap of std::function, same model: median {:.2f} M events/s\n", median(baseline) / 1e6);
  fmt::print("speed-up over the binary heap: median {:.2f}x\n", median(ratios));
  return 0;
}
