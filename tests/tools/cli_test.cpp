#include <catch2/catch.hpp>

#include <fmt/format.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

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

// The fields of an all-numeric CSV row (an empty last one too).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> v;
  std::stringstream ss(line);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(x);
  if (!line.empty() && line.back() == ',') v.emplace_back();
  return v;
}

// A one-row report (summary.csv) as column -> value.
std::map<std::string, std::string> summary_row(const fs::path& file) {
  std::ifstream in(file);
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  const auto h = csv_fields(header), v = csv_fields(row);
  std::map<std::string, std::string> out;
  for (std::size_t i = 0; i < h.size() && i < v.size(); ++i) out[h[i]] = v[i];
  return out;
}

std::vector<std::int64_t> csv_numbers(const std::string& line) {
  std::vector<std::int64_t> v;
  std::stringstream ss(line);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoll(x));
  return v;
}

}  // namespace

TEST_CASE("moesim run with no scenario runs the quickstart and matches the golden reports", "[cli][golden]") {
  TempDir tmp;
  // Twice: the second run must reproduce the first byte for byte.
  for (const char* dir : {"a", "b"}) {
    const auto r = moesim(std::string("run --out '") + (tmp.path() / dir).string() + "'", tmp);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Catch::Contains("step time"));
    CHECK_THAT(r.out, Catch::Contains("where the time goes"));
    // The quickstart is an H100 scenario: its kernel times come from the measured profile, and
    // the summary says which.
    CHECK_THAT(r.out, Catch::Contains("compute: profile (measured on NVIDIA H100 80GB HBM3: "
                                      "kernels/profiles/nvidia-h100-80gb-hbm3.csv (built in)); "));
    // ... and for how much of the time, stage by stage: attention has no profile rows.
    CHECK_THAT(r.out, Catch::Matches("[\\s\\S]*% of GPU [0-9]+'s compute time from the profile, the rest from the roofline\n[\\s\\S]*"));
    CHECK_THAT(r.out, Catch::Matches("[\\s\\S]*\n    experts +[0-9.]+ ms +[0-9.]+%  \\(profile\\)\n[\\s\\S]*"));
    CHECK_THAT(r.out, Catch::Matches("[\\s\\S]*\n    attention +[0-9.]+ ms +[0-9.]+%  \\(roofline\\)\n[\\s\\S]*"));
  }
  for (const char* file : {"summary.csv", "layers.csv", "links.csv", "experts.csv", "gpus.csv"}) {
    INFO(file << " (regenerate with tools/regen-golden.sh and review the diff)");
    const std::string a = slurp(tmp.path() / "a" / file);
    CHECK(a == slurp(tmp.path() / "b" / file));
    CHECK(a == slurp(fs::path(kSource) / "tests" / "golden" / "quickstart" / file));
  }
}

TEST_CASE("Every scenario of the library loads (grids: their base and every point)", "[cli]") {
  // A scenario or grid file changed in a way the loader refuses (a renamed key, a bad value)
  // fails here rather than for the first reader who runs it.
  TempDir tmp;
  int scenarios = 0, grids = 0;
  for (const auto& dir : {"scenarios", "scenarios/validation", "scenarios/studies/attention-tp", "scenarios/studies/blackwell-decode",
                          "scenarios/studies/ep-redundancy", "scenarios/studies/speculative", "scenarios/studies/sliding-window",
                          "scenarios/studies/sparse-attention", "scenarios/studies/decode-contexts",
                          "scenarios/studies/linear-attention"}) {
    for (const auto& entry : fs::directory_iterator(fs::path(kSource) / dir)) {
      if (entry.path().extension() != ".yaml") continue;
      const std::string text = slurp(entry.path());
      INFO(entry.path().string());
      if (text.find("\nbase: ") != std::string::npos || text.rfind("base: ", 0) == 0) {
        // A grid: validate checks every point, as a sweep does before it runs any.
        const auto r = moesim("validate '" + entry.path().string() + "'", tmp);
        CHECK(r.code == 0);
        CHECK_THAT(r.out, Catch::Contains(": ok (a sweep grid of "));
        ++grids;
      } else {
        const auto r = moesim("validate '" + entry.path().string() + "'", tmp);
        CHECK(r.code == 0);
        CHECK_THAT(r.out, Catch::Contains(": ok ("));
        ++scenarios;
      }
    }
  }
  CHECK(scenarios >= 20);
  CHECK(grids >= 6);
}

TEST_CASE("moesim validate accepts good files and rejects bad ones with exit code 2", "[cli]") {
  TempDir tmp;
  const auto ok = moesim("validate '" + kSource + "/scenarios/deepseek-v3-h800.yaml'", tmp);
  CHECK(ok.code == 0);
  // DeepSeek-V3 without its embedding and LM head: 58 MoE layers of 11,507,269,632 (attention
  // 187,105,280, router 1,835,008, 257 experts of 44,040,192) and 3 dense layers of 583,467,008
  // (attention and 3 x 7168 x 18432): 669.17 B; a token uses the attention, the router and 9
  // experts of each MoE layer and the dense layers: 35.70 B.
  CHECK_THAT(ok.out, Catch::Contains("ok (256 x H800-SXM, 256 experts top-8, EP64, 58 MoE layers; 669.2 B parameters, 35.7 B active per token)"));
  // Mixtral-8x7B with its embedding and LM head: 32 layers of attention 4096 x (4096 + 2 x 1024)
  // + 4096 x 4096 = 41,943,040, router 32,768 and 8 experts of 176,160,768, and 2 x 32000 x 4096:
  // 46,702,526,464, Mixtral's published 46.7 B; a token: the attention, the router and 2 experts
  // of each layer and the LM head, 12.75 B (Mixtral's 12.9 B counts the embedding too).
  const auto mixtral = moesim("validate '" + kSource + "/scenarios/mixtral-8x7b-training-h100.yaml'", tmp);
  CHECK_THAT(mixtral.out, Catch::Contains("EP8, 32 MoE layers; 46.7 B parameters, 12.7 B active per token)"));

  // The models of the Qwen3 and GPT-OSS validation scenarios as their model cards give them:
  // Qwen3-235B-A22B and Qwen3-30B-A3B (with their untied LM heads), GPT-OSS-120B's 116.8 B, 5.1 B
  // active.
  const auto qwen = moesim("validate '" + kSource + "/scenarios/validation/qwen3-235b-training-h100.yaml'", tmp);
  CHECK_THAT(qwen.out, Catch::Contains("EP32, 94 MoE layers; 235.1 B parameters, 21.6 B active per token)"));
  const auto oss = moesim("validate '" + kSource + "/scenarios/gpt-oss-120b-decode-h100.yaml'", tmp);
  CHECK_THAT(oss.out, Catch::Contains("EP8, 36 MoE layers; 116.8 B parameters, 5.1 B active per token)"));

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

TEST_CASE("moesim check-profile checks measured layers against the profile, or the profile against itself", "[cli][profile]") {
  TempDir tmp;
  const std::string heldout = "'" + kSource + "/kernels/profiles/h100-measure/heldout.csv'";
  const auto loose = moesim("check-profile " + heldout + " --median 5 --worst 25", tmp);
  CHECK(loose.code == 0);
  CHECK_THAT(loose.out, Catch::Contains("96 cases: median error"));
  CHECK_THAT(loose.out, Catch::Contains("shape      tokens routing"));  // the per-case table
  const auto tight = moesim("check-profile " + heldout + " --median 0.5 -q", tmp);
  CHECK(tight.code == 1);
  CHECK_THAT(tight.out, Catch::Contains("FAILED"));
  CHECK_THAT(tight.out, !Catch::Contains("shape      tokens routing"));
  const auto loo = moesim("check-profile --leave-one-out -q", tmp);
  CHECK(loo.code == 0);
  CHECK_THAT(loo.out, Catch::Contains("each row predicted from the profile without it"));
  for (const char* kernel : {"router ", "permute ", "experts ", "combine ", "all "}) CHECK_THAT(loo.out, Catch::Contains(kernel));
  CHECK_THAT(loo.out, !Catch::Contains("worst:"));
  // docs/validation.md quotes this table: every line of it, as printed.
  const std::string doc = slurp(kSource + "/docs/validation.md");
  std::istringstream lines(loo.out);
  std::string line;
  std::getline(lines, line);  // the file name
  while (std::getline(lines, line))
    if (!line.empty()) CHECK_THAT(doc, Catch::Contains(line));
  // ... and the held-out summary line at the default bounds, the profile's own layer rows
  // against the composed stages, and the tables across distributions and expert counts.
  const auto summary = moesim("check-profile " + heldout + " -q", tmp);
  REQUIRE(!summary.out.empty());
  CHECK_THAT(doc, Catch::Contains(summary.out.substr(0, summary.out.find('\n'))));
  const auto self = moesim("check-profile '" + kSource + "/kernels/profiles/nvidia-h100-80gb-hbm3.csv' -q", tmp);
  REQUIRE(!self.out.empty());
  CHECK_THAT(doc, Catch::Contains(self.out.substr(0, self.out.find('\n'))));
  CHECK_THAT(self.out, Catch::Contains("expert-stage cases (the stage alone; no bounds)"));
  for (const auto& [option, title] : {std::pair{"--leave-one-distribution-out", "predicted from the other distributions alone"},
                                      {"--leave-one-expert-count-out", "predicted from the local-expert counts on either side"}}) {
    const auto across = moesim(std::string("check-profile -q ") + option, tmp);
    CHECK(across.code == 0);
    CHECK_THAT(across.out, Catch::Contains(title));
    std::istringstream table(across.out);
    std::getline(table, line);  // the file name
    int shapes = 0;
    while (std::getline(table, line))
      if (!line.empty()) {
        CHECK_THAT(doc, Catch::Contains(line));
        ++shapes;
      }
    CHECK(shapes == 5);  // the header, three shapes, all
  }
  const auto both = moesim("check-profile " + heldout + " --leave-one-out", tmp);
  CHECK(both.code == 2);
  CHECK_THAT(both.err, Catch::Contains("takes no measured timings file"));
  // Expert-stage rows at a local-expert count the sweep does not have (moe-profile
  // --heldout-experts) are predicted as the stage alone and summarised on their own line; the
  // bounds stay on the whole layers. (The timing here is made up: only the report is checked.)
  {
    std::ofstream f(tmp.path() / "experts.csv");
    f << "kernel,shape,hidden,ffn,experts,top_k,tokens,distribution,max_expert_tokens,active_experts,median_us,p10_us,p90_us,"
         "row_tiles\nexperts,deepseek,7168,2048,5,1,4096,uniform,820,5,700,690,710,66\n";
  }
  const auto stage = moesim("check-profile '" + (tmp.path() / "experts.csv").string() + "'", tmp);
  CHECK(stage.code == 0);
  CHECK_THAT(stage.out, Catch::Contains("1 expert-stage cases (the stage alone; no bounds): median error"));
  CHECK_THAT(stage.out, Catch::Contains("shape     experts    rows routing"));
  CHECK_THAT(stage.out, !Catch::Contains("(bound"));
  const auto two = moesim("check-profile --leave-one-out --leave-one-distribution-out", tmp);
  CHECK(two.code == 2);
  CHECK_THAT(two.err, Catch::Contains("takes one of"));
  const auto with_file = moesim("check-profile " + heldout + " --leave-one-expert-count-out", tmp);
  CHECK(with_file.code == 2);
  CHECK_THAT(with_file.err, Catch::Contains("takes no measured timings file"));
  // Measured layers may repeat a case (two passes); a profile may not.
  const auto repeated = moesim("check-profile '" + kSource + "/kernels/profiles/h100-measure/earlier-router/heldout-repeat.csv' -q --median 100 --worst 100", tmp);
  CHECK(repeated.code == 0);
  CHECK_THAT(repeated.out, Catch::Contains("192 cases"));
  // ... or, with --median-of-repeats, count once at the median of their timings: a file timing
  // every case twice alike gives the single file's figures.
  const auto combined = moesim("check-profile '" + kSource + "/kernels/profiles/h100-measure/earlier-router/heldout-repeat.csv' -q --median 100 --worst 100 --median-of-repeats", tmp);
  CHECK(combined.code == 0);
  CHECK_THAT(combined.out, Catch::Contains("96 cases (each the median of its timings, up to 2 a case): median error"));
  {
    const std::string once = slurp(kSource + "/kernels/profiles/h100-measure/heldout.csv");
    std::ofstream f(tmp.path() / "twice.csv");
    f << once << once.substr(once.find("\nlayer,") + 1);  // the rows again, without the header
  }
  const auto alike = moesim("check-profile '" + (tmp.path() / "twice.csv").string() + "' -q --median-of-repeats", tmp);
  const auto single = moesim("check-profile " + heldout + " -q", tmp);
  REQUIRE(single.out.find(": median error") != std::string::npos);
  REQUIRE(alike.out.find(": median error") != std::string::npos);
  CHECK(alike.out.substr(alike.out.find(": median error")) == single.out.substr(single.out.find(": median error")));
  const auto twice = moesim("check-profile --leave-one-out --profile '" + kSource + "/kernels/profiles/h100-measure/earlier-router/heldout-repeat.csv'", tmp);
  CHECK(twice.code == 2);
  CHECK_THAT(twice.err, Catch::Contains("is already measured on line"));
  // --coverage: what the profile measures, shape by shape.
  const auto coverage = moesim("check-profile --coverage", tmp);
  CHECK(coverage.code == 0);
  CHECK_THAT(coverage.out, Catch::Contains("1606 rows, measured on NVIDIA H100 80GB HBM3"));
  CHECK_THAT(coverage.out, Catch::Matches("[\\s\\S]*\ndeepseek +7168 +2048 experts +1,2,4,8,16,32,256 +1 +1-524288 +500  "
                                          "hot:0.5,uniform,zipf:0.8,zipf:1.2\n[\\s\\S]*"));
  CHECK_THAT(coverage.out, Catch::Contains("backward pass: not measured (no _bwd rows)"));
  CHECK(moesim("check-profile " + heldout + " --coverage", tmp).code == 2);
  // --roofline: the roofline's stages against the measured ones, row by row, then per stage.
  // DeepSeek-V3's router at 65,536 tokens on the H100's datasheet (989.4 TFLOP/s x 0.7, 3.35 TB/s
  // x 0.85): its 1,010,302,976 bytes (weights, tokens, fp32 logits) take 354.8 us, more than its
  // 240.5 GFLOP; the permutation apart, 2 B x 65,536 x 7168 x (1 + 8) = 8,455,716,864 bytes, 2969.5
  // us more: 3324.3 us against the measured router and permute's 6181.9.
  const auto roofline = moesim("check-profile --roofline --from-tokens 65536", tmp);
  CHECK(roofline.code == 0);
  CHECK_THAT(roofline.out, Catch::Matches("[\\s\\S]*\nrouter +deepseek +65536 +256 +6181\\.9 +354\\.8 +3324\\.3 +17\\.42 +1\\.86\n[\\s\\S]*"));
  CHECK_THAT(roofline.out, Catch::Contains("from 65536 tokens"));
  CHECK(moesim("check-profile " + heldout + " --roofline", tmp).code == 2);
  const auto no_gpu = moesim("check-profile --roofline --gpu H900", tmp);
  CHECK(no_gpu.code == 2);
  CHECK(moesim("check-profile --roofline --from-tokens 100000000", tmp).code == 2);
  const auto neither = moesim("check-profile", tmp);
  CHECK(neither.code == 2);
  CHECK_THAT(neither.err, Catch::Contains("needs the measured timings file"));
}

TEST_CASE("A run the profile does not cover says what the profile measures", "[cli][profile]") {
  TempDir tmp;
  const std::string out = " --out '" + (tmp.path() / "r").string() + "'";
  const auto covered = moesim("run --set model.moe_layers=2" + out, tmp);
  CHECK(covered.code == 0);
  CHECK_THAT(covered.out, !Catch::Contains("  profile     "));
  const auto other = moesim("run --set model.moe_layers=2 --set model.hidden=5120 --set model.expert_ffn=1536" + out, tmp);
  CHECK(other.code == 0);
  CHECK_THAT(other.out, Catch::Contains("compute: roofline"));
  CHECK_THAT(other.out, Catch::Contains("measures H 1024 F 2048 E 16 k 2; H 4096 F 14336 E 8 k 2; H 7168 F 2048 E 256 k 8; "
                                        "this model, H 5120 F 1536 E 8 k 2, is not among them"));
  const auto beyond = moesim("run --set model.moe_layers=2 --set workload.tokens_per_gpu=100000" + out, tmp);
  CHECK(beyond.code == 0);
  CHECK_THAT(beyond.out, Catch::Contains("this shape is measured up to 65536 tokens, the expert stage on 1,2,4,8 local experts up "
                                         "to 131072 rows; the stage times beyond that are the roofline's"));
  // Expert tensor parallelism: the quickstart's EP8 as EP4 with each expert over 2 GPUs, whose
  // half-width shard the profile does not measure.
  const auto shard = moesim("run --set model.moe_layers=2 --set parallelism.ep=4 --set parallelism.etp=2" + out, tmp);
  CHECK(shard.code == 0);
  CHECK_THAT(shard.out, Catch::Contains("EP4, ETP2 (each expert over 2 GPUs)"));
  CHECK_THAT(shard.out, Catch::Contains("this shape is measured up to 65536 tokens, but not its experts' shard with parallelism.etp 2 "
                                        "(H 4096 F 7168): the expert stage is the roofline's"));
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

TEST_CASE("moesim flows replays a flow list with max-min sharing", "[cli][flows]") {
  TempDir tmp;
  {
    std::ofstream f(tmp.path() / "flows.csv");
    // Two flows out of GPU 0 share its 450 GB/s NVLink port: 1 MB at 225 GB/s is 4.444... us,
    // after 2 x 0.5 us of NVLink latency. The third starts later and alone.
    f << "src,dst,bytes,start_us\n0,1,1000000,0\n0,2,1000000,0\n# a comment\n\n4,5,450000,10.25\n";
  }
  const auto r = moesim("flows --scenario '" + kSource + "/scenarios/quickstart.yaml' --flows '" +
                            (tmp.path() / "flows.csv").string() + "' --out '" + (tmp.path() / "out.csv").string() + "'",
                        tmp);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(slurp(tmp.path() / "out.csv") ==
        "flow,src,dst,bytes,start_us,end_us\n"
        "0,0,1,1000000,0.000000,5.444444\n"
        "1,0,2,1000000,0.000000,5.444444\n"
        "2,4,5,450000,10.250000,12.250000\n");
}

TEST_CASE("moesim flows reports bad rows with their line and exit code 2", "[cli][flows]") {
  TempDir tmp;
  const std::vector<std::pair<std::string, std::string>> cases{
      {"src,dst,bytes,start_us\n0,1,10,0\n0,16,10,0\n", ":3: unknown GPU 16"},
      {"src,dst,bytes,start_us\n0,1,-10,0\n", ":2: bytes must not be negative"},
      {"src,dst,bytes,start_us\n0,1,ten,0\n", ":2: bytes must be a whole number, got 'ten'"},
      {"src,dst,bytes,start_us\n0,1,10,soon\n", ":2: start_us must be a number"},
      {"src,dst,bytes,start_us\n0,1,10\n", ":2: expected 4 fields"},
      {"from,to,size\n", ":1: expected the header"},
      {"", "empty flows file"},
  };
  for (const auto& [text, message] : cases) {
    {
      std::ofstream f(tmp.path() / "flows.csv", std::ios::trunc);
      f << text;
    }
    const auto r = moesim("flows --flows '" + (tmp.path() / "flows.csv").string() + "' --out '" +
                              (tmp.path() / "out.csv").string() + "'",
                          tmp);
    INFO(text);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::Contains(message));
    CHECK_FALSE(fs::exists(tmp.path() / "out.csv"));
  }
  const auto missing = moesim("flows --flows '" + (tmp.path() / "nope.csv").string() + "' --out x.csv", tmp);
  CHECK(missing.code == 2);
  CHECK_THAT(missing.err, Catch::Contains("cannot open"));
}

TEST_CASE("experts.csv accounts for every assignment, replica by replica", "[cli][experts]") {
  TempDir tmp;
  {
    std::ofstream f(tmp.path() / "s.yaml");
    f << "cluster:\n  nodes: 2\n  gpus_per_node: 4\n  gpu: H100\n  scale_out:\n    nic_bandwidth: 400Gbps\n"
         "model:\n  moe_layers: 3\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 8\n  top_k: 2\n  attention_heads: 8\n"
         "parallelism:\n  ep: 8\nworkload:\n  tokens_per_gpu: 512\n"
         "routing:\n  distribution: zipf\n  zipf_s: 1.2\n  capacity_factor: 1.5\n"
         "placement:\n  policy: eplb\n  redundant_experts: 8\n";
  }
  const auto r = moesim("run '" + (tmp.path() / "s.yaml").string() + "' -q --out '" + (tmp.path() / "out").string() + "'", tmp);
  INFO(r.err);
  REQUIRE(r.code == 0);
  std::ifstream in(tmp.path() / "out" / "experts.csv");
  std::string line;
  std::getline(in, line);
  CHECK(line ==
        "layer,slot,ep_rank,expert,replica,replicas,replica_computed,expert_routed,expert_computed,expert_dropped,"
        "replica_padded,expert_padded");
  std::map<std::pair<int, int>, std::int64_t> replica_sum, expert_computed;
  std::map<std::pair<int, int>, int> replicas_seen, replicas_said;
  std::int64_t routed = 0, dropped = 0;
  int rows = 0;
  while (std::getline(in, line)) {
    const auto v = csv_numbers(line);
    REQUIRE(v.size() == 12);
    CHECK(v[10] == 0);  // no padding under drop_policy position
    CHECK(v[11] == 0);
    const std::pair<int, int> key{static_cast<int>(v[0]), static_cast<int>(v[3])};
    CHECK(v[2] == v[1] / 2);  // 16 slots on 8 GPUs
    replica_sum[key] += v[6];
    if (replicas_seen[key]++ == 0) {
      expert_computed[key] = v[8];
      routed += v[7];
      dropped += v[9];
    }
    replicas_said[key] = static_cast<int>(v[5]);
    CHECK(v[7] == v[8] + v[9]);  // routed = computed + dropped
    ++rows;
  }
  CHECK(rows == 3 * 16);
  for (const auto& [key, n] : replica_sum) {
    CHECK(n == expert_computed[key]);
    CHECK(replicas_seen[key] == replicas_said[key]);
  }
  CHECK(routed == 3 * 8 * 512 * 2);
  CHECK(dropped > 0);  // Zipf(1.2) against capacity factor 1.5 drops on the hot experts

  // gpus.csv: per-GPU drops and computed rows add up to the experts' totals; stages tile the
  // GPU's time.
  {
    std::ifstream g(tmp.path() / "out" / "gpus.csv");
    std::getline(g, line);
    const auto h = csv_fields(line);
    auto col = [&](const char* name) {
      return static_cast<std::size_t>(std::find(h.begin(), h.end(), name) - h.begin());
    };
    REQUIRE(col("padded") < h.size());
    std::int64_t g_routed = 0, g_dropped = 0, g_computed = 0;
    int n = 0;
    while (std::getline(g, line)) {
      const auto f = csv_fields(line);
      g_routed += std::stoll(f[col("routed")]);
      g_dropped += std::stoll(f[col("dropped")]);
      g_computed += std::stoll(f[col("computed")]);
      double stages = 0;
      for (std::size_t c = col("attention_us"); c < col("routed"); ++c) stages += std::stod(f[c]);
      CHECK(stages == Approx(std::stod(f[col("finish_us")])).epsilon(1e-9));
      ++n;
    }
    CHECK(n == 8);
    CHECK(g_routed == routed);
    CHECK(g_dropped == dropped);
    CHECK(g_computed == routed - dropped);
  }

  // layers.csv's gpu_tokens_cv against the per-GPU totals rebuilt from experts.csv (one EP group).
  std::map<int, std::vector<double>> per_gpu;
  {
    std::ifstream ex(tmp.path() / "out" / "experts.csv");
    std::getline(ex, line);
    while (std::getline(ex, line)) {
      const auto v = csv_numbers(line);
      auto& g = per_gpu[static_cast<int>(v[0])];
      g.resize(8, 0.0);
      g[static_cast<std::size_t>(v[2])] += static_cast<double>(v[6]);
    }
  }
  std::ifstream layers(tmp.path() / "out" / "layers.csv");
  std::getline(layers, line);
  const auto header = csv_fields(line);
  const auto column = static_cast<std::size_t>(std::find(header.begin(), header.end(), "gpu_tokens_cv") - header.begin());
  REQUIRE(column < header.size());
  for (int l = 0; l < 3; ++l) {
    REQUIRE(std::getline(layers, line));
    const double cv = std::stod(csv_fields(line).at(column));
    const auto& g = per_gpu[l];
    double mean = 0, sq = 0;
    for (double x : g) mean += x / 8;
    for (double x : g) sq += (x - mean) * (x - mean) / 8;
    CHECK(cv == Approx(std::sqrt(sq) / mean).margin(1e-4));
  }
}

TEST_CASE("moesim place writes the placement without simulating", "[cli][place]") {
  TempDir tmp;
  {
    std::ofstream f(tmp.path() / "s.yaml");
    f << "cluster:\n  nodes: 1\n  gpus_per_node: 4\n  gpu: H100\n"
         "model:\n  moe_layers: 2\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 8\n  top_k: 2\n  attention_heads: 8\n"
         "parallelism:\n  ep: 4\nworkload:\n  tokens_per_gpu: 512\n"
         "routing:\n  distribution: zipf\n  zipf_s: 1.5\n"
         "placement:\n  policy: eplb\n  redundant_experts: 4\n";
  }
  const auto r = moesim("place '" + (tmp.path() / "s.yaml").string() + "' --out '" + (tmp.path() / "p").string() + "'", tmp);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("8 experts, EP4, 3 slots per GPU, 2 MoE layers"));
  CHECK_THAT(r.out, Catch::Contains("contiguous placement: up to"));
  std::ifstream in(tmp.path() / "p" / "placement.csv");
  std::string line;
  std::getline(in, line);
  CHECK(line == "layer,slot,ep_rank,expert,replica,replicas,expected_share");
  int rows = 0;
  double share = 0;
  while (std::getline(in, line)) {
    ++rows;
    share += std::stod(line.substr(line.rfind(',') + 1));
  }
  CHECK(rows == 2 * 12);
  CHECK(share == Approx(2.0).epsilon(1e-4));  // each layer's shares add up to 1
  CHECK_FALSE(fs::exists(tmp.path() / "p" / "summary.csv"));
}

