#include "sim/csv.hpp"

#include <charconv>

namespace moesim::sim {

std::string_view trim_field(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> out;
  for (std::size_t from = 0;;) {
    const std::size_t comma = line.find(',', from);
    out.push_back(trim_field(line.substr(from, comma == std::string_view::npos ? std::string_view::npos : comma - from)));
    if (comma == std::string_view::npos) return out;
    from = comma + 1;
  }
}

std::optional<std::int64_t> parse_whole(std::string_view field) {
  std::int64_t v = 0;
  const auto [p, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  if (field.empty() || ec != std::errc() || p != field.data() + field.size()) return std::nullopt;
  return v;
}

}  // namespace moesim::sim
