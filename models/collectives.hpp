// Collectives other than the MoE all-to-all, as flows on the network model.
//
// Ring all-reduce of S bytes over n GPUs (NCCL's ring algorithm): 2(n - 1) steps, a
// reduce-scatter then an all-gather; in step k every GPU sends a chunk of ceil(S / n) bytes to
// the next GPU of the ring. A GPU sends step k once it has joined (its data is ready) and, for
// k > 0, received step k - 1's chunk from the previous GPU; it is done when it has received all
// 2(n - 1) chunks. One GPU alone is done when it joins. Reduction compute is not modelled
// (memory-bound and small next to the transfers).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "models/network.hpp"
#include "models/recorder.hpp"
#include "sim/simulator.hpp"

namespace moesim::models {

class RingAllReduce {
 public:
  using Done = std::function<void(int gpu)>;
  // ring: the GPUs in ring order; `done` is called once per GPU.
  RingAllReduce(sim::Simulator& sim, NetworkModel& network, Recorder& recorder, std::vector<int> ring, sim::Bytes size,
                Done done);
  // `gpu` (a member) has its gradients ready.
  void join(int gpu);
  sim::Bytes chunk() const { return chunk_; }

 private:
  void try_send(std::size_t member);
  void received(std::size_t member);

  sim::Simulator& sim_;
  NetworkModel& network_;
  Recorder& recorder_;
  std::vector<int> ring_;
  sim::Bytes chunk_;
  Done done_;
  int steps_;
  std::vector<char> joined_;
  std::vector<int> next_send_, received_;
};

}  // namespace moesim::models
