// Decode contexts that differ by sequence (workload.context_sigma): how many cached tokens each
// attention group's sequences attend to, per micro-batch. Untimed; the workload driver times a
// group's attention by its sequences' mean context, the memory report holds their caches.
#pragma once

#include <cstdint>
#include <vector>

namespace moesim::routing {

// Sums over one group's sequences of one micro-batch: their contexts c, min(c, window) (what a
// sliding-window layer reads and keeps) and min(c, top) (what sparse attention's top-k reads).
struct ContextLoad {
  double sum = 0, window = 0, top = 0;
  std::int64_t longest = 0;
};

struct DecodeContexts {
  std::int64_t mean = 0;       // workload.context_length
  double sigma = 0;            // log-space spread of a sequence's context; 0: every one `mean`
  bool balanced = false;       // dealt to the groups to even out their caches (else as they come)
  int micro_batches = 1;
  int groups = 1;              // attention groups (tensor-parallel groups; GPUs without tp)
  std::int64_t sequences = 1;  // a group's sequences in a micro-batch
  std::int64_t window = 0;     // model.sliding_window (0: none)
  std::int64_t top = 0;        // sparse attention's top-k (0: none)
};

// Each sequence's context is drawn from a log-normal law of mean `mean` (its logarithm normal with
// standard deviation `sigma`), rounded, at least 1; streams by seed, step and micro-batch. As they
// come (`balanced` false): a group's sequences are its own draws, as round-robin or random
// admission gives them. Balanced: the micro-batch's sequences of every group, pooled and dealt
// longest first to the group holding the fewest cached tokens among those with room (each holds
// `sequences`; EPLB's balanced_packing), as DeepSeek's decode load balancer evens out the KV cache
// its GPUs hold ("DeepSeek-V3/R1 Inference System Overview", 2025). Indexed
// [micro_batch * groups + group].
std::vector<ContextLoad> context_loads(const DecodeContexts& d, std::uint64_t seed, int step);

}  // namespace moesim::routing
