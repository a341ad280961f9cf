#include "sim/units.hpp"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <optional>

namespace moesim::sim {
namespace {

using i128 = int128;

struct Decimal {
  i128 mantissa = 0;  // digits without the point
  int exponent = 0;   // value = mantissa * 10^exponent
};

struct UnitScale {
  std::string_view suffix;
  i128 num;  // base units per unit = num / den
  i128 den;
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Parses the leading decimal number of `s`; returns the rest (the unit) through `rest`.
std::optional<Decimal> parse_decimal(std::string_view s, std::string_view& rest) {
  Decimal d;
  std::size_t i = 0;
  int digits = 0;
  bool any = false;
  auto take_digit = [&](char c) {
    if (digits < 30) {
      d.mantissa = d.mantissa * 10 + (c - '0');
      if (d.mantissa != 0) ++digits;
      return true;
    }
    return false;  // more significant digits than we can hold exactly
  };
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    if (!take_digit(s[i])) {
      if (!d.mantissa) return std::nullopt;
      ++d.exponent;
    }
    any = true;
    ++i;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      if (take_digit(s[i])) --d.exponent;
      any = true;
      ++i;
    }
  }
  if (!any) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E') && i + 1 < s.size() &&
      (std::isdigit(static_cast<unsigned char>(s[i + 1])) ||
       ((s[i + 1] == '-' || s[i + 1] == '+') && i + 2 < s.size() &&
        std::isdigit(static_cast<unsigned char>(s[i + 2]))))) {
    ++i;
    int sign = 1;
    if (s[i] == '-' || s[i] == '+') {
      sign = s[i] == '-' ? -1 : 1;
      ++i;
    }
    int e = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      e = e * 10 + (s[i] - '0');
      if (e > 60) return std::nullopt;
      ++i;
    }
    d.exponent += sign * e;
  }
  rest = trim(s.substr(i));
  return d;
}

constexpr i128 pow10(int n) {
  i128 r = 1;
  for (int i = 0; i < n; ++i) r *= 10;
  return r;
}

// value * num / den rounded to nearest, or nullopt on overflow / out of range.
std::optional<std::int64_t> scale_to_base(Decimal d, const UnitScale& u, bool& inexact) {
  constexpr i128 limit = static_cast<i128>(1) << 100;
  i128 num = d.mantissa * u.num;
  i128 den = u.den;
  if (d.exponent > 0) {
    for (int k = 0; k < d.exponent; ++k) {
      num *= 10;
      if (num > limit) return std::nullopt;
    }
  } else if (d.exponent < 0) {
    if (-d.exponent > 30) return num == 0 ? std::optional<std::int64_t>(0) : std::nullopt;
    den *= pow10(-d.exponent);
  }
  const i128 q = (num + den / 2) / den;
  inexact = (q * den != num);
  if (q > std::numeric_limits<std::int64_t>::max()) return std::nullopt;
  return static_cast<std::int64_t>(q);
}

template <std::size_t N>
std::int64_t parse_with(std::string_view text, const std::array<UnitScale, N>& units,
                        std::string_view what, std::string_view example, bool whole = false) {
  const std::string_view t = trim(text);
  auto fail = [&](std::string_view why) -> std::int64_t {
    throw UnitError(fmt::format("expected {} like {}, got '{}'{}", what, example, t, why));
  };
  std::string_view unit;
  const auto d = parse_decimal(t, unit);
  if (!d) return fail("");
  if (unit.empty()) return fail(" (the unit is missing)");
  for (const auto& u : units) {
    if (u.suffix != unit) continue;
    bool inexact = false;
    const auto v = scale_to_base(*d, u, inexact);
    if (!v) return fail(" (out of range)");
    if (whole && inexact) return fail(" (not a whole number of bytes)");
    return *v;
  }
  return fail(fmt::format(" (unknown unit '{}')", unit));
}