TEST_CASE("moesim trace writes the routing, and replaying it reproduces the run", "[cli][trace]") {
  TempDir tmp;
  const std::string base =
      "cluster:\n  nodes: 1\n  gpus_per_node: 8\n  gpu: H100\n"
      "model:\n  moe_layers: 3\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 16\n  top_k: 2\n  attention_heads: 8\n"
      "parallelism:\n  ep: 8\nworkload:\n  tokens_per_gpu: 256\n"
      "routing:\n  capacity_factor: 1.2\n  drop_policy: gate\n";
  std::ofstream(tmp.path() / "s.yaml") << base << "  distribution: zipf\n  zipf_s: 1.1\n  layer_correlation: 0.5\n";
  std::ofstream(tmp.path() / "r.yaml") << base << "  distribution: trace\n  trace: tokens.csv\n";
  std::ofstream(tmp.path() / "c.yaml") << base << "  distribution: trace\n  trace: counts.csv\n";
  const auto dir = "'" + tmp.path().string() + "/";
  REQUIRE(moesim("trace " + dir + "s.yaml' -q --out " + dir + "tokens.csv'", tmp).code == 0);
  REQUIRE(moesim("trace " + dir + "s.yaml' -q --counts --out " + dir + "counts.csv'", tmp).code == 0);
  for (const char* s : {"s", "r", "c"})
    REQUIRE(moesim(std::string("run ") + dir + s + ".yaml' -q --out " + dir + s + "'", tmp).code == 0);
  auto read = [&](const std::string& f) {
    std::ifstream in(tmp.path() / f);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  // One EP group: the token trace is the whole run's routing, gates included.
  CHECK(read("s/experts.csv") == read("r/experts.csv"));
  CHECK(read("s/layers.csv") == read("r/layers.csv"));
  // The count trace reproduces the per-expert totals, not the tokens.
  std::map<std::pair<int, int>, std::int64_t> routed_s, routed_c;
  for (const auto& [name, m] : {std::pair{"s", &routed_s}, std::pair{"c", &routed_c}}) {
    std::stringstream ss(read(std::string(name) + "/experts.csv"));
    std::string line;
    std::getline(ss, line);
    while (std::getline(ss, line)) {
      const auto v = csv_numbers(line);
      (*m)[{static_cast<int>(v[0]), static_cast<int>(v[3])}] = v[7];
    }
  }
  CHECK(routed_s == routed_c);
  const auto bad = moesim("trace " + dir + "s.yaml' --group 3 --out " + dir + "x.csv'", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--group 3 is not an EP group of the scenario (0 to 0)"));
  // The binary form replays the same run, and converts to the same CSV and back to the same bytes.
  REQUIRE(moesim("trace " + dir + "s.yaml' -q --binary --out " + dir + "tokens.bin'", tmp).code == 0);
  std::ofstream(tmp.path() / "b.yaml") << base << "  distribution: trace\n  trace: tokens.bin\n";
  REQUIRE(moesim("run " + dir + "b.yaml' -q --out " + dir + "b'", tmp).code == 0);
  CHECK(read("b/experts.csv") == read("r/experts.csv"));
  CHECK(read("b/layers.csv") == read("r/layers.csv"));
  CHECK(fs::file_size(tmp.path() / "tokens.bin") * 2 < fs::file_size(tmp.path() / "tokens.csv"));
  const auto to_csv = moesim("trace --convert " + dir + "tokens.bin' --out " + dir + "back.csv'", tmp);
  REQUIRE(to_csv.code == 0);
  CHECK_THAT(to_csv.out, Catch::Contains(fmt::format("({} tokens of ", 3 * 8 * 256)) && Catch::Contains(", binary to CSV)"));
  CHECK(read("back.csv") == read("tokens.csv"));
  REQUIRE(moesim("trace -q --convert " + dir + "back.csv' --out " + dir + "back.bin'", tmp).code == 0);
  CHECK(read("back.bin") == read("tokens.bin"));
  // What --convert and --binary refuse.
  const auto both = moesim("trace " + dir + "s.yaml' --convert " + dir + "tokens.bin' --out " + dir + "x.csv'", tmp);
  CHECK(both.code == 2);
  CHECK_THAT(both.err, Catch::Contains("trace --convert takes only --out (not scenario)"));
  const auto same = moesim("trace --convert " + dir + "tokens.bin' --out " + dir + "tokens.bin'", tmp);
  CHECK(same.code == 2);
  CHECK_THAT(same.err, Catch::Contains("--out must be another file than the input"));
  const auto counts_bin = moesim("trace " + dir + "s.yaml' --counts --binary --out " + dir + "x.bin'", tmp);
  CHECK(counts_bin.code == 2);
  CHECK_THAT(counts_bin.err, Catch::Contains("--binary is a form of token-level traces"));
  std::ofstream(tmp.path() / "cut.bin") << read("tokens.bin").substr(0, 1000);
  const auto cut = moesim("trace --convert " + dir + "cut.bin' --out " + dir + "x.csv'", tmp);
  CHECK(cut.code == 2);
  CHECK_THAT(cut.err, Catch::Contains("the file ends inside them; it looks truncated"));
  CHECK_FALSE(fs::exists(tmp.path() / "x.csv"));  // nothing written from a bad trace
}

TEST_CASE("The drifting-hotspot scenario shows a stale placement's cost", "[cli][placement]") {
  // Placing by the last 4 steps' counts while the hot experts move is far worse than placing by
  // this step's law, and than the same history without the drift.
  TempDir tmp;
  const std::string text = slurp(fs::path(kSource) / "scenarios" / "drifting-hotspot.yaml");
  auto variant = [&](const std::string& name, const std::vector<std::pair<std::string, std::string>>& edits) {
    std::string s = text;
    for (const auto& [from, to] : edits) {
      const auto at = s.find(from);
      REQUIRE(at != std::string::npos);
      s.replace(at, from.size(), to);
    }
    std::ofstream(tmp.path() / (name + ".yaml")) << s;
    const auto r = moesim("run '" + (tmp.path() / (name + ".yaml")).string() + "' -q --out '" + (tmp.path() / name).string() + "'", tmp);
    REQUIRE(r.code == 0);
    return std::stod(summary_row(tmp.path() / name / "summary.csv").at("gpu_imbalance_max"));
  };
  const double stale = variant("stale", {});
  const double fresh = variant("fresh", {{"  load: observed", "  load: expected\n#"}, {"  history: 4\n", ""}});
  const double still = variant("still", {{"  rotate: 2", "  rotate: 0"}});
  INFO("stale " << stale << ", fresh " << fresh << ", still " << still);
  CHECK(stale > 1.8);
  CHECK(fresh < 1.2);
  CHECK(still < 1.2);
}

TEST_CASE("timeline.json holds every stage and flow, and can be switched off", "[cli][timeline]") {
  TempDir tmp;
  const std::string base =
      "cluster:\n  nodes: 2\n  gpus_per_node: 2\n  gpu: H100\n  scale_out:\n    nic_bandwidth: 400Gbps\n"
      "model:\n  moe_layers: 2\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 4\n  top_k: 2\n  attention_heads: 8\n"
      "parallelism:\n  ep: 4\nworkload:\n  tokens_per_gpu: 64\n";
  std::ofstream(tmp.path() / "on.yaml") << base;
  std::ofstream(tmp.path() / "off.yaml") << base << "output:\n  timeline: off\n";
  const auto dir = "'" + tmp.path().string() + "/";
  REQUIRE(moesim("run " + dir + "on.yaml' -q --out " + dir + "on'", tmp).code == 0);
  REQUIRE(moesim("run " + dir + "off.yaml' -q --out " + dir + "off'", tmp).code == 0);
  CHECK_FALSE(fs::exists(tmp.path() / "off" / "timeline.json"));
  const std::string json = slurp(tmp.path() / "on" / "timeline.json");
  REQUIRE(json.rfind("{\"displayTimeUnit\":\"ns\"", 0) == 0);
  CHECK(json.substr(json.size() - 4) == "\n]}\n");
  auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (auto at = json.find(what); at != std::string::npos; at = json.find(what, at + 1)) ++n;
    return n;
  };
  // Every flow opens and closes once; the flows match layers.csv.
  std::ifstream layers(tmp.path() / "on" / "layers.csv");
  std::string line;
  std::getline(layers, line);
  const auto h = csv_fields(line);
  const auto flows_col = static_cast<std::size_t>(std::find(h.begin(), h.end(), "flows") - h.begin());
  std::size_t flows = 0;
  while (std::getline(layers, line)) flows += std::stoull(csv_fields(line).at(flows_col));
  CHECK(flows > 0);
  CHECK(count("\"ph\":\"b\"") == flows);
  CHECK(count("\"ph\":\"e\"") == flows);
  // Each of 4 GPUs x 2 layers has at least attention, router, experts and reduce.
  CHECK(count("\"name\":\"attention\"") == 8);
  CHECK(count("\"name\":\"experts\"") == 8);
  CHECK(count("\"ph\":\"X\"") >= 32);
  // Per GPU a compute and a sends track, per busy link one more.
  const auto links_busy = count("\"cat\":\"link\"");
  CHECK(links_busy > 0);
  CHECK(count("\"name\":\"thread_name\"") > 8);
  // The links' busy intervals add up to links.csv's busy time.
  double busy_json = 0;
  for (auto at = json.find("\"cat\":\"link\""); at != std::string::npos; at = json.find("\"cat\":\"link\"", at + 1)) {
    const auto d = json.find("\"dur\":", at);
    busy_json += std::stod(json.substr(d + 6));
  }
  std::ifstream links(tmp.path() / "on" / "links.csv");
  std::getline(links, line);
  const auto lh = csv_fields(line);
  const auto busy_col = static_cast<std::size_t>(std::find(lh.begin(), lh.end(), "busy_us") - lh.begin());
  double busy_csv = 0;
  while (std::getline(links, line)) busy_csv += std::stod(csv_fields(line).at(busy_col));
  CHECK(busy_json == Approx(busy_csv).margin(1e-5 * static_cast<double>(links_busy)));
}

TEST_CASE("The DeepEP validation scenarios reproduce docs/validation.md", "[cli][validation]") {
  TempDir tmp;
  const std::string v = "'" + kSource + "/scenarios/validation/";
  // Mean per-GPU waits (layers.csv) for one dispatch and one combine, as the tables give them
  // to 0.1 us: normal kernels by default, forwarding in 16 chunks, and with NVLink at 160 GB/s too.
  struct Case {
    const char* file;
    double dispatch_us, combine_us;
  };
  const std::string one = " --set cluster.nodes=1 --set cluster.scale_out=null --set parallelism.ep=8";
  const std::string two = " --set cluster.nodes=2 --set parallelism.ep=16";
  const std::string chunks = " --set network.forward_chunks=16", nvlink = " --set cluster.node.nvlink_bandwidth=160GB/s";
  const std::vector<std::pair<std::string, Case>> cases = {
      {one, {"deepep-normal.yaml", 704.9, 1374.8}},
      {one + nvlink, {"deepep-normal.yaml", 881.1, 1719.7}},
      {two, {"deepep-normal.yaml", 1043.6, 2860.7}},
      {two + chunks, {"deepep-normal.yaml", 873.8, 1778.0}},
      {two + chunks + nvlink, {"deepep-normal.yaml", 1094.1, 2197.6}},
      {"", {"deepep-normal.yaml", 2380.5, 5093.3}},
      {chunks, {"deepep-normal.yaml", 1696.4, 3324.9}},
      {chunks + nvlink, {"deepep-normal.yaml", 1707.9, 3357.8}},
      {" --set cluster.nodes=8 --set parallelism.ep=64 --set routing.groups=8", {"deepep-normal.yaml", 2986.8, 6077.3}},
      {one, {"deepep-low-latency.yaml", 34.5, 67.8}},
      {one + nvlink, {"deepep-low-latency.yaml", 43.0, 85.1}},
      {"", {"deepep-low-latency.yaml", 81.5, 155.5}},
      {" --set cluster.nodes=4 --set parallelism.ep=32", {"deepep-low-latency.yaml", 122.9, 269.7}},
  };
  int i = 0;
  for (const auto& [sets, c] : cases) {
    const auto out = tmp.path() / std::to_string(i++);
    INFO(c.file << sets);
    REQUIRE(moesim("run " + v + c.file + "'" + sets + " -q --out '" + out.string() + "'", tmp).code == 0);
    const auto layer = summary_row(out / "layers.csv");
    CHECK(std::stod(layer.at("dispatch_wait_mean_us")) == Approx(c.dispatch_us).margin(0.05));
    CHECK(std::stod(layer.at("combine_wait_mean_us")) == Approx(c.combine_us).margin(0.05));
  }
}

TEST_CASE("network.resolve_interval batches max-min re-solves at a cost the interval bounds", "[cli]") {
  // DeepEP's low-latency all-to-all at EP32 (above: 122.9 and 269.7 us exactly, a phase of
  // 1024 flows finishing one by one). Re-solving at most every 100 ns keeps both means within
  // 0.2 %; every 10 us (a twelfth of the dispatch) holds flows back long enough to show.
  TempDir tmp;
  const std::string ll = "run '" + kSource + "/scenarios/validation/deepep-low-latency.yaml' --set cluster.nodes=4 --set parallelism.ep=32";
  const auto layer = [&](const std::string& interval) {
    const auto out = tmp.path() / interval;
    const Result r = moesim(ll + " --set network.resolve_interval=" + interval + " --out '" + out.string() + "'", tmp);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Catch::Contains("network: maxmin (max-min fair sharing of every link, re-solved at most every " + interval + ")"));
    return summary_row(out / "layers.csv");
  };
  const auto fine = layer("100ns");
  CHECK(summary_row(tmp.path() / "100ns" / "summary.csv").at("resolve_interval_us") == "0.100000");
  CHECK(std::stod(fine.at("dispatch_wait_mean_us")) == Approx(122.9).epsilon(0.002));
  CHECK(std::stod(fine.at("combine_wait_mean_us")) == Approx(269.7).epsilon(0.002));
  const auto coarse = layer("10us");
  CHECK(std::stod(coarse.at("dispatch_wait_mean_us")) > 122.9 * 1.05);
  // The analytical model has no rates to re-solve: the setting is accepted and changes nothing.
  const auto a = tmp.path() / "a", b = tmp.path() / "b";
  REQUIRE(moesim(ll + " --set network.model=analytical -q --out '" + a.string() + "'", tmp).code == 0);
  REQUIRE(moesim(ll + " --set network.model=analytical --set network.resolve_interval=10us -q --out '" + b.string() + "'", tmp).code == 0);
  CHECK(summary_row(a / "layers.csv").at("dispatch_wait_mean_us") == summary_row(b / "layers.csv").at("dispatch_wait_mean_us"));
  CHECK(summary_row(b / "summary.csv").at("resolve_interval_us").empty());
  // moesim diff names it among the settings that differ.
  const Result d = moesim("diff '" + (tmp.path() / "100ns").string() + "' '" + (tmp.path() / "10us").string() + "'", tmp);
  CHECK(d.code == 0);
  CHECK_THAT(d.out, Catch::Contains("resolve_interval_us") && Catch::Contains("0.100000  ->  10.000000"));
}

