#include <catch2/catch.hpp>

#include <cmath>
#include <algorithm>
#include <random>
#include <utility>
#include <vector>

#include "models/moe_costs.hpp"
#include "models/reliability.hpp"

using namespace moesim;
using namespace moesim::models;

namespace {

// The wall time of one segment of `work` seconds and its checkpoint, by drawing the failures:
// each attempt of work + checkpoint ends early at a failure, each restart too (and is begun
// again), averaged over `n` segments. Independent of the closed form it checks.
double drawn_segment_s(double work, double checkpoint, double restart, double mtbf, int n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> failure(1 / mtbf);
  double total = 0;
  for (int i = 0; i < n; ++i) {
    for (;;) {
      const double x = failure(rng);
      if (x >= work + checkpoint) {
        total += work + checkpoint;
        break;
      }
      total += x;
      for (;;) {  // restart until one runs to its end
        const double y = failure(rng);
        if (y >= restart) {
          total += restart;
          break;
        }
        total += y;
      }
    }
  }
  return total / n;
}

}  // namespace

TEST_CASE("A segment's expected wall time is what drawn failures give") {
  // Failures common enough that a third of the attempts fail and restarts fail too.
  for (const auto& [work, checkpoint, restart, mtbf] :
       {std::tuple{300.0, 20.0, 100.0, 1000.0}, std::tuple{50.0, 5.0, 400.0, 200.0}, std::tuple{10.0, 0.0, 0.0, 1e4}}) {
    const double drawn = drawn_segment_s(work, checkpoint, restart, mtbf, 200000, 7);
    CHECK(expected_segment_s(work, checkpoint, restart, mtbf) == Approx(drawn).epsilon(0.01));
  }
  // Without failures: the work and the checkpoint.
  CHECK(expected_segment_s(300, 20, 100, 1e15) == Approx(320).epsilon(1e-9));
  // Past what a double holds: never done.
  CHECK(std::isinf(expected_segment_s(1e6, 0, 0, 1)));
}

namespace {

// Asynchronous checkpoints, event by event: segments of `work` then a copy of `stall` to host
// memory, which starts only once the previous checkpoint's write has ended (host memory holds
// one); a checkpoint is safe `write` seconds after its copy unless a failure comes first; a
// failure (also during a copy, a wait, a write or a restart) goes back to the last safe
// checkpoint, with no write pending. Returns the wall time per second of work that became safe,
// over `n` checkpoints.
double drawn_async_per_work(double work, double stall, double write, double restart, double mtbf, int n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> failure(1 / mtbf);
  double t = 0, next_failure = failure(rng);
  int safe = 0;               // checkpoints safe in storage
  int resumed_from = 0;       // the checkpoint the current run of segments started after
  int taken = 0;              // checkpoints copied to host memory since then
  double pending_until = -1;  // when the newest copied checkpoint is safe; < 0: none pending
  double copy_end = work + stall;  // when the current segment's copy ends
  while (safe < n) {
    // A pending write finishes first.
    if (pending_until >= 0 && pending_until <= std::min(next_failure, copy_end)) {
      safe = resumed_from + taken;
      t = pending_until;
      pending_until = -1;
      continue;
    }
    if (next_failure < copy_end) {
      // Back to the last safe checkpoint, after a restart that failures may start over.
      t = next_failure;
      for (;;) {
        const double y = failure(rng);
        if (y >= restart) {
          t += restart;
          break;
        }
        t += y;
      }
      next_failure = t + failure(rng);
      resumed_from = safe;
      taken = 0;
      pending_until = -1;
      copy_end = t + work + stall;
      continue;
    }
    ++taken;
    pending_until = copy_end + write;
    // The next copy starts when its steps are done and this write has ended.
    copy_end = std::max(copy_end + work, pending_until) + stall;
  }
  // The wall time at which the n-th checkpoint became safe.
  return t / (static_cast<double>(n) * work);
}

}  // namespace

TEST_CASE("Asynchronous checkpoints: the expected segment is what drawn failures give") {
  // The last two: writes longer than the steps between copies, which wait for them.
  for (const auto& [work, stall, write, restart, mtbf] :
       {std::tuple{300.0, 5.0, 200.0, 100.0, 2000.0}, std::tuple{100.0, 1.0, 90.0, 300.0, 500.0}, std::tuple{50.0, 2.0, 0.0, 60.0, 400.0},
        std::tuple{50.0, 2.0, 120.0, 60.0, 400.0}, std::tuple{10.0, 0.5, 100.0, 30.0, 1000.0}}) {
    const double drawn = drawn_async_per_work(work, stall, write, restart, mtbf, 200000, 11);
    CHECK(expected_async_segment_s(work, stall, write, restart, mtbf) / work == Approx(drawn).epsilon(0.01));
  }
  // Without a write behind the steps it is the synchronous model.
  CHECK(expected_async_segment_s(100, 5, 0, 60, 1000) == Approx(expected_segment_s(100, 5, 60, 1000)).epsilon(1e-12));
  // The write costs something only when a failure comes.
  CHECK(expected_async_segment_s(100, 5, 50, 60, 1e15) == Approx(105).epsilon(1e-9));
}

