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
// its completion time rounded up to the picosecond; last_completion_s() gives the exact one. A
// flow in parts has part j arrive when its bytes moved reach the part's last byte, at the rate
// in force then: the same fluid state, one more due time per part, no re-solve.
//
// Speed: changes at one instant (a batch of activations, simultaneous completions) share one
// re-solve. Each link keeps the list of active flows crossing it (O(1) insert and removal), flow
// state is kept as separate arrays by slot, and a re-solve fills level by level, touching each
// (flow, link) pair twice: once when a link's flows are frozen, once to charge the others.
// A re-solve also stays inside the part of the network the change can reach: max-min fair
// shares decompose over connected groups of links and flows, so flows that share no link,
// directly or through other re-solved flows, with a flow that came or went keep their rates
// (independent EP groups, for one, never re-solve each other's flows).
//
// Where that is not enough (one fabric of thousands of flows of nearly equal rates, finishing
// one by one: every completion re-solves them all), a re-solve interval batches the changes of
// a burst into one re-solve per interval, at a bounded cost in exactness (see the constructor;
// network.resolve_interval in scenarios).
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <vector>

#include "models/network.hpp"
#include "sim/simulator.hpp"

namespace moesim::models {

class MaxMinNetwork final : public NetworkModel {
 public:
  // resolve_interval > 0 trades exactness for speed: rates are re-solved at most once per this
  // much simulated time. A change (flows starting or finishing) within it of the last re-solve
  // waits for the next one, at the last one plus the interval: until then a new flow moves no
  // bytes and the bandwidth a finished flow freed goes unused (the others keep their rates).
  // Bytes are conserved and no link carries more than its capacity. A change at least the
  // interval after the last re-solve, or on an idle network, is re-solved at once, so isolated
  // flows keep their exact times and only bursts of changes are batched. Zero (the default):
  // every change, exactly.
  MaxMinNetwork(sim::Simulator& sim, const topology::Cluster& cluster, sim::Time resolve_interval = sim::Time::zero());
  ~MaxMinNetwork() override;

  void start_flow(const Flow& flow, Done on_done) override;
  void start_flow_in_parts(const Flow& flow, std::uint32_t parts, Part on_part, Done on_done) override;
  std::string_view name() const override { return "maxmin"; }
  double last_completion_s() const override { return last_completion_s_; }

  // Per link (indexed like Cluster::links()); complete once every flow has finished.
  const std::vector<LinkUsage>* link_usage() const override { return &usage_; }
  void on_link_busy(LinkBusy observer) override { link_busy_ = std::move(observer); }
  std::uint64_t solves() const { return solves_; }

 private:
  static constexpr std::uint32_t kMaxHops = 8;
  struct Pending {  // started, paying its latency
    std::int64_t activation_ps;
    std::uint64_t order;  // start order, to activate simultaneous flows deterministically
    std::uint32_t flow;
  };
  struct Member {  // one entry of a link's list of active flows
    std::uint32_t flow;
    std::uint32_t hop;  // which hop of the flow's path this link is
  };

  void wake();
  void schedule_wake(std::int64_t at_ps);
  void activate(std::uint32_t flow, double t);
  void finish(std::uint32_t flow, double t);
  // Re-solves the rates of every active flow whose rate is at least from_rate (all flows when
  // from_rate is 0); see the .cpp for why the others keep theirs.
  void solve(double from_rate);
  double peek_next_finish();
  const std::vector<std::uint32_t>& path_links(topology::GpuId src, topology::GpuId dst);
  const std::vector<std::uint32_t>& leg_links(topology::GpuId gpu, bool up);
  std::uint32_t new_flow_slot();

  sim::Simulator& sim_;
  const topology::Cluster& cluster_;
  std::vector<double> capacity_;  // bytes/s per link
  std::vector<LinkUsage> usage_;
  std::vector<double> busy_since_;
  LinkBusy link_busy_;
  std::vector<std::vector<Member>> members_;  // per link: the active flows crossing it
  std::vector<std::uint32_t> live_links_;     // links with members, in no order
  std::vector<std::uint32_t> live_pos_;       // position in live_links_, per link