TEST_CASE("The validation scenarios reproduce docs/validation.md", "[cli][validation]") {
  TempDir tmp;
  const std::string v = "'" + kSource + "/scenarios/validation/";
  // DeepSeek's decode bound: 40.32 + 1.2672 (fp8 scales) + 3 us latency; 80.64 + 3 us.
  REQUIRE(moesim("run " + v + "deepseek-decode-bound.yaml' -q --out '" + (tmp.path() / "d").string() + "'", tmp).code == 0);
  const auto summary = summary_row(tmp.path() / "d" / "summary.csv");
  CHECK(summary.at("dispatch_wait_us") == "44.587200");
  CHECK(summary.at("combine_wait_us") == "83.640000");
  // NCCL all-to-all on 8 x H100: 7 x 128 MiB through each 450 GB/s port after 1 us.
  const auto out = (tmp.path() / "a.csv").string();
  REQUIRE(moesim("flows --scenario " + v + "nccl-alltoall-8xh100.yaml' --flows " + v + "nccl-alltoall-8xh100-flows.csv' --out '" +
                     out + "' -q", tmp).code == 0);
  std::ifstream flows(out);
  std::string line, last;
  double end = 0;
  std::getline(flows, line);
  while (std::getline(flows, line)) end = std::max(end, std::stod(csv_fields(line).at(5)));
  CHECK(end == Approx(2088.831324).epsilon(1e-9));
  // DeepSeek-V3's training FLOPs per token at 4096-token sequences. Forward, per token: MLA
  // 2 x 187,105,280 + 4097 x (24,576 + 16,384) = 542,023,680 a layer x 61 = 33,063,444,480;
  // routed and shared experts 9 x 6 x 7168 x 2048 x 58 = 45,977,960,448; routers 2 x 7168 x
  // 256 x 58 = 212,860,928; dense FFNs 3 x 6 x 7168 x 18432 = 2,378,170,368; LM head 2 x 7168 x
  // 129,280 = 1,853,358,080: 83,485,794,304, three times over with the backward's two GEMMs
  // each; plus the reduce (2 x 8 x 7168 x 58 = 6,651,904) forward and backward and the loss
  // (4 x 129,280) once: 250,471,203,840, against the paper's 250 GFLOPs.
  REQUIRE(moesim("run " + v + "deepseek-v3-training-flops.yaml' -q --out '" + (tmp.path() / "f").string() + "'", tmp).code == 0);
  const auto flops = summary_row(tmp.path() / "f" / "summary.csv");
  CHECK(flops.at("dropped") == "0");
  const double per_token = std::stod(flops.at("model_flops")) / std::stod(flops.at("tokens_per_step"));
  CHECK(per_token == 250'471'203'840.0);
  CHECK(per_token / 250e9 == Approx(1).epsilon(0.002));
  // The same model with its attention as multi-head attention of 128 heads of 128: per layer
  // 2 x 7168 x 3 x 16,384 + 2 x 16,384 x 7168 + 2 x 16,384 x 4097 = 1,073,774,592 instead of
  // 542,023,680: 61 x 3 x 531,750,912 more, 347.78 GFLOPs per token.
  std::string text = slurp(fs::path(kSource) / "scenarios" / "validation" / "deepseek-v3-training-flops.yaml");
  const auto from = text.find("  mla:"), to = text.find("  vocab:");
  REQUIRE(from != std::string::npos);
  REQUIRE(to != std::string::npos);
  text.replace(from, to - from, "  head_dim: 128\n");
  std::ofstream(tmp.path() / "mha.yaml") << text;
  REQUIRE(moesim("run '" + (tmp.path() / "mha.yaml").string() + "' -q --out '" + (tmp.path() / "m").string() + "'", tmp).code == 0);
  const auto mha = summary_row(tmp.path() / "m" / "summary.csv");
  CHECK(std::stod(mha.at("model_flops")) / std::stod(mha.at("tokens_per_step")) ==
        per_token + 61.0 * 3 * 531'750'912);
  // With the MTP module: one more MoE layer (MLA 542,023,680, experts 792,723,456, router
  // 3,670,016), the projection 2 x 2 x 7168 x 7168 = 205,520,896 and the head 1,853,358,080, three
  // times over; its reduce (114,688) forward and backward, its loss (517,120) once:
  // 10,192,634,880 more, 260.66 GFLOPs per token.
  REQUIRE(moesim("run " + v + "deepseek-v3-training-flops.yaml' --set model.mtp_modules=1 -q --out '" + (tmp.path() / "t").string() + "'",
                 tmp).code == 0);
  const auto mtp = summary_row(tmp.path() / "t" / "summary.csv");
  CHECK(std::stod(mtp.at("model_flops")) / std::stod(mtp.at("tokens_per_step")) == per_token + 10'192'634'880.0);
  // DeepSeek-V3's speculative decoding: its report gives 85-90 % acceptance and 1.8x the tokens
  // per second; the EP144 decode scenario at 4 sequences per GPU, with and without a draft token.
  const std::string decode = "run '" + kSource + "/scenarios/deepseek-v3-decode-ep144.yaml' --set workload.tokens_per_gpu=4 -q";
  REQUIRE(moesim(decode + " --out '" + (tmp.path() / "n").string() + "'", tmp).code == 0);
  REQUIRE(moesim(decode + " --set workload.draft_tokens=1 --set workload.acceptance_rate=0.85 --out '" + (tmp.path() / "s").string() + "'",
                 tmp).code == 0);
  const double plain_step = std::stod(summary_row(tmp.path() / "n" / "summary.csv").at("step_time_us"));
  const double draft_step = std::stod(summary_row(tmp.path() / "s" / "summary.csv").at("step_time_us"));
  CHECK(1.85 * plain_step / draft_step == Approx(1.676).margin(0.0005));
  CHECK(1.9 * plain_step / draft_step == Approx(1.721).margin(0.0005));
}

TEST_CASE("A GB200 NVL72 rack keeps the decode all-to-all on NVLink; 8-GPU servers send it over their NICs", "[cli][blackwell]") {
  TempDir tmp;
  // The rack scenario cut to 4 layers and 4 sequences per GPU, and the same 72 GPUs as 9 nodes
  // of 8 on 400 Gb/s NICs.
  const std::string rack = "run '" + kSource + "/scenarios/deepseek-v3-decode-gb200-nvl72.yaml' --set model.moe_layers=4 "
                           "--set model.dense_layers=0 --set workload.tokens_per_gpu=4 -q";
  REQUIRE(moesim(rack + " --out '" + (tmp.path() / "rack").string() + "'", tmp).code == 0);
  REQUIRE(moesim(rack + " --set cluster.nodes=9 --set cluster.gpus_per_node=8 "
                        "--set 'cluster.scale_out={nic_bandwidth: 400Gbps}' --out '" + (tmp.path() / "hgx").string() + "'",
                 tmp).code == 0);
  // Bytes per link kind.
  const auto bytes_by_kind = [](const fs::path& file) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);
    std::map<std::string, double> bytes;
    while (std::getline(in, line)) {
      const auto f = csv_fields(line);
      REQUIRE(f.size() >= 7);
      bytes[f[3]] += std::stod(f[6]);
    }
    return bytes;
  };
  const auto on_rack = bytes_by_kind(tmp.path() / "rack" / "links.csv");
  const auto on_hgx = bytes_by_kind(tmp.path() / "hgx" / "links.csv");
  CHECK(on_rack.size() == 1);  // NVLink ports only: the rack has no NICs
  CHECK(on_rack.at("nvlink") > 0);
  CHECK(on_hgx.at("pcie") > on_hgx.at("nvlink"));  // 64 of a GPU's 71 peers are on other nodes
  const auto rack_row = summary_row(tmp.path() / "rack" / "summary.csv");
  const auto hgx_row = summary_row(tmp.path() / "hgx" / "summary.csv");
  CHECK(rack_row.at("gpus") == "72");
  CHECK(rack_row.at("gpu") == "GB200");
  CHECK(hgx_row.at("gpu") == "GB200");  // the rack's GPUs in 8-GPU servers
  CHECK(std::stod(rack_row.at("dispatch_wait_us")) + std::stod(rack_row.at("combine_wait_us")) <
        std::stod(hgx_row.at("dispatch_wait_us")) + std::stod(hgx_row.at("combine_wait_us")));
  CHECK(std::stod(rack_row.at("step_time_us")) < std::stod(hgx_row.at("step_time_us")));
}

TEST_CASE("moesim gpus lists the presets with their figures", "[cli]") {
  TempDir tmp;
  const auto r = moesim("gpus", tmp);
  REQUIRE(r.code == 0);
  for (const char* name : {"H100-SXM", "H800-SXM", "H200-SXM", "A100-SXM", "B200-SXM", "GB200", "B300-SXM", "GB300", "MI300X", "MI325X", "MI355X"})
    CHECK_THAT(r.out, Catch::Contains(std::string("\n") + name + " "));
  CHECK_THAT(r.out, Catch::Contains("NVSwitch, 450 GB/s a GPU"));
  CHECK_THAT(r.out, Catch::Contains("mesh, 7 links of 64 GB/s"));
  CHECK_THAT(r.out, Catch::Contains("1307.4  2614.9"));
  CHECK(moesim("gpus MI300X", tmp).code == 2);
}

TEST_CASE("moesim model prints the model section a config.json gives; a run says where its model came from", "[cli][hf_config]") {
  TempDir tmp;
  const auto r = moesim("model '" + kSource + "/scenarios/models/deepseek-v3.json' --workload decode", tmp);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("(deepseek_v3), for decode: 671.03 B parameters, 36.62 B active per token"));
  CHECK_THAT(r.out, Catch::Contains("; 11.61 B in 1 MTP module"));
  CHECK_THAT(r.out, Catch::Contains("  weight_dtype: fp8"));
  CHECK_THAT(r.out, Catch::Contains("routing:\n  groups: 8"));
  // For training the checkpoint's FP8 is a note, not a key.
  const auto t = moesim("model '" + kSource + "/scenarios/models/deepseek-v3.json' --workload training", tmp);
  CHECK_THAT(t.out, !Catch::Contains("weight_dtype"));
  CHECK_THAT(t.out, Catch::Contains("# - its checkpoint's linear layers are fp8"));
  const auto scenario = moesim("model '" + kSource + "/scenarios/quickstart.yaml'", tmp);
  CHECK(scenario.code == 2);
  CHECK_THAT(scenario.err, Catch::Contains("quickstart.yaml: a moesim scenario, not a model's config.json"));
  std::ofstream(tmp.path() / "dense.json") << R"({"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "model_type": "llama"})";
  const auto bad = moesim("model '" + (tmp.path() / "dense.json").string() + "'", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("dense.json: not an MoE model"));
  CHECK(moesim("model", tmp).code == 2);
  CHECK(moesim("model x.json --workload serving", tmp).code == 2);

  const std::string out = (tmp.path() / "k2").string();
  const auto run = moesim("run '" + kSource + "/scenarios/kimi-k2-decode-h200.yaml' --set cluster.nodes=1 --set parallelism.ep=8 "
                          "--set network.model=analytical --out '" + out + "'", tmp);
  REQUIRE(run.code == 0);
  CHECK_THAT(run.out, Catch::Contains("config      the model's keys from " + kSource + "/scenarios/models/kimi-k2.json (kimi_k2)"));
  CHECK_THAT(run.out, Catch::Contains("1026.4 B parameters, 31.7 B active per token"));
  CHECK_THAT(run.out, Catch::Contains("kimi-k2-decode-h200.yaml (kimi-k2)"));
  const auto k2 = summary_row(fs::path(out) / "summary.csv");
  CHECK(k2.at("model") == "kimi-k2");
  CHECK(k2.at("model_config") == kSource + "/scenarios/models/kimi-k2.json");
  CHECK_THAT(run.out, !Catch::Contains("max_position_embeddings"));
  const auto longer = moesim("run '" + kSource + "/scenarios/kimi-k2-decode-h200.yaml' --set cluster.nodes=1 --set parallelism.ep=8 "
                             "--set network.model=analytical --set workload.tokens_per_gpu=2 --set workload.context_length=131072 --out '" +
                                 out + "'",
                             tmp);
  CHECK_THAT(longer.out, Catch::Contains("131073 tokens of context is more than the 131072 positions the model was built for"));
  const auto validate = moesim("validate '" + kSource + "/scenarios/kimi-k2-decode-h200.yaml' --set model.hf_config=models/llama-4-maverick.json", tmp);
  CHECK(validate.code == 0);
  CHECK_THAT(validate.out, Catch::Contains("  model: from " + kSource + "/scenarios/models/llama-4-maverick.json (llama4_text)\n    - "));
  CHECK_THAT(validate.out, Catch::Contains("400.7 B parameters, 16.1 B active per token"));
}

TEST_CASE("moesim diff compares two runs: the settings that differ, then the figures with B - A and B / A", "[cli][diff]") {
  TempDir tmp;
  const std::string a = (tmp.path() / "a").string(), b = (tmp.path() / "b").string();
  REQUIRE(moesim("run -q --out '" + a + "'", tmp).code == 0);
  REQUIRE(moesim("run -q --set network.model=analytical --set cluster.gpu=H200 --out '" + b + "'", tmp).code == 0);
  const auto ra = summary_row(fs::path(a) / "summary.csv"), rb = summary_row(fs::path(b) / "summary.csv");
  const Result d = moesim("diff '" + a + "' '" + (fs::path(b) / "summary.csv").string() + "'", tmp);  // a directory or a file
  REQUIRE(d.code == 0);
  CHECK_THAT(d.out, Catch::Contains("settings that differ"));
  CHECK_THAT(d.out, Catch::Contains("gpu                      H100-SXM  ->  H200-SXM"));
  CHECK_THAT(d.out, Catch::Contains("network_model            maxmin  ->  analytical"));
  // The step time as the files write it, the difference to their precision, the ratio.
  const double sa = std::stod(ra.at("step_time_us")), sb = std::stod(rb.at("step_time_us"));
  const std::string line = fmt::format("    {:<24} {:>16} {:>16} {:>+16.6f} {:>10.4f}", "step_time_us", ra.at("step_time_us"),
                                       rb.at("step_time_us"), sb - sa, sb / sa);
  CHECK_THAT(d.out, Catch::Contains(line));
  CHECK_THAT(d.out, Catch::Contains("network_bytes"));  // equal figures stay listed
  CHECK(d.out.find("lm_head_us") == std::string::npos);  // zero in both: left out
  CHECK(d.out.find("gpu_memory_gb") == std::string::npos);  // not a listed figure: only with --all
  CHECK_THAT(moesim("diff '" + a + "' '" + b + "' --all", tmp).out, Catch::Contains("gpu_memory_gb"));
  // The same run twice: nothing differs.
  CHECK_THAT(moesim("diff '" + a + "' '" + a + "'", tmp).out, Catch::Contains(": 0 of"));
  // Input errors.
  const Result missing = moesim("diff '" + a + "' '" + (tmp.path() / "nowhere").string() + "'", tmp);
  CHECK(missing.code == 2);
  CHECK_THAT(missing.err, Catch::Contains("cannot read it (give a run's output directory or its summary.csv)"));
  std::ofstream(tmp.path() / "other.csv") << "scenario,x\nq.yaml,1\n";
  const Result other = moesim("diff '" + a + "' '" + (tmp.path() / "other.csv").string() + "'", tmp);
  CHECK(other.code == 2);
  CHECK_THAT(other.err, Catch::Contains("have different columns"));
  std::ofstream(tmp.path() / "junk.csv") << "hello\n";
  CHECK_THAT(moesim("diff '" + a + "' '" + (tmp.path() / "junk.csv").string() + "'", tmp).err, Catch::Contains("not a moesim summary.csv"));
  const Result one = moesim("diff '" + a + "'", tmp);
  CHECK(one.code == 2);
  CHECK_THAT(one.err, Catch::Contains("diff needs two runs"));
}

TEST_CASE("Into a log, run and sweep write a progress line every MOESIM_PROGRESS_EVERY seconds (60 by default)", "[cli][progress]") {
  TempDir tmp;
  // The EP144 decode at 4 sequences: 176 k events (the progress hook runs every 65,536), 2-3 s.
  const std::string decode = "run '" + kSource + "/scenarios/deepseek-v3-decode-ep144.yaml' --set workload.tokens_per_gpu=4 --out '" +
                             (tmp.path() / "d").string() + "'";
  const Result quiet = moesim(decode, tmp);  // the default: a line a minute, none in a second
  REQUIRE(quiet.code == 0);
  CHECK(quiet.err.empty());
  ::setenv("MOESIM_PROGRESS_EVERY", "0", 1);
  const Result lines = moesim(decode, tmp);
  CHECK(lines.code == 0);
  CHECK_THAT(lines.err, Catch::Contains("  running     ") && Catch::Contains("s elapsed"));
  CHECK_THAT(lines.err, Catch::Contains("  preparing   100% of the routing and dispatch plans, "));  // before it simulates
  CHECK(lines.err.find('\r') == std::string::npos);  // lines, not a bar
  CHECK(moesim(decode + " -q", tmp).err.empty());
  std::ofstream(tmp.path() / "g.yaml") << "base: " << kSource << "/scenarios/quickstart.yaml\naxes:\n  workload.seed: [1, 2, 3]\n"
                                          "  network.model: [analytical]\n";
  const Result sweep = moesim("sweep '" + (tmp.path() / "g.yaml").string() + "' --jobs 1 --out '" + (tmp.path() / "s.csv").string() + "'", tmp);
  CHECK(sweep.code == 0);
  CHECK_THAT(sweep.err, Catch::Contains("  sweeping    1/3 points, ") && Catch::Contains("  sweeping    2/3 points, "));
  ::setenv("MOESIM_PROGRESS_EVERY", "soon", 1);
  const Result bad = moesim(decode, tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("MOESIM_PROGRESS_EVERY: 'soon' is not a number of seconds >= 0"));
  ::unsetenv("MOESIM_PROGRESS_EVERY");
}

TEST_CASE("summary.csv reports MFU and, with a GPU-hour price, the cost", "[cli][cost]") {
  TempDir tmp;
  const std::string base =
      "cluster:\n  nodes: 1\n  gpus_per_node: 2\n  gpu: H100\n  gpu_hour_price: 2.5\n"
      "model:\n  moe_layers: 2\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 2\n  top_k: 1\n  attention_heads: 8\n"
      "parallelism:\n  ep: 2\nworkload:\n  tokens_per_gpu: 500\n";
  std::ofstream(tmp.path() / "s.yaml") << base;
  REQUIRE(moesim("run '" + (tmp.path() / "s.yaml").string() + "' -q --out '" + (tmp.path() / "o").string() + "'", tmp).code == 0);
  const auto summary = summary_row(tmp.path() / "o" / "summary.csv");
  auto num = [&](const char* name) { return std::stod(summary.at(name)); };
  const double step_s = num("step_time_us") * 1e-6;
  CHECK(num("mfu") == Approx(num("model_flops") / (2 * 989.4e12 * step_s)).epsilon(1e-3));
  CHECK(num("mfu") > 0);
  CHECK(num("mfu") < 0.7);  // never above the roofline's FLOP efficiency
  CHECK(num("cost_per_step") == Approx(2.5 * 2 * step_s / 3600).epsilon(1e-3));
  CHECK(num("cost_per_million_tokens") == Approx(num("cost_per_step") / 1000 * 1e6).epsilon(1e-3));
  // Power: the 2 GPUs at the H100's rated 700 W; the energy of a million tokens at the step's rate.
  CHECK(num("power_kw") == Approx(1.4));
  CHECK(num("energy_kwh_per_million_tokens") == Approx(1.4 * step_s / 3600 / 1000 * 1e6).epsilon(1e-4));
  // With the servers' other parts and the data centre's overhead.
  const auto run = moesim("run '" + (tmp.path() / "s.yaml").string() + "' --set 'cluster.power={gpu: 600W, node: 2kW, pue: 1.25}' --out '" +
                              (tmp.path() / "p").string() + "'",
                          tmp);
  REQUIRE(run.code == 0);
  CHECK_THAT(run.out, Catch::Contains("power       4 kW (2 GPUs at 600 W; 1 server's other parts at 2 kW each, PUE 1.25)"));
  CHECK(std::stod(summary_row(tmp.path() / "p" / "summary.csv").at("power_kw")) == Approx((2 * 600 + 2000) * 1.25 / 1e3));
}

