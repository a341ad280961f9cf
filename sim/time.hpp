// Time, sizes and rates: the simulator's quantities.
//
// Time is signed 64-bit picoseconds (htsim's choice): exact sums, a range of ±106 days, and
// no floating-point drift between machines. Sizes are whole bytes, rates whole bytes (or
// FLOPs) per second. A transfer or computation of n units at rate r takes ceil(n / r) seconds
// expressed in picoseconds: rounding is always up, so a non-empty transfer never takes 0 ps.
// Doubles appear only in reports.
#pragma once

#include <compare>
#include <cstdint>
#include <limits>

namespace moesim::sim {

// 128-bit integers for exact intermediate products (a GCC/Clang extension).
__extension__ typedef __int128 int128;
__extension__ typedef unsigned __int128 uint128;

class Time {
 public:
  constexpr Time() = default;
  static constexpr Time ps(std::int64_t v) { return Time(v); }
  static constexpr Time ns(std::int64_t v) { return Time(v * 1'000); }
  static constexpr Time us(std::int64_t v) { return Time(v * 1'000'000); }
  static constexpr Time ms(std::int64_t v) { return Time(v * 1'000'000'000); }
  static constexpr Time zero() { return Time(0); }
  static constexpr Time max() { return Time(std::numeric_limits<std::int64_t>::max()); }

  constexpr std::int64_t count_ps() const { return ps_; }
  // For reports only.
  constexpr double to_us() const { return static_cast<double>(ps_) / 1e6; }
  constexpr double to_seconds() const { return static_cast<double>(ps_) / 1e12; }

  constexpr auto operator<=>(const Time&) const = default;
  constexpr Time operator+(Time o) const { return Time(ps_ + o.ps_); }
  constexpr Time operator-(Time o) const { return Time(ps_ - o.ps_); }
  constexpr Time& operator+=(Time o) { ps_ += o.ps_; return *this; }
  constexpr Time& operator-=(Time o) { ps_ -= o.ps_; return *this; }
  constexpr Time operator*(std::int64_t k) const { return Time(ps_ * k); }

 private:
  constexpr explicit Time(std::int64_t v) : ps_(v) {}
  std::int64_t ps_ = 0;
};

constexpr Time max(Time a, Time b) { return a < b ? b : a; }
constexpr Time min(Time a, Time b) { return a < b ? a : b; }

class Bytes {
 public:
  constexpr Bytes() = default;
  constexpr explicit Bytes(std::int64_t v) : v_(v) {}
  constexpr std::int64_t count() const { return v_; }
  constexpr auto operator<=>(const Bytes&) const = default;
  constexpr Bytes operator+(Bytes o) const { return Bytes(v_ + o.v_); }
  constexpr Bytes& operator+=(Bytes o) { v_ += o.v_; return *this; }
  constexpr Bytes operator*(std::int64_t k) const { return Bytes(v_ * k); }

 private:
  std::int64_t v_ = 0;
};

// Bytes per second, one direction.
class Bandwidth {
 public:
  constexpr Bandwidth() = default;
  constexpr explicit Bandwidth(std::int64_t bytes_per_s) : v_(bytes_per_s) {}
  constexpr std::int64_t bytes_per_s() const { return v_; }
  constexpr auto operator<=>(const Bandwidth&) const = default;
  constexpr bool is_zero() const { return v_ == 0; }

 private:
  std::int64_t v_ = 0;
};

// Floating-point operations per second.
class FlopRate {
 public:
  constexpr FlopRate() = default;
  constexpr explicit FlopRate(std::int64_t flop_per_s) : v_(flop_per_s) {}
  constexpr std::int64_t flop_per_s() const { return v_; }
  constexpr auto operator<=>(const FlopRate&) const = default;

 private:
  std::int64_t v_ = 0;
};

// ceil(amount / per_second) seconds, in picoseconds; the one rounding rule for all work.
// Exact: 128-bit integer arithmetic. per_second must be positive.
constexpr Time duration_of(std::int64_t amount, std::int64_t per_second) {
  if (amount <= 0) return Time::zero();
  const int128 num = static_cast<int128>(amount) * 1'000'000'000'000;
  const int128 q = (num + per_second - 1) / per_second;
  return Time::ps(static_cast<std::int64_t>(q));
}
constexpr Time transfer_time(Bytes size, Bandwidth bw) {
  return duration_of(size.count(), bw.bytes_per_s());
}
constexpr Time compute_time(std::int64_t flops, FlopRate rate) {
  return duration_of(flops, rate.flop_per_s());
}

}  // namespace moesim::sim
