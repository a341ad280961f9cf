// A Recorder that keeps every compute stage, network wait and all-to-all flow of a run, and the
// intervals in which each link was busy (from the network model), for the
// Chrome-trace timeline (tools/report.hpp writes timeline.json). Zero-length waits are not kept.
// With a limit, it stops keeping records once it holds that many and says so (complete() false),
// so a huge run does not spend its memory on a timeline nobody can open.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "models/recorder.hpp"

namespace moesim::models {

class TimelineRecorder final : public Recorder {
 public:
  explicit TimelineRecorder(std::size_t limit) : limit_(limit) {}
  void on_stage(const StageRecord& r) override {
    if (r.end > r.start && keep()) stages_.push_back(r);
  }
  void on_routing(int, int, int, const routing::DispatchPlan&, int) override {}
  void on_flow(const FlowRecord& r) override {
    if (keep()) flows_.push_back(r);
  }

  struct LinkBusy {
    std::uint32_t link;
    sim::Time start, end;
  };
  void on_link_busy(std::uint32_t link, double start_s, double end_s) {
    if (keep()) links_.push_back(LinkBusy{link, sim::Time::ps(std::llround(start_s * 1e12)), sim::Time::ps(std::llround(end_s * 1e12))});
  }
  const std::vector<LinkBusy>& link_busy() const { return links_; }
  const std::vector<StageRecord>& stages() const { return stages_; }
  const std::vector<FlowRecord>& flows() const { return flows_; }
  bool complete() const { return !overflowed_; }
  std::size_t limit() const { return limit_; }

 private:
  bool keep() {
    if (limit_ > 0 && stages_.size() + flows_.size() + links_.size() >= limit_) overflowed_ = true;
    return !overflowed_;
  }
  std::size_t limit_;
  bool overflowed_ = false;
  std::vector<StageRecord> stages_;
  std::vector<FlowRecord> flows_;
  std::vector<LinkBusy> links_;
};

}  // namespace moesim::models
