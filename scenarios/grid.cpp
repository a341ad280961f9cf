#include "scenarios/grid.hpp"

#include <yaml-cpp/yaml.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "scenarios/scenario.hpp"
#include "sim/units.hpp"

namespace moesim::scenarios {

namespace {

std::string where(const std::string& file, const YAML::Node& n) {
  return fmt::format("{}:{}:{}", file, n.Mark().line + 1, n.Mark().column + 1);
}

std::string resolve(const std::string& grid, const std::string& p) {
  std::filesystem::path x(p);
  if (x.is_relative()) x = std::filesystem::path(grid).parent_path() / x;
  return x.string();
}

// A range's values as the shortest decimal texts (0.1 + 0.2 prints as 0.3).
std::vector<std::string> range(const std::string& file, const std::string& axis, const YAML::Node& n) {
  for (const char* k : {"from", "to", "step"})
    if (!n[k] || !n[k].IsScalar())
      throw GridError(fmt::format("{}: axes.{}: a range needs from, to and step", where(file, n), axis));
  double from = 0, to = 0, step = 0;
  try {
    from = sim::parse_number(n["from"].Scalar());
    to = sim::parse_number(n["to"].Scalar());
    step = sim::parse_number(n["step"].Scalar());
  } catch (const std::exception& e) {
    throw GridError(fmt::format("{}: axes.{}: {}", where(file, n), axis, e.what()));
  }
  if (!(step > 0) || to < from)
    throw GridError(fmt::format("{}: axes.{}: a range needs step > 0 and to >= from", where(file, n), axis));
  std::vector<std::string> out;
  const auto count = static_cast<long>(std::floor((to - from) / step * (1 + 1e-12))) + 1;
  if (count > 1'000'000) throw GridError(fmt::format("{}: axes.{}: more than a million values", where(file, n), axis));
  for (long i = 0; i < count; ++i) out.push_back(fmt::format("{}", from + static_cast<double>(i) * step));
  return out;
}

// An axis value as the text --set takes: a scalar as it is, a list or mapping in YAML's flow
// style ([1, 4, 4], {3: 0.5}), null as ~ (the point removes the key).
std::string value_text(const YAML::Node& x) {
  if (x.IsScalar()) return x.Scalar();
  if (x.IsNull()) return "~";
  YAML::Emitter e;
  e << YAML::Flow << x;
  return e.c_str();
}

}  // namespace

std::string invalid_point_reason(const Grid& grid, const std::runtime_error& error) {
  const auto* scenario_error = dynamic_cast<const ScenarioError*>(&error);
  std::vector<std::string> problems = scenario_error ? scenario_error->problems() : std::vector<std::string>{error.what()};
  std::string why;
  for (std::string problem : problems) {
    if (problem.starts_with(grid.base)) {
      problem.erase(0, grid.base.size());  // then ":line:col: " or ": "
      problem.erase(0, std::min(problem.size(), problem.find(' ') + 1));
    }
    if (problem.starts_with("--set ")) problem.erase(0, 6);
    if (!why.empty()) why += "; ";
    why += problem;
  }
  return why;
}

bool is_grid_file(const std::string& path) {
  try {
    const YAML::Node root = YAML::LoadFile(path);
    return root.IsMap() && root["base"];
  } catch (const YAML::Exception&) {
    return false;
  }
}

Grid load_grid(const std::string& path) {
  if (!std::filesystem::exists(path)) throw GridError(fmt::format("{}: cannot open the grid file", path));
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw GridError(fmt::format("{}:{}:{}: not valid YAML: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (!root.IsMap()) throw GridError(fmt::format("{}:1:1: expected a grid (base:, axes:)", path));
  Grid g;
  g.source = path;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.Scalar();
    if (key != "base" && key != "out" && key != "axes" && key != "zip" && key != "skip")
      throw GridError(fmt::format("{}: unknown key '{}' (known: base, out, axes, zip, skip)", where(path, it->first), key));
  }
  if (!root["base"] || !root["base"].IsScalar()) throw GridError(fmt::format("{}:1:1: missing 'base' (the scenario to vary)", path));
  g.base = resolve(path, root["base"].Scalar());
  if (root["out"]) g.out = resolve(path, root["out"].Scalar());
  const YAML::Node axes = root["axes"];
  if (!axes || !axes.IsMap() || axes.size() == 0)
    throw GridError(fmt::format("{}:1:1: missing 'axes' (key paths and their values)", path));
  for (auto it = axes.begin(); it != axes.end(); ++it) {
    const std::string axis = it->first.Scalar();
    const YAML::Node v = it->second;
    std::vector<std::string> values;
    if (v.IsSequence()) {
      for (const auto& x : v) {
        values.push_back(value_text(x));
      }
    } else if (v.IsMap()) {
      values = range(path, axis, v);
    } else {
      throw GridError(fmt::format("{}: axes.{}: expected a list of values or a range {{from, to, step}}", where(path, v), axis));
    }
    if (values.empty()) throw GridError(fmt::format("{}: axes.{}: no values", where(path, v), axis));
    g.axes.push_back(axis);
    g.values.push_back(std::move(values));
  }
  if (const YAML::Node z = root["zip"]) {
    // A list of axes (one group), or a list of such lists (groups that advance apart).
    if (!z.IsSequence()) throw GridError(fmt::format("{}: zip: expected a list of axes, or a list of lists of axes", where(path, z)));
    const bool groups = z.size() > 0 && z[0].IsSequence();
    std::vector<char> zipped(g.axes.size(), 0);
    for (std::size_t k = 0; k < (groups ? z.size() : 1); ++k) {
      const YAML::Node list = groups ? z[k] : z;
      if (!list.IsSequence() || list.size() == 0)
        throw GridError(fmt::format("{}: zip: expected a list of axes{}", where(path, groups ? z[k] : z), groups ? " in each group" : ""));
      std::vector<int> group;
      for (const auto& a : list) {
        if (!a.IsScalar()) throw GridError(fmt::format("{}: zip: expected an axis name", where(path, a)));
        const auto it = std::find(g.axes.begin(), g.axes.end(), a.Scalar());
        if (it == g.axes.end()) throw GridError(fmt::format("{}: zip: '{}' is not an axis", where(path, a), a.Scalar()));
        const auto i = static_cast<std::size_t>(it - g.axes.begin());
        if (zipped[i]) throw GridError(fmt::format("{}: zip: axis '{}' is zipped twice", where(path, a), a.Scalar()));
        zipped[i] = 1;
        group.push_back(static_cast<int>(i));
      }
      for (const int i : group)
        if (g.values[static_cast<std::size_t>(i)].size() != g.values[static_cast<std::size_t>(group[0])].size())
          throw GridError(fmt::format("{}: zip: axes {} and {} have different lengths", where(path, list),
                                      g.axes[static_cast<std::size_t>(group[0])], g.axes[static_cast<std::size_t>(i)]));
      g.zipped.push_back(group);
    }
  }
  if (const YAML::Node k = root["skip"]) {
    // Points not to run: those the scenario rules refuse, those that cannot fit.
    std::vector<YAML::Node> list;
    if (k.IsScalar())
      list.push_back(k);
    else if (k.IsSequence())
      for (const auto& x : k) list.push_back(x);
    else
      throw GridError(fmt::format("{}: skip: expected a list of invalid, unfit", where(path, k)));
    for (const auto& x : list) {
      const std::string what = x.IsScalar() ? x.Scalar() : "";
      if (what == "invalid")
        g.skip_invalid = true;
      else if (what == "unfit")
        g.skip_unfit = true;
      else
        throw GridError(fmt::format("{}: skip: unknown '{}' (known: invalid, the points the scenario rules refuse; unfit, the points "
                                    "that cannot fit the GPUs' memory)",
                                    where(path, x), what));
    }
  }
  return g;
}

std::vector<std::vector<std::string>> Grid::points() const {
  // Dimensions: each zipped group is one, every other axis one.
  std::vector<std::vector<int>> dims;
  std::vector<char> in_zip(axes.size(), 0);
  for (const auto& z : zipped) {
    for (const int i : z) in_zip[static_cast<std::size_t>(i)] = 1;
  }
  for (std::size_t i = 0; i < axes.size(); ++i) {
    if (in_zip[i]) {
      for (const auto& z : zipped)
        if (z[0] == static_cast<int>(i)) dims.push_back(z);
    } else {
      dims.push_back({static_cast<int>(i)});
    }
  }
  std::vector<std::vector<std::string>> out;
  std::vector<std::size_t> at(dims.size(), 0);
  for (;;) {
    std::vector<std::string> p;
    for (std::size_t d = 0; d < dims.size(); ++d)
      for (const int a : dims[d])
        p.push_back(axes[static_cast<std::size_t>(a)] + "=" + values[static_cast<std::size_t>(a)][at[d]]);
    out.push_back(std::move(p));
    std::size_t d = dims.size();
    while (d > 0) {
      --d;
      if (++at[d] < values[static_cast<std::size_t>(dims[d][0])].size()) break;
      at[d] = 0;
      if (d == 0) return out;
    }
    if (dims.empty()) return out;
  }
}

}  // namespace moesim::scenarios