TEST_CASE("A training run's summary gives the days and GPU-hours a trillion tokens take", "[cli][cost]") {
  // How pre-training budgets are stated (DeepSeek-V3: 180K H800 GPU-hours per trillion tokens):
  // from summary.csv's throughput, the days on the scenario's GPUs and their GPU-hours and cost.
  TempDir tmp;
  const std::string base =
      "cluster:\n  nodes: 1\n  gpus_per_node: 4\n  gpu: H100\n  gpu_hour_price: 2\n"
      "model:\n  moe_layers: 2\n  hidden: 4096\n  expert_ffn: 8192\n  experts: 4\n  top_k: 2\n  attention_heads: 8\n"
      "parallelism:\n  ep: 4\nworkload:\n  kind: training\n  tokens_per_gpu: 2048\n  micro_batches: 2\n";
  std::ofstream(tmp.path() / "t.yaml") << base;
  const Result r = moesim("run '" + (tmp.path() / "t.yaml").string() + "' --out '" + (tmp.path() / "o").string() + "'", tmp);
  REQUIRE(r.code == 0);
  const auto summary = summary_row(tmp.path() / "o" / "summary.csv");
  const double per_s = std::stod(summary.at("tokens_per_s"));
  REQUIRE(per_s > 0);
  const auto at = r.out.find("1T tokens");
  REQUIRE(at != std::string::npos);
  const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
  INFO(line);
  double days = 0, hours = 0, cost = 0;
  char unit = ' ';
  REQUIRE(std::sscanf(line.c_str(), "1T tokens %lf days on these 4 GPUs, %lf%c", &days, &hours, &unit) == 3);
  CHECK(unit == 'K');  // thousands of GPU-hours at this size
  hours *= unit == 'K' ? 1e3 : unit == 'M' ? 1e6 : 1;
  const auto priced = line.find(", ", line.find("GPU-hours"));
  REQUIRE(priced != std::string::npos);
  char cost_unit = ' ';
  REQUIRE(std::sscanf(line.c_str() + priced, ", %lf%c", &cost, &cost_unit) == 2);
  cost *= cost_unit == 'K' ? 1e3 : cost_unit == 'M' ? 1e6 : 1;
  CHECK_THAT(line, Catch::Contains(" at 2 per GPU-hour"));
  const double seconds = 1e12 / per_s;
  CHECK(days == Approx(seconds / 86400).epsilon(1e-3));
  CHECK(hours == Approx(4 * seconds / 3600).epsilon(1e-3));
  CHECK(cost == Approx(2 * hours).epsilon(1e-3));
  CHECK(summary.at("goodput").empty());  // no reliability section
  CHECK(summary.at("job_mtbf_h").empty());
  // With failures and checkpoints: the days, GPU-hours and cost over the goodput, and summary.csv's
  // figures, whose arithmetic the reliability unit tests check.
  const Result g = moesim("run '" + (tmp.path() / "t.yaml").string() + "' --set reliability.gpu_mtbf_hours=400 --set reliability.restart=2min "
                          "--set reliability.checkpoint_bandwidth=1GB/s --out '" + (tmp.path() / "g").string() + "'", tmp);
  REQUIRE(g.code == 0);
  const auto gs = summary_row(tmp.path() / "g" / "summary.csv");
  CHECK(gs.at("step_time_us") == summary.at("step_time_us"));  // the step does not change
  CHECK(std::stod(gs.at("job_mtbf_h")) == Approx(100));         // 400 h over 4 GPUs
  const double ckpt_gb = std::stod(gs.at("checkpoint_gb")), goodput = std::stod(gs.at("goodput"));
  CHECK(std::stod(gs.at("checkpoint_s")) == Approx(ckpt_gb).epsilon(1e-4));  // at 1 GB/s
  CHECK(goodput > 0.5);
  CHECK(goodput < 1);
  CHECK(std::stod(gs.at("goodput_tokens_per_s")) == Approx(per_s * goodput).epsilon(1e-4));
  CHECK(std::stod(gs.at("goodput_cost_per_million_tokens")) == Approx(std::stod(gs.at("cost_per_million_tokens")) / goodput).epsilon(1e-4));
  CHECK(std::stoi(gs.at("checkpoint_every_steps")) >= 1);
  const auto gat = g.out.find("failures    the job stops every 4.17 days on average (4 GPUs, each every 400 h)");
  REQUIRE(gat != std::string::npos);
  const std::string gline = g.out.substr(gat, g.out.find('\n', gat) - gat);
  INFO(gline);
  double gdays = 0;
  REQUIRE(std::sscanf(gline.c_str() + gline.find("1T tokens in"), "1T tokens in %lf days", &gdays) == 1);
  CHECK(gdays == Approx(seconds / goodput / 86400).epsilon(1e-3));
  CHECK_THAT(g.out, Catch::Contains("(without failures)"));
  CHECK(gs.at("checkpoint_write_s").empty());
  CHECK(gs.at("checkpoint") == "sync");
  CHECK(summary.at("checkpoint").empty());
  CHECK(gs.at("spare_nodes").empty());
  // With a spare node of 4 GPUs and repairs of 10 h: the restart grows by the wait for a node,
  // the goodput falls, and the cost per token counts the spare's GPUs (8 in all paid for 4 that run).
  const Result sp = moesim("run '" + (tmp.path() / "t.yaml").string() + "' --set reliability.gpu_mtbf_hours=400 --set reliability.restart=2min "
                           "--set reliability.checkpoint_bandwidth=1GB/s --set reliability.spare_nodes=1 --set reliability.repair_time=10h --out '" +
                           (tmp.path() / "sp").string() + "'", tmp);
  REQUIRE(sp.code == 0);
  const auto ss = summary_row(tmp.path() / "sp" / "summary.csv");
  CHECK(ss.at("spare_nodes") == "1");
  // A failure every 100 h, repairs of 10 h: the nodes out are Poisson(0.1); with one spare the
  // job waits for the first of the n out when n >= 1: 10 h x sum P(n) n/(n + 1).
  double expect = 0, pn = std::exp(-0.1);
  for (int n = 0; n < 40; ++n, pn *= 0.1 / n) expect += n >= 1 ? pn * n / (n + 1) : 0;
  CHECK(std::stod(ss.at("spare_wait_s")) == Approx(36000 * expect).epsilon(1e-4));
  const double sp_goodput = std::stod(ss.at("goodput"));
  CHECK(sp_goodput < goodput);
  CHECK(std::stod(ss.at("goodput_cost_per_million_tokens")) == Approx(std::stod(ss.at("cost_per_million_tokens")) * 2 / sp_goodput).epsilon(1e-4));
  CHECK_THAT(sp.out, Catch::Contains("with 1 spare node (4 GPUs idle, in the GPU-hours) and a node out 10 h"));
  // Asynchronous: a stall of each GPU's share over PCIe, the write behind the steps.
  const Result a = moesim("run '" + (tmp.path() / "t.yaml").string() + "' --set reliability.gpu_mtbf_hours=400 --set reliability.restart=2min "
                          "--set reliability.checkpoint_bandwidth=1GB/s --set reliability.checkpoint=async --out '" + (tmp.path() / "a").string() + "'", tmp);
  REQUIRE(a.code == 0);
  const auto as = summary_row(tmp.path() / "a" / "summary.csv");
  CHECK(std::stod(as.at("checkpoint_write_s")) == Approx(ckpt_gb).epsilon(1e-4));       // at 1 GB/s
  CHECK(std::stod(as.at("checkpoint_s")) == Approx(ckpt_gb / 4 / 64).epsilon(1e-4));   // a quarter each at 64 GB/s
  CHECK(std::stod(as.at("goodput")) > goodput);
  CHECK(as.at("checkpoint") == "async");
  const auto sa = moesim("diff '" + (tmp.path() / "g").string() + "' '" + (tmp.path() / "a").string() + "'", tmp);
  CHECK_THAT(sa.out, Catch::Contains("settings that differ") && Catch::Contains("checkpoint               sync  ->  async"));
  CHECK_THAT(a.out, Catch::Contains("an asynchronous checkpoint (") && Catch::Contains("(each GPU's share to host memory at 64GB/s) and is written in"));
  // A token budget: its days, GPU-hours and cost at the goodput's throughput (or the step's without failures).
  CHECK(summary.at("train_days").empty());
  const Result b = moesim("run '" + (tmp.path() / "t.yaml").string() + "' --set workload.train_tokens=2e11 --set reliability.gpu_mtbf_hours=400 "
                          "--set reliability.restart=2min --set reliability.checkpoint_bandwidth=1GB/s --out '" + (tmp.path() / "b").string() + "'", tmp);
  REQUIRE(b.code == 0);
  const auto bs = summary_row(tmp.path() / "b" / "summary.csv");
  CHECK(std::stod(bs.at("train_tokens")) == 2e11);
  CHECK(std::stod(bs.at("train_days")) == Approx(2e11 / (per_s * goodput) / 86400).epsilon(1e-4));
  CHECK(std::stod(bs.at("train_gpu_hours")) == Approx(std::stod(bs.at("train_days")) * 24 * 4).epsilon(1e-4));
  CHECK(std::stod(bs.at("train_cost")) == Approx(2 * std::stod(bs.at("train_gpu_hours"))).epsilon(1e-4));
  CHECK_THAT(b.out, Catch::Contains("  budget      200B tokens in ") && Catch::Contains("(with failures and checkpoints)"));
  const Result nb = moesim("run '" + (tmp.path() / "t.yaml").string() + "' -q --set workload.train_tokens=2e11 --out '" + (tmp.path() / "nb").string() + "'", tmp);
  REQUIRE(nb.code == 0);
  CHECK(std::stod(summary_row(tmp.path() / "nb" / "summary.csv").at("train_days")) == Approx(2e11 / per_s / 86400).epsilon(1e-4));
  // Checkpoints so far apart that no segment ends before a failure: no goodput, and the budget never done.
  const Result never = moesim("run '" + (tmp.path() / "t.yaml").string() + "' --set workload.train_tokens=2e11 --set reliability.gpu_mtbf_hours=0.01 "
                              "--set reliability.restart=1min --set reliability.checkpoint_time=1s --set reliability.checkpoint_every_steps=1000000 "
                              "--out '" + (tmp.path() / "n").string() + "'", tmp);
  REQUIRE(never.code == 0);
  CHECK_THAT(never.out, Catch::Contains("no goodput: the steps between checkpoints") && Catch::Contains("200B tokens: never (no goodput, above)"));
  const auto ns = summary_row(tmp.path() / "n" / "summary.csv");
  CHECK(std::stod(ns.at("goodput")) == 0);
  CHECK(ns.at("train_days").empty());
  const auto d = moesim("diff '" + (tmp.path() / "o").string() + "' '" + (tmp.path() / "g").string() + "'", tmp);
  CHECK(d.code == 0);
  CHECK_THAT(d.out, Catch::Contains("goodput_tokens_per_s"));
  // Inference runs do not say it.
  std::ofstream(tmp.path() / "f.yaml") << base.substr(0, base.find("  kind: training")) + "  tokens_per_gpu: 2048\n";
  const Result f = moesim("run '" + (tmp.path() / "f.yaml").string() + "' --out '" + (tmp.path() / "f").string() + "'", tmp);
  REQUIRE(f.code == 0);
  CHECK_THAT(f.out, !Catch::Contains("1T tokens"));
}

TEST_CASE("Multi-step runs re-place experts every refresh_every steps and move their weights", "[cli][steps]") {
  // The drifting-hotspot scenario, cut to 4 layers, with 4 hot experts moving by one rank per
  // step over 6 steps: re-placing every 2 steps from the step before keeps the GPUs balanced, a
  // placement made once does not.
  TempDir tmp;
  std::string text = slurp(fs::path(kSource) / "scenarios" / "drifting-hotspot.yaml");
  const std::vector<std::pair<std::string, std::string>> edits{
      {"  moe_layers: 16", "  moe_layers: 4"}, {"  tokens_per_gpu: 4096", "  tokens_per_gpu: 1024"},
      {"  seed: 1", "  seed: 1\n  steps: 6"}, {"  hot_experts: 2", "  hot_experts: 4"},
      {"  rotate: 2 ", "  rotate: 1 "}, {"  history: 4", "  history: 1"}};
  for (const auto& [from, to] : edits) {
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
  }
  std::ofstream(tmp.path() / "fixed.yaml") << text;
  std::string refresh = text;
  refresh.replace(refresh.find("  history: 1"), std::string("  history: 1").size(), "  history: 1\n  refresh_every: 2");
  std::ofstream(tmp.path() / "refresh.yaml") << refresh;
  auto steps = [&](const std::string& name) {
    REQUIRE(moesim("run '" + (tmp.path() / (name + ".yaml")).string() + "' -q --out '" + (tmp.path() / name).string() + "'", tmp)
                .code == 0);
    std::ifstream in(tmp.path() / name / "steps.csv");
    std::string line;
    std::getline(in, line);
    CHECK(line == "step,step_time_us,gpu_imbalance_max,placement_refreshed,moved_bytes,rebalance_us");
    std::vector<std::vector<std::string>> rows;
    while (std::getline(in, line)) rows.push_back(csv_fields(line));
    return rows;
  };
  const auto fixed = steps("fixed"), moving = steps("refresh");
  REQUIRE(fixed.size() == 6);
  REQUIRE(moving.size() == 6);
  double fixed_late = 0, moving_late = 0;
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(std::stoi(moving[i][0]) == 8 + static_cast<int>(i));  // from routing.step on
    const bool refreshed = i > 0 && i % 2 == 0;
    CHECK(moving[i][3] == (refreshed ? "1" : "0"));
    CHECK((std::stoll(moving[i][4]) > 0) == refreshed);
    CHECK((std::stod(moving[i][5]) > 0) == refreshed);
    CHECK(fixed[i][3] == "0");
    if (i >= 2) {
      fixed_late += std::stod(fixed[i][2]);
      moving_late += std::stod(moving[i][2]);
    }
  }
  CHECK(fixed[0][2] == moving[0][2]);  // the same first placement
  INFO("late imbalance: fixed " << fixed_late / 4 << ", refreshed " << moving_late / 4);
  CHECK(moving_late < 0.85 * fixed_late);
}

TEST_CASE("moesim run --set changes a key for one run", "[cli][set]") {
  TempDir tmp;
  const auto r = moesim("run --set workload.tokens_per_gpu=512 --set model.moe_layers=2 -q --out '" + (tmp.path() / "o").string() + "'", tmp);
  REQUIRE(r.code == 0);
  const auto s = summary_row(tmp.path() / "o" / "summary.csv");
  CHECK(s.at("tokens_per_gpu") == "512");
  CHECK(s.at("moe_layers") == "2");
  const auto bad = moesim("run --set routing.zipff=1 -q --out '" + (tmp.path() / "x").string() + "'", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--set routing.zipff: unknown key; did you mean 'zipf_s'?"));
}

TEST_CASE("moesim run with tensor parallelism says so and reports its collectives", "[cli][tensor_parallel]") {
  TempDir tmp;
  const auto r = moesim("run --set parallelism.tp=4 --set model.moe_layers=2 --out '" + (tmp.path() / "o").string() + "'", tmp);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("EP8, TP4 (attention), 4096 tokens per GPU"));
  CHECK_THAT(r.out, Catch::Contains("(network: the tensor-parallel all-gathers and reduce-scatters)"));
  const auto s = summary_row(tmp.path() / "o" / "summary.csv");
  CHECK(s.at("tp") == "4");
  // Per layer a ring all-gather and reduce-scatter of 4 x 4096 rows of 8 KiB: each of 16 GPUs
  // sends 3 chunks of 32 MiB per collective; 2 layers, 2 collectives.
  CHECK(s.at("tp_bytes") == std::to_string(2LL * 2 * 16 * 3 * 4096 * 8192));
  CHECK(std::stod(s.at("tp_wait_us")) > 0);
  const auto bad = moesim("run --set parallelism.tp=3 -q --out '" + (tmp.path() / "x").string() + "'", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("parallelism.tp: 3 does not divide the 8 GPUs of a node"));
}

TEST_CASE("moesim sweep writes one row per point, the same on any number of jobs, and resumes", "[cli][sweep]") {
  TempDir tmp;
  const std::string grid = "base: " + kSource + "/scenarios/quickstart.yaml\naxes:\n  model.moe_layers: [2, 3]\n"
                           "  routing.distribution: [zipf]\n  routing.zipf_s: {from: 0.5, to: 1.5, step: 0.5}\n";
  std::ofstream(tmp.path() / "g.yaml") << grid;
  const auto g = "'" + (tmp.path() / "g.yaml").string() + "'";
  const auto one = (tmp.path() / "one.csv").string(), two = (tmp.path() / "two.csv").string();
  REQUIRE(moesim("sweep " + g + " -q --jobs 1 --out '" + one + "'", tmp).code == 0);
  REQUIRE(moesim("sweep " + g + " -q --jobs 2 --out '" + two + "'", tmp).code == 0);
  const std::string full = slurp(one);
  CHECK(full == slurp(two));
  std::vector<std::string> lines;
  {
    std::stringstream ss(full);
    for (std::string l; std::getline(ss, l);) lines.push_back(l);
  }
  REQUIRE(lines.size() == 7);  // header + 2 x 3 points
  CHECK(lines[0].rfind("point,model.moe_layers,routing.distribution,routing.zipf_s,scenario,", 0) == 0);
  CHECK(lines[4].rfind("3,3,zipf,0.5,", 0) == 0);
  // An interrupted run: three rows and half of a fourth. The re-run keeps the three, runs the rest.
  {
    std::ofstream cut(one, std::ios::trunc);
    for (int i = 0; i < 4; ++i) cut << lines[static_cast<std::size_t>(i)] << '\n';
    cut << lines[4].substr(0, 10);
  }
  const auto again = moesim("sweep " + g + " --jobs 2 --out '" + one + "'", tmp);
  REQUIRE(again.code == 0);
  CHECK_THAT(again.out, Catch::Contains("6 points (3 from an earlier run, 3 run now)"));
  CHECK(slurp(one) == full);
  // A bad axis value fails before anything runs, naming the axis.
  std::ofstream(tmp.path() / "bad.yaml") << grid << "  model.top_k: [2, 99]\n";
  const auto bad_out = (tmp.path() / "bad.csv").string();
  const auto bad = moesim("sweep '" + (tmp.path() / "bad.yaml").string() + "' -q --out '" + bad_out + "'", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("top_k 99 is larger than experts 8"));
  CHECK_FALSE(fs::exists(bad_out));
}

TEST_CASE("Sweep axes take list values and ~, written quoted and resumed", "[cli][sweep]") {
  TempDir tmp;
  // Two layers of the quickstart, with and without a layer split over two pipeline stages.
  std::ofstream(tmp.path() / "g.yaml") << "base: " + kSource + "/scenarios/quickstart.yaml\naxes:\n"
                                          "  parallelism.pp: [1, 2, 2]\n  parallelism.pipeline_layers: [~, [1, 3], [3, 1]]\n"
                                          "zip: [parallelism.pp, parallelism.pipeline_layers]\n";
  const auto g = "'" + (tmp.path() / "g.yaml").string() + "'";
  const auto out = (tmp.path() / "s.csv").string();
  REQUIRE(moesim("sweep " + g + " -q --set model.moe_layers=4 --out '" + out + "'", tmp).code == 0);
  const std::string full = slurp(out);
  CHECK_THAT(full, Catch::Contains("\n0,1,~,") && Catch::Contains("\n1,2,\"[1, 3]\",") && Catch::Contains("\n2,2,\"[3, 1]\","));
  const auto again = moesim("sweep " + g + " --set model.moe_layers=4 --out '" + out + "'", tmp);
  REQUIRE(again.code == 0);
  CHECK_THAT(again.out, Catch::Contains("3 points (3 from an earlier run, 0 run now)"));
  CHECK(slurp(out) == full);
}

