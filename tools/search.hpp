// `moesim search SCENARIO`: a layout search without writing the grid. From the scenario's
// cluster and model it lists the parallel sizes worth trying (tensor-parallel sizes inside a
// node, pipeline stages, EP sizes, and in training virtual stages and a sharded optimizer), holds
// the step's batch (workload.global_batch), writes that grid as a file beside the output, and
// `moesim plan` runs it: points the rules refuse or that cannot fit are skipped (skip: [invalid,
// unfit]), the rest simulated and ranked.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "scenarios/scenario.hpp"

namespace moesim::tools {

class SearchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The dimensions a search may vary (--vary), by name: tp, pp, ep, vp (virtual stages), zero
// (optimizer sharding), and only when asked for, cp (context parallelism), batch (decode's
// sequences per GPU), sched (the pipeline schedule, with its virtual stages), recompute, etp
// (expert tensor parallelism), shard (hybrid sharding's group, workload.shard_group), sync (the
// gradient sync's algorithm), a2a (the all-to-all's, network.all_to_all), nodes (the cluster's
// size, cluster.nodes), gpu (the GPU presets the nodes can hold, cluster.gpu), nic (the NICs'
// bandwidth) and fabric (the scale-out topology).
inline const std::vector<std::string> kSearchDimensions{"tp",  "pp",    "ep",   "vp",  "zero",  "cp",  "batch", "sched", "recompute",
                                                        "etp", "shard", "sync", "a2a", "nodes", "gpu", "nic",   "fabric"};

struct SearchSpace {
  std::vector<std::string> axes;                 // key paths
  std::vector<std::vector<std::string>> values;  // per axis
  // Where the points' figures do not compare like for like (a measured profile that times some
  // points' expert stage and not others'), what to do about it; empty otherwise.
  std::string caution;
  std::vector<std::vector<std::string>> zipped;  // groups of axes that advance together (cp and the tokens per GPU; a schedule and its virtual stages)
  std::int64_t global_batch = 0;                 // held (training); 0: not a training search
  std::string note;                              // in words: what is held, what is varied
};

// The candidate values for the scenario: tp the powers of two that divide a node's GPUs; pp
// (training) the divisors of the cluster's GPUs up to its MoE layers; ep the divisors of both
// the experts and the GPUs; vp 1 and 2 (training with stages); zero false and true (training with
// a gradient sync); cp the powers of two up to 16 that divide the sequence and the tokens per GPU,
// each GPU then holding tokens_per_gpu / cp (the sequences of a micro-batch stay, as Megatron-LM's
// micro-batch size does, so the micro-batches grow by cp); batch (decode) the powers of two from 1
// to twice the scenario's sequences per GPU; sched (training with stages, instead of vp) 1F1B,
// interleaved 1F1B (2 virtual stages), ZB-H1, DualPipeV and, with a gradient sync, DualPipe;
// recompute (training) none, of the attention, of whole layers; etp the powers of two that divide
// a node's GPUs and the experts' FFN; shard (training with sharding, searched or the scenario's)
// the whole stage (~) and groups of 1, 2, 4, ... nodes smaller than the cluster. `vary` picks
// dimensions (empty: every one that applies but cp, batch, sched, recompute, etp and shard;
// naming one that does not apply is an error). global_batch > 0 holds that many sequences a step; 0 holds the
// scenario's own (its micro-batches' sequences), which must be whole.
SearchSpace search_space(const scenarios::Scenario& sc, const std::vector<std::string>& vary, std::int64_t global_batch);

// The grid file's text: a comment saying what it searches, base (as given), the axes, skip.
std::string search_grid_yaml(const SearchSpace& space, const std::string& base);

}  // namespace moesim::tools
