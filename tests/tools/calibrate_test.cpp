#include <catch2/catch.hpp>

#include <cmath>

#include "tools/calibrate.hpp"

using namespace moesim::tools;

TEST_CASE("calibrate bisects a key's range to the value whose metric meets the target", "[calibrate]") {
  // A step time that falls as the efficiency rises: 1000 / e. The target 4000 is met at 0.25.
  int runs = 0;
  const auto step = [&](double e) {
    ++runs;
    return 1000 / e;
  };
  const Calibration c = calibrate(step, 0.05, 1, 4000, 0.001);
  CHECK(c.met);
  CHECK(c.value == Approx(0.25).epsilon(0.002));
  CHECK(std::abs(c.metric / 4000 - 1) <= 0.001);
  CHECK(static_cast<int>(c.trials.size()) == runs);
  CHECK(c.trials[0].value == 0.05);  // the ends first
  CHECK(c.trials[1].value == 1);
  CHECK(c.trials[2].value == Approx(0.525));  // then the middle
  // A metric that rises with the key (tokens/s): the same search the other way.
  const Calibration up = calibrate([](double e) { return 5000 * e; }, 0.05, 1, 1500, 0.001);
  CHECK(up.met);
  CHECK(up.value == Approx(0.3).epsilon(0.002));
  // An end that meets the target stops there.
  CHECK(calibrate(step, 0.05, 1, 1000.5, 0.001).trials.size() == 2);
  // Out of reach, or no range: refused, naming what the ends give.
  CHECK_THROWS_WITH(calibrate(step, 0.05, 1, 100, 0.001), Catch::Contains("outside what the range gives: 20000 at 0.05, 1000 at 1"));
  CHECK_THROWS_AS(calibrate(step, 1, 0.05, 4000, 0.001), CalibrateError);
  CHECK_THROWS_AS(calibrate(step, 0.05, 1, -1, 0.001), CalibrateError);
  // Too few runs for the tolerance: the nearest trial, not met.
  const Calibration short_of = calibrate(step, 0.05, 1, 4000, 1e-9, 5, {});
  CHECK_FALSE(short_of.met);
  CHECK(short_of.trials.size() == 5);
  double nearest = 1e300;
  for (const auto& t : short_of.trials) nearest = std::min(nearest, std::abs(t.metric / 4000 - 1));
  CHECK(std::abs(short_of.metric / 4000 - 1) == nearest);
}
