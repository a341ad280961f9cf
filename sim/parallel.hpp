// Runs independent work items on all cores. Items must not throw; results must not depend on
// which thread ran an item (each item writes only its own output).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <utility>
#include <vector>

namespace moesim::sim {

// tick(done, count) runs on the calling thread after each item it ran, with the items done by
// all threads so far, and with count once all are done (for progress reports).
template <class F, class Tick>
void parallel_for(std::size_t count, F&& item, Tick&& tick) {
  const std::size_t threads =
      std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, std::max<std::size_t>(count, 1));
  std::atomic<std::size_t> next{0}, done{0};
  auto work = [&](bool caller) {
    for (std::size_t i = next++; i < count; i = next++) {
      item(i);
      const std::size_t finished = ++done;
      if (caller) tick(finished, count);
    }
  };
  {
    std::vector<std::jthread> pool;
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work, false);
    work(true);
  }  // joined
  tick(count, count);
}

template <class F>
void parallel_for(std::size_t count, F&& item) {
  parallel_for(count, std::forward<F>(item), [](std::size_t, std::size_t) {});
}

}  // namespace moesim::sim
