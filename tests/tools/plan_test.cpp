#include <catch2/catch.hpp>

#include "tools/plan.hpp"

using namespace moesim::tools;

namespace {

// A sweep CSV as `moesim sweep` writes it (the columns plan reads, and others).
const std::string kSweep =
    "point,parallelism.ep,scenario,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,drop_rate,cost_per_million_tokens,"
    "memory_gb_max,gpu_memory_gb,fits_memory,infeasible_reason,point_config\n"
    "0,8,\"a,b.yaml\",8,1000.0,900000.0,112500.0,0.0000,0.50,70.0,80.000,yes,,h0\n"        // misses tokens/s
    "1,16,\"a,b.yaml\",16,1000.0,2000000.0,125000.0,0.0100,0.40,90.0,80.000,no,GPU 3 needs 90.0 GB,h1\n"  // cheapest, does not fit
    "2,32,\"a,b.yaml\",32,800.0,4000000.0,125000.0,0.0000,0.45,60.0,80.000,yes,,h2\n"
    "3,64,\"a,b.yaml\",64,500.0,8000000.0,125000.0,0.0000,0.47,50.0,80.000,yes,,h3\n";

}  // namespace

TEST_CASE("plan picks the best feasible point that meets the targets, and says why", "[plan]") {
  const std::vector<Target> targets{parse_target("tokens/s=1e6")};
  const auto c = choose_point(kSweep, targets, parse_metric("cost"), true, {"parallelism.ep"});
  REQUIRE(c.best);
  CHECK(*c.best == 2);  // point 2: 0.45 (point 1 is cheaper but does not fit; point 0 is too slow)
  CHECK_THAT(c.explanation, Catch::StartsWith("Choose point 2 (parallelism.ep=32): it has the lowest cost (0.45 per million tokens) "
                                              "of the 2 points that fit in memory and meet tokens/s >= 1,000,000."));
  CHECK_THAT(c.explanation, Catch::Contains("1 of the 4 points do not fit the GPUs' memory (the nearest, point 1 (parallelism.ep=16): "
                                            "GPU 3 needs 90.0 GB)"));
  CHECK_THAT(c.explanation, Catch::Contains("1 misses the target; the nearest, point 0 (parallelism.ep=8), reaches 900,000 tokens/s"));
  CHECK_THAT(c.explanation, Catch::Contains("The runner-up, point 3 (parallelism.ep=64), has 0.47 per million tokens (+4.4%)"));
  // Latency with units, and maximizing.
  const auto fast = choose_point(kSweep, {parse_target("latency=0.9ms")}, parse_metric("tokens/s/gpu"), false, {"parallelism.ep"});
  REQUIRE(fast.best);
  CHECK(*fast.best == 2);  // 125,000 per GPU at 800 us, the first of the ties in point order
  const auto none = choose_point(kSweep, {parse_target("tokens/s>=1e7")}, parse_metric("cost"), true, {});
  CHECK_FALSE(none.best);
  CHECK_THAT(none.explanation, Catch::StartsWith("No point of the 4 meets tokens/s >= 10,000,000."));
}

TEST_CASE("plan says where the chosen point's step goes: its critical GPU's longest wait", "[plan]") {
  // Point 1 waits 300 of its 1,000 us for the weights' gathers (and 50 for the dispatch): said.
  // Point 0's longest wait is under a tenth of its step: nothing said.
  const std::string sweep =
      "point,parallelism.ep,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,drop_rate,memory_gb_max,gpu_memory_gb,fits_memory,"
      "infeasible_reason,dispatch_wait_us,param_gather_wait_us,point_config\n"
      "0,8,8,1000.0,800000.0,100000.0,0.0000,70.0,80.000,yes,,90.0,0.0,h0\n"
      "1,16,16,1000.0,1600000.0,100000.0,0.0000,70.0,80.000,yes,,50.0,300.0,h1\n";
  const auto c = choose_point(sweep, {}, parse_metric("tokens/s"), false, {"parallelism.ep"});
  REQUIRE(c.best);
  CHECK(*c.best == 1);
  CHECK_THAT(c.explanation, Catch::Contains(" Its critical GPU waits 30% of the step for the sharded weights' all-gathers "
                                            "(param_gather_wait_us)."));
  const auto slow = choose_point(sweep, {}, parse_metric("tokens/s"), true, {"parallelism.ep"});
  REQUIRE(slow.best);
  CHECK(*slow.best == 0);
  CHECK_THAT(slow.explanation, !Catch::Contains("critical GPU waits"));
}

