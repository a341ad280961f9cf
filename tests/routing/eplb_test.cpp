#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <numeric>
#include <vector>

#include "routing/eplb.hpp"
#include "tests/routing/real_counts.hpp"

using namespace moesim::routing;

TEST_CASE("EPLB reproduces DeepSeek's published example", "[routing][eplb]") {
  // The example in github.com/deepseek-ai/EPLB: 2 layers of 12 experts in 4 groups, 16 slots,
  // 2 nodes, 8 GPUs; the expected physical-to-logical maps are the ones printed there.
  const std::vector<double> layer0{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86};
  const std::vector<double> layer1{20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27};
  CHECK(eplb_placement(layer0, 16, 4, 2, 8).physical_to_logical ==
        std::vector<int>{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1});
  CHECK(eplb_placement(layer1, 16, 4, 2, 8).physical_to_logical ==
        std::vector<int>{7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1});
}

TEST_CASE("Balanced packing fills the lightest pack with room, heaviest items first", "[routing][eplb]") {
  // Descending: 9 (a), 7 (b), 5 (c), 5 (d), 2 (e), 1 (f); 3 packs of 2.
  const Packing p = balanced_packing({5, 9, 1, 7, 5, 2}, 3);
  // 9 -> pack 0, 7 -> pack 1, 5 (item 0) -> pack 2, 5 (item 4) -> pack 2 (5 < 7 < 9),
  // 2 -> pack 1 (7 < 9; pack 2 is full), 1 -> pack 0.
  CHECK(p.pack == std::vector<int>{2, 0, 0, 1, 2, 1});
  CHECK(p.rank == std::vector<int>{0, 0, 1, 0, 1, 1});
  CHECK_THROWS_AS(balanced_packing({1, 2, 3}, 2), PlacementError);
}

TEST_CASE("Replication gives each extra slot to the largest load per replica", "[routing][eplb]") {
  const Replication r = replicate_experts({10, 40, 20, 40}, 7);
  // 40/1 (expert 1, first on the tie with 3) -> expert 1; then 40/1 (expert 3) -> 3; then
  // loads per replica 10, 20, 20, 20: expert 1 again (first of the ties).
  CHECK(r.physical_to_logical == std::vector<int>{0, 1, 2, 3, 1, 3, 1});
  CHECK(r.replica_rank == std::vector<int>{0, 0, 0, 0, 1, 1, 2});
  CHECK(r.replica_count == std::vector<int>{1, 3, 1, 2});
}

TEST_CASE("EPLB placements are consistent and balance load across GPUs", "[routing][eplb]") {
  // Skewed loads (Zipf-like), 64 experts in 8 groups, 4 nodes x 4 GPUs, 16 redundant slots.
  std::vector<double> load(64);
  for (int e = 0; e < 64; ++e) load[static_cast<std::size_t>(e)] = 1000.0 / (1 + (e * 37) % 64);
  for (const bool hierarchical : {true, false}) {
    const ExpertPlacement p = hierarchical ? eplb_hierarchical(load, 80, 8, 4, 16) : eplb_global(load, 80, 16);
    REQUIRE(p.physical_to_logical.size() == 80);
    CHECK(std::accumulate(p.replica_count.begin(), p.replica_count.end(), 0) == 80);
    for (int e = 0; e < 64; ++e) {
      const auto& slots = p.logical_to_physical[static_cast<std::size_t>(e)];
      REQUIRE(static_cast<int>(slots.size()) == p.replica_count[static_cast<std::size_t>(e)]);
      for (std::size_t r = 0; r < slots.size(); ++r) {
        CHECK(p.physical_to_logical[static_cast<std::size_t>(slots[r])] == e);
        CHECK(p.replica_rank[static_cast<std::size_t>(slots[r])] == static_cast<int>(r));
      }
    }
    // GPU load (each replica carries load / replicas) against the contiguous placement's.
    std::vector<double> gpu(16, 0.0), contiguous(16, 0.0);
    for (int s = 0; s < 80; ++s) {
      const int e = p.physical_to_logical[static_cast<std::size_t>(s)];
      gpu[static_cast<std::size_t>(p.gpu_of_slot(s))] +=
          load[static_cast<std::size_t>(e)] / p.replica_count[static_cast<std::size_t>(e)];
    }
    for (int e = 0; e < 64; ++e) contiguous[static_cast<std::size_t>(e / 4)] += load[static_cast<std::size_t>(e)];
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / 16;
    const double eplb_max = *std::max_element(gpu.begin(), gpu.end());
    const double contiguous_max = *std::max_element(contiguous.begin(), contiguous.end());
    INFO("hierarchical " << hierarchical << ": max/mean " << eplb_max / mean << " vs contiguous " << contiguous_max / mean);
    CHECK(eplb_max < contiguous_max);
    // Global placement can spread the hot expert anywhere: nearly flat. Hierarchical keeps each
    // group's replicas on one node, so the node holding the hottest group stays above the mean
    // (1.57 here against 3.84 for contiguous).
    if (!hierarchical) CHECK(eplb_max / mean < 1.1);
  }
  {
    // In the hierarchical placement every replica of an expert stays on its group's node.
    const ExpertPlacement p = eplb_hierarchical(load, 80, 8, 4, 16);
    for (int e = 0; e < 64; ++e) {
      const auto& slots = p.logical_to_physical[static_cast<std::size_t>(e)];
      for (const int s : slots) CHECK(p.gpu_of_slot(s) / 4 == p.gpu_of_slot(slots[0]) / 4);
    }
  }
}

