// A sweep grid (`moesim sweep GRID.yaml`): a base scenario and axes of scenario key paths.
//
//   base: ../quickstart.yaml       # relative to the grid file
//   out: sweep.csv                 # optional, relative to the grid file (--out overrides)
//   axes:
//     parallelism.ep: [4, 8, 16]                 # a list of values
//     routing.zipf_s: {from: 0.5, to: 1.5, step: 0.25}   # a range, both ends included
//   zip: [routing.zipf_s, workload.seed]          # optional: these axes advance together
//   (or several groups, each advancing apart: zip: [[a, b], [c, d]])
//   skip: [invalid, unfit]    # optional: points that are not run (below)
//
// Points are the cartesian product of the axes (zipped axes count as one, and must have equal
// lengths), the first axis varying slowest. Every point is checked like a scenario with the
// axes' values set (`--set`), before anything runs. With `skip: [invalid]` a point the scenario
// rules refuse (a layout search's cartesian product: a tensor-parallel size that does not divide
// the heads, stages that do not divide the layers) gets a row that says why instead of failing
// the sweep; with `skip: [unfit]` a point whose busiest GPU needs more memory than it has before
// any routing (weights, gradients, optimizer state and the activations routing does not change)
// is not simulated either.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace moesim::scenarios {

class GridError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Grid {
  std::string source;  // the grid file
  std::string base;    // the base scenario, resolved against the grid file's folder
  std::string out;     // resolved; empty: not given
  std::vector<std::string> axes;                  // key paths, in file order
  std::vector<std::vector<std::string>> values;   // per axis
  std::vector<std::vector<int>> zipped;           // groups of axis indices advancing together
  bool skip_invalid = false;  // skip: invalid
  bool skip_unfit = false;    // skip: unfit
  // Per point, the "path=value" overrides.
  std::vector<std::vector<std::string>> points() const;
};

// Throws GridError naming the file, line and the axis.
Grid load_grid(const std::string& path);

// Why the scenario rules refuse a point of the grid, in one line: every problem without the
// base file's name ("parallelism.tp: ...; parallelism.pp: ...").
std::string invalid_point_reason(const Grid& grid, const std::runtime_error& error);

// Whether a YAML file is a grid (a mapping with `base`) rather than a scenario; false for a file
// that cannot be read or parsed (loading it as a scenario then says why).
bool is_grid_file(const std::string& path);

}  // namespace moesim::scenarios
