// Internal invariants. A failed check is a bug in moesim, never bad user input (that throws a
// typed error instead), so it throws InternalError and main() exits with code 1.
#pragma once

#include <stdexcept>
#include <string>

namespace moesim::sim {

class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace moesim::sim

#define MOESIM_ASSERT(cond, msg)                                              \
  do {                                                                        \
    if (!(cond)) ::moesim::sim::assert_fail(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
