#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include "routing/traces.hpp"

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
  CHECK(trace_kind(p.string()) == TraceKind::counts);
  fs::remove(p);
  CHECK_FALSE(t.stepped);
  REQUIRE(t.steps.size() == 1);
  const auto& layers = t.steps.at(0);
  REQUIRE(layers.size() == 2);
  CHECK(layers.at(0) == std::vector<double>{10, 0, 0, 5});
  CHECK(layers.at(2) == std::vector<double>{0, 7, 0, 0});
  CHECK_THROWS_WITH(mean_counts(t, "t.csv", 0, 0, 2), Catch::Contains("no counts for MoE layer 1"));
}

TEST_CASE("Stepped count traces average over a window of steps", "[routing][trace]") {
  const fs::path p = write_temp("step,layer,expert,count\n0,0,0,10\n0,0,1,2\n1,0,0,4\n1,0,1,6\n2,0,1,1\n");
  const auto t = read_count_trace(p.string(), 2);
  fs::remove(p);
  CHECK(t.stepped);
  CHECK(mean_counts(t, "t.csv", 0, 1, 1) == std::vector<std::vector<double>>{{7, 4}});
  CHECK(mean_counts(t, "t.csv", 2, 2, 1) == std::vector<std::vector<double>>{{0, 1}});
  CHECK_THROWS_WITH(mean_counts(t, "t.csv", 2, 3, 1), Catch::Contains("no counts for step 3"));
  CHECK_THAT(error_of("step,layer,expert,count\n0,0,1,2\n0,0,1,3\n"), Catch::Contains(":3: step 0 layer 0 expert 1 appears twice"));
  CHECK_THAT(error_of("step,layer,expert,count\n0,1,2\n"), Catch::Contains(":2: expected 4 fields"));
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

namespace {

std::string token_error(const std::string& text, int layers = 1, int ranks = 2, std::int64_t per_rank = 1) {
  const fs::path p = write_temp(text);
  std::string msg = "no error";
  try {
    read_token_trace(p.string(), 4, 2, layers, ranks, per_rank);
  } catch (const TraceError& e) {
    msg = e.what();
  }
  fs::remove(p);
  return msg;
}

// Two layers' batches of 2 ranks x 3 tokens, top-2, the second the first's experts rotated.
std::pair<TokenBatch, TokenBatch> two_layers() {
  TokenBatch a;
  a.top_k = 2;
  a.ranks = 2;
  a.tokens_per_rank = 3;
  a.experts = {0, 1, 2, 3, 3, 0, 1, 2, 2, 0, 3, 1};
  a.gates = {0.6f, 0.4f, 0.123456789f, 0.876543211f, 0.5f, 0.5f, 1.0f, 0.0f, 0.25f, 0.75f, 0.3f, 0.7f};
  TokenBatch b = a;
  std::rotate(b.experts.begin(), b.experts.begin() + 2, b.experts.end());
  return {a, b};
}

}  // namespace

TEST_CASE("Token traces deal tokens to ranks in order, or by their rank column", "[routing][trace]") {
  const fs::path plain = write_temp("layer,token,experts,gates\n0,0,1 2,0.7 0.3\n0,1,3 0,0.5 0.5\n0,2,2 1,0.9 0.1\n"
                                    "1,0,0 1,0.6 0.4\n1,1,1 0,0.6 0.4\n");
  CHECK(trace_kind(plain.string()) == TraceKind::tokens);
  const auto b = read_token_trace(plain.string(), 4, 2, 2, 2, 1);
  fs::remove(plain);
  REQUIRE(b.size() == 2);
  CHECK(b[0].experts == std::vector<int>{1, 2, 3, 0});  // the third token is not needed
  CHECK(b[0].gates == std::vector<float>{0.7f, 0.3f, 0.5f, 0.5f});
  CHECK(b[1].experts == std::vector<int>{0, 1, 1, 0});
  // With ranks: each rank's first tokens, whatever the order in the file.
  const fs::path ranked = write_temp("layer,token,experts,gates,rank\n0,0,1 2,0.7 0.3,1\n0,1,3 0,0.5 0.5,1\n"
                                     "0,2,2 1,0.9 0.1,0\n0,3,0 3,0.5 0.5,0\n0,4,0 3,0.5 0.5,5\n");
  const auto r = read_token_trace(ranked.string(), 4, 2, 1, 2, 2);
  fs::remove(ranked);
  CHECK(r[0].experts == std::vector<int>{2, 1, 0, 3, 1, 2, 3, 0});
}

TEST_CASE("Token traces round-trip through the writer", "[routing][trace]") {
  const auto [a, b] = two_layers();
  const fs::path p = write_temp("");
  {
    std::ofstream out(p);
    write_token_trace(out, {a, b});
  }
  const auto back = read_token_trace(p.string(), 4, 2, 2, 2, 3);
  fs::remove(p);
  REQUIRE(back.size() == 2);
  CHECK(back[0].experts == a.experts);
  CHECK(back[0].gates == a.gates);  // floats print in their shortest exact form
  CHECK(back[1].experts == b.experts);
}

TEST_CASE("Bad token traces are rejected with file and line", "[routing][trace]") {
  const std::string h = "layer,token,experts,gates\n";
  CHECK_THAT(token_error("layer,token,experts\n"), Catch::Contains(":1: expected the header 'layer,token,experts,gates'"));
  CHECK_THAT(token_error(h + "0,0,1 7,0.5 0.5\n"), Catch::Contains(":2: unknown expert 7 (the model has experts 0 to 3)"));
  CHECK_THAT(token_error(h + "0,0,1,1\n"), Catch::Contains(":2: 1 expert ids, but the model routes each token to top_k = 2"));
  CHECK_THAT(token_error(h + "0,0,1 2 3,0.3 0.3 0.4\n"), Catch::Contains("3 expert ids"));
  CHECK_THAT(token_error(h + "0,0,1 2,0.5\n"), Catch::Contains(":2: 1 gate weights for 2 experts"));
  CHECK_THAT(token_error(h + "0,0,1 1,0.5 0.5\n"), Catch::Contains(":2: expert 1 twice in one token"));
  CHECK_THAT(token_error(h + "0,0,1 2,0.5 x\n"), Catch::Contains(":2: a gate weight must be a number >= 0, got 'x'"));
  CHECK_THAT(token_error(h + "0,0,1 2\n"), Catch::Contains(":2: expected 4 fields"));
  CHECK_THAT(token_error(h + "0,0,1 2,0.5 0.5\n0,1,2 3,0.5 0.5\n0,2,1 2,0.5"),
             Catch::Contains(":4: the last line has no end of line; the file looks truncated"));
  CHECK_THAT(token_error(h + "0,0,1 2,0.5 0.5\n"), Catch::Contains("layer 0 has 1 tokens; the scenario needs 2"));
  CHECK_THAT(token_error(h + "0,0,1 2,0.5 0.5\n0,1,1 2,0.5 0.5\n", 2), Catch::Contains("layer 1 has 0 tokens"));
  CHECK_THAT(token_error("layer,token,experts,gates,rank\n0,0,1 2,0.5 0.5,0\n0,1,1 2,0.5 0.5,0\n"),
             Catch::Contains("layer 0 rank 1 has 0 tokens; the scenario needs 1 per rank"));
  CHECK_THAT(token_error(""), Catch::Contains("empty trace"));
  CHECK_THROWS_WITH(trace_kind(write_temp("a,b\n").string()), Catch::Contains("unknown trace header 'a,b'"));
}

namespace {

// A binary trace's bytes, little-endian: the header, then blocks.
void put32(std::string& s, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}
void put16(std::string& s, std::uint16_t v) {
  s += static_cast<char>(v & 0xFF);
  s += static_cast<char>(v >> 8);
}
void put_float(std::string& s, float f) {
  std::uint32_t v;
  std::memcpy(&v, &f, 4);
  put32(s, v);
}
std::string binary_header(std::uint16_t top_k, std::uint16_t flags = 1, std::uint32_t version = 1) {
  std::string s = "MOESIMTT";
  put32(s, version);
  put16(s, top_k);
  put16(s, flags);
  return s;
}
std::string block(std::uint32_t layer, std::uint32_t rank, const std::vector<std::uint16_t>& ids, const std::vector<float>& gates,
                  int top_k = 2) {
  std::string s;
  put32(s, layer);
  put32(s, rank);
  put32(s, static_cast<std::uint32_t>(ids.size() / static_cast<std::size_t>(top_k)));
  for (const auto id : ids) put16(s, id);
  for (const float g : gates) put_float(s, g);
  return s;
}

}  // namespace

TEST_CASE("Binary token traces hold the same tokens as CSV ones, in a third of the bytes", "[routing][trace]") {
  const auto [a, b] = two_layers();
  const fs::path csv = write_temp(""), bin = write_temp("");
  {
    std::ofstream out(csv);
    write_token_trace(out, {a, b});
    std::ofstream out2(bin, std::ios::binary);
    write_token_trace(out2, {a, b}, true);
  }
  CHECK(trace_kind(bin.string()) == TraceKind::tokens);
  // Header 16 bytes; a block per layer and rank (4 blocks) of 12 bytes, each of 3 tokens of 2
  // ids (2 bytes) and 2 gates (4 bytes).
  CHECK(fs::file_size(bin) == 16 + 4 * (12 + 3 * 2 * 6));
  const auto from_bin = read_token_trace(bin.string(), 4, 2, 2, 2, 3);
  const auto from_csv = read_token_trace(csv.string(), 4, 2, 2, 2, 3);
  REQUIRE(from_bin.size() == 2);
  for (std::size_t l = 0; l < 2; ++l) {
    CHECK(from_bin[l].experts == from_csv[l].experts);
    CHECK(from_bin[l].gates == from_csv[l].gates);
  }
  CHECK(from_bin[0].gates == a.gates);
  CHECK(from_bin[1].experts == b.experts);
  // Token by token: the reader numbers a binary layer's tokens in file order and gives each its rank.
  TokenTraceReader r(bin.string(), 0, 0);
  CHECK(r.binary());
  CHECK(r.ranked());
  CHECK(r.top_k() == 2);
  std::int64_t layer = -1, token = -1, rank = -1, n = 0;
  const int* ids = nullptr;
  const float* gates = nullptr;
  while (r.next(layer, token, rank, ids, gates)) {
    CHECK(token == n % 6);
    CHECK(rank == (n % 6) / 3);
    CHECK(layer == n / 6);
    ++n;
  }
  CHECK(n == 12);
  fs::remove(csv);
  fs::remove(bin);
}

TEST_CASE("Bad binary token traces are rejected with the block and token", "[routing][trace]") {
  // token_error with one rank by default: the bytes are written as they are.
  const auto error = [](const std::string& bytes, int layers = 1, int ranks = 1) { return token_error(bytes, layers, ranks); };
  const std::string h = binary_header(2);
  const std::string good = block(0, 0, {1, 2}, {0.5f, 0.5f});
  CHECK(error(h + good) == "no error");
  CHECK_THAT(error("MOESIMTT\x01"), Catch::Contains("the binary header is cut short"));
  CHECK_THAT(error(binary_header(2, 1, 2) + good), Catch::Contains("binary trace version 2; this moesim reads version 1"));
  CHECK_THAT(error(binary_header(3) + good), Catch::Contains("the trace routes each token to 3 experts, the model to top_k = 2"));
  CHECK_THAT(error(binary_header(2, 6) + good), Catch::Contains("unknown flags 0x6"));
  CHECK_THAT(error(h + block(0, 0, {1, 7}, {0.5f, 0.5f})), Catch::Contains(": block 1 (layer 0, rank 0), token 0: unknown expert 7 (the model has experts 0 to 3)"));
  CHECK_THAT(error(h + good + block(0, 0, {1, 2, 3, 3}, {0.5f, 0.5f, 0.5f, 0.5f})),
             Catch::Contains(": block 2 (layer 0, rank 0), token 1: expert 3 twice in one token"));
  CHECK_THAT(error(h + block(0, 0, {1, 2}, {0.5f, -1.0f})), Catch::Contains("a gate weight must be a number >= 0, got -1"));
  CHECK_THAT(error(h + block(0, 0, {1, 2}, {0.5f, std::numeric_limits<float>::quiet_NaN()})), Catch::Contains("a gate weight"));
  CHECK_THAT(error(binary_header(2, 0) + block(0, 1, {1, 2}, {0.5f, 0.5f})),
             Catch::Contains("rank 1 in a trace whose header says its blocks carry no ranks"));
  CHECK_THAT(error(h + block(0, 0, {}, {})), Catch::Contains("a block of no tokens"));
  // Truncated: inside a block's head, inside its tokens.
  CHECK_THAT(error(h + good + good.substr(0, 7)), Catch::Contains("block 2's head is cut short; the file looks truncated"));
  CHECK_THAT(error(h + good.substr(0, good.size() - 1)),
             Catch::Contains("block 1 (layer 0, rank 0), token 0: the block declares 1 tokens and the file ends inside them"));
  // The same counts as CSV: too few tokens for a rank.
  CHECK_THAT(error(h + good, 1, 2), Catch::Contains("layer 0 rank 1 has 0 tokens; the scenario needs 1 per rank"));
  // Ranks and layers the scenario does not have are read, checked and skipped.
  CHECK(error(h + block(3, 0, {1, 2}, {0.5f, 0.5f}) + block(0, 5, {0, 1}, {1.0f, 0.0f}) + good) == "no error");
}
