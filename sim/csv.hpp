// Small helpers for the line-oriented CSV inputs (flows lists, routing traces): trim a field,
// split a line on commas, read a whole number. No quoting: these formats have numeric fields.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace moesim::sim {

// Without leading blanks and trailing blanks or '\r'.
std::string_view trim_field(std::string_view s);
// The comma-separated fields of a line, each trimmed.
std::vector<std::string_view> split_fields(std::string_view line);
// The whole number the field holds exactly, or nothing (empty, signs other than '-', garbage).
std::optional<std::int64_t> parse_whole(std::string_view field);

}  // namespace moesim::sim
