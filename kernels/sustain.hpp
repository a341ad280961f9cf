// When a measurement may be timed: heavy work in the GPU's sustained state, light work at its
// top clock.
//
// An H100 SXM at its 700 W power cap holds its top SM clock (1980 MHz) for about a second of
// heavy work, then settles 25-30 % lower for as long as the work goes on (the card's clock log
// of an earlier run, every 250 ms, kernels/profiles/h100-measure/earlier-router/
// heldout-repeat-nvidia-smi.csv: heavy work from 18:11:19.6, 1980 MHz up to 20.4, 1665 MHz at
// 20.6 under the software power cap, then 1335-1965 MHz, the middle half 1410-1485, until
// 37.9; back at 1980 MHz at 38.4; kernels/profiles/summarize.py prints these). A heavy kernel
// timed right after light work therefore runs faster than the same kernel in a long run, or
// than its neighbours timed later in a stretch of heavy work. A training or serving step keeps
// the GPU busy for seconds, so the profile times heavy work in that sustained state:
//
// - a measurement is heavy when one run takes `heavy_us` or more (the GPU kept busy, not
//   waiting on launches and host syncs), else light;
// - a heavy measurement is timed only once heavy work has run for `seconds` without a pause of
//   more than `pause_s` (the measured work itself is run until then; heavy measurements back
//   to back, as in a sweep along rows, share one stretch);
// - a light measurement right after heavy work is timed only once `settle_s` have passed since
//   that work ended (the light work itself run until then): the clock is back at its top
//   within 250 ms of heavy work's end, and light work timed at once may still run under the
//   cap (likely what made the small layer at 3 tokens 14 % slower when timed again right after
//   the held-out cases up to 49,152 tokens than the first time, h100-measure/earlier-router/
//   heldout-stages.csv). So light work is timed at the top clock, as a light workload runs.
//
// Plain C++ on time points the caller passes, so that the rule is tested without a GPU
// (test_reference.cpp).
#pragma once

#include <chrono>

namespace moe {

class SustainedLoad {
 public:
  using Clock = std::chrono::steady_clock;

  // seconds <= 0: neither rule (everything timed as it comes).
  explicit SustainedLoad(double seconds, double heavy_us = 500, double pause_s = 0.2, double settle_s = 0.3)
      : seconds_(seconds), heavy_us_(heavy_us), pause_s_(pause_s), settle_s_(settle_s) {}

  double seconds() const { return seconds_; }
  bool heavy(double run_us) const { return seconds_ > 0 && run_us >= heavy_us_; }

  // A measurement whose warm-up runs began at `begin`, one run taking `run_us`: how many more
  // seconds of the same work to run before timing it. Heavy: until its stretch is `seconds`
  // long; the stretch starts at `begin` unless the last heavy work ended at most pause_s before
  // it (asking again with the same `begin` is the same question). Light: until settle_s after
  // the last heavy work.
  double remaining(Clock::time_point begin, double run_us, Clock::time_point now) {
    if (seconds_ <= 0) return 0;
    if (!heavy(run_us)) {
      const double left = ended_ ? settle_s_ - seconds_between(until_, now) : 0;
      return left > 0 ? left : 0;
    }
    if (!ended_ || seconds_between(until_, begin) > pause_s_) since_ = begin;
    const double left = seconds_ - seconds_between(since_, now);
    return left > 0 ? left : 0;
  }

  // The heavy measurement's timed runs ended at `end`: the stretch goes on to here.
  void ended(Clock::time_point end) {
    until_ = end;
    ended_ = true;
  }

  // Heavy work other than a measurement (a warm-up) ran from `begin` to `end`: a stretch as a
  // measurement's would be.
  void ran(Clock::time_point begin, Clock::time_point end) {
    if (!ended_ || seconds_between(until_, begin) > pause_s_) since_ = begin;
    ended(end);
  }

 private:
  static double seconds_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  }
  double seconds_, heavy_us_, pause_s_, settle_s_;
  bool ended_ = false;
  Clock::time_point since_{}, until_{};
};

}  // namespace moe
