// `moesim diff A B`: two runs' summary.csv side by side, what changed from A to B.
//
// A and B are run output directories (their summary.csv) or summary.csv files. Rows: the
// settings that differ (text columns such as gpu, network_model, all_to_all), then the figures a
// comparison turns on: the step time and its stages on the critical GPU, throughput, exposed
// communication, imbalance, drops, network bytes and memory, where either run has them; each with
// A, B (as the files write them), B - A and B / A.
// With `all`, every column that differs. Both files must have the same columns (reports of one
// moesim version); a file that is missing or not a summary is an input error.
#pragma once

#include <ostream>
#include <stdexcept>
#include <string>

namespace moesim::tools {

class DiffInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Prints the comparison; returns how many columns differ.
int diff_summaries(const std::string& a, const std::string& b, bool all, std::ostream& out);

}  // namespace moesim::tools
