#include "models/collectives.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "sim/assert.hpp"

namespace moesim::models {

std::string_view to_string(CollectiveAlgorithm a) {
  switch (a) {
    case CollectiveAlgorithm::ring: return "ring";
    case CollectiveAlgorithm::hierarchical: return "hierarchical";
    case CollectiveAlgorithm::nvls: return "nvls";
  }
  return "?";
}

namespace {

using topology::GpuId;

GpuId gpu_id(int g) { return GpuId(static_cast<std::uint32_t>(g)); }

sim::Bytes share(sim::Bytes size, std::size_t n) {
  const auto k = static_cast<std::int64_t>(n);
  return sim::Bytes((size.count() + k - 1) / k);
}

std::size_t member_index(const std::vector<int>& members, int gpu) {
  const auto it = std::find(members.begin(), members.end(), gpu);
  MOESIM_ASSERT(it != members.end(), "a GPU joined a collective it is not in");
  return static_cast<std::size_t>(it - members.begin());
}

// Starts `flow` on the network; when it has arrived, records it (as of its start) and calls
// `arrived`.
template <class F>
void send_recorded(const CollectiveContext& ctx, const Flow& flow, F arrived) {
  const FlowRecord start{ctx.layer, ctx.stage, flow, ctx.sim.now(), sim::Time(), ctx.backward, ctx.micro_batch};
  ctx.network.start_flow(flow, [&ctx, record = start, arrived = std::move(arrived)]() mutable {
    record.end = ctx.sim.now();
    ctx.recorder.on_flow(record);
    arrived();
  });
}

class Ring final : public Collective {
 public:
  Ring(const CollectiveContext& ctx, CollectiveKind kind, std::vector<int> ring, sim::Bytes size, Done done)
      : ctx_(ctx),
        ring_(std::move(ring)),
        chunk_(share(size, ring_.size())),
        done_(std::move(done)),
        steps_((kind == CollectiveKind::all_reduce ? 2 : 1) * (static_cast<int>(ring_.size()) - 1)),
        joined_(ring_.size(), 0),
        next_send_(ring_.size(), 0),
        received_(ring_.size(), 0),
        sending_(ring_.size(), 0) {
    MOESIM_ASSERT(!ring_.empty(), "a ring without GPUs");
  }

  void join(int gpu) override {
    const std::size_t m = member_index(ring_, gpu);
    joined_[m] = 1;
    // Chunks can arrive before a member joins (its predecessor was ready first); it is done
    // once it has joined and has them all.
    try_send(m);
    if (received_[m] == steps_) done_(gpu);
  }

 private:
  // A member's steps go to its successor one after another, each once the one before has
  // arrived, as over one connection: a member that joins late, with several steps' chunks
  // already in, sends them in order rather than all at once (sharing its link, the first would
  // arrive only with the last, and the successor could forward nothing until then).
  void try_send(std::size_t m) {
    if (!joined_[m] || sending_[m] || next_send_[m] >= steps_ || (next_send_[m] > 0 && received_[m] < next_send_[m])) return;
    ++next_send_[m];
    sending_[m] = 1;
    const std::size_t to = (m + 1) % ring_.size();
    send_recorded(ctx_, Flow{gpu_id(ring_[m]), gpu_id(ring_[to]), chunk_}, [this, m, to] {
      sending_[m] = 0;
      received(to);
      try_send(m);
    });
  }

  void received(std::size_t m) {
    if (++received_[m] == steps_ && joined_[m]) done_(ring_[m]);
    try_send(m);
  }

  CollectiveContext ctx_;
  std::vector<int> ring_;
  sim::Bytes chunk_;
  Done done_;
  int steps_;
  std::vector<char> joined_;
  std::vector<int> next_send_, received_;
  std::vector<char> sending_;  // a step on its way to the successor
};

// Direct collective among the GPUs of one mesh node: every member sends each other its share
// over their own link (an all-reduce: the reduce-scatter's shares, then the all-gather's).
class Direct final : public Collective {
 public:
  Direct(const CollectiveContext& ctx, CollectiveKind kind, std::vector<int> members, sim::Bytes size, Done done)
      : ctx_(ctx),
        members_(std::move(members)),
        part_(share(size, members_.size())),
        done_(std::move(done)),
        kind_(kind),
        joined_(members_.size(), 0),
        first_(members_.size(), 0),
        second_(members_.size(), 0),
        sent_(members_.size(), 0),
        reported_(members_.size(), 0) {
    MOESIM_ASSERT(!members_.empty(), "a direct collective without GPUs");
  }

