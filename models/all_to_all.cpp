#include "models/all_to_all.hpp"

#include <utility>

#include "sim/assert.hpp"

namespace moesim::models {

using topology::GpuId;

std::string_view to_string(AllToAllAlgorithm a) {
  switch (a) {
    case AllToAllAlgorithm::direct: return "direct";
    case AllToAllAlgorithm::hierarchical: return "hierarchical";
    case AllToAllAlgorithm::low_latency: return "low_latency";
  }
  return "?";
}

std::int64_t row_bytes(std::int64_t hidden, int dtype_bytes) {
  if (dtype_bytes == 1) return hidden + (hidden + 127) / 128 * 4;  // fp8 values + fp32 scales per 128
  return hidden * dtype_bytes;
}

AllToAll::AllToAll(sim::Simulator& sim, const topology::Cluster& cluster, NetworkModel& network, Recorder& recorder,
                   const AllToAllSpec& spec, const std::vector<routing::DispatchPlan>& plans, int ep, int groups, int stride,
                   std::vector<AllToAllPass> passes, Arrived arrived)
    : sim_(sim),
      cluster_(cluster),
      network_(network),
      recorder_(recorder),
      spec_(spec),
      plans_(plans),
      ep_(ep),
      groups_(groups),
      stride_(stride),
      passes_(std::move(passes)),
      arrived_(std::move(arrived)) {
  if (spec_.algorithm != AllToAllAlgorithm::hierarchical) return;
  const int gpn = cluster.spec().gpus_per_node;
  const int ranks_per_node = gpn / stride;  // an EP group's ranks on one node
  MOESIM_ASSERT(gpn % stride == 0 && (ep <= ranks_per_node ? ranks_per_node % ep == 0 : ep % ranks_per_node == 0),
                "hierarchical all-to-all needs whole-node EP groups");
  const int gpus = cluster.gpu_count();
  const int nodes = plans_.empty() ? 1 : plans_.front().nodes;
  const int count = static_cast<int>(passes_.size());
  relay_pending_.assign(static_cast<std::size_t>(count) * static_cast<std::size_t>(gpus) * static_cast<std::size_t>(nodes), 0);
  for (int l = 0; l < count; ++l)
    for (int g = 0; g < gpus; ++g) {
      const auto& p = plan(l, g);
      const int s = rank_of(g);
      for (int d = 0; d < ep; ++d)
        if (p.node_of_rank[static_cast<std::size_t>(d)] != p.node_of_rank[static_cast<std::size_t>(s)] &&
            p.token_sends[static_cast<std::size_t>(s * ep + d)] > 0)
          ++relay_pending_[(static_cast<std::size_t>(l) * static_cast<std::size_t>(gpus) + static_cast<std::size_t>(g)) *
                               static_cast<std::size_t>(nodes) +
                           static_cast<std::size_t>(p.node_of_rank[static_cast<std::size_t>(d)])];
    }
  if (spec_.forward_chunks <= 1) return;
  MOESIM_ASSERT(spec_.forward_chunks <= 254 && gpn <= 255, "too many forwarding chunks or GPUs per node");
  forwards_.width = static_cast<std::size_t>(gpn) + 1;
  relays_.width = static_cast<std::size_t>(spec_.forward_chunks) + 1;
}

std::uint32_t AllToAll::CounterPool::take() {
  if (!free.empty()) {
    const std::uint32_t b = free.back();
    free.pop_back();
    return b;
  }
  counters.resize(counters.size() + width, 0);
  return static_cast<std::uint32_t>(counters.size() / width - 1);
}

const routing::DispatchPlan& AllToAll::plan(int pass, int gpu) const {
  return plans_[static_cast<std::size_t>(passes_[static_cast<std::size_t>(pass)].plan_row * groups_ +
                                    (gpu / (ep_ * stride_) * stride_ + gpu % stride_) % groups_)];
}

std::int64_t AllToAll::inbound(int pass, Phase phase, int gpu) const {
  const auto& p = plan(pass, gpu);
  const int r = rank_of(gpu);
  std::int64_t n = 0;
  if (spec_.algorithm != AllToAllAlgorithm::hierarchical) {
    for (int o = 0; o < ep_; ++o)
      if (o != r) n += (phase == Phase::dispatch ? p.send(o, r) : p.send(r, o)) > 0;
    return n;
  }
  const auto ts = [&](int s, int d) { return p.token_sends[static_cast<std::size_t>(s * ep_ + d)]; };
  const auto node = [&](int rank) { return p.node_of_rank[static_cast<std::size_t>(rank)]; };
  if (phase == Phase::dispatch) {
    for (int s = 0; s < ep_; ++s) n += s != r && ts(s, r) > 0;
    return n;
  }
  for (int d = 0; d < ep_; ++d) n += d != r && node(d) == node(r) && ts(r, d) > 0;
  for (int b = 0; b < p.nodes; ++b)
    n += b != node(r) && p.node_sends[static_cast<std::size_t>(r * p.nodes + b)] > 0;
  return n;
}

void AllToAll::start(int pass, Phase phase, int src, int dst, std::int64_t rows, sim::Callback done, std::uint32_t parts,
                     NetworkModel::Part on_part) {
  const AllToAllPass& info = passes_[static_cast<std::size_t>(pass)];
  const bool backward = info.backward;
  const Flow flow{GpuId(static_cast<std::uint32_t>(src)), GpuId(static_cast<std::uint32_t>(dst)),
                  sim::Bytes(rows * (phase == Phase::combine ? spec_.combine_row_bytes
                                     : !backward          ? spec_.dispatch_row_bytes
                                                          : spec_.gradient_dispatch_row_bytes))};
  const Stage stage = phase == Phase::dispatch ? Stage::dispatch : Stage::combine;
  sim::Callback finished = [this, record = FlowRecord{info.layer, stage, flow, sim_.now(), sim::Time(), backward || info.recompute,
                                                       info.micro_batch, info.recompute},
                            done = std::move(done)]() mutable {
    record.end = sim_.now();
    recorder_.on_flow(record);
    done();
  };
  if (parts <= 1) network_.start_flow(flow, std::move(finished));
  else network_.start_flow_in_parts(flow, parts, std::move(on_part), std::move(finished));
}

void AllToAll::send(int pass, Phase phase, int gpu) {
  if (spec_.algorithm == AllToAllAlgorithm::hierarchical) {
    if (phase == Phase::dispatch) dispatch_hierarchical(pass, gpu);
    else combine_hierarchical(pass, gpu);
    return;
  }
  const auto& p = plan(pass, gpu);
  const int r = rank_of(gpu);
  for (int o = 0; o < ep_; ++o) {
    const std::int64_t rows = phase == Phase::dispatch ? p.send(r, o) : p.send(o, r);
    if (o == r || rows == 0) continue;
    const int dst = gpu_of(gpu, o);
    sim::Callback done = [this, pass, phase, dst] { arrived_(pass, phase, dst); };
    if (spec_.algorithm == AllToAllAlgorithm::low_latency && spec_.message_overhead > sim::Time::zero()) {
      sim_.schedule_in(spec_.message_overhead * rows, [this, pass, phase, gpu, dst, rows, done = std::move(done)]() mutable {
        start(pass, phase, gpu, dst, rows, std::move(done));
      });
    } else {
      start(pass, phase, gpu, dst, rows, std::move(done));
    }
  }
}

void AllToAll::dispatch_hierarchical(int pass, int gpu) {
  const auto& p = plan(pass, gpu);
  const int gpn = cluster_.spec().gpus_per_node;
  const int r = rank_of(gpu);
  const auto node = [&](int rank) { return p.node_of_rank[static_cast<std::size_t>(rank)]; };
  for (int d = 0; d < ep_; ++d) {
    const std::int64_t rows = p.token_sends[static_cast<std::size_t>(r * ep_ + d)];
    if (d == r || rows == 0 || node(d) != node(r)) continue;
    const int dst = gpu_of(gpu, d);
    start(pass, Phase::dispatch, gpu, dst, rows, [this, pass, dst] { arrived_(pass, Phase::dispatch, dst); });
  }
  for (int b = 0; b < p.nodes; ++b) {
    const std::int64_t rows = p.node_sends[static_cast<std::size_t>(r * p.nodes + b)];
    if (b == node(r) || rows == 0) continue;
    const int relay = gpu + (b - node(r)) * gpn;  // node b's GPU on the sender's rail
    const std::uint32_t parts = chunks(rows);
    std::uint32_t block = 0;
    if (parts > 1) {  // each GPU's chunks still to arrive, and how many GPUs wait for them
      block = forwards_.take();
      std::uint8_t* left = forwards_.at(block);
      std::fill(left, left + gpn + 1, std::uint8_t{0});
      for (int d = 0; d < ep_; ++d) {
        const std::int64_t fwd = p.token_sends[static_cast<std::size_t>(r * ep_ + d)];
        if (d == rank_of(relay) || fwd == 0 || node(d) != b) continue;
        left[gpu_of(gpu, d) % gpn] = static_cast<std::uint8_t>(std::min<std::int64_t>(fwd, parts));
        ++left[gpn];
      }
      if (left[gpn] == 0) forwards_.give(block);
    }
    start(
        pass, Phase::dispatch, gpu, relay, rows,
        [this, pass, gpu, relay, parts, block] {
          const auto& q = plan(pass, gpu);
          if (q.token_sends[static_cast<std::size_t>(rank_of(gpu) * ep_ + rank_of(relay))] > 0) arrived_(pass, Phase::dispatch, relay);
          forward_chunk(pass, gpu, relay, parts - 1, parts, block);
        },
        parts, [this, pass, gpu, relay, parts, block](std::uint32_t j) { forward_chunk(pass, gpu, relay, j, parts, block); });
  }
}

void AllToAll::forward_chunk(int pass, int src, int relay, std::uint32_t j, std::uint32_t parts, std::uint32_t block) {
  const auto& q = plan(pass, src);
  const int gpn = cluster_.spec().gpus_per_node;
  const int s = rank_of(src), rr = rank_of(relay);
  const int rb = q.node_of_rank[static_cast<std::size_t>(rr)];
  for (int d = 0; d < ep_; ++d) {
    const std::int64_t fwd = q.token_sends[static_cast<std::size_t>(s * ep_ + d)];
    if (d == rr || fwd == 0 || q.node_of_rank[static_cast<std::size_t>(d)] != rb) continue;
    const int dst = gpu_of(src, d);
    if (parts == 1) {
      start(pass, Phase::dispatch, relay, dst, fwd, [this, pass, dst] { arrived_(pass, Phase::dispatch, dst); });
      continue;
    }
    const std::int64_t rows = fwd * (j + 1) / parts - fwd * j / parts;
    if (rows == 0) continue;
    start(pass, Phase::dispatch, relay, dst, rows, [this, pass, dst, block, gpn] {
      std::uint8_t* left = forwards_.at(block);
      MOESIM_ASSERT(left[dst % gpn] > 0, "a forwarded chunk nobody waits for");
      if (--left[dst % gpn] > 0) return;
      arrived_(pass, Phase::dispatch, dst);
      if (--left[gpn] == 0) forwards_.give(block);
    });
  }
}

void AllToAll::combine_hierarchical(int pass, int gpu) {
  const auto& p = plan(pass, gpu);
  const int gpn = cluster_.spec().gpus_per_node;
  const int d = rank_of(gpu);
  const auto node = [&](int rank) { return p.node_of_rank[static_cast<std::size_t>(rank)]; };
  for (int s = 0; s < ep_; ++s) {
    const std::int64_t rows = p.token_sends[static_cast<std::size_t>(s * ep_ + d)];
    if (s == d || rows == 0) continue;
    const int src = gpu_of(gpu, s);
    if (node(s) == node(d)) {
      start(pass, Phase::combine, gpu, src, rows, [this, pass, src] { arrived_(pass, Phase::combine, src); });
      continue;
    }
    const int relay = gpu - gpu % gpn + src % gpn;  // this node's GPU on the source's rail
    const std::uint32_t parts = chunks(p.node_sends[static_cast<std::size_t>(s * p.nodes + node(d))]);
    if (relay == gpu) {
      for (std::uint32_t j = 0; j < parts; ++j) relay_part(pass, relay, src, j);
    } else {
      start(
          pass, Phase::combine, gpu, relay, rows, [this, pass, relay, src, parts] { relay_part(pass, relay, src, parts - 1); },
          parts, [this, pass, relay, src](std::uint32_t j) { relay_part(pass, relay, src, j); });
    }
  }
}

void AllToAll::relay_part(int pass, int relay, int src, std::uint32_t j) {
  const auto& p = plan(pass, src);
  const int rr = rank_of(relay), s = rank_of(src);
  const int b = p.node_of_rank[static_cast<std::size_t>(rr)];
  const std::size_t at = (static_cast<std::size_t>(pass) * static_cast<std::size_t>(cluster_.gpu_count()) +
                          static_cast<std::size_t>(src)) *
                             static_cast<std::size_t>(p.nodes) +
                         static_cast<std::size_t>(b);
  const std::int64_t rows = p.node_sends[static_cast<std::size_t>(s * p.nodes + b)];
  const std::uint32_t parts = chunks(rows);
  if (parts == 1) {
    auto& left = relay_pending_[at];
    MOESIM_ASSERT(left > 0, "a combine contribution nobody waits for");
    if (--left > 0) return;
    start(pass, Phase::combine, relay, src, rows, [this, pass, src] { arrived_(pass, Phase::combine, src); });
    return;
  }
  std::int32_t& slot = relay_pending_[at];
  if (slot > 0) {  // the first contribution: every part waits for every contributor
    const std::uint32_t block = relays_.take();
    std::uint8_t* c = relays_.at(block);
    for (std::uint32_t i = 0; i < parts; ++i) c[i] = static_cast<std::uint8_t>(slot);
    c[spec_.forward_chunks] = static_cast<std::uint8_t>(parts);
    slot = -static_cast<std::int32_t>(block) - 1;
  }
  const auto block = static_cast<std::uint32_t>(-slot - 1);
  std::uint8_t& left = relays_.at(block)[j];
  MOESIM_ASSERT(left > 0, "a combine contribution nobody waits for");
  if (--left > 0) return;
  start(pass, Phase::combine, relay, src, rows * (j + 1) / parts - rows * j / parts, [this, pass, src, block] {
    std::uint8_t& chunks_left = relays_.at(block)[spec_.forward_chunks];
    MOESIM_ASSERT(chunks_left > 0, "a combine chunk nobody waits for");
    if (--chunks_left > 0) return;
    relays_.give(block);
    arrived_(pass, Phase::combine, src);
  });
}

}  // namespace moesim::models
