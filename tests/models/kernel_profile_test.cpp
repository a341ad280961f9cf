#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <tuple>

#include "models/kernel_profile.hpp"
#include "models/recorder.hpp"
#include "scenarios/experiment.hpp"
#include "scenarios/scenario.hpp"

using namespace moesim;
using models::KernelProfile;
using models::Stage;
namespace fs = std::filesystem;

namespace {

const std::string kHeader =
    "kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,p90_us\n";
// The same with the optional row_tiles column.
const std::string kTilesHeader = kHeader.substr(0, kHeader.size() - 1) + ",row_tiles\n";

// A synthetic profile for the tests (made up here, not measured: it exercises the reader and
// the interpolation, and says nothing about any GPU).
std::string fixture() {
  std::string s = "# gpu: test fixture (synthetic)\n" + kHeader;
  for (const int t : {32, 64, 128}) {
    s += "router,t,256,512,4,2," + std::to_string(t) + ",-,0,0," + std::to_string(t / 64.0 * 10) + ",0,0\n";
    s += "permute,t,256,512,4,2," + std::to_string(t) + ",uniform,0,0," + std::to_string(t / 64.0 * 4) + ",0,0\n";
    s += "combine,t,256,512,4,2," + std::to_string(t) + ",uniform,0,0," + std::to_string(t / 64.0 * 2) + ",0,0\n";
  }
  // The expert stage with 2 local experts: 0.1 us per row, from 1 to 1024 rows.
  for (int r = 1; r <= 1024; r *= 2) s += "experts,t,256,512,2,1," + std::to_string(r) + ",uniform,0,0," + std::to_string(0.1 * r) + ",0,0\n";
  return s;
}

struct TempFile {
  fs::path path;
  explicit TempFile(const std::string& text, const std::string& name = "profile.csv") {
    path = fs::temp_directory_path() / ("moesim-profile-" + std::to_string(::getpid()) + "-" + name);
    std::ofstream(path) << text;
  }
  ~TempFile() { fs::remove(path); }
};

}  // namespace

TEST_CASE("Kernel profiles are read strictly and interpolated in tokens and imbalance", "[models][profile]") {
  const TempFile f(fixture());
  const KernelProfile p = KernelProfile::read(f.path.string());
  CHECK(p.gpu == "test fixture (synthetic)");
  CHECK(p.rows.size() == 9 + 11);
  // Log-log between measured counts: 10 us at 64 and 20 us at 128 give 14.142 us at 90.5.
  CHECK(*p.time_us("router", 256, 512, 4, 2, 64) == Approx(10));
  CHECK(*p.time_us("router", 256, 512, 4, 2, 96) == Approx(15));
  CHECK(p.time_us("router", 256, 512, 4, 2, 0) == 0.0);
  CHECK_FALSE(p.time_us("router", 256, 512, 4, 2, 129));  // beyond the measured range
  CHECK_FALSE(p.time_us("router", 256, 512, 8, 2, 64));   // a shape the profile lacks
  CHECK(*p.time_us("experts", 256, 512, 2, 1, 300) == Approx(30));
  // Across distributions by imbalance: 100 us balanced (1.0), 160 us at max/mean 2.0.
  const TempFile two(kHeader + "experts,s,8,8,4,1,400,uniform,100,4,100,0,0\nexperts,s,8,8,4,1,400,hot:0.5,200,4,160,0,0\n", "two.csv");
  const KernelProfile q = KernelProfile::read(two.path.string());
  CHECK(*q.time_us("experts", 8, 8, 4, 1, 400, 1.5) == Approx(130));
  CHECK(*q.time_us("experts", 8, 8, 4, 1, 400, 3.0) == Approx(220));  // extrapolated past the most skewed
  CHECK(*q.time_us("experts", 8, 8, 4, 1, 400, 0.5) == Approx(100));
  // A curve that bends between two counts (flat at 10 us to 128 tokens, then doubling with the
  // tokens): in log-log the slope is 0 at 128 (the segments either side disagree: 0 and 1) and
  // 1 at 256, so at 181 tokens the cubic gives 12.967 us, below the straight line's 14.14 us
  // and inside [10, 20] (a monotone curve never overshoots its points).
  std::string bend = kHeader;
  for (const auto& [t, u] : {std::pair{64, 10}, {128, 10}, {256, 20}, {512, 40}})
    bend += "router,b,8,8,4,2," + std::to_string(t) + ",-,0,0," + std::to_string(u) + ",0,0\n";
  const TempFile bent(bend, "bend.csv");
  const KernelProfile b = KernelProfile::read(bent.path.string());
  CHECK(*b.time_us("router", 8, 8, 4, 2, 181) == Approx(12.9667).epsilon(1e-4));
  CHECK(*b.time_us("router", 8, 8, 4, 2, 100) == Approx(10));  // flat on both sides of 64 ... 128
  CHECK(*b.time_us("router", 8, 8, 4, 2, 362) == Approx(40 * 362 / 512.0).epsilon(1e-3));  // a power law stays one
  // Bad files name the line.
  const TempFile bad_header("kernel,shape\n", "bad1.csv");
  CHECK_THROWS_WITH(KernelProfile::read(bad_header.path.string()), Catch::Contains("bad1.csv:1: expected the header"));
  const TempFile bad_row(kHeader + "router,t,256,512,4,2,64,-,0,0,ten,0,0\n", "bad2.csv");
  CHECK_THROWS_WITH(KernelProfile::read(bad_row.path.string()), Catch::Contains("bad2.csv:2: bad row"));
  const TempFile short_row(kHeader + "router,t,256\n", "bad3.csv");
  CHECK_THROWS_WITH(KernelProfile::read(short_row.path.string()), Catch::Contains("bad3.csv:2: expected 13 fields, got 3"));
  // Two runs concatenated over each other: the same measurement twice is refused, by line.
  const TempFile twice(kHeader + "router,t,256,512,4,2,64,-,0,0,10,0,0\nrouter,t,256,512,4,2,128,-,0,0,20,0,0\n"
                                 "router,t,256,512,4,2,64,-,0,0,11,0,0\n",
                       "bad4.csv");
  CHECK_THROWS_WITH(KernelProfile::read(twice.path.string()),
                    Catch::Contains("bad4.csv:4: router (4 experts, 64 tokens, distribution '-') is already measured on line 2"));
}

