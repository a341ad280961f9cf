#include "sim/simulator.hpp"

#include <utility>

#include "sim/assert.hpp"

namespace moesim::sim {

namespace {
constexpr std::size_t kCompactAfter = 4096;  // reclaim consumed prefixes once this long
constexpr std::size_t kSortedRun = 16;       // buckets this small are sorted, not redistributed
}

Simulator::~Simulator() {
  for (std::size_t i = front_head_; i < front_.size(); ++i) Callback::destroy(front_[i].call);
  for (auto& level : buckets_)
    for (auto& b : level)
      for (auto& e : b) Callback::destroy(e.call);
}

inline bool Simulator::is_live(std::uint64_t seq) const {
  const std::uint64_t w = seq / 64;
  if (w < live_base_ || w - live_base_ >= live_bits_.size()) return false;
  return (live_bits_[w - live_base_] >> (seq % 64)) & 1;
}

inline void Simulator::set_live(std::uint64_t seq) {
  const std::uint64_t w = seq / 64 - live_base_;
  if (w >= live_bits_.size()) [[unlikely]]
    live_bits_.resize(w + 1, 0);
  live_bits_[w] |= std::uint64_t{1} << (seq % 64);
}

inline void Simulator::clear_live(std::uint64_t seq) {
  const std::uint64_t w = seq / 64 - live_base_;
  live_bits_[w] &= ~(std::uint64_t{1} << (seq % 64));
  if (w == live_front_ && live_bits_[w] == 0) [[unlikely]]
    slide_live();
}

void Simulator::slide_live() {
  // Slide past words whose events are all done. Every word but the last has all its sequence
  // numbers handed out; the last may still fill, so it is never passed.
  while (live_front_ + 1 < live_bits_.size() && live_bits_[live_front_] == 0) ++live_front_;
  if (live_front_ >= kCompactAfter && 2 * live_front_ >= live_bits_.size()) {
    live_bits_.erase(live_bits_.begin(), live_bits_.begin() + static_cast<std::ptrdiff_t>(live_front_));
    live_base_ += live_front_;
    live_front_ = 0;
  }
}

inline void Simulator::place(const Entry& e) {
  if (e.time <= front_max_ && front_head_ < front_.size()) {
    // Inside the sorted front run: insert after every event with the same or an earlier time.
    // The run is short and new events rarely land in it (it spans a few events' worth of time).
    auto pos = front_.end();
    while (pos != front_.begin() + static_cast<std::ptrdiff_t>(front_head_) && (pos - 1)->time > e.time) --pos;
    front_.insert(pos, e);
    return;
  }
  const std::uint64_t x = e.time ^ last_;
  if (x == 0) {
    front_.push_back(e);
    front_max_ = e.time;
    return;
  }
  const int h = (63 - __builtin_clzll(x)) / kDigit;
  const int s = static_cast<int>((e.time >> (kDigit * h)) & (kFan - 1));
  buckets_[h][s].push_back(e);
  occupied_[h] |= std::uint64_t{1} << s;
  levels_occupied_ |= std::uint32_t{1} << h;
}

void Simulator::refill_front() {
  front_.clear();
  front_head_ = 0;
  const int h = __builtin_ctz(levels_occupied_);
  const int s = __builtin_ctzll(occupied_[h]);
  occupied_[h] &= ~(std::uint64_t{1} << s);
  if (occupied_[h] == 0) levels_occupied_ &= ~(std::uint32_t{1} << h);
  auto& b = buckets_[h][s];
  if (b.size() <= kSortedRun) {
    // Few events: sort them (stably, so equal times keep their order) into the front run
    // instead of dropping them level by level; the first is the new minimum.
    for (const auto& e : b) {
      auto pos = front_.end();
      while (pos != front_.begin() && (pos - 1)->time > e.time) --pos;
      front_.insert(pos, e);
    }
    last_ = front_.front().time;
    front_max_ = front_.back().time;
  } else {
    // Every event here shares digits h and up with the new minimum, so each drops to a lower
    // level or to the front run; none comes back to this bucket.
    std::uint64_t m = b[0].time;
    for (const auto& e : b) m = e.time < m ? e.time : m;
    last_ = m;
    front_max_ = m;
    for (const auto& e : b) place(e);
  }
  b.clear();
}

void Simulator::rebase(std::uint64_t key) {
  // Only after run_until() looked past its limit and the caller then scheduled earlier than
  // what it saw: re-place every event around the new minimum (rare, O(pending)). Equal times
  // share one bucket, so taking buckets in any order and each in order keeps FIFO.
  std::vector<Entry> all;
  all.reserve(size_);
  all.insert(all.end(), front_.begin() + static_cast<std::ptrdiff_t>(front_head_), front_.end());
  front_.clear();
  front_head_ = 0;
  front_max_ = 0;
  for (auto& level : buckets_)
    for (auto& b : level) {
      all.insert(all.end(), b.begin(), b.end());
      b.clear();
    }
  occupied_.fill(0);
  levels_occupied_ = 0;
  last_ = key;
  for (const auto& e : all) place(e);
}

EventId Simulator::schedule_at(Time t, Callback cb) {
  MOESIM_ASSERT(t >= now_, "event scheduled in the past");
  MOESIM_ASSERT(static_cast<bool>(cb), "event without a callback");
  const auto key = static_cast<std::uint64_t>(t.count_ps());
  if (key < last_) rebase(key);
  const std::uint64_t seq = next_seq_++;
  set_live(seq);
  ++live_;
  place(Entry{key, seq, cb.release()});
  ++size_;
  return EventId{seq};
}

bool Simulator::cancel(EventId id) {
  if (!is_live(id.seq)) return false;
  clear_live(id.seq);
  --live_;
  return true;
}

bool Simulator::step(Time limit) {
  while (size_ > 0) {
    if (front_head_ == front_.size()) refill_front();
    Entry& e = front_[front_head_];
    if (!is_live(e.seq)) {  // cancelled
      Callback::destroy(e.call);
      ++front_head_;
      --size_;
      continue;
    }
    if (static_cast<std::int64_t>(e.time) > limit.count_ps()) return false;
    now_ = Time::ps(static_cast<std::int64_t>(e.time));
    const std::uint64_t seq = e.seq;
    Callback cb = Callback::adopt(e.call);  // owns it from here, even if it throws
    ++front_head_;
    --size_;
    if (front_head_ == front_.size()) {
      front_.clear();
      front_head_ = 0;
    } else if (front_head_ >= kCompactAfter && 2 * front_head_ >= front_.size()) {
      front_.erase(front_.begin(), front_.begin() + static_cast<std::ptrdiff_t>(front_head_));
      front_head_ = 0;
    }
    clear_live(seq);
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
  while (!stopped_ && step(limit))
    if (progress_every_ != 0 && events_run_ % progress_every_ == 0) progress_();
  if (!stopped_ && limit != Time::max() && now_ < limit) now_ = limit;
  return events_run_ - before_run;
}

}  // namespace moesim::sim
