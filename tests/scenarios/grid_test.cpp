#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "scenarios/grid.hpp"
#include "scenarios/scenario.hpp"

using namespace moesim::scenarios;
namespace fs = std::filesystem;

namespace {

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("moesim-grid-" + std::to_string(::getpid()))) { fs::create_directories(path_); }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

TEST_CASE("Sweep grids expand to the product of their axes, zipped axes together", "[scenarios][sweep]") {
  TempDir tmp;
  std::ofstream(tmp.path() / "g.yaml") << "base: s.yaml\naxes:\n  a.b: [1, 2]\n  c: {from: 0.5, to: 1.0, step: 0.25}\n"
                                          "  d: [x, y, z]\nzip: [c, d]\n";
  const auto g = load_grid((tmp.path() / "g.yaml").string());
  CHECK(g.base == (tmp.path() / "s.yaml").string());
  const auto p = g.points();
  REQUIRE(p.size() == 6);
  CHECK(p[0] == std::vector<std::string>{"a.b=1", "c=0.5", "d=x"});
  CHECK(p[2] == std::vector<std::string>{"a.b=1", "c=1", "d=z"});
  CHECK(p[3] == std::vector<std::string>{"a.b=2", "c=0.5", "d=x"});
  auto error = [&](const std::string& text) {
    std::ofstream(tmp.path() / "bad.yaml") << text;
    try {
      load_grid((tmp.path() / "bad.yaml").string());
    } catch (const GridError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1]\nfoo: 1\n"), Catch::Contains("unknown key 'foo'"));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: {from: 1, to: 0, step: 1}\n"), Catch::Contains("axes.a: a range needs step > 0"));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1, 2]\n  b: [1]\nzip: [a, b]\n"), Catch::Contains("have different lengths"));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1]\nzip: [q]\n"), Catch::Contains("'q' is not an axis"));
  CHECK_THAT(error("axes:\n  a: [1]\n"), Catch::Contains("missing 'base'"));
  // Several zipped groups advance apart: (a, b) x (c, d) is 2 x 2 points.
  std::ofstream(tmp.path() / "g2.yaml") << "base: s.yaml\naxes:\n  a: [1, 2]\n  c: [p, q]\n  b: [3, 4]\n  d: [r, s]\n"
                                           "zip: [[a, b], [c, d]]\n";
  const auto p2 = load_grid((tmp.path() / "g2.yaml").string()).points();
  REQUIRE(p2.size() == 4);
  CHECK(p2[0] == std::vector<std::string>{"a=1", "b=3", "c=p", "d=r"});
  CHECK(p2[1] == std::vector<std::string>{"a=1", "b=3", "c=q", "d=s"});
  CHECK(p2[3] == std::vector<std::string>{"a=2", "b=4", "c=q", "d=s"});
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1]\n  b: [1]\nzip: [[a, b], [b]]\n"), Catch::Contains("axis 'b' is zipped twice"));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1]\nzip: [[a], b]\n"), Catch::Contains("zip: expected a list of axes in each group"));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: []\n"), Catch::Contains("axes.a: no values"));
  // skip: which points are not run (a list, or one of them alone).
  CHECK_FALSE(g.skip_invalid);
  CHECK_FALSE(g.skip_unfit);
  std::ofstream(tmp.path() / "g3.yaml") << "base: s.yaml\naxes:\n  a: [1]\nskip: [unfit, invalid]\n";
  const auto g3 = load_grid((tmp.path() / "g3.yaml").string());
  CHECK((g3.skip_invalid && g3.skip_unfit));
  std::ofstream(tmp.path() / "g4.yaml") << "base: s.yaml\naxes:\n  a: [1]\nskip: invalid\n";
  const auto g4 = load_grid((tmp.path() / "g4.yaml").string());
  CHECK((g4.skip_invalid && !g4.skip_unfit));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1]\nskip: [invalid, slow]\n"), Catch::Contains("bad.yaml:4:17: skip: unknown 'slow' (known: invalid"));
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: [1]\nskip: {invalid: 1}\n"), Catch::Contains("skip: expected a list of invalid, unfit"));
}