// A sweep's rows by point, column -> value (quoted fields unquoted).
std::vector<std::map<std::string, std::string>> sweep_rows(const fs::path& file) {
  const auto split = [](const std::string& l) {
    std::vector<std::string> f(1);
    bool quoted = false;
    for (const char c : l) {
      if (c == '"') quoted = !quoted;
      else if (c == ',' && !quoted) f.emplace_back();
      else f.back() += c;
    }
    return f;
  };
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  const auto names = split(line);
  std::vector<std::map<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    const auto f = split(line);
    REQUIRE(f.size() == names.size());
    auto& row = rows.emplace_back();
    for (std::size_t i = 0; i < f.size(); ++i) row[names[i]] = f[i];
  }
  return rows;
}

TEST_CASE("Sweep points that differ only in reliability, price or token budget share one simulation", "[cli][sweep][reliability]") {
  TempDir tmp;
  std::ofstream(tmp.path() / "t.yaml")
      << "cluster:\n  nodes: 1\n  gpus_per_node: 4\n  gpu: H100\n"
         "model:\n  moe_layers: 2\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 4\n  top_k: 2\n  attention_heads: 8\n"
         "parallelism:\n  ep: 4\nworkload:\n  kind: training\n  tokens_per_gpu: 256\n"
         "reliability:\n  gpu_mtbf_hours: 20\n  restart: 1min\n  checkpoint_bandwidth: 1GB/s\n";
  std::ofstream(tmp.path() / "g.yaml") << "base: t.yaml\naxes:\n  workload.tokens_per_gpu: [256, 512]\n  reliability.restart: [1min, 30min]\n"
                                          "  cluster.gpu_hour_price: [1, 3]\n  workload.train_tokens: [1e9, 2e9]\n";
  const auto out = (tmp.path() / "s.csv").string();
  const Result r = moesim("sweep '" + (tmp.path() / "g.yaml").string() + "' --jobs 2 --out '" + out + "'", tmp);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("16 points (0 from an earlier run, 16 run now in 2 simulations: points that differ only in "
                                    "reliability.*, cluster.power, cluster.gpu_hour_price or workload.train_tokens share one)"));
  // Rows by point: each has its own restart's goodput and its own price's cost over one step.
  const auto rows = sweep_rows(out);
  REQUIRE(rows.size() == 16);
  const auto num = [&](int p, const char* c) { return std::stod(rows[static_cast<std::size_t>(p)].at(c)); };
  for (int p = 0; p < 16; ++p) {
    const int same_step = p < 8 ? 0 : 8;  // the first axis varies slowest
    CHECK(rows[static_cast<std::size_t>(p)].at("step_time_us") == rows[static_cast<std::size_t>(same_step)].at("step_time_us"));
    CHECK(rows[static_cast<std::size_t>(p)].at("events") == rows[static_cast<std::size_t>(same_step)].at("events"));
  }
  CHECK(rows[0].at("step_time_us") != rows[8].at("step_time_us"));
  CHECK(num(0, "goodput") > num(4, "goodput"));  // restart 1 min, then 30 min
  CHECK(num(2, "cost_per_step") == Approx(3 * num(0, "cost_per_step")));
  CHECK(num(1, "train_days") == Approx(2 * num(0, "train_days")));
  // Each point alone gives its row's figures.
  const Result one = moesim("run '" + (tmp.path() / "t.yaml").string() + "' -q --set reliability.restart=30min --set cluster.gpu_hour_price=3 "
                            "--set workload.train_tokens=2e9 --out '" + (tmp.path() / "one").string() + "'", tmp);
  REQUIRE(one.code == 0);
  const auto alone = summary_row(tmp.path() / "one" / "summary.csv");
  for (const char* c : {"step_time_us", "goodput", "goodput_tokens_per_s", "goodput_cost_per_million_tokens", "checkpoint_every_steps", "train_days"})
    CHECK(alone.at(c) == rows[7].at(c));
}

TEST_CASE("A layout search: the grid skips invalid and unfit points, the global batch holds the step's tokens", "[cli][sweep][plan]") {
  TempDir tmp;
  // 16 GPUs of 40 GB: with 2 experts per GPU (EP4), their Adam state and no pipeline stages a GPU cannot fit.
  std::ofstream(tmp.path() / "t.yaml")
      << "cluster:\n  nodes: 2\n  gpus_per_node: 8\n  gpu: {preset: H100-SXM, memory: 40GB}\n  scale_out: {nic_bandwidth: 400Gbps}\n"
         "model:\n  moe_layers: 8\n  hidden: 4096\n  expert_ffn: 14336\n  experts: 8\n  top_k: 2\n  attention_heads: 32\n  kv_heads: 8\n"
         "parallelism:\n  ep: 8\nworkload:\n  kind: training\n  tokens_per_gpu: 1024\n  sequence_length: 2048\n  global_batch: 64\n"
         "network:\n  model: analytical\n";
  const std::string axes = "base: t.yaml\naxes:\n  parallelism.tp: [1, 3]\n  parallelism.pp: [1, 2]\n  parallelism.ep: [4, 8]\n";
  std::ofstream(tmp.path() / "g.yaml") << axes << "skip: [invalid, unfit]\n";
  const auto g = "'" + (tmp.path() / "g.yaml").string() + "'";
  const auto out = tmp.path() / "s.csv";
  const Result r = moesim("sweep " + g + " --jobs 2 --out '" + out.string() + "'", tmp);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("8 points (0 from an earlier run, 8 run now, 5 of them skipped (the grid's skip))"));
  CHECK_THAT(r.out, Catch::Contains("1 of 8 points do not fit the GPUs' memory") && Catch::Contains("1 of them not simulated (skip: unfit)"));
  CHECK_THAT(r.out, Catch::Contains("4 of 8 points are invalid and were not run"));
  const auto rows = sweep_rows(out);
  REQUIRE(rows.size() == 8);
  for (const auto& row : rows) {
    INFO(row.at("point") << ": " << row.at("infeasible_reason"));
    const bool invalid = row.at("parallelism.tp") == "3", unfit = !invalid && row.at("parallelism.ep") == "4" && row.at("parallelism.pp") == "1";
    CHECK(row.at("step_time_us").empty() == (invalid || unfit));
    if (invalid) {
      CHECK(row.at("fits_memory").empty());
      CHECK_THAT(row.at("infeasible_reason"), Catch::StartsWith("invalid: parallelism.tp: 3 does not divide the 8 GPUs of a node"));
    } else if (unfit) {
      CHECK(row.at("fits_memory") == "no");
      CHECK(row.at("gpu_memory_gb") == "40.000");
      CHECK_THAT(row.at("infeasible_reason"), Catch::StartsWith("not simulated: GPU ") && Catch::Contains("whatever the routing (weights ") && Catch::Contains("; activations without expert rows "));
    } else {
      // 64 sequences of 2048 tokens a step, whatever the stages: 8 micro-batches without, 16 with two.
      CHECK(row.at("tokens_per_step") == "131072");
      CHECK(row.at("micro_batches") == (row.at("parallelism.pp") == "1" ? "8" : "16"));
      CHECK(row.at("fits_memory") == "yes");
    }
  }
  // A point the grid did not simulate, run: it does not fit, and needs at least what the row said.
  const Result alone = moesim("run '" + (tmp.path() / "t.yaml").string() + "' -q --set parallelism.ep=4 --out '" +
                              (tmp.path() / "one").string() + "'", tmp);
  REQUIRE(alone.code == 0);
  const auto full = summary_row(tmp.path() / "one" / "summary.csv");
  CHECK(full.at("fits_memory") == "no");
  const std::string reason = rows[0].at("infeasible_reason");  // tp 1, pp 1, ep 4
  const double floor_gb = std::stod(reason.substr(reason.find("at least ") + 9));
  CHECK(floor_gb > 40);
  CHECK(std::stod(full.at("memory_gb_max")) >= floor_gb - 0.05);
  // validate says the same before anything runs.
  const Result checked = moesim("validate '" + (tmp.path() / "t.yaml").string() + "' --set parallelism.ep=4", tmp);
  REQUIRE(checked.code == 0);
  CHECK_THAT(checked.out, Catch::Contains(fmt::format("memory: at least {:.1f} GB on GPU ", floor_gb)) &&
                              Catch::Contains("of the 40 GB of a H100-SXM whatever the routing (weights ") && Catch::EndsWith(": DOES NOT FIT\n"));
  CHECK_THAT(moesim("validate '" + (tmp.path() / "t.yaml").string() + "'", tmp).out, !Catch::Contains("DOES NOT FIT"));
  // Resumed: every row kept. Without `unfit` the skipped points' rows are stale and run; without
  // `invalid` the sweep fails before anything runs.
  CHECK_THAT(moesim("sweep " + g + " --out '" + out.string() + "'", tmp).out, Catch::Contains("8 points (8 from an earlier run, 0 run now)"));
  std::ofstream(tmp.path() / "g.yaml", std::ios::trunc) << axes << "skip: invalid\n";
  const Result again = moesim("sweep " + g + " --out '" + out.string() + "'", tmp);
  REQUIRE(again.code == 0);
  CHECK_THAT(again.out, Catch::Contains("(7 from an earlier run, 1 run now)") && Catch::Contains("1 row of the earlier run was for other settings"));
  const auto after = sweep_rows(out);
  CHECK(after[0].at("memory_gb_max") == full.at("memory_gb_max"));
  CHECK(after[0].at("step_time_us") == full.at("step_time_us"));
  std::ofstream(tmp.path() / "g.yaml", std::ios::trunc) << axes;
  const Result strict = moesim("sweep " + g + " -q --out '" + (tmp.path() / "strict.csv").string() + "'", tmp);
  CHECK(strict.code == 2);
  CHECK_THAT(strict.err, Catch::Contains("parallelism.tp: 3 does not divide the 8 GPUs of a node"));
  // A skip that leaves no point valid is the base scenario's or --set's mistake: refused, as without it.
  std::ofstream(tmp.path() / "g.yaml", std::ios::trunc) << axes << "skip: [invalid, unfit]\n";
  const Result none = moesim("sweep " + g + " -q --set model.top_k=9 --out '" + (tmp.path() / "none.csv").string() + "'", tmp);
  CHECK(none.code == 2);
  CHECK_THAT(none.err, Catch::Contains("top_k 9 is larger than experts 8"));
  CHECK_FALSE(fs::exists(tmp.path() / "none.csv"));
  CHECK(moesim("validate " + g + " --set model.top_k=9", tmp).code == 2);
  // plan passes over the skipped points and says how many there were.
  const Result plan = moesim("plan " + g + " -q --out '" + (tmp.path() / "p.csv").string() + "' --maximize tokens/s", tmp);
  REQUIRE(plan.code == 0);
  CHECK_THAT(plan.out, Catch::Contains("parallelism.tp=1") && Catch::Contains("parallelism.ep=8") &&
                           Catch::Contains("4 of the 8 points are invalid and were not run (e.g. point 4 (parallelism.tp=3"));
  CHECK_THAT(moesim("validate " + g, tmp).out, Catch::Contains("8 points on") && Catch::Contains("; 4 invalid, to be skipped, the first "
                                                                                                  "parallelism.tp=3 parallelism.pp=1 parallelism.ep=4: parallelism.tp: 3"));
}

TEST_CASE("moesim search writes the layout grid beside its CSV, skips what cannot be, and ranks the rest", "[cli][search]") {
  TempDir tmp;
  std::ofstream(tmp.path() / "t.yaml")
      << "cluster:\n  nodes: 2\n  gpus_per_node: 4\n  gpu: {preset: H100-SXM, memory: 40GB}\n  scale_out: {nic_bandwidth: 400Gbps}\n"
         "model:\n  moe_layers: 4\n  hidden: 4096\n  expert_ffn: 14336\n  experts: 8\n  top_k: 2\n  attention_heads: 32\n  kv_heads: 8\n"
         "parallelism:\n  ep: 8\nworkload:\n  kind: training\n  tokens_per_gpu: 1024\n  sequence_length: 2048\n  micro_batches: 4\n"
         "  gradient_sync: ring\nnetwork:\n  model: analytical\n";
  const auto out = tmp.path() / "s" / "layouts.csv";
  const std::string cmd = "search '" + (tmp.path() / "t.yaml").string() + "' --jobs 2 --out '" + out.string() + "'";
  const Result r = moesim(cmd + " --top 3", tmp);
  REQUIRE(r.code == 0);
  // 8 GPUs: TP 1-4, 1-4 stages (of 4 layers), 1-2 virtual stages, EP 1-8, nothing sharded, ZeRO-1
  // or FSDP; the scenario's 4 micro-batches of 8 x 1024 tokens: 16 sequences of 2048.
  CHECK_THAT(r.out, Catch::Contains("(216 points: parallelism.tp in {1, 2, 4}, parallelism.pp in {1, 2, 4}, parallelism.virtual_stages in "
                                    "{1, 2}, parallelism.ep in {1, 2, 4, 8}, workload.optimizer_sharding in {false, true, true}, "
                                    "workload.parameter_sharding in {~, ~, true} (with workload.optimizer_sharding); every point "
                                    "trains 16 sequences of 2048 tokens a step; "));
  const auto grid = tmp.path() / "s" / "layouts-grid.yaml";
  REQUIRE(fs::exists(grid));
  CHECK_THAT(slurp(grid), Catch::Contains("skip: [invalid, unfit]"));
  CHECK_THAT(r.out, Catch::Contains("216 points (0 from an earlier run, 216 run now, "));
  CHECK_THAT(r.out, Catch::Contains("\nChoose point ") && Catch::Contains(": it has the highest tokens/s ("));
  CHECK_THAT(r.out, Catch::Contains("\nrank  point  tp  pp  virtual_stages  ep  optimizer_sharding  parameter_sharding  tokens/s "));
  CHECK_THAT(r.out, Catch::Contains("\n3     ") && !Catch::Contains("\n4     ") && Catch::Contains(" more points qualify)"));
  // Every simulated point trains the same batch.
  const auto rows = sweep_rows(out);
  REQUIRE(rows.size() == 216);
  int ran = 0, fsdp_ran = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    const bool fsdp = row.at("workload.parameter_sharding") == "true";
    // Sharded weights with pipeline stages are refused; without, they run, as ZeRO-1 with the
    // weights gathered layer by layer (the point before is the same layout under ZeRO-1).
    if (fsdp && row.at("parallelism.pp") != "1")
      CHECK_THAT(row.at("infeasible_reason"), Catch::Contains("invalid: workload.parameter_sharding: with parallelism.pp > 1"));
    if (row.at("step_time_us").empty()) continue;
    ++ran;
    CHECK(row.at("tokens_per_step") == "32768");
    if (!fsdp) continue;
    ++fsdp_ran;
    CHECK(row.at("parameter_sharding") == "yes");
    REQUIRE(i > 0);
    const auto& zero1 = rows[i - 1];
    CHECK(zero1.at("workload.optimizer_sharding") == "true");
    CHECK(zero1.at("parameter_sharding") == "no");
    CHECK(zero1.at("parallelism.ep") == row.at("parallelism.ep"));
    CHECK(zero1.at("parallelism.tp") == row.at("parallelism.tp"));
    CHECK(std::stod(row.at("param_gather_bytes")) > 0);
  }
  CHECK(ran > 10);
  CHECK(fsdp_ran == 12);  // TP 1-4 x EP 1-8 without stages
  // Again: the rows are kept; the grid file is what plan takes, with the same choice.
  const Result again = moesim(cmd, tmp);
  CHECK_THAT(again.out, Catch::Contains("216 points (216 from an earlier run, 0 run now)"));
  const auto choice = [](const std::string& text) { return text.substr(text.find("\nChoose point "), 80); };
  const Result plan = moesim("plan '" + grid.string() + "' --out '" + out.string() + "' --maximize tokens/s", tmp);
  REQUIRE(plan.code == 0);
  CHECK(choice(plan.out) == choice(r.out));
  // Usage mistakes.
  const Result unknown = moesim(cmd + " --vary tp,dp", tmp);
  CHECK(unknown.code == 2);
  CHECK_THAT(unknown.err, Catch::StartsWith("moesim: search: --vary: unknown dimension 'dp'") && !Catch::Contains("internal"));
  CHECK(moesim(cmd + " --minimize cost --maximize tokens/s", tmp).code == 2);
  // A batch that splits evenly only at some stage counts: the others are invalid points that say why.
  const Result three = moesim("search '" + (tmp.path() / "t.yaml").string() + "' --global-batch 3 --out '" +
                                  (tmp.path() / "three.csv").string() + "'", tmp);
  REQUIRE(three.code == 0);
  CHECK_THAT(three.out, Catch::Contains("workload.global_batch: 3 sequences of 2048 tokens are not a whole number of micro-batches of "
                                        "8192 tokens (1024 on each of 8 GPUs): the nearest global batches that are: 4") &&
                            Catch::Contains("parallelism.pp=4"));
}

TEST_CASE("Sweep rows are stale when a trace the points read, or the moesim build, changes", "[cli][sweep]") {
  TempDir tmp;
  const std::string base =
      "cluster:\n  nodes: 1\n  gpus_per_node: 8\n  gpu: H100\n"
      "model:\n  moe_layers: 2\n  hidden: 1024\n  expert_ffn: 2048\n  experts: 16\n  top_k: 2\n  attention_heads: 8\n"
      "parallelism:\n  ep: 8\nworkload:\n  tokens_per_gpu: 128\nrouting:\n";
  std::ofstream(tmp.path() / "s.yaml") << base << "  distribution: zipf\n  zipf_s: 1.1\n";
  std::ofstream(tmp.path() / "r.yaml") << base << "  distribution: trace\n  trace: tokens.csv\n";
  std::ofstream(tmp.path() / "g.yaml") << "base: r.yaml\naxes:\n  routing.capacity_factor: [1.0, 1.5]\n";
  const auto dir = "'" + tmp.path().string() + "/";
  REQUIRE(moesim("trace " + dir + "s.yaml' -q --out " + dir + "tokens.csv'", tmp).code == 0);
  REQUIRE(moesim("sweep " + dir + "g.yaml' -q --out " + dir + "out.csv'", tmp).code == 0);
  const auto same = moesim("sweep " + dir + "g.yaml' --out " + dir + "out.csv'", tmp);
  CHECK_THAT(same.out, Catch::Contains("2 points (2 from an earlier run, 0 run now)"));
  // Another routing in the same file: the rows are for another input and run again.
  REQUIRE(moesim("trace " + dir + "s.yaml' -q --set routing.zipf_s=0.5 --out " + dir + "tokens.csv'", tmp).code == 0);
  const auto changed = moesim("sweep " + dir + "g.yaml' --out " + dir + "out.csv'", tmp);
  REQUIRE(changed.code == 0);
  CHECK_THAT(changed.out, Catch::Contains("2 rows of the earlier run were for other settings"));
  // Another moesim build (here: the same executable with a byte appended, which still runs)
  // does not keep the rows of this one.
  const auto other = tmp.path() / "moesim-other";
  fs::copy_file(MOESIM_BINARY, other);
  std::ofstream(other, std::ios::binary | std::ios::app) << '\n';
  fs::permissions(other, fs::perms::owner_exec, fs::perm_options::add);
  const std::string cmd = "'" + other.string() + "' sweep " + dir + "g.yaml' --out " + dir + "out.csv' >" + dir + "other.txt'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  CHECK_THAT(slurp(tmp.path() / "other.txt"), Catch::Contains("2 rows of the earlier run were for other settings"));
  CHECK_THAT(moesim("sweep " + dir + "g.yaml' --out " + dir + "out.csv'", tmp).out, Catch::Contains("2 rows of the earlier run"));
}

TEST_CASE("A sweep killed with SIGKILL resumes to exactly one row per point", "[cli][sweep]") {
  TempDir tmp;
  std::ofstream(tmp.path() / "g.yaml") << "base: " + kSource + "/scenarios/quickstart.yaml\naxes:\n  workload.seed: {from: 1, to: 16, step: 1}\n";
  const auto g = (tmp.path() / "g.yaml").string(), out = (tmp.path() / "s.csv").string(), ref = (tmp.path() / "r.csv").string();
  // Kill the sweep once it has written a few rows (if it finishes first, the check still holds).
  const std::string cmd = "'" + std::string(MOESIM_BINARY) + "' sweep '" + g + "' -q --jobs 1 --out '" + out + "' & pid=$!; "
                          "for i in $(seq 1 400); do [ -f '" + out + "' ] && [ $(wc -l < '" + out + "') -ge 4 ] && break; sleep 0.01; done; "
                          "kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; true";
  std::ofstream(tmp.path() / "kill.sh") << cmd << "\n";
  REQUIRE(std::system(("bash '" + (tmp.path() / "kill.sh").string() + "'").c_str()) == 0);
  REQUIRE(moesim("sweep '" + g + "' -q --jobs 2 --out '" + out + "'", tmp).code == 0);
  REQUIRE(moesim("sweep '" + g + "' -q --jobs 2 --out '" + ref + "'", tmp).code == 0);
  CHECK(slurp(out) == slurp(ref));
  std::size_t rows = 0;
  std::stringstream ss(slurp(out));
  for (std::string l; std::getline(ss, l);) ++rows;
  CHECK(rows == 17);
}

