// A measured kernel profile (kernels/profiles/<gpu>.csv, written by kernels/profile.cu after it
// has checked the layer against its float64 reference):
//
//   # gpu: NVIDIA H100 80GB HBM3          (# lines: device, clocks, CUDA versions, date)
//   kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,p90_us,row_tiles
//   router,mixtral,4096,14336,8,2,1024,-,0,0,21.5,21.1,22.0,0
//   experts,mixtral,4096,14336,4,1,2048,zipf:1.2,1210,4,812.0,809.3,815.1,33
//
// router, permute, combine and layer rows are per token count at the model's expert count and
// top-k; experts rows are the expert stage as one GPU of an EP group runs it: `experts` local
// experts, `tokens` rows (assignments) spread over them by the named distribution. The same
// kernels with _bwd (router_bwd, permute_bwd, experts_bwd, combine_bwd, layer_bwd; moe-profile
// --backward) are the backward pass's stages, which a training step's backward passes use
// where the profile has them.
// max_expert_tokens, active_experts and row_tiles describe the row's routing: the busiest
// expert's rows, the experts with rows, and the 64-row tiles the rows fill (the sum over experts
// of ceil(rows / 64); 0 where the row has no routing). row_tiles is optional (a file of 13
// columns has none, and the expert stage is then interpolated by active experts and imbalance).
//
// time_us() interpolates: along tokens, in log(tokens) and log(time) by a monotone cubic through
// the measured counts (between the two around the request, shaped by their neighbours; a power law
// stays one, a bend between two counts is followed, nothing overshoots the measured points; never
// beyond the measured range: outside it, or for a shape the profile lacks, there is no answer and
// the caller falls back to the roofline); across distributions (experts): where the profile and the
// caller both know the row tiles, linearly in them (each distribution's tiles taken at the
// request's rows, distributions within 2 % of each other in tiles averaged into one point): a
// grouped GEMM's time follows the tiles its experts' rows fill, whether few rows spread over many
// experts (one tile each: the active experts' weights are read) or one expert holds many; where all
// of them fill the same tiles, in proportion to the tiles if each active expert holds one, else
// their time. Otherwise: where the measured distributions differ in how many local experts have
// rows (by 10 % or more) and the caller says how many it has, linearly in that count first (with
// few rows per expert the stage reads every active expert's weights, so its time follows them),
// then within each group of equal count, linearly in the imbalance max/mean rows per local expert
// between the two measured distributions around the request. Beyond the measured counts, the tiles
// or the most skewed distribution, along the last two points, kept between the edge's time and that
// time scaled in proportion; never below zero. An expert stage at a local-expert count the profile
// lacks (EP slots with redundant experts: 5, 9, 33, ...) lies between the measured counts on either
// side, each asked for the same rows spread alike (its active experts from the request's as if rows
// fell at random, one tile per active expert more or less), linearly in active experts (or in the
// count where those agree); beyond the measured counts, no answer.
//
// Accuracy against whole-layer timings the sweep did not have, and of the interpolation on the
// profile's own rows: docs/validation.md (`moesim check-profile`, `--leave-one-out`).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace moesim::models {

class ProfileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct KernelProfile {
  struct Row {
    std::string kernel, shape;
    int hidden = 0, ffn = 0, experts = 0, top_k = 0;
    std::int64_t tokens = 0;
    std::string distribution;
    std::int64_t max_expert_tokens = 0;
    int active_experts = 0;
    double median_us = 0;
    std::int64_t row_tiles = 0;  // 0: unknown (no routing, or a file without the column)
  };
  // The rows of a GEMM tile that row_tiles counts in: an expert with n rows fills ceil(n / 64).
  static constexpr std::int64_t kTileRows = 64;
  std::string source;  // the file
  std::string gpu;     // from its "# gpu:" line
  std::vector<Row> rows;
  std::uint64_t digest = 0;  // FNV-1a of the file's lines: two profiles with the same digest are the same

