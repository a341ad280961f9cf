#include "models/maxmin_network.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "sim/assert.hpp"

namespace moesim::models {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPsPerS = 1e12;

// Flows whose bytes left are within this fraction of their size when another flow finishes are
// finished with it: the same instant computed along two rounding paths. It moves a completion by
// at most this fraction of the flow's transfer time.
constexpr double kSameInstant = 1e-12;

// Rounds an exact time up to the picosecond, except that a time within 1e-12 of its own value
// (or an attosecond) of a whole picosecond counts as that picosecond: 22 us computed as
// 2e-6 + 1e6 / 5e10 must call back at 22 us, not one picosecond later.
std::int64_t to_ps_ceil(double t_s) {
  const double x = t_s * kPsPerS;
  const double r = std::nearbyint(x);
  if (std::abs(x - r) <= std::max(1e-6, 1e-12 * x)) return static_cast<std::int64_t>(r);
  return static_cast<std::int64_t>(std::ceil(x));
}

bool later(const auto& a, const auto& b) {
  return a.activation_ps != b.activation_ps ? a.activation_ps > b.activation_ps : a.order > b.order;
}

}  // namespace

MaxMinNetwork::MaxMinNetwork(sim::Simulator& sim, const topology::Cluster& cluster)
    : sim_(sim), cluster_(cluster) {
  const auto& links = cluster.links();
  capacity_.reserve(links.size());
  for (const auto& l : links) capacity_.push_back(static_cast<double>(l.bandwidth.bytes_per_s()));
  usage_.assign(links.size(), LinkUsage{});
  link_active_.assign(links.size(), 0);
  busy_since_.assign(links.size(), 0.0);
  count_.assign(links.size(), 0);
  offset_.assign(links.size() + 1, 0);
  left_.assign(links.size(), 0.0);
  fill_.assign(links.size(), 0);
  path_cache_.resize(static_cast<std::size_t>(cluster.gpu_count()));
}

MaxMinNetwork::~MaxMinNetwork() = default;

const std::vector<std::uint32_t>& MaxMinNetwork::path_links(topology::GpuId src, topology::GpuId dst) {
  auto& row = path_cache_[src.index()];
  if (row.empty()) row.resize(static_cast<std::size_t>(cluster_.gpu_count()));
  auto& p = row[dst.index()];
  if (p.empty()) {
    for (const auto l : cluster_.path(src, dst).links) p.push_back(l.value);
  }
  return p;
}

std::uint32_t MaxMinNetwork::new_flow_slot() {
  if (!free_slots_.empty()) {
    const std::uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }
  flows_.emplace_back();
  return static_cast<std::uint32_t>(flows_.size() - 1);
}

void MaxMinNetwork::start_flow(const Flow& flow, Done on_done) {
  MOESIM_ASSERT(static_cast<bool>(on_done), "flow without a completion callback");
  if (flow.src == flow.dst) {
    // A local copy: done at once, as an event, like the analytical model.
    sim_.schedule_in(sim::Time::zero(), [this, cb = std::move(on_done)]() mutable {
      last_completion_s_ = static_cast<double>(sim_.now().count_ps()) / kPsPerS;
      cb();
    });
    return;
  }
  const auto& links = path_links(flow.src, flow.dst);
  MOESIM_ASSERT(!links.empty(), "a flow between two GPUs with an empty path");
  sim::Time latency = sim::Time::zero();
  for (const auto l : links) latency += cluster_.links()[l].latency;

  const std::uint32_t s = new_flow_slot();
  FlowState& f = flows_[s];
  f.links = links.data();
  f.hops = static_cast<std::uint32_t>(links.size());
  f.size = static_cast<double>(flow.size.count());
  f.remaining = f.size;
  f.rate = 0;
  f.finish_s = kInf;
  f.done = std::move(on_done);

  const std::int64_t at = (sim_.now() + latency).count_ps();
  pending_.push_back(Pending{at, start_order_++, s});
  std::push_heap(pending_.begin(), pending_.end(), [](const Pending& a, const Pending& b) { return later(a, b); });
  if (wake_ps_ < 0 || at < wake_ps_) schedule_wake(at);
}

void MaxMinNetwork::schedule_wake(std::int64_t at_ps) {
  if (wake_ps_ >= 0) sim_.cancel(wake_id_);
  wake_ps_ = at_ps;
  wake_id_ = sim_.schedule_at(sim::Time::ps(at_ps), [this] { wake(); });
}

void MaxMinNetwork::advance_to(double t) {
  const double dt = t - model_time_s_;
  if (dt > 0) {
    for (const std::uint32_t s : active_) flows_[s].remaining -= flows_[s].rate * dt;
  }
  model_time_s_ = std::max(model_time_s_, t);
}

void MaxMinNetwork::activate(std::uint32_t s, double t) {
  FlowState& f = flows_[s];
  for (std::uint32_t h = 0; h < f.hops; ++h) {
    const std::uint32_t l = f.links[h];
    if (link_active_[l]++ == 0) busy_since_[l] = t;
  }
  active_.push_back(s);
}

void MaxMinNetwork::finish(std::uint32_t s, double t) {
  FlowState& f = flows_[s];
  for (std::uint32_t h = 0; h < f.hops; ++h) {
    const std::uint32_t l = f.links[h];
    usage_[l].bytes += f.size;
    if (--link_active_[l] == 0) usage_[l].busy_s += t - busy_since_[l];
  }
}

