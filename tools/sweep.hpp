// `moesim sweep`: run every point of a grid (scenarios/grid.hpp) and collect one CSV row per
// point: `point`, the axes' values, every summary.csv column, and `point_config` (a hash of the
// base scenario's text, the --set values and the point's axis values).
//
// Resumable: rows are appended as points finish (each row one write, flushed); a re-run of the
// same grid and output keeps the complete rows, drops a partial last line (a killed run), and
// runs only the missing points. When every point has a row, the file is rewritten in point
// order (through a temporary file renamed into place), so the result does not depend on the
// number of jobs, of MPI ranks, or on interruptions.
//
// Under MPI (`mpirun -np N moesim sweep ...`, built where MPI is found) the missing points are
// dealt round-robin over the ranks; every rank runs its share on its own threads and sends each
// finished row to rank 0, the only one that reads and writes the output.
#pragma once

#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "scenarios/grid.hpp"
#include "scenarios/scenario.hpp"

namespace moesim::tools {

class SweepError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SweepOptions {
  int jobs = 1;                    // points run at once (per MPI rank)
  std::vector<std::string> sets;   // KEY.PATH=VALUE applied to every point (before the axes)
  std::string reports;             // non-empty: each point's reports in reports/point-NNNN/
  // After rows are written (one point's, or the points one simulation served): the rows the file
  // has, the points, and the rows this run has written.
  std::function<void(std::size_t done, std::size_t total, std::size_t ran)> progress;
};

struct SweepResult {
  std::size_t points = 0;
  std::size_t already = 0;     // rows found from an earlier run (and kept)
  std::size_t stale = 0;       // rows of an earlier run whose point has changed since: run again
  std::size_t ran = 0;
  std::size_t simulations = 0;  // the runs they took (under MPI, rank 0's count is all ranks'): points that differ only in what the reports read share one
  std::size_t infeasible = 0;  // rows whose point does not fit the GPUs' memory
  std::size_t invalid = 0;     // rows of points the scenario rules refuse (grid skip: invalid)
  std::size_t unfit = 0;       // of the infeasible, points not simulated (grid skip: unfit)
  std::size_t skipped = 0;     // of the points run now, those the grid's skip kept from running
  int ranks = 1;               // MPI ranks that ran points
};

// Runs the missing points on opts.jobs threads. Throws SweepError (output unusable) and
// scenarios::ScenarioError (a point is invalid: all points are checked before any runs).
SweepResult run_sweep(const scenarios::Grid& grid, const std::string& out, const SweepOptions& opts);

// Whether this process was started by an MPI launcher (and MPI support is built in).
bool launched_under_mpi();
// The same under MPI: every rank calls it; rank 0 writes `out` and gets the totals. The MPI
// runtime is initialised and finalised inside. Exceptions thrown before any point runs (bad grid
// or point) are thrown on every rank; `*rank` tells the caller whether to print them.
SweepResult run_sweep_mpi(const scenarios::Grid& grid, const std::string& out, const SweepOptions& opts,
                          int* rank);

namespace detail {

// The pieces both drivers share.
struct Sweep {
  std::vector<std::vector<std::string>> points;   // per point, its overrides
  std::vector<scenarios::Scenario> scenarios;     // per point, checked
  std::vector<std::string> configs;               // per point, a hash of what it runs
  // Per point, why it is not run (grid skip: its row's infeasible_reason), or empty: it runs.
  // unfit: skipped for its memory (fits_memory=no) rather than refused by the scenario rules.
  std::vector<std::string> skipped;
  std::vector<char> unfit;
  std::string axes_header;                        // "point,axis,..."
  SweepOptions opts;
  // Checks every point. Throws ScenarioError naming the point's key (unless the grid skips
  // invalid points).
  Sweep(const scenarios::Grid& grid, const SweepOptions& opts);
  // The points among `todo` that one simulation serves, in order: those whose overrides differ
  // only in keys no step depends on (reliability.*, cluster.gpu_hour_price), which only the
  // reports read.
  std::vector<std::vector<std::size_t>> groups(const std::vector<std::size_t>& todo) const;
  // Runs a group's simulation once and reports each of its points (writing their reports if
  // asked): per point, the full header and the row.
  std::vector<std::pair<std::string, std::string>> run_group(const std::vector<std::size_t>& group) const;
  // Whether the group runs a simulation (a skipped point's does not).
  bool simulates(const std::vector<std::size_t>& group) const;
};

// The output file: rows from an earlier run, then rows appended as they come (thread-safe).
class SweepFile {
 public:
  // configs: per point, the hash its row must end with; rows with another (the base scenario,
  // --set or the axes changed since) are dropped and run again.
  SweepFile(std::string path, std::vector<std::string> configs);
  std::vector<std::size_t> missing() const;
  std::size_t already() const { return already_; }
  std::size_t stale() const { return stale_; }
  // Appends (and flushes) one row; checks the header matches the file's.
  void add(std::size_t point, const std::string& header, const std::string& row);
  // When every point has its row: rewrites the file in point order, atomically.
  void finish();
  std::size_t rows() const;
  std::size_t infeasible() const;
  std::size_t invalid() const;  // rows whose infeasible_reason starts "invalid: "
  std::size_t unfit() const;    // rows whose infeasible_reason starts "not simulated: "

 private:
  void open_append();
  std::size_t count_reasons(std::string_view prefix) const;
  std::string path_;
  std::vector<std::string> configs_;
  std::size_t already_ = 0, stale_ = 0;
  std::string header_;
  std::map<std::size_t, std::string> rows_;
  std::unique_ptr<std::ofstream> append_;
  mutable std::mutex lock_;
};

// Runs fn(i) for every index on `jobs` threads; the first exception stops the others and is
// rethrown.
void parallel_for(const std::vector<std::size_t>& indices, int jobs, const std::function<void(std::size_t)>& fn);

}  // namespace detail

}  // namespace moesim::tools
