#include "models/collectives.hpp"

#include <algorithm>
#include <utility>

#include "sim/assert.hpp"

namespace moesim::models {

RingAllReduce::RingAllReduce(sim::Simulator& sim, NetworkModel& network, Recorder& recorder, std::vector<int> ring,
                             sim::Bytes size, Done done)
    : sim_(sim),
      network_(network),
      recorder_(recorder),
      ring_(std::move(ring)),
      done_(std::move(done)),
      steps_(2 * (static_cast<int>(ring_.size()) - 1)),
      joined_(ring_.size(), 0),
      next_send_(ring_.size(), 0),
      received_(ring_.size(), 0) {
  MOESIM_ASSERT(!ring_.empty(), "a ring without GPUs");
  const auto n = static_cast<std::int64_t>(ring_.size());
  chunk_ = sim::Bytes((size.count() + n - 1) / n);
}

void RingAllReduce::join(int gpu) {
  const auto it = std::find(ring_.begin(), ring_.end(), gpu);
  MOESIM_ASSERT(it != ring_.end(), "a GPU joined a ring it is not in");
  const auto m = static_cast<std::size_t>(it - ring_.begin());
  joined_[m] = 1;
  if (steps_ == 0) {
    done_(gpu);
    return;
  }
  try_send(m);
}

void RingAllReduce::try_send(std::size_t m) {
  while (joined_[m] && next_send_[m] < steps_ && (next_send_[m] == 0 || received_[m] >= next_send_[m])) {
    ++next_send_[m];
    const std::size_t to = (m + 1) % ring_.size();
    const Flow flow{topology::GpuId(static_cast<std::uint32_t>(ring_[m])), topology::GpuId(static_cast<std::uint32_t>(ring_[to])),
                    chunk_};
    network_.start_flow(flow, [this, to, record = FlowRecord{0, Stage::grad_sync, flow, sim_.now(), sim::Time(), true}]() mutable {
      record.end = sim_.now();
      recorder_.on_flow(record);
      received(to);
    });
  }
}

void RingAllReduce::received(std::size_t m) {
  if (++received_[m] == steps_) done_(ring_[m]);
  try_send(m);
}

}  // namespace moesim::models