TEST_CASE("compute.model: profile takes the forward MoE stages from the profile, the rest from the roofline", "[models][profile]") {
  const TempFile f(fixture());
  const std::string base = R"(
cluster: {nodes: 1, gpus_per_node: 2, gpu: H100}
model: {moe_layers: 1, hidden: 256, expert_ffn: 512, experts: 4, top_k: 2, attention_heads: 4}
parallelism: {ep: 2}
workload: {tokens_per_gpu: 64}
)";
  const auto r = scenarios::run_experiment(scenarios::load_scenario_text(
      base + "compute: {model: profile, profile: " + f.path.string() + "}\n", "p.yaml"));
  CHECK(r.compute_source == "profile");
  for (const auto& g : r.stats.gpus()) {
    using models::Stage;
    CHECK(g.stage_total[static_cast<std::size_t>(Stage::router)] == sim::Time::ps(14'000'000));  // router 10 + permute 4 us
    CHECK(g.stage_total[static_cast<std::size_t>(Stage::reduce)] == sim::Time::ps(2'000'000));   // combine 2 us
    // Experts: 0.1 us per row this GPU computed (one layer, dropless).
    const double want_ps = 0.1e6 * static_cast<double>(g.computed);
    CHECK(static_cast<double>(g.stage_total[static_cast<std::size_t>(Stage::experts)].count_ps()) == Approx(want_ps).margin(2));
  }
  const auto roof = scenarios::run_experiment(scenarios::load_scenario_text(base, "r.yaml"));
  CHECK(roof.compute_source == "roofline");
  // 256 tokens per GPU: router and combine lie beyond the profile, the expert rows (about 512
  // per GPU) inside: a mix. 4096 tokens: everything falls back.
  const auto with_tokens = [&](const std::string& tokens) {
    std::string s = base;
    s.replace(s.find("tokens_per_gpu: 64"), 18, "tokens_per_gpu: " + tokens);
    return scenarios::run_experiment(scenarios::load_scenario_text(
        s + "compute: {model: profile, profile: " + f.path.string() + "}\n", "b.yaml"));
  };
  CHECK(with_tokens("256").compute_source == "profile+roofline");
  CHECK(with_tokens("4096").compute_source == "roofline");
  // Errors: a profile without the model, the model without a profile, a bad file.
  CHECK_THROWS_WITH(scenarios::load_scenario_text(base + "compute: {model: roofline, profile: x.csv}\n", "e.yaml"),
                    Catch::Contains("compute.profile: not used with 'model: roofline'"));
  std::string a100 = base;
  a100.replace(a100.find("gpu: H100"), 9, "gpu: A100");
  CHECK_THROWS_WITH(scenarios::load_scenario_text(a100 + "compute: {model: profile}\n", "e.yaml"),
                    Catch::Contains("no measured kernel profile is built in for GPU 'A100-SXM'"));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(base + "compute: {model: profile, profile: /nonexistent.csv}\n", "e.yaml"),
                    Catch::Contains("cannot read the kernel profile"));
}