TEST_CASE("Sweep axis values may be lists, mappings or ~, passed on as --set takes them", "[scenarios][sweep]") {
  TempDir tmp;
  std::ofstream(tmp.path() / "g.yaml")
      << "base: s.yaml\naxes:\n  workload.recompute_modules: [~, [layernorm], [layernorm, mla_up_proj]]\n"
         "  compute.gpu_speed: [{3: 0.5}]\n";
  const auto p = load_grid((tmp.path() / "g.yaml").string()).points();
  REQUIRE(p.size() == 3);
  CHECK(p[0] == std::vector<std::string>{"workload.recompute_modules=~", "compute.gpu_speed={3: 0.5}"});
  CHECK(p[1][0] == "workload.recompute_modules=[layernorm]");
  CHECK(p[2][0] == "workload.recompute_modules=[layernorm, mla_up_proj]");
  // Each is a value the loader takes: the list sets the key, ~ leaves it out.
  const std::string training = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 2, hidden: 1024, expert_ffn: 1024, experts: 8, top_k: 2, attention_heads: 8,
        mla: {q_lora_rank: 64, kv_lora_rank: 32, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16}}
parallelism: {ep: 8}
workload: {kind: training, tokens_per_gpu: 256, recompute: selective, recompute_modules: [moe_act]}
)";
  const auto at = [&](const std::string& set) { return load_scenario_text(training, "t.yaml", {set}).forward; };
  CHECK(at(p[2][0]).recompute_mla_up_proj);
  CHECK_FALSE(at(p[1][0]).recompute_moe_act);
  CHECK_THROWS_AS(at(p[0][0]), ScenarioError);  // selective without its modules
  CHECK(at(p[0][1]).gpu_speed.at(3) == 0.5);
}

TEST_CASE("The shipped study grids are valid at every point", "[scenarios][sweep]") {
  TempDir tmp;
  // Study 2 routes by a count trace that scenarios/studies/run.sh derives from the shared data;
  // here a synthetic one of the same shape (6 steps, 3 layers, 64 experts) stands in.
  const auto trace = tmp.path() / "counts.csv";
  {
    std::ofstream t(trace);
    t << "step,layer,expert,count\n";
    for (int s = 0; s < 6; ++s)
      for (int l = 0; l < 3; ++l)
        for (int e = 0; e < 64; ++e) t << s << ',' << l << ',' << e << ',' << 100 + (e * 7 + s) % 13 << '\n';
  }
  const std::string studies = std::string(MOESIM_SOURCE_DIR) + "/scenarios/studies/";
  for (const auto& [grid_file, sets] :
       std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"ep-redundancy/grid.yaml", {}},
           {"capacity-trace/grid.yaml", {"routing.trace=" + trace.string()}},
           {"attention-tp/grid.yaml", {}},
           {"speculative/grid.yaml", {}},
           {"blackwell-decode/grid.yaml", {}},
           {"decode-contexts/grid.yaml", {}}}) {
    INFO(grid_file);
    const Grid g = load_grid(studies + grid_file);
    const auto points = g.points();
    CHECK(points.size() >= 9);
    for (const auto& p : points) {
      std::vector<std::string> all = sets;
      all.insert(all.end(), p.begin(), p.end());
      CHECK_NOTHROW(load_scenario_file(g.base, all));
    }
  }
  // The layout search skips what the rules refuse: exactly the virtual stages without pipeline stages.
  const Grid layouts = load_grid(studies + "layouts/grid.yaml");
  CHECK(layouts.skip_invalid);
  int invalid = 0;
  for (const auto& p : layouts.points()) {
    const bool refused = std::find(p.begin(), p.end(), "parallelism.pp=1") != p.end() &&
                         std::find(p.begin(), p.end(), "parallelism.virtual_stages=2") != p.end();
    try {
      (void)load_scenario_file(layouts.base, p);
      CHECK_FALSE(refused);
    } catch (const ScenarioError& e) {
      ++invalid;
      CHECK(refused);
      CHECK(invalid_point_reason(layouts, e) == "parallelism.virtual_stages: only used with parallelism.pp > 1");
    }
  }
  CHECK(invalid == 32);
}
