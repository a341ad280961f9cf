#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "models/kernel_profile.hpp"
#include "models/recorder.hpp"
#include "scenarios/experiment.hpp"
#include "scenarios/scenario.hpp"

using namespace moesim;
using models::KernelProfile;
namespace fs = std::filesystem;

namespace {

const std::string kHeader =
    "kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,p90_us\n";

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
  // Bad files name the line.
  const TempFile bad_header("kernel,shape\n", "bad1.csv");
  CHECK_THROWS_WITH(KernelProfile::read(bad_header.path.string()), Catch::Contains("bad1.csv:1: expected the header"));
  const TempFile bad_row(kHeader + "router,t,256,512,4,2,64,-,0,0,ten,0,0\n", "bad2.csv");
  CHECK_THROWS_WITH(KernelProfile::read(bad_row.path.string()), Catch::Contains("bad2.csv:2: bad row"));
  const TempFile short_row(kHeader + "router,t,256\n", "bad3.csv");
  CHECK_THROWS_WITH(KernelProfile::read(short_row.path.string()), Catch::Contains("bad3.csv:2: expected 13 fields, got 3"));
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
  CHECK_THROWS_WITH(scenarios::load_scenario_text(base + "compute: {profile: x.csv}\n", "e.yaml"),
                    Catch::Contains("compute.profile: only used with 'model: profile'"));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(base + "compute: {model: profile}\n", "e.yaml"),
                    Catch::Contains("'model: profile' needs the profile file"));
  CHECK_THROWS_WITH(scenarios::load_scenario_text(base + "compute: {model: profile, profile: /nonexistent.csv}\n", "e.yaml"),
                    Catch::Contains("cannot read the kernel profile"));
}
