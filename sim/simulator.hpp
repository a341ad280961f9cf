// The discrete-event core.
//
// Events are ordered by (time, insertion sequence), so events at equal times run first-in
// first-out and a run is reproducible bit for bit (ns-3's rule).
//
// The pending set is a multi-level radix heap (Ahuja, Mehlhorn, Orlin & Tarjan, 1990, with
// 6-bit digits) over the 64-bit event time, in front of which sits a short sorted run.
// No event is ever scheduled before the last minimum taken (`last_`), so keys only grow. An
// event sits at level h = (highest bit in which its time differs from last_) / 6, in the bucket
// named by its own 6-bit digit h. The 64 buckets of a level fit one bitmap word, so the next
// non-empty bucket is two count-trailing-zeros away. When the front run is used up, the first
// non-empty bucket is emptied: its minimum becomes last_; if it holds at most 16 events they are
// sorted into the front run, otherwise they drop to lower levels (those equal to last_ into the
// front run). A new event no later than the run's last one is inserted into the run in order.
//
// FIFO among equal times needs no sequence number in the key: two events with the same time
// always share a bucket (the bucket is a function of time and last_ only), every bucket is
// appended to and redistributed in order, sorting is stable and insertion goes after equals.
//
// Events (time, sequence, callback) are trivially copyable, so redistribution is memcpy.
// Cancellation is lazy: one "still pending" bit per sequence number, in a window that slides
// past events that are done; a cancelled event is dropped when it surfaces.
// No globals: any number of Simulators can live in one process.
//
// Measured and dropped (moesim-bench-hold, A/B in one run): keeping each bucket's minimum as
// events arrive (no faster); a ladder-queue rung of small vectors under a large bucket (2x
// slower); 16-byte entries (time, slot) with the callbacks in a pool of slots (slower: running
// an event then reads its slot at random, which costs more than the smaller moves save); and
// copying entries through general registers to avoid store-forwarding stalls (slower).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "sim/callback.hpp"
#include "sim/time.hpp"

namespace moesim::sim {

struct EventId {
  std::uint64_t seq = 0;
};

class Simulator {
 public:
  using Callback = sim::Callback;

  Simulator() = default;
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;
  ~Simulator();

  Time now() const { return now_; }

  // Scheduling before now() or without a callback is a bug (asserts).
  EventId schedule_at(Time t, Callback cb);
  EventId schedule_in(Time delay, Callback cb) { return schedule_at(now_ + delay, std::move(cb)); }

  // Returns false if the event already ran or was cancelled.
  bool cancel(EventId id);

  // Runs until no event is pending or stop() is called. Returns the number of events run.
  std::uint64_t run();
  // Runs every event with time <= limit; afterwards now() == limit if the queue drained past it.
  std::uint64_t run_until(Time limit);
  void stop() { stopped_ = true; }

  // Calls `hook` after every `every` events run (0: never), e.g. to report progress.
  void set_progress_hook(std::uint64_t every, std::function<void()> hook) {
    progress_every_ = every;
    progress_ = std::move(hook);
  }

  std::size_t pending() const { return live_; }
  std::uint64_t events_run() const { return events_run_; }

 private:
  static constexpr int kDigit = 6;
  static constexpr int kFan = 1 << kDigit;                  // buckets per level
  static constexpr int kLevels = (63 + kDigit - 1) / kDigit;  // times are non-negative: 63 bits

  struct Entry {
    std::uint64_t time;
    std::uint64_t seq;
    Callback::Raw call;
  };

  // The per-event paths are forced inline (into schedule_at, refill_front and step, all in
  // simulator.cpp): as calls, saving and restoring registers was a sixth of their instructions.
  [[gnu::always_inline]] inline void place(const Entry& e);
  void refill_front();  // the front queue is empty and size_ > 0
  void rebase(std::uint64_t key);
  [[gnu::always_inline]] inline bool is_live(std::uint64_t seq) const;
  [[gnu::always_inline]] inline void set_live(std::uint64_t seq);
  [[gnu::always_inline]] inline void clear_live(std::uint64_t seq);
  void slide_live();  // clear_live emptied the first word still in use
  bool step(Time limit);

  std::vector<Entry> front_;  // the sorted front run, read from front_head_
  std::size_t front_head_ = 0;
  std::uint64_t front_max_ = 0;  // latest time in the front run while it is not empty
  std::array<std::array<std::vector<Entry>, kFan>, kLevels> buckets_;
  std::array<std::uint64_t, kLevels> occupied_{};  // bit s of word h: bucket (h, s) non-empty
  std::uint32_t levels_occupied_ = 0;               // bit h: some bucket of level h non-empty
  std::uint64_t last_ = 0;
  std::size_t size_ = 0;  // entries held, cancelled ones included

  std::vector<std::uint64_t> live_bits_;  // word i covers sequence numbers 64 * (live_base_ + i) ...
  std::size_t live_front_ = 0;            // words before this index are all zero
  std::uint64_t live_base_ = 0;

  Time now_{};
  std::uint64_t next_seq_ = 1;
  std::uint64_t events_run_ = 0;
  std::size_t live_ = 0;
  bool stopped_ = false;
  std::uint64_t progress_every_ = 0;
  std::function<void()> progress_;
};

}  // namespace moesim::sim
