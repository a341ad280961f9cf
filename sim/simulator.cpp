#include "sim/simulator.hpp"

#include <utility>

#include "sim/assert.hpp"

namespace moesim::sim {

std::size_t Simulator::bucket_of(Key k, Key last) {
  const Key x = k ^ last;
  const auto hi = static_cast<std::uint64_t>(x >> 64);
  const auto lo = static_cast<std::uint64_t>(x);
  if (hi != 0) return static_cast<std::size_t>(128 - __builtin_clzll(hi));
  if (lo != 0) return static_cast<std::size_t>(64 - __builtin_clzll(lo));
  return 0;
}

bool Simulator::is_live(std::uint64_t seq) const {
  const std::uint64_t w = seq / 64;
  if (w < live_base_ || w - live_base_ >= live_bits_.size()) return false;
  return (live_bits_[w - live_base_] >> (seq % 64)) & 1;
}

void Simulator::set_live(std::uint64_t seq, bool live) {
  const std::uint64_t w = seq / 64;
  while (w - live_base_ >= live_bits_.size()) live_bits_.push_back(0);
  auto& word = live_bits_[w - live_base_];
  if (live) {
    word |= std::uint64_t{1} << (seq % 64);
  } else {
    word &= ~(std::uint64_t{1} << (seq % 64));
    // Slide the window past words whose events are all done (the last word may still fill).
    while (live_bits_.size() > 1 && live_bits_.front() == 0) {
      live_bits_.pop_front();
      ++live_base_;
    }
  }
}

void Simulator::push(Entry e) {
  if (e.key < last_) {
    // Only after run_until() looked past its limit and the caller then scheduled earlier:
    // re-base every bucket on the new minimum (rare, O(pending)).
    std::vector<Entry> all;
    all.reserve(size_);
    for (auto& b : buckets_) {
      for (auto& x : b) all.push_back(std::move(x));
      b.clear();
    }
    last_ = e.key;
    for (auto& x : all) buckets_[bucket_of(x.key, last_)].push_back(std::move(x));
  }
  buckets_[bucket_of(e.key, last_)].push_back(std::move(e));
  ++size_;
}

Simulator::Entry& Simulator::top() {
  if (buckets_[0].empty()) {
    std::size_t i = 1;
    while (buckets_[i].empty()) ++i;
    auto& b = buckets_[i];
    Key m = b[0].key;
    for (const auto& x : b) m = x.key < m ? x.key : m;
    last_ = m;
    for (auto& x : b) buckets_[bucket_of(x.key, last_)].push_back(std::move(x));
    b.clear();
  }
  return buckets_[0].back();
}

EventId Simulator::schedule_at(Time t, Callback cb) {
  MOESIM_ASSERT(t >= now_, "event scheduled in the past");
  MOESIM_ASSERT(cb != nullptr, "event without a callback");
  const std::uint64_t seq = next_seq_++;
  set_live(seq, true);
  ++live_;
  push(Entry{make_key(t.count_ps(), seq), std::move(cb)});
  return EventId{seq};
}

bool Simulator::cancel(EventId id) {
  if (!is_live(id.seq)) return false;
  set_live(id.seq, false);
  --live_;
  return true;
}

bool Simulator::step(Time limit) {
  while (size_ > 0) {
    Entry& e = top();
    const std::uint64_t seq = key_seq(e.key);
    if (!is_live(seq)) {  // cancelled
      buckets_[0].pop_back();
      --size_;
      continue;
    }
    if (key_time(e.key) > limit.count_ps()) return false;
    now_ = Time::ps(key_time(e.key));
    Callback cb = std::move(e.cb);
    buckets_[0].pop_back();
    --size_;
    set_live(seq, false);
    --live_;
    cb();
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
