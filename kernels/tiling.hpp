// Filling a buffer with copies of its first block: the profiler's token rows (a few thousand
// random rows repeated; timings do not depend on the values) built on the device, so that no
// host buffer of the full size (7.5 GB for DeepSeek-V3's 524,288 rows) is filled and copied
// for every layer the profiler builds.
//
// Each step copies everything filled so far onto what follows it (block, 2 blocks, 4 blocks,
// ...): log2(total / block) copies, each between ranges that do not overlap, so element i ends
// up equal to element i mod block. Plain C++ over a copy function, so that it is tested without
// a GPU (test_reference.cpp).
#pragma once

#include <algorithm>
#include <cstddef>

namespace moe {

// copy(dst, src, count): copy `count` elements from offset `src` to offset `dst` of the buffer.
template <class Copy>
void tile(std::size_t total, std::size_t block, Copy&& copy) {
  if (block == 0) return;
  for (std::size_t filled = std::min(block, total); filled < total;) {
    const std::size_t n = std::min(filled, total - filled);
    copy(filled, std::size_t{0}, n);
    filled += n;
  }
}

}  // namespace moe
