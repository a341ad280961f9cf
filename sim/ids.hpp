// Strong ids: a GpuId is not a LinkId is not an ExpertId, and none is a bare int.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace moesim::sim {

template <class Tag>
struct Id {
  std::uint32_t value = 0;
  constexpr Id() = default;
  constexpr explicit Id(std::uint32_t v) : value(v) {}
  constexpr auto operator<=>(const Id&) const = default;
  constexpr std::size_t index() const { return value; }
};

}  // namespace moesim::sim

template <class Tag>
struct std::hash<moesim::sim::Id<Tag>> {
  std::size_t operator()(moesim::sim::Id<Tag> id) const noexcept {
    return std::hash<std::uint32_t>{}(id.value);
  }
};