double MaxMinNetwork::next_finish() const {
  double t = kInf;
  for (const std::uint32_t s : active_) t = std::min(t, flows_[s].finish_s);
  return t;
}

void MaxMinNetwork::wake() {
  wake_ps_ = -1;
  const std::int64_t now_ps = sim_.now().count_ps();
  std::vector<std::pair<double, Done>> completed;

  for (;;) {
    // Due means: at or before now once rounded up to the picosecond, the same rounding that
    // placed this wake-up, so a completion a fraction of a picosecond ahead is never missed.
    const double t_done = next_finish();
    const bool done_due = t_done < kInf && to_ps_ceil(t_done) <= now_ps;
    const bool act_due = !pending_.empty() && pending_.front().activation_ps <= now_ps;
    if (!done_due && !act_due) break;
    const double t_act = act_due ? static_cast<double>(pending_.front().activation_ps) / kPsPerS : kInf;
    const double t = std::min(done_due ? t_done : kInf, t_act);

    advance_to(t);
    bool changed = false;
    if (done_due && t_done <= t) {
      // Everything finishing at this instant leaves together.
      std::size_t keep = 0;
      for (std::size_t i = 0; i < active_.size(); ++i) {
        const std::uint32_t s = active_[i];
        FlowState& f = flows_[s];
        if (f.finish_s <= t || f.remaining <= kSameInstant * f.size) {
          finish(s, t);
          completed.emplace_back(t, std::move(f.done));
          f.done = nullptr;
          free_slots_.push_back(s);
          changed = true;
        } else {
          active_[keep++] = s;
        }
      }
      active_.resize(keep);
    }
    auto cmp = [](const Pending& a, const Pending& b) { return later(a, b); };
    while (!pending_.empty() && static_cast<double>(pending_.front().activation_ps) / kPsPerS <= t) {
      const std::uint32_t s = pending_.front().flow;
      std::pop_heap(pending_.begin(), pending_.end(), cmp);
      pending_.pop_back();
      FlowState& f = flows_[s];
      if (f.size <= 0) {  // nothing to send: done when its latency is paid
        completed.emplace_back(t, std::move(f.done));
        f.done = nullptr;
        free_slots_.push_back(s);
        continue;
      }
      activate(s, t);
      changed = true;
    }
    if (changed) solve();
  }

  const double t_done = next_finish();
  std::int64_t next = -1;
  if (t_done < kInf) next = std::max(to_ps_ceil(t_done), now_ps);
  if (!pending_.empty() && (next < 0 || pending_.front().activation_ps < next))
    next = pending_.front().activation_ps;
  if (next >= 0 && (wake_ps_ < 0 || next < wake_ps_)) schedule_wake(next);

  // Callbacks last: they may start flows, which must see a consistent model.
  for (auto& [t, done] : completed) {
    last_completion_s_ = t;
    done();
  }
}

void MaxMinNetwork::solve() {
  ++solves_;
  // Link -> active flows, as compact arrays (counting sort over the flows' paths).
  live_links_.clear();
  for (const std::uint32_t s : active_) {
    const FlowState& f = flows_[s];
    for (std::uint32_t h = 0; h < f.hops; ++h) {
      if (count_[f.links[h]]++ == 0) live_links_.push_back(f.links[h]);
    }
  }
  std::uint32_t total = 0;
  for (const std::uint32_t l : live_links_) {
    offset_[l] = total;
    total += count_[l];
    fill_[l] = offset_[l];
    left_[l] = capacity_[l];
  }
  incidence_.resize(total);
  frozen_.assign(flows_.size(), 0);
  for (const std::uint32_t s : active_) {
    const FlowState& f = flows_[s];
    for (std::uint32_t h = 0; h < f.hops; ++h) incidence_[fill_[f.links[h]]++] = s;
  }

  // Progressive filling, one level at a time: the smallest fair share among links that still
  // carry unfrozen flows freezes every unfrozen flow on the links at that share.
  std::vector<std::uint32_t>& live = live_links_;
  std::vector<std::uint32_t> open(live.begin(), live.end());  // links with unfrozen flows
  while (!open.empty()) {
    double level = kInf;
    for (const std::uint32_t l : open) level = std::min(level, std::max(left_[l], 0.0) / count_[l]);
    for (const std::uint32_t l : open) {
      if (count_[l] == 0 || std::max(left_[l], 0.0) / count_[l] > level) continue;
      for (std::uint32_t i = offset_[l]; i < fill_[l]; ++i) {
        const std::uint32_t s = incidence_[i];
        if (frozen_[s]) continue;
        frozen_[s] = 1;
        FlowState& f = flows_[s];
        f.rate = level;
        for (std::uint32_t h = 0; h < f.hops; ++h) {
          const std::uint32_t k = f.links[h];
          left_[k] -= level;
          --count_[k];
        }
      }
    }
    std::size_t keep = 0;
    for (const std::uint32_t l : open)
      if (count_[l] > 0) open[keep++] = l;
    open.resize(keep);
  }

  for (const std::uint32_t l : live) {
    const double used = capacity_[l] - std::max(left_[l], 0.0);
    usage_[l].peak_utilisation = std::max(usage_[l].peak_utilisation, used / capacity_[l]);
    count_[l] = 0;
  }
  for (const std::uint32_t s : active_) {
    FlowState& f = flows_[s];
    MOESIM_ASSERT(f.rate > 0, "an active flow got no bandwidth");
    f.finish_s = model_time_s_ + std::max(f.remaining, 0.0) / f.rate;
  }
}

}  // namespace moesim::models
