// `moesim calibrate SCENARIO.yaml --key KEY.PATH --target METRIC=VALUE`: the value of one
// numeric scenario key (compute.flops_efficiency, compute.attention_efficiency, ...) at which a
// run's summary.csv metric (step_time_us, tokens_per_s_per_gpu, ...) meets a figure measured on
// a real system, so that the scenario describes that system's software rather than a lean
// implementation (docs/validation.md: Megatron-Core's MoE training runs 2-5 times below
// moesim's default roofline). Bisection between two values of the key, which the metric must
// cross monotonically: both ends are run first, and a target outside what they give is refused.
#pragma once

#include <functional>
#include <stdexcept>
#include <vector>

namespace moesim::tools {

// A target the key's range cannot reach, or a range that is not one: the user's to fix.
class CalibrateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CalibrationTrial {
  double value = 0, metric = 0;
};

struct Calibration {
  double value = 0, metric = 0;  // the trial nearest the target
  bool met = false;              // within the tolerance
  std::vector<CalibrationTrial> trials;  // in the order run
};

// metric_at(value) runs the scenario with the key at `value`. Stops at the first trial within
// `tolerance` (relative: 0.005 = 0.5 %) of the target, or after max_runs trials (the nearest
// then, met = false). `on_trial` (optional) hears of each trial as it ends. Throws
// CalibrateError where lo >= hi or the target lies outside the metric at the two ends.
Calibration calibrate(const std::function<double(double)>& metric_at, double lo, double hi, double target, double tolerance,
                      int max_runs = 24, const std::function<void(const CalibrationTrial&)>& on_trial = {});

}  // namespace moesim::tools