TEST_CASE("summary.csv estimates each GPU's memory and says whether it fits", "[cli][memory]") {
  // Quickstart, EP8: per GPU and layer, attention 4096 x (4096 + 2 x 1024) + 4096 x 4096 =
  // 41,943,040, router 32,768 and one expert 3 x 4096 x 14336 = 176,160,768 parameters; 32 layers
  // in bf16: 13.96 GB of weights, plus one layer's activations and the all-to-all buffers.
  TempDir tmp;
  REQUIRE(moesim("run -q --out '" + (tmp.path() / "q").string() + "'", tmp).code == 0);
  const auto q = summary_row(tmp.path() / "q" / "summary.csv");
  CHECK(std::stod(q.at("memory_gb_max")) > 13.96);
  CHECK(std::stod(q.at("memory_gb_max")) < 20);
  CHECK(q.at("gpu_memory_gb") == "80.000");
  CHECK(q.at("fits_memory") == "yes");
  // Training adds a gradient and Adam's 12 bytes per parameter: 16 bytes x 7 G parameters.
  REQUIRE(moesim("run --set workload.kind=training -q --out '" + (tmp.path() / "t").string() + "'", tmp).code == 0);
  const auto t = summary_row(tmp.path() / "t" / "summary.csv");
  CHECK(std::stod(t.at("memory_gb_max")) > 16 * 6.98);
  CHECK(t.at("fits_memory") == "no");
}

TEST_CASE("moesim plan runs the sweep and picks the cheapest point that meets the target", "[cli][plan]") {
  TempDir tmp;
  std::ofstream(tmp.path() / "g.yaml") << "base: " + kSource + "/scenarios/quickstart.yaml\naxes:\n  cluster.nodes: [2, 4, 8]\n"
                                          "  parallelism.ep: [4, 8]\n";
  const auto g = "'" + (tmp.path() / "g.yaml").string() + "'";
  const auto out = "'" + (tmp.path() / "p.csv").string() + "'";
  // The roofline, whose figures the comments below derive (the plan's logic is the subject here).
  const std::string common = "--set model.moe_layers=2 --set cluster.gpu_hour_price=2 --set compute.model=roofline --out " + out + " --reports '" +
                             (tmp.path() / "r").string() + "' ";
  // Two nodes of quickstart run about 6.2 M tokens/s with two layers: 3e7 needs eight nodes.
  const auto ok = moesim("plan " + g + " " + common + "--target tokens/s=1.5e7 --minimize cost", tmp);
  REQUIRE(ok.code == 0);
  CHECK_THAT(ok.out, Catch::Contains("6 points (0 from an earlier run, 6 run now)"));
  CHECK_THAT(ok.out, Catch::Contains("Choose point 4 (cluster.nodes=8, parallelism.ep=4): it has the lowest cost"));
  CHECK_THAT(ok.out, Catch::Contains("of the 2 points that fit in memory and meet tokens/s >= 15,000,000"));
  CHECK(fs::exists(tmp.path() / "r" / "point-0005" / "summary.csv"));
  // The same sweep again: nothing runs; an impossible target: exit code 3.
  const auto none = moesim("plan " + g + " " + common + "--target tokens/s=1e9 --minimize cost", tmp);
  CHECK(none.code == 3);
  CHECK_THAT(none.out, Catch::Contains("6 points (6 from an earlier run, 0 run now)"));
  CHECK_THAT(none.out, Catch::Contains("No point of the 6 meets tokens/s >= 1,000,000,000"));
  // Other --set values: the earlier rows are stale and run again.
  const auto changed = moesim("sweep " + g + " --set model.moe_layers=3 --set cluster.gpu_hour_price=2 --set compute.model=roofline --out " + out, tmp);
  REQUIRE(changed.code == 0);
  CHECK_THAT(changed.out, Catch::Contains("6 rows of the earlier run were for other settings"));
  CHECK(summary_row(tmp.path() / "r" / "point-0000" / "summary.csv").at("moe_layers") == "2");
  // Bad targets fail before anything runs.
  const auto bad = moesim("plan " + g + " --out '" + (tmp.path() / "b.csv").string() + "' --target tokens/s --minimize cost", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("expected METRIC>=VALUE"));
  CHECK_FALSE(fs::exists(tmp.path() / "b.csv"));
  CHECK(moesim("plan " + g + " --out '" + (tmp.path() / "b.csv").string() + "'", tmp).code == 2);
}

TEST_CASE("A point that does not fit memory says why in summary.csv", "[cli][memory]") {
  TempDir tmp;
  REQUIRE(moesim("run --set workload.kind=training -q --out '" + (tmp.path() / "t").string() + "'", tmp).code == 0);
  std::ifstream in(tmp.path() / "t" / "summary.csv");
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  CHECK(header.ends_with(",elementwise_kernels,cp_gather,job_mtbf_h,checkpoint,checkpoint_gb,checkpoint_s,checkpoint_write_s,checkpoint_every_steps,goodput,goodput_tokens_per_s,goodput_cost_per_million_tokens,train_tokens,train_days,train_gpu_hours,train_cost,etp,node_fabric,power_kw,energy_kwh_per_million_tokens,spare_nodes,spare_wait_s,parameter_sharding,param_gather_bytes,shard_group,param_gather_dtype,prefill_chunk,prompt_tokens_per_s,model,model_config,context_sigma,context_balance"));
  CHECK_THAT(row, Catch::Contains(",no,GPU "));
  CHECK_THAT(row, Catch::Contains("GB of the 80 GB of a H100-SXM (weights "));
  CHECK_THAT(row, Catch::Contains("gradients and optimizer"));
  // The compute model's choice is in the row too, and moesim diff shows it as a setting.
  CHECK(summary_row(tmp.path() / "t" / "summary.csv").at("elementwise_kernels") == "no");
  REQUIRE(moesim("run --set workload.kind=training --set compute.elementwise_kernels=true -q --out '" + (tmp.path() / "e").string() + "'",
                 tmp)
              .code == 0);
  CHECK(summary_row(tmp.path() / "e" / "summary.csv").at("elementwise_kernels") == "yes");
  CHECK(summary_row(tmp.path() / "e" / "summary.csv").at("cp_gather").empty());
  const auto d = moesim("diff '" + (tmp.path() / "t").string() + "' '" + (tmp.path() / "e").string() + "'", tmp);
  CHECK(d.code == 0);
  CHECK_THAT(d.out, Catch::Contains("elementwise_kernels"));
}

TEST_CASE("The summary names the narrower of links in series as the busiest, and a NIC its PCIe link caps", "[cli][links]") {
  TempDir tmp;
  // EP16 over the quickstart's two nodes: every GPU's NIC link (50 GB/s) and its PCIe link (64
  // GB/s) carry the same flows, busy for the same time; the NIC link runs full, the PCIe one at
  // 78 %, so the NIC link is where the fabric's time goes.
  const std::string ep16 = "run --set parallelism.ep=16 --set model.experts=16 --set model.moe_layers=2 ";
  const auto r = moesim(ep16 + "--out '" + (tmp.path() / "a").string() + "'", tmp);
  REQUIRE(r.code == 0);
  const auto at = r.out.find("  busiest     link ");
  REQUIRE(at != std::string::npos);
  const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
  INFO(line);
  CHECK_THAT(line, Catch::Contains("(nic)") && Catch::Contains("peak utilisation 100%"));
  // links.csv agrees: the named link is busy longest, tied with its PCIe link.
  const int named = std::stoi(line.substr(std::string("  busiest     link ").size()));
  std::ifstream in(tmp.path() / "a" / "links.csv");
  std::string row;
  std::getline(in, row);
  double longest = 0, named_busy = -1;
  int ties = 0;
  std::vector<std::pair<double, std::string>> rows;
  while (std::getline(in, row)) {
    const auto f = csv_fields(row);
    rows.emplace_back(std::stod(f.at(7)), f.at(3));
    longest = std::max(longest, rows.back().first);
    if (std::stoi(f.at(0)) == named) named_busy = rows.back().first;
  }
  for (const auto& [busy, kind] : rows)
    if (busy == longest) ++ties;
  CHECK(named_busy == longest);
  CHECK(ties >= 2);
  CHECK_THAT(r.out, !Catch::Contains("  note        each NIC's"));
  // An 800 Gb/s NIC on the default PCIe Gen5 link is capped by it, and the summary says so; on
  // PCIe Gen6 it is not.
  const auto fast = moesim(ep16 + "--set cluster.scale_out.nic_bandwidth=800Gbps --out '" + (tmp.path() / "b").string() + "'", tmp);
  REQUIRE(fast.code == 0);
  CHECK_THAT(fast.out, Catch::Contains("  note        each NIC's 100 GB/s is more than its PCIe link's 64 GB/s, which caps it"));
  CHECK_THAT(fast.out, Catch::Contains("(pcie)"));  // now the PCIe link runs full
  const auto gen6 = moesim(ep16 + "--set cluster.scale_out.nic_bandwidth=800Gbps --set cluster.node.pcie_bandwidth=128GB/s --out '" +
                               (tmp.path() / "c").string() + "'",
                           tmp);
  REQUIRE(gen6.code == 0);
  CHECK_THAT(gen6.out, !Catch::Contains("  note        each NIC's"));
}

TEST_CASE("Sequences longer than a GPU's tokens: without parallelism.cp the summary says the keys' and values' exchange is not modelled",
          "[cli][context_parallel]") {
  TempDir tmp;
  const std::string run = "run --set network.model=analytical --set model.moe_layers=2 --out '" + (tmp.path() / "a").string() + "' ";
  const std::string note = "  note        sequence_length 32768 is more than the 4096 tokens a GPU holds: each GPU has part of each "
                           "sequence, and its attention the FLOPs of the whole; the exchange of keys and values between the GPUs of a "
                           "sequence (context parallelism, parallelism.cp) is not modelled";
  const auto long_seq = moesim(run + "--set workload.kind=training --set workload.sequence_length=32768", tmp);
  REQUIRE(long_seq.code == 0);
  CHECK_THAT(long_seq.out, Catch::Contains(note));
  const auto own = moesim(run + "--set workload.kind=training --set workload.sequence_length=4096", tmp);
  REQUIRE(own.code == 0);
  CHECK_THAT(own.out, !Catch::Contains("  note        sequence_length"));
  // With tensor parallelism the attention takes its group's tokens together: a sequence of
  // tp x tokens_per_gpu is whole there (Megatron-LM's sequence parallelism), one longer is not.
  const auto tp_whole = moesim(run + "--set workload.kind=training --set workload.sequence_length=8192 --set parallelism.tp=2", tmp);
  REQUIRE(tp_whole.code == 0);
  CHECK_THAT(tp_whole.out, !Catch::Contains("  note        sequence_length"));
  const auto tp_part = moesim(run + "--set workload.kind=training --set workload.sequence_length=16384 --set parallelism.tp=2", tmp);
  REQUIRE(tp_part.code == 0);
  CHECK_THAT(tp_part.out, Catch::Contains("  note        sequence_length 16384 is more than the 8192 tokens a tensor-parallel group holds"));
  const auto decode = moesim(run + "--set workload.kind=decode --set workload.sequence_length=~ --set workload.context_length=32768", tmp);
  REQUIRE(decode.code == 0);
  CHECK_THAT(decode.out, !Catch::Contains("  note        sequence_length"));
  // With context parallelism over the 8 GPUs of a node the exchange is modelled: no note, its wait listed.
  const auto cp = moesim(run + "--set workload.kind=training --set workload.sequence_length=32768 --set parallelism.cp=8", tmp);
  REQUIRE(cp.code == 0);
  CHECK_THAT(cp.out, !Catch::Contains("  note        sequence_length"));
  CHECK_THAT(cp.out, Catch::Contains(", CP8 (32768-token sequences, 4096 tokens of each a GPU)"));
  CHECK_THAT(cp.out, Catch::Contains("    cp wait    "));
  const auto row = summary_row(tmp.path() / "a" / "summary.csv");
  CHECK(row.at("cp") == "8");
  CHECK(std::stod(row.at("cp_wait_us")) > 0);
  CHECK(std::stoll(row.at("cp_bytes")) > 0);
}

TEST_CASE("The summary names the attention: sparse MLA with its top-k, the sliding windows, or the linear layers", "[cli][dsa][sliding_window][linear]") {
  TempDir tmp;
  const auto dsa = moesim("run '" + kSource + "/scenarios/deepseek-v3-decode-ep144.yaml' --set network.model=analytical "
                          "--set workload.tokens_per_gpu=2 --set model.mla.index_topk=2048 --set model.mla.index_n_heads=64 "
                          "--set model.mla.index_head_dim=128 --out '" + (tmp.path() / "d").string() + "'",
                          tmp);
  REQUIRE(dsa.code == 0);
  CHECK_THAT(dsa.out, Catch::Contains("; multi-head latent attention, sparse: each query over its top 2048 keys (DeepSeek Sparse Attention)"));
  const auto oss = moesim("run '" + kSource + "/scenarios/gpt-oss-120b-decode-h100.yaml' --out '" + (tmp.path() / "o").string() + "'", tmp);
  REQUIRE(oss.code == 0);
  CHECK_THAT(oss.out, Catch::Contains("; sliding-window attention (128 tokens) on 18 of its 36 layers"));
  // Qwen3-Next: its linear layers, and their states within the KV cache (48 sequences x 36 layers
  // x 2,146,304 bytes).
  const auto next = moesim("run '" + kSource + "/scenarios/qwen3-next-decode-h100.yaml' --out '" + (tmp.path() / "q").string() + "'", tmp);
  REQUIRE(next.code == 0);
  CHECK_THAT(next.out, Catch::Contains("; linear attention (Gated DeltaNet, a 2096 KiB state a sequence and layer) on 36 of its 48 layers"));
  CHECK_THAT(next.out, Catch::Contains(fmt::format("with {:.1f} of linear-attention states", 48.0 * 36 * 2146304 / 1e9)));
}

TEST_CASE("moesim calibrate finds the efficiency at which a run meets a measured step", "[cli][calibrate]") {
  TempDir tmp;
  const std::string q = "'" + kSource + "/scenarios/quickstart.yaml' --set compute.model=roofline --set model.moe_layers=2 "
                        "--set network.model=analytical ";
  // The "measurement": the same scenario's step at an efficiency of 0.35.
  const auto measured = moesim("run " + q + "--set compute.flops_efficiency=0.35 --out '" + (tmp.path() / "m").string() + "'", tmp);
  REQUIRE(measured.code == 0);
  const std::string step = summary_row(tmp.path() / "m" / "summary.csv").at("step_time_us");
  const auto r = moesim("calibrate " + q + "--key compute.flops_efficiency --target step_time_us=" + step + " --out '" +
                            (tmp.path() / "c").string() + "'",
                        tmp);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("moesim calibrate: compute.flops_efficiency between 0.05 and 1 for step_time_us = "));
  CHECK_THAT(r.out, Catch::Contains("  compute.flops_efficiency = 0.05 "));  // the ends first
  CHECK_THAT(r.out, Catch::Contains("  compute.flops_efficiency = 1 "));
  // The run it wrote meets the target within the default 0.5 %.
  const double found = std::stod(summary_row(tmp.path() / "c" / "summary.csv").at("step_time_us"));
  CHECK(found == Approx(std::stod(step)).epsilon(0.005));
  // Out of the range's reach: exit code 3, saying what the ends give; not a column: a usage error.
  const auto far = moesim("calibrate " + q + "--key compute.flops_efficiency --target step_time_us=1", tmp);
  CHECK(far.code == 3);
  CHECK_THAT(far.err, Catch::Contains("moesim: calibrate: the target 1 is outside what the range gives"));
  const auto bad = moesim("calibrate " + q + "--key compute.flops_efficiency --target speed=3", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--target: 'speed' is not a summary.csv column"));
  const auto no_key = moesim("calibrate " + q + "--target step_time_us=3", tmp);
  CHECK(no_key.code == 2);
  CHECK_THAT(no_key.err, Catch::Contains("calibrate needs --key KEY.PATH"));
  // A quantity: its unit from --unit (without it the loader refuses the bare number).
  const auto slow = moesim("run " + q + "--set compute.kernel_overhead=50us --out '" + (tmp.path() / "k").string() + "'", tmp);
  REQUIRE(slow.code == 0);
  const std::string slow_step = summary_row(tmp.path() / "k" / "summary.csv").at("step_time_us");
  const auto overhead = moesim("calibrate " + q + "--key compute.kernel_overhead --unit us --range 0,200 --target step_time_us=" + slow_step, tmp);
  INFO(overhead.out << overhead.err);
  CHECK(overhead.code == 0);
  CHECK_THAT(overhead.out, Catch::Contains("  compute.kernel_overhead = 200us "));
  CHECK_THAT(overhead.out, Catch::Contains("us: step_time_us = "));  // the value found, with its unit
  const auto unitless = moesim("calibrate " + q + "--key compute.kernel_overhead --range 0,200 --target step_time_us=" + slow_step, tmp);
  CHECK(unitless.code == 2);
  // Bad input is a usage error (exit code 2), not a target out of reach (3).
  const auto backwards = moesim("calibrate " + q + "--key compute.flops_efficiency --range 1,0.05 --target step_time_us=" + slow_step, tmp);
  CHECK(backwards.code == 2);
  CHECK_THAT(backwards.err, Catch::Contains("--range 1,0.05: the first value must be below the second"));
  CHECK(moesim("calibrate " + q + "--key compute.flops_efficiency --target step_time_us=-5", tmp).code == 2);
  CHECK(moesim("calibrate " + q + "--key compute.flops_efficiency --target step_time_us>=5", tmp).code == 2);
  // plan's names and units: step_time in milliseconds is the same target as step_time_us.
  const auto named = moesim("calibrate " + q + "--key compute.flops_efficiency --target step_time=" +
                                fmt::format("{}ms", std::stod(step) / 1e3) + " -q",
                            tmp);
  CHECK(named.code == 0);
  CHECK_THAT(named.out, Catch::Contains(": step_time_us = "));
}

