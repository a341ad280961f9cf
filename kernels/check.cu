#include "check.cuh"

#include <cstdio>

#include "moe_layer.cuh"

namespace moe {

std::string CheckResult::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: logits error %.2e (bound %.0e), %d of %d tokens routed differently (bound 1%%), output error %.2e (bound %.0e) on %d tokens",
                ok ? "ok" : "FAILED", logits_error, kLogitsBound, routing_mismatches, tokens, output_error, kOutputBound,
                reference_tokens);
  return buf;
}

namespace {

struct DeviceBuffer {
  __nv_bfloat16* p = nullptr;
  explicit DeviceBuffer(std::size_t n) { check(cudaMalloc(&p, n * sizeof(__nv_bfloat16)), "buffer"); }
  ~DeviceBuffer() { cudaFree(p); }
};

std::vector<float> to_host(const DeviceBuffer& d, std::size_t n) {
  std::vector<bf16_bits> bits(n);
  check(cudaMemcpy(bits.data(), d.p, n * sizeof(bf16_bits), cudaMemcpyDeviceToHost), "output");
  std::vector<float> f(n);
  for (std::size_t i = 0; i < n; ++i) f[i] = bf16_to_float(bits[i]);
  return f;
}

}  // namespace

CheckResult check_layer(const Config& c, int tokens, int reference_tokens, std::uint64_t seed) {
  CheckResult r;
  r.tokens = tokens;
  r.reference_tokens = reference_tokens;
  const Weights w = random_weights(c, seed);
  const std::vector<bf16_bits> x = random_tokens(c, tokens, seed + 1);
  const auto h = static_cast<std::size_t>(c.hidden);
  Layer layer(c, w, tokens);
  DeviceBuffer dx(x.size()), dout(x.size());
  check(cudaMemcpy(dx.p, x.data(), x.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "tokens");

  // The router: logits against float64, top-k against the top-k of the GPU's own logits.
  layer.forward(dx.p, tokens, dout.p);
  const std::vector<float> logits = layer.logits(tokens);
  const std::vector<double> want = router_logits(c, w, x.data(), tokens);
  r.logits_error = relative_error(logits, want);
  const Routing gpu = layer.routing(tokens);
  const Routing own = route_from_logits(c, w, std::vector<double>(logits.begin(), logits.end()), tokens);
  for (int t = 0; t < tokens; ++t)
    for (int j = 0; j < c.top_k; ++j) {
      const auto a = static_cast<std::size_t>(t) * static_cast<std::size_t>(c.top_k) + static_cast<std::size_t>(j);
      if (gpu.experts[a] != own.experts[a]) {
        ++r.routing_mismatches;
        break;
      }
    }
  // The rest of the layer on the GPU's routing, for the first reference_tokens tokens (each
  // token's output depends on its own row only).
  const auto checked = static_cast<std::size_t>(reference_tokens);
  const auto out = to_host(dout, x.size());
  Routing head = gpu;
  head.tokens = reference_tokens;
  head.experts.resize(checked * static_cast<std::size_t>(c.top_k));
  head.gates.resize(head.experts.size());
  head.rank.resize(head.experts.size());
  head.capacity = gpu.capacity;  // ranks are over all tokens: the head's are the same
  double worst = relative_error(std::vector<float>(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(checked * h)),
                                forward(c, w, x.data(), head));
  // Once more with a generated, skewed routing through capacity (drops by position).
  Config capped = c;
  if (capped.capacity_factor <= 0) capped.capacity_factor = 1.0;
  Layer layer2(capped, w, tokens);
  const Routing skewed = generated_routing(capped, tokens, "zipf:1.2", seed + 2);
  layer2.set_routing(skewed.experts, skewed.gates, tokens);
  layer2.permute(dx.p, tokens);
  layer2.experts();
  layer2.combine(dout.p, tokens);
  check(cudaDeviceSynchronize(), "capped layer");
  const auto out2 = to_host(dout, x.size());
  Routing head2 = skewed;
  head2.tokens = reference_tokens;
  head2.experts.resize(head.experts.size());
  head2.gates.resize(head.experts.size());
  head2.rank.resize(head.experts.size());
  worst = std::max(worst, relative_error(std::vector<float>(out2.begin(), out2.begin() + static_cast<std::ptrdiff_t>(checked * h)),
                                         forward(capped, w, x.data(), head2)));
  r.output_error = worst;
  r.ok = r.logits_error <= kLogitsBound && r.output_error <= kOutputBound &&
         r.routing_mismatches <= static_cast<int>(kRoutingMismatchBound * tokens);
  return r;
}

std::string BackwardCheck::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s: gradient errors: tokens %.2e, router %.2e, gate/up %.2e, down %.2e (bound %.0e) on %d tokens, %d "
                "assignments dropped",
                ok ? "ok" : "FAILED", x, router, gate_up, down, kGradientBound, tokens, dropped);
  return buf;
}

BackwardCheck check_backward(const Config& c, int tokens, std::uint64_t seed) {
  BackwardCheck r;
  r.tokens = tokens;
  const Weights w = random_weights(c, seed);
  const std::vector<bf16_bits> x = random_tokens(c, tokens, seed + 1);
  const std::vector<bf16_bits> g = random_tokens(c, tokens, seed + 2);  // the gradient at the output: random, not zeros
  Layer layer(c, w, tokens);
  DeviceBuffer dx(x.size()), dout(x.size()), dgrad(x.size()), ddx(x.size());
  check(cudaMemcpy(dx.p, x.data(), x.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "tokens");
  check(cudaMemcpy(dgrad.p, g.data(), g.size() * sizeof(bf16_bits), cudaMemcpyHostToDevice), "output gradient");
  // Poisoned first: every element must be written.
  check(cudaMemset(ddx.p, 0xff, x.size() * sizeof(bf16_bits)), "poison");
  layer.forward(dx.p, tokens, dout.p);
  layer.zero_weight_gradients();
  layer.backward(dx.p, dgrad.p, tokens, ddx.p);
  check(cudaDeviceSynchronize(), "backward");
  const Routing gpu = layer.routing(tokens);
  for (std::size_t a = 0; a < gpu.experts.size(); ++a) r.dropped += !gpu.kept(a);
  std::vector<double> gd(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) gd[i] = bf16_to_float(g[i]);
  const Values want = backward(c, values(c, w, x.data(), tokens), gpu, gd);
  r.x = relative_error(to_host(ddx, x.size()), want.x);
  r.router = relative_error(layer.router_gradient(), want.router);
  r.gate_up = relative_error(layer.gate_up_gradient(), want.gate_up);
  r.down = relative_error(layer.down_gradient(), want.down);
  const auto bad = [](double e) { return !(e <= kGradientBound); };  // NaN fails
  r.ok = !bad(r.x) && !bad(r.router) && !bad(r.gate_up) && !bad(r.down);
  return r;
}

}  // namespace moe
