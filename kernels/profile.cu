// moe-profile: measures the MoE layer's stages on this GPU and writes a kernel profile, after
// checking the layer against the float64 reference (never times unchecked code).
//
//   moe-profile [--out FILE] [--quick] [--repeats N] [--trace FILE] [--grid pow2|dense] ...
//   (moe-profile --help lists every option)
//
// For each shape (small, mixtral: H 4096 F 14336 E 8 k 2, deepseek: H 7168 F 2048 E 256 k 8
// with sigmoid scoring and 4 of 8 groups), tokens 1, 2, 4, ... 65536 as memory allows (with
// --grid dense also 3, 6, 12, ...), and per-expert distributions (uniform, zipf:0.8, zipf:1.2,
// hot:0.5), it times with CUDA events after warm-up: router (on random tokens; its time does
// not depend on the distribution), permute and combine (on a generated routing of that
// distribution), and the whole layer (router's own routing). The experts stage is timed as one
// GPU of an EP group runs it: for local expert counts E, 32, 16, ... 1 of the shape, `tokens` =
// rows (assignments) spread over them by each distribution (rows with top_k 1). Rows of the
// CSV: median, 10th and 90th percentile over the repetitions; max_expert_tokens,
// active_experts and row_tiles (the sum over experts of ceil(rows / 64)) describe the
// histogram. dense_gemm rows time one bf16 GEMM of the gate/up
// projection's size over `tokens` rows, the yardstick for the grouped GEMMs' efficiency.
// mixtral-etp2, mixtral-etp4, mixtral-etp8 (only when named): mixtral with each expert's FFN
// split over 2, 4 or 8 GPUs (F 7168, 3584, 1792), the shard one GPU runs under the simulator's
// parallelism.etp; with --experts-only, the expert stage alone, which is all the simulator
// takes from these widths.
// --trace FILE: a token-level routing trace (docs/traces.md) of the mixtral-shaped router on
// clustered tokens (4 layers, 4096 tokens), for the simulator to replay.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "check.cuh"
#include "moe_layer.cuh"
#include "sustain.hpp"
#include "tiling.hpp"

using namespace moe;

namespace {

struct Timing {
  double median, p10, p90;
  // When it was taken (wall clock, for lining it up with the card's clock log), how long one
  // run took in its warm-up, the seconds spent bringing heavy work to the sustained state, and
  // the attempts (a measurement with a slow period is taken again).
  std::chrono::system_clock::time_point begin{}, end{};
  double run_us = 0, sustained_s = 0, settled_s = 0;
  int attempts = 1;
};

// The wall-clock time (UTC, HH:MM:SS) for the progress lines, to line them up with the card's
// clock log (kernels/measure.sh writes clocks.csv with nvidia-smi's timestamps).
// A wall-clock time as nvidia-smi's timestamps read under TZ=UTC: 2026/11/22 18:10:30.347.
std::string utc_ms(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
  char buf[32], out[40];
  std::strftime(buf, sizeof buf, "%Y/%m/%d %H:%M:%S", std::gmtime(&secs));
  std::snprintf(out, sizeof out, "%s.%03d", buf, static_cast<int>(ms));
  return out;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", std::gmtime(&t));
  return buf;
}

std::string fmt_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

// Heavy measurements are timed in the GPU's sustained state (sustain.hpp): --sustain seconds
// of heavy work without a pause first; light ones at its top clock, 0.3 s or more after heavy
// work (--sustain 0: everything as it comes). How often that took extra runs, and how long,
// goes into the progress lines.
SustainedLoad sustained(2.0);
// How often something was run before timing, and for how long in all.
struct Tally {
  int count = 0;
  double seconds = 0;
};
Tally sustains, settles;  // heavy measurements brought to the sustained state; light ones settled

// Median and spread over `repeats` timed runs after three warm-up runs (and as many more as the
// sustained state, or settling after heavy work, needs); runs past 2 ms are repeated fewer times
// (at least 7), keeping a long sweep inside its time.
Timing time_once(const std::function<void()>& run, int repeats, cudaStream_t s) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  // Warm-up: three runs, the last two also telling how long a run takes (the first may load
  // modules or pick a cuBLAS algorithm).
  const auto begin = SustainedLoad::Clock::now();
  run();
  check(cudaStreamSynchronize(s), "warm-up");
  const auto second = SustainedLoad::Clock::now();
  run();
  run();
  check(cudaStreamSynchronize(s), "warm-up");
  const double run_us = 1e6 / 2 * std::chrono::duration<double>(SustainedLoad::Clock::now() - second).count();
  if (sustained.remaining(begin, run_us, SustainedLoad::Clock::now()) > 0) {
    const auto start = SustainedLoad::Clock::now();
    do {
      run();
      check(cudaStreamSynchronize(s), "sustained load");
    } while (sustained.remaining(begin, run_us, SustainedLoad::Clock::now()) > 0);
    Tally& n = sustained.heavy(run_us) ? sustains : settles;
    ++n.count;
    n.seconds += std::chrono::duration<double>(SustainedLoad::Clock::now() - start).count();
  }
  std::vector<double> us;
  for (int i = 0; i < repeats; ++i) {
    if (i == 7 && us[0] > 2000) break;
    check(cudaEventRecord(a, s), "event");
    run();
    check(cudaEventRecord(b, s), "event");
    check(cudaEventSynchronize(b), "event");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "event");
    us.push_back(1000.0 * ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (sustained.heavy(run_us)) sustained.ended(SustainedLoad::Clock::now());
  std::sort(us.begin(), us.end());
  const auto at = [&](double q) { return us[static_cast<std::size_t>(q * static_cast<double>(us.size() - 1) + 0.5)]; };
  Timing t{at(0.5), at(0.1), at(0.9)};
  t.run_us = run_us;
  return t;
}

// The machines this runs on have slow periods (seen on an H100: a stage at twice its time for
// hundreds of milliseconds, for no reason the card's clocks show): where the median lies more
// than 25 % above the 10th percentile, a slow period covered the measurement, and it is taken
// again, up to three times in all, keeping the one with the lowest median.
//
// After a pause (the CPU generating weights or routings), an idle GPU's clocks are down and
// take a while to come back: seen on an H100, whole-layer timings of a few tokens 20 % slower
// at the start of a shape than the same layer measured right after heavy work. So a pause of
// more than a second (weights or large routings generated on the CPU) is followed by half a
// second of dense GEMMs before anything is timed; shorter pauses are not (at 0.5 s each, warming
// after every routing would add many minutes to a sweep of thousands of timings).
Tally warm_ups;

void warm_gpu() {
  static cublasHandle_t blas = nullptr;
  static __nv_bfloat16* buf = nullptr;
  constexpr int n = 4096;
  if (!blas) {
    check(cublasCreate(&blas), "cublasCreate");
    check(cudaMalloc(&buf, 3 * static_cast<std::size_t>(n) * n * sizeof(__nv_bfloat16)), "warm-up buffers");
    // Every bf16 0x3c3c (about 0.0115): not zeros, which a GEMM may run faster on; no overflow.
    check(cudaMemset(buf, 0x3c, 3 * static_cast<std::size_t>(n) * n * sizeof(__nv_bfloat16)), "warm-up buffers");
  }
  const float one = 1, zero = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(500)) {
    for (int i = 0; i < 8; ++i)
      check(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, buf, CUDA_R_16BF, n, buf + static_cast<std::size_t>(n) * n,
                         CUDA_R_16BF, n, &zero, buf + 2 * static_cast<std::size_t>(n) * n, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            "warm-up GEMM");
    check(cudaDeviceSynchronize(), "warm-up");
  }
  ++warm_ups.count;
  warm_ups.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  sustained.ran(start, std::chrono::steady_clock::now());  // heavy work: light work after it settles
}