TEST_CASE("moesim serve queues prompts of the traffic's lengths: a spread or a file", "[cli][serve]") {
  TempDir tmp;
  const std::string q = "'" + kSource + "/scenarios/quickstart.yaml' ";
  const std::string sides = "--prefill-set workload.kind=prefill --prefill-set model.moe_layers=2 --prefill-set workload.sequence_length=1024 "
                            "--decode-set workload.kind=decode --decode-set workload.sequence_length=~ --decode-set workload.context_length=1024 "
                            "--decode-set workload.tokens_per_gpu=32 --decode-set model.moe_layers=2 --input-tokens-per-s 2e6 "
                            "--output-tokens-per-s 1e6 ";
  const auto fixed = moesim("serve " + q + q + sides + "--out '" + (tmp.path() / "f").string() + "'", tmp);
  REQUIRE(fixed.code == 0);
  CHECK_THAT(fixed.out, !Catch::Contains("  prompts     "));
  const auto spread = moesim("serve " + q + q + sides + "--prompt-length-sigma 1 --out '" + (tmp.path() / "s").string() + "'", tmp);
  INFO(spread.out << spread.err);
  REQUIRE(spread.code == 0);
  CHECK_THAT(spread.out, Catch::Contains("  prompts     log-normal lengths around the scenario's 1024 tokens (sigma 1 of their log, the mean kept)"));
  const auto f = summary_row(tmp.path() / "f" / "serve.csv"), s = summary_row(tmp.path() / "s" / "serve.csv");
  CHECK(s.at("prompt_length_sigma") == "1");
  CHECK(f.at("prompt_length_sigma") == "0");
  CHECK(std::stod(s.at("prompt_tokens_mean")) == 1024);  // the mean kept: the same prompts a second
  CHECK(s.at("prompts_per_s") == f.at("prompts_per_s"));
  CHECK(std::stod(s.at("ttft_p99_us")) > std::stod(f.at("ttft_p99_us")));
  // The part of a prompt's time that grows with its length squared, from a run at half the
  // length (512 tokens): more units for the same tokens.
  CHECK(std::stod(f.at("prompt_square_us")) == 0);
  CHECK(std::stod(s.at("prompt_square_us")) > 0);
  CHECK(std::filesystem::exists(tmp.path() / "s" / "prefill-half-length" / "summary.csv"));
  CHECK(!std::filesystem::exists(tmp.path() / "f" / "prefill-half-length"));
  CHECK_THAT(spread.out, Catch::Contains("and a prompt's attention growing with the square of its length (a prompt of twice the scenario's "
                                         "length takes"));
  CHECK(std::stod(s.at("prefill_units")) > std::stod(f.at("prefill_units")));
  CHECK(s.at("prefill_router") == "round_robin");
  // The least-work router: the same load and units, the prompts to the unit with the least work.
  const auto least = moesim("serve " + q + q + sides + "--prompt-length-sigma 1 --prefill-router least_work --out '" +
                                (tmp.path() / "l").string() + "'",
                            tmp);
  REQUIRE(least.code == 0);
  CHECK_THAT(least.out, Catch::Contains("queue, each prompt to the unit with the least work on hand (simulated"));
  const auto l = summary_row(tmp.path() / "l" / "serve.csv");
  CHECK(l.at("prefill_router") == "least_work");
  CHECK(l.at("prefill_units_whole") == s.at("prefill_units_whole"));
  const auto bad_router = moesim("serve " + q + q + sides + "--prefill-router random", tmp);
  CHECK(bad_router.code == 2);
  CHECK_THAT(bad_router.err, Catch::Contains("--prefill-router must be round_robin or least_work, got 'random'"));
  // Lengths from a file: their mean sets the prompts a second.
  const auto file = tmp.path() / "lengths.csv";
  std::ofstream(file) << "prompt_tokens\n512\n1536\n2048\n";
  const auto drawn = moesim("serve " + q + q + sides + "--prompt-lengths '" + file.string() + "' --out '" + (tmp.path() / "d").string() + "'", tmp);
  REQUIRE(drawn.code == 0);
  CHECK_THAT(drawn.out, Catch::Contains("(3 of them: mean 1365 tokens, p50 1536, p99 2048; the scenario's 1024)"));
  const auto d = summary_row(tmp.path() / "d" / "serve.csv");
  CHECK(std::stod(d.at("prompt_tokens_mean")) == Approx(4096.0 / 3));
  CHECK(std::stod(d.at("prompts_per_s")) == Approx(std::stod(f.at("prompts_per_s")) * 1024 / (4096.0 / 3)));
  CHECK(d.at("prompt_lengths_file") == file.string());
  // Both: refused.
  const auto both = moesim("serve " + q + q + sides + "--prompt-length-sigma 1 --prompt-lengths '" + file.string() + "'", tmp);
  CHECK(both.code == 2);
  CHECK_THAT(both.err, Catch::Contains("--prompt-length-sigma and --prompt-lengths both give the prompts' lengths: use one"));
}

