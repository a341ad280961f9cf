// `moesim sweep`: run every point of a grid (scenarios/grid.hpp) and collect one CSV row per
// point: `point`, the axes' values, then every summary.csv column.
//
// Resumable: rows are appended as points finish (each row one write, flushed); a re-run of the
// same grid and output keeps the complete rows, drops a partial last line (a killed run), and
// runs only the missing points. When every point has a row, the file is rewritten in point
// order (through a temporary file renamed into place), so the result does not depend on the
// number of jobs or on interruptions.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

#include "scenarios/grid.hpp"

namespace moesim::tools {

class SweepError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SweepResult {
  std::size_t points = 0;
  std::size_t already = 0;  // rows found from an earlier run
  std::size_t ran = 0;
};

// Runs the missing points on `jobs` threads; `progress(done, total)` after each point.
// Throws SweepError (output unusable) and scenarios::ScenarioError (a point is invalid: all
// points are checked before any runs).
SweepResult run_sweep(const scenarios::Grid& grid, const std::string& out, int jobs,
                      const std::function<void(std::size_t, std::size_t)>& progress);

}  // namespace moesim::tools
