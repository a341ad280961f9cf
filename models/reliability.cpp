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

Goodput goodput(const ReliabilitySpec& spec, double step_s, int gpus, double checkpoint_bytes) {
  Goodput g;
  if (!spec.enabled() || step_s <= 0 || gpus <= 0) return g;
  g.job_mtbf_s = spec.gpu_mtbf_hours * 3600 / gpus;
  if (spec.checkpoint_s > 0) {
    g.checkpoint_s = spec.checkpoint_s;
  } else {
    g.checkpoint_bytes = checkpoint_bytes;
    g.checkpoint_s = spec.checkpoint_bytes_per_s > 0 ? checkpoint_bytes / spec.checkpoint_bytes_per_s : 0;
  }
  const auto waste = [&](int k) {
    const double tau = k * step_s;
    return expected_segment_s(tau, g.checkpoint_s, spec.restart_s, g.job_mtbf_s) / tau;
  };
  if (spec.checkpoint_every_steps > 0) {
    g.every_steps = spec.checkpoint_every_steps;
  } else {
    // E/tau has one minimum in tau: the better of the whole numbers of steps either side of it.
    const double best = best_interval_s(g.checkpoint_s, g.job_mtbf_s) / step_s;
    const int below = static_cast<int>(std::clamp(std::floor(best), 1.0, 1e9));
    g.every_steps = waste(below + 1) < waste(below) ? below + 1 : below;
  }
  g.interval_s = g.every_steps * step_s;
  g.goodput = 1 / waste(g.every_steps);
  return g;
}

}  // namespace moesim::models
