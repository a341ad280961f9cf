// GPU test: the layer, forward and backward, against the float64 reference on three
// configurations (dropless softmax, capacity drops, DeepSeek-style sigmoid scoring with
// group-limited routing); `--forward` or `--backward`: that pass only. Exit code 77
// (CTest: skipped) where no CUDA device is present.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "check.cuh"

int main(int argc, char** argv) {
  const bool forward = argc < 2 || std::strcmp(argv[1], "--forward") == 0;
  const bool backward = argc < 2 || std::strcmp(argv[1], "--backward") == 0;
  if (argc > 2 || (!forward && !backward)) {
    std::printf("usage: moe-kernels-test [--forward | --backward]\n");
    return 2;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device present (the layer's GPU checks need one)\n");
    return 77;
  }
  moe::Config dropless;
  dropless.name = "dropless";
  moe::Config capped = dropless;
  capped.name = "capacity 1.0";
  capped.capacity_factor = 1.0;
  moe::Config grouped;
  grouped.name = "sigmoid, 2 of 4 groups";
  grouped.hidden = 512, grouped.ffn = 256, grouped.experts = 16, grouped.top_k = 4;
  grouped.scoring = moe::Scoring::sigmoid, grouped.groups = 4, grouped.max_groups = 2;
  int failed = 0;
  try {
    for (const auto& c : {dropless, capped, grouped}) {
      if (forward) {
        const moe::CheckResult r = moe::check_layer(c, 512, 64, 11);
        std::printf("%-24s %s\n", c.name.c_str(), r.describe().c_str());
        failed += r.ok ? 0 : 1;
      }
      if (backward) {
        const moe::BackwardCheck b = moe::check_backward(c, 128, 13);
        std::printf("%-24s backward %s\n", c.name.c_str(), b.describe().c_str());
        failed += b.ok ? 0 : 1;
      }
    }
  } catch (const std::exception& e) {
    std::printf("FAIL: %s\n", e.what());
    return 1;
  }
  return failed == 0 ? 0 : 1;
}
