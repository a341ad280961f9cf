#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "scenarios/grid.hpp"

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
  CHECK_THAT(error("base: s.yaml\naxes:\n  a: []\n"), Catch::Contains("axes.a: no values"));
}

