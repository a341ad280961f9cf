// The discrete-event core.
//
// Events are ordered by the total key (time, insertion sequence), so events at equal times run
// first-in first-out and a run is reproducible bit for bit (ns-3's rule). Cancellation is lazy:
// a cancelled event's slot is freed at once and its heap entry is skipped when it surfaces.
// The pending set is a 4-ary min-heap of 24-byte keys; callbacks live in a slab indexed by slot,
// so heap moves never touch them. A callback that schedules exactly one follow-up (the common
// "re-arm" pattern of htsim components) replaces the heap root instead of pop + push.
// No globals: any number of Simulators can live in one process.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "sim/time.hpp"

namespace moesim::sim {

struct EventId {
  std::uint64_t seq = 0;
  std::uint32_t slot = 0;
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
  struct Entry {
    std::int64_t time_ps;
    std::uint64_t seq;
    std::uint32_t slot;
  };
  struct Slot {
    Callback cb;
    std::uint64_t seq = 0;  // the live event's seq, or 0 when free
  };
  static bool before(const Entry& a, const Entry& b) {
    return a.time_ps < b.time_ps || (a.time_ps == b.time_ps && a.seq < b.seq);
  }

  std::uint32_t alloc_slot();
  void free_slot(std::uint32_t slot);
  void sift_up(std::size_t i);
  void sift_down(std::size_t i);
  void pop_root();
  bool step(Time limit);

  std::vector<Entry> heap_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_slots_;
  Time now_{};
  std::uint64_t next_seq_ = 1;
  std::uint64_t events_run_ = 0;
  std::size_t live_ = 0;
  bool stopped_ = false;
  bool root_is_running_ = false;  // the root's event is executing; its heap entry may be reused
};

}  // namespace moesim::sim
