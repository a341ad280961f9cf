#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include "routing/count_trace.hpp"

using namespace moesim::routing;
namespace fs = std::filesystem;

namespace {

fs::path write_temp(const std::string& text) {
  static int n = 0;
  const fs::path p = fs::temp_directory_path() / ("moesim-trace-" + std::to_string(::getpid()) + "-" + std::to_string(n++) + ".csv");
  std::ofstream(p) << text;
  return p;
}

std::string error_of(const std::string& text, int experts = 4) {
  const fs::path p = write_temp(text);
  std::string msg = "no error";
  try {
    read_count_trace(p.string(), experts);
  } catch (const TraceError& e) {
    msg = e.what();
  }
  fs::remove(p);
  return msg;
}

}  // namespace

TEST_CASE("Count traces read per layer, missing experts count zero", "[routing][trace]") {
  const fs::path p = write_temp("# counts\nlayer,expert,count\n0,0,10\n0,3,5\n\n2,1,7\n");
  const auto t = read_count_trace(p.string(), 4);
  fs::remove(p);
  REQUIRE(t.size() == 2);
  CHECK(t.at(0) == std::vector<double>{10, 0, 0, 5});
  CHECK(t.at(2) == std::vector<double>{0, 7, 0, 0});
}

TEST_CASE("Bad count traces are rejected with file and line", "[routing][trace]") {
  CHECK_THAT(error_of("layer,expert\n"), Catch::Contains(":1: expected the header 'layer,expert,count'"));
  CHECK_THAT(error_of("layer,expert,count\n0,4,1\n"), Catch::Contains(":2: unknown expert 4 (the model has experts 0 to 3)"));
  CHECK_THAT(error_of("layer,expert,count\n0,1,-1\n"), Catch::Contains(":2: count must not be negative"));
  CHECK_THAT(error_of("layer,expert,count\n0,1,2\n0,1,3\n"), Catch::Contains(":3: layer 0 expert 1 appears twice"));
  CHECK_THAT(error_of("layer,expert,count\n0,1\n"), Catch::Contains(":2: expected 3 fields"));
  CHECK_THAT(error_of("layer,expert,count\n0,x,1\n"), Catch::Contains(":2: expert must be a whole number, got 'x'"));
  CHECK_THAT(error_of(""), Catch::Contains("empty trace"));
  CHECK_THROWS_AS(read_count_trace("/nonexistent/trace.csv", 4), TraceError);
}
