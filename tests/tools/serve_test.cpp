#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "scenarios/scenario.hpp"
#include "sim/rng.hpp"
#include "tools/serve.hpp"

using namespace moesim::tools;

TEST_CASE("A prefill batch's time: linear between the two runs, below one prompt a GPU its own work stays", "[serve]") {
  // 128 prompts in 1800 ms; 32 (one a GPU) in 450 ms, of which 190 ms is the busiest GPU's own.
  const PrefillBatchTime b{128, 32, 1800e3, 450e3, 190e3};
  CHECK(b.us(128) == Approx(1800e3));
  CHECK(b.us(32) == Approx(450e3));
  CHECK(b.us(80) == Approx(450e3 + 1350e3 * 48 / 96));
  CHECK(b.us(16) == Approx(190e3 + 260e3 / 2));
  CHECK(b.us(1) == Approx(190e3 + 260e3 / 32));
  // One run (the scenario's batch is one prompt a GPU): the same rule below it.
  const PrefillBatchTime one{32, 32, 450e3, 450e3, 190e3};
  CHECK(one.us(32) == Approx(450e3));
  CHECK(one.us(8) == Approx(190e3 + 260e3 / 4));
}

TEST_CASE("The prefill queue without batching is M/D/1; with batching it stays within one batch of its prompt at light load", "[serve][stats]") {
  // One prompt a batch, a fixed 1 ms: one unit at half load is an M/D/1 queue, whose mean time
  // in the system is D + rho D / (2 (1 - rho)) = 1.5 ms (Pollaczek-Khinchine).
  const PrefillBatchTime fixed{1, 1, 1000, 1000, 1000};
  const PrefillQueue q = simulate_prefill_queue(500, 1, fixed, 7);
  CHECK(q.busy == Approx(0.5));
  CHECK(q.counted == 180'000);  // the first 10 % warm the queue up
  CHECK(q.mean_us == Approx(1500).epsilon(0.03));
  CHECK(q.mean_batch == 1);
  CHECK(q.p50_us <= q.p90_us);
  CHECK(q.p90_us <= q.p99_us);
  // Seeded: the same inputs give the same figures, another seed others.
  CHECK(simulate_prefill_queue(500, 1, fixed, 7).p99_us == q.p99_us);
  CHECK(simulate_prefill_queue(500, 1, fixed, 8).p99_us != q.p99_us);
  // Batches: at 1 prompt/s on 4 units each prompt runs alone, its first token one batch of one
  // after it comes.
  const PrefillBatchTime b{128, 32, 1800e3, 450e3, 190e3};
  const PrefillQueue light = simulate_prefill_queue(1, 4, b, 3, 20'000);
  CHECK(light.p50_us == Approx(b.us(1)));
  CHECK(light.mean_batch < 1.01);
  // Near full load the batches grow, never past a full one, and the prompts wait.
  const PrefillQueue heavy = simulate_prefill_queue(0.97 * 4 * 128 / 1.8, 4, b, 3);
  CHECK(heavy.busy == Approx(0.97));
  CHECK(heavy.mean_batch > 16);
  CHECK(heavy.mean_batch <= 128);
  CHECK(heavy.mean_us > b.us(static_cast<int>(heavy.mean_batch)));
}

TEST_CASE("The prefill units a TTFT target takes: the fewest that meet it", "[serve]") {
  const PrefillBatchTime b{128, 32, 1800e3, 450e3, 190e3};
  const double rate = 750;  // prompts a second: 10.5 units at full batches
  const int load = 11;
  const PrefillQueue at_load = simulate_prefill_queue(rate, load, b, 1);
  // A target the load's units meet: no more.
  const auto easy = units_for_ttft(rate, load, 64 * load, b, 99, at_load.p99_us + 1, 1);
  REQUIRE(easy);
  CHECK(easy->units == load);
  // A target under the load's p99 and over one batch of a prompt: the fewest units that meet it.
  const double target = 500e3;
  REQUIRE(at_load.p99_us > target);
  const auto found = units_for_ttft(rate, load, 64 * load, b, 99, target, 1);
  REQUIRE(found);
  CHECK(found->units > load);
  CHECK(found->p99_us <= target);
  CHECK(simulate_prefill_queue(rate, found->units - 1, b, 1).p99_us > target);
  // The median's target takes fewer units than the same figure as a p99.
  const auto median = units_for_ttft(rate, load, 64 * load, b, 50, target, 1);
  REQUIRE(median);
  CHECK(median->units < found->units);
  // No prompt's first token comes sooner than a batch of one: such a target is never met.
  PrefillQueue closest;
  CHECK_FALSE(units_for_ttft(rate, load, 64 * load, b, 99, b.us(1) - 1, 1, &closest));
  CHECK(closest.units == load);
  CHECK_THROWS_AS(simulate_prefill_queue(0, 1, b, 1), ServeError);
}

TEST_CASE("The KV cache a token leaves: a sliding layer keeps its window of the decode context", "[serve][sliding_window]") {
  // 2 MoE layers with Mixtral's cache (2 x 8 KV heads x 128 x 2 bytes a token and layer), the
  // first within a window of 128: of a 1024-token context a token leaves 1 + 128 / 1024 layers'.
  const std::string yaml = R"(
cluster: {nodes: 1, gpus_per_node: 8, gpu: H100}
model: {moe_layers: 2, hidden: 4096, expert_ffn: 14336, experts: 8, top_k: 2, attention_heads: 32, kv_heads: 8, SLIDING}
parallelism: {ep: 8}
workload: {kind: decode, tokens_per_gpu: 32, context_length: 1024}
)";
  const std::map<std::string, std::string> summary{{"tokens_per_s", "1000"},    {"step_time_us", "1000"},   {"time_per_token_us", "1000"},
                                                   {"experts_us", "0"},         {"dispatch_wait_us", "0"}, {"combine_wait_us", "0"},
                                                   {"memory_gb_max", "10"},     {"gpu_memory_gb", "80"}};
  const auto unit = [&](const std::string& sliding) {
    std::string text = yaml;
    text.replace(text.find("SLIDING"), 7, sliding);
    return serve_unit(moesim::scenarios::load_scenario_text(text, "d.yaml"), summary, false);
  };
  CHECK(unit("dtype: bf16").kv_bytes_per_token == 2 * 8 * 128 * 2 * 2);
  CHECK(unit("sliding_window: 128, full_attention_every: 2").kv_bytes_per_token == Approx(2 * 8 * 128 * 2 * (1 + 128.0 / 1024)));
  CHECK(unit("sliding_window: 128").kv_bytes_per_token == Approx(2 * 8 * 128 * 2 * (2 * 128.0 / 1024)));
  // A linear-attention layer leaves its sequence's state (4 heads of 64 x 64 in fp32, and the
  // convolution's last 3 inputs of 2 x 2 x 64 + 4 x 64 channels in bf16), a share of it a token.
  const double state = 4 * 64 * 64 * 4 + 3 * (2 * 2 * 64 + 4 * 64) * 2;
  CHECK(unit("full_attention_every: 2, linear_attention: {key_heads: 2, value_heads: 4, key_dim: 64, value_dim: 64}").kv_bytes_per_token ==
        Approx(2 * 8 * 128 * 2 + state / 1024));
}

TEST_CASE("Prompts of several lengths: M/G/1 without batching, batches filled by tokens", "[serve][stats]") {
  // A batch time linear in its prompts' size: 1 ms a scenario-length prompt, nothing fixed
  // (least_local_us 0), one prompt a batch (full 1). Sizes 0.6 and 1.4, equally likely (mean 1;
  // no two fit one batch): one unit at half load is an M/G/1 queue with service 0.6 or 1.4 ms,
  // E[S^2] = 1.16 ms^2, so a prompt's mean time in the system is E[S] + lambda E[S^2] / (2 (1 -
  // rho)) = 1 + 0.5 x 1.16 / 1 = 1.58 ms (Pollaczek-Khinchine), where one length gives 1.5.
  const PrefillBatchTime linear{1, 1, 1000, 1000, 0};
  CHECK(linear.us(0.6) == Approx(600));
  CHECK(linear.us(1.4) == Approx(1400));  // more than a batch: that many batches' time
  PromptSizes two;
  two.drawn = {0.6, 1.4};
  CHECK(two.mean() == Approx(1));
  const PrefillQueue g = simulate_prefill_queue(500, 1, linear, 7, 200'000, two);
  CHECK(g.busy == Approx(0.5));
  CHECK(g.mean_us == Approx(1580).epsilon(0.03));
  CHECK(g.mean_batch == 1);
  CHECK(simulate_prefill_queue(500, 1, linear, 7).mean_us == Approx(1500).epsilon(0.03));
  // With 0.25 ms of a prompt's time growing with its length squared (its attention), the sizes
  // take 600 + 250 (0.36 - 0.6) = 540 and 1400 + 250 (1.96 - 1.4) = 1540 us: E[S] = 1040 us,
  // E[S^2] = 1,331,600 us^2, rho = 0.52, and the mean time in the system 1040 + 5e-4 x 1,331,600
  // / (2 x 0.48) = 1733.5 us; a token of these prompts takes 1040 / 1000 of the scenario's.
  PrefillBatchTime square = linear;
  square.square_us = 250;
  CHECK(two.mean_square() == Approx(1.16));
  const PrefillQueue gs = simulate_prefill_queue(500, 1, square, 7, 200'000, two);
  CHECK(gs.busy == Approx(0.52));
  CHECK(gs.mean_us == Approx(1733.5).epsilon(0.03));
  CHECK(prompt_time_factor(square, two) == Approx(1.04));
  CHECK(prompt_time_factor(linear, two) == 1);
  // One size of 1, or a log-normal spread of 0, is the scenario's own prompts: the same queue.
  const PrefillBatchTime b{128, 32, 1800e3, 450e3, 190e3};
  const PrefillQueue fixed = simulate_prefill_queue(200, 4, b, 3);
  PromptSizes ones;
  ones.drawn = {1.0};
  const PrefillQueue same = simulate_prefill_queue(200, 4, b, 3, 200'000, ones);
  CHECK(same.p99_us == fixed.p99_us);
  CHECK(same.mean_batch == fixed.mean_batch);
  CHECK(simulate_prefill_queue(200, 4, b, 3, 200'000, PromptSizes{}).p99_us == fixed.p99_us);
  // A log-normal spread at the same token rate: the long prompts' batches hold the queue up.
  PromptSizes spread;
  spread.sigma = 1;
  const PrefillQueue mixed = simulate_prefill_queue(200, 4, b, 3, 200'000, spread);
  CHECK(mixed.p99_us > fixed.p99_us);
  CHECK(mixed.busy == Approx(fixed.busy));
  // Batches hold up to a full batch's tokens: 256 prompts of half the length fit where 128 do.
  // At the same token load near full use, twice the prompts come, and the batches hold about
  // twice as many.
  PromptSizes halves;
  halves.drawn = {0.5};
  const PrefillQueue heavy = simulate_prefill_queue(0.97 * 4 * 128 / 1.8, 4, b, 3);
  const PrefillQueue small = simulate_prefill_queue(2 * 0.97 * 4 * 128 / 1.8, 4, b, 3, 200'000, halves);
  CHECK(small.busy == Approx(0.97));
  CHECK(small.mean_batch > 1.8 * heavy.mean_batch);
  CHECK(small.mean_batch <= 256);
}

TEST_CASE("The traffic's prompt lengths: a spread, or lengths from a file, in the prefill scenario's prompts", "[serve]") {
  ServeTraffic t;
  t.input_tokens_per_s = 1e6;
  t.output_tokens_per_s = 1e5;
  t.prompt_lengths = {2048, 8192};
  const PromptSizes s = prompt_sizes(t, 4096);
  REQUIRE(s.drawn.size() == 2);
  CHECK(s.drawn[0] == 0.5);
  CHECK(s.drawn[1] == 2);
  CHECK(s.mean() == 1.25);
  ServeUnit unit;
  unit.prompt_tokens = 4096;
  CHECK(prompts_per_s(unit, 1e6, s) == Approx(1e6 / 5120));  // prompts of 5120 tokens on average
  CHECK(prompts_per_s(unit, 1e6) == Approx(1e6 / 4096));
  check_traffic(t);
  t.prompt_length_sigma = 1;
  CHECK_THROWS_WITH(check_traffic(t), Catch::Contains("--prompt-length-sigma and --prompt-lengths both give the prompts' lengths"));
  t.prompt_lengths.clear();
  check_traffic(t);
  t.prompt_length_sigma = -1;
  CHECK_THROWS_WITH(check_traffic(t), Catch::Contains("--prompt-length-sigma must be a number >= 0"));
  // A file: one length a line, a header and blank lines skipped, the first of comma-separated fields.
  const std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/moesim-prompt-lengths-test.csv";
  {
    std::ofstream out(path);
    out << "prompt_tokens,source\n1024,chat\n\n 8192 ,code\n512\n";
  }
  const std::vector<double> lengths = read_prompt_lengths(path);
  CHECK(lengths == std::vector<double>{1024, 8192, 512});
  {
    std::ofstream out(path);
    out << "tokens\n1024\nlots\n";
  }
  CHECK_THROWS_WITH(read_prompt_lengths(path), Catch::Contains(":3: 'lots' is not a prompt length"));
  {
    std::ofstream out(path);
    out << "0\n";
  }
  CHECK_THROWS_WITH(read_prompt_lengths(path), Catch::Contains(":1: a prompt length must be > 0"));
  std::remove(path.c_str());
  CHECK_THROWS_WITH(read_prompt_lengths(path), Catch::Contains("cannot read"));
}

TEST_CASE("A prompt's attention grows with the square of its length: the spread's E[w^2], alone at light load", "[serve][stats]") {
  PrefillBatchTime square{1, 1, 1000, 1000, 0};
  square.square_us = 250;
  // Prompts all of the scenario's length: nothing changes.
  PromptSizes ones;
  ones.drawn = {1.0};
  CHECK(prompt_time_factor(square, ones) == 1);
  const PrefillBatchTime linear{1, 1, 1000, 1000, 0};
  CHECK(simulate_prefill_queue(500, 1, square, 7, 200'000, ones).p99_us == simulate_prefill_queue(500, 1, linear, 7, 200'000, ones).p99_us);
  // Log-normal lengths with the mean kept: E[w^2] = exp(sigma^2).
  PromptSizes spread;
  spread.sigma = 1;
  CHECK(spread.mean_square() == Approx(std::exp(1.0)));
  CHECK(prompt_time_factor(square, spread) == Approx(1 + (std::exp(1.0) - 1) * 0.25));
  CHECK(prompt_time_factor(linear, spread) == 1);
  // Alone (light load), a prompt twice the length takes its two prompts' time and 2 x 250 us more.
  PromptSizes doubles;
  doubles.drawn = {2.0};
  const PrefillBatchTime batched{4, 4, 1000, 1000, 0, 250};
  CHECK(simulate_prefill_queue(0.01, 1, batched, 3, 1000, doubles).p50_us == Approx(batched.us(2) + 500));
}

TEST_CASE("The least-work router: a central first-come queue without batching, and shorter tails with long prompts", "[serve][stats]") {
  // One prompt a batch, 1 ms each: sending each prompt to the unit with the least work on hand
  // starts it as soon as any unit could, the M/D/c queue with one line. The same arrivals (the
  // queue's own seeded stream) through 3 servers first come first served give the same times.
  const PrefillBatchTime one{1, 1, 1000, 1000, 1000};
  PromptSizes least;
  least.router = PrefillRouter::least_work;
  const double rate = 2400;  // rho = 0.8 on 3 units
  const std::int64_t n = 50'000;
  const PrefillQueue q = simulate_prefill_queue(rate, 3, one, 11, n, least);
  moesim::sim::Rng rng(11, "serve/prompt-arrivals");
  std::vector<double> free_at(3, 0.0), ttft;
  double now = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    now += rng.exponential(1e6 / rate);
    auto first = std::min_element(free_at.begin(), free_at.end());
    const double start = std::max(now, *first);
    *first = start + 1000;
    if (i >= n / 10) ttft.push_back(start + 1000 - now);
  }
  double total = 0;
  for (const double x : ttft) total += x;
  CHECK(q.counted == static_cast<std::int64_t>(ttft.size()));
  CHECK(q.mean_us == Approx(total / static_cast<double>(ttft.size())).epsilon(1e-12));
  std::sort(ttft.begin(), ttft.end());
  CHECK(q.p99_us == Approx(ttft[static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(ttft.size()))) - 1]).epsilon(1e-12));
  // Round robin gives the same here: with equal service times first-come servers free up in
  // turn, so the i-th prompt takes unit i mod 3 either way.
  CHECK(simulate_prefill_queue(rate, 3, one, 11, n).mean_us == Approx(q.mean_us).epsilon(1e-12));
  // One unit: the two routers are the same queue.
  const PrefillBatchTime b{128, 32, 1800e3, 450e3, 190e3};
  CHECK(simulate_prefill_queue(50, 1, b, 3, 20'000, least).p99_us == simulate_prefill_queue(50, 1, b, 3, 20'000).p99_us);
  // Log-normal lengths (their attention squared) on 8 units at 70 % busy: round robin leaves
  // prompts behind a long one's batch while other units idle; the least-work router does not.
  PromptSizes spread;
  spread.sigma = 1;
  PromptSizes spread_least = spread;
  spread_least.router = PrefillRouter::least_work;
  PrefillBatchTime sq = b;
  sq.square_us = 2000;
  const double prompts_per_s = 0.7 * 8 / (1.8 / 128 + (std::exp(1.0) - 1) * 2000e-6);
  const PrefillQueue rr = simulate_prefill_queue(prompts_per_s, 8, sq, 5, 100'000, spread);
  const PrefillQueue lw = simulate_prefill_queue(prompts_per_s, 8, sq, 5, 100'000, spread_least);
  CHECK(rr.busy == Approx(0.7));
  CHECK(lw.busy == Approx(0.7));
  CHECK(lw.p99_us < rr.p99_us);
  CHECK(lw.mean_us < rr.mean_us);
}

TEST_CASE("Spare units for failures: each unit down R / (M / g + R), the binomial's tail within the availability", "[serve][spares]") {
  ServeSpares s;
  CHECK(spare_units(10, 8, s) == 0);  // not asked for
  s.gpu_mtbf_hours = 8000;
  s.repair_s = 4 * 3600.0;
  // A unit of 8 GPUs fails every 1000 h and is out 4 h: down 4 / 1004 of the time.
  CHECK(unit_down_share(8, s) == Approx(4.0 / 1004));
  // The tail by hand: of 3 units (2 and a spare), more than one down.
  const double q = 0.1;
  CHECK(short_probability(2, 1, q) == Approx(3 * q * q * (1 - q) + q * q * q));
  CHECK(short_probability(5, 0, q) == Approx(1 - std::pow(1 - q, 5)));
  // Against every up/down pattern of 8 units.
  for (int spares = 0; spares <= 4; ++spares) {
    const int m = 4 + spares;
    double brute = 0;
    for (int mask = 0; mask < (1 << m); ++mask) {
      const int down = __builtin_popcount(static_cast<unsigned>(mask));
      if (down > spares) brute += std::pow(q, down) * std::pow(1 - q, m - down);
    }
    CHECK(short_probability(4, spares, q) == Approx(brute).epsilon(1e-12));
  }
  // The fewest spares that meet the availability.
  s.repair_s = 24 * 3600.0;
  s.gpu_mtbf_hours = 5000;
  const double down = unit_down_share(16, s);
  const int n = spare_units(4, 16, s);
  CHECK(short_probability(4, n, down) <= 1 - s.availability);
  CHECK(short_probability(4, n - 1, down) > 1 - s.availability);
  CHECK(n == 3);
  // Stricter availability, more spares; more reliable GPUs, fewer.
  s.availability = 0.99999;
  CHECK(spare_units(4, 16, s) > n);
  s.availability = 0.999;
  s.gpu_mtbf_hours = 500000;
  CHECK(spare_units(4, 16, s) < n);
}

namespace {

// A colocated unit: 8 GPUs (TP2: 4 servers) whose 20 ms steps decode 64 sequences a GPU and
// prefill 256 prompt tokens a GPU of 4096-token prompts: 25,600 output and 102,400 prompt
// tokens a second.
ServeUnit colocated_unit() {
  ServeUnit u;
  u.source = "c.yaml";
  u.gpus = 8;
  u.nodes = 1;
  u.tp = 2;
  u.step_us = u.time_per_token_us = 20e3;
  u.tokens_per_gpu = 64;
  u.tokens_per_s = 8 * 64 / 0.02;
  u.prefill_chunk = 256;
  u.prompt_tokens = 4096;
  u.prompt_tokens_per_s = 8 * 256 / 0.02;
  u.gpu_hour_price = 2;
  u.memory_gb = 50;
  u.gpu_memory_gb = 80;
  return u;
}

}  // namespace

TEST_CASE("Chunked prefill's queue: a prompt alone takes its steps, a busy server makes it wait", "[serve][colocated][stats]") {
  const ServeUnit u = colocated_unit();
  // A server (a TP pair) prefills 512 tokens a step: a 4096-token prompt takes 8 steps, 160 ms,
  // after waiting for the next step to start (0 to 20 ms, uniform at light load).
  const ChunkedQueue light = simulate_chunked_queue(u, 2, 0.5, 3, 20'000);
  CHECK(light.servers == 8);
  CHECK(light.server_chunk == 512);
  CHECK(light.alone_us == Approx(160e3));
  CHECK(light.busy == Approx(0.5 * 4096 * 0.02 / (8 * 512)));
  CHECK(light.p50_us == Approx(170e3).margin(1e3));
  CHECK(light.mean_us == Approx(170e3).margin(0.5e3));
  CHECK(light.p99_us <= 180e3);
  CHECK(light.p50_us >= 160e3);
  // A prompt whose length is not a whole number of chunks leaves the rest of its last step to
  // the next one: at light load still ceil(length / chunk) steps.
  ServeUnit odd = u;
  odd.prompt_tokens = 4000;
  CHECK(simulate_chunked_queue(odd, 2, 0.5, 3, 20'000).alone_us == Approx(160e3));
  // One server at 95 % of its chunks: Poisson prompts each served in 8 steps, an M/D/1 queue
  // whose prompts wait rho D / (2 (1 - rho)) = 1.52 s on average (Pollaczek-Khinchine) before
  // their 160 ms, and half a step for the first step to start.
  ServeUnit pair = u;
  pair.gpus = 2;
  const double one = 512 / 0.02 / 4096;  // prompts a second one server's chunks hold
  const ChunkedQueue md1 = simulate_chunked_queue(pair, 1, 0.95 * one, 3);
  CHECK(md1.servers == 1);
  CHECK(md1.busy == Approx(0.95));
  CHECK(md1.mean_us == Approx(10e3 + 160e3 + 0.95 * 160e3 / (2 * 0.05)).epsilon(0.1));
  // Dealt in turn to 8 servers, each sees every eighth arrival, far more regular than Poisson:
  // at the same load they wait a fraction of that.
  const double full = 8 * one;  // the two units' servers
  const ChunkedQueue busy = simulate_chunked_queue(u, 2, 0.95 * full, 3);
  CHECK(busy.busy == Approx(0.95));
  CHECK(busy.mean_us > light.mean_us + 50e3);
  CHECK(busy.mean_us < md1.mean_us / 3);
  // Seeded.
  CHECK(simulate_chunked_queue(u, 2, 0.95 * full, 3).p99_us == busy.p99_us);
  // More units: fewer prompts a server, shorter waits; the fewest that meet a target.
  const auto found = colocated_units_for_ttft(u, 2, 0.95 * full, 99, 400e3, 3);
  REQUIRE(found);
  CHECK(found->units > 2);
  CHECK(found->p99_us <= 400e3);
  CHECK(simulate_chunked_queue(u, found->units - 1, 0.95 * full, 3).p99_us > 400e3);
  // Never under a prompt's own steps.
  ChunkedQueue closest;
  CHECK_FALSE(colocated_units_for_ttft(u, 2, 0.95 * full, 50, 150e3, 3, &closest));
  CHECK(closest.alone_us == Approx(160e3));
  // Without the decode's time alone every step is a full chunk's.
  CHECK(light.step_mean_us == Approx(20e3));
}

TEST_CASE("Chunked prefill's steps: the decode's time and what the unit's fullest chunk adds", "[serve][colocated][stats]") {
  ServeUnit u = colocated_unit();
  u.decode_only_step_us = 10e3;  // a full 512-token chunk a server adds 10 ms to a step
  // At light load a unit mostly decodes alone: a prompt waits half a 10 ms step for the next to
  // start, then takes 8 full steps. Its unit's 4 servers hold a prompt 4 % of the time (0.25 a
  // second each 160 ms), so of 98 steps a second about 2 are 20 ms and 96 are 10: 10.2 ms.
  const ChunkedQueue light = simulate_chunked_queue(u, 2, 0.5, 3, 20'000);
  CHECK(light.alone_us == Approx(160e3));
  CHECK(light.mean_us == Approx(165e3).margin(0.5e3));
  CHECK(light.step_mean_us == Approx(10.2e3).margin(0.1e3));
  // A prompt of 4000 tokens: 7 full steps and one with 416 of the 512 tokens, 10 + 10 x 416 / 512 ms.
  ServeUnit odd = u;
  odd.prompt_tokens = 4000;
  CHECK(simulate_chunked_queue(odd, 2, 0.5, 3, 20'000).alone_us == Approx(140e3 + 18.125e3));
  // Busy: nearly every step has a full chunk on some server of the unit.
  const double full = 8 * 512 / 0.02 / 4096;
  const ChunkedQueue busy = simulate_chunked_queue(u, 2, 0.95 * full, 3);
  CHECK(busy.step_mean_us > 19e3);
  CHECK(busy.step_mean_us < 20e3);
  // Faster steps when chunks are empty: no later first tokens than with every step full.
  ServeUnit bound = u;
  bound.decode_only_step_us = 0;
  CHECK(busy.mean_us <= simulate_chunked_queue(bound, 2, 0.95 * full, 3).mean_us);
  CHECK(light.p99_us < simulate_chunked_queue(bound, 2, 0.5, 3, 20'000).p99_us);
}

TEST_CASE("Chunked prefill's steps at their chunks' positions: a unit steps at its slowest server's pace", "[serve][colocated][stats]") {
  ServeUnit u = colocated_unit();
  u.decode_only_step_us = 10e3;
  u.position_us = 1e-3;  // 1 ns a chunk token for each position past the scenario's mean, 2047.5
  // A prompt alone: chunk i (of 8, 512 tokens each) stands at mean position 512 i + 255.5, so its
  // step is 20 ms + 0.512 (512 i - 1792) us; the positions average out over the prompt: 160 ms.
  const ChunkedQueue light = simulate_chunked_queue(u, 2, 0.5, 3, 20'000);
  CHECK(light.alone_us == Approx(160e3));
  // Busy, the servers' chunks stand at different positions and each step takes the latest one's:
  // steps past a full chunk's time at the mean position, and later first tokens than without.
  const double full = 8 * 512 / 0.02 / 4096;
  const ChunkedQueue busy = simulate_chunked_queue(u, 2, 0.9 * full, 3);
  CHECK(busy.step_mean_us > 20e3);
  CHECK(busy.step_mean_us < 20e3 + 0.512 * (512 * 7 - 1792));
  ServeUnit flat = u;
  flat.position_us = 0;
  const ChunkedQueue without = simulate_chunked_queue(flat, 2, 0.9 * full, 3);
  CHECK(busy.step_mean_us > without.step_mean_us);
  CHECK(busy.mean_us > without.mean_us);
  // The load at the pace the steps with prompts went: over the nominal 90 % with the positions.
  CHECK(busy.busy == Approx(0.9));
  CHECK(busy.busy_at_pace > busy.busy);
  CHECK(busy.busy_at_pace > without.busy_at_pace);
}

TEST_CASE("Chunked prefill's queue with prompts of several lengths: each takes its own tokens' steps", "[serve][colocated][stats]") {
  const ServeUnit u = colocated_unit();  // 512 prompt tokens a server a step, 20 ms steps
  // Every prompt half the scenario's length: 4 steps alone.
  PromptSizes half;
  half.drawn = {0.5};
  const ChunkedQueue h = simulate_chunked_queue(u, 2, 0.5, 3, 20'000, half);
  CHECK(h.mean_us == Approx(80e3 + 10e3).margin(0.5e3));
  CHECK(h.busy == Approx(0.5 * 2048 * 0.02 / (8 * 512)));
  // Log-normal lengths, the mean kept: the same load, but long prompts take many steps and hold
  // up the prompts behind them.
  PromptSizes spread;
  spread.sigma = 1;
  const double rate = 0.8 * 8 * 512 / 0.02 / 4096;
  const ChunkedQueue one = simulate_chunked_queue(u, 2, rate, 3), varied = simulate_chunked_queue(u, 2, rate, 3, 200'000, spread);
  CHECK(varied.busy == Approx(one.busy));
  CHECK(varied.p99_us > 2 * one.p99_us);
  CHECK(varied.p50_us > one.p50_us);  // first come first served: a short prompt waits behind a long one
  // Under a target the scenario's prompt alone could not meet, more units still help: the
  // shorter prompts are what the median is made of.
  const double target = 0.5 * varied.p50_us;
  const auto found = colocated_units_for_ttft(u, 2, rate, 50, target, 3, nullptr, spread);
  REQUIRE(found);
  CHECK(found->units > 2);
  CHECK(found->p50_us <= target);
  // A router that sends each prompt to the server with the least work on hand keeps the long
  // prompts from holding up the short: a far shorter tail at the same load.
  PromptSizes least = spread;
  least.router = PrefillRouter::least_work;
  const ChunkedQueue balanced = simulate_chunked_queue(u, 2, rate, 3, 200'000, least);
  CHECK(balanced.busy == Approx(varied.busy));
  CHECK(balanced.p99_us < varied.p99_us / 3);
  CHECK(balanced.mean_us < varied.mean_us / 2);
  // With prompts of one length, dealing in turn is already balanced: within a few percent.
  PromptSizes even;
  even.router = PrefillRouter::least_work;
  CHECK(simulate_chunked_queue(u, 2, rate, 3, 200'000, even).mean_us == Approx(one.mean_us).epsilon(0.1));
}

TEST_CASE("Colocated serving: the units the output or the prompts take, whichever is more", "[serve][colocated]") {
  const ServeUnit u = colocated_unit();
  ServeTraffic t;
  t.input_tokens_per_s = 1e6;
  t.cache_hit_rate = 0.5;  // 500,000 to prefill: 4.88 units
  t.output_tokens_per_s = 1e5;  // 3.91 units
  const ColocatedPlan p = plan_colocated(t, u);
  CHECK(p.prefill_tokens_per_s == Approx(5e5));
  CHECK(p.prompt_units == Approx(5e5 / 102'400));
  CHECK(p.output_units == Approx(1e5 / 25'600));
  CHECK(p.units_whole == 5);
  CHECK(p.gpus == 40);
  CHECK(p.sequences_decoding == Approx(1e5 * 0.02));
  CHECK(p.price_per_hour == Approx(80));
  CHECK(p.cost_per_million_output == Approx(80 / 360.0));
  CHECK(p.queue.units == 5);
  CHECK(p.queue.prompts_per_s == Approx(5e5 / 4096));
  // More output: the decode binds.
  t.output_tokens_per_s = 2e5;
  CHECK(plan_colocated(t, u).units_whole == 8);
  // A grid's points: the one on the fewest GPUs within the time per token.
  ServeUnit slow = u;  // twice the sequences at 30 ms: more output a unit, slower tokens
  slow.step_us = slow.time_per_token_us = 30e3;
  slow.tokens_per_gpu = 128;
  slow.tokens_per_s = 8 * 128 / 0.03;
  slow.prompt_tokens_per_s = 8 * 256 / 0.03;
  const std::vector<ServeUnit> points{u, slow};
  const ServeChoice any = choose_colocated(points, t, 0, 0, 99, 1);
  REQUIRE(any.best);
  CHECK(*any.best == 1);  // 200,000 / 34,133 = 5.86 -> 6 units against 8
  std::vector<ColocatedPoint> seen;
  const ServeChoice fast = choose_colocated(points, t, 25e3, 0, 99, 1, &seen);
  REQUIRE(fast.best);
  CHECK(*fast.best == 0);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].verdict == "chosen");
  CHECK(seen[0].units == 8);
  CHECK(seen[0].gpus == 64);
  CHECK(seen[1].verdict == "over --tpot");
  CHECK(seen[1].units == 0);
  CHECK(seen[1].output_units == Approx(2e5 / slow.tokens_per_s));
  CHECK_THAT(fast.explanation, Catch::Contains("1 of those decode a token within 25.000 ms"));
  CHECK_FALSE(choose_colocated(points, t, 10e3, 0, 99, 1).best);
  ServeUnit none = u;
  none.prefill_chunk = 0;
  CHECK_THROWS_AS(plan_colocated(t, none), ServeError);
}
