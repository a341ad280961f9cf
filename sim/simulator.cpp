#include "sim/simulator.hpp"

#include <utility>

#include "sim/assert.hpp"

namespace moesim::sim {

std::uint32_t Simulator::alloc_slot() {
  if (!free_slots_.empty()) {
    const std::uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }
  slots_.emplace_back();
  return static_cast<std::uint32_t>(slots_.size() - 1);
}

void Simulator::free_slot(std::uint32_t slot) {
  slots_[slot].seq = 0;
  slots_[slot].cb = nullptr;
  free_slots_.push_back(slot);
  --live_;
}

EventId Simulator::schedule_at(Time t, Callback cb) {
  MOESIM_ASSERT(t >= now_, "event scheduled in the past");
  MOESIM_ASSERT(cb != nullptr, "event without a callback");
  const std::uint32_t slot = alloc_slot();
  const std::uint64_t seq = next_seq_++;
  slots_[slot].cb = std::move(cb);
  slots_[slot].seq = seq;
  ++live_;
  const Entry e{t.count_ps(), seq, slot};
  if (root_is_running_) {
    // The running event's entry is still the root: overwrite it and sift down once.
    root_is_running_ = false;
    heap_[0] = e;
    sift_down(0);
  } else {
    heap_.push_back(e);
    sift_up(heap_.size() - 1);
  }
  return EventId{seq, slot};
}

bool Simulator::cancel(EventId id) {
  if (id.seq == 0 || id.slot >= slots_.size() || slots_[id.slot].seq != id.seq) return false;
  free_slot(id.slot);
  return true;
}

void Simulator::sift_up(std::size_t i) {
  const Entry e = heap_[i];
  while (i > 0) {
    const std::size_t parent = (i - 1) / 4;
    if (!before(e, heap_[parent])) break;
    heap_[i] = heap_[parent];
    i = parent;
  }
  heap_[i] = e;
}

void Simulator::sift_down(std::size_t i) {
  const std::size_t n = heap_.size();
  const Entry e = heap_[i];
  for (;;) {
    const std::size_t first = 4 * i + 1;
    if (first >= n) break;
    std::size_t best = first;
    const std::size_t last = first + 4 < n ? first + 4 : n;
    for (std::size_t c = first + 1; c < last; ++c)
      if (before(heap_[c], heap_[best])) best = c;
    if (!before(heap_[best], e)) break;
    heap_[i] = heap_[best];
    i = best;
  }
  heap_[i] = e;
}

void Simulator::pop_root() {
  heap_[0] = heap_.back();
  heap_.pop_back();
  if (!heap_.empty()) sift_down(0);
}

bool Simulator::step(Time limit) {
  while (!heap_.empty()) {
    const Entry top = heap_[0];
    Slot& slot = slots_[top.slot];
    if (slot.seq != top.seq) {  // cancelled
      pop_root();
      continue;
    }
    if (top.time_ps > limit.count_ps()) return false;
    now_ = Time::ps(top.time_ps);
    Callback cb = std::move(slot.cb);
    free_slot(top.slot);
    root_is_running_ = true;
    cb();
    if (root_is_running_) {
      root_is_running_ = false;
      pop_root();
    }
    ++events_run_;
    return true;
  }
  return false;
}

std::uint64_t Simulator::run() { return run_until(Time::max()); }

std::uint64_t Simulator::run_until(Time limit) {
  stopped_ = false;
  const std::uint64_t before_run = events_run_;
  while (!stopped_ && step(limit)) {
  }
  if (!stopped_ && limit != Time::max() && now_ < limit) now_ = limit;
  return events_run_ - before_run;
}

}  // namespace moesim::sim
