// Count-level routing traces: how many token copies each expert of each layer received.
//
// Format (docs/traces.md): CSV with the header `layer,expert,count`, one row per (layer, expert),
// whole non-negative counts; `#` lines and blank lines are skipped. Experts a layer's rows do not
// mention received nothing. The file is read as a stream, one line at a time.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesim::routing {

// A bad trace: the message names the file and line.
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Per layer present in the file: counts by expert (size `experts`). Throws TraceError.
std::map<int, std::vector<double>> read_count_trace(const std::string& path, int experts);

}  // namespace moesim::routing
