// Benchmark of the event core: the classic "hold" model (Vaucher & Duval, 1975). The queue is
// filled with N pending events; each event, when it runs, schedules one successor at
// now + Exp(mean 1us), so the queue stays at N. Prints events per second of wall time.
//   moesim-bench-hold [--pending N] [--events M] [--repeats R]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string_view>
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

}  // namespace

int main(int argc, char** argv) {
  std::size_t pending = 100'000;
  std::uint64_t events = 20'000'000;
  int repeats = 3;
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
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) rates.push_back(run_once(pending, events));
  std::sort(rates.begin(), rates.end());
  fmt::print("hold model: {} pending events, {} events per run, {} runs\n", pending, events, repeats);
  fmt::print("events/s: median {:.2f} M, best {:.2f} M, worst {:.2f} M\n", rates[rates.size() / 2] / 1e6,
             rates.back() / 1e6, rates.front() / 1e6);
  return 0;
}