TEST_CASE("The best checkpoint interval has the least wall time per second of work") {
  const double c = 30, m = 20000;
  const double best = best_interval_s(c, m);
  const auto per_work = [&](double tau) { return expected_segment_s(tau, c, 600, m) / tau; };
  CHECK(per_work(best) < per_work(best * 0.99));
  CHECK(per_work(best) < per_work(best * 1.01));
  // Young's first-order interval, sqrt(2 C M), where C is far below M.
  CHECK(best_interval_s(1, 1e8) == Approx(std::sqrt(2 * 1e8)).epsilon(1e-3));
  // A free checkpoint: after every step.
  CHECK(best_interval_s(0, m) == 0);
}

TEST_CASE("Goodput: the job's MTBF, the checkpoint's time and a whole number of steps") {
  ReliabilitySpec spec;
  CHECK(goodput(spec, 10, 64, 1e12).goodput == 0);  // not modelled
  spec.gpu_mtbf_hours = 1000;
  spec.restart_s = 300;
  spec.checkpoint_bytes_per_s = 1e11;
  const Goodput g = goodput(spec, 7, 100, 2e12);
  CHECK(g.job_mtbf_s == Approx(36000));  // 1000 h over 100 GPUs
  CHECK(g.checkpoint_bytes == 2e12);
  CHECK(g.checkpoint_s == Approx(20));
  CHECK(g.interval_s == Approx(7.0 * g.every_steps));
  const auto per_work = [&](int k) { return expected_segment_s(7.0 * k, 20, 300, 36000) / (7.0 * k); };
  CHECK(g.goodput == Approx(1 / per_work(g.every_steps)));
  CHECK(per_work(g.every_steps) <= per_work(g.every_steps - 1));
  CHECK(per_work(g.every_steps) <= per_work(g.every_steps + 1));
  // About 1 - C/tau - tau/(2M) - R/M.
  CHECK(g.goodput == Approx(1 - 20 / g.interval_s - g.interval_s / 72000 - 300.0 / 36000).epsilon(2e-3));
  // Given: an interval and a stall.
  spec.checkpoint_every_steps = 3;
  spec.checkpoint_s = 5;
  const Goodput h = goodput(spec, 7, 100, 2e12);
  CHECK(h.every_steps == 3);
  CHECK(h.checkpoint_s == 5);
  CHECK(h.checkpoint_bytes == 0);
  CHECK(h.goodput == Approx(21 / expected_segment_s(21, 5, 300, 36000)));
  // Steps longer than the best interval: a checkpoint after every step.
  spec.checkpoint_every_steps = 0;
  CHECK(goodput(spec, 30000, 100, 2e12).every_steps == 1);
}

TEST_CASE("Goodput with asynchronous checkpoints: the copy stalls, the next copy waits for the write") {
  ReliabilitySpec spec;
  spec.gpu_mtbf_hours = 1000;
  spec.restart_s = 300;
  spec.checkpoint_bytes_per_s = 2e10;  // a 2 TB checkpoint written in 100 s
  spec.async = true;
  spec.host_bytes_per_s = 5e10;  // each of 100 GPUs copies 20 GB in 0.4 s
  const Goodput g = goodput(spec, 7, 100, 2e12);
  CHECK(g.checkpoint_s == Approx(0.4));
  CHECK(g.write_s == Approx(100));
  // Young's sqrt(2 C M) is 170 s: longer than the write, so the interval is free to be the best.
  CHECK(g.interval_s + g.checkpoint_s > g.write_s + 7);
  const auto per_work = [&](int k) { return expected_async_segment_s(7.0 * k, 0.4, 100, 300, 36000) / (7.0 * k); };
  CHECK(g.goodput == Approx(1 / per_work(g.every_steps)));
  CHECK(per_work(g.every_steps) <= per_work(g.every_steps - 1));
  CHECK(per_work(g.every_steps) <= per_work(g.every_steps + 1));
  // Better than writing while the steps wait.
  ReliabilitySpec sync = spec;
  sync.async = false;
  CHECK(g.goodput > goodput(sync, 7, 100, 2e12).goodput);
  CHECK(g.wait_s == 0);
  // A write slower than Young's interval: a checkpoint as soon as the previous one is written.
  spec.checkpoint_bytes_per_s = 1e9;  // 2000 s
  const Goodput slow = goodput(spec, 7, 100, 2e12);
  CHECK(slow.every_steps == static_cast<int>(std::ceil(2000.0 / 7)));
  CHECK(slow.wait_s == 0);
  // A given interval shorter than the write: each copy waits for the previous write.
  spec.checkpoint_every_steps = 10;
  const Goodput waits = goodput(spec, 7, 100, 2e12);
  CHECK(waits.wait_s == Approx(2000 - 70));
  CHECK(waits.goodput == Approx(70 / expected_async_segment_s(70, 0.4, 2000, 300, 36000)));
  CHECK(waits.goodput < slow.goodput);
  // A given stall instead of the copy's.
  spec.checkpoint_every_steps = 0;
  spec.checkpoint_s = 3;
  CHECK(goodput(spec, 7, 100, 2e12).checkpoint_s == 3);
}

