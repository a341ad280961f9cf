// Collectives other than the MoE all-to-all, as flows on the network model: all-reduce,
// reduce-scatter and all-gather of S bytes over a group of n GPUs, for data-parallel gradients
// and tensor parallelism.
//
// Algorithms (CollectiveAlgorithm):
// - ring (NCCL's ring): in step k every GPU sends a chunk of ceil(S / n) bytes to the next GPU
//   of the ring; reduce-scatter and all-gather take n - 1 steps, all-reduce 2(n - 1) (a
//   reduce-scatter then an all-gather). A GPU sends step k once it has joined (its data is
//   ready) and, for k > 0, received step k - 1's chunk from the previous GPU; it is done when it
//   has received every chunk it waits for. One GPU alone is done when it joins.
//   Across nodes with k > 1 members on every node, NCCL runs its ring as several channels that
//   cross between nodes through different NICs, so that a node's crossings use all of them
//   (NVIDIA measures a ring all-reduce bus bandwidth of 192 GB/s across two DGX-A100, whose 8
//   NICs carry 25 GB/s each: NVIDIA/nccl issue 812, docs/validation.md). Here: k rings of S / k
//   each, channel c entering each node at its member c and leaving at member c - 1 (alternate
//   nodes the other way round, so a crossing joins members at the same position, one rail), so
//   every member's NIC carries one channel each way. In mesh nodes the channels take
//   link-disjoint paths through each node (with k even), so every link carries one channel too.
// - hierarchical: the group's GPUs by node (k per node on N nodes): a ring reduce-scatter of S
//   inside each node, a ring all-reduce of ceil(S / k) across nodes among the GPUs of the same
//   in-node position (each over its own NIC), a ring all-gather of S inside each node.
//   Reduce-scatter is the first two phases (the second a reduce-scatter), all-gather the
//   mirror. Phases with one member are skipped. The buffer goes through the phases in chunks,
//   one behind the other (pipelined, as NCCL does), so a chunk's inter-node phase overlaps the
//   next chunk's intra-node one.
// - nvls: hierarchical, with the phases inside a node done by the NVSwitch (NVLink SHARP,
//   NCCL's NVLS): for a reduce-scatter every GPU sends its S bytes up its NVLink port, the
//   switch reduces them, and each GPU receives its reduced 1/k share (S/k down its port); an
//   all-gather sends S/k up (multimem store) and receives S down (multicast); an all-reduce,
//   pipelined, sends S + S/k up and receives S + S/k down at the same time, where a ring moves
//   2(k - 1)/k x S each way, at switch_efficiency of the port's bandwidth. The switch needs
//   every member's data: the flows start when the last member joins, and every member is done
//   when the last flow ends.
// On a node whose GPUs form a full mesh (NodeFabric::mesh, AMD Infinity Fabric), the phases
// inside a node, and a ring whose members are all on one node, are direct instead: for a
// reduce-scatter every GPU sends each other member that member's share ceil(S / k) of its
// buffer over their own link; for an all-gather its own share to each; an all-reduce is the
// two, a GPU starting its all-gather once it has every share of its reduce-scatter. Each link
// of the group carries S / k each way, as RCCL's rings over all 7 links of an MI300X (one per
// link-disjoint Hamiltonian cycle) carry; a single ring would use one link of each GPU.
// Reduction compute is not modelled (memory-bound and small next to the transfers).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "models/network.hpp"
#include "models/recorder.hpp"
#include "sim/simulator.hpp"

namespace moesim::models {

enum class CollectiveKind { all_reduce, reduce_scatter, all_gather };
enum class CollectiveAlgorithm { ring, hierarchical, nvls };
std::string_view to_string(CollectiveAlgorithm a);

class Collective {
 public:
  using Done = std::function<void(int gpu)>;
  virtual ~Collective() = default;
  // `gpu` (a member) has its data ready; `done(gpu)` is called once per member when its part
  // of the result has arrived.
  virtual void join(int gpu) = 0;
};

struct CollectiveContext {
  sim::Simulator& sim;
  NetworkModel& network;
  Recorder& recorder;
  int gpus_per_node;
  // In-switch collectives move their bytes at this share of a port's bandwidth (the switch's
  // reduction and multicast are not free); see kNvlsEfficiency.
  double switch_efficiency = 1.0;
  bool mesh = false;               // the nodes' GPUs form a full mesh (no switch)
  // `ring` across nodes as NCCL's channels (false: one ring, as a chain of point-to-point sends
  // to the next GPU, Megatron-Core's ring context parallelism, moves its steps).
  bool channels = true;
  Stage stage = Stage::grad_sync;  // what the flows are recorded as
  int layer = 0;                   // and with which layer, pass and micro-batch
  bool backward = true;
  int micro_batch = 0;
};

// NCCL on 8 x H100 (one NVSwitch node, 2-4 GB messages) reaches an all-reduce bus bandwidth of
// 365-370 GB/s with the ring and about 480 GB/s with NVLink SHARP (NVIDIA/nccl issue 1455,
// NVIDIA/nccl-tests issue 212): NVLS is 1.30x the ring, where the bytes each port carries
// (2(k-1)/k S against S + S/k) alone would make it 1.56x. Moving the in-switch bytes at 0.84 of
// the port's bandwidth reproduces the measured ratio (docs/validation.md).
inline constexpr double kNvlsEfficiency = 0.84;

// members: the GPUs (the ring order for `ring`); size: the whole buffer S; chunks
// (hierarchical and nvls across nodes): the buffer is cut into this many pieces that go
// through the phases one behind the other, so that the phases overlap as in NCCL's pipelined
// algorithms (1: the phases one after another for the whole buffer).
std::unique_ptr<Collective> make_collective(const CollectiveContext& ctx, CollectiveAlgorithm algorithm,
                                            CollectiveKind kind, std::vector<int> members, sim::Bytes size,
                                            Collective::Done done, int chunks = 1);

// A sharded state's collective under hybrid sharding (HSDP): the members in groups of `group`
// consecutive ones, each group holding a whole copy sharded over its members. all_gather: within
// each group. reduce_scatter: within each group, then each share (size / group) all-reduced
// across the groups by the members at the same place in each. Each part as make_collective
// builds it with `algorithm` and `chunks`; a group of one member skips its part. A group of
// all the members, or 0, is make_collective's collective (the only one for all_reduce, which
// is not sharded).
std::unique_ptr<Collective> make_sharded_collective(const CollectiveContext& ctx, CollectiveAlgorithm algorithm,
                                                    CollectiveKind kind, std::vector<int> members, std::size_t group,
                                                    sim::Bytes size, Collective::Done done, int chunks = 1);

// Independent collectives side by side, one per interleaved subset of the members: subset r is
// members r, r + stride, r + 2 stride, ... (data parallelism under tensor parallelism: the GPUs
// of one tensor-parallel rank, every stride-th of whole TP groups, hold the same part of the
// weights and synchronise it among themselves). Each as make_sharded_collective builds it, in
// shard groups of group / stride (0: none). A stride of 1 is make_sharded_collective's.
std::unique_ptr<Collective> make_strided_collective(const CollectiveContext& ctx, CollectiveAlgorithm algorithm,
                                                    CollectiveKind kind, std::vector<int> members, std::size_t stride,
                                                    std::size_t group, sim::Bytes size, Collective::Done done, int chunks = 1);

}  // namespace moesim::models
