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

// Links with more flows than this bound an arriving flow's rate by capacity / flows.
constexpr std::size_t kExactBoundMembers = 512;

// Rounds an exact time up to the picosecond, except that a time within rounding noise of a
// whole picosecond (1e-14 of its value, at least an attosecond, at most a femtosecond) counts as
// that picosecond: 22 us computed as 2e-6 + 1e6 / 5e10 must call back at 22 us, not 1 ps later.
std::int64_t to_ps_ceil(double t_s) {
  const double x = t_s * kPsPerS;
  const double r = std::nearbyint(x);
  if (std::abs(x - r) <= std::clamp(1e-14 * x, 1e-6, 1e-3)) return static_cast<std::int64_t>(r);
  return static_cast<std::int64_t>(std::ceil(x));
}

// Heap orders: pending activations by (time, start order) in a std heap (a max-heap, so "later"
// sorts first out); due times by (time, slot) in the indexed heap.
struct LaterActivation {
  bool operator()(const auto& a, const auto& b) const {
    return a.activation_ps != b.activation_ps ? a.activation_ps > b.activation_ps : a.order > b.order;
  }
};
bool earlier(const auto& a, const auto& b) { return a.t != b.t ? a.t < b.t : a.flow < b.flow; }

}  // namespace

MaxMinNetwork::MaxMinNetwork(sim::Simulator& sim, const topology::Cluster& cluster, sim::Time resolve_interval)
    : sim_(sim), cluster_(cluster), interval_ps_(resolve_interval.count_ps()) {
  MOESIM_ASSERT(interval_ps_ >= 0, "a negative re-solve interval");
  const auto& links = cluster.links();
  capacity_.reserve(links.size());
  for (const auto& l : links) capacity_.push_back(static_cast<double>(l.bandwidth.bytes_per_s()));
  usage_.assign(links.size(), LinkUsage{});
  busy_since_.assign(links.size(), 0.0);
  members_.resize(links.size());
  live_pos_.assign(links.size(), 0);
  left_cap_.assign(links.size(), 0.0);
  share_.assign(links.size(), 0.0);
  unfrozen_.assign(links.size(), 0);
  round_start_.assign(links.size(), 0);
  link_mark_.assign(links.size(), 0);
  link_seen_.assign(links.size(), 0);
  load_.assign(links.size(), 0.0L);
  csr_offset_.assign(links.size(), 0);
  csr_fill_.assign(links.size(), 0);
  path_cache_.resize(static_cast<std::size_t>(cluster.gpu_count()));
}

MaxMinNetwork::~MaxMinNetwork() = default;

const std::vector<std::uint32_t>& MaxMinNetwork::path_links(topology::GpuId src, topology::GpuId dst) {
  auto& row = path_cache_[src.index()];
  if (row.empty()) row.resize(static_cast<std::size_t>(cluster_.gpu_count()));
  auto& p = row[dst.index()];
  if (p.empty()) {
    for (const auto l : cluster_.path(src, dst).links) p.push_back(l.value);
    MOESIM_ASSERT(!p.empty() && p.size() <= kMaxHops, "a path of more hops than the max-min model supports");
  }
  return p;
}

const std::vector<std::uint32_t>& MaxMinNetwork::leg_links(topology::GpuId gpu, bool up) {
  if (leg_cache_.empty()) leg_cache_.resize(2 * static_cast<std::size_t>(cluster_.gpu_count()));
  auto& p = leg_cache_[2 * gpu.index() + (up ? 0 : 1)];
  if (p.empty())
    for (const auto l : cluster_.switch_leg(gpu, up).links) p.push_back(l.value);
  return p;
}

std::uint32_t MaxMinNetwork::new_flow_slot() {
  if (!free_slots_.empty()) {
    const std::uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }
  hot_.push_back(Hot{});
  member_pos_.emplace_back();
  cold_.push_back(Cold{0, 0, 0, 0, 1, 0});
  is_active_.push_back(0);
  due_pos_.push_back(kNotDue);
  active_pos_.push_back(0);
  flow_seen_.push_back(0);
  done_.emplace_back();
  on_part_.emplace_back();
  return static_cast<std::uint32_t>(hot_.size() - 1);
}

void MaxMinNetwork::start_flow(const Flow& flow, Done on_done) { start_flow_in_parts(flow, 1, nullptr, std::move(on_done)); }

