#include "tools/calibrate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace moesim::tools {

Calibration calibrate(const std::function<double(double)>& metric_at, double lo, double hi, double target, double tolerance,
                      int max_runs, const std::function<void(const CalibrationTrial&)>& on_trial) {
  if (!(lo < hi)) throw CalibrateError(fmt::format("--range {},{} is not a range (the first value must be below the second)", lo, hi));
  if (!(target > 0) || !std::isfinite(target)) throw CalibrateError(fmt::format("the target must be a number > 0, got {}", target));
  if (!(tolerance > 0)) throw CalibrateError("the tolerance must be > 0");
  Calibration c;
  const auto off = [&](double metric) { return std::abs(metric / target - 1); };
  const auto trial = [&](double value) {
    const CalibrationTrial t{value, metric_at(value)};
    c.trials.push_back(t);
    if (on_trial) on_trial(t);
    if (c.trials.size() == 1 || off(t.metric) < off(c.metric)) {
      c.value = t.value;
      c.metric = t.metric;
    }
    return t.metric;
  };
  const double at_lo = trial(lo);
  if (off(at_lo) <= tolerance) {
    c.met = true;
    return c;
  }
  const double at_hi = trial(hi);
  if (off(at_hi) <= tolerance) {
    c.met = true;
    return c;
  }
  if (target < std::min(at_lo, at_hi) || target > std::max(at_lo, at_hi))
    throw CalibrateError(fmt::format("the target {:g} is outside what the range gives: {:g} at {:g}, {:g} at {:g} (widen --range, "
                                     "or calibrate another key)",
                                     target, at_lo, lo, at_hi, hi));
  // The metric rises or falls across the range; keep the target between the two ends.
  const bool rising = at_hi > at_lo;
  double a = lo, b = hi;
  while (static_cast<int>(c.trials.size()) < max_runs) {
    const double mid = (a + b) / 2;
    const double m = trial(mid);
    if (off(m) <= tolerance) {
      c.met = true;
      return c;
    }
    if ((m < target) == rising) a = mid;
    else b = mid;
  }
  return c;
}

}  // namespace moesim::tools
