// The one narrow interface between the workload and interchangeable network models
// (ASTRA-sim's lesson): start a flow of bytes from one GPU to another, be called back when its
// last byte has arrived. Implementations: AnalyticalNetwork (no contention); the flow-level
// max-min model shares links between concurrent flows.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "sim/callback.hpp"
#include "sim/time.hpp"
#include "topology/cluster.hpp"

namespace moesim::sim {
class Simulator;
}

namespace moesim::models {

// Which part of the route a flow takes. `whole`: src to dst. The switch legs carry in-switch
// collectives (NVLink SHARP): `to_switch` goes from src up its NVLink port to its node's
// NVSwitch (the switch reduces what arrives); `from_switch` comes down dst's port from the
// switch (a reduced or multicast result). A leg's other end is the switch: src == dst there.
enum class Leg : std::uint8_t { whole, to_switch, from_switch };

struct Flow {
  topology::GpuId src;
  topology::GpuId dst;
  sim::Bytes size;
  Leg leg = Leg::whole;
};

// What a link carried during a run (per direction, indexed like Cluster::links()).
struct LinkUsage {
  double bytes = 0;             // bytes of the flows that crossed it
  double busy_s = 0;            // time with at least one flow moving bytes on it
  double peak_utilisation = 0;  // largest (sum of flow rates) / capacity at any instant
};

class NetworkModel {
 public:
  using Done = sim::Callback;
  virtual ~NetworkModel() = default;
  // A whole flow from a GPU to itself is a local copy and completes at once (same time, as an
  // event).
  virtual void start_flow(const Flow& flow, Done on_done) = 0;
  // The same flow delivered in `parts` consecutive parts (part j ends at byte
  // floor(size * (j + 1) / parts)): on_part(j) is called when part j < parts - 1 has wholly
  // arrived, in order, and on_done when the last has. A relay that forwards data as it arrives
  // (DeepEP's chunked forwarding) starts each part's onward flows from on_part. parts = 1 is
  // start_flow.
  using Part = std::function<void(std::uint32_t part)>;
  virtual void start_flow_in_parts(const Flow& flow, std::uint32_t parts, Part on_part, Done on_done) = 0;
  virtual std::string_view name() const = 0;
  // Inside a completion callback: the flow's exact completion time in seconds (the callback
  // itself runs at that time rounded up to the picosecond).
  virtual double last_completion_s() const = 0;
  // Per-link accounting, or nullptr where the model has no notion of shared links' time.
  virtual const std::vector<LinkUsage>* link_usage() const { return nullptr; }
  // Called with every interval in which a link carried at least one flow (link index, start and
  // end in seconds), as each ends; models without shared links never call it.
  using LinkBusy = std::function<void(std::uint32_t link, double start_s, double end_s)>;
  virtual void on_link_busy(LinkBusy observer) { (void)observer; }
};

// The network model named in a scenario: "maxmin" or "analytical" (asserts on anything else; the
// scenario loader only lets those through). resolve_interval: the max-min model's (see
// MaxMinNetwork); the analytical model has no rates to re-solve.
std::unique_ptr<NetworkModel> make_network_model(std::string_view name, sim::Simulator& sim,
                                                 const topology::Cluster& cluster,
                                                 sim::Time resolve_interval = sim::Time::zero());

}  // namespace moesim::models