constexpr i128 kKi = 1024;
constexpr std::array<UnitScale, 9> kTimeUnits{{
    {"ps", 1, 1},
    {"ns", 1'000, 1},
    {"us", 1'000'000, 1},
    {"\xC2\xB5s", 1'000'000, 1},
    {"ms", 1'000'000'000, 1},
    {"s", 1'000'000'000'000, 1},
    {"sec", 1'000'000'000'000, 1},
    {"min", 60'000'000'000'000, 1},
    {"h", 3'600'000'000'000'000, 1},
}};
constexpr std::array<UnitScale, 10> kSizeUnits{{
    {"B", 1, 1},
    {"kB", 1'000, 1},
    {"KB", 1'000, 1},
    {"MB", 1'000'000, 1},
    {"GB", 1'000'000'000, 1},
    {"TB", 1'000'000'000'000, 1},
    {"KiB", kKi, 1},
    {"MiB", kKi * kKi, 1},
    {"GiB", kKi * kKi * kKi, 1},
    {"TiB", kKi * kKi * kKi * kKi, 1},
}};
constexpr std::array<UnitScale, 25> kBandwidthUnits{{
    {"B/s", 1, 1},
    {"kB/s", 1'000, 1},
    {"KB/s", 1'000, 1},
    {"MB/s", 1'000'000, 1},
    {"GB/s", 1'000'000'000, 1},
    {"TB/s", 1'000'000'000'000, 1},
    {"KiB/s", kKi, 1},
    {"MiB/s", kKi * kKi, 1},
    {"GiB/s", kKi * kKi * kKi, 1},
    {"TiB/s", kKi * kKi * kKi * kKi, 1},
    {"Bps", 1, 1},
    {"KBps", 1'000, 1},
    {"MBps", 1'000'000, 1},
    {"GBps", 1'000'000'000, 1},
    {"TBps", 1'000'000'000'000, 1},
    {"bps", 1, 8},
    {"kbps", 1'000, 8},
    {"Kbps", 1'000, 8},
    {"Mbps", 1'000'000, 8},
    {"Gbps", 1'000'000'000, 8},
    {"Tbps", 1'000'000'000'000, 8},
    {"b/s", 1, 8},
    {"Mb/s", 1'000'000, 8},
    {"Gb/s", 1'000'000'000, 8},
    {"Tb/s", 1'000'000'000'000, 8},
}};
constexpr std::array<UnitScale, 12> kFlopUnits{{
    {"FLOP/s", 1, 1},
    {"kFLOP/s", 1'000, 1},
    {"MFLOP/s", 1'000'000, 1},
    {"GFLOP/s", 1'000'000'000, 1},
    {"TFLOP/s", 1'000'000'000'000, 1},
    {"PFLOP/s", 1'000'000'000'000'000, 1},
    {"FLOPS", 1, 1},
    {"kFLOPS", 1'000, 1},
    {"MFLOPS", 1'000'000, 1},
    {"GFLOPS", 1'000'000'000, 1},
    {"TFLOPS", 1'000'000'000'000, 1},
    {"PFLOPS", 1'000'000'000'000'000, 1},
}};

// Shortest exact decimal of v / div (v >= 0) with at most three decimals, or nullopt.
std::optional<std::string> exact_decimal(std::int64_t v, std::int64_t div) {
  const std::int64_t whole = v / div;
  const std::int64_t frac = v % div;
  if (frac == 0) return fmt::format("{}", whole);
  const i128 scaled = static_cast<i128>(frac) * 1000;
  if (scaled % div != 0) return std::nullopt;
  std::string f = fmt::format("{:03}", static_cast<std::int64_t>(scaled / div));
  while (f.back() == '0') f.pop_back();
  return fmt::format("{}.{}", whole, f);
}

template <std::size_t N>
std::string format_with(std::int64_t v,
                        const std::array<std::pair<std::string_view, std::int64_t>, N>& units) {
  // Largest unit in which the value is >= 1 and exact to three decimals; else the smallest.
  const std::string sign = v < 0 ? "-" : "";
  const std::int64_t a = v < 0 ? -v : v;
  for (const auto& [suffix, div] : units) {
    if (a < div && !(a == 0 && div == units.back().second)) continue;
    if (auto s = exact_decimal(a, div)) return sign + *s + std::string(suffix);
  }
  return fmt::format("{}{}", v, units.back().first);
}

}  // namespace

Time parse_time(std::string_view text) {
  return Time::ps(parse_with(text, kTimeUnits, "a time", "'2us' or '1.5ms'"));
}

Bytes parse_bytes(std::string_view text) {
  return Bytes(parse_with(text, kSizeUnits, "a size", "'64KiB' or '4096B'", true));
}

Bandwidth parse_bandwidth(std::string_view text) {
  return Bandwidth(parse_with(text, kBandwidthUnits, "a bandwidth", "'400Gbps' or '50GB/s'"));
}

FlopRate parse_flop_rate(std::string_view text) {
  return FlopRate(parse_with(text, kFlopUnits, "a FLOP rate", "'989TFLOP/s'"));
}

double parse_power(std::string_view text) {
  static constexpr std::array<UnitScale, 3> kPowerUnits{{{"W", 1000, 1}, {"kW", 1'000'000, 1}, {"MW", 1'000'000'000, 1}}};
  return static_cast<double>(parse_with(text, kPowerUnits, "a power", "'700W' or '10.2kW'")) / 1000.0;  // from mW
}

std::int64_t parse_count(std::string_view text) {
  const std::string_view t = trim(text);
  std::int64_t v = 0;
  if (t.empty()) throw UnitError("expected a whole number like '7168', got ''");
  for (char c : t) {
    if (!std::isdigit(static_cast<unsigned char>(c)) || v > (std::numeric_limits<std::int64_t>::max() - 9) / 10)
      throw UnitError(fmt::format("expected a whole number like '7168', got '{}'", t));
    v = v * 10 + (c - '0');
  }
  return v;
}

double parse_number(std::string_view text) {
  const std::string t(trim(text));
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || !std::isfinite(v))
    throw UnitError(fmt::format("expected a number like '1.25', got '{}'", t));
  return v;
}

std::string format_time(Time t) {
  static constexpr std::array<std::pair<std::string_view, std::int64_t>, 5> units{{
      {"s", 1'000'000'000'000}, {"ms", 1'000'000'000}, {"us", 1'000'000}, {"ns", 1'000}, {"ps", 1}}};
  return format_with(t.count_ps(), units);
}

std::string format_bytes(Bytes b) {
  static constexpr std::array<std::pair<std::string_view, std::int64_t>, 5> units{{
      {"TiB", std::int64_t{1} << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}};
  return format_with(b.count(), units);
}

std::string format_bandwidth(Bandwidth bw) {
  static constexpr std::array<std::pair<std::string_view, std::int64_t>, 5> units{{
      {"TB/s", 1'000'000'000'000}, {"GB/s", 1'000'000'000}, {"MB/s", 1'000'000}, {"kB/s", 1'000}, {"B/s", 1}}};
  return format_with(bw.bytes_per_s(), units);
}

std::string format_flop_rate(FlopRate r) {
  static constexpr std::array<std::pair<std::string_view, std::int64_t>, 4> units{{
      {"PFLOP/s", 1'000'000'000'000'000}, {"TFLOP/s", 1'000'000'000'000}, {"GFLOP/s", 1'000'000'000}, {"FLOP/s", 1}}};
  return format_with(r.flop_per_s(), units);
}

std::string format_us(Time t) {
  std::int64_t ps = t.count_ps();
  const char* sign = "";
  if (ps < 0) {
    sign = "-";
    ps = -ps;
  }
  return fmt::format("{}{}.{:06}", sign, ps / 1'000'000, ps % 1'000'000);
}

}  // namespace moesim::sim
