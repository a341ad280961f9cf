#include "sim/assert.hpp"

#include <fmt/format.h>

namespace moesim::sim {

void assert_fail(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(fmt::format("internal error at {}:{}: {} ({})", file, line, msg, expr));
}

}  // namespace moesim::sim