TEST_CASE("With few rows per expert the expert stage follows the active experts", "[models][profile]") {
  // Two distributions at 8 rows over 8 local experts: 3 active at 300 us, 6 active at 600 us,
  // and a third with 6 active and more skew at 700 us.
  const TempFile f(kHeader + "experts,s,8,8,8,1,8,a,4,3,300,0,0\nexperts,s,8,8,8,1,8,b,2,6,600,0,0\n"
                             "experts,s,8,8,8,1,8,c,3,6,700,0,0\n",
                   "active.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  // Between the groups of 3 and 6 active, linearly; within the group of 6, by imbalance (2 and 3).
  CHECK(*p.time_us("experts", 8, 8, 8, 1, 8, 2.0, 4) == Approx(400));
  CHECK(*p.time_us("experts", 8, 8, 8, 1, 8, 2.0, 6) == Approx(600));
  CHECK(*p.time_us("experts", 8, 8, 8, 1, 8, 3.0, 6) == Approx(700));
  CHECK(*p.time_us("experts", 8, 8, 8, 1, 8, 2.0, 2) == Approx(200));  // extrapolated below
  // Without the active count, by imbalance alone (as before): 4.0 is the most skewed point.
  CHECK(*p.time_us("experts", 8, 8, 8, 1, 8, 4.0) == Approx(300));
}

TEST_CASE("Active experts that differ by a few percent do not decide the expert stage", "[models][profile]") {
  // 400 rows over 20 local experts: uniform with all 20 active at 100 us (imbalance 25/20), a
  // skewed one with 19 active at 150 us (imbalance 100/20). One expert fewer cannot make the
  // stage half as slow again (its weights are 5 % of the read); the skew does. So a request with
  // 19 active is placed by its imbalance, not taken from the 19-active curve or extrapolated.
  const TempFile f(kHeader + "experts,s,8,8,20,1,400,uniform,25,20,100,0,0\nexperts,s,8,8,20,1,400,zipf,100,19,150,0,0\n",
                   "near.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  CHECK(*p.time_us("experts", 8, 8, 20, 1, 400, 2.0, 19) == Approx(110));
  CHECK(*p.time_us("experts", 8, 8, 20, 1, 400, 2.0, 18) == Approx(110));
  // Active counts 10 % or more apart: the active experts decide, as with few rows per expert.
  const TempFile g(kHeader + "experts,s,8,8,20,1,400,uniform,25,20,100,0,0\nexperts,s,8,8,20,1,400,zipf,100,18,150,0,0\n",
                   "far.csv");
  const KernelProfile q = KernelProfile::read(g.path.string());
  CHECK(*q.time_us("experts", 8, 8, 20, 1, 400, 2.0, 19) == Approx(125));
}

TEST_CASE("Extrapolation past the most skewed distribution stays bounded", "[models][profile]") {
  // Two distributions close in imbalance and apart in time: the line through them rises 500 us
  // per unit of imbalance. At imbalance 3 it would say 1100 us; the bound is the skewed one's
  // 150 us scaled in proportion, 150 x 3 / 1.1.
  const TempFile f(kHeader + "experts,s,8,8,4,1,400,uniform,100,4,100,0,0\nexperts,s,8,8,4,1,400,zipf,110,4,150,0,0\n",
                   "steep.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 400, 3.0) == Approx(150 * 3 / 1.1));
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 400, 1.05) == Approx(125));  // between them, the line
}

TEST_CASE("With row tiles known on both sides the expert stage follows them", "[models][profile]") {
  // 256 rows over 4 local experts: uniform (64 each, 4 tiles) at 100 us, a skewed one (160, 32,
  // 32, 32: 3 + 1 + 1 + 1 = 6 tiles) at 140 us, and one hot expert (253, 1, 1, 1: 4 + 3 = 7
  // tiles) at 150 us. Hot is the most skewed by imbalance, but a request at 5 tiles lies
  // between uniform and the skewed one: 120 us, whatever its imbalance.
  const TempFile f(kTilesHeader + "experts,s,8,8,4,1,256,uniform,64,4,100,0,0,4\nexperts,s,8,8,4,1,256,zipf,160,4,140,0,0,6\n"
                            "experts,s,8,8,4,1,256,hot,253,4,150,0,0,7\nrouter,s,8,8,4,2,128,-,0,0,9,0,0,0\n",
                   "tiles.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  REQUIRE(p.rows.size() == 4);
  CHECK(p.rows[1].row_tiles == 6);
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 256, 3.9, 4, 5) == Approx(120));
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 256, 1.0, 4, 6.5) == Approx(145));
  // Beyond the most tiles, along the last two points but within the edge's time scaled in
  // proportion to the tiles: 8 tiles, the line says 160 us (below 150 x 8 / 7).
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 256, 3.9, 4, 8) == Approx(160));
  // Below the fewest: 2 tiles, the line says 60 us; the bound is 100 x 2 / 4 = 50 .. 100 us.
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 256, 1.0, 2, 2) == Approx(60));
  // Without tiles in the request, by imbalance as before: 2.5 is the skewed one's own.
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 256, 2.5, 4) == Approx(140));
  // Distributions within 2 % in tiles are one point, their mean: 200 and 203 tiles (200 and
  // 210 us: 201.5 tiles, 205 us) and 300 tiles (300 us); a request at 250 tiles gets about
  // 251.8 us on the line from that mean, not a line through the two close ones.
  const TempFile close(kTilesHeader + "experts,s,8,8,4,1,16384,a,4096,4,200,0,0,200\nexperts,s,8,8,4,1,16384,b,5000,4,210,0,0,203\n"
                                "experts,s,8,8,4,1,16384,c,9000,4,300,0,0,300\n",
                       "close.csv");
  const KernelProfile q = KernelProfile::read(close.path.string());
  CHECK(*q.time_us("experts", 8, 8, 4, 1, 16384, 1.0, 4, 250) == Approx(205 + (300 - 205) * (250 - 201.5) / (300 - 201.5)));
  // All measured distributions at one tile count: no slope. With few rows (each active expert
  // one tile: its weights read once) the time goes in proportion to the tiles; with more rows
  // per expert it stays the measured time.
  const TempFile one(kTilesHeader + "experts,s,8,8,8,1,4,a,1,4,80,0,0,4\nexperts,s,8,8,8,1,4,b,1,4,84,0,0,4\n"
                              "experts,s,8,8,8,1,512,a,128,4,300,0,0,8\nexperts,s,8,8,8,1,512,b,128,4,300,0,0,8\n",
                     "one.csv");
  const KernelProfile o = KernelProfile::read(one.path.string());
  CHECK(*o.time_us("experts", 8, 8, 8, 1, 4, 4.0, 2, 2) == Approx(41));   // half the tiles: 82 / 2
  CHECK(*o.time_us("experts", 8, 8, 8, 1, 512, 2.0, 4, 6) == Approx(300));  // two tiles per expert
  // A row with a negative tile count, or 13 fields under the 14-column header, is refused.
  const TempFile negative(kTilesHeader + "experts,s,8,8,4,1,256,uniform,64,4,100,0,0,-1\n", "neg.csv");
  CHECK_THROWS_WITH(KernelProfile::read(negative.path.string()), Catch::Contains("neg.csv:2: bad row"));
  const TempFile short_row(kTilesHeader + "experts,s,8,8,4,1,256,uniform,64,4,100,0,0\n", "short.csv");
  CHECK_THROWS_WITH(KernelProfile::read(short_row.path.string()), Catch::Contains("short.csv:2: expected 14 fields, got 13"));
}

