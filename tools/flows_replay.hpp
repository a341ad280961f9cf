// `moesim flows`: replays a list of flows on a scenario's cluster and network model.
//
// Input CSV, header `src,dst,bytes,start_us`: global GPU indices, a whole number of bytes
// (0 allowed), a start time in microseconds (decimal, exact to the picosecond). Output CSV:
// `flow,src,dst,bytes,start_us,end_us`, one row per input row in input order (flow = 0-based
// row number), end_us the exact completion time printed to the picosecond. The input is read
// as a stream; the flows are all held in memory while they run.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "scenarios/scenario.hpp"

namespace moesim::tools {

// A bad flows file: the message names the file and line.
class FlowsInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct FlowsReplayResult {
  std::uint64_t flows = 0;
  double last_end_us = 0;
  std::uint64_t events = 0;
};

// Reads flows_path, simulates, writes out_path (atomically: a temporary file renamed into place).
// Throws FlowsInputError for bad input, ReportError when the output cannot be written.
FlowsReplayResult replay_flows(const scenarios::Scenario& sc, const std::string& flows_path,
                               const std::string& out_path);

}  // namespace moesim::tools
