// Flow-level network with max-min fair sharing (the `maxmin` model; semantics in DESIGN.md).
//
// A flow started at time s on a path with summed latency L becomes active at s + L (it uses no
// bandwidth before) and then moves its bytes at the rate max-min fair sharing gives it among
// all active flows, on every link of its path; each direction of a link is its own capacity.
// Rates are re-solved by progressive filling whenever the set of active flows changes: all
// unfrozen flows rise together; the link whose capacity runs out first freezes its flows at its
// fair share; repeat. Shares are not weighted by latency. This equals SimGrid's CM02 model with
// TCP corrections off (exact update mode) wherever flows sharing a link have equal latencies.
//
// Exactness: the fluid state (bytes left per flow) advances in double-precision seconds from
// one change to the next, with each completion at its exact (real-valued) time, so rounding the
// simulator's clock to picoseconds never feeds back into the shares. A flow's callback runs at
// its completion time rounded up to the picosecond; last_completion_s() gives the exact one.
//
// Speed: changes at one instant (a batch of activations, simultaneous completions) share one
// re-solve; each re-solve rebuilds link→flow incidence in compact arrays (counting sort) and
// fills level by level, touching each (flow, link) pair a constant number of times.
#pragma once

#include <cstdint>
#include <vector>

#include "models/network.hpp"
#include "sim/simulator.hpp"

namespace moesim::models {

struct LinkUsage {
  double bytes = 0;             // bytes of completed flows that crossed the link
  double busy_s = 0;            // time with at least one active flow on it
  double peak_utilisation = 0;  // largest (sum of rates) / capacity over all solves
};

class MaxMinNetwork final : public NetworkModel {
 public:
  MaxMinNetwork(sim::Simulator& sim, const topology::Cluster& cluster);
  ~MaxMinNetwork() override;

  void start_flow(const Flow& flow, Done on_done) override;
  std::string_view name() const override { return "maxmin"; }
  double last_completion_s() const override { return last_completion_s_; }

  // Per link (indexed like Cluster::links()); complete once every flow has finished.
  const std::vector<LinkUsage>& link_usage() const { return usage_; }
  std::uint64_t solves() const { return solves_; }
  std::size_t active_flows() const { return active_.size(); }

 private:
  struct Pending {  // started, paying its latency
    std::int64_t activation_ps;
    std::uint64_t order;  // start order, to activate simultaneous flows deterministically
    std::uint32_t flow;
  };
  struct FlowState {
    const std::uint32_t* links = nullptr;  // the path, owned by path_cache_
    std::uint32_t hops = 0;
    double size = 0;
    double remaining = 0;
    double rate = 0;
    double finish_s = 0;  // exact, under the current rates
    Done done;
  };

  void wake();
  void schedule_wake(std::int64_t at_ps);
  void advance_to(double t);
  void activate(std::uint32_t flow, double t);
  void finish(std::uint32_t flow, double t);
  void solve();
  double next_finish() const;
  const std::vector<std::uint32_t>& path_links(topology::GpuId src, topology::GpuId dst);
  std::uint32_t new_flow_slot();

  sim::Simulator& sim_;
  const topology::Cluster& cluster_;
  std::vector<double> capacity_;  // bytes/s per link
  std::vector<LinkUsage> usage_;
  std::vector<std::uint32_t> link_active_;  // active flows per link (for busy time)
  std::vector<double> busy_since_;

  std::vector<std::vector<std::vector<std::uint32_t>>> path_cache_;  // [src][dst] -> links

  std::vector<FlowState> flows_;         // slots; free ones in free_slots_
  std::vector<std::uint32_t> free_slots_;
  std::vector<std::uint32_t> active_;    // slots of flows in their bandwidth phase
  std::vector<Pending> pending_;         // min-heap on (activation, order)
  std::uint64_t start_order_ = 0;

  double model_time_s_ = 0;  // the fluid state is exact as of this time
  double last_completion_s_ = 0;
  sim::EventId wake_id_{};
  std::int64_t wake_ps_ = -1;  // -1: none scheduled
  std::uint64_t solves_ = 0;

  // Solver scratch, kept to avoid reallocation.
  std::vector<std::uint32_t> count_, offset_, incidence_, live_links_, fill_;
  std::vector<double> left_;
  std::vector<std::uint8_t> frozen_;
  std::vector<std::uint32_t> done_now_;
};

}  // namespace moesim::models
