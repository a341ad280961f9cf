// Failures and checkpoints over a long training run: how much of the wall-clock time goes to
// steps that count (the goodput), as the first-order model of checkpoint and restart gives it.
//
// A synchronous job stops whenever one of its GPUs fails (with the rest of its node, its NICs and
// its links): with GPUs that fail independently at a constant rate, one every `gpu_mtbf_hours`,
// the job fails at N times that rate (its MTBF M is the GPU's over N). It saves its state every
// k steps (a checkpoint taking C seconds in which no step runs); a failure loses the work since
// the last checkpoint and R seconds of restart (finding the failure, replacing the node, loading
// the checkpoint), during which another failure may strike. The expected wall time of one
// segment of tau = k x step seconds of work and its checkpoint is then
//
//     E = M e^(R/M) (e^((tau + C)/M) - 1)
//
// (J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
// Future Generation Computer Systems 22, 2006: exponential failures, failures during restart
// and during the checkpoint included), and the goodput is tau / E. For M much longer than tau,
// C and R it is about 1 - C/tau - tau/(2M) - R/M: Young's first-order waste.
//
// Asynchronous checkpoints (Megatron-LM's async save, PyTorch's async_save) stall the steps only
// while each GPU copies its share to host memory (C), and are written to storage in W seconds
// while the next steps run; a failure before the write ends goes back one checkpoint further.
// Host memory holds one checkpoint, so a copy waits for the previous write: the steps between
// two copies take max(tau, W). From a checkpoint just written, the next is safe after
// max(tau, W) + C seconds without a failure; after a restart, the first needs tau + C + W (its
// steps, its copy and its write), so a segment takes
//
//     E = M e^((R + tau + C + W)/M) (1 - e^(-(max(tau, W) + C)/M))
//
// on average: the first attempt's expected length, and if it fails the restart and Daly's E for
// the longer window, summed (with W = 0 it is Daly's). Left out: failures that slow the job
// without stopping it, and the time a failure takes to be noticed beyond R.
//
// Spare nodes (spare_nodes = K >= 0, with a repair time T): a failed node is out T. A failure
// finds a spare when fewer than K nodes are out, and the restart is R; otherwise the job waits,
// besides R, until enough nodes are back. Failures come at the job's rate 1/M and each is out T,
// so at a failure the nodes already out are Poisson with mean a = T/M (an infinite-server queue;
// arrivals see its time average), their remaining repair times uniform in [0, T]. With n out and
// K >= 1 the job waits for the (n + 1 - K)-th of them to return, on average T (n + 1 - K)/(n + 1);
// with no spares it waits for the failed node itself, T. The restart is then R + W with
//     W = T sum_{n >= K} P(n) (n + 1 - K)/(n + 1)   (K >= 1),   W = T   (K = 0),
// and the spares' GPUs are paid for while idle. Left out: a failure during a wait (the nodes
// then out are as many as Poisson says, the job's own waiting included).
#pragma once

#include "routing/moe_spec.hpp"

namespace moesim::models {

struct ReliabilitySpec {
  double gpu_mtbf_hours = 0;       // mean time between job-stopping failures of one GPU; 0: not modelled
  double restart_s = 0;            // R: from a failure to steps running again
  double checkpoint_bytes_per_s = 0;  // the storage's aggregate write rate; 0 when checkpoint_s is given
  double checkpoint_s = 0;         // C as given (a measured stall); 0: checkpoint bytes over the rate
                                   // (asynchronous: the GPU's share over host_bytes_per_s)
  int checkpoint_every_steps = 0;  // k as given; 0: the k with the most goodput
  bool async = false;              // written to storage behind the steps, after a copy to host memory
  double host_bytes_per_s = 0;     // asynchronous: each GPU's copy to host memory (its PCIe link)
  int spare_nodes = -1;            // K: idle nodes that replace failed ones; -1: not modelled (R as given)
  double repair_s = 0;             // T: how long a failed node is out (with spare_nodes)
  bool enabled() const { return gpu_mtbf_hours > 0; }
  bool spares() const { return spare_nodes >= 0; }
};

struct Goodput {
  double job_mtbf_s = 0;        // M
  double checkpoint_bytes = 0;  // what one checkpoint writes (0 when checkpoint_s was given)
  double checkpoint_s = 0;      // C: the steps' stall
  double write_s = 0;           // W: asynchronous, the write behind the steps (0: synchronous)
  double wait_s = 0;            // asynchronous: a copy's wait for the previous write, max(W - tau, 0)
  int every_steps = 0;          // k
  double interval_s = 0;        // tau = k x step
  double goodput = 0;           // tau / E: the share of wall-clock time whose steps count
  double spare_wait_s = 0;      // W: with spare nodes, the mean wait for a node besides the restart
  double short_share = 0;       // with spare nodes, the share of failures that find none free
};

// With `spares` spare nodes and a repair time `repair_s`, failures every `mtbf_s` on average: the
// mean wait for a node at a failure (W above) and the share of failures that find no spare.
struct SpareWait {
  double wait_s = 0;
  double short_share = 0;
};
SpareWait spare_wait(int spares, double repair_s, double mtbf_s);

// Daly's expected wall time of `work_s` seconds of steps and a checkpoint of `checkpoint_s`, with
// restarts of `restart_s` and failures every `mtbf_s` seconds on average.
double expected_segment_s(double work_s, double checkpoint_s, double restart_s, double mtbf_s);

// The same with asynchronous checkpoints: a stall of `stall_s`, written `write_s` later.
double expected_async_segment_s(double work_s, double stall_s, double write_s, double restart_s, double mtbf_s);

// The interval tau (seconds of work between checkpoints) with the least expected wall time per
// second of work, for a checkpoint of `checkpoint_s` and failures every `mtbf_s`: the root of
// e^((tau + C)/M) (1 - tau/M) = 1 (the restart time does not move it).
double best_interval_s(double checkpoint_s, double mtbf_s);

// What one checkpoint of a training run writes: every parameter once (the MTP modules' too) at
// model.dtype and mixed-precision Adam's fp32 master weight and two moments of `moment_bytes`
// each, as Megatron-LM's distributed checkpoint saves the model and its optimizer (each shard
// once, however many GPUs hold it). Gradients and the data loader's state are left out.
double checkpoint_bytes(const routing::MoeModelSpec& m, int moment_bytes);

// The goodput of a run whose steps take `step_s` on `gpus` GPUs and whose checkpoint writes
// `checkpoint_bytes` (used with spec.checkpoint_bytes_per_s). The interval is a whole number of
// steps, at least one: spec's, or the best (asynchronous: never shorter than the write, which
// would only make the copies wait).
Goodput goodput(const ReliabilitySpec& spec, double step_s, int gpus, double checkpoint_bytes);

}  // namespace moesim::models