double MaxMinNetwork::next_due(std::uint32_t s) const {
  const Cold& c = cold_[s];
  if (!at_part(s)) return c.since + c.left / c.rate_used;
  // Part next_part ends at byte floor(size * (j + 1) / parts): due when the bytes left reach
  // size minus that.
  const double end = std::floor(c.size * static_cast<double>(c.next_part + 1) / static_cast<double>(c.parts));
  return c.since + std::max(c.left - (c.size - end), 0.0) / c.rate_used;
}

void MaxMinNetwork::start_flow_in_parts(const Flow& flow, std::uint32_t parts, Part on_part, Done on_done) {
  MOESIM_ASSERT(static_cast<bool>(on_done), "flow without a completion callback");
  MOESIM_ASSERT(parts >= 1 && (parts == 1 || static_cast<bool>(on_part)), "a flow in parts without a part callback");
  if (flow.leg == Leg::whole && flow.src == flow.dst) {
    for (std::uint32_t j = 0; j + 1 < parts; ++j) sim_.schedule_in(sim::Time::zero(), [on_part, j] { on_part(j); });
    // A local copy: done at once, as an event, like the analytical model.
    sim_.schedule_in(sim::Time::zero(), [this, cb = std::move(on_done)]() mutable {
      last_completion_s_ = static_cast<double>(sim_.now().count_ps()) / kPsPerS;
      cb();
    });
    return;
  }
  const auto& links = flow.leg == Leg::whole ? path_links(flow.src, flow.dst) : leg_links(flow.src, flow.leg == Leg::to_switch);
  sim::Time latency = sim::Time::zero();
  for (const auto l : links) latency += cluster_.links()[l].latency;

  const std::uint32_t s = new_flow_slot();
  std::copy(links.begin(), links.end(), hot_[s].links.begin());
  hot_[s].hops = static_cast<std::uint32_t>(links.size());
  const double bytes = static_cast<double>(flow.size.count());
  cold_[s] = Cold{bytes, bytes, 0.0, 0.0, parts, 0};
  hot_[s].rate = 0;
  hot_[s].frozen_at = 0;
  done_[s] = std::move(on_done);
  on_part_[s] = std::move(on_part);

  const std::int64_t at = (sim_.now() + latency).count_ps();
  pending_.push_back(Pending{at, start_order_++, s});
  std::push_heap(pending_.begin(), pending_.end(), LaterActivation{});
  if (wake_ps_ < 0 || at < wake_ps_) schedule_wake(at);
}

void MaxMinNetwork::schedule_wake(std::int64_t at_ps) {
  if (wake_ps_ >= 0) sim_.cancel(wake_id_);
  wake_ps_ = at_ps;
  wake_id_ = sim_.schedule_at(sim::Time::ps(at_ps), [this] { wake(); });
}

void MaxMinNetwork::activate(std::uint32_t s, double t) {
  for (std::uint32_t h = 0; h < hot_[s].hops; ++h) {
    const std::uint32_t l = hot_[s].links[h];
    auto& m = members_[l];
    if (m.empty()) {
      busy_since_[l] = t;
      live_pos_[l] = static_cast<std::uint32_t>(live_links_.size());
      live_links_.push_back(l);
    }
    member_pos_[s][h] = static_cast<std::uint32_t>(m.size());
    m.push_back(Member{s, h});
  }
  active_pos_[s] = static_cast<std::uint32_t>(active_.size());
  active_.push_back(s);
  is_active_[s] = 1;
  fresh_.push_back(s);
  cold_[s].since = t;
  hot_[s].frozen_at = 0;
}

void MaxMinNetwork::finish(std::uint32_t s, double t) {
  for (std::uint32_t h = 0; h < hot_[s].hops; ++h) {
    const std::uint32_t l = hot_[s].links[h];
    seed_links_.push_back(l);
    usage_[l].bytes += cold_[s].size;
    load_[l] -= hot_[s].rate;
    auto& m = members_[l];
    const std::uint32_t i = member_pos_[s][h];
    m[i] = m.back();
    member_pos_[m[i].flow][m[i].hop] = i;
    m.pop_back();
    if (m.empty()) {
      load_[l] = 0.0L;  // exact again whenever a link empties
      usage_[l].busy_s += t - busy_since_[l];
      if (link_busy_) link_busy_(l, busy_since_[l], t);
      const std::uint32_t p = live_pos_[l];
      live_links_[p] = live_links_.back();
      live_pos_[live_links_[p]] = p;
      live_links_.pop_back();
    }
  }
  const std::uint32_t p = active_pos_[s];
  active_[p] = active_.back();
  active_pos_[active_[p]] = p;
  active_.pop_back();
  is_active_[s] = 0;
}