Timing time_it(const std::function<void()>& run, int repeats, cudaStream_t s) {
  static auto last = std::chrono::steady_clock::time_point{};
  if (std::chrono::steady_clock::now() - last > std::chrono::seconds(1)) warm_gpu();
  const auto begin = std::chrono::system_clock::now();
  const double sustained_before = sustains.seconds, settled_before = settles.seconds;
  Timing best = time_once(run, repeats, s);
  int attempts = 1;
  for (; attempts < 3 && best.median > 1.25 * best.p10; ++attempts) {
    const Timing again = time_once(run, repeats, s);
    if (again.median < best.median) best = again;
  }
  last = std::chrono::steady_clock::now();
  best.begin = begin, best.end = std::chrono::system_clock::now();
  best.sustained_s = sustains.seconds - sustained_before, best.settled_s = settles.seconds - settled_before;
  best.attempts = attempts;
  return best;
}

Config shape(const std::string& name) {
  Config c;
  c.name = name;
  if (name == "small") {
    c.hidden = 1024, c.ffn = 2048, c.experts = 16, c.top_k = 2;
  } else if (name == "mixtral") {
    c.hidden = 4096, c.ffn = 14336, c.experts = 8, c.top_k = 2;
  } else if (name.rfind("mixtral-etp", 0) == 0) {  // an expert-tensor-parallel shard of mixtral's experts
    c.hidden = 4096, c.ffn = 14336 / std::stoi(name.substr(11)), c.experts = 8, c.top_k = 2;
  } else {  // deepseek
    c.hidden = 7168, c.ffn = 2048, c.experts = 256, c.top_k = 8, c.scoring = Scoring::sigmoid, c.groups = 8, c.max_groups = 4;
  }
  return c;
}

// The same shape with at most 16 experts, for the float64 check (its cost grows with experts x H x F).
Config check_shape(Config c) {
  if (c.experts > 16) {
    c.experts = 16;
    c.groups = std::min(c.groups, 8);
  }
  return c;
}

// Device bytes for the layer at `tokens` (bf16 weights, the rows' activations, logits,
// routing); with `backward` also the weight gradients, the rows' gradients and the logits'.
std::size_t bytes_needed(const Config& c, int tokens, bool backward = false) {
  const double a = static_cast<double>(tokens) * c.top_k, h = c.hidden, f = c.ffn, e = c.experts;
  const double fwd = 2 * e * 3 * h * f + 2 * a * (2 * h + 3 * f) + 4 * tokens * e + 64 * a;
  return static_cast<std::size_t>(backward ? 2 * fwd + 2.0 * tokens * e : fwd);
}

// Weights for timing: the router's for every expert, the experts' own from at most 16 distinct
// experts repeated (each expert still has its own copy in memory, so the bytes moved are the
// same; generating 11 G random DeepSeek-V3 weights on the CPU would take minutes).
Weights profile_weights(const Config& c, std::uint64_t seed) {
  Config router_only = c;
  router_only.ffn = 8;
  Weights w = random_weights(router_only, seed);
  Config few = c;
  few.experts = std::min(c.experts, 16);
  few.groups = 1, few.max_groups = 0;
  const Weights e = random_weights(few, seed + 1);
  w.gate_up.resize(static_cast<std::size_t>(c.experts) * static_cast<std::size_t>(c.hidden) * 2 * static_cast<std::size_t>(c.ffn));
  w.down.resize(w.gate_up.size() / 2);
  for (std::size_t i = 0; i < w.gate_up.size(); i += e.gate_up.size())
    std::copy(e.gate_up.begin(), e.gate_up.begin() + static_cast<std::ptrdiff_t>(std::min(e.gate_up.size(), w.gate_up.size() - i)), w.gate_up.begin() + static_cast<std::ptrdiff_t>(i));
  for (std::size_t i = 0; i < w.down.size(); i += e.down.size())
    std::copy(e.down.begin(), e.down.begin() + static_cast<std::ptrdiff_t>(std::min(e.down.size(), w.down.size() - i)), w.down.begin() + static_cast<std::ptrdiff_t>(i));
  return w;
}