TEST_CASE("Leave-one-distribution-out judges the expert stage across routings", "[models][profile]") {
  // Three distributions on a line in tiles (4 tiles 100 us, 6 tiles 140 us, 8 tiles 180 us):
  // the middle one is predicted exactly from the other two; the ends from the two others,
  // extrapolated along the same line, also exactly. A fourth with a time off the line is missed
  // by its distance from it. Router rows and groups with fewer than three distributions do not
  // count.
  const TempFile f(kTilesHeader + "experts,s,8,8,4,1,256,a,64,4,100,0,0,4\nexperts,s,8,8,4,1,256,b,100,4,140,0,0,6\n"
                            "experts,s,8,8,4,1,256,c,150,4,180,0,0,8\nrouter,s,8,8,4,2,128,-,0,0,9,0,0,0\n"
                            "experts,s,8,8,2,1,256,a,128,2,50,0,0,4\nexperts,s,8,8,2,1,256,b,200,2,60,0,0,5\n",
                   "lodo.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  const auto c = p.leave_one_distribution_out();
  REQUIRE(c.cases.size() == 3);
  for (const auto& x : c.cases) CHECK(x.error == Approx(0).margin(1e-12));
  const TempFile g(kTilesHeader + "experts,s,8,8,4,1,256,a,64,4,100,0,0,4\nexperts,s,8,8,4,1,256,b,100,4,140,0,0,6\n"
                            "experts,s,8,8,4,1,256,c,150,4,180,0,0,8\nexperts,s,8,8,4,1,256,d,120,4,175,0,0,7\n",
                   "lodo2.csv");
  const auto d = KernelProfile::read(g.path.string()).leave_one_distribution_out();
  REQUIRE(d.cases.size() == 4);
  for (const auto& x : d.cases)
    if (x.measured.distribution == "d") CHECK(x.predicted_us == Approx(160));  // on the line through b and c
}

TEST_CASE("A local-expert count the profile lacks lies between the measured counts either side", "[models][profile]") {
  // The expert stage measured on 2 and on 8 local experts (one distribution each): 4096 rows,
  // all experts active, 64 tiles, 200 and 400 us; 2 rows on 2 experts, 100 and 110 us.
  const TempFile f(kTilesHeader + "experts,s,8,8,2,1,4096,uniform,2048,2,200,0,0,64\nexperts,s,8,8,8,1,4096,uniform,512,8,400,0,0,64\n"
                            "experts,s,8,8,2,1,2,uniform,1,2,100,0,0,2\nexperts,s,8,8,8,1,2,uniform,1,2,110,0,0,2\n",
                   "counts.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  // 4 local experts, all active: linearly in the active experts (2 and 8 on either side).
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 4096, 1.0, 4, 64) == Approx(200 + 200 * 2 / 6.0));
  // Without the active count, linearly in the expert count: the same here.
  CHECK(*p.time_us("experts", 8, 8, 4, 1, 4096) == Approx(200 + 200 * 2 / 6.0));
  // 5 slots (say 4 experts and a redundant copy), all active: half way from 2 to 8 active.
  CHECK(*p.time_us("experts", 8, 8, 5, 1, 4096, 1.0, 5, 64) == Approx(200 + 200 * 3 / 6.0));
  // 2 rows on 2 of 4 experts: two active stay about two either side (2 rows cannot fill more),
  // so the time lies between the two measured ones.
  const double few = *p.time_us("experts", 8, 8, 4, 1, 2, 2.0, 2, 2);
  CHECK(few >= 100);
  CHECK(few <= 110);
  // Beyond the measured counts (or with none on one side) there is no answer: the roofline.
  CHECK_FALSE(p.time_us("experts", 8, 8, 16, 1, 4096, 1.0, 16, 64));
  CHECK_FALSE(p.time_us("experts", 8, 8, 1, 1, 4096, 1.0, 1, 64));
  // Only the expert stage: a router at an unmeasured expert count has no answer.
  CHECK_FALSE(p.time_us("router", 8, 8, 4, 2, 4096));
  // Judged on itself: each count with measured counts on both sides predicted from those two;
  // here neither has both, so nothing is counted.
  CHECK(p.leave_one_expert_count_out().cases.empty());
  // Measured expert stages at such a count (moe-profile --heldout-experts) are checked as the
  // stage alone, beside whole layers.
  const TempFile measured(kTilesHeader + "experts,s,8,8,4,1,4096,uniform,1024,4,250,0,0,64\n", "measured.csv");
  const auto c = p.check(KernelProfile::read(measured.path.string()));
  REQUIRE(c.only("experts").cases.size() == 1);
  CHECK(c.only("layer").cases.empty());
  CHECK(c.cases.front().predicted_us == Approx(200 + 200 * 2 / 6.0));
  CHECK(c.cases.front().error == Approx((200 + 200 * 2 / 6.0 - 250) / 250));
}