  void join(int gpu) override {
    const std::size_t m = member_index(members_, gpu);
    joined_[m] = 1;
    send_all(m, false);
    progress(m);
  }

 private:
  std::size_t peers() const { return members_.size() - 1; }
  bool two_rounds() const { return kind_ == CollectiveKind::all_reduce; }

  // Member m sends its share to every other member: the first round (the reduce-scatter's, or
  // the only one) or the all-reduce's all-gather round.
  void send_all(std::size_t m, bool second) {
    for (std::size_t to = 0; to < members_.size(); ++to) {
      if (to == m) continue;
      send_recorded(ctx_, Flow{gpu_id(members_[m]), gpu_id(members_[to]), part_}, [this, to, second] {
        ++(second ? second_ : first_)[to];
        progress(to);
      });
    }
  }

  // Called when member m joins or receives a share: starts its second round once its first is
  // in, and reports it done once everything it waits for is.
  void progress(std::size_t m) {
    if (!joined_[m] || reported_[m] || first_[m] < peers()) return;
    if (two_rounds()) {
      if (!sent_[m]) {
        sent_[m] = 1;
        send_all(m, true);
      }
      if (second_[m] < peers()) return;
    }
    reported_[m] = 1;
    done_(members_[m]);
  }

  CollectiveContext ctx_;
  std::vector<int> members_;
  sim::Bytes part_;
  Done done_;
  CollectiveKind kind_;
  std::vector<char> joined_;
  std::vector<std::size_t> first_, second_;  // shares received in each round
  std::vector<char> sent_, reported_;        // all-reduce: the second round sent; done reported
};

// In-switch (NVLink SHARP) collective among the GPUs of one node.
class Switch final : public Collective {
 public:
  Switch(const CollectiveContext& ctx, CollectiveKind kind, std::vector<int> members, sim::Bytes size, Done done)
      : ctx_(ctx), members_(std::move(members)), done_(std::move(done)) {
    const sim::Bytes part = share(size, members_.size());
    switch (kind) {
      case CollectiveKind::reduce_scatter: up_ = size, down_ = part; break;
      case CollectiveKind::all_gather: up_ = part, down_ = size; break;
      case CollectiveKind::all_reduce: up_ = down_ = size + part; break;
    }
  }

  void join(int gpu) override {
    (void)member_index(members_, gpu);
    if (++joined_ < members_.size()) return;
    if (members_.size() == 1) {
      done_(gpu);
      return;
    }
    left_ = 2 * members_.size();
    for (const int g : members_)
      for (const Leg leg : {Leg::to_switch, Leg::from_switch}) {
        // The network moves the bytes slowed by the switch's efficiency; the record keeps the
        // bytes themselves.
        const Flow flow{gpu_id(g), gpu_id(g), leg == Leg::to_switch ? up_ : down_, leg};
        const Flow slowed{flow.src, flow.dst,
                          sim::Bytes(std::llround(static_cast<double>(flow.size.count()) / ctx_.switch_efficiency)), leg};
        const FlowRecord start{ctx_.layer, ctx_.stage, flow, ctx_.sim.now(), sim::Time(), ctx_.backward, ctx_.micro_batch};
        ctx_.network.start_flow(slowed, [this, record = start]() mutable {
          record.end = ctx_.sim.now();
          ctx_.recorder.on_flow(record);
          if (--left_ == 0)
            for (const int m : members_) done_(m);
        });
      }
  }

 private:
  CollectiveContext ctx_;
  std::vector<int> members_;
  Done done_;
  sim::Bytes up_, down_;
  std::size_t joined_ = 0, left_ = 0;
};

// Collectives over the same members side by side (a ring's channels): a member joins each and
// is done once it is done in all of them.
class Parallel final : public Collective {
 public:
  explicit Parallel(Done done) : done_(std::move(done)) {}
  // make(done) builds one of them; all are added before anyone joins.
  void add(const std::function<std::unique_ptr<Collective>(Done)>& make) {
    parts_.push_back(make([this](int gpu) {
      if (++finished_[gpu] == parts_.size()) done_(gpu);
    }));
  }
  void join(int gpu) override {
    for (auto& p : parts_) p->join(gpu);
  }