double MaxMinNetwork::peek_next_finish() { return due_.empty() ? kInf : due_.front().t; }

void MaxMinNetwork::sift_up(std::uint32_t i) {
  const Due d = due_[i];
  while (i > 0) {
    const std::uint32_t parent = (i - 1) / 2;
    if (!earlier(d, due_[parent])) break;
    due_[i] = due_[parent];
    due_pos_[due_[i].flow] = i;
    i = parent;
  }
  due_[i] = d;
  due_pos_[d.flow] = i;
}

void MaxMinNetwork::sift_down(std::uint32_t i) {
  const Due d = due_[i];
  const auto n = static_cast<std::uint32_t>(due_.size());
  for (;;) {
    std::uint32_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && earlier(due_[child + 1], due_[child])) ++child;
    if (!earlier(due_[child], d)) break;
    due_[i] = due_[child];
    due_pos_[due_[i].flow] = i;
    i = child;
  }
  due_[i] = d;
  due_pos_[d.flow] = i;
}

void MaxMinNetwork::set_due(std::uint32_t s, double t) {
  std::uint32_t i = due_pos_[s];
  if (i == kNotDue) {
    i = static_cast<std::uint32_t>(due_.size());
    due_.push_back(Due{t, s});
    sift_up(i);
    return;
  }
  const bool sooner = t < due_[i].t;
  due_[i].t = t;
  if (sooner) sift_up(i);
  else sift_down(i);
}

void MaxMinNetwork::pop_due() {
  due_pos_[due_.front().flow] = kNotDue;
  const Due last = due_.back();
  due_.pop_back();
  if (due_.empty()) return;
  due_.front() = last;
  sift_down(0);
}

