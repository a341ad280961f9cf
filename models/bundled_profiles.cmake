# Builds bundled_profiles.cpp: the measured kernel profiles of kernels/profiles/, as byte arrays
# (a raw string literal would pass the 64 KiB that -Wpedantic allows), so that `moesim` finds
# them from any directory.
#   cmake -DSOURCE=<repo> -DOUT=<file> -P bundled_profiles.cmake
file(READ "${SOURCE}/kernels/profiles/nvidia-h100-80gb-hbm3.csv" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "(..)" "'\\\\x\\1'," array "${hex}")
file(WRITE "${OUT}.tmp" "// Generated from kernels/profiles/ by models/bundled_profiles.cmake; do not edit.
#include <cstddef>
namespace moesim::models::bundled {
extern const char kH100[];
extern const std::size_t kH100Size;
const char kH100[] = {${array}};
const std::size_t kH100Size = ${bytes};
}  // namespace moesim::models::bundled
")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