  std::vector<std::vector<std::vector<std::uint32_t>>> path_cache_;  // [src][dst] -> links
  std::vector<std::vector<std::uint32_t>> leg_cache_;                // [2 gpu + (down)] -> link

  // Flows by slot (structure of arrays; free slots in free_slots_).
  struct Hot {  // what a re-solve touches per flow, together (48 bytes)
    double rate;
    std::uint32_t frozen_at;  // number of the solve that froze it; 0 while being re-solved
    std::uint32_t hops;
    std::array<std::uint32_t, kMaxHops> links;  // the path
  };
  std::vector<Hot> hot_;
  std::vector<std::array<std::uint32_t, kMaxHops>> member_pos_;  // index in members_[link] per hop
  struct Cold {  // per flow, touched when its rate is re-solved
    double size;
    double left;       // bytes left at time `since`
    double since;      // when the flow last got a rate
    double rate_used;  // the rate in force since then (its next part's exact due time is in due_)
    std::uint32_t parts;      // the flow is delivered in this many parts (1: whole)
    std::uint32_t next_part;  // the first part not yet arrived
  };
  // The time the flow's next part arrives at its current rate.
  double next_due(std::uint32_t s) const;
  bool at_part(std::uint32_t s) const { return cold_[s].next_part + 1 < cold_[s].parts; }
  struct Due {  // a flow's next completion (or part's arrival), in the heap
    double t;
    std::uint32_t flow;
  };
  std::vector<Cold> cold_;
  std::vector<std::uint32_t> active_pos_;
  std::vector<Done> done_;
  std::vector<Part> on_part_;  // by slot, for flows in parts
  std::vector<std::uint32_t> free_slots_;
  std::vector<std::uint32_t> active_;  // slots of flows in their bandwidth phase
  std::vector<std::uint8_t> is_active_;
  std::vector<std::uint32_t> fresh_;   // flows activated since the last solve
  // Min-heap of the active flows' next due times by (time, slot), indexed: a re-solve moves a
  // flow's entry in place rather than leaving a stale one behind.
  std::vector<Due> due_;
  std::vector<std::uint32_t> due_pos_;  // per slot: its index in due_, or kNotDue
  static constexpr std::uint32_t kNotDue = std::numeric_limits<std::uint32_t>::max();
  void set_due(std::uint32_t s, double t);  // insert or move s's entry
  void pop_due();                           // remove the earliest entry
  void sift_up(std::uint32_t i);
  void sift_down(std::uint32_t i);
  std::vector<Pending> pending_;       // min-heap on (activation, order)
  std::uint64_t start_order_ = 0;

  double model_time_s_ = 0;  // the latest instant processed
  double last_completion_s_ = 0;
  sim::EventId wake_id_{};
  std::int64_t wake_ps_ = -1;  // -1: none scheduled
  std::uint32_t solves_ = 0;
  static constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::min() / 2;
  std::int64_t interval_ps_ = 0;         // resolve_interval
  std::int64_t last_solve_ps_ = kNever;  // when the last re-solve ran
  std::int64_t deferred_ps_ = -1;        // when the deferred re-solve is due; -1: none
  double deferred_from_ = 0;             // its from_rate: the smallest over the changes it waits for

  // Solver scratch, kept to avoid reallocation.
  std::vector<double> left_cap_, share_, old_rates_;
  std::vector<std::uint32_t> unfrozen_, round_start_, open_, touched_, resolve_, frozen_order_, bound_links_;
  std::vector<std::uint8_t> link_mark_;
  // Connected re-solves: links where flows left since the last solve, and per flow / link the
  // number of the solve that last reached it.
  std::vector<std::uint32_t> seed_links_, bfs_links_;
  std::vector<std::uint32_t> flow_seen_, link_seen_;
  std::vector<long double> load_;  // per link: sum of its active flows' rates (extended precision)
  std::vector<std::uint32_t> csr_offset_, csr_fill_, csr_flows_;  // re-solved flows per link
};

}  // namespace moesim::models