TEST_CASE("Leave-one-out judges the profile's interpolation on its own rows", "[models][profile]") {
  // A power law (time proportional to tokens) with one row off it (512 tokens at twice the
  // law). Each inner row is predicted from the profile without it: 32 from rows that all lie
  // on the law, exactly; the outlier from 256 and 1024, whose slopes both still say the law, so
  // at the law's 512 us (-50 %); the rows beside it bend towards it. The ends are not counted.
  std::string text = kHeader;
  for (const int t : {16, 32, 64, 128, 256, 512, 1024})
    text += "router,s,8,8,4,2," + std::to_string(t) + ",-,0,0," + std::to_string(t == 512 ? 2.0 * t : 1.0 * t) + ",0,0\n";
  const TempFile f(text, "loo.csv");
  const KernelProfile p = KernelProfile::read(f.path.string());
  const auto c = p.leave_one_out();
  REQUIRE(c.cases.size() == 5);  // 32 ... 512
  for (const auto& x : c.cases) {
    if (x.measured.tokens == 32) CHECK(x.error == Approx(0).margin(1e-12));
    if (x.measured.tokens == 512) CHECK(x.predicted_us == Approx(512));
    if (x.measured.tokens == 256) CHECK(x.error > 0.05);  // pulled up by the outlier
  }
  CHECK(c.worst_abs_error() >= 0.5);
}