TEST_CASE("moesim serve plans prefill and decode units for a traffic from one run of each", "[cli][serve]") {
  TempDir tmp;
  const std::string q = "'" + kSource + "/scenarios/quickstart.yaml' ";
  // Prefill: 4 prompts of 1024 tokens per GPU.
  const std::string prefill = "--prefill-set workload.kind=prefill --prefill-set model.moe_layers=2 --prefill-set cluster.gpu_hour_price=2 "
                              "--prefill-set workload.sequence_length=1024 ";
  const std::string decode =
      "--decode-set workload.kind=decode --decode-set workload.sequence_length=~ --decode-set workload.context_length=1024 "
      "--decode-set workload.tokens_per_gpu=32 --decode-set model.moe_layers=2 --decode-set cluster.gpu_hour_price=3 "
      "--decode-set parallelism.tp=2 ";
  const auto out = tmp.path() / "s";
  // 40 % of the prompt tokens from the KV cache; the output rate given per day.
  const auto r = moesim("serve " + q + q + prefill + decode + "--input-tokens-per-s 2e6 --cache-hit-rate 0.4 --output-tokens-per-s 8.64e10/day --out '" +
                            out.string() + "'",
                        tmp);
  REQUIRE(r.code == 0);
  INFO(r.out);
  const auto p = summary_row(out / "prefill" / "summary.csv");
  const auto d = summary_row(out / "decode" / "summary.csv");
  CHECK(p.at("workload") == "prefill");
  CHECK(d.at("workload") == "decode");
  const auto s = summary_row(out / "serve.csv");
  const double prefill_rate = std::stod(p.at("tokens_per_s")), decode_rate = std::stod(d.at("tokens_per_s"));
  const double prefill_units = 2e6 * 0.6 / prefill_rate, decode_units = 1e6 / decode_rate;
  CHECK(std::stod(s.at("prefill_tokens_per_s")) == Approx(1.2e6));
  CHECK(std::stod(s.at("output_tokens_per_s")) == Approx(1e6));
  CHECK(std::stod(s.at("prefill_units")) == Approx(prefill_units).epsilon(1e-5));
  CHECK(std::stod(s.at("decode_units")) == Approx(decode_units).epsilon(1e-5));
  const int pw = static_cast<int>(std::ceil(prefill_units)), dw = static_cast<int>(std::ceil(decode_units));
  CHECK(std::stoi(s.at("prefill_units_whole")) == pw);
  CHECK(std::stoi(s.at("decode_units_whole")) == dw);
  CHECK(std::stoi(s.at("prefill_gpus")) == 16 * pw);
  CHECK(std::stoi(s.at("decode_gpus")) == 16 * dw);
  CHECK(std::stoi(s.at("gpus")) == 16 * (pw + dw));
  // Little's law: the sequences decoding at once are the output rate times the time per token.
  CHECK(std::stod(s.at("sequences_decoding")) == Approx(1e6 * std::stod(d.at("time_per_token_us")) / 1e6).epsilon(1e-5));
  CHECK(std::stod(s.at("price_per_hour")) == Approx(16.0 * pw * 2 + 16.0 * dw * 3));
  CHECK(std::stod(s.at("cost_per_million_output_tokens")) == Approx((16.0 * pw * 2 + 16.0 * dw * 3) / 3600.0).epsilon(1e-5));
  // Mixtral's grouped-query cache: 2 x 8 KV heads x 128 x 2 bytes a layer, over 2 layers (all of
  // a token's cache, not a tensor-parallel GPU's half of the heads).
  CHECK(std::stod(s.at("kv_bytes_per_token")) == 2 * 8 * 128 * 2 * 2);
  // The decode at the load: the sequences a GPU decoding at once, rounded up, where fewer than the
  // batch's 32, run again for the time per token every unit sees.
  const auto at_load = static_cast<int>(std::ceil(std::stod(s.at("sequences_decoding")) / (16.0 * dw) - 1e-9));
  if (at_load < 32) {
    CHECK(std::stoi(s.at("decode_at_load_sequences")) == at_load);
    const auto again = summary_row(out / "decode-at-load" / "summary.csv");
    CHECK(again.at("tokens_per_gpu") == std::to_string(at_load));
    CHECK(std::stod(s.at("decode_at_load_time_per_token_us")) == Approx(std::stod(again.at("time_per_token_us"))));
    CHECK(std::stod(s.at("decode_at_load_time_per_token_us")) <= std::stod(d.at("time_per_token_us")));
  } else {
    CHECK(s.at("decode_at_load_sequences").empty());
  }
  CHECK_THAT(r.out, Catch::Contains("moesim serve: 2,000,000 prompt tokens/s (40.0 % from the KV cache, 1,200,000 to prefill), 1,000,000 output tokens/s"));
  CHECK_THAT(r.out, Catch::Contains(fmt::format("the load takes {:.2f} units: {} ({} GPUs", decode_units, dw, 16 * dw)));
  // The scenario's prompts have no cached prefix, the traffic's 40 %: the plan says so.
  CHECK_THAT(r.out, Catch::Contains("note: 40.0 % of the traffic's prompt tokens are cache hits, 0.0 % of the scenario's prompts"));
  // The prefill batch: the scenario's 64 prompts (16 GPUs x 4096 tokens / 1024) and, from a
  // second run at one prompt a GPU, 16; a batch of one keeps the busiest GPU's own work (the
  // step less the experts and the all-to-all waits) and 1/16 of the rest.
  const auto one = summary_row(out / "prefill-one-prompt" / "summary.csv");
  CHECK(one.at("tokens_per_step") == std::to_string(16 * 1024));
  CHECK(s.at("batch_prompts") == "64");
  CHECK(s.at("batch_least_prompts") == "16");
  const double least = std::stod(one.at("step_time_us"));
  const double local = least - std::stod(one.at("experts_us")) - std::stod(one.at("dispatch_wait_us")) - std::stod(one.at("combine_wait_us"));
  CHECK(std::stod(s.at("batch_least_us")) == Approx(least).epsilon(1e-6));
  CHECK(std::stod(s.at("batch_one_prompt_us")) == Approx(local + (least - local) / 16).epsilon(1e-6));
  CHECK(std::stod(s.at("prompts_per_s")) == Approx(1.2e6 / 1024));
  const double p99 = std::stod(s.at("ttft_p99_us")), one_prompt = std::stod(s.at("batch_one_prompt_us"));
  CHECK(std::stod(s.at("ttft_p50_us")) >= one_prompt);
  CHECK(std::stod(s.at("ttft_p50_us")) <= std::stod(s.at("ttft_p90_us")));
  CHECK(std::stod(s.at("ttft_p90_us")) <= p99);
  CHECK(std::stod(s.at("mean_batch_prompts")) <= 64);
  CHECK(s.at("prefill_units_for_load") == s.at("prefill_units_whole"));
  CHECK_THAT(r.out, Catch::Contains("  first token "));
  // A p99 target between a batch of one and the load's p99: more prefill units than the load takes.
  REQUIRE(p99 > 1.2 * one_prompt);
  const double target_us = (p99 + one_prompt) / 2;
  const auto out2 = tmp.path() / "s2";
  const auto r2 = moesim("serve " + q + q + prefill + decode + "--input-tokens-per-s 2e6 --cache-hit-rate 0.4 --output-tokens-per-s 1e6 " +
                             fmt::format("--ttft {:.3f}us --out '{}'", target_us, out2.string()),
                         tmp);
  REQUIRE(r2.code == 0);
  const auto s2 = summary_row(out2 / "serve.csv");
  CHECK(std::stoi(s2.at("prefill_units_whole")) > std::stoi(s2.at("prefill_units_for_load")));
  CHECK(s2.at("prefill_units_for_load") == std::to_string(pw));
  CHECK(std::stod(s2.at("ttft_p99_us")) <= target_us);
  CHECK(std::stoi(s2.at("prefill_gpus")) == 16 * std::stoi(s2.at("prefill_units_whole")));
  CHECK_THAT(r2.out, Catch::Contains("more for the time to first token"));
  // Refused before anything runs: the scenarios the wrong way round, a missing or bad rate, a hit
  // rate of 1.
  const std::string rates = "--input-tokens-per-s 1e6 --output-tokens-per-s 1e5 --out '" + (tmp.path() / "x").string() + "' ";
  const auto swapped = moesim("serve " + q + q + rates, tmp);
  CHECK(swapped.code == 2);
  CHECK_THAT(swapped.err, Catch::Contains("the prefill scenario must have workload.kind: prefill (it has 'forward')"));
  CHECK(moesim("serve " + q + q + prefill + decode + "--input-tokens-per-s 1e6", tmp).code == 2);
  const auto bad = moesim("serve " + q + q + prefill + decode + "--input-tokens-per-s 1e6/week --output-tokens-per-s 1", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--input-tokens-per-s: expected a number of tokens a second"));
  const auto hit = moesim("serve " + q + q + prefill + decode + rates + "--cache-hit-rate 1", tmp);
  CHECK(hit.code == 2);
  CHECK_THAT(hit.err, Catch::Contains("--cache-hit-rate must be in [0, 1)"));
  // Spares for failures: refused without a repair time or with an availability of 1, before anything runs.
  const auto no_repair = moesim("serve " + q + q + prefill + decode + rates + "--gpu-mtbf-hours 5000", tmp);
  CHECK(no_repair.code == 2);
  CHECK_THAT(no_repair.err, Catch::Contains("--gpu-mtbf-hours needs --repair-time"));
  const auto all_up = moesim("serve " + q + q + prefill + decode + rates + "--gpu-mtbf-hours 5000 --repair-time 4h --availability 1", tmp);
  CHECK(all_up.code == 2);
  CHECK_THAT(all_up.err, Catch::Contains("--availability must be between 0 and 1"));
  const auto alone = moesim("serve " + q + q + prefill + decode + rates + "--repair-time 4h", tmp);
  CHECK(alone.code == 2);
  CHECK_THAT(alone.err, Catch::Contains("--repair-time and --availability go with --gpu-mtbf-hours"));
  CHECK_FALSE(fs::exists(tmp.path() / "x"));
  CHECK(s.at("prefill_spares").empty());
  // With them: the spares serve.csv says, for units of 16 GPUs down 24 h after each failure.
  const auto out3 = tmp.path() / "s3";
  const auto r3 = moesim("serve " + q + q + prefill + decode + "--input-tokens-per-s 2e6 --cache-hit-rate 0.4 --output-tokens-per-s 1e6 "
                         "--gpu-mtbf-hours 5000 --repair-time 24h --out '" + out3.string() + "'", tmp);
  REQUIRE(r3.code == 0);
  const auto s3 = summary_row(out3 / "serve.csv");
  // Each unit down 24 / (5000 / 16 + 24) of the time; the fewest spares whose binomial tail is within 0.1 %.
  const auto fewest_spares = [](int n) {
    const double q = 24.0 / (5000.0 / 16 + 24);
    for (int spares = 0;; ++spares) {
      const int m = n + spares;
      double tail = 0, choose = 1;  // C(m, k) as k rises
      for (int k = 0; k <= m; ++k) {
        if (k > 0) choose = choose * (m - k + 1) / k;
        if (k > spares) tail += choose * std::pow(q, k) * std::pow(1 - q, m - k);
      }
      if (tail <= 0.001) return spares;
    }
  };
  CHECK(std::stoi(s3.at("prefill_spares")) == fewest_spares(pw));
  CHECK(std::stoi(s3.at("decode_spares")) == fewest_spares(dw));
  CHECK(std::stoi(s3.at("prefill_spares")) > 0);
  CHECK(std::stoi(s3.at("gpus_with_spares")) == 16 * (pw + dw + std::stoi(s3.at("prefill_spares")) + std::stoi(s3.at("decode_spares"))));
  CHECK(s3.at("prefill_units_whole") == std::to_string(pw));  // the load's units do not change
  // Power: every whole unit of 16 H100 at their rated 700 W (spares idle, not counted); a
  // million output tokens take a second at 1e6 a second.
  CHECK(std::stod(s3.at("power_kw")) == Approx((pw + dw) * 16 * 0.7));
  CHECK(std::stod(s3.at("energy_kwh_per_million_output_tokens")) == Approx((pw + dw) * 16 * 0.7 / 3600));
  CHECK_THAT(r3.out, Catch::Contains("  spares      a GPU failing every 5,000 h, a unit out 24 h after"));
  CHECK_THAT(r3.out, Catch::Contains(fmt::format("  power       {:.4g} kW (", (pw + dw) * 16 * 0.7)));
}

TEST_CASE("moesim serve picks a grid's point: the fewest GPUs among those that fit and meet the target", "[cli][serve]") {
  TempDir tmp;
  const std::string q = "'" + kSource + "/scenarios/quickstart.yaml' ";
  std::ofstream(tmp.path() / "decode.yaml") << "base: " << kSource << "/scenarios/quickstart.yaml\n"
                                            << "axes:\n  workload.tokens_per_gpu: [8, 32, 128, 512]\n";
  const std::string grid = "'" + (tmp.path() / "decode.yaml").string() + "' ";
  const std::string sets =
      "--prefill-set workload.kind=prefill --prefill-set model.moe_layers=2 --decode-set workload.kind=decode "
      "--decode-set workload.sequence_length=~ --decode-set workload.context_length=1024 --decode-set model.moe_layers=2 "
      "--input-tokens-per-s 2e6 --output-tokens-per-s 3e6 --jobs 2 ";
  const auto out = tmp.path() / "s";
  const std::string to = "--out '" + out.string() + "' ";
  const auto r = moesim("serve " + q + grid + sets + to + "--tpot 1ms", tmp);
  REQUIRE(r.code == 0);
  INFO(r.out);
  // The choice, recomputed from the sweep's rows: whole units of 16 GPUs for 3e6 tokens/s, among
  // the points decoding a token within 1 ms.
  std::ifstream in(out / "decode-sweep.csv");
  std::string header, line;
  std::getline(in, header);
  const auto h = csv_fields(header);
  const auto col = [&](const std::string& name) {
    return static_cast<std::size_t>(std::find(h.begin(), h.end(), name) - h.begin());
  };
  int best = -1, met = 0;
  double best_gpus = 0;
  while (std::getline(in, line)) {
    const auto v = csv_fields(line);
    if (std::stod(v.at(col("time_per_token_us"))) > 1000) continue;
    ++met;
    const double gpus = 16 * std::ceil(3e6 / std::stod(v.at(col("tokens_per_s"))));
    if (best < 0 || gpus < best_gpus) best = std::stoi(v.at(col("point"))), best_gpus = gpus;
  }
  REQUIRE(best >= 0);
  CHECK(met >= 2);
  CHECK(met < 4);  // the target rules some out
  const auto s = summary_row(out / "serve.csv");
  CHECK(std::stod(s.at("decode_gpus")) == best_gpus);
  CHECK_THAT(r.out, Catch::Contains(fmt::format("point {} of ", best)));
  CHECK_THAT(r.out, Catch::Contains(fmt::format("of the 4 decode points 4 fit the GPUs' memory and {} of those decode a token within 1.000 ms; "
                                                "this one serves the load on the fewest GPUs", met)));
  // Run again with a target no point meets: the sweep's rows are reused, and exit code 3.
  const auto none = moesim("serve " + q + grid + sets + to + "--tpot 0.1ms", tmp);
  CHECK(none.code == 3);
  CHECK_THAT(none.out, Catch::Contains("no decode point can serve the load: of the 4 decode points 4 fit the GPUs' memory and 0 of those"));
  // A time to first token under a batch of one prompt: no count of units meets it, exit code 3
  // before the decode side runs.
  const auto slow = moesim("serve " + q + grid + sets + "--out '" + (tmp.path() / "t").string() + "' --ttft 1us", tmp);
  CHECK(slow.code == 3);
  CHECK_THAT(slow.out, Catch::Contains("moesim serve: no count of prefill units meets the time to first token: p99 within 0.001 ms; at 1 unit "
                                       "(1 for the load) it is "));
  CHECK_FALSE(fs::exists(tmp.path() / "t" / "decode-sweep.csv"));
  // A grid that skips: its invalid points (EP 3) and those too big whatever the routing (EP 2
  // at 2.5 GB) are no candidates, and the choice says how many there were.
  std::ofstream(tmp.path() / "skip.yaml") << "base: " << kSource << "/scenarios/quickstart.yaml\n"
                                          << "axes:\n  workload.tokens_per_gpu: [8, 32]\n  parallelism.ep: [3, 2, 8]\nskip: [invalid, unfit]\n";
  const auto skipping = moesim("serve " + q + "'" + (tmp.path() / "skip.yaml").string() + "' " + sets +
                                   "--decode-set 'cluster.gpu={preset: H100-SXM, memory: 2.5GB}' --out '" + (tmp.path() / "k").string() + "'",
                               tmp);
  REQUIRE(skipping.code == 0);
  CHECK_THAT(skipping.out, Catch::Contains("of the 2 decode points 2 fit the GPUs' memory") &&
                               Catch::Contains("(4 more of the grid's points were skipped without running: its sweep's rows say why)"));
  CHECK_THAT(skipping.out, Catch::Contains("parallelism.ep=8"));
  // A bad target is refused before anything runs.
  const auto bad = moesim("serve " + q + grid + sets + "--out '" + (tmp.path() / "u").string() + "' --tpot 5", tmp);
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--tpot: expected a time > 0 with its unit"));
  CHECK_FALSE(fs::exists(tmp.path() / "u"));
}

TEST_CASE("moesim serve times a prefill grid's points at one prompt per GPU for their queues", "[cli][serve]") {
  TempDir tmp;
  const std::string q = "'" + kSource + "/scenarios/quickstart.yaml' ";
  std::ofstream(tmp.path() / "prefill.yaml") << "base: " << kSource << "/scenarios/quickstart.yaml\n"
                                             << "axes:\n  workload.tokens_per_gpu: [2048, 8192]\n";
  const auto out = tmp.path() / "s";
  const std::string grid = "serve '" + (tmp.path() / "prefill.yaml").string() + "' " + q +
                           "--prefill-set workload.kind=prefill --prefill-set workload.sequence_length=512 "
                           "--prefill-set model.moe_layers=2 --decode-set workload.kind=decode --decode-set workload.sequence_length=~ "
                           "--decode-set workload.context_length=1024 --decode-set model.moe_layers=2 "
                           "--input-tokens-per-s 1e7 --output-tokens-per-s 1e6 --jobs 2 ";
  const auto r = moesim(grid + "--out '" + out.string() + "'", tmp);
  REQUIRE(r.code == 0);
  INFO(r.out);
  // The point taken, its batch (16 GPUs x its tokens per GPU / 512) and its run at 512 tokens
  // per GPU, one prompt each.
  const auto s = summary_row(out / "serve.csv");
  const int batch = std::stoi(s.at("batch_prompts"));
  CHECK((batch == 16 * 2048 / 512 || batch == 16 * 8192 / 512));
  const int point = batch == 64 ? 0 : 1;
  CHECK_THAT(r.out, Catch::Contains(fmt::format("point {} of ", point)));
  const auto one = summary_row(out / "prefill-one-prompt" / fmt::format("point-{:04d}", point) / "summary.csv");
  CHECK(one.at("tokens_per_step") == std::to_string(16 * 512));
  CHECK(s.at("batch_least_prompts") == "16");
  CHECK(std::stod(s.at("batch_least_us")) == Approx(std::stod(one.at("step_time_us"))).epsilon(1e-6));
  CHECK_FALSE(fs::exists(out / "prefill-one-prompt" / fmt::format("point-{:04d}", 1 - point)));  // only the point taken
  // Prompts longer than a unit's batch (16 GPUs x 256 tokens against 8192): each takes two
  // batches, alone, and the plan says so.
  const auto longer = moesim("serve " + q + q +
                                 "--prefill-set workload.kind=prefill --prefill-set workload.sequence_length=8192 "
                                 "--prefill-set workload.tokens_per_gpu=256 --prefill-set model.moe_layers=2 "
                                 "--decode-set workload.kind=decode --decode-set workload.sequence_length=~ "
                                 "--decode-set workload.context_length=1024 --decode-set model.moe_layers=2 "
                                 "--input-tokens-per-s 1e6 --output-tokens-per-s 1e6 --out '" + (tmp.path() / "l").string() + "'",
                             tmp);
  REQUIRE(longer.code == 0);
  const auto sl = summary_row(tmp.path() / "l" / "serve.csv");
  const auto lp = summary_row(tmp.path() / "l" / "prefill" / "summary.csv");
  CHECK(sl.at("batch_prompts") == "1");
  CHECK(std::stod(sl.at("batch_one_prompt_us")) == Approx(2 * std::stod(lp.at("step_time_us"))).epsilon(1e-6));
  CHECK(std::stod(sl.at("ttft_p50_us")) >= 2 * std::stod(lp.at("step_time_us")) - 1e-3);  // (written to the nanosecond)
  CHECK_THAT(longer.out, Catch::Contains("note: a 8192-token prompt is more than a unit's batch of 4096 tokens: each prompt takes 2.00 "
                                         "batches, alone"));
  CHECK_THAT(longer.out, Catch::Contains(fmt::format("a batch: one prompt in {:.1f} ms", 2 * std::stod(lp.at("step_time_us")) / 1e3)));
  // Under a TTFT target every point is sized by its own queue (both run at one prompt per GPU),
  // and the one that meets it on the fewest GPUs is taken; the plan meets it.
  const double target_us = std::stod(s.at("ttft_p99_us")) * 0.9;
  const auto t = moesim(grid + fmt::format("--ttft {:.3f}us --out '{}'", target_us, (tmp.path() / "t").string()), tmp);
  REQUIRE(t.code == 0);
  const auto st = summary_row(tmp.path() / "t" / "serve.csv");
  CHECK(std::stod(st.at("ttft_p99_us")) <= target_us);
  for (const int p : {0, 1}) CHECK(fs::exists(tmp.path() / "t" / "prefill-one-prompt" / fmt::format("point-{:04d}", p) / "summary.csv"));
  CHECK_THAT(t.out, Catch::Contains("of the 2 prefill points 2 fit the GPUs' memory and 2 of those meet the time to first token (p99 within "));
  CHECK_THAT(t.out, Catch::Contains("with some count of units; this one does so on the fewest GPUs"));
  // A target under any batch of one prompt: no point meets it, exit code 3.
  const auto none = moesim(grid + "--ttft 1us --out '" + (tmp.path() / "u").string() + "'", tmp);
  CHECK(none.code == 3);
  CHECK_THAT(none.out, Catch::Contains("no prefill point can serve the load: of the 2 prefill points 2 fit the GPUs' memory and 0 of those "
                                       "meet the time to first token (p99 within 0.001 ms)"));
}

TEST_CASE("A prefill's caches, its prompts' and their cached prefixes', count in its memory", "[cli][prefill]") {
  // The quickstart as a prefill of 4 prompts of 1024 new tokens per GPU: against the same
  // tokens run as a forward pass, their caches, 4 x 1024 tokens x 32 layers x 4096 bytes (8 kv
  // heads of 128, K and V in bf16). After 2048 cached tokens each, the prefixes' caches too,
  // 4 x 2048 x 32 x 4096 bytes more; with an FP8 cache half of both.
  TempDir tmp;
  const std::string run = "run --set workload.sequence_length=1024 --set network.model=analytical -q ";
  const std::string prefill = run + "--set workload.kind=prefill ";
  REQUIRE(moesim(run + "--out '" + (tmp.path() / "f").string() + "'", tmp).code == 0);
  REQUIRE(moesim(prefill + "--out '" + (tmp.path() / "a").string() + "'", tmp).code == 0);
  REQUIRE(moesim(prefill + "--set workload.cached_prefix=2048 --out '" + (tmp.path() / "b").string() + "'", tmp).code == 0);
  REQUIRE(moesim(prefill + "--set workload.cached_prefix=2048 --set model.kv_cache_dtype=fp8 --out '" + (tmp.path() / "c").string() + "'",
                 tmp).code == 0);
  const auto f = summary_row(tmp.path() / "f" / "summary.csv");
  const auto a = summary_row(tmp.path() / "a" / "summary.csv"), b = summary_row(tmp.path() / "b" / "summary.csv");
  const auto c = summary_row(tmp.path() / "c" / "summary.csv");
  const double made = 4.0 * 1024 * 32 * 4096 / 1e9, prefixes = 4.0 * 2048 * 32 * 4096 / 1e9;
  CHECK(std::stod(a.at("memory_gb_max")) - std::stod(f.at("memory_gb_max")) == Approx(made).margin(2e-3));
  CHECK(std::stod(b.at("memory_gb_max")) - std::stod(a.at("memory_gb_max")) == Approx(prefixes).margin(2e-3));
  CHECK(std::stod(b.at("memory_gb_max")) - std::stod(c.at("memory_gb_max")) == Approx((made + prefixes) / 2).margin(2e-3));
  // The attention over the prefixes makes the step longer; the tokens prefilled stay the same.
  CHECK(std::stod(b.at("attention_us")) > std::stod(a.at("attention_us")));
  CHECK(b.at("tokens_per_step") == a.at("tokens_per_step"));
}

TEST_CASE("moesim serve --colocated plans units whose decode steps prefill the prompts too", "[cli][serve][colocated]") {
  TempDir tmp;
  const std::string q = "'" + kSource + "/scenarios/quickstart.yaml' ";
  // The quickstart as a decode of 32 sequences a GPU over 1024-token contexts, each step also
  // prefilling 128 tokens a GPU of 1024-token prompts.
  const std::string decode = "--set workload.kind=decode --set workload.sequence_length=~ --set workload.context_length=1024 "
                             "--set workload.tokens_per_gpu=32 --set model.moe_layers=2 --set cluster.gpu_hour_price=2 ";
  const std::string chunk = "--set workload.prefill_chunk=128 ";
  const auto out = tmp.path() / "c";
  const auto r = moesim("serve --colocated " + q + decode + chunk + "--input-tokens-per-s 4e6 --cache-hit-rate 0.5 --output-tokens-per-s 2e5 " +
                            "--ttft-percentile 90 --out '" + out.string() + "'",
                        tmp);
  INFO(r.out + r.err);
  REQUIRE(r.code == 0);
  const auto run = summary_row(out / "colocated" / "summary.csv");
  CHECK(run.at("prefill_chunk") == "128");
  const auto s = summary_row(out / "serve.csv");
  const double output_rate = std::stod(run.at("tokens_per_s")), prompt_rate = std::stod(run.at("prompt_tokens_per_s"));
  const double output_units = 2e5 / output_rate, prompt_units = 2e6 / prompt_rate;
  CHECK(std::stod(s.at("output_units")) == Approx(output_units).epsilon(1e-5));
  CHECK(std::stod(s.at("prompt_units")) == Approx(prompt_units).epsilon(1e-5));
  const int units = static_cast<int>(std::ceil(std::max(output_units, prompt_units)));
  CHECK(std::stoi(s.at("units_whole")) == units);
  CHECK(std::stoi(s.at("gpus")) == 16 * units);
  CHECK(std::stod(s.at("price_per_hour")) == Approx(2.0 * 16 * units));
  CHECK(std::stod(s.at("prompts_per_s")) == Approx(2e6 / 1024));
  CHECK(std::stod(s.at("time_per_token_us")) == Approx(std::stod(run.at("step_time_us"))));
  // The decode alone, run without the chunk, times the steps whose chunks are not full.
  const auto alone = summary_row(out / "decode-alone" / "summary.csv");
  CHECK(alone.at("prefill_chunk").empty());
  CHECK(std::stod(s.at("decode_only_step_us")) == Approx(std::stod(alone.at("step_time_us"))));
  CHECK(std::stod(s.at("decode_only_step_us")) < std::stod(s.at("time_per_token_us")));
  // The unit steps at its slowest GPU's pace: a chunk late in its prompt costs up to what its
  // tokens' positions past the mean, (1024 - 1) / 2, add (position_us, from the run at twice the
  // prompts' length, 2048 tokens), so the mean may exceed a full chunk's step by that much.
  const auto longer = summary_row(out / "prompts-twice-as-long" / "summary.csv");
  CHECK(longer.at("prefill_chunk") == "128");
  const double position_us = std::stod(s.at("position_us")), server_chunk = 128;  // no tensor parallelism: a GPU's chunk
  CHECK(position_us == Approx(2 * (std::stod(longer.at("step_time_us")) - std::stod(run.at("step_time_us"))) / (server_chunk * 1024)));
  CHECK(position_us > 0);
  CHECK(std::stod(s.at("time_per_token_mean_us")) <= std::stod(s.at("time_per_token_us")) + position_us * server_chunk * 1024 / 2);
  CHECK(std::stod(s.at("time_per_token_mean_us")) >= std::stod(s.at("decode_only_step_us")));
  // The unit at the load's sequences a GPU, the chunk kept (fewer than 32 here: the prompts bind).
  const auto at_load = static_cast<int>(std::ceil(std::stod(s.at("sequences_decoding")) / (16.0 * units) - 1e-9));
  REQUIRE(at_load < 32);
  CHECK(std::stoi(s.at("at_load_sequences")) == at_load);
  CHECK(summary_row(out / "decode-at-load" / "summary.csv").at("prefill_chunk") == "128");
  CHECK(std::stod(s.at("at_load_time_per_token_us")) <= std::stod(s.at("time_per_token_us")));
  CHECK_THAT(r.out, Catch::Contains("moesim serve --colocated: 4,000,000 prompt tokens/s (50.0 % from the KV cache, 2,000,000 to prefill)"));
  CHECK_THAT(r.out, Catch::Contains("128 prompt tokens per GPU of 1024-token prompts"));
  // Spare units: the binomial's tail over the whole units (tools::spare_units).
  const auto spared = moesim("serve --colocated " + q + decode + chunk + "--input-tokens-per-s 4e6 --cache-hit-rate 0.5 " +
                                 "--output-tokens-per-s 2e5 --gpu-mtbf-hours 20000 --repair-time 24h -q --out '" + (tmp.path() / "r").string() + "'",
                             tmp);
  REQUIRE(spared.code == 0);
  const auto rs = summary_row(tmp.path() / "r" / "serve.csv");
  // A 16-GPU unit down q = 24 / (20000 / 16 + 24) = 1.88 % of the time; the fewest spares s for
  // which more than s of the units + s are down at most 0.1 % of the time (the binomial's tail).
  const double down = 24.0 / (20000.0 / 16 + 24);
  const auto short_of = [&](int spares) {
    const int m = units + spares;
    double p = 0;
    for (int k = spares + 1; k <= m; ++k) p += std::tgamma(m + 1.0) / (std::tgamma(k + 1.0) * std::tgamma(m - k + 1.0)) * std::pow(down, k) * std::pow(1 - down, m - k);
    return p;
  };
  int expected = 0;
  while (short_of(expected) > 0.001) ++expected;
  CHECK(expected >= 1);
  CHECK(std::stoi(rs.at("spare_units")) == expected);
  CHECK(std::stoi(rs.at("gpus_with_spares")) == 16 * (units + std::stoi(rs.at("spare_units"))));
  // Prompts of several lengths.
  const auto spread = moesim("serve --colocated " + q + decode + chunk + "--input-tokens-per-s 4e6 --cache-hit-rate 0.5 " +
                                 "--output-tokens-per-s 2e5 --prompt-length-sigma 1 --out '" + (tmp.path() / "s").string() + "'",
                             tmp);
  REQUIRE(spread.code == 0);
  CHECK(summary_row(tmp.path() / "s" / "serve.csv").at("prompt_length_sigma") == "1");
  CHECK_THAT(spread.out, Catch::Contains("log-normal lengths around the scenario's 1024 tokens"));
  CHECK(summary_row(tmp.path() / "s" / "serve.csv").at("units_whole") == s.at("units_whole"));  // the same load
  CHECK(std::stod(summary_row(tmp.path() / "s" / "serve.csv").at("ttft_p99_us")) > std::stod(s.at("ttft_p99_us")));
  // A grid: its chunkless point with the same values gives the decode alone, no run of its own.
  const auto grid = tmp.path() / "grid.yaml";
  std::ofstream(grid) << "base: " << kSource << "/scenarios/quickstart.yaml\naxes:\n  workload.prefill_chunk: [0, 128, 256]\n";
  const auto g = moesim("serve --colocated '" + grid.string() + "' " + decode + "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5 -q --out '" +
                            (tmp.path() / "g").string() + "'",
                        tmp);
  INFO(g.out + g.err);
  REQUIRE(g.code == 0);
  CHECK_FALSE(fs::exists(tmp.path() / "g" / "decode-alone"));
  const auto gs = summary_row(tmp.path() / "g" / "serve.csv");
  // Every unit point's part in the choice, one row each: the chunks of 128 and 256 (point 0, the
  // baseline, is no unit), one of them chosen.
  std::ifstream points_csv(tmp.path() / "g" / "colocated-points.csv");
  std::string line, all;
  int rows = 0;
  std::getline(points_csv, line);
  CHECK(line == "point,time_per_token_us,output_units,prompt_units,units,gpus,verdict");
  while (std::getline(points_csv, line)) ++rows, all += line + "\n";
  CHECK(rows == 2);
  CHECK_THAT(all, Catch::Contains("workload.prefill_chunk=128") && Catch::Contains("workload.prefill_chunk=256") &&
                      Catch::Contains(",chosen\n"));
  // Under a TTFT target every unit point within --tpot runs at twice its prompts' length first.
  const auto gt = moesim("serve --colocated '" + grid.string() + "' " + decode + "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5 " +
                             "--ttft 60s -q --out '" + (tmp.path() / "gt").string() + "'",
                         tmp);
  REQUIRE(gt.code == 0);
  CHECK(fs::exists(tmp.path() / "gt" / "prompts-twice-as-long" / "point-0001" / "summary.csv"));
  CHECK(fs::exists(tmp.path() / "gt" / "prompts-twice-as-long" / "point-0002" / "summary.csv"));
  // Without one, the chosen point's only.
  CHECK(std::distance(fs::directory_iterator(tmp.path() / "g" / "prompts-twice-as-long"), fs::directory_iterator{}) == 1);
  // A grid without a chunkless point: under a TTFT target each unit point also runs without its chunk.
  const auto grid2 = tmp.path() / "grid2.yaml";
  std::ofstream(grid2) << "base: " << kSource << "/scenarios/quickstart.yaml\naxes:\n  workload.prefill_chunk: [128, 256]\n";
  const auto g2 = moesim("serve --colocated '" + grid2.string() + "' " + decode + "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5 " +
                             "--ttft 60s -q --out '" + (tmp.path() / "g2").string() + "'",
                         tmp);
  REQUIRE(g2.code == 0);
  CHECK(fs::exists(tmp.path() / "g2" / "decode-alone" / "point-0000" / "summary.csv"));
  CHECK(fs::exists(tmp.path() / "g2" / "decode-alone" / "point-0001" / "summary.csv"));
  // Both points decode the same 32 sequences: one decode alone, whichever is chosen.
  const double alone0 = std::stod(summary_row(tmp.path() / "g2" / "decode-alone" / "point-0000" / "summary.csv").at("step_time_us"));
  CHECK(alone0 == Approx(std::stod(summary_row(tmp.path() / "g2" / "decode-alone" / "point-0001" / "summary.csv").at("step_time_us"))));
  CHECK(std::stod(summary_row(tmp.path() / "g2" / "serve.csv").at("decode_only_step_us")) == Approx(alone0));
  const auto baseline = summary_row(tmp.path() / "g" / "colocated-sweep.csv");  // its first row
  REQUIRE(baseline.at("point") == "0");  // no chunk
  CHECK(std::stod(gs.at("decode_only_step_us")) == Approx(std::stod(baseline.at("step_time_us"))));
  // A time to first token no count meets: a prompt alone takes 8 of its steps.
  const double step_ms = std::stod(run.at("step_time_us")) / 1e3;
  const auto never = moesim("serve --colocated " + q + decode + chunk + "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5 -q --ttft " +
                                fmt::format("{:.3f}ms", 7 * step_ms) + " --out '" + (tmp.path() / "n").string() + "'",
                            tmp);
  CHECK(never.code == 3);
  CHECK_THAT(never.out, Catch::Contains("no count of units meets the time to first token"));
  // A decode scenario without a chunk is not a colocated unit; a chunked one is not a disaggregated decode unit.
  const auto plain = moesim("serve --colocated " + q + decode + "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5 -q --out '" +
                                (tmp.path() / "p").string() + "'",
                            tmp);
  CHECK(plain.code == 2);
  CHECK_THAT(plain.err, Catch::Contains("colocated serving needs a decode scenario whose steps prefill prompts too"));
  std::string chunked_decode = decode + chunk;
  for (std::size_t at = 0; (at = chunked_decode.find("--set ", at)) != std::string::npos; at += 13) chunked_decode.replace(at, 6, "--decode-set ");
  const auto disaggregated = moesim("serve " + q + q + "--prefill-set workload.kind=prefill " + chunked_decode +
                                        "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5 -q --out '" + (tmp.path() / "d").string() + "'",
                                    tmp);
  CHECK(disaggregated.code == 2);
  CHECK_THAT(disaggregated.err, Catch::Contains("serve it colocated"));
  CHECK(moesim("serve --colocated " + q + q + "--input-tokens-per-s 4e6 --output-tokens-per-s 2e5", tmp).code == 2);
  CHECK(moesim("serve --colocated " + q + decode + chunk + "--prefill-set workload.seed=2 --input-tokens-per-s 4e6 --output-tokens-per-s 2e5",
               tmp)
            .code == 2);
  // The least-work router: the same units, a shorter tail for prompts of many lengths.
  const auto least = moesim("serve --colocated " + q + decode + chunk + "--input-tokens-per-s 4e6 --cache-hit-rate 0.5 " +
                                "--output-tokens-per-s 2e5 --prompt-length-sigma 1 --prefill-router least_work -q --out '" +
                                (tmp.path() / "l").string() + "'",
                            tmp);
  REQUIRE(least.code == 0);
  const auto ls = summary_row(tmp.path() / "l" / "serve.csv");
  CHECK(ls.at("prefill_router") == "least_work");
  CHECK(std::stod(ls.at("ttft_p99_us")) < std::stod(summary_row(tmp.path() / "s" / "serve.csv").at("ttft_p99_us")));
}
