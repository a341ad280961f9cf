// Routing traces, read as streams one line at a time (docs/traces.md is the reference).
//
// Count level: CSV with the header `layer,expert,count` (or `step,layer,expert,count`), one row
// per (step, layer, expert), whole non-negative counts; experts a layer's rows do not mention
// received nothing.
// Token level: CSV with the header `layer,token,experts,gates` (or `...,gates,rank`): one row per
// token and MoE layer; `experts` and `gates` are space-separated lists of top_k expert ids and
// gate weights; `rank` is the token's source rank in the EP group. Or the same tokens in binary
// (docs/traces.md, "Binary token-level traces"): a 16-byte header, "MOESIMTT", version 1, top_k
// and whether blocks carry ranks, then blocks of one layer's and rank's tokens, each a 12-byte
// head (layer, rank, tokens: uint32) and the tokens' expert ids (uint16) and gates (float32),
// all little-endian. About a third of the CSV's bytes, read several times as fast.
// In the CSV forms `#` lines and blank lines are skipped, and a bad line is rejected as
// "file:line: what"; a bad binary block as "file: block N (layer L, rank R), token T: what".
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesim::routing {

// A bad trace: the message names the file and line.
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One MoE layer's routing of one EP group's micro-batch: each token's top-k experts and gates.
// Tokens are in rank order: token t of rank r is entry r * tokens_per_rank + t.
struct TokenBatch {
  int top_k = 1;
  int ranks = 0;
  std::int64_t tokens_per_rank = 0;
  std::vector<int> experts;  // [token * top_k + j]
  std::vector<float> gates;  // same layout; empty when no gates were drawn
  std::int64_t tokens() const { return ranks * tokens_per_rank; }
};

// What a trace-driven routing replays, read once when the scenario is loaded.
struct RoutingTrace {
  std::string path;
  std::vector<std::vector<double>> layer_counts;  // count level: [layer][expert] of routing.step
  std::vector<TokenBatch> layer_tokens;           // token level: [layer], one EP group's batch
};

enum class TraceKind { counts, tokens };
// Which kind of trace the file's header says it is. Throws TraceError.
TraceKind trace_kind(const std::string& path);

struct CountTrace {
  bool stepped = false;                                     // the file has a step column
  std::map<int, std::map<int, std::vector<double>>> steps;  // step -> layer -> counts [expert]
};
// Throws TraceError.
CountTrace read_count_trace(const std::string& path, int experts);
// Per layer 0..layers-1, the mean of the counts over steps [first, last] (an unstepped trace is
// step 0). Throws TraceError naming the first missing (step, layer).
std::vector<std::vector<double>> mean_counts(const CountTrace& trace, const std::string& path, int first,
                                             int last, int layers);

// Reads, for each layer 0..layers-1, the tokens one EP group of `ranks` ranks with
// `tokens_per_rank` tokens each replays: with a rank column, each rank's first tokens_per_rank
// tokens of the layer in file order; without, the layer's first ranks x tokens_per_rank tokens,
// dealt to the ranks in order. Every line is checked; only the tokens needed are kept. Throws
// TraceError (bad line, too few tokens for a layer or rank, missing layer).
std::vector<TokenBatch> read_token_trace(const std::string& path, int experts, int top_k, int layers,
                                         int ranks, std::int64_t tokens_per_rank);

// Reads a token-level trace, CSV or binary (told apart by the binary's first 8 bytes), one token
// at a time, checking each as it comes. experts > 0: ids must be below it (0: any the binary form
// holds, below 65536); top_k > 0: each token must have that many (0: the first token's, or the
// binary header's). Throws TraceError.
class TokenTraceReader {
 public:
  TokenTraceReader(const std::string& path, int experts, int top_k);
  ~TokenTraceReader();
  TokenTraceReader(const TokenTraceReader&) = delete;
  TokenTraceReader& operator=(const TokenTraceReader&) = delete;
  // The next token: its layer, token number (binary: its place among the layer's tokens in the
  // file), rank (0 without ranks) and top_k experts and gates (valid until the next call).
  // False at the end.
  bool next(std::int64_t& layer, std::int64_t& token, std::int64_t& rank, const int*& experts, const float*& gates);
  bool binary() const;
  bool ranked() const;
  int top_k() const;
  // Where the last token read is, for messages: "file:line" or "file: block N (...), token T".
  std::string where() const;

 private:
  struct Impl;
  Impl* impl_;
};

// Writes a token-level trace a token at a time, CSV (with a rank column) or binary; tokens of the
// same layer and rank in a row make one binary block. finish() writes what is held back.
class TokenTraceWriter {
 public:
  TokenTraceWriter(std::ostream& out, bool binary, int top_k);
  void add(std::int64_t layer, std::int64_t token, std::int64_t rank, const int* experts, const float* gates);
  void finish();

 private:
  void flush_block();
  std::ostream& out_;
  bool binary_;
  int top_k_;
  std::string line_;
  std::int64_t block_layer_ = -1, block_rank_ = -1;
  std::vector<std::uint16_t> block_ids_;
  std::vector<float> block_gates_;
};

// Writes layers' batches as a token-level trace with a rank column (gates as drawn, or 1/top_k
// each when the batch has none), as CSV or binary.
void write_token_trace(std::ostream& out, const std::vector<TokenBatch>& layers, bool binary = false);

}  // namespace moesim::routing