TEST_CASE("H100 scenarios use the measured profile built in, others the roofline", "[models][profile]") {
  const auto h100 = KernelProfile::bundled("H100-SXM");
  REQUIRE(h100);
  CHECK(h100->gpu == "NVIDIA H100 80GB HBM3");
  CHECK_FALSE(KernelProfile::bundled("A100-SXM"));
  // The three measured shapes, every stage, from 1 token up.
  for (const auto& [h, f, e, k] : {std::tuple{1024, 2048, 16, 2}, {4096, 14336, 8, 2}, {7168, 2048, 256, 8}}) {
    for (const char* kernel : {"router", "permute", "combine", "layer"}) CHECK(h100->time_us(kernel, h, f, e, k, 1));
    CHECK(h100->time_us("experts", h, f, e, 1, 1));
    CHECK(h100->time_us("experts", h, f, 1, 1, 1024));
  }
  const std::string mixtral = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 2, hidden: 4096, expert_ffn: 14336, experts: 8, top_k: 2, attention_heads: 32}
parallelism: {ep: 8}
workload: {tokens_per_gpu: 1024}
)";
  CHECK(scenarios::run_experiment(scenarios::load_scenario_text(mixtral, "m.yaml")).compute_source == "profile");
  // EPLB with redundant experts: 33 expert slots per GPU, a count the sweep does not measure, is
  // taken between the measured 32 and 256 (not from the roofline).
  const std::string deepseek = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 1, hidden: 7168, expert_ffn: 2048, experts: 256, top_k: 8, attention_heads: 128}
parallelism: {ep: 8}
workload: {tokens_per_gpu: 1024}
placement: {policy: eplb, redundant_experts: 8}
)";
  CHECK(scenarios::run_experiment(scenarios::load_scenario_text(deepseek, "d.yaml")).compute_source == "profile");
  CHECK(scenarios::run_experiment(scenarios::load_scenario_text(mixtral + "compute: {model: roofline}\n", "m.yaml")).compute_source ==
        "roofline");
  // The routing trace the H100 router wrote on clustered tokens replays (4 layers of 4096 tokens),
  // and is skewed the way clustered inputs make it.
  const auto traced = scenarios::run_experiment(scenarios::load_scenario_text(
      R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 4, hidden: 4096, expert_ffn: 14336, experts: 8, top_k: 2, attention_heads: 32}
parallelism: {ep: 8}
workload: {tokens_per_gpu: 512}
routing: {distribution: trace, trace: )" + std::string(MOESIM_SOURCE_DIR) + "/kernels/traces/mixtral-clustered-h100.csv}\n",
      "t.yaml"));
  CHECK(traced.compute_source == "profile");
  REQUIRE(traced.stats.layers().size() == 4);
  double most = 0;  // the busiest GPU's share over the mean, of any layer: uniform routing stays near 1
  for (const auto& l : traced.stats.layers()) most = std::max(most, l.max_gpu_tokens / (static_cast<double>(l.computed) / 8));
  CHECK(most > 1.5);
  std::string h800 = mixtral;
  h800.replace(h800.find("gpu: H100"), 9, "gpu: H800");
  CHECK(scenarios::run_experiment(scenarios::load_scenario_text(h800, "m.yaml")).compute_source == "roofline");
}

