// The one narrow interface between the workload and interchangeable network models
// (ASTRA-sim's lesson): start a flow of bytes from one GPU to another, be called back when its
// last byte has arrived. Implementations: AnalyticalNetwork (no contention); the flow-level
// max-min model shares links between concurrent flows.
#pragma once

#include <string_view>

#include "sim/callback.hpp"
#include "sim/time.hpp"
#include "topology/cluster.hpp"

namespace moesim::models {

struct Flow {
  topology::GpuId src;
  topology::GpuId dst;
  sim::Bytes size;
};

class NetworkModel {
 public:
  using Done = sim::Callback;
  virtual ~NetworkModel() = default;
  // A flow from a GPU to itself is a local copy and completes at once (same time, as an event).
  virtual void start_flow(const Flow& flow, Done on_done) = 0;
  virtual std::string_view name() const = 0;
  // Inside a completion callback: the flow's exact completion time in seconds (the callback
  // itself runs at that time rounded up to the picosecond).
  virtual double last_completion_s() const = 0;
};

}  // namespace moesim::models