void MaxMinNetwork::wake() {
  wake_ps_ = -1;
  const std::int64_t now_ps = sim_.now().count_ps();
  std::vector<std::pair<double, Done>> completed;
  std::vector<std::uint32_t> leaving, added;

  for (;;) {
    // Due means: at or before now once rounded up to the picosecond, the same rounding that
    // placed this wake-up, so a completion a fraction of a picosecond ahead is never missed.
    const double t_done = peek_next_finish();
    const bool done_due = t_done < kInf && to_ps_ceil(t_done) <= now_ps;
    const bool act_due = !pending_.empty() && pending_.front().activation_ps <= now_ps;
    const bool solve_due = deferred_ps_ >= 0 && deferred_ps_ <= now_ps;
    if (!done_due && !act_due && !solve_due) break;
    const double t_act = act_due ? static_cast<double>(pending_.front().activation_ps) / kPsPerS : kInf;
    if (solve_due) {
      // The deferred re-solve, after everything up to its time (those changes join it).
      const double t_solve = static_cast<double>(deferred_ps_) / kPsPerS;
      if (!(done_due && t_done <= t_solve) && !(act_due && t_act <= t_solve)) {
        model_time_s_ = std::max(model_time_s_, t_solve);
        last_solve_ps_ = deferred_ps_;
        deferred_ps_ = -1;
        solve(deferred_from_);
        continue;
      }
    }
    if (done_due && t_done <= t_act && at_part(due_.front().flow)) {
      // A part of a flow has arrived: its callback (deferred with the completions), and the
      // flow's next due time; rates do not change.
      const std::uint32_t s = due_.front().flow;
      completed.emplace_back(t_done, [f = on_part_[s], j = cold_[s].next_part] { f(j); });
      ++cold_[s].next_part;
      set_due(s, next_due(s));
      continue;
    }
    const double t = std::min(done_due ? t_done : kInf, t_act);

    model_time_s_ = std::max(model_time_s_, t);
    double from_rate = kInf;  // re-solve flows at or above this rate; 0 = all
    if (done_due && t_done <= t) {
      // Everything finishing at this instant leaves together, in slot order (deterministic):
      // due at t, or with bytes left within kSameInstant of its size (the same instant reached
      // along another rounding path).
      leaving.clear();
      while (peek_next_finish() < kInf) {
        const Due d = due_.front();
        const Cold& c = cold_[d.flow];
        if (at_part(d.flow)) break;  // a part's arrival, next round
        if (!(d.t <= t || (d.t - t) * c.rate_used <= kSameInstant * c.size)) break;
        pop_due();
        leaving.push_back(d.flow);
      }
      std::sort(leaving.begin(), leaving.end());
      for (const std::uint32_t s : leaving) {
        from_rate = std::min(from_rate, hot_[s].rate);
        finish(s, t);
        completed.emplace_back(t, std::move(done_[s]));
        done_[s] = nullptr;
        on_part_[s] = nullptr;
        free_slots_.push_back(s);
      }
    }
    while (!pending_.empty() && static_cast<double>(pending_.front().activation_ps) / kPsPerS <= t) {
      const std::uint32_t s = pending_.front().flow;
      std::pop_heap(pending_.begin(), pending_.end(), LaterActivation{});
      pending_.pop_back();
      if (cold_[s].size <= 0) {  // nothing to send: done when its latency is paid
        for (std::uint32_t j = 0; j + 1 < cold_[s].parts; ++j) completed.emplace_back(t, [f = on_part_[s], j] { f(j); });
        on_part_[s] = nullptr;
        completed.emplace_back(t, std::move(done_[s]));
        done_[s] = nullptr;
        free_slots_.push_back(s);
        continue;
      }
      activate(s, t);
      added.push_back(s);
    }
    // A lower bound on the new flows' rates: no link of theirs saturates below it. For each such
    // link, raise every flow on it together, freezing the old flows at their old rates as the
    // level passes them (flows frozen below the new flows' rates keep their rates, see solve());
    // the level where the link fills is its bound. Links with very many flows use the cruder
    // capacity / flows (a link cannot fill below that share either).
    for (const std::uint32_t s : added) {
      const Hot& f = hot_[s];
      for (std::uint32_t h = 0; h < f.hops; ++h) {
        const std::uint32_t l = f.links[h];
        if (link_mark_[l]) continue;
        link_mark_[l] = 1;
        bound_links_.push_back(l);
      }
    }
    for (const std::uint32_t l : bound_links_) {
      link_mark_[l] = 0;
      const auto& members = members_[l];
      const double n = static_cast<double>(members.size());
      if (members.size() > kExactBoundMembers) {
        from_rate = std::min(from_rate, capacity_[l] / n);
        continue;
      }
      old_rates_.clear();
      for (const Member& m : members)
        if (hot_[m.flow].frozen_at != 0) old_rates_.push_back(hot_[m.flow].rate);
      std::sort(old_rates_.begin(), old_rates_.end());
      double used = 0;
      std::size_t frozen = 0;
      double level = capacity_[l] / n;
      while (frozen < old_rates_.size()) {
        level = (capacity_[l] - used) / (n - static_cast<double>(frozen));
        if (old_rates_[frozen] >= level) break;
        used += old_rates_[frozen++];
        level = (capacity_[l] - used) / (n - static_cast<double>(frozen));
      }
      from_rate = std::min(from_rate, std::max(level, 0.0));
    }
    bound_links_.clear();
    added.clear();
    if (from_rate < kInf) {
      if (deferred_ps_ >= 0) from_rate = std::min(from_rate, deferred_from_);
      if (interval_ps_ > 0 && active_.empty()) {
        // Idle: nothing to re-solve, and the next flow to come gets its rate at once.
        seed_links_.clear();
        fresh_.clear();
        deferred_ps_ = -1;
        last_solve_ps_ = kNever;
      } else if (interval_ps_ == 0 || now_ps >= last_solve_ps_ + interval_ps_) {
        last_solve_ps_ = now_ps;
        deferred_ps_ = -1;
        solve(from_rate);
      } else {  // too soon after the last re-solve: wait for the next
        deferred_ps_ = last_solve_ps_ + interval_ps_;
        deferred_from_ = from_rate;
      }
    }
  }

  std::int64_t next = -1;
  const double next_finish = peek_next_finish();
  if (next_finish < kInf) next = std::max(to_ps_ceil(next_finish), now_ps);
  if (!pending_.empty() && (next < 0 || pending_.front().activation_ps < next))
    next = pending_.front().activation_ps;
  if (deferred_ps_ >= 0 && (next < 0 || deferred_ps_ < next)) next = deferred_ps_;
  if (next >= 0 && (wake_ps_ < 0 || next < wake_ps_)) schedule_wake(next);

  // Callbacks last: they may start flows, which must see a consistent model.
  for (auto& [t, done] : completed) {
    last_completion_s_ = t;
    done();
  }
}