TEST_CASE("Each compute stage's time is recorded with its source: the profile or the roofline", "[models][profile]") {
  const std::string mixtral = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 2, hidden: 4096, expert_ffn: 14336, experts: 8, top_k: 2, attention_heads: 32}
parallelism: {ep: 8}
workload: {tokens_per_gpu: 1024)";
  const auto sum = [](const auto& a) { return std::accumulate(a.begin(), a.end(), sim::Time::zero()); };
  for (const bool training : {false, true}) {
    INFO((training ? "training" : "forward"));
    const auto r = scenarios::run_experiment(
        scenarios::load_scenario_text(mixtral + (training ? ", kind: training}\n" : "}\n"), "m.yaml"));
    REQUIRE(r.compute_source == "profile");
    for (const auto& g : r.stats.gpus()) {
      const auto& total = g.stage_total;
      const auto& prof = g.stage_profiled;
      // Attention has no profile rows: always the roofline. Network waits are neither.
      CHECK(prof[static_cast<std::size_t>(Stage::attention)] == sim::Time::zero());
      CHECK(prof[static_cast<std::size_t>(Stage::dispatch)] == sim::Time::zero());
      for (const Stage s : {Stage::router, Stage::experts, Stage::reduce}) {
        const auto i = static_cast<std::size_t>(s);
        REQUIRE(total[i] > sim::Time::zero());
        if (!training) {
          CHECK(prof[i] == total[i]);  // every forward MoE stage from the profile
        } else {
          // The profile measures the forward pass: the backward's stages are the roofline's.
          CHECK(prof[i] > sim::Time::zero());
          CHECK(prof[i] < total[i]);
        }
      }
      CHECK(sum(prof) <= sum(total) - g.backward_total);
      if (!training) CHECK(sum(prof) == total[static_cast<std::size_t>(Stage::router)] + total[static_cast<std::size_t>(Stage::experts)] +
                                         total[static_cast<std::size_t>(Stage::reduce)]);
    }
  }
}