 private:
  Done done_;
  std::vector<std::unique_ptr<Collective>> parts_;
  std::map<int, std::size_t> finished_;
};

// The channels of NCCL's ring across nodes: with k members on each of several nodes (each
// node's members one after another in `ring`), k rings over the same members, channel c
// entering each node at its member c and leaving at member c - 1 (every second node in the
// opposite direction, entering at c - 1 and leaving at c), so that every member's NIC carries
// one channel out and one in, and consecutive nodes' crossings join members at the same
// position (the same rail in a rail-optimised fabric; with an odd number of nodes the wrap
// from the last node to the first does not). Through an NVSwitch the path inside a node does
// not matter (a member's port carries its channels' steps whichever peer they go to); in a mesh
// node, where each GPU pair has its own link, that path would send every channel over the same
// k - 1 links. There, with k even, the channels take link-disjoint paths instead: channel c
// enters node j at member s = c (j even) or c + k/2 (j odd) and zigzags s, s + 1, s - 1, s + 2,
// s - 2, ..., leaving at s + k/2 (Walecki's decomposition: the k paths, one from each member,
// use every directed link of the k members exactly once), so the next node is entered at the
// same position and every link, like every NIC, carries one channel each way. Empty where the
// ring stays one: on one node, with one member on a node, with different counts on different
// nodes, or with a node's members not together.
std::vector<std::vector<int>> ring_channels(const std::vector<int>& ring, int gpus_per_node, bool mesh) {
  std::vector<std::vector<int>> nodes;
  std::set<int> seen;
  for (std::size_t i = 0; i < ring.size(); ++i) {
    const int node = ring[i] / gpus_per_node;
    if (i == 0 || node != ring[i - 1] / gpus_per_node) {
      if (!seen.insert(node).second) return {};  // the node's members are not together
      nodes.emplace_back();
    }
    nodes.back().push_back(ring[i]);
  }
  const std::size_t k = nodes.front().size();
  if (nodes.size() < 2 || k < 2) return {};
  for (const auto& n : nodes)
    if (n.size() != k) return {};
  std::vector<std::vector<int>> channels(k);
  const bool zigzag = mesh && k % 2 == 0;
  for (std::size_t c = 0; c < k; ++c)
    for (std::size_t j = 0; j < nodes.size(); ++j)
      for (std::size_t i = 0; i < k; ++i) {
        std::size_t at = 0;
        if (zigzag) {
          const std::size_t s = j % 2 == 0 ? c : c + k / 2;  // s + (i + 1)/2 for odd i, s - i/2 for even
          at = (i % 2 == 1 ? s + (i + 1) / 2 : s + k - i / 2) % k;
        } else {
          at = j % 2 == 0 ? (c + i) % k : (c + 2 * k - 1 - i) % k;
        }
        channels[c].push_back(nodes[j][at]);
      }
  return channels;
}

// Phases run one after another per GPU: a GPU done with phase i joins its collective of phase
// i + 1; done with the last, it is done. `left_first(gpu)` (if set) when it leaves phase 0.
class Phased final : public Collective {
 public:
  struct Phase {
    std::vector<std::unique_ptr<Collective>> parts;
    std::map<int, std::size_t> part_of;  // GPU -> its part
  };
  explicit Phased(Done done, Done left_first = {}) : done_(std::move(done)), left_first_(std::move(left_first)) {}

  // Adds a phase made of one collective per member list (the lists partition the members).
  void add_phase(const std::vector<std::vector<int>>& groups,
                 const std::function<std::unique_ptr<Collective>(std::vector<int>, Done)>& make) {
    const std::size_t index = phases_.size();
    Phase p;
    for (const auto& g : groups) {
      for (const int gpu : g) p.part_of[gpu] = p.parts.size();
      p.parts.push_back(make(g, [this, index](int gpu) { next(index + 1, gpu); }));
    }
    phases_.push_back(std::move(p));
  }
  void join(int gpu) override { next(0, gpu); }