void MaxMinNetwork::solve(double from_rate) {
  const std::uint32_t stamp = ++solves_;
  const double t = model_time_s_;
  // Which flows to re-solve. Progressive filling runs exactly as before up to a level r when
  // no flow that left had a rate below r (it crossed no link that saturated below its rate, so
  // nothing below r saw it) and no flow that arrived can get a rate below r (none of its links
  // saturates below r, and elsewhere the same flows freeze at the same levels, by induction
  // over saturation events). So every flow frozen below r keeps its rate, and only the flows
  // at r or above are re-solved, on the capacity the others leave. The caller passes r: the
  // smallest rate among departures and, for arrivals, a lower bound on their rates (for each of
  // their links, the level at which it would fill if every flow on it rose together and the old
  // ones stopped at their old rates).
  //
  // Among the flows at r or above, only those connected to the change are re-solved: the
  // filling of a connected group of links and flows never looks outside it, so a group that
  // no departed or arrived flow touches (with the same capacity left by the flows below r)
  // freezes exactly as before. The group is found by a breadth-first search from the links of
  // the flows that left and came, through flows at r or above.
  resolve_.clear();
  if (from_rate <= 0) {
    resolve_.assign(active_.begin(), active_.end());
    for (const std::uint32_t s : resolve_) flow_seen_[s] = stamp;
  } else {
    bfs_links_.clear();
    auto reach_link = [&](std::uint32_t l) {
      if (link_seen_[l] == stamp) return;
      link_seen_[l] = stamp;
      bfs_links_.push_back(l);
    };
    for (const std::uint32_t l : seed_links_) reach_link(l);
    for (const std::uint32_t s : fresh_) {
      if (!is_active_[s] || flow_seen_[s] == stamp) continue;
      flow_seen_[s] = stamp;
      resolve_.push_back(s);
      for (std::uint32_t h = 0; h < hot_[s].hops; ++h) reach_link(hot_[s].links[h]);
    }
    for (std::size_t i = 0; i < bfs_links_.size(); ++i) {
      for (const Member& m : members_[bfs_links_[i]]) {
        const std::uint32_t s = m.flow;
        if (flow_seen_[s] == stamp) continue;
        const Hot& f = hot_[s];
        if (f.frozen_at != 0 && f.rate < from_rate) continue;  // frozen below r: keeps its rate
        flow_seen_[s] = stamp;
        resolve_.push_back(s);
        for (std::uint32_t h = 0; h < f.hops; ++h) reach_link(f.links[h]);
      }
    }
  }
  seed_links_.clear();
  fresh_.clear();
  // Take the re-solved flows' rates off their links' loads, and list them per link (counting
  // sort into compact arrays), so that nothing below iterates flows that keep their rates.
  touched_.clear();
  for (const std::uint32_t s : resolve_) {
    Hot& f = hot_[s];
    f.frozen_at = 0;
    for (std::uint32_t h = 0; h < f.hops; ++h) {
      const std::uint32_t l = f.links[h];
      if (!link_mark_[l]) {
        link_mark_[l] = 1;
        unfrozen_[l] = 0;
        touched_.push_back(l);
      }
      ++unfrozen_[l];
    }
  }
  // What the flows keeping their rates leave of a link: exactly zero where none keep theirs, else
  // its load less the re-solved flows' rates (subtracted in the same order as they were added).
  // link_mark_ is 2 on the links some flows keep.
  bool partial = false;
  for (const std::uint32_t l : touched_) {
    if (from_rate <= 0 || unfrozen_[l] == members_[l].size()) {
      load_[l] = 0.0L;
    } else {
      link_mark_[l] = 2;
      partial = true;
    }
  }
  if (partial)
    for (const std::uint32_t s : resolve_) {
      const Hot& f = hot_[s];
      for (std::uint32_t h = 0; h < f.hops; ++h)
        if (link_mark_[f.links[h]] == 2) load_[f.links[h]] -= f.rate;
    }
  std::uint32_t total = 0;
  open_.clear();
  for (const std::uint32_t l : touched_) {
    link_mark_[l] = 0;
    csr_offset_[l] = csr_fill_[l] = total;
    total += unfrozen_[l];
    left_cap_[l] = capacity_[l] - static_cast<double>(load_[l]);
    open_.push_back(l);
  }
  csr_flows_.resize(total);
  for (const std::uint32_t s : resolve_) {
    const Hot& f = hot_[s];
    for (std::uint32_t h = 0; h < f.hops; ++h) csr_flows_[csr_fill_[f.links[h]]++] = s;
  }

  // Progressive filling, one level at a time: the smallest fair share among links that still
  // carry unfrozen flows freezes every unfrozen flow on the links at that share. Shares only
  // grow as flows freeze (a flow freezes at no more than any share on its path).
  frozen_order_.clear();
  double level = kInf;
  for (const std::uint32_t l : open_) {
    share_[l] = std::max(left_cap_[l], 0.0) / unfrozen_[l];
    round_start_[l] = unfrozen_[l];
    level = std::min(level, share_[l]);
  }
  while (!open_.empty()) {
    // Freeze; only counts change here (the capacity each link gives up is charged after the
    // round, as level x flows frozen on it, which keeps the inner loop free of floating point).
    // Rates never go below from_rate (rounding could put a hair under it).
    const double rate = std::max(level, from_rate);
    for (const std::uint32_t l : open_) {
      if (share_[l] > level || unfrozen_[l] == 0) continue;
      std::uint32_t* unfrozen = unfrozen_.data();
      for (std::uint32_t i = csr_offset_[l]; i < csr_fill_[l]; ++i) {
        const std::uint32_t s = csr_flows_[i];
        Hot& f = hot_[s];
        if (f.frozen_at != 0) continue;
        f.frozen_at = stamp;
        f.rate = rate;
        frozen_order_.push_back(s);
        const std::uint32_t* path = f.links.data();
        const std::uint32_t hops = f.hops;
        for (std::uint32_t h = 0; h < hops; ++h) --unfrozen[path[h]];
      }
    }
    // Charge the round, drop saturated links, and find the next level in the same pass.
    double next = kInf;
    std::size_t kept = 0;
    for (const std::uint32_t l : open_) {
      left_cap_[l] -= level * static_cast<double>(round_start_[l] - unfrozen_[l]);
      if (unfrozen_[l] == 0) continue;
      open_[kept++] = l;
      share_[l] = std::max(left_cap_[l], 0.0) / unfrozen_[l];
      round_start_[l] = unfrozen_[l];
      next = std::min(next, share_[l]);
    }
    open_.resize(kept);
    level = next;
  }
  MOESIM_ASSERT(frozen_order_.size() == resolve_.size(), "progressive filling left flows without a rate");

  for (const std::uint32_t s : frozen_order_) {
    const Hot& f = hot_[s];
    for (std::uint32_t h = 0; h < f.hops; ++h) load_[f.links[h]] += f.rate;
  }
  for (const std::uint32_t l : touched_) {
    const double used = static_cast<double>(load_[l]);
    usage_[l].peak_utilisation = std::max(usage_[l].peak_utilisation, std::min(used / capacity_[l], 1.0));
  }
  // The re-solved flows: bytes up to now under their old rate, then the new rate. When they are
  // a good part of the due heap, their entries change in place and the heap is rebuilt (linear)
  // rather than each moved (logarithmic); (time, flow) orders the entries totally, so the heap
  // pops them in the same order either way.
  const bool rebuild = frozen_order_.size() * 8 >= due_.size();
  for (const std::uint32_t s : frozen_order_) {
    Cold& c = cold_[s];
    const double rate = hot_[s].rate;
    MOESIM_ASSERT(rate > 0, "an active flow got no bandwidth");
    c.left = std::max(c.left - c.rate_used * (t - c.since), 0.0);
    c.since = t;
    c.rate_used = rate;
    if (!rebuild) {
      set_due(s, next_due(s));
    } else if (due_pos_[s] == kNotDue) {
      due_pos_[s] = static_cast<std::uint32_t>(due_.size());
      due_.push_back(Due{next_due(s), s});
    } else {
      due_[due_pos_[s]].t = next_due(s);
    }
  }
  if (rebuild)
    for (auto i = static_cast<std::uint32_t>(due_.size() / 2); i-- > 0;) sift_down(i);
}

}  // namespace moesim::models