TEST_CASE("A profile with the backward pass's stages times the backward passes", "[models][profile]") {
  // The H100 profile plus, for the Mixtral shape, backward rows made from its forward rows:
  // each stage's _bwd row at three times the forward's time (a mechanism test, not a
  // measurement), with or without permute_bwd.
  std::ifstream in(std::string(MOESIM_SOURCE_DIR) + "/kernels/profiles/nvidia-h100-80gb-hbm3.csv");
  std::string text, extra, line;
  while (std::getline(in, line)) {
    text += line + "\n";
    const auto comma = line.find(',');
    if (line.empty() || line[0] == '#' || comma == std::string::npos) continue;
    const std::string kernel = line.substr(0, comma);
    if ((kernel != "router" && kernel != "permute" && kernel != "experts" && kernel != "combine") ||
        line.find(",4096,14336,") == std::string::npos)
      continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    f[0] += "_bwd";
    for (const int i : {10, 11, 12}) f[static_cast<std::size_t>(i)] = std::to_string(3 * std::stod(f[static_cast<std::size_t>(i)]));
    std::string row;
    for (const auto& x : f) row += (row.empty() ? "" : ",") + x;
    extra += row + "\n";
  }
  std::string no_permute;
  std::stringstream rows(extra);
  for (std::string r; std::getline(rows, r);)
    if (r.rfind("permute_bwd,", 0) != 0) no_permute += r + "\n";
  const TempFile full(text + extra, "bwd.csv"), partial(text + no_permute, "bwd-partial.csv");
  const auto run = [](const std::string& profile) {
    return scenarios::run_experiment(scenarios::load_scenario_text(R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 2, hidden: 4096, expert_ffn: 14336, experts: 8, top_k: 2, attention_heads: 32}
parallelism: {ep: 8}
workload: {tokens_per_gpu: 1024, kind: training}
compute: {profile: )" + profile + "}\n", "m.yaml"));
  };
  const auto r = run(full.path.string());
  CHECK(r.compute_source == "profile");
  for (const auto& g : r.stats.gpus())
    for (const Stage s : {Stage::router, Stage::experts, Stage::reduce}) {
      const auto i = static_cast<std::size_t>(s);
      CHECK(g.stage_profiled[i] == g.stage_total[i]);  // forward and backward from the profile
    }
  // The backward expert stage at three times the forward's, layer by layer (no jitter here).
  const auto& fwd = r.stats.layers();
  const auto& bwd = r.stats.backward_layers();
  REQUIRE(fwd.size() == 2);
  REQUIRE(bwd.size() == 2);
  for (std::size_t l = 0; l < 2; ++l) {
    const auto e = static_cast<std::size_t>(Stage::experts);
    CHECK(static_cast<double>(bwd[l].stage_max[e].count_ps()) == Approx(3.0 * static_cast<double>(fwd[l].stage_max[e].count_ps())).epsilon(1e-6));
  }
  // Without permute_bwd the router stage's backward cannot be composed: it falls back, counted.
  CHECK(run(partial.path.string()).compute_source == "profile+roofline");
  // check-profile composes a measured layer_bwd row from the _bwd stages.
  const auto p = KernelProfile::read(full.path.string());
  const auto fwd_us = p.layer_us(4096, 14336, 8, 2, 1024, 1.2), bwd_us = p.layer_us(4096, 14336, 8, 2, 1024, 1.2, -1, -1, true);
  REQUIRE(fwd_us);
  REQUIRE(bwd_us);
  CHECK(*bwd_us == Approx(3 * *fwd_us));
  const TempFile measured(kHeader + "layer_bwd,m,4096,14336,8,2,1024,router,307,8," + std::to_string(*bwd_us) + ",0,0\n", "bwd-measured.csv");
  const auto c = p.check(KernelProfile::read(measured.path.string(), KernelProfile::Repeats::allow)).only("layer_bwd");
  REQUIRE(c.cases.size() == 1);
  CHECK(std::abs(c.cases[0].error) < 1e-3);
  // ZB-H1 splits each measured backward GEMM stage in half between its input- and weight-gradient
  // passes, and leaves permute's and combine's backward whole to the first: per GPU the router's,
  // experts' and reduce's time are 1F1B's (2 stages of one layer, 2 micro-batches).
  const auto pipelined = [&](const char* schedule) {
    return scenarios::run_experiment(scenarios::load_scenario_text(R"(
cluster: {nodes: 2, gpus_per_node: 8, gpu: H100, scale_out: {nic_bandwidth: 400Gbps}}
model: {moe_layers: 2, hidden: 4096, expert_ffn: 14336, experts: 8, top_k: 2, attention_heads: 32}
parallelism: {ep: 8, pp: 2}
workload: {tokens_per_gpu: 1024, kind: training, micro_batches: 2, pipeline_schedule: )" + std::string(schedule) +
                                                                       "}\ncompute: {profile: " + full.path.string() + "}\n",
                                                                   "m.yaml"));
  };
  const auto zb = pipelined("zb_h1"), one = pipelined("1f1b");
  CHECK(zb.compute_source == "profile");
  for (std::size_t g = 0; g < 16; ++g)
    for (const Stage s : {Stage::router, Stage::experts, Stage::reduce}) {
      const auto i = static_cast<std::size_t>(s);
      CHECK(zb.stats.gpus()[g].stage_profiled[i] == zb.stats.gpus()[g].stage_total[i]);
      CHECK(static_cast<double>(zb.stats.gpus()[g].stage_total[i].count_ps()) ==
            Approx(static_cast<double>(one.stats.gpus()[g].stage_total[i].count_ps())).epsilon(1e-9));
    }
}

TEST_CASE("The H100 profile predicts held-out whole-layer timings", "[models][profile]") {
  // Whole-layer times measured on the same H100 in the same session as the profile, on token
  // counts and routings the profile's sweep does not have (kernels/profile.cu --heldout).
  const auto measured = KernelProfile::read(std::string(MOESIM_SOURCE_DIR) + "/kernels/profiles/h100-measure/heldout.csv");
  const auto all = KernelProfile::bundled("H100-SXM")->check(measured);
  CHECK(all.uncovered == 0);
  const auto check = all.only("layer");
  CHECK(check.cases.size() == 96);
  CHECK(check.median_abs_error() <= 0.05);  // docs/validation.md: the bound the project set
  // The worst case is not within 10 % (docs/validation.md says why); it must not get worse unseen.
  CHECK(check.worst_abs_error() <= 0.25);
}