 private:
  void next(std::size_t phase, int gpu) {
    if (phase == 1 && left_first_) left_first_(gpu);
    if (phase == phases_.size()) {
      done_(gpu);
      return;
    }
    Phase& p = phases_[phase];
    p.parts[p.part_of.at(gpu)]->join(gpu);
  }
  Done done_, left_first_;
  std::vector<Phase> phases_;
};

// The buffer in chunks that flow through the phases one behind the other: a GPU's chunk c + 1
// enters the first phase when chunk c leaves it, so one chunk's inter-node phase overlaps the
// next one's intra-node phase (NCCL pipelines its hierarchical algorithms so).
class Pipelined final : public Collective {
 public:
  Pipelined(std::size_t chunks, Done done) : done_(std::move(done)), chunks_(chunks) {}
  // make(left_first, done) builds one chunk's phases.
  void build(const std::function<std::unique_ptr<Phased>(Done left_first, Done done)>& make) {
    for (std::size_t c = 0; c < chunks_; ++c)
      parts_.push_back(make([this, c](int gpu) { if (c + 1 < chunks_) parts_[c + 1]->join(gpu); },
                            [this](int gpu) {
                              if (++finished_[gpu] == chunks_) done_(gpu);
                            }));
  }
  void join(int gpu) override { parts_.front()->join(gpu); }

