// Parsing and printing of quantities with units, in one place (SimGrid's rule).
//
// Accepted forms (a decimal number, optional exponent, optional space, then the unit):
//   time       ps ns us µs ms s                      "2us", "1.5ms", "250 ns"
//   size       B kB KB MB GB TB  KiB MiB GiB TiB     "64KiB", "4096B", "1.5GB"
//   bandwidth  B/s kB/s … TB/s, KiB/s … GiB/s,       "450GB/s", "3.35TB/s"
//              bps Kbps Mbps Gbps Tbps (also Gb/s)   "400Gbps" (bits: divided by 8)
//   FLOP rate  FLOP/s FLOPS with k M G T P prefixes  "989TFLOP/s", "1.979PFLOPS"
//   power      W kW MW                               "700W", "10.2kW"
//   count      a plain non-negative integer          "7168"
// Decimal prefixes are powers of 1000, binary (Ki, Mi, …) powers of 1024. Values are converted
// to the base unit (ps, B, B/s, FLOP/s) with exact integer arithmetic and rounded to nearest;
// sizes must come out as whole bytes. Bad text throws UnitError whose message says what was
// expected and what was found.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "sim/time.hpp"

namespace moesim::sim {

class UnitError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

Time parse_time(std::string_view text);
Bytes parse_bytes(std::string_view text);
Bandwidth parse_bandwidth(std::string_view text);
FlopRate parse_flop_rate(std::string_view text);
// Watts, exact to the milliwatt.
double parse_power(std::string_view text);
std::int64_t parse_count(std::string_view text);
// A plain decimal number without unit (ratios such as a capacity factor).
double parse_number(std::string_view text);

// Human-readable, shortest exact form up to three decimals: "1.5ms", "64KiB", "450GB/s".
std::string format_time(Time t);
std::string format_bytes(Bytes b);
std::string format_bandwidth(Bandwidth bw);
std::string format_flop_rate(FlopRate r);
// Exact microseconds with six decimals, for reports: "1234.000500".
std::string format_us(Time t);

}  // namespace moesim::sim