TEST_CASE("EPLB rejects shapes that do not divide", "[routing][eplb]") {
  const std::vector<double> load(12, 1.0);
  CHECK_THROWS_AS(eplb_hierarchical(load, 16, 5, 2, 8), PlacementError);   // 12 experts, 5 groups
  CHECK_THROWS_AS(eplb_hierarchical(load, 16, 4, 3, 8), PlacementError);   // 4 groups, 3 nodes
  CHECK_THROWS_AS(eplb_global(load, 10, 8), PlacementError);               // fewer slots than experts
  CHECK_THROWS_AS(eplb_global(load, 18, 8), PlacementError);               // 18 slots over 8 GPUs
  CHECK_NOTHROW(eplb_placement(load, 16, 4, 3, 8));                        // falls back to global
}

TEST_CASE("EPLB balances the real OLMoE expert counts over 8 GPUs", "[routing][eplb][data]") {
  // ../shared/data/routing/real-expert-counts.csv: measured per-expert token counts of OLMoE
  // (64 experts, top-8) on several datasets and layers. 64 experts on 8 GPUs plus one redundant
  // expert per GPU (72 slots), one node: the global policy.
  const auto sets = moesim::testing::real_counts("olmoe", "expert_counts");
  if (sets.empty()) {
    WARN("real routing counts not found at " << moesim::testing::real_counts_path() << "; this check needs them");
    return;
  }
  REQUIRE(sets.size() >= 10);
  double worst_eplb = 0, best_contiguous = 1e9, worst_contiguous = 0;
  for (const auto& [name, load] : sets) {
    REQUIRE(load.size() == 64);
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / 8;
    std::vector<double> contiguous(8, 0.0), eplb(8, 0.0);
    for (int e = 0; e < 64; ++e) contiguous[static_cast<std::size_t>(e / 8)] += load[static_cast<std::size_t>(e)];
    const ExpertPlacement p = eplb_placement(load, 72, 1, 1, 8);
    for (int s = 0; s < 72; ++s) {
      const int e = p.physical_to_logical[static_cast<std::size_t>(s)];
      eplb[static_cast<std::size_t>(p.gpu_of_slot(s))] +=
          load[static_cast<std::size_t>(e)] / p.replica_count[static_cast<std::size_t>(e)];
    }
    const double c = *std::max_element(contiguous.begin(), contiguous.end()) / mean;
    const double b = *std::max_element(eplb.begin(), eplb.end()) / mean;
    INFO(name << ": contiguous max/mean " << c << ", EPLB " << b);
    CHECK(b <= 1.05);
    CHECK(b < c);
    worst_eplb = std::max(worst_eplb, b);
    best_contiguous = std::min(best_contiguous, c);
    worst_contiguous = std::max(worst_contiguous, c);
  }
  CHECK(worst_contiguous > 1.5);  // the counts are skewed: contiguous placement is far off
  WARN("OLMoE counts, " << sets.size() << " sets: EPLB max/mean <= " << worst_eplb << ", contiguous "
                        << best_contiguous << " to " << worst_contiguous);
}