 private:
  Done done_;
  std::size_t chunks_;
  std::vector<std::unique_ptr<Phased>> parts_;
  std::map<int, std::size_t> finished_;
};

}  // namespace

std::unique_ptr<Collective> make_collective(const CollectiveContext& ctx, CollectiveAlgorithm algorithm,
                                            CollectiveKind kind, std::vector<int> members, sim::Bytes size,
                                            Collective::Done done, int chunks) {
  MOESIM_ASSERT(!members.empty(), "a collective without GPUs");
  if (algorithm == CollectiveAlgorithm::ring) {
    const int node = members.front() / ctx.gpus_per_node;
    const bool one_node = std::all_of(members.begin(), members.end(), [&](int g) { return g / ctx.gpus_per_node == node; });
    if (ctx.mesh && one_node) return std::make_unique<Direct>(ctx, kind, std::move(members), size, std::move(done));
    const auto channels = ctx.channels ? ring_channels(members, ctx.gpus_per_node, ctx.mesh) : std::vector<std::vector<int>>{};
    if (channels.empty()) return std::make_unique<Ring>(ctx, kind, std::move(members), size, std::move(done));
    auto parallel = std::make_unique<Parallel>(std::move(done));
    const sim::Bytes part = share(size, channels.size());
    for (const auto& order : channels)
      parallel->add([&](Collective::Done d) { return std::make_unique<Ring>(ctx, kind, order, part, std::move(d)); });
    return parallel;
  }
  // By node, in member order; and across nodes by in-node position.
  std::map<int, std::vector<int>> by_node;
  for (const int g : members) by_node[g / ctx.gpus_per_node].push_back(g);
  MOESIM_ASSERT(!ctx.mesh || algorithm != CollectiveAlgorithm::nvls, "an in-switch collective in a node without a switch");
  const std::size_t k = by_node.begin()->second.size();
  const bool even = std::all_of(by_node.begin(), by_node.end(), [&](const auto& n) { return n.second.size() == k; });
  if (!even)  // nodes with different member counts: no common shard size; one ring
    return std::make_unique<Ring>(ctx, kind, std::move(members), size, std::move(done));
  std::vector<std::vector<int>> nodes, across(k);
  for (const auto& [node, gpus] : by_node) {
    nodes.push_back(gpus);
    for (std::size_t i = 0; i < k; ++i) across[i].push_back(gpus[i]);
  }
  const bool in_switch = algorithm == CollectiveAlgorithm::nvls;
  const auto intra = [&ctx, in_switch](CollectiveKind kd, sim::Bytes s) {
    return [&ctx, in_switch, kd, s](std::vector<int> g, Collective::Done d) -> std::unique_ptr<Collective> {
      if (in_switch) return std::make_unique<Switch>(ctx, kd, std::move(g), s, std::move(d));
      if (ctx.mesh) return std::make_unique<Direct>(ctx, kd, std::move(g), s, std::move(d));
      return std::make_unique<Ring>(ctx, kd, std::move(g), s, std::move(d));
    };
  };
  const auto inter = [&ctx](CollectiveKind kd, sim::Bytes s) {
    return [&ctx, kd, s](std::vector<int> g, Collective::Done d) -> std::unique_ptr<Collective> {
      return std::make_unique<Ring>(ctx, kd, std::move(g), s, std::move(d));
    };
  };
  const bool local = k > 1, remote = nodes.size() > 1;
  if (!remote) {
    auto phased = std::make_unique<Phased>(std::move(done));
    phased->add_phase(nodes, intra(kind, size));
    return phased;
  }
  // One chunk's phases.
  const auto phases = [&](sim::Bytes s, Collective::Done left_first, Collective::Done chunk_done) {
    auto phased = std::make_unique<Phased>(std::move(chunk_done), std::move(left_first));
    const sim::Bytes part = share(s, k);
    switch (kind) {
      case CollectiveKind::all_reduce:
        if (local) phased->add_phase(nodes, intra(CollectiveKind::reduce_scatter, s));
        phased->add_phase(across, inter(CollectiveKind::all_reduce, part));
        if (local) phased->add_phase(nodes, intra(CollectiveKind::all_gather, s));
        break;
      case CollectiveKind::reduce_scatter:
        if (local) phased->add_phase(nodes, intra(CollectiveKind::reduce_scatter, s));
        phased->add_phase(across, inter(CollectiveKind::reduce_scatter, part));
        break;
      case CollectiveKind::all_gather:
        phased->add_phase(across, inter(CollectiveKind::all_gather, part));
        if (local) phased->add_phase(nodes, intra(CollectiveKind::all_gather, s));
        break;
    }
    return phased;
  };
  const std::size_t c = static_cast<std::size_t>(std::max(1, chunks));
  if (c == 1) return phases(size, {}, std::move(done));
  auto pipe = std::make_unique<Pipelined>(c, std::move(done));
  const sim::Bytes per_chunk = share(size, c);
  pipe->build([&](Collective::Done left_first, Collective::Done chunk_done) {
    return phases(per_chunk, std::move(left_first), std::move(chunk_done));
  });
  return pipe;
}

std::unique_ptr<Collective> make_sharded_collective(const CollectiveContext& ctx, CollectiveAlgorithm algorithm,
                                                    CollectiveKind kind, std::vector<int> members, std::size_t group,
                                                    sim::Bytes size, Collective::Done done, int chunks) {
  if (group == 0 || group >= members.size())
    return make_collective(ctx, algorithm, kind, std::move(members), size, std::move(done), chunks);
  MOESIM_ASSERT(members.size() % group == 0, "shard groups that do not divide the members");
  MOESIM_ASSERT(kind != CollectiveKind::all_reduce, "an all-reduce of a state that is not sharded, in shard groups");
  std::vector<std::vector<int>> groups, places(group);
  for (std::size_t i = 0; i < members.size(); ++i) {
    if (i % group == 0) groups.emplace_back();
    groups.back().push_back(members[i]);
    places[i % group].push_back(members[i]);
  }
  const auto part = [&ctx, algorithm, chunks](CollectiveKind kd, sim::Bytes s) {
    return [&ctx, algorithm, chunks, kd, s](std::vector<int> g, Collective::Done d) {
      return make_collective(ctx, algorithm, kd, std::move(g), s, std::move(d), chunks);
    };
  };
  auto phased = std::make_unique<Phased>(std::move(done));
  if (group > 1) phased->add_phase(groups, part(kind, size));
  if (kind == CollectiveKind::reduce_scatter) phased->add_phase(places, part(CollectiveKind::all_reduce, share(size, group)));
  return phased;
}

std::unique_ptr<Collective> make_strided_collective(const CollectiveContext& ctx, CollectiveAlgorithm algorithm,
                                                    CollectiveKind kind, std::vector<int> members, std::size_t stride,
                                                    std::size_t group, sim::Bytes size, Collective::Done done, int chunks) {
  if (stride <= 1)
    return make_sharded_collective(ctx, algorithm, kind, std::move(members), group, size, std::move(done), chunks);
  MOESIM_ASSERT(members.size() % stride == 0, "a stride that does not divide the members");
  MOESIM_ASSERT(group % stride == 0, "shard groups that are not whole strides");
  std::vector<std::vector<int>> subsets(stride);
  for (std::size_t i = 0; i < members.size(); ++i) subsets[i % stride].push_back(members[i]);
  auto phased = std::make_unique<Phased>(std::move(done));
  phased->add_phase(subsets, [&](std::vector<int> g, Collective::Done d) {
    return make_sharded_collective(ctx, algorithm, kind, std::move(g), group / stride, size, std::move(d), chunks);
  });
  return phased;
}

}  // namespace moesim::models
