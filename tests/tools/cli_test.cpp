#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {

struct Result {
  int code;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("moesim-cli-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

Result moesim(const std::string& args, const TempDir& tmp) {
  const auto out = tmp.path() / "stdout.txt";
  const auto err = tmp.path() / "stderr.txt";
  const std::string cmd = std::string("'") + MOESIM_BINARY + "' " + args + " >'" + out.string() +
                          "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

const std::string kSource = MOESIM_SOURCE_DIR;

}  // namespace

TEST_CASE("moesim run with no scenario runs the quickstart and matches the golden reports", "[cli][golden]") {
  TempDir tmp;
  // Twice: the second run must reproduce the first byte for byte.
  for (const char* dir : {"a", "b"}) {
    const auto r = moesim(std::string("run --out '") + (tmp.path() / dir).string() + "'", tmp);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Catch::Contains("step time"));
    CHECK_THAT(r.out, Catch::Contains("where the time goes"));
  }
  for (const char* file : {"summary.csv", "layers.csv", "links.csv"}) {
    INFO(file << " (regenerate with tools/regen-golden.sh and review the diff)");
    const std::string a = slurp(tmp.path() / "a" / file);
    CHECK(a == slurp(tmp.path() / "b" / file));
    CHECK(a == slurp(fs::path(kSource) / "tests" / "golden" / "quickstart" / file));
  }
}

TEST_CASE("moesim validate accepts good files and rejects bad ones with exit code 2", "[cli]") {
  TempDir tmp;
  const auto ok = moesim("validate '" + kSource + "/scenarios/deepseek-v3-h800.yaml'", tmp);
  CHECK(ok.code == 0);
  CHECK_THAT(ok.out, Catch::Contains("ok (256 x H800-SXM, 256 experts top-8, EP64, 58 MoE layers)"));

  const auto bad_path = tmp.path() / "bad.yaml";
  std::ofstream(bad_path) << "cluster:\n  nodes: 1\n  gpus_per_node: 8\n  gpu: H100\n  nvlink: 1\n";
  const auto bad = moesim("validate '" + bad_path.string() + "'", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("bad.yaml:5:3: cluster.nvlink: unknown key"));
  CHECK_THAT(bad.err, Catch::Contains("model: missing required section"));

  const auto missing = moesim("run '" + (tmp.path() / "nope.yaml").string() + "'", tmp);
  CHECK(missing.code == 2);
  CHECK_THAT(missing.err, Catch::Contains("cannot open the scenario file"));
}

TEST_CASE("Bad command lines exit with code 2 and show the usage", "[cli]") {
  TempDir tmp;
  const auto unknown = moesim("simulate", tmp);
  CHECK(unknown.code == 2);
  CHECK_THAT(unknown.err, Catch::Contains("unknown command 'simulate'"));
  CHECK_THAT(unknown.err, Catch::Contains("usage: moesim"));
  const auto bad_option = moesim("run --frobnicate", tmp);
  CHECK(bad_option.code == 2);
  const auto no_file = moesim("validate", tmp);
  CHECK(no_file.code == 2);
  const auto help = moesim("help", tmp);
  CHECK(help.code == 0);
  CHECK_THAT(help.out, Catch::Contains("validate SCENARIO.yaml"));
}

TEST_CASE("An unwritable output directory is reported and not crashed on", "[cli]") {
  TempDir tmp;
  const auto blocker = tmp.path() / "file";
  std::ofstream(blocker) << "x";
  const auto r = moesim("run --out '" + (blocker / "sub").string() + "'", tmp);
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("cannot create the output directory"));
}

TEST_CASE("The seed option changes the routing of a run", "[cli]") {
  TempDir tmp;
  REQUIRE(moesim("run -q --out '" + (tmp.path() / "s1").string() + "'", tmp).code == 0);
  REQUIRE(moesim("run -q --seed 2 --out '" + (tmp.path() / "s2").string() + "'", tmp).code == 0);
  CHECK(slurp(tmp.path() / "s1" / "layers.csv") != slurp(tmp.path() / "s2" / "layers.csv"));
}
