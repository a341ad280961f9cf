// Host test (no GPU): the float64 reference's definition on hand-derived cases, and the data
// generators. Plain C++17; exits non-zero with a message on the first failure.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gemm_plan.hpp"
#include "reference.hpp"
#include "sustain.hpp"
#include "tiling.hpp"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

double silu(double x) { return x / (1 + std::exp(-x)); }

// C = op(A) op(B), column-major, as cuBLAS computes a GemmCall, in float64.
void run_gemm(const moe::GemmCall& g, const double* a, const double* b, double* c) {
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i) {
      double sum = 0;
      for (int p = 0; p < g.k; ++p) {
        const double av = g.trans_a ? a[p + static_cast<std::size_t>(i) * g.lda] : a[i + static_cast<std::size_t>(p) * g.lda];
        const double bv = g.trans_b ? b[j + static_cast<std::size_t>(p) * g.ldb] : b[p + static_cast<std::size_t>(j) * g.ldb];
        sum += av * bv;
      }
      c[i + static_cast<std::size_t>(j) * g.ldc] = sum;
    }
}

}  // namespace

int main() {
  using namespace moe;
  // bf16: exact values survive, halfway cases round to even, NaN stays NaN.
  expect(float_to_bf16(1.0f) == 0x3F80 && bf16_to_float(0x3F80) == 1.0f, "bf16 of 1");
  expect(float_to_bf16(1.0f + 0x1.0p-8f) == 0x3F80, "1 + 2^-8 rounds to even (down)");
  expect(float_to_bf16(1.0f + 3 * 0x1.0p-8f) == 0x3F82, "1 + 3 2^-8 rounds to even (up)");
  expect(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))), "NaN stays NaN");

  // Softmax top-2 with renormalised gates: logits (0, ln 3, ln 2, -inf-ish).
  Config c;
  c.experts = 4, c.top_k = 2, c.hidden = 8, c.ffn = 8;
  Weights w;
  w.bias.assign(4, 0.0f);
  const std::vector<double> logits{0, std::log(3.0), std::log(2.0), -50};
  Routing r = route_from_logits(c, w, logits, 1);
  expect(r.experts[0] == 1 && r.experts[1] == 2, "top-2 by score");
  expect(std::fabs(r.gates[0] - 0.6f) < 1e-6 && std::fabs(r.gates[1] - 0.4f) < 1e-6, "gates 3/5 and 2/5");

  // Group-limited sigmoid routing: 4 experts in 2 groups, one group allowed. Group 0's best pair
  // (0.9 + 0.1) loses to group 1's (0.6 + 0.6) although expert 0 scores highest alone.
  Config g = c;
  g.scoring = Scoring::sigmoid, g.groups = 2, g.max_groups = 1;
  const auto logit = [](double p) { return std::log(p / (1 - p)); };
  r = route_from_logits(g, w, {logit(0.9), logit(0.1), logit(0.6), logit(0.6)}, 1);
  expect((r.experts[0] == 2 && r.experts[1] == 3), "group limit keeps the best group by its top-2 sum");
  // The bias chooses but does not weigh: +0.5 on expert 1 makes it chosen, with its own score.
  Config nb = c;
  nb.scoring = Scoring::sigmoid;
  Weights wb = w;
  wb.bias[1] = 0.5f;
  r = route_from_logits(nb, wb, {logit(0.9), logit(0.1), logit(0.6), logit(0.2)}, 1);
  expect(r.experts[0] == 0 && r.experts[1] == 1 && std::fabs(r.gates[1] - 0.1f) < 1e-6, "bias selects, score weighs");

  // Capacity by position: 3 tokens, top-1, 2 experts, factor 1.0: C = ceil(3 / 2) = 2, the
  // third assignment to expert 0 is dropped.
  Config cap = c;
  cap.experts = 2, cap.top_k = 1, cap.capacity_factor = 1.0;
  Routing three;
  three.tokens = 3, three.top_k = 1, three.experts = {0, 0, 0}, three.gates = {1, 1, 1};
  assign_ranks(cap, three);
  expect(three.capacity == 2 && three.kept(0) && three.kept(1) && !three.kept(2), "capacity drops the latest");
  expect(three.counts[0] == 3 && three.counts[1] == 0, "counts");

  // One expert of identity-like weights: gate = up = x, down = identity: out = silu(x) x.
  Config id = c;
  id.experts = 1, id.top_k = 1, id.hidden = 8, id.ffn = 8;
  Weights wi;
  wi.router.assign(8, float_to_bf16(0.0f));
  wi.bias.assign(1, 0.0f);
  wi.gate_up.assign(8 * 16, float_to_bf16(0.0f));
  wi.down.assign(8 * 8, float_to_bf16(0.0f));
  for (int i = 0; i < 8; ++i) {
    wi.gate_up[static_cast<std::size_t>(i * 16 + i)] = float_to_bf16(1.0f);
    wi.gate_up[static_cast<std::size_t>(i * 16 + 8 + i)] = float_to_bf16(1.0f);
    wi.down[static_cast<std::size_t>(i * 8 + i)] = float_to_bf16(1.0f);
  }
  const float xs[8] = {1, -1, 2, 0, 0.5f, -2, 3, -0.25f};
  std::vector<bf16_bits> x(8);
  for (int i = 0; i < 8; ++i) x[static_cast<std::size_t>(i)] = float_to_bf16(xs[i]);
  Routing one;
  one.tokens = 1, one.top_k = 1, one.experts = {0}, one.gates = {1};
  assign_ranks(id, one);
  const std::vector<double> out = forward(id, wi, x.data(), one);
  for (int i = 0; i < 8; ++i)
    expect(std::fabs(out[static_cast<std::size_t>(i)] - silu(xs[i]) * xs[i]) < 1e-12, "SwiGLU of x with identity weights");

  // Generated routings: k distinct experts per token, all assignments counted, skew as named.
  Config big = c;
  big.experts = 16, big.top_k = 4;
  for (const std::string d : {"uniform", "zipf:1.2", "hot:0.5"}) {
    const Routing gr = generated_routing(big, 2000, d, 3);
    expect(std::accumulate(gr.counts.begin(), gr.counts.end(), 0) == 2000 * 4, d + ": every assignment counted");
    bool distinct = true;
    for (int t = 0; t < 2000; ++t)
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < a; ++b) distinct = distinct && gr.experts[static_cast<std::size_t>(t * 4 + a)] != gr.experts[static_cast<std::size_t>(t * 4 + b)];
    expect(distinct, d + ": distinct experts per token");
    if (d == "zipf:1.2") expect(gr.counts[0] > 3 * gr.counts[15], "zipf: expert 0 far above expert 15");
    if (d == "hot:0.5") expect(gr.counts[0] > 1800, "hot: expert 0 in nearly every token");
  }
  bool threw = false;
  try {
    generated_routing(big, 10, "lognormal", 1);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "unknown distribution rejected");
  // Clustered tokens are reproducible and not all alike.
  const auto t1 = clustered_tokens(big, 64, 8, 1.0, 5), t2 = clustered_tokens(big, 64, 8, 1.0, 5);
  expect(t1 == t2, "clustered tokens reproducible");
  expect(capacity(big, 100) == -1, "dropless capacity");
  big.capacity_factor = 1.25;
  expect(capacity(big, 100) == 32, "capacity ceil(1.25 x 100 x 4 / 16) = 32");

  // The backward pass against central finite differences of forward_values, for softmax
  // routing, sigmoid routing with group limits and bias, and capacity drops (a dropped
  // assignment has no output but its score still renormalises the token's gates).
  {
    Config b;
    b.hidden = 6, b.ffn = 5, b.experts = 4, b.top_k = 2;
    Config sg = b;
    sg.scoring = Scoring::sigmoid, sg.groups = 2, sg.max_groups = 1;
    Config cap = b;
    cap.capacity_factor = 0.5;  // 2 rows per expert (ceil(0.5 x 7 x 2 / 4)): some of the 14 assignments dropped
    for (const Config& cfg : {b, sg, cap}) {
      const int tokens = 7;
      const Weights bw = random_weights(cfg, 21);
      const auto bx = random_tokens(cfg, tokens, 22);
      const Routing br = route_from_logits(cfg, bw, router_logits(cfg, bw, bx.data(), tokens), tokens);
      const Values v = values(cfg, bw, bx.data(), tokens);
      const std::string name = cfg.scoring == Scoring::sigmoid ? "sigmoid" : cfg.capacity_factor > 0 ? "capacity" : "softmax";
      int dropped = 0;
      for (std::size_t a = 0; a < br.experts.size(); ++a) dropped += !br.kept(a);
      if (cfg.capacity_factor > 0) expect(dropped > 0, name + ": some assignments dropped");
      // forward_values is forward() where the gates came from the logits.
      const auto out = forward_values(cfg, v, br), ref = forward(cfg, bw, bx.data(), br);
      double diff = 0, scale = 0;
      for (std::size_t i = 0; i < out.size(); ++i) diff = std::max(diff, std::fabs(out[i] - ref[i])), scale = std::max(scale, std::fabs(ref[i]));
      expect(scale > 0 && diff < 1e-6 * scale, name + ": forward_values matches forward");
      std::vector<double> dout(out.size());
      for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = std::sin(1.7 * static_cast<double>(i) + 0.3);
      const auto loss = [&](const Values& p) {
        const auto o = forward_values(cfg, p, br);
        double l = 0;
        for (std::size_t i = 0; i < o.size(); ++i) l += o[i] * dout[i];
        return l;
      };
      const Values d = backward(cfg, v, br, dout);
      const std::pair<const char*, std::vector<double> Values::*> parts[] = {
          {"x", &Values::x}, {"router", &Values::router}, {"gate_up", &Values::gate_up}, {"down", &Values::down}};
      for (const auto& [part, member] : parts) {
        double worst = 0, largest = 0;
        for (std::size_t i = 0; i < (v.*member).size(); ++i) {
          Values p = v, m = v;
          const double step = 1e-5;
          (p.*member)[i] += step;
          (m.*member)[i] -= step;
          const double fd = (loss(p) - loss(m)) / (2 * step);
          worst = std::max(worst, std::fabs(fd - (d.*member)[i]));
          largest = std::max(largest, std::fabs(fd));
        }
        expect(largest > 0 && worst < 1e-6 * largest,
               name + ": d" + part + " matches finite differences (worst " + std::to_string(worst / largest) + " of the largest)");
      }
    }
  }

  // The GPU layer's GEMMs (gemm_plan.hpp), run as cuBLAS would on float64 arrays with the
  // layer's permute, SwiGLU, combine and the router's gradient kernels around them, against the
  // reference: forward output, and the backward's token, router and expert weight gradients.
  // The routing's experts are a skewed draw with capacity drops; its gates, as the reference
  // takes them, the chosen experts' softmax over the logits x Wr.
  {
    Config pc;
    pc.hidden = 8, pc.ffn = 6, pc.experts = 4, pc.top_k = 2, pc.capacity_factor = 1.0;
    const int tokens = 9;
    const auto h = static_cast<std::size_t>(pc.hidden), f = static_cast<std::size_t>(pc.ffn);
    const Weights pw = random_weights(pc, 31);
    const auto px = random_tokens(pc, tokens, 32);
    const Values v = values(pc, pw, px.data(), tokens);
    Routing pr = generated_routing(pc, tokens, "zipf:1.2", 33);
    const auto e_count = static_cast<std::size_t>(pc.experts);
    std::vector<double> logits(static_cast<std::size_t>(tokens) * e_count, 0.0), gate(pr.experts.size());
    for (std::size_t t = 0; t < static_cast<std::size_t>(tokens); ++t) {
      for (std::size_t i = 0; i < h; ++i)
        for (std::size_t j = 0; j < e_count; ++j) logits[t * e_count + j] += v.x[t * h + i] * v.router[i * e_count + j];
      const double a0 = std::exp(logits[t * e_count + static_cast<std::size_t>(pr.experts[2 * t])]);
      const double a1 = std::exp(logits[t * e_count + static_cast<std::size_t>(pr.experts[2 * t + 1])]);
      gate[2 * t] = a0 / (a0 + a1), gate[2 * t + 1] = a1 / (a0 + a1);
    }
    int dropped = 0;
    for (std::size_t a = 0; a < pr.experts.size(); ++a) dropped += !pr.kept(a);
    expect(dropped > 0, "GEMM plan: some assignments dropped");
    std::vector<double> dout(static_cast<std::size_t>(tokens) * h);
    for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = std::cos(0.9 * static_cast<double>(i));
    // Permute: kept rows in expert order, position order inside each expert.
    const std::size_t assignments = pr.experts.size();
    std::vector<long> row_of(assignments, -1);
    std::vector<int> kept(static_cast<std::size_t>(pc.experts), 0);
    std::size_t rows = 0;
    for (int e = 0; e < pc.experts; ++e)
      for (std::size_t a = 0; a < assignments; ++a)
        if (pr.experts[a] == e && pr.kept(a)) row_of[a] = static_cast<long>(rows++), ++kept[static_cast<std::size_t>(e)];
    std::map<Operand, std::vector<double>> buf{
        {Operand::gate_up, v.gate_up}, {Operand::down, v.down}, {Operand::xperm, std::vector<double>(rows * h)},
        {Operand::h1, std::vector<double>(rows * 2 * f)}, {Operand::act, std::vector<double>(rows * f)},
        {Operand::y, std::vector<double>(rows * h)}, {Operand::dy, std::vector<double>(rows * h)},
        {Operand::dact, std::vector<double>(rows * f)}, {Operand::dh1, std::vector<double>(rows * 2 * f)},
        {Operand::dxperm, std::vector<double>(rows * h)}, {Operand::dgate_up, std::vector<double>(v.gate_up.size())},
        {Operand::ddown, std::vector<double>(v.down.size())}};
    for (std::size_t a = 0; a < assignments; ++a)
      if (row_of[a] >= 0)
        std::copy_n(v.x.begin() + static_cast<std::ptrdiff_t>(a / 2 * h), h,
                    buf[Operand::xperm].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(row_of[a]) * h));
    const auto each_expert = [&](auto plan) {
      std::size_t row = 0;
      for (int e = 0; e < pc.experts; ++e) {
        const int n = kept[static_cast<std::size_t>(e)];
        const auto xe = static_cast<std::size_t>(e);
        if (n > 0)
          for (const GemmCall& g : plan(pc.hidden, pc.ffn, n))
            run_gemm(g, buf[g.a].data() + operand_offset(g.a, pc.hidden, pc.ffn, xe, row),
                     buf[g.b].data() + operand_offset(g.b, pc.hidden, pc.ffn, xe, row),
                     buf[g.c].data() + operand_offset(g.c, pc.hidden, pc.ffn, xe, row));
        row += static_cast<std::size_t>(n);
      }
    };
    each_expert(experts_forward_gate_up);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t m = 0; m < f; ++m)
        buf[Operand::act][r * f + m] = silu(buf[Operand::h1][r * 2 * f + m]) * buf[Operand::h1][r * 2 * f + f + m];
    each_expert(experts_forward_down);
    std::vector<double> out(dout.size(), 0.0);
    for (std::size_t a = 0; a < assignments; ++a)
      if (row_of[a] >= 0)
        for (std::size_t o = 0; o < h; ++o) {
          out[a / 2 * h + o] += gate[a] * buf[Operand::y][static_cast<std::size_t>(row_of[a]) * h + o];
          buf[Operand::dy][static_cast<std::size_t>(row_of[a]) * h + o] = gate[a] * dout[a / 2 * h + o];
        }
    each_expert(experts_backward_down);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t m = 0; m < f; ++m) {
        const double z = buf[Operand::h1][r * 2 * f + m], u = buf[Operand::h1][r * 2 * f + f + m];
        const double da = buf[Operand::dact][r * f + m], sg = 1 / (1 + std::exp(-z));
        buf[Operand::dh1][r * 2 * f + m] = da * u * sg * (1 + z * (1 - sg));
        buf[Operand::dh1][r * 2 * f + f + m] = da * z * sg;
      }
    each_expert(experts_backward_gate_up);
    std::vector<double> dx(dout.size(), 0.0);
    for (std::size_t a = 0; a < assignments; ++a)
      if (row_of[a] >= 0)
        for (std::size_t o = 0; o < h; ++o) dx[a / 2 * h + o] += buf[Operand::dxperm][static_cast<std::size_t>(row_of[a]) * h + o];
    // The router's part: the gates' gradients (0 for a dropped assignment), the logits'
    // (softmax over the chosen), then the plan's two GEMMs.
    std::vector<double> dlogits(logits.size(), 0.0), drouter(v.router.size(), 0.0);
    for (std::size_t t = 0; t < static_cast<std::size_t>(tokens); ++t) {
      double dg[2] = {0, 0};
      for (std::size_t j = 0; j < 2; ++j)
        if (row_of[2 * t + j] >= 0)
          for (std::size_t o = 0; o < h; ++o) dg[j] += buf[Operand::y][static_cast<std::size_t>(row_of[2 * t + j]) * h + o] * dout[t * h + o];
      const double mean = gate[2 * t] * dg[0] + gate[2 * t + 1] * dg[1];
      for (std::size_t j = 0; j < 2; ++j)
        dlogits[t * e_count + static_cast<std::size_t>(pr.experts[2 * t + j])] = gate[2 * t + j] * (dg[j] - mean);
    }
    for (const GemmCall& g : router_backward_gemms(pc.hidden, pc.experts, tokens)) {
      const auto data = [&](Operand o) {
        return o == Operand::router ? v.router.data() : o == Operand::x ? v.x.data() : dlogits.data();
      };
      double* c = g.c == Operand::dx ? dx.data() : drouter.data();
      std::vector<double> product(static_cast<std::size_t>(g.m) * static_cast<std::size_t>(g.n));
      run_gemm(g, data(g.a), data(g.b), product.data());
      for (std::size_t i = 0; i < product.size(); ++i) c[i] = (g.accumulate ? c[i] : 0.0) + product[i];
    }
    const auto agree = [](const std::vector<double>& got, const std::vector<double>& want) {
      double diff = 0, scale = 0;
      for (std::size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::fabs(got[i] - want[i])), scale = std::max(scale, std::fabs(want[i]));
      return got.size() == want.size() && scale > 0 && diff <= 1e-9 * scale;
    };
    const Values want = backward(pc, v, pr, dout);
    expect(agree(out, forward_values(pc, v, pr)), "GEMM plan: forward output");
    expect(agree(dx, want.x), "GEMM plan: token gradient");
    expect(agree(drouter, want.router), "GEMM plan: router weight gradient");
    expect(agree(buf[Operand::dgate_up], want.gate_up), "GEMM plan: gate/up weight gradient");
    expect(agree(buf[Operand::ddown], want.down), "GEMM plan: down weight gradient");
  }

  // The checks' error measure: relative to the largest reference value; a NaN, an infinity or a
  // missing element never passes.
  expect(std::fabs(relative_error({1.0f, 2.1f}, {1.0, 2.0}) - 0.05) < 1e-6, "relative error 0.1 of 2");
  expect(!(relative_error({1.0f, std::nanf("")}, {1.0, 2.0}) <= 1.0), "a NaN fails");
  expect(!(relative_error({1.0f, INFINITY}, {1.0, 2.0}) <= 1.0), "an infinity fails");
  expect(!(relative_error({1.0f}, {1.0, 2.0}) <= 1.0), "a missing element fails");

  // The sustained-load rule of moe-profile's timings (sustain.hpp), on time points given here.
  {
    using Clock = SustainedLoad::Clock;
    const Clock::time_point t0{};
    const auto at = [&](double s) { return t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); };
    const auto near = [](double a, double b) { return std::fabs(a - b) < 1e-6; };
    SustainedLoad load(2.0);
    expect(load.remaining(at(0), 100, at(0.1)) == 0 && !load.heavy(100), "light work (0.1 ms a run) before any heavy: as it comes");
    expect(near(load.remaining(at(1), 800, at(1.1)), 1.9), "heavy work after a pause: 2 s from its first run");
    expect(near(load.remaining(at(1), 800, at(1.5)), 1.5), "asking again for the same measurement: the same stretch");
    expect(load.remaining(at(1), 800, at(3.0)) == 0, "2 s of it: timed");
    load.ended(at(3.2));
    expect(load.remaining(at(3.3), 5000, at(3.35)) == 0, "heavy work 0.1 s after the last: the stretch goes on");
    load.ended(at(3.5));
    expect(near(load.remaining(at(3.52), 50, at(3.55)), 0.25), "light work right after heavy: settles until 0.3 s after it");
    expect(load.remaining(at(3.52), 50, at(3.8)) == 0, "... then timed");
    expect(load.remaining(at(3.65), 600, at(3.65)) == 0, "heavy again within 0.2 s: the stretch goes on");
    expect(near(load.remaining(at(4.0), 600, at(4.0)), 2.0), "a pause of 0.5 s ends the stretch: 2 s again");
    // A warm-up of heavy work is a stretch like a measurement's.
    SustainedLoad warm(2.0);
    warm.ran(at(10), at(10.5));
    expect(near(warm.remaining(at(10.55), 900, at(10.6)), 1.4), "heavy work right after a 0.5 s warm-up: 1.5 s more");
    SustainedLoad warm2(2.0);
    warm2.ran(at(10), at(10.5));
    expect(near(warm2.remaining(at(10.5), 20, at(10.5)), 0.3), "light work right after a warm-up settles");
    SustainedLoad off(0);
    expect(off.remaining(at(0), 1e6, at(0)) == 0 && !off.heavy(1e6), "--sustain 0: nothing run before heavy work");
    off.ended(at(1));
    expect(off.remaining(at(1), 10, at(1)) == 0, "--sustain 0: nor before light work");
  }
  {
    // The profiler's device-side tiling of token rows (tiling.hpp): every element ends up equal
    // to the block's element at its offset modulo the block, each copy reads only filled
    // elements and writes only unfilled ones, inside the buffer, without overlapping itself.
    for (const auto& [total, block] : std::vector<std::pair<std::size_t, std::size_t>>{
             {1, 1}, {7, 3}, {8, 4}, {9, 4}, {4096 * 7, 4096}, {3, 8}, {1000, 1}, {0, 5}}) {
      std::vector<int> buf(total, -1);
      for (std::size_t i = 0; i < std::min(block, total); ++i) buf[i] = static_cast<int>(i);
      std::size_t filled = std::min(block, total), copies = 0;
      bool in_order = true;
      tile(total, block, [&](std::size_t dst, std::size_t src, std::size_t n) {
        const bool ok = dst == filled && src + n <= dst && dst + n <= total && n > 0;
        in_order = in_order && ok;
        if (ok)
          std::copy(buf.begin() + static_cast<std::ptrdiff_t>(src), buf.begin() + static_cast<std::ptrdiff_t>(src + n),
                    buf.begin() + static_cast<std::ptrdiff_t>(dst));
        filled += n, ++copies;
      });
      bool tiled = filled == total;
      for (std::size_t i = 0; i < total; ++i) tiled = tiled && buf[i] == static_cast<int>(i % block);
      std::size_t steps = 0;  // ceil(log2(total / block))
      for (std::size_t have = block; have < total; have *= 2) ++steps;
      const std::string name = "tiling " + std::to_string(total) + " elements by " + std::to_string(block);
      expect(in_order, name + ": copies from the filled part onto the next unfilled one");
      expect(tiled, name + ": every element the block's at its offset modulo the block");
      expect(copies == steps, name + ": one copy per doubling");
    }
  }
  if (failures == 0) std::printf("ok: reference checks passed\n");
  return failures == 0 ? 0 : 1;
}
