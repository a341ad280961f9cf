// The discrete-event core.
//
// Events are ordered by the total key (time, insertion sequence), so events at equal times run
// first-in first-out and a run is reproducible bit for bit (ns-3's rule).
// The pending set is a radix heap (Ahuja, Mehlhorn, Orlin & Tarjan, 1990) over 128-bit keys
// time << 64 | seq: because no event is ever scheduled before the last one taken out, keys only
// grow, and a key sits in the bucket of the highest bit in which it differs from the last
// minimum. Pushes append to a bucket and pops scan one bucket, so the work is sequential and
// cache friendly, unlike a binary heap's random walks; each event moves at most 128 times and
// in practice a handful. The callback travels with its key, so running an event touches no
// other memory. Cancellation is lazy: one "still pending" bit per sequence number, in a window
// that slides past events that are done; a cancelled event is dropped when it surfaces.
// No globals: any number of Simulators can live in one process.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "sim/time.hpp"

namespace moesim::sim {

struct EventId {
  std::uint64_t seq = 0;
};

class Simulator {
 public:
  using Callback = std::function<void()>;

  Simulator() = default;
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  Time now() const { return now_; }

  // Scheduling before now() is a bug (asserts).
  EventId schedule_at(Time t, Callback cb);
  EventId schedule_in(Time delay, Callback cb) { return schedule_at(now_ + delay, std::move(cb)); }

  // Returns false if the event already ran or was cancelled.
  bool cancel(EventId id);

  // Runs until no event is pending or stop() is called. Returns the number of events run.
  std::uint64_t run();
  // Runs every event with time <= limit; afterwards now() == limit if the queue drained past it.
  std::uint64_t run_until(Time limit);
  void stop() { stopped_ = true; }

  std::size_t pending() const { return live_; }
  std::uint64_t events_run() const { return events_run_; }

 private:
  using Key = uint128;
  struct Entry {
    Key key;
    Callback cb;
  };
  static Key make_key(std::int64_t time_ps, std::uint64_t seq) {
    return (static_cast<Key>(static_cast<std::uint64_t>(time_ps)) << 64) | seq;
  }
  static std::int64_t key_time(Key k) { return static_cast<std::int64_t>(k >> 64); }
  static std::uint64_t key_seq(Key k) { return static_cast<std::uint64_t>(k); }
  static std::size_t bucket_of(Key k, Key last);

  void push(Entry e);
  Entry& top();  // the smallest pending entry; the heap must not be empty
  bool is_live(std::uint64_t seq) const;
  void set_live(std::uint64_t seq, bool live);
  bool step(Time limit);

  std::array<std::vector<Entry>, 129> buckets_;  // bucket 0 holds the key equal to last_
  Key last_ = 0;
  std::size_t size_ = 0;  // entries in buckets, cancelled ones included
  std::deque<std::uint64_t> live_bits_;  // bit (seq - 64 * live_base_) of word (seq / 64 - live_base_)
  std::uint64_t live_base_ = 0;
  Time now_{};
  std::uint64_t next_seq_ = 1;
  std::uint64_t events_run_ = 0;
  std::size_t live_ = 0;
  bool stopped_ = false;
};

}  // namespace moesim::sim