  // A profile has each measurement once (a second row for the same kernel, dimensions, tokens
  // and distribution is an error); a file of measured layers to check against may repeat one.
  enum class Repeats { refuse, allow };
  // Throws ProfileError naming the file and line.
  static KernelProfile read(const std::string& path, Repeats repeats = Repeats::refuse);
  // The same from a stream, `path` naming it in errors.
  static KernelProfile parse(std::istream& in, const std::string& path, Repeats repeats = Repeats::refuse);
  // The profile measured on this GPU model and built into moesim (kernels/profiles/), or
  // nullptr: "H100-SXM" has kernels/profiles/nvidia-h100-80gb-hbm3.csv.
  static std::shared_ptr<const KernelProfile> bundled(const std::string& gpu_model);
  // The kernel's time for this shape at `tokens` (experts: rows over `experts` local experts,
  // with imbalance = max / mean rows per local expert, `active` of them holding rows and their
  // rows filling `tiles` 64-row tiles, each where known, else <= 0), or nothing where the
  // profile does not cover the request. 0 for 0 tokens.
  std::optional<double> time_us(const std::string& kernel, int hidden, int ffn, int experts, int top_k,
                                std::int64_t tokens, double imbalance = 1.0, double active = -1,
                                double tiles = -1) const;
  // The whole forward MoE layer on one GPU that holds all `experts`, as the simulator composes
  // it (models/moe_forward: router + permute, the experts stage over tokens x top_k rows with
  // this imbalance, combine); nothing where a part is outside the profile.
  // backward: the layer's backward pass, from the same stages' _bwd rows.
  std::optional<double> layer_us(int hidden, int ffn, int experts, int top_k, std::int64_t tokens,
                                 double imbalance, double active = -1, double tiles = -1, bool backward = false) const;
  // Whether the profile has rows of this kernel (for any shape): e.g. "experts_bwd" for a
  // profile with the backward pass (moe-profile --backward).
  bool measures(const std::string& kernel) const;

  // Predicted against measured times: each "layer" row of `measured` (a file in the profile's
  // format, e.g. the held-out timings moe-profile --heldout writes) as the simulator composes a
  // layer, and each "experts" row (moe-profile --heldout-experts: local-expert counts the sweep
  // does not have) as the expert stage alone; likewise "layer_bwd" and "experts_bwd" rows
  // (moe-profile --backward) from the _bwd stages.
  struct Check {
    struct Case {
      KernelProfile::Row measured;
      double imbalance = 1, predicted_us = 0, error = 0;  // error: (predicted - measured) / measured
    };
    std::vector<Case> cases;
    int uncovered = 0;  // rows outside the profile's range
    Check only(const std::string& kernel) const;  // the cases of one kernel ("layer", "experts")
    // A case: `measured` against `predicted_us`; nothing predicted (or no measured time): uncovered.
    void add(const Row& measured, double imbalance, std::optional<double> predicted_us);
    double median_abs_error() const;
    double p90_abs_error() const;  // the 90th percentile (nearest rank)
    double worst_abs_error() const;
  };
  Check check(const KernelProfile& measured) const;
  // The interpolation judged on the profile itself: every row that has measured counts on both
  // sides in its curve (kernel, shape, distribution) predicted from the profile without it,
  // at its own imbalance, active experts and tiles. The gap it bridges is twice the profile's, so
  // this is a pessimistic bound on interpolating between the measured counts; rows at the ends
  // of their curve are not counted.
  Check leave_one_out() const;
  // Interpolation across distributions judged on the profile itself: every experts row whose
  // curve has two or more other distributions predicted from those others alone (its own
  // distribution's whole curve left out), at its own imbalance, active experts and tiles.
  Check leave_one_distribution_out() const;
  // Interpolation across local-expert counts judged on the profile itself: every experts row
  // whose count has measured counts on both sides predicted from those two alone (its own
  // count left out), at its own imbalance, active experts and tiles.
  Check leave_one_expert_count_out() const;

 private:
  // The rows by (kernel, hidden, ffn, experts, top_k), then by distribution, sorted by tokens:
  // built once by read(), so that a lookup does not scan every row.
  struct Point {
    double tokens, us, imbalance, active, tiles;  // tiles 0: unknown
  };
  using Key = std::tuple<std::string, int, int, int, int>;
  std::map<Key, std::map<std::string, std::vector<Point>>> curves_;
  // The expert stage (`kernel`: experts, or experts_bwd) at a local-expert count the profile
  // lacks, between the measured counts on either side; nothing beyond them.
  std::optional<double> between_expert_counts(const std::string& kernel, int hidden, int ffn, int experts, int top_k,
                                              std::int64_t tokens, double imbalance, double active, double tiles) const;
};

}  // namespace moesim::models