struct DeviceTokens {
  __nv_bfloat16* p = nullptr;
  explicit DeviceTokens(const std::vector<bf16_bits>& x) {
    check(cudaMalloc(&p, x.size() * sizeof(bf16_bits)), "tokens");
    check(cudaMemcpy(p, x.data(), x.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "tokens");
  }
  // `rows` random token rows of the shape, at most 4096 distinct ones repeated (timings do not
  // depend on the values), tiled on the device (tiling.hpp).
  DeviceTokens(const Config& c, int rows, std::uint64_t seed) {
    const std::vector<bf16_bits> few = random_tokens(c, std::min(rows, 4096), seed);
    const std::size_t total = static_cast<std::size_t>(rows) * static_cast<std::size_t>(c.hidden);
    check(cudaMalloc(&p, total * sizeof(bf16_bits)), "tokens");
    check(cudaMemcpy(p, few.data(), few.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "tokens");
    tile(total, few.size(), [&](std::size_t dst, std::size_t src, std::size_t n) {
      check(cudaMemcpy(p + dst, p + src, n * sizeof(bf16_bits), cudaMemcpyDeviceToDevice), "tokens");
    });
  }
  ~DeviceTokens() { cudaFree(p); }
  DeviceTokens(const DeviceTokens&) = delete;
  DeviceTokens& operator=(const DeviceTokens&) = delete;
};

void write_trace(const std::string& path) {
  const Config c = shape("mixtral");
  const int tokens = 4096, layers = 4;
  std::ofstream out(path);
  out << "# token-level routing trace: moe-profile's mixtral-shaped router (H 4096, 8 experts, top-2) on\n"
         "# clustered tokens (64 clusters, Zipf(1.0) frequencies), random router weights per layer\n"
         "layer,token,experts,gates\n";
  const std::vector<bf16_bits> x = clustered_tokens(c, tokens, 64, 1.0, 7);
  DeviceTokens dx(x), dout(x);
  for (int l = 0; l < layers; ++l) {
    const Weights w = random_weights(c, 100 + static_cast<std::uint64_t>(l));
    Layer layer(c, w, tokens);
    layer.router(dx.p, tokens);
    const Routing r = layer.routing(tokens);
    for (int t = 0; t < tokens; ++t) {
      out << l << ',' << t << ',';
      for (int j = 0; j < c.top_k; ++j) out << (j ? " " : "") << r.experts[static_cast<std::size_t>(t * c.top_k + j)];
      out << ',';
      for (int j = 0; j < c.top_k; ++j) out << (j ? " " : "") << r.gates[static_cast<std::size_t>(t * c.top_k + j)];
      out << '\n';
    }
  }
  std::printf("moe-profile: wrote %s\n", path.c_str());
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// The counts in a comma-separated option value, each a whole number in 1 ... max that `ok`
// accepts; or, naming the option and the first bad value with `what` it should be, nothing.
std::optional<std::vector<int>> counts(const std::string& list, const char* option, long max, const char* what,
                                       bool (*ok)(long) = nullptr) {
  std::vector<int> out;
  for (const auto& v : split(list)) {
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (*end != '\0' || n < 1 || n > max || (ok && !ok(n))) {
      std::fprintf(stderr, "moe-profile: %s: '%s' is not %s\n", option, v.c_str(), what);
      return std::nullopt;
    }
    out.push_back(static_cast<int>(n));
  }
  return out;
}

}  // namespace

// The counts a sweep measures up to `max`: powers of two, and with `dense` also the points half
// way between them in log terms, rounded (3, 6, 12, 24, ...: 1.5 times a power of two), where a
// time that bends between two powers (a GEMM going from weight-bound to compute-bound, or the
// expert GEMMs switching path at a power of two) needs more than two points to follow.
std::vector<int> grid(int max, bool dense) {
  std::vector<int> g;
  for (long long t = 1; t <= max; t *= 2) {
    g.push_back(static_cast<int>(t));
    if (dense && t >= 2 && 3 * t / 2 <= max) g.push_back(static_cast<int>(3 * t / 2));
  }
  return g;
}

int main(int argc, char** argv) {
  std::string out_path, trace_path, heldout_path, ab_path, shape_list, stages_path, hist_path, late_path, timings_path;
  bool quick = false, heldout_only = false, dense = false, experts_only = false, backward = false;
  std::string locals_list, sustain_list = "2";
  std::string heldout_list, heldout_experts_list;
  int passes = 1;
  int repeats = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) out_path = argv[++i];
    else if (a == "--trace" && i + 1 < argc) trace_path = argv[++i];
    else if (a == "--heldout" && i + 1 < argc) heldout_path = argv[++i];
    else if (a == "--ab" && i + 1 < argc) ab_path = argv[++i];
    else if (a == "--shapes" && i + 1 < argc) shape_list = argv[++i];
    else if (a == "--quick") quick = true;
    else if (a == "--heldout-only") heldout_only = true;
    else if (a == "--experts-only") experts_only = true;
    else if (a == "--backward") backward = true;
    else if (a == "--locals" && i + 1 < argc) locals_list = argv[++i];
    else if (a == "--stages" && i + 1 < argc) stages_path = argv[++i];
    else if (a == "--hist" && i + 1 < argc) hist_path = argv[++i];
    else if (a == "--late" && i + 1 < argc) late_path = argv[++i];
    else if (a == "--timings" && i + 1 < argc) timings_path = argv[++i];
    else if (a == "--passes" && i + 1 < argc) passes = std::max(1, std::atoi(argv[++i]));
    else if (a == "--repeats" && i + 1 < argc) repeats = std::max(7, std::atoi(argv[++i]));
    else if (a == "--sustain" && i + 1 < argc) sustain_list = argv[++i];
    else if (a == "--grid" && i + 1 < argc && (std::string(argv[i + 1]) == "pow2" || std::string(argv[i + 1]) == "dense"))
      dense = std::string(argv[++i]) == "dense";
    else if (a == "--heldout-tokens" && i + 1 < argc) heldout_list = argv[++i];
    else if (a == "--heldout-experts" && i + 1 < argc) heldout_experts_list = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: moe-profile [--out FILE] [--heldout FILE] [--ab FILE] [--trace FILE] [--shapes small,mixtral,deepseek,...]\n"
                   "                   [--quick] [--repeats N] [--heldout-only] [--passes N] [--stages FILE] [--hist FILE]\n"
                   "                   [--grid pow2|dense] [--heldout-tokens N,N,...] [--heldout-experts N,N,...]\n"
                   "                   [--locals N,N,...] [--experts-only] [--late FILE] [--sustain SECONDS] [--timings FILE]\n"
                   "                   [--backward]\n"
                   "  --grid: token and row counts 1, 2, 4, ... (pow2, the default) or also 3, 6, 12, ... (dense);\n"
                   "  --heldout-tokens: the held-out token counts (default 3, 24, 96, ... 49152 with pow2,\n"
                   "  5, 20, 80, ... 40960 with dense; none may be on the grid)\n"
                   "  --heldout-experts: also time the expert stage on these local-expert counts (none the\n"
                   "  sweep's own: E, 32, 16, ... 1; each up to the shape's experts), at the held-out counts as\n"
                   "  rows, under the held-out distributions, into the --heldout file\n"
                   "  --locals: the expert-stage sweep only on these of its local-expert counts; --experts-only:\n"
                   "  only the expert-stage sweep (with --locals, a long shape's sweep splits over several runs)\n"
                   "  --late FILE: the whole layer (router's routing) timed again after the expert-stage sweep,\n"
                   "  at the sweep's token counts, in the profile's format: how far the card's state moved\n"
                   "  --heldout-only: only the held-out timings (--passes times over); --stages FILE: each\n"
                   "  held-out case also stage by stage, with the expert GEMM path it took; --hist FILE: the\n"
                   "  per-expert row counts behind every profile and held-out row that has a routing, and the\n"
                   "  expert GEMM path its timing took (grouped or loop; - where it has no expert stage)\n"
                   "  --sustain SECONDS: time heavy work (a run of 0.5 ms or more) only after this long of heavy\n"
                   "  work without a pause, the GPU's sustained state under its power cap, and light work only\n"
                   "  0.3 s or more after heavy work, at the top clock (default 2; 0: everything as it comes);\n"
                   "  --timings FILE: when\n"
                   "  each row of the other files was timed (UTC, as measure.sh's clock log), how long a run\n"
                   "  took and the seconds of sustained load (heavy) or settling (light) before it\n"
                   "  --backward: the backward pass's stages instead of the forward's (layer_bwd, router_bwd,\n"
                   "  permute_bwd, combine_bwd per token count, experts_bwd per local-expert count and rows), after\n"
                   "  checking the gradients against the reference; --heldout then times the whole backward pass\n"
                   "  (layer_bwd rows) on the held-out cases; no late, A/B or stage timings\n");
      return 2;
    }
  }
  // Held-out token counts: never on the sweep's grid, or they would not be held out.
  const auto listed_tokens = counts(heldout_list, "--heldout-tokens", 65536, "a token count in 1 ... 65536");
  // Held-out local-expert counts (EP slots the sweep does not measure, e.g. with redundant
  // experts): never one the sweep measures for any shape (powers of two up to 32).
  const auto heldout_experts =
      counts(heldout_experts_list, "--heldout-experts", 4096,
             "a local-expert count the sweep leaves out (a count in 1 ... 4096, not a power of two up to 32)",
             [](long n) { return n > 32 || (n & (n - 1)) != 0; });
  const auto locals = counts(locals_list, "--locals", 4096, "a local-expert count in 1 ... 4096");
  if (!listed_tokens || !heldout_experts || !locals) return 2;
  {
    char* end = nullptr;
    const double seconds = std::strtod(sustain_list.c_str(), &end);
    if (sustain_list.empty() || *end != '\0' || !(seconds >= 0 && seconds <= 60)) {
      std::fprintf(stderr, "moe-profile: --sustain: '%s' is not a number of seconds in 0 ... 60\n", sustain_list.c_str());
      return 2;
    }
    sustained = SustainedLoad(seconds);
  }
  std::vector<int> heldout_tokens = *listed_tokens;
  if (heldout_list.empty())
    heldout_tokens = dense ? std::vector<int>{5, 20, 80, 320, 1280, 5120, 20480, 40960}
                           : std::vector<int>{3, 24, 96, 384, 1536, 6144, 24576, 49152};
  std::sort(heldout_tokens.begin(), heldout_tokens.end());
  if (backward && !heldout_experts->empty()) {
    std::fprintf(stderr, "moe-profile: --backward has no held-out expert-stage timings (--heldout-experts)\n");
    return 2;
  }
  if (experts_only && heldout_only) {
    std::fprintf(stderr, "moe-profile: --experts-only and --heldout-only leave nothing to measure together\n");
    return 2;
  }
  if (!heldout_experts->empty() && heldout_path.empty()) {
    std::fprintf(stderr, "moe-profile: --heldout-experts writes into the --heldout file: give --heldout FILE\n");
    return 2;
  }
  for (const int t : heldout_tokens) {
    const auto g = grid(65536, dense);
    if (std::find(g.begin(), g.end(), t) != g.end()) {
      std::fprintf(stderr, "moe-profile: --heldout-tokens: %d is on the sweep's grid (--grid %s), so it would not be held out\n",
                   t, dense ? "dense" : "pow2");
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device present\n");
    return 77;
  }
  try {
    const DeviceInfo dev = device_info();
    const std::vector<std::string> shapes =
        !shape_list.empty() ? split(shape_list)
        : quick             ? std::vector<std::string>{"small"}
                            : std::vector<std::string>{"small", "mixtral", "deepseek"};
    for (const auto& s : shapes)
      if (s != "small" && s != "mixtral" && s != "deepseek" && s != "mixtral-etp2" && s != "mixtral-etp4" && s != "mixtral-etp8") {
        std::fprintf(stderr, "moe-profile: unknown shape '%s' (small, mixtral, deepseek, mixtral-etp2, mixtral-etp4, mixtral-etp8)\n",
                     s.c_str());
        return 2;
      }
    // Check every shape first.
    for (const auto& s : shapes) {
      const Config c = check_shape(shape(s));
      const CheckResult r = check_layer(c, 256, s == "small" ? 64 : 4, 1);
      std::printf("check %-8s %s\n", s.c_str(), r.describe().c_str());
      if (!r.ok) {
        std::fprintf(stderr, "moe-profile: the layer does not match the reference; nothing timed\n");
        return 1;
      }
      if (backward) {
        // Weight gradients sum over every token: the reference takes them all, so few of them
        // for the large shapes.
        const BackwardCheck b = check_backward(c, s == "small" ? 64 : 4, 3);
        std::printf("check %-8s backward %s\n", s.c_str(), b.describe().c_str());
        if (!b.ok) {
          std::fprintf(stderr, "moe-profile: the backward pass does not match the reference; nothing timed\n");
          return 1;
        }
      }
    }
    if (backward) {
      late_path.clear(), ab_path.clear(), stages_path.clear();
      std::printf("moe-profile: --backward: the backward pass's stages, and held-out whole backward passes (no late, "
                  "A/B or stage timings)\n");
    }
    if (!trace_path.empty()) write_trace(trace_path);
    if (out_path.empty()) return 0;
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
    const auto header = [&](std::ofstream& f, const char* what) {
      f << "# moesim kernel profile, " << what << ", measured by kernels/profile.cu (moe-profile)\n"
        << "# gpu: " << dev.name << "\n# sm_count: " << dev.sm_count << "\n# sm_clock_mhz: " << dev.sm_clock_mhz
        << "\n# memory_clock_mhz: " << dev.memory_clock_mhz << "\n# cuda_runtime: " << dev.runtime
        << "\n# cuda_driver: " << dev.driver << "\n# date: " << date << "\n# repeats: " << repeats
        << " (at least 7 for runs past 2 ms; a measurement whose median is over 1.25x its 10th percentile taken again, up to 3 times, the lowest median kept)\n# checked: bf16 layer vs float64 reference before timing (kernels/check.cuh bounds)\n"
        << "# grid: " << (dense ? "dense (1, 2, 3, 4, 6, 8, ...)" : "pow2 (1, 2, 4, 8, ...)") << "\n"
        << "# sustained: "
        << (sustained.seconds() > 0
                ? "heavy work (a run of 0.5 ms or more) timed after " + fmt_seconds(sustained.seconds()) +
                      " of heavy work without a pause of more than 0.2 s, light work 0.3 s or more after heavy work "
                      "(kernels/sustain.hpp)"
                : std::string("no (heavy work timed as it came)"))
        << "\n"
        << "# experts GEMMs: per size class the faster of cublasGemmGroupedBatchedEx and a cublasGemmEx loop (automatic)\n"
        << "kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,"
           "p90_us,row_tiles\n";
    };
    std::ofstream out(out_path), heldout, ab, stages, hist, late, timings;
    if (!timings_path.empty()) {
      timings.open(timings_path);
      timings << "# when moe-profile timed each row of its files (UTC, as nvidia-smi's timestamps under TZ=UTC); gpu: "
              << dev.name << "; sustained state: " << fmt_seconds(sustained.seconds())
              << " of heavy work first (0 s: off)\n"
              << "file,kernel,shape,experts,top_k,tokens,distribution,begin_utc,end_utc,run_us,sustained_s,settled_s,attempts,"
                 "median_us\n";
    }
    if (!hist_path.empty()) {
      hist.open(hist_path);
      hist << "# per-expert row counts of the routings behind moe-profile's rows; gpu: " << dev.name << "; date: " << date
           << "\nfile,kernel,shape,experts,top_k,tokens,distribution,gemm,counts\n";
    }
    if (!stages_path.empty()) {
      stages.open(stages_path);
      stages << "pass,shape,tokens,distribution,max_expert_tokens,active_experts,layer_us,layer_p10_us,layer_p90_us,router_us,"
                "permute_us,experts_us,combine_us,experts_gemm\n";
    }
    header(out, "the sweep");
    if (!heldout_path.empty()) {
      heldout.open(heldout_path);
      header(heldout, "held-out whole-layer timings (token counts and distributions not in the sweep)");
    }
    if (!late_path.empty()) {
      late.open(late_path);
      header(late, "the whole-layer rows timed again after the expert-stage sweep");
    }
    if (!ab_path.empty()) {
      ab.open(ab_path);
      ab << "# the experts stage by each GEMM path, uniform rows; gpu: " << dev.name << "; date: " << date << "\n"
         << "shape,hidden,ffn,local_experts,rows,grouped_us,loop_us\n";
    }
    const std::vector<std::string> dists{"uniform", "zipf:0.8", "zipf:1.2", "hot:0.5"};
    std::size_t free_bytes = 0, total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "memory");
    const auto row = [&](std::ofstream& f, const char* kernel, const Config& c, int tokens, const std::string& dist,
                         const Routing* r, Timing tm, const char* gemm = "-") {
      int top = 0, active = 0;
      long long tiles = 0;  // the 64-row GEMM tiles the experts' rows fill
      if (r)
        for (const int n : r->counts) top = std::max(top, n), active += n > 0, tiles += (n + 63) / 64;
      f << kernel << ',' << c.name << ',' << c.hidden << ',' << c.ffn << ',' << c.experts << ',' << c.top_k << ','
        << tokens << ',' << dist << ',' << top << ',' << active << ',' << tm.median << ',' << tm.p10 << ',' << tm.p90
        << ',' << tiles << '\n';
      const char* file = &f == &heldout ? "heldout" : &f == &late ? "late" : "profile";
      if (timings.is_open())
        timings << file << ',' << kernel << ',' << c.name << ',' << c.experts << ',' << c.top_k << ',' << tokens << ','
                << dist << ',' << utc_ms(tm.begin) << ',' << utc_ms(tm.end) << ',' << tm.run_us << ','
                << tm.sustained_s << ',' << tm.settled_s << ',' << tm.attempts << ',' << tm.median
                << std::endl;  // kept if the run is cut off
      if (r && hist.is_open()) {
        hist << file << ',' << kernel << ',' << c.name << ',' << c.experts << ','
             << c.top_k << ',' << tokens << ',' << dist << ',' << gemm << ',';
        for (std::size_t e = 0; e < r->counts.size(); ++e) hist << (e ? " " : "") << r->counts[e];
        hist << '\n';
      }
    };
    for (const auto& s : shapes) {
      const Config c = shape(s);
      const auto t0 = std::chrono::steady_clock::now();
      const Tally warm_ups_before = warm_ups, sustains_before = sustains, settles_before = settles;
      const Weights w = profile_weights(c, 2);
      int max_tokens = 1;
      for (int t = 1; t <= (quick ? 4096 : 65536); t *= 2)
        if (bytes_needed(c, t, backward) < free_bytes * 0.8) max_tokens = t;
      if (!experts_only) {
        // Router, permute and combine at the model's expert count, per token count; and the
        // whole layer on the router's own routing.
        Layer layer(c, w, max_tokens);
        DeviceTokens dx(c, max_tokens, 3), dout(c, max_tokens, 3);
        const cudaStream_t st = layer.stream();
        // The gradient at the output (random), and dx.
        DeviceTokens dgrad(c, backward ? max_tokens : 1, 5), ddx(c, backward ? max_tokens : 1, 3);
        // Light rows first, then the whole-layer rows back to back. Heavy measurements that
        // follow each other share one stretch of the sustained state (sustain.hpp); a layer row
        // after each token count's light rows would need a stretch of its own (about 2.3 s a
        // row: minutes over a dense sweep of three shapes).
        const std::vector<int> sweep = heldout_only ? std::vector<int>{} : grid(max_tokens, dense);
        const auto done = [&](int t, const char* what) {  // a progress line: which of the sweep's counts
          const auto i = std::find(sweep.begin(), sweep.end(), t) - sweep.begin() + 1;
          std::printf("%s %-8s %6d tokens done (%s; %d of %d)\n", now_utc().c_str(), s.c_str(), t, what,
                      static_cast<int>(i), static_cast<int>(sweep.size()));
        };
        for (const int t : backward ? sweep : std::vector<int>{}) {
          // The router's part of the backward pass after a whole pass on the router's routing
          // (its activations and the gates' gradients); then per distribution combine's and
          // permute's parts.
          layer.forward(dx.p, t, dout.p);
          layer.backward(dx.p, dgrad.p, t, ddx.p);
          row(out, "router_bwd", c, t, "-", nullptr, time_it([&] { layer.router_backward(dx.p, t, ddx.p); }, repeats, st));
          for (const auto& d : dists) {
            const Routing r = generated_routing(c, t, d, 5);
            layer.set_routing(r.experts, r.gates, t);
            layer.permute(dx.p, t);
            layer.experts();
            layer.combine_backward(dgrad.p, t);
            layer.experts_backward();  // the rows' gradients permute's backward reads
            row(out, "combine_bwd", c, t, d, &r, time_it([&] { layer.combine_backward(dgrad.p, t); }, repeats, st));
            row(out, "permute_bwd", c, t, d, &r, time_it([&] { layer.permute_backward(t, ddx.p); }, repeats, st));
          }
          out.flush();
          done(t, "router, permute and combine backward");
        }
        for (const int t : backward ? sweep : std::vector<int>{}) {
          // The whole backward pass after a forward pass on the router's routing.
          layer.forward(dx.p, t, dout.p);
          const Routing own = layer.routing(t);
          row(out, "layer_bwd", c, t, "router", &own,
              time_it([&] { layer.backward(dx.p, dgrad.p, t, ddx.p); }, repeats, st), name(layer.last_expert_gemm()));
          out.flush();
          done(t, "whole layer backward");
        }
        for (const int t : backward ? std::vector<int>{} : sweep) {
          row(out, "router", c, t, "-", nullptr, time_it([&] { layer.router(dx.p, t); }, repeats, st));
          for (const auto& d : dists) {
            const Routing r = generated_routing(c, t, d, 5);
            layer.set_routing(r.experts, r.gates, t);
            row(out, "permute", c, t, d, &r, time_it([&] { layer.permute(dx.p, t); }, repeats, st));
            layer.experts();  // the rows combine reads
            row(out, "combine", c, t, d, &r, time_it([&] { layer.combine(dout.p, t); }, repeats, st));
          }
          out.flush();
          done(t, "router, permute and combine");
        }
        for (const int t : backward ? std::vector<int>{} : sweep) {
          const Timing whole = time_it([&] { layer.forward(dx.p, t, dout.p); }, repeats, st);
          const Routing own = layer.routing(t);
          row(out, "layer", c, t, "router", &own, whole, name(layer.last_expert_gemm()));
          out.flush();
          done(t, "whole layer");
        }
        if (heldout.is_open()) {
          // The whole layer end to end on token counts and routings the sweep does not have:
          // generated distributions forced after the (still timed) router, and the router's own
          // choice on clustered tokens.
          const std::vector<bf16_bits> xc = clustered_tokens(c, std::min(max_tokens, heldout_tokens.back()), 64, 1.0, 9);
          DeviceTokens dxc(xc);
          for (int pass = 1; pass <= passes; ++pass)
          for (const int t : heldout_tokens) {
            if (t > max_tokens) break;
            for (const std::string d : {"zipf:1.0", "hot:0.3", "zipf:0.5", "clustered"}) {
              const bool own = d == "clustered";
              const __nv_bfloat16* in = own ? dxc.p : dx.p;
              Routing r;
              if (own) {
                layer.clear_forced_routing();
                layer.router(in, t);
                r = layer.routing(t);
              } else {
                r = generated_routing(c, t, d, 8);
                layer.force_routing(r.experts, r.gates, t);
              }
              if (backward) {
                // The backward pass after one forward pass on this routing.
                layer.forward(in, t, dout.p);
                row(heldout, "layer_bwd", c, t, d, &r,
                    time_it([&] { layer.backward(in, dgrad.p, t, ddx.p); }, repeats, st), name(layer.last_expert_gemm()));
                continue;
              }
              const Timing whole = time_it([&] { layer.forward(in, t, dout.p); }, repeats, st);
              row(heldout, "layer", c, t, d, &r, whole, name(layer.last_expert_gemm()));
              if (stages.is_open()) {
                int top = 0, active = 0;
                for (const int n : r.counts) top = std::max(top, n), active += n > 0;
                const double ru = time_it([&] { layer.router(in, t); }, repeats, st).median;
                const double pu = time_it([&] { layer.permute(in, t); }, repeats, st).median;
                const double eu = time_it([&] { layer.experts(); }, repeats, st).median;
                const double cu = time_it([&] { layer.combine(dout.p, t); }, repeats, st).median;
                stages << pass << ',' << c.name << ',' << t << ',' << d << ',' << top << ',' << active << ',' << whole.median
                       << ',' << whole.p10 << ',' << whole.p90 << ',' << ru << ',' << pu << ',' << eu << ',' << cu << ','
                       << name(layer.last_expert_gemm()) << '\n';
                stages.flush();
              }
            }
            layer.clear_forced_routing();
            heldout.flush();
          }
          std::printf("%s %-8s held-out layer timings done\n", now_utc().c_str(), s.c_str());
        }
      }
      // The experts stage as one GPU of an EP group runs it: `local` experts of the shape,
      // `rows` token rows spread over them by each distribution (top_k 1: a row is an assignment).
      const auto h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
      const auto local_config = [&](int local) {
        Config cl = c;
        cl.experts = local, cl.top_k = 1, cl.groups = 1, cl.max_groups = 0, cl.capacity_factor = 0;
        return cl;
      };
      // The first `local` experts' weights of the shape's, read in place (no host copy); a
      // router of zeros (unused: the routing is set).
      const std::vector<bf16_bits> local_router(h * static_cast<std::size_t>(c.experts), float_to_bf16(0.0f));
      const std::vector<float> local_bias(static_cast<std::size_t>(c.experts), 0.0f);
      const auto local_weights = [&](int local) {
        const auto l = static_cast<std::size_t>(local);
        WeightsView wl;
        wl.router = {local_router.data(), h * l};
        wl.bias = {local_bias.data(), l};
        wl.gate_up = {w.gate_up.data(), l * h * 2 * f};
        wl.down = {w.down.data(), l * f * h};
        return wl;
      };
      const auto local_max_rows = [&](const Config& cl) {
        int max_rows = 1;
        for (int r = 1; r <= max_tokens * c.top_k; r *= 2)
          if (bytes_needed(cl, r, backward) < free_bytes * 0.8) max_rows = r;
        return max_rows;
      };
      if (heldout.is_open() && !experts_only) {
        // Held-out: the expert stage on local-expert counts the sweep does not have, at the
        // held-out counts as rows, under the held-out distributions.
        for (const int local : *heldout_experts) {
          if (local >= c.experts) continue;
          const Config cl = local_config(local);
          const int max_rows = local_max_rows(cl);
          Layer layer(cl, local_weights(local), max_rows);
          DeviceTokens dx(cl, max_rows, 4);
          for (const int rows : heldout_tokens) {
            if (rows > max_rows) break;
            for (const std::string d : {"zipf:1.0", "hot:0.3", "zipf:0.5"}) {
              const Routing r = generated_routing(cl, rows, d, 8);
              layer.set_routing(r.experts, r.gates, rows);
              layer.permute(dx.p, rows);
              const Timing tm = time_it([&] { layer.experts(); }, repeats, layer.stream());
              row(heldout, "experts", cl, rows, d, &r, tm, name(layer.last_expert_gemm()));
            }
          }
          heldout.flush();
          std::printf("%s %-8s held-out expert stage with %d local experts done\n", now_utc().c_str(), s.c_str(), local);
        }
      }
      for (int local = c.experts; local >= 1 && !heldout_only; local = local > 32 ? 32 : local / 2) {
        if (!locals->empty() && std::find(locals->begin(), locals->end(), local) == locals->end()) continue;
        const Config cl = local_config(local);
        const int max_rows = local_max_rows(cl);
        Layer layer(cl, local_weights(local), max_rows);
        DeviceTokens dx(cl, max_rows, 4);
        DeviceTokens dgrad(cl, backward ? max_rows : 1, 7);  // the rows' output gradient, for the expert stage's backward
        for (const int rows : grid(max_rows, dense)) {
          for (const auto& d : local > 1 ? dists : std::vector<std::string>{"uniform"}) {
            const Routing r = generated_routing(cl, rows, d, 6);
            layer.set_routing(r.experts, r.gates, rows);
            layer.permute(dx.p, rows);
            if (backward) {
              // After the forward stage (the activations it reads) and the combine's backward
              // (the rows' gradients, top_k 1: a row per assignment).
              layer.experts();
              layer.combine_backward(dgrad.p, rows);
              const Timing tm = time_it([&] { layer.experts_backward(); }, repeats, layer.stream());
              row(out, "experts_bwd", cl, rows, d, &r, tm, name(layer.last_expert_gemm()));
              continue;
            }
            if (ab.is_open() && d == "uniform") {
              double us[2];
              for (const ExpertGemm g : {ExpertGemm::grouped, ExpertGemm::loop}) {
                layer.set_expert_gemm(g);
                us[g == ExpertGemm::loop] = time_it([&] { layer.experts(); }, repeats, layer.stream()).median;
              }
              layer.set_expert_gemm(ExpertGemm::automatic);
              ab << c.name << ',' << c.hidden << ',' << c.ffn << ',' << local << ',' << rows << ',' << us[0] << ',' << us[1] << '\n';
            }
            const Timing tm = time_it([&] { layer.experts(); }, repeats, layer.stream());
            row(out, "experts", cl, rows, d, &r, tm, name(layer.last_expert_gemm()));
          }
        }
        out.flush();
        ab.flush();
        std::printf("%s %-8s experts stage%s with %d local experts done\n", now_utc().c_str(), s.c_str(),
                    backward ? " (backward)" : "", local);
        if (local == 1 && !backward) {
          // The dense bf16 GEMM of the gate/up projection's size (rows x H by H x 2F), on random
          // operands, for the grouped GEMMs' efficiency: a row "dense_gemm" per row count.
          cublasHandle_t blas = nullptr;
          check(cublasCreate(&blas), "cublasCreate");
          __nv_bfloat16 *a = nullptr, *b = nullptr, *cc = nullptr;
          check(cudaMalloc(&a, h * 2 * f * sizeof(__nv_bfloat16)), "dense GEMM");
          check(cudaMalloc(&b, static_cast<std::size_t>(max_rows) * h * sizeof(__nv_bfloat16)), "dense GEMM");
          check(cudaMalloc(&cc, static_cast<std::size_t>(max_rows) * 2 * f * sizeof(__nv_bfloat16)), "dense GEMM");
          check(cudaMemcpy(a, w.gate_up.data(), h * 2 * f * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice), "dense GEMM");
          check(cudaMemcpy(b, dx.p, static_cast<std::size_t>(max_rows) * h * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice), "dense GEMM");
          const float one = 1, zero = 0;
          for (int rows = 1; rows <= max_rows; rows *= 2)
            row(out, "dense_gemm", cl, rows, "-", nullptr, time_it([&] {
                  check(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, 2 * c.ffn, rows, c.hidden, &one, a, CUDA_R_16BF,
                                     2 * c.ffn, b, CUDA_R_16BF, c.hidden, &zero, cc, CUDA_R_16BF, 2 * c.ffn,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "dense GEMM");
                }, repeats, nullptr));
          cudaFree(a);
          cudaFree(b);
          cudaFree(cc);
          cublasDestroy(blas);
          break;
        }
      }
      if (late.is_open() && !experts_only && !heldout_only) {
        // The sweep's whole-layer rows again, minutes later, after the expert-stage sweep: the
        // same layer, routing and token counts, so any difference is the card's state (clocks,
        // power, temperature), which the stage rows timed in between share.
        Layer layer(c, w, max_tokens);
        DeviceTokens dx(c, max_tokens, 3), dout(c, max_tokens, 3);
        for (const int t : grid(max_tokens, dense)) {
          const Timing whole = time_it([&] { layer.forward(dx.p, t, dout.p); }, repeats, layer.stream());
          const Routing own = layer.routing(t);
          row(late, "layer", c, t, "router", &own, whole, name(layer.last_expert_gemm()));
        }
        late.flush();
        std::printf("%s %-8s whole layer timed again\n", now_utc().c_str(), s.c_str());
      }
      std::printf("%s %-8s done in %.0f s (%d warm-ups of the GPU after pauses, %.1f s in all; %d heavy measurements "
                  "brought to the sustained state, %.1f s in all; %d light ones settled after heavy work, %.1f s)\n",
                  now_utc().c_str(), s.c_str(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                  warm_ups.count - warm_ups_before.count, warm_ups.seconds - warm_ups_before.seconds,
                  sustains.count - sustains_before.count, sustains.seconds - sustains_before.seconds,
                  settles.count - settles_before.count, settles.seconds - settles_before.seconds);
    }
    std::printf("moe-profile: wrote %s\n", out_path.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-profile: %s\n", e.what());
    return 1;
  }
  return 0;
}
