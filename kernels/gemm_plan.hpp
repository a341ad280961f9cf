// The expert stage's GEMMs as cuBLAS is asked for them (column-major), forward and backward: the
// backward's (and the router's backward) are the list the GPU layer (moe_layer.cu) issues, as
// grouped GEMMs or a loop; the forward's are the same calls as the GPU layer's own run_experts()
// (checked on an H100, left as written there), here so that a host test (test_reference.cpp)
// can run the whole layer on float64 arrays against the reference, checking every transpose and
// leading dimension of the backward without a GPU. Plain C++17.
//
// Row-major data seen column-major: an expert's rows are columns (xperm_e: H x rows, h1_e:
// 2F x rows, act_e: F x rows, y_e: H x rows, and their gradients alike); Wgu_e (row-major
// H x 2F) is 2F x H with leading dimension 2F, Wd_e (row-major F x H) is H x F with leading
// dimension H, and their gradients alike.
#pragma once

#include <array>
#include <cstddef>

namespace moe {

enum class Operand { gate_up, down, xperm, h1, act, y, dy, dact, dh1, dxperm, dgate_up, ddown, router, x, dlogits, dx, drouter };

// C = op(A) op(B) (+ C where `accumulate`), m x n, over k; C in fp32 where `fp32_out`, else bf16.
struct GemmCall {
  bool trans_a, trans_b;
  int m, n, k;
  Operand a, b, c;
  int lda, ldb, ldc;
  const char* what;
  bool accumulate = false, fp32_out = false;
};

// Where expert e's part of an operand starts, in elements: weights (and their gradients) by
// expert, rows by the expert's first row.
inline std::size_t operand_offset(Operand o, int hidden, int ffn, std::size_t expert, std::size_t row) {
  const auto h = static_cast<std::size_t>(hidden), f = static_cast<std::size_t>(ffn);
  switch (o) {
    case Operand::gate_up:
    case Operand::dgate_up:
      return expert * h * 2 * f;
    case Operand::down:
    case Operand::ddown:
      return expert * f * h;
    case Operand::xperm:
    case Operand::y:
    case Operand::dy:
    case Operand::dxperm:
      return row * h;
    case Operand::h1:
    case Operand::dh1:
      return row * 2 * f;
    case Operand::act:
    case Operand::dact:
      return row * f;
    default:  // the router's operands: one for all tokens
      return 0;
  }
}

// Forward, around the SwiGLU: h1 = x Wgu (2F x rows = Wgu-view x-view), then y = act Wd.
inline std::array<GemmCall, 1> experts_forward_gate_up(int hidden, int ffn, int rows) {
  return {{{false, false, 2 * ffn, rows, hidden, Operand::gate_up, Operand::xperm, Operand::h1, 2 * ffn, hidden, 2 * ffn,
            "GEMM gate/up"}}};
}
inline std::array<GemmCall, 1> experts_forward_down(int hidden, int ffn, int rows) {
  return {{{false, false, hidden, rows, ffn, Operand::down, Operand::act, Operand::y, hidden, ffn, hidden, "GEMM down"}}};
}

// Backward, before the SwiGLU's backward: d act = dy Wd^T (F x rows = Wd-view^T dy) and
// dWd = act^T dy (H x F = dy act-view^T).
inline std::array<GemmCall, 2> experts_backward_down(int hidden, int ffn, int rows) {
  return {{{true, false, ffn, rows, hidden, Operand::down, Operand::dy, Operand::dact, hidden, hidden, ffn,
            "GEMM down, input gradient"},
           {false, true, hidden, ffn, rows, Operand::dy, Operand::act, Operand::ddown, hidden, ffn, hidden,
            "GEMM down, weight gradient"}}};
}
// ... and after it: d x = d h1 Wgu^T (H x rows = Wgu-view^T d h1) and dWgu = x^T d h1
// (2F x H = d h1 x-view^T).
inline std::array<GemmCall, 2> experts_backward_gate_up(int hidden, int ffn, int rows) {
  return {{{true, false, hidden, rows, 2 * ffn, Operand::gate_up, Operand::dh1, Operand::dxperm, 2 * ffn, 2 * ffn, hidden,
            "GEMM gate/up, input gradient"},
           {false, true, 2 * ffn, hidden, rows, Operand::dh1, Operand::xperm, Operand::dgate_up, 2 * ffn, hidden, 2 * ffn,
            "GEMM gate/up, weight gradient"}}};
}

// The router's backward, after the logits' gradient (dlogits, T x E row-major: E x T with
// leading dimension E): dx += dlogits Wr^T (H x T = Wr-view^T dlogits, Wr row-major H x E being
// E x H with leading dimension E), added to the experts' part of dx; dWr = x^T dlogits
// (E x H = dlogits x-view^T, fp32).
inline std::array<GemmCall, 2> router_backward_gemms(int hidden, int experts, int tokens) {
  return {{{true, false, hidden, tokens, experts, Operand::router, Operand::dlogits, Operand::dx, experts, experts, hidden,
            "router GEMM, input gradient", true, false},
           {false, true, experts, hidden, tokens, Operand::dlogits, Operand::x, Operand::drouter, experts, hidden, experts,
            "router GEMM, weight gradient", false, true}}};
}

}  // namespace moe
