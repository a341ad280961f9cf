#include "models/reliability.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "models/moe_costs.hpp"

namespace moesim::models {

double expected_segment_s(double work_s, double checkpoint_s, double restart_s, double mtbf_s) {
  const double a = (work_s + checkpoint_s) / mtbf_s, r = restart_s / mtbf_s;
  if (a + r > 700) return std::numeric_limits<double>::infinity();  // past what a double holds: never done
  return mtbf_s * std::exp(r) * std::expm1(a);
}

double expected_async_segment_s(double work_s, double stall_s, double write_s, double restart_s, double mtbf_s) {
  // The first window: the steps (or the previous write, if longer: the copy waits for it) and the
  // copy; after a restart: the steps, the copy and the write.
  const double first = (std::max(work_s, write_s) + stall_s) / mtbf_s, again = (work_s + stall_s + write_s) / mtbf_s,
               r = restart_s / mtbf_s;
  if (again + r > 700) return std::numeric_limits<double>::infinity();
  // The first attempt (ended by its window or a failure), then if it failed: the restart and the
  // longer window from scratch (Daly's expectation, which counts the restarts after it). Summed:
  // M e^(R/M) e^((tau + C + W)/M) (1 - e^(-(max(tau, W) + C)/M)).
  return -std::expm1(-first) * mtbf_s * std::exp(r + again);
}

double best_interval_s(double checkpoint_s, double mtbf_s) {
  // E/tau falls while e^((tau + C)/M) (1 - tau/M) > 1 and rises after; in logarithms (exact for
  // tau and C far below M): q(tau) = (tau + C)/M + log(1 - tau/M), which falls from C/M at 0
  // to minus infinity at M.
  if (checkpoint_s <= 0) return 0;
  const auto q = [&](double tau) { return (tau + checkpoint_s) / mtbf_s + std::log1p(-tau / mtbf_s); };
  double lo = 0, hi = mtbf_s;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * mtbf_s; ++i) {
    const double mid = 0.5 * (lo + hi);
    (q(mid) > 0 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double checkpoint_bytes(const routing::MoeModelSpec& m, int moment_bytes) {
  const ModelParams p = model_params(m);
  return static_cast<double>(p.total + p.mtp) * (m.dtype_bytes + 4 + 2 * moment_bytes);
}

SpareWait spare_wait(int spares, double repair_s, double mtbf_s) {
  SpareWait w;
  if (spares <= 0) {
    w.wait_s = repair_s;
    w.short_share = 1;
    return w;
  }
  // P(n) of Poisson(a) up to far past its mean (40 standard deviations) and past K.
  const double a = repair_s / mtbf_s;
  const int last = std::max(spares, static_cast<int>(std::ceil(a + 40 * std::sqrt(a + 1) + 50)));
  double p = std::exp(-a), sum = 0;
  for (int n = 0; n <= last; ++n) {
    if (n >= spares) {
      sum += p * (n + 1 - spares) / (n + 1);
      w.short_share += p;
    }
    p *= a / (n + 1);
  }
  w.short_share = std::min(w.short_share, 1.0);
  w.wait_s = repair_s * sum;
  return w;
}

Goodput goodput(const ReliabilitySpec& spec, double step_s, int gpus, double checkpoint_bytes) {
  Goodput g;
  if (!spec.enabled() || step_s <= 0 || gpus <= 0) return g;
  g.job_mtbf_s = spec.gpu_mtbf_hours * 3600 / gpus;
  if (spec.spares()) {
    const SpareWait w = spare_wait(spec.spare_nodes, spec.repair_s, g.job_mtbf_s);
    g.spare_wait_s = w.wait_s;
    g.short_share = w.short_share;
  }
  const double restart_s = spec.restart_s + g.spare_wait_s;
  if (spec.async) {
    g.checkpoint_bytes = checkpoint_bytes;
    g.write_s = spec.checkpoint_bytes_per_s > 0 ? checkpoint_bytes / spec.checkpoint_bytes_per_s : 0;
    g.checkpoint_s = spec.checkpoint_s > 0 ? spec.checkpoint_s
                     : spec.host_bytes_per_s > 0 ? checkpoint_bytes / gpus / spec.host_bytes_per_s
                                                 : 0;
  } else if (spec.checkpoint_s > 0) {
    g.checkpoint_s = spec.checkpoint_s;
  } else {
    g.checkpoint_bytes = checkpoint_bytes;
    g.checkpoint_s = spec.checkpoint_bytes_per_s > 0 ? checkpoint_bytes / spec.checkpoint_bytes_per_s : 0;
  }
  // Wall time per second of work with a checkpoint every k steps.
  const auto waste = [&](double k) {
    const double tau = k * step_s;
    return (spec.async ? expected_async_segment_s(tau, g.checkpoint_s, g.write_s, restart_s, g.job_mtbf_s)
                       : expected_segment_s(tau, g.checkpoint_s, restart_s, g.job_mtbf_s)) /
           tau;
  };
  // Asynchronous: fewer steps than the write takes only make the copy wait (E/tau falls up to there).
  const double fewest = std::max(1.0, std::ceil(g.write_s / step_s - 1e-9));
  if (spec.checkpoint_every_steps > 0) {
    g.every_steps = spec.checkpoint_every_steps;
  } else if (!spec.async) {
    // E/tau has one minimum in tau: the better of the whole numbers of steps either side of it.
    const double best = best_interval_s(g.checkpoint_s, g.job_mtbf_s) / step_s;
    const int below = static_cast<int>(std::clamp(std::floor(best), 1.0, 1e9));
    g.every_steps = waste(below + 1) < waste(below) ? below + 1 : below;
  } else {
    // Golden-section search of E/tau over log k, from the steps the write takes to well past the
    // job's MTBF, then the better whole number either side.
    double lo = std::log(fewest), hi = std::max(lo, std::log(std::max(fewest, 20 * g.job_mtbf_s / step_s)));
    const double phi = 0.5 * (std::sqrt(5.0) - 1);
    for (int i = 0; i < 200 && hi - lo > 1e-9; ++i) {
      const double a = hi - phi * (hi - lo), b = lo + phi * (hi - lo);
      if (waste(std::exp(a)) <= waste(std::exp(b))) hi = b;
      else lo = a;
    }
    const double best = std::clamp(std::floor(std::exp(0.5 * (lo + hi))), fewest, 1e9);
    g.every_steps = static_cast<int>(waste(best + 1) < waste(best) ? best + 1 : best);
  }
  g.interval_s = g.every_steps * step_s;
  g.wait_s = spec.async ? std::max(g.write_s - g.interval_s, 0.0) : 0.0;
  g.goodput = 1 / waste(g.every_steps);
  return g;
}

}  // namespace moesim::models
