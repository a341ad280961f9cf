#include "routing/decode_contexts.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "routing/eplb.hpp"
#include "sim/rng.hpp"

namespace moesim::routing {

std::vector<ContextLoad> context_loads(const DecodeContexts& d, std::uint64_t seed, int step) {
  const auto groups = static_cast<std::size_t>(d.groups);
  std::vector<ContextLoad> loads(static_cast<std::size_t>(d.micro_batches) * groups);
  const auto add = [&](ContextLoad& l, std::int64_t c) {
    const double x = static_cast<double>(c);
    l.sum += x;
    l.window += d.window > 0 ? static_cast<double>(std::min(c, d.window)) : x;
    l.top += d.top > 0 ? static_cast<double>(std::min(c, d.top)) : x;
    l.longest = std::max(l.longest, c);
  };
  // ln c ~ N(ln mean - sigma^2 / 2, sigma^2): its mean is `mean`.
  const double mu = std::log(static_cast<double>(d.mean)) - d.sigma * d.sigma / 2;
  const auto draw = [&](sim::Rng& rng) {
    if (d.sigma <= 0) return d.mean;
    return std::max<std::int64_t>(1, std::llround(std::exp(mu + d.sigma * rng.normal())));
  };
  for (int mb = 0; mb < d.micro_batches; ++mb) {
    ContextLoad* row = loads.data() + static_cast<std::size_t>(mb) * groups;
    const std::string stream = "workload/context/step" + std::to_string(step) + "/mb" + std::to_string(mb);
    if (!d.balanced) {
      for (std::size_t g = 0; g < groups; ++g) {
        sim::Rng rng(seed, stream + "/group" + std::to_string(g));
        for (std::int64_t i = 0; i < d.sequences; ++i) add(row[g], draw(rng));
      }
      continue;
    }
    sim::Rng rng(seed, stream + "/pool");
    std::vector<double> pool(groups * static_cast<std::size_t>(d.sequences));
    for (auto& c : pool) c = static_cast<double>(draw(rng));
    // EPLB's rule: longest first, each to the group with the fewest cached tokens that has room.
    const Packing dealt = balanced_packing(pool, d.groups);
    for (std::size_t i = 0; i < pool.size(); ++i)
      add(row[static_cast<std::size_t>(dealt.pack[i])], static_cast<std::int64_t>(pool[i]));
  }
  return loads;
}

}  // namespace moesim::routing