TEST_CASE("plan ranks the best points in a table, and passes over the points a grid skipped", "[plan]") {
  // Two more rows as a grid's skip writes them: a point the rules refuse, one that cannot fit.
  const std::string sweep = kSweep +
                            "4,3,,,,,,,,,,,\"invalid: parallelism.ep: experts (8) are not divisible by the EP size 3\",h4\n"
                            "5,2,,,,,,,,,80.000,no,not simulated: GPU 0 needs at least 300.0 GB,h5\n";
  const auto c = choose_point(sweep, {}, parse_metric("tokens/s"), false, {"parallelism.ep"}, 2);
  REQUIRE(c.best);
  CHECK(*c.best == 3);
  CHECK_THAT(c.explanation, Catch::Contains("of the 3 points that fit in memory"));
  // The nearest of the two: the run's 90 GB, not the skipped point's 300 GB floor.
  CHECK_THAT(c.explanation, Catch::Contains("2 of the 6 points do not fit the GPUs' memory (the nearest, point 1 (parallelism.ep=16): "
                                            "GPU 3 needs 90.0 GB)"));
  // Refusals of several kinds are counted by the key that refused them.
  const std::string kinds = sweep + "6,5,,,,,,,,,,,\"invalid: parallelism.ep: experts (8) are not divisible by the EP size 5\",h6\n"
                                    "7,4,,,,,,,,,,,\"invalid: parallelism.tp: 3 does not divide the 8 GPUs of a node\",h7\n";
  CHECK_THAT(choose_point(kinds, {}, parse_metric("tokens/s"), false, {"parallelism.ep"}).explanation,
             Catch::Contains("3 of the 8 points are invalid and were not run (2 by parallelism.ep, 1 by parallelism.tp; e.g. point 4 "));
  // A floor under a run's figure is the nearer one.
  std::string swapped = sweep;
  swapped.replace(swapped.find("at least 300.0 GB"), 17, "at least 85.0 GB");
  CHECK_THAT(choose_point(swapped, {}, parse_metric("tokens/s"), false, {"parallelism.ep"}).explanation,
             Catch::Contains("(the nearest, point 5 (parallelism.ep=2): not simulated: GPU 0 needs at least 85.0 GB)"));
  CHECK_THAT(c.explanation, Catch::Contains("1 of the 6 points are invalid and were not run (e.g. point 4 (parallelism.ep=3): "
                                            "parallelism.ep: experts (8) are not divisible by the EP size 3)"));
  CHECK(c.table ==
        "rank  point  ep  tokens/s            tokens/s/gpu  step      memory_gb\n"
        "1     3      64  8,000,000           125,000       500.0 us  50.0\n"
        "2     2      32  4,000,000 (-50.0%)  125,000       800.0 us  60.0\n"
        "(1 more point qualifies)\n");
  CHECK(choose_point(sweep, {}, parse_metric("tokens/s"), false, {"parallelism.ep"}).table.empty());
  // Skipped rows first: the cost the points that ran have is found (not taken as a missing price).
  const std::string header = kSweep.substr(0, kSweep.find('\n') + 1);
  const std::string skipped_first = header + "9,3,,,,,,,,,,,\"invalid: parallelism.ep: experts (8) are not divisible by the EP size 3\",h9\n" +
                                    kSweep.substr(kSweep.find('\n') + 1);
  const auto cheapest = choose_point(skipped_first, {}, parse_metric("cost"), true, {"parallelism.ep"});
  REQUIRE(cheapest.best);
  CHECK(*cheapest.best == 3);  // point 2's 0.45 (point 1's 0.40 does not fit), after the skipped row
}

TEST_CASE("plan targets and metrics are checked", "[plan]") {
  const auto t = parse_target("latency=2ms");
  CHECK(t.metric.column == "step_time_us");
  CHECK_FALSE(t.at_least);
  CHECK(t.value == Approx(2000));
  CHECK(parse_target("tokens/s=5e5").at_least);
  CHECK(parse_target("mfu>=0.4").metric.column == "mfu");
  CHECK_FALSE(parse_target("tokens_per_s<=3").at_least);
  CHECK_THROWS_WITH(parse_target("tokens/s"), Catch::Contains("expected METRIC>=VALUE"));
  CHECK_THROWS_WITH(parse_target("tokens/s=fast"), Catch::Contains("--target 'tokens/s=fast'"));
  CHECK_THROWS_WITH(parse_metric("cost per token"), Catch::Contains("is not a metric"));
  CHECK_THROWS_WITH(choose_point(kSweep, {}, parse_metric("nonsense_column"), true, {}), Catch::Contains("no column 'nonsense_column'"));
  const std::string no_price = "point,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,drop_rate,cost_per_million_tokens,"
                               "memory_gb_max,gpu_memory_gb,fits_memory,infeasible_reason\n0,8,1,1,1,0,,1,80,yes,\n";
  CHECK_THROWS_WITH(choose_point(no_price, {}, parse_metric("cost"), true, {}), Catch::Contains("cluster.gpu_hour_price"));
}