TEST_CASE("A checkpoint writes every parameter with Adam's master weight and moments") {
  routing::MoeModelSpec m;
  m.hidden = 64;
  m.expert_ffn = 32;
  m.experts = 8;
  m.top_k = 2;
  m.moe_layers = 2;
  m.attention_heads = 4;
  m.head_dim = 16;
  m.kv_heads = 4;
  const double params = static_cast<double>(model_params(m).total);
  CHECK(params > 8 * 3 * 64 * 32 * 2);
  CHECK(checkpoint_bytes(m, 4) == params * (2 + 4 + 8));
  CHECK(checkpoint_bytes(m, 2) == params * (2 + 4 + 4));
  // An MTP module's own weights are saved too: a MoE layer's and its projection, on top.
  routing::MoeModelSpec with_mtp = m;
  with_mtp.mtp_modules = 1;
  const double mtp = static_cast<double>(model_params(with_mtp).mtp);
  CHECK(mtp > 8 * 3 * 64 * 32);
  CHECK(checkpoint_bytes(with_mtp, 4) == (params + mtp) * (2 + 4 + 8));
}

namespace {

// Spare nodes by drawing the failures: a Poisson stream of failures every `mtbf` on average,
// each node out `repair` from its failure; a failure that finds `spares` or more nodes out waits
// for enough of them to return (the (n + 1 - spares)-th to come back, or its own with no spares).
// The mean wait per failure and the share that wait. Independent of the closed form it checks.
std::pair<double, double> drawn_spare_wait(int spares, double repair, double mtbf, int n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(1 / mtbf);
  std::vector<double> back;  // when the nodes out return
  double t = 0, wait = 0;
  int waited = 0;
  for (int i = 0; i < n; ++i) {
    t += gap(rng);
    std::erase_if(back, [&](double b) { return b <= t; });
    back.push_back(t + repair);
    const int out = static_cast<int>(back.size());  // the failed node included
    if (out > spares) {
      std::vector<double> sorted = back;
      std::sort(sorted.begin(), sorted.end());
      wait += sorted[static_cast<std::size_t>(out - 1 - spares)] - t;  // the (out - spares)-th return
      ++waited;
    }
  }
  return {wait / n, static_cast<double>(waited) / n};
}

}  // namespace

TEST_CASE("Spare nodes: the wait for a node at a failure is what drawn failures give") {
  // Repairs of 24 h against a job failing every 24.8 h (256 GPUs at 6,340 h each), and a
  // quieter job; from no spares (every failure waits for its own repair) to more than needed.
  for (const double mtbf : {24.8 * 3600, 200.0 * 3600}) {
    for (const int spares : {0, 1, 2, 4}) {
      const SpareWait w = spare_wait(spares, 24 * 3600, mtbf);
      const auto [drawn, share] = drawn_spare_wait(spares, 24 * 3600, mtbf, 200'000, 7 + spares);
      INFO("mtbf " << mtbf / 3600 << " h, " << spares << " spares: " << w.wait_s << " s against " << drawn << " s drawn");
      CHECK(w.wait_s == Approx(drawn).epsilon(0.03).margin(5));
      CHECK(w.short_share == Approx(share).epsilon(0.03).margin(1e-3));
    }
  }
  CHECK(spare_wait(0, 3600, 1e6).wait_s == 3600);  // no spares: the failed node's own repair
  CHECK(spare_wait(3, 3600, 1e6).wait_s < spare_wait(2, 3600, 1e6).wait_s);
  // In the goodput: the restart grows by the wait.
  ReliabilitySpec spec;
  spec.gpu_mtbf_hours = 6340;
  spec.restart_s = 600;
  spec.checkpoint_s = 47;
  spec.checkpoint_every_steps = 1000;
  const Goodput none = goodput(spec, 2.0, 256, 0);
  spec.spare_nodes = 2;
  spec.repair_s = 24 * 3600;
  const Goodput two = goodput(spec, 2.0, 256, 0);
  CHECK(two.spare_wait_s == Approx(spare_wait(2, 24 * 3600, none.job_mtbf_s).wait_s));
  CHECK(two.goodput == Approx(2000 / expected_segment_s(2000, 47, 600 + two.spare_wait_s, none.job_mtbf_s)));
  CHECK(two.goodput < none.goodput);
}