TEST_CASE("plan takes decode's time per token as a target, with units", "[plan]") {
  // Two decode points: with a draft token the step is longer but a sequence's tokens come faster.
  const std::string sweep =
      "point,workload.draft_tokens,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,time_per_token_us,drop_rate,"
      "memory_gb_max,gpu_memory_gb,fits_memory,infeasible_reason\n"
      "0,0,8,19502.0,13128.0,1641.0,19502.0,0,53.7,80,yes,\n"
      "1,1,8,22935.0,20648.0,2581.0,12397.5,0,54.8,80,yes,\n";
  const auto t = parse_target("tpot<=15ms");
  CHECK(t.metric.column == "time_per_token_us");
  CHECK(t.value == Approx(15000));
  CHECK(parse_target("time_per_token=20ms").metric.column == "time_per_token_us");
  const auto c = choose_point(sweep, {t}, parse_metric("tokens/s/gpu"), false, {"workload.draft_tokens"});
  REQUIRE(c.best);
  CHECK(*c.best == 1);
  CHECK_THAT(c.explanation, Catch::Contains("with a step of 22.935 ms (a token every 12.398 ms per sequence),"));
  const auto by_latency = choose_point(sweep, {parse_target("latency<=20ms")}, parse_metric("tokens/s/gpu"), false, {});
  REQUIRE(by_latency.best);
  CHECK(*by_latency.best == 0);  // the step time alone would rule the draft out
  // Outside decode the column is empty.
  const std::string training = "point,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,time_per_token_us,drop_rate,"
                               "memory_gb_max,gpu_memory_gb,fits_memory,infeasible_reason\n0,8,1,1,1,,0,1,80,yes,\n";
  CHECK_THROWS_WITH(choose_point(training, {t}, parse_metric("tokens/s"), false, {}), Catch::Contains("only decode has one"));
}

TEST_CASE("plan reads the goodput columns of a reliability section", "[plan][reliability]") {
  // Two sizes: the larger runs more tokens/s but, failing more often, keeps less of them.
  const std::string sweep =
      "point,cluster.nodes,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,drop_rate,goodput,goodput_tokens_per_s,goodput_cost_per_million_tokens,"
      "train_days,memory_gb_max,gpu_memory_gb,fits_memory,infeasible_reason,point_config\n"
      "0,8,64,1000.0,1000000.0,15625.0,0,0.95,950000.0,0.10,120.0,70.0,80.000,yes,,h0\n"
      "1,64,512,1000.0,8000000.0,15625.0,0,0.80,6400000.0,0.12,18.0,70.0,80.000,yes,,h1\n";
  CHECK(parse_target("goodput=0.9").at_least);
  CHECK(parse_target("goodput_tokens_per_s=1e6").at_least);
  CHECK_FALSE(parse_target("goodput_cost_per_million_tokens=0.2").at_least);
  CHECK(parse_metric("days").column == "train_days");
  CHECK_FALSE(parse_target("days=60").at_least);
  const auto c = choose_point(sweep, {parse_target("goodput=0.9")}, parse_metric("goodput_tokens_per_s"), false, {"cluster.nodes"});
  REQUIRE(c.best);
  CHECK(*c.best == 0);
  CHECK_THAT(c.explanation, Catch::Contains("goodput >= 90.00%"));
  const auto most = choose_point(sweep, {}, parse_metric("goodput_tokens_per_s"), false, {"cluster.nodes"});
  REQUIRE(most.best);
  CHECK(*most.best == 1);
  // A deadline: the fewest GPUs that train the budget in time.
  const auto soon = choose_point(sweep, {parse_target("days=60")}, parse_metric("gpus"), true, {"cluster.nodes"});
  REQUIRE(soon.best);
  CHECK(*soon.best == 1);
  CHECK_THAT(soon.explanation, Catch::Contains("meets days <= 60") && Catch::Contains("the nearest, point 0 (cluster.nodes=8), reaches 120 days"));
}

TEST_CASE("plan keeps a cluster within a power budget", "[plan]") {
  // Two sizes of one cluster: the larger is faster but draws more than the budget.
  const std::string sweep =
      "point,cluster.nodes,gpus,step_time_us,tokens_per_s,tokens_per_s_per_gpu,drop_rate,memory_gb_max,gpu_memory_gb,fits_memory,"
      "infeasible_reason,power_kw,energy_kwh_per_million_tokens,point_config\n"
      "0,64,512,1000.0,8000000.0,15625.0,0,70.0,80.000,yes,,358.4,0.01244,h0\n"
      "1,256,2048,1000.0,30000000.0,14648.4,0,70.0,80.000,yes,,1433.6,0.01327,h1\n";
  CHECK(parse_metric("power").column == "power_kw");
  CHECK_FALSE(parse_target("power=1000").at_least);
  CHECK(parse_metric("energy").column == "energy_kwh_per_million_tokens");
  const auto c = choose_point(sweep, {parse_target("power=1000")}, parse_metric("tokens/s"), false, {"cluster.nodes"});
  REQUIRE(c.best);
  CHECK(*c.best == 0);
  CHECK_THAT(c.explanation, Catch::Contains("meets power <= 1,000 kW") && Catch::Contains("reaches 1,434 kW"));
  const auto frugal = choose_point(sweep, {}, parse_metric("energy"), true, {"cluster.nodes"});
  REQUIRE(frugal.best);
  CHECK_THAT(frugal.explanation, Catch::Contains("the lowest energy (0.01244 kWh per million tokens)"));
}
