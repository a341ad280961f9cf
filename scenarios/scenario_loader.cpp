#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>

#include "scenarios/scenario.hpp"
#include "scenarios/hf_config.hpp"

#include "routing/traces.hpp"
#include "sim/units.hpp"

namespace moesim::scenarios {
namespace {

using sim::UnitError;

// Bytes an element of a dtype the keys accept (their one_of() lists which).
int dtype_bytes(const std::string& t) { return t == "fp8" ? 1 : t == "fp32" ? 4 : 2; }

std::string join_problems(const std::vector<std::string>& p) {
  std::string s;
  for (const auto& line : p) {
    if (!s.empty()) s += '\n';
    s += line;
  }
  return s;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The closest candidate within a distance that still reads as a typo, or "".
std::string closest(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

std::string kind_of(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return fmt::format("'{}'", n.Scalar());
    default: return "nothing";
  }
}

class Problems {
 public:
  explicit Problems(std::string file) : file_(std::move(file)) {}
  // Key paths set on the command line (--set): their problems name the option, not a line.
  void overridden(std::vector<std::string> paths) { overrides_ = std::move(paths); }
  // Key paths --set removed (`~`): model.hf_config does not put them back.
  void removed(std::vector<std::string> paths) { removed_ = std::move(paths); }
  bool is_removed(std::string_view path) const {
    for (const auto& o : removed_)
      if (path == o || (path.size() > o.size() && path.substr(0, o.size()) == o && path[o.size()] == '.')) return true;
    return false;
  }
  void add(const YAML::Mark& m, std::string_view path, std::string_view msg) {
    // A key model.hf_config set: the problem is the config's, at the hf_config line.
    if (const auto d = derived_.find(std::string(path)); d != derived_.end()) {
      const YAML::Mark& at = d->second.first;
      if (is_overridden("model.hf_config"))
        list_.push_back(fmt::format("{}: --set model.hf_config: {} (from {}): {}", file_, path, d->second.second, msg));
      else
        list_.push_back(fmt::format("{}:{}:{}: {} (from {}): {}", file_, at.line + 1, at.column + 1, path, d->second.second, msg));
      return;
    }
    if (is_overridden(path)) {
      list_.push_back(fmt::format("{}: --set {}: {}", file_, path, msg));
      return;
    }
    const int line = m.line >= 0 ? m.line + 1 : 1;
    const int col = m.column >= 0 ? m.column + 1 : 1;
    list_.push_back(path.empty() ? fmt::format("{}:{}:{}: {}", file_, line, col, msg)
                                 : fmt::format("{}:{}:{}: {}: {}", file_, line, col, path, msg));
  }
  // Whether `path` (or a section above it) was set on the command line.
  bool is_overridden(std::string_view path) const {
    for (const auto& o : overrides_)
      if (path == o || (path.size() > o.size() && path.substr(0, o.size()) == o && path[o.size()] == '.')) return true;
    return false;
  }
  void add_at(std::string_view path, std::string_view msg) {
    const auto it = marks_.find(std::string(path));
    add(it == marks_.end() ? YAML::Mark() : it->second, path, msg);
  }
  void remember(const std::string& path, const YAML::Mark& m) { marks_[path] = m; }
  // `path` was set from model.hf_config (at `m`), from `origin` (its file and key).
  void derive(const std::string& path, const YAML::Mark& m, std::string origin) { derived_[path] = {m, std::move(origin)}; }
  bool any() const { return !list_.empty(); }
  const std::vector<std::string>& list() const { return list_; }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<std::string> overrides_, removed_;
  std::vector<std::string> list_;
  std::map<std::string, YAML::Mark> marks_;
  std::map<std::string, std::pair<YAML::Mark, std::string>> derived_;
};

// One mapping of the file. Every key the schema knows is looked up through a getter (that is
// what makes it "known"); finish() reports the keys nobody asked for.
class Section {
 public:
  Section(YAML::Node node, std::string path, Problems& problems)
      : node_(std::move(node)), path_(std::move(path)), problems_(problems) {}

  bool valid() const { return node_.IsMap(); }
  const std::string& path() const { return path_; }
  std::string key_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }

  // The value node of `key`, or an undefined node; marks the key known.
  YAML::Node find(std::string_view key) {
    known_.emplace_back(key);
    if (!valid()) return YAML::Node(YAML::NodeType::Undefined);
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) {
        problems_.remember(key_path(key), it->second.Mark());
        return it->second;
      }
    }
    return YAML::Node(YAML::NodeType::Undefined);
  }

  // Parses a scalar value with `parse`; reports and returns nullopt on failure or absence.
  template <class T>
  std::optional<T> get(std::string_view key, const std::function<T(const std::string&)>& parse,
                       bool required) {
    const YAML::Node n = find(key);
    if (!n.IsDefined()) {
      if (required && valid())
        problems_.add(node_.Mark(), path_, fmt::format("missing required key '{}'", key));
      return std::nullopt;
    }
    if (!n.IsScalar()) {
      problems_.add(n.Mark(), key_path(key), fmt::format("expected a single value, got {}", kind_of(n)));
      return std::nullopt;
    }
    try {
      return parse(n.Scalar());
    } catch (const UnitError& e) {
      problems_.add(n.Mark(), key_path(key), e.what());
      return std::nullopt;
    }
  }

  // A nested section; reports a missing required one or a non-mapping value.
  std::optional<Section> child(std::string_view key, bool required) {
    const YAML::Node n = find(key);
    if (!n.IsDefined() || n.IsNull()) {
      if (required && valid())
        problems_.add(node_.Mark(), key_path(key), "missing required section");
      return std::nullopt;
    }
    if (!n.IsMap()) {
      problems_.add(n.Mark(), key_path(key),
                    fmt::format("expected a section (a mapping of keys), got {}", kind_of(n)));
      return std::nullopt;
    }
    return Section(n, key_path(key), problems_);
  }

  void finish() {
    if (!valid()) return;
    std::map<std::string, int> seen_at;  // key -> its first line (1-based)
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
      if (const auto [first, fresh] = seen_at.emplace(key, it->first.Mark().line + 1); !fresh) {
        problems_.add(it->first.Mark(), key_path(key), fmt::format("given twice (first on line {})", first->second));
        continue;
      }
      if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
      const std::string near = closest(key, known_);
      problems_.add(it->first.Mark(), key_path(key),
                    near.empty() ? fmt::format("unknown key (known here: {})", fmt::join(known_, ", "))
                                 : fmt::format("unknown key; did you mean '{}'?", near));
    }
  }

 private:
  YAML::Node node_;
  std::string path_;
  Problems& problems_;
  std::vector<std::string> known_;
};

// Value parsers: each throws UnitError with "expected ..., got '...'".
std::function<std::int64_t(const std::string&)> count_at_least(std::int64_t lo) {
  return [lo](const std::string& s) {
    const std::int64_t v = sim::parse_count(s);
    if (v < lo) throw UnitError(fmt::format("must be at least {}, got {}", lo, v));
    return v;
  };
}

std::function<std::string(const std::string&)> one_of(std::vector<std::string> allowed) {
  return [allowed = std::move(allowed)](const std::string& s) {
    if (std::find(allowed.begin(), allowed.end(), s) != allowed.end()) return s;
    const std::string near = closest(s, allowed);
    throw UnitError(fmt::format("expected one of {}, got '{}'{}", fmt::join(allowed, ", "), s,
                                near.empty() ? "" : fmt::format("; did you mean '{}'?", near)));
  };
}

std::function<std::string(const std::string&)> any_text() {
  return [](const std::string& s) { return s; };
}

std::function<sim::Bandwidth(const std::string&)> positive_bandwidth() {
  return [](const std::string& s) {
    const sim::Bandwidth bw = sim::parse_bandwidth(s);
    if (bw.is_zero()) throw UnitError(fmt::format("must be greater than zero, got '{}'", s));
    return bw;
  };
}

std::function<sim::Time(const std::string&)> time_value() {
  return [](const std::string& s) {
    const sim::Time t = sim::parse_time(s);
    if (t < sim::Time::zero()) throw UnitError(fmt::format("must not be negative, got '{}'", s));
    return t;
  };
}

std::function<double(const std::string&)> fraction() {
  return [](const std::string& s) {
    const double v = sim::parse_number(s);
    if (!(v > 0 && v <= 1)) throw UnitError(fmt::format("must be in (0, 1], got {}", s));
    return v;
  };
}

std::function<double(const std::string&)> positive_number() {
  return [](const std::string& s) {
    const double v = sim::parse_number(s);
    if (!(v > 0)) throw UnitError(fmt::format("must be greater than 0, got {}", s));
    return v;
  };
}

std::function<double(const std::string&)> non_negative_number() {
  return [](const std::string& s) {
    const double v = sim::parse_number(s);
    if (!(v >= 0)) throw UnitError(fmt::format("must not be negative, got {}", s));
    return v;
  };
}

std::function<double(const std::string&)> at_least_one() {
  return [](const std::string& s) {
    const double v = sim::parse_number(s);
    if (!(v >= 1)) throw UnitError(fmt::format("must be at least 1, got {}", s));
    return v;
  };
}

std::function<sim::FlopRate(const std::string&)> positive_flops() {
  return [](const std::string& s) {
    const sim::FlopRate r = sim::parse_flop_rate(s);
    if (r.flop_per_s() <= 0) throw UnitError(fmt::format("must be greater than zero, got '{}'", s));
    return r;
  };
}

int as_int(std::int64_t v) { return static_cast<int>(std::min<std::int64_t>(v, 1 << 30)); }

void read_gpu(Section& cluster, Scenario& sc, Problems& problems) {
  const YAML::Node n = cluster.find("gpu");
  const std::string path = cluster.key_path("gpu");
  const std::string presets = fmt::format("{}", fmt::join(topology::gpu_preset_names(), ", "));
  auto preset = [&](const YAML::Node& v, const std::string& where) -> bool {
    if (const auto* g = topology::find_gpu_preset(v.Scalar())) {
      sc.cluster.gpu = *g;
      return true;
    }
    problems.add(v.Mark(), where, fmt::format("unknown GPU '{}' (presets: {})", v.Scalar(), presets));
    return false;
  };
  if (!n.IsDefined()) {
    if (cluster.valid()) problems.add_at(cluster.path(), "missing required key 'gpu'");
    return;
  }
  if (n.IsScalar()) {
    preset(n, path);
    return;
  }
  if (!n.IsMap()) {
    problems.add(n.Mark(), path,
                 fmt::format("expected a GPU preset ({}) or a mapping, got {}", presets, kind_of(n)));
    return;
  }
  Section g(n, path, problems);
  bool have_preset = false;
  if (const YAML::Node p = g.find("preset"); p.IsDefined()) {
    if (p.IsScalar()) {
      have_preset = preset(p, g.key_path("preset"));
    } else {
      problems.add(p.Mark(), g.key_path("preset"), fmt::format("expected a GPU preset ({})", presets));
    }
  }
  const bool req = !have_preset;
  if (auto v = g.get<std::string>("name", any_text(), false)) sc.cluster.gpu.name = *v;
  else if (!have_preset) sc.cluster.gpu.name = "custom";
  if (auto v = g.get<sim::FlopRate>("peak_bf16", positive_flops(), req)) sc.cluster.gpu.peak_bf16 = *v;
  if (auto v = g.get<sim::FlopRate>("peak_fp8", positive_flops(), false)) sc.cluster.gpu.peak_fp8 = *v;
  if (auto v = g.get<sim::FlopRate>("peak_fp4", positive_flops(), false)) sc.cluster.gpu.peak_fp4 = *v;
  if (auto v = g.get<sim::Bandwidth>("memory_bandwidth", positive_bandwidth(), req))
    sc.cluster.gpu.memory_bandwidth = *v;
  if (auto v = g.get<sim::Bytes>("memory", [](const std::string& s) { return sim::parse_bytes(s); }, false))
    sc.cluster.gpu.memory = *v;
  // Without a preset a GPU needs its scale-up bandwidth, unless it comes on a mesh
  // (cluster.node.fabric: mesh, checked with the node).
  if (auto v = g.get<sim::Bandwidth>("nvlink_bandwidth", positive_bandwidth(), false))
    sc.cluster.gpu.nvlink_bandwidth = *v;
  if (auto v = g.get<sim::Bandwidth>("link_bandwidth", positive_bandwidth(), false)) sc.cluster.gpu.link_bandwidth = *v;
  if (auto v = g.get<std::int64_t>("sms", count_at_least(1), false)) sc.cluster.gpu.sm_count = as_int(*v);
  g.finish();
}

// Why in-switch collectives (NVLink SHARP) cannot run on this cluster's nodes; empty if they can.
std::string nvls_unavailable(const topology::ClusterSpec& c) {
  if (c.node.fabric == topology::NodeFabric::mesh)
    return "nvls needs an NVSwitch, and this node's GPUs form a mesh with none (cluster.node.fabric: mesh)";
  // NVLink SHARP needs the third-generation NVSwitch (HGX H100, H800, H200 and later).
  if (c.gpu.name.rfind("A100", 0) == 0)
    return fmt::format("nvls needs NVSwitch in-switch reduction (NVLink SHARP), which {} systems lack", c.gpu.name);
  return {};
}

// A mapping from GPU index to a factor > 0 (compute.gpu_speed, cluster.scale_out.nic_speed):
// one factor per GPU, 1 for those it leaves out; empty when the key is absent or wrong.
std::vector<double> read_gpu_factors(Section& s, const char* key, int gpus, Problems& problems) {
  const YAML::Node speeds = s.find(key);
  if (!speeds.IsDefined()) return {};
  const std::string path = s.key_path(key);
  if (!speeds.IsMap()) {
    problems.add(speeds.Mark(), path,
                 fmt::format("expected a mapping of GPU index to speed factor (e.g. {{3: 0.8}}), got {}", kind_of(speeds)));
    return {};
  }
  const auto positive = positive_number();
  std::vector<double> out(static_cast<std::size_t>(std::max(gpus, 0)), 1.0);
  for (auto it = speeds.begin(); it != speeds.end(); ++it) {
    try {
      const auto g = sim::parse_count(it->first.Scalar());
      if (g >= gpus) throw UnitError(fmt::format("GPU {} is not in the cluster ({} GPUs)", g, gpus));
      out[static_cast<std::size_t>(g)] = positive(it->second.IsScalar() ? it->second.Scalar() : std::string("?"));
    } catch (const UnitError& e) {
      problems.add(it->first.Mark(), path, e.what());
    }
  }
  return out;
}

void read_cluster(Section& top, Scenario& sc, Problems& problems) {
  auto cluster = top.child("cluster", true);
  if (!cluster) return;
  auto& c = sc.cluster;
  if (auto v = cluster->get<std::int64_t>("nodes", count_at_least(1), true)) c.nodes = as_int(*v);
  const auto price = [](const std::string& t) {
    const double x = sim::parse_number(t);
    if (!(x > 0)) throw UnitError(fmt::format("must be greater than 0 (price of one GPU for one hour), got {}", t));
    return x;
  };
  // One price, or a price per GPU (a mapping from GPU names, presets' aliases included), so that
  // a grid or a search over cluster.gpu costs each GPU at its own; read once the GPU is known.
  const YAML::Node prices = cluster->find("gpu_hour_price");
  if (prices.IsDefined() && !prices.IsMap())
    if (auto v = cluster->get<double>("gpu_hour_price", price, false)) sc.gpu_hour_price = *v;
  if (auto v = cluster->get<std::int64_t>("gpus_per_node", count_at_least(1), true))
    c.gpus_per_node = as_int(*v);
  read_gpu(*cluster, sc, problems);
  if (prices.IsDefined() && prices.IsMap()) {
    Section per_gpu(prices, cluster->key_path("gpu_hour_price"), problems);
    std::vector<std::string> named;
    bool all_read = true;  // a price that did not parse is reported already
    for (auto it = prices.begin(); it != prices.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "";
      const topology::GpuSpec* preset = topology::find_gpu_preset(key);
      const std::string name = preset ? preset->name : key;
      named.push_back(key);
      const auto v = per_gpu.get<double>(key, price, false);
      if (!v) {
        all_read = false;
        continue;
      }
      sc.gpu_prices[name] = *v;
      if (name == c.gpu.name) sc.gpu_hour_price = *v;
    }
    per_gpu.finish();
    if (sc.gpu_hour_price == 0 && !c.gpu.name.empty() && all_read)
      problems.add(prices.Mark(), cluster->key_path("gpu_hour_price"),
                   fmt::format("no price for the cluster's GPU '{}' (priced: {})", c.gpu.name, fmt::join(named, ", ")));
  }

  // Defaults: the GPU's fabric and link rates; latencies typical of H100 systems (not measured),
  // a mesh link's the same 1 us from GPU to GPU as through an NVSwitch.
  c.node.fabric = c.gpu.fabric;
  c.node.nvlink_bandwidth = c.gpu.nvlink_bandwidth;
  c.node.nvlink_latency = sim::Time::ns(500);
  c.node.link_bandwidth = c.gpu.link_bandwidth;
  c.node.link_latency = sim::Time::us(1);
  c.node.pcie_bandwidth = sim::Bandwidth(64'000'000'000);
  c.node.pcie_latency = sim::Time::ns(500);
  using topology::NodeFabric;
  if (auto node = cluster->child("node", false)) {
    const auto fabric = node->get<std::string>("fabric", one_of({"nvswitch", "mesh"}), false);
    if (fabric) c.node.fabric = *fabric == "mesh" ? NodeFabric::mesh : NodeFabric::nvswitch;
    const bool mesh = c.node.fabric == NodeFabric::mesh;
    // The other fabric's keys are refused, not ignored.
    const auto only = [&](const char* key, bool allowed) {
      if (!allowed && node->find(key).IsDefined())
        problems.add_at(node->key_path(key),
                        fmt::format("only with 'fabric: {}' (this node's fabric is {}{})", mesh ? "nvswitch" : "mesh",
                                    mesh ? "mesh" : "nvswitch", fabric ? "" : fmt::format(", the {}'s", c.gpu.name)));
      return allowed;
    };
    if (only("nvlink_bandwidth", !mesh))
      if (auto v = node->get<sim::Bandwidth>("nvlink_bandwidth", positive_bandwidth(), false)) c.node.nvlink_bandwidth = *v;
    if (only("nvlink_latency", !mesh))
      if (auto v = node->get<sim::Time>("nvlink_latency", time_value(), false)) c.node.nvlink_latency = *v;
    if (only("link_bandwidth", mesh))
      if (auto v = node->get<sim::Bandwidth>("link_bandwidth", positive_bandwidth(), false)) c.node.link_bandwidth = *v;
    if (only("link_latency", mesh))
      if (auto v = node->get<sim::Time>("link_latency", time_value(), false)) c.node.link_latency = *v;
    if (auto v = node->get<sim::Bandwidth>("pcie_bandwidth", positive_bandwidth(), false))
      c.node.pcie_bandwidth = *v;
    if (auto v = node->get<sim::Time>("pcie_latency", time_value(), false)) c.node.pcie_latency = *v;
    node->finish();
  }
  if (c.node.fabric == NodeFabric::mesh) {
    if (c.node.link_bandwidth.is_zero() && c.gpus_per_node > 1)
      problems.add_at(cluster->path(), "no mesh link bandwidth: set cluster.node.link_bandwidth (per GPU pair and direction)");
    if (c.gpu.peer_links > 0 && c.gpus_per_node - 1 > c.gpu.peer_links)
      problems.add_at(cluster->key_path("gpus_per_node"),
                      fmt::format("the {} has {} links, one to each peer of its mesh: at most {} GPUs a node, got {}",
                                  c.gpu.name, c.gpu.peer_links, c.gpu.peer_links + 1, c.gpus_per_node));
  } else if (c.node.nvlink_bandwidth.is_zero() && c.gpus_per_node > 1) {
    problems.add_at(cluster->path(), "no NVLink bandwidth: set cluster.node.nvlink_bandwidth");
  }

  // Power: the GPU's rated board power unless given; the rest of a server and the data centre's
  // overhead only when given.
  sc.gpu_power_w = c.gpu.board_power_w;
  if (auto pw = cluster->child("power", false)) {
    const auto watts = [](const std::string& t) { return sim::parse_power(t); };
    const auto gpu = pw->get<double>("gpu", watts, false);
    if (gpu) {
      sc.gpu_power_w = *gpu;
      if (*gpu <= 0) problems.add_at(pw->key_path("gpu"), "must be more than 0W");
    } else if (sc.gpu_power_w <= 0) {
      problems.add_at(pw->path(), fmt::format("the {} has no rated power: give cluster.power.gpu", c.gpu.name));
    }
    if (auto v = pw->get<double>("node", watts, false)) sc.node_power_w = *v;
    if (auto v = pw->get<double>("pue", at_least_one(), false)) sc.pue = *v;
    pw->finish();
  }
  c.scale_out.link_latency = sim::Time::us(1);
  c.scale_out.nodes_per_leaf = c.nodes;
  if (auto so = cluster->child("scale_out", false)) {
    c.scale_out.present = true;
    if (auto t = so->get<std::string>("topology", one_of({"single_switch", "two_tier", "rail", "multi_plane"}), false)) {
      using topology::ScaleOutTopology;
      c.scale_out.topology = *t == "single_switch" ? ScaleOutTopology::single_switch
                             : *t == "rail"        ? ScaleOutTopology::rail
                             : *t == "multi_plane" ? ScaleOutTopology::multi_plane
                                                   : ScaleOutTopology::two_tier;
    }
    if (auto v = so->get<std::int64_t>("spines", count_at_least(1), false)) c.scale_out.spines = as_int(*v);
    if (auto v = so->get<sim::Bandwidth>("nic_bandwidth", positive_bandwidth(), true))
      c.scale_out.nic_bandwidth = *v;
    if (auto v = so->get<sim::Time>("link_latency", time_value(), false)) c.scale_out.link_latency = *v;
    if (auto v = so->get<std::int64_t>("nodes_per_leaf", count_at_least(1), false)) {
      c.scale_out.nodes_per_leaf = as_int(*v);
      if (c.nodes % c.scale_out.nodes_per_leaf != 0)
        problems.add_at(so->key_path("nodes_per_leaf"),
                        c.nodes == 1 ? fmt::format("1 node does not divide into leaves of {} (one node needs no scale-out "
                                                   "network: cluster.scale_out can go)",
                                                   c.scale_out.nodes_per_leaf)
                                     : fmt::format("{} nodes do not divide into leaves of {}", c.nodes, c.scale_out.nodes_per_leaf));
    }
    if (auto v = so->get<double>("oversubscription", at_least_one(), false)) c.scale_out.oversubscription = *v;
    c.scale_out.nic_speed = read_gpu_factors(*so, "nic_speed", c.nodes * c.gpus_per_node, problems);
    so->finish();
  } else if (c.nodes > 1) {
    problems.add_at(cluster->key_path("nodes"),
                    fmt::format("{} nodes need a cluster.scale_out section (NIC bandwidth)", c.nodes));
  }
  cluster->finish();
}

void read_model(Section& top, Scenario& sc, Problems& problems) {
  auto model = top.child("model", true);
  if (!model) return;
  auto& m = sc.forward.model;
  if (auto v = model->get<std::string>("name", any_text(), false)) m.name = *v;
  if (auto v = model->get<std::int64_t>("moe_layers", count_at_least(1), true)) m.moe_layers = as_int(*v);
  if (auto v = model->get<std::int64_t>("hidden", count_at_least(1), true)) m.hidden = *v;
  if (auto v = model->get<std::int64_t>("expert_ffn", count_at_least(1), true)) m.expert_ffn = *v;
  if (auto v = model->get<std::int64_t>("experts", count_at_least(1), true)) m.experts = as_int(*v);
  if (auto v = model->get<std::int64_t>("top_k", count_at_least(1), true)) m.top_k = as_int(*v);
  if (auto v = model->get<std::int64_t>("shared_experts", count_at_least(0), false))
    m.shared_experts = as_int(*v);
  if (auto v = model->get<std::string>("dtype", one_of({"bf16", "fp16", "fp32"}), false))
    m.dtype_bytes = dtype_bytes(*v);
  m.weight_bytes32 = 32 * m.dtype_bytes;
  // fp4: NVIDIA's NVFP4, 4-bit (E2M1) values with an 8-bit (E4M3) scale per 16 (18 bytes per 32
  // weights; the tensor's one fp32 scale left out); mxfp4: OCP's MXFP4, the same values with an
  // 8-bit (E8M0) scale per 32 (17 bytes per 32), as GPT-OSS ships its experts.
  const auto bytes32 = [](const std::string& dtype) { return dtype == "fp4" ? 18 : dtype == "mxfp4" ? 17 : 32 * dtype_bytes(dtype); };
  if (auto v = model->get<std::string>("weight_dtype", one_of({"bf16", "fp16", "fp8", "fp4", "mxfp4", "fp32"}), false))
    m.weight_bytes32 = bytes32(*v);
  m.expert_weight_bytes32 = m.weight_bytes32;
  if (auto v = model->get<std::string>("expert_weight_dtype", one_of({"bf16", "fp16", "fp8", "fp4", "mxfp4", "fp32"}), false))
    m.expert_weight_bytes32 = bytes32(*v);
  m.kv_cache_bytes = m.dtype_bytes;
  if (auto v = model->get<std::string>("kv_cache_dtype", one_of({"bf16", "fp16", "fp8", "fp32"}), false))
    m.kv_cache_bytes = dtype_bytes(*v);
  if (auto v = model->get<std::int64_t>("attention_heads", count_at_least(1), true))
    m.attention_heads = as_int(*v);
  m.kv_heads = m.attention_heads;
  if (auto mla = model->child("mla", false)) {
    // DeepSeek's multi-head latent attention: the ranks and head dims of its config.json.
    auto& a = m.mla;
    if (auto v = mla->get<std::int64_t>("q_lora_rank", count_at_least(0), false)) a.q_lora_rank = *v;
    if (auto v = mla->get<std::int64_t>("kv_lora_rank", count_at_least(1), true)) a.kv_lora_rank = *v;
    if (auto v = mla->get<std::int64_t>("qk_nope_head_dim", count_at_least(1), true)) a.qk_nope_head_dim = *v;
    if (auto v = mla->get<std::int64_t>("qk_rope_head_dim", count_at_least(1), true)) a.qk_rope_head_dim = *v;
    if (auto v = mla->get<std::int64_t>("v_head_dim", count_at_least(1), true)) a.v_head_dim = *v;
    // DeepSeek Sparse Attention (DeepSeek-V3.2): the indexer's keys, all three or none.
    const auto topk = mla->get<std::int64_t>("index_topk", count_at_least(1), false);
    const auto heads = mla->get<std::int64_t>("index_n_heads", count_at_least(1), false);
    const auto dim = mla->get<std::int64_t>("index_head_dim", count_at_least(1), false);
    if (topk || heads || dim) {
      if (!(topk && heads && dim))
        problems.add_at(mla->key_path(!topk ? "index_topk" : !heads ? "index_n_heads" : "index_head_dim"),
                        "sparse attention needs all of index_topk, index_n_heads and index_head_dim (DeepSeek-V3.2: 2048, 64, 128)");
      else if (a.q_lora_rank == 0)
        problems.add_at(mla->key_path("index_topk"), "sparse attention's indexer projects its queries from the query latent: set q_lora_rank");
      else {
        a.index_topk = *topk;
        a.index_n_heads = *heads;
        a.index_head_dim = *dim;
      }
    }
    mla->finish();
    if (a.kv_lora_rank == 0) a.kv_lora_rank = 1;  // a missing rank is reported; keep the model MLA
  }
  // MLA derives the head widths, its weights and its cache; the keys that set them otherwise
  // would contradict it.
  const auto not_with_mla = [&](std::string_view key) {
    if (routing::is_mla(m))
      problems.add_at(model->key_path(key), fmt::format("not used with model.mla, which sets the attention's shape; remove '{}'", key));
  };
  if (auto v = model->get<std::int64_t>("kv_heads", count_at_least(1), false)) {
    m.kv_heads = as_int(*v);
    not_with_mla("kv_heads");
  }
  if (auto v = model->get<std::int64_t>("head_dim", count_at_least(1), false)) {
    m.head_dim = *v;
    not_with_mla("head_dim");
  } else if (routing::is_mla(m)) {
    m.head_dim = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim;  // not used by MLA's costs
  } else if (m.hidden % m.attention_heads == 0) {
    m.head_dim = m.hidden / m.attention_heads;
  } else {
    m.head_dim = 0;  // reported by cross_check
  }
  if (auto v = model->get<std::int64_t>("kv_cache_dim", count_at_least(1), false)) {
    m.kv_cache_dim = *v;
    not_with_mla("kv_cache_dim");
  }
  if (auto v = model->get<std::int64_t>("attention_params", count_at_least(1), false)) {
    m.attention_params = *v;
    not_with_mla("attention_params");
  }
  if (auto v = model->get<std::string>("attention_output_gate", one_of({"true", "false"}), false)) {
    m.output_gate = *v == "true";
    if (m.output_gate) not_with_mla("attention_output_gate");
    if (m.output_gate && m.attention_params > 0)
      problems.add_at(model->key_path("attention_output_gate"), "not with model.attention_params, which gives the block's weights whole");
  }
  if (auto v = model->get<std::int64_t>("sliding_window", count_at_least(1), false)) {
    m.sliding_window = *v;
    not_with_mla("sliding_window");
  }
  if (auto lin = model->child("linear_attention", false)) {
    // Gated DeltaNet (Qwen3-Next, Qwen3.5): the linear_* keys of its config.json.
    auto& a = m.linear;
    if (auto v = lin->get<std::int64_t>("key_heads", count_at_least(1), true)) a.key_heads = as_int(*v);
    if (auto v = lin->get<std::int64_t>("value_heads", count_at_least(1), true)) a.value_heads = as_int(*v);
    if (auto v = lin->get<std::int64_t>("key_dim", count_at_least(1), true)) a.key_dim = *v;
    if (auto v = lin->get<std::int64_t>("value_dim", count_at_least(1), true)) a.value_dim = *v;
    if (auto v = lin->get<std::int64_t>("conv_kernel", count_at_least(1), false)) a.conv_kernel = as_int(*v);
    if (auto v = lin->get<std::string>("state_dtype", one_of({"fp32", "bf16", "fp16"}), false)) a.state_bytes = dtype_bytes(*v);
    lin->finish();
    if (a.value_heads == 0) a.value_heads = 1;  // a missing count is reported; keep the layers linear
    if (a.key_heads > 0 && a.value_heads % a.key_heads != 0)
      problems.add_at(lin->key_path("value_heads"), fmt::format("{} value heads do not share {} key heads evenly", a.value_heads, a.key_heads));
    if (routing::is_mla(m))
      problems.add_at(model->key_path("linear_attention"), "not with model.mla: moesim's full-attention layers beside linear ones are "
                                                           "multi-head or grouped-query attention");
    if (m.sliding_window > 0)
      problems.add_at(model->key_path("linear_attention"), "not with model.sliding_window: a layer is either linear or attends to a window");
  }
  if (auto v = model->get<std::int64_t>("full_attention_every", count_at_least(2), false)) {
    m.full_attention_every = as_int(*v);
    if (m.sliding_window == 0 && !routing::has_linear_attention(m))
      problems.add_at(model->key_path("full_attention_every"),
                      "only used with model.sliding_window or model.linear_attention (what the other layers do)");
  }
  if (auto v = model->get<std::int64_t>("dense_layers", count_at_least(0), false)) m.dense_layers = as_int(*v);
  if (auto v = model->get<std::int64_t>("dense_ffn", count_at_least(1), m.dense_layers > 0)) m.dense_ffn = *v;
  if (auto v = model->get<std::int64_t>("vocab", count_at_least(1), false)) m.vocab = *v;
  if (auto v = model->get<std::int64_t>("mtp_modules", count_at_least(0), false)) {
    m.mtp_modules = as_int(*v);
    if (m.mtp_modules > 0 && m.vocab == 0)
      problems.add_at(model->key_path("mtp_modules"), "the MTP modules predict through the LM head: set model.vocab");
  }
  model->finish();
}

void read_rest(Section& top, Scenario& sc, Problems& problems) {
  auto& f = sc.forward;
  if (auto par = top.child("parallelism", true)) {
    if (auto v = par->get<std::int64_t>("ep", count_at_least(1), true)) f.ep = as_int(*v);
    if (auto v = par->get<std::int64_t>("tp", count_at_least(1), false)) f.model.tp = as_int(*v);
    if (auto v = par->get<std::int64_t>("etp", count_at_least(1), false)) f.etp = as_int(*v);
    if (auto v = par->get<std::string>("shared_experts", one_of({"split", "replicated"}), false)) {
      f.model.shared_replicated = *v == "replicated";
      if (f.model.tp == 1) problems.add_at(par->key_path("shared_experts"), "only used with parallelism.tp > 1");
      else if (f.model.shared_experts == 0) problems.add_at(par->key_path("shared_experts"), "only used with model.shared_experts");
    }
    if (auto v = par->get<std::int64_t>("pp", count_at_least(1), false)) f.pp = as_int(*v);
    if (auto v = par->get<std::int64_t>("cp", count_at_least(1), false)) f.cp = as_int(*v);
    if (auto v = par->get<std::string>("cp_comm", one_of({"all_gather", "ring"}), false)) {
      f.cp_ring = *v == "ring";
      if (f.cp == 1) problems.add_at(par->key_path("cp_comm"), "only used with parallelism.cp > 1");
    }
    if (auto v = par->get<std::string>("cp_gather", one_of({"kv", "latent"}), false)) {
      f.cp_latent = *v == "latent";
      if (f.cp == 1) problems.add_at(par->key_path("cp_gather"), "only used with parallelism.cp > 1");
    }
    if (auto v = par->get<std::int64_t>("virtual_stages", count_at_least(1), false)) f.virtual_stages = as_int(*v);
    if (const YAML::Node list = par->find("pipeline_layers"); list.IsDefined()) {
      // MoE layers per pipeline stage, from stage 0 (checked against pp and the model later).
      const std::string path = par->key_path("pipeline_layers");
      if (!list.IsSequence()) {
        problems.add(list.Mark(), path,
                     fmt::format("expected a list of MoE layer counts, one per pipeline stage (e.g. [3, 4, 4]), got {}", kind_of(list)));
      } else {
        const auto positive = count_at_least(1);
        for (const auto& item : list) {
          try {
            f.pipeline_layers.push_back(as_int(positive(item.IsScalar() ? item.Scalar() : std::string("?"))));
          } catch (const UnitError& e) {
            problems.add(item.Mark(), path, e.what());
            f.pipeline_layers.push_back(1);
          }
        }
      }
    }
    par->finish();
  }
  if (auto w = top.child("workload", true)) {
    if (auto v = w->get<std::string>("kind", one_of({"forward", "prefill", "training", "decode"}), false)) sc.workload_kind = *v;
    f.training = sc.workload_kind == "training";
    f.prefill = sc.workload_kind == "prefill";
    const bool decode = sc.workload_kind == "decode";
    if (auto v = w->get<std::int64_t>("context_length", count_at_least(1), false)) {
      f.context_length = *v;
      if (!decode) problems.add_at(w->key_path("context_length"), "only used with 'kind: decode'");
    } else if (decode && w->valid()) {
      problems.add_at(w->key_path("kind"), "decode needs workload.context_length (the cached tokens each sequence attends to)");
    }
    if (auto v = w->get<std::int64_t>("tokens_per_gpu", count_at_least(1), true)) f.tokens_per_gpu = *v;
    // Decode: contexts that differ by sequence, and how the sequences are dealt to the GPUs.
    if (auto v = w->get<double>("context_sigma", non_negative_number(), false)) {
      f.context_sigma = *v;
      if (!decode) problems.add_at(w->key_path("context_sigma"), "only used with 'kind: decode' (the contexts of its sequences)");
    }
    if (auto v = w->get<std::string>("context_balance", one_of({"none", "kv_cache"}), false)) {
      f.context_balanced = *v == "kv_cache";
      if (!decode) problems.add_at(w->key_path("context_balance"), "only used with 'kind: decode' (how its sequences are dealt to the GPUs)");
    }
    if (auto v = w->get<std::int64_t>("draft_tokens", count_at_least(0), false)) {
      // 0: no speculation (a sweep's baseline; acceptance_rate may stay).
      f.draft_tokens = as_int(*v);
      if (!decode)
        problems.add_at(w->key_path("draft_tokens"), "only used with 'kind: decode' (speculative decoding)");
      else if (f.draft_tokens > 1)
        problems.add_at(w->key_path("draft_tokens"),
                        fmt::format("{} draft tokens: only 1 is modelled (one MTP module drafting one token a step, as "
                                    "DeepSeek-V3 is served); more need the module run again for each",
                                    f.draft_tokens));
      else if (f.draft_tokens > 0 && sc.forward.model.mtp_modules == 0)
        problems.add_at(w->key_path("draft_tokens"), "the draft tokens come from the model's MTP module: set model.mtp_modules");
      if (auto p = w->get<double>("acceptance_rate", fraction(), decode && f.draft_tokens > 0)) f.acceptance_rate = *p;
    } else if (w->get<double>("acceptance_rate", fraction(), false)) {
      problems.add_at(w->key_path("acceptance_rate"), "only used with workload.draft_tokens");
    }
    bool micro_batches_given = false;
    if (auto v = w->get<std::int64_t>("micro_batches", count_at_least(1), false)) {
      micro_batches_given = true;
      f.micro_batches = as_int(*v);
      if (f.micro_batches > 1 && !f.training && f.pp == 1)
        problems.add_at(w->key_path("micro_batches"),
                        "only used with 'kind: training' (gradient accumulation) or parallelism.pp > 1 (micro-batches "
                        "pipelined through the stages)");
    }
    // Decode with chunked prefill: each GPU's step also runs prefill_chunk prompt tokens, of
    // prompts of sequence_length tokens (by default the decode's context length); they are
    // routed and computed with the decode tokens (tokens_per_gpu counts both from here on).
    std::int64_t chunk = 0;
    if (auto v = w->get<std::int64_t>("prefill_chunk", count_at_least(0), false)) {
      chunk = *v;
      if (!decode && chunk > 0)
        problems.add_at(w->key_path("prefill_chunk"),
                        "only used with 'kind: decode' (prompt tokens run in each decode step, chunked prefill)");
    }
    f.sequence_length = decode && chunk > 0 && f.context_length > 0 ? f.context_length : f.tokens_per_gpu;
    if (auto v = w->get<std::int64_t>("sequence_length", count_at_least(1), false)) {
      f.sequence_length = *v;
      if (sc.workload_kind == "decode" && chunk == 0)
        problems.add_at(w->key_path("sequence_length"),
                        "not used with 'kind: decode' (see context_length), but with workload.prefill_chunk as the prompts' length");
    }
    if (decode && chunk > 0) {
      f.prefill_chunk = chunk;
      f.tokens_per_gpu += chunk;
    }
    // workload.global_batch: the sequences a training step takes (Megatron-LM's
    // --global-batch-size), which sets the micro-batches: a micro-batch is tokens_per_gpu on each
    // GPU, and with pipeline stages the GPUs of one stage hold all of its tokens.
    if (auto v = w->get<std::int64_t>("global_batch", count_at_least(1), false)) {
      sc.global_batch = *v;
      const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
      const std::int64_t step_seq_tokens = *v * f.sequence_length, batch_tokens = f.tokens_per_gpu * gpus / std::max(1, f.pp);
      if (!f.training)
        problems.add_at(w->key_path("global_batch"), "only used with 'kind: training' (it sets the micro-batches a step accumulates)");
      else if (micro_batches_given)
        problems.add_at(w->key_path("global_batch"), "give micro_batches or global_batch, not both (the global batch sets the micro-batches)");
      else if (gpus % std::max(1, f.pp) == 0 && (step_seq_tokens % batch_tokens != 0 || step_seq_tokens < batch_tokens)) {
        // The nearest global batches that split into whole micro-batches.
        const std::int64_t unit = batch_tokens / std::gcd(batch_tokens, f.sequence_length);  // sequences a micro-batch adds
        const std::int64_t below = *v / unit * unit, above = below + unit;
        problems.add_at(w->key_path("global_batch"),
                        fmt::format("{} sequences of {} tokens are not a whole number of micro-batches of {} tokens ({} on each of {} "
                                    "GPUs{}): the nearest global batches that are: {}",
                                    *v, f.sequence_length, batch_tokens, f.tokens_per_gpu, gpus,
                                    f.pp > 1 ? fmt::format(" over {} pipeline stages", f.pp) : "",
                                    below > 0 ? fmt::format("{} and {}", below, above) : std::to_string(above)));
      } else if (gpus % std::max(1, f.pp) == 0) {  // otherwise parallelism.pp says why
        f.micro_batches = as_int(step_seq_tokens / batch_tokens);
      }
    }
    if (auto v = w->get<std::int64_t>("cached_prefix", count_at_least(0), false)) {
      f.cached_prefix = *v;
      if (sc.workload_kind != "prefill")
        problems.add_at(w->key_path("cached_prefix"),
                        "only used with 'kind: prefill' (the tokens before each prompt's new ones whose KV cache is found)");
    }
    f.seed = 1;
    if (auto v = w->get<std::int64_t>("seed", count_at_least(0), false)) f.seed = static_cast<std::uint64_t>(*v);
    if (auto v = w->get<std::int64_t>("steps", count_at_least(1), false)) sc.steps = as_int(*v);
    if (auto v = w->get<double>("train_tokens", at_least_one(), false)) sc.train_tokens = *v;
    if (auto v = w->get<std::string>("gradient_sync", one_of({"none", "ring", "hierarchical", "nvls"}), false)) {
      f.gradient_sync = *v != "none";
      f.gradient_sync_algorithm = *v == "nvls"           ? models::CollectiveAlgorithm::nvls
                                  : *v == "hierarchical" ? models::CollectiveAlgorithm::hierarchical
                                                         : models::CollectiveAlgorithm::ring;
      if (f.gradient_sync && !f.training)
        problems.add_at(w->key_path("gradient_sync"), "only used with 'kind: training'");
      if (*v == "nvls")
        if (const std::string why = nvls_unavailable(sc.cluster); !why.empty())
          problems.add_at(w->key_path("gradient_sync"), why + "; use hierarchical");
    }
    if (auto v = w->get<std::int64_t>("gradient_sync_chunks", count_at_least(1), false)) {
      f.gradient_sync_chunks = as_int(*v);
      if (f.gradient_sync_algorithm == models::CollectiveAlgorithm::ring)
        problems.add_at(w->key_path("gradient_sync_chunks"), "only used with gradient_sync: hierarchical or nvls");
    }
    bool buckets_given = false, optimizer_unsharded = false;  // for parameter_sharding, below
    if (auto v = w->get<std::int64_t>("gradient_sync_buckets", count_at_least(1), false)) {
      buckets_given = true;
      f.gradient_sync_buckets = as_int(*v);
      if (!f.gradient_sync) problems.add_at(w->key_path("gradient_sync_buckets"), "needs a gradient_sync algorithm");
    }
    if (auto v = w->get<std::string>("optimizer_sharding", one_of({"true", "false"}), false)) {
      f.optimizer_sharding = *v == "true";
      optimizer_unsharded = !f.optimizer_sharding;
      if (f.optimizer_sharding && !f.gradient_sync)
        problems.add_at(w->key_path("optimizer_sharding"), "needs a gradient_sync algorithm (the shards are reduce-scattered)");
    }
    if (auto v = w->get<std::string>("pipeline_schedule", one_of({"1f1b", "gpipe", "zb_h1", "dualpipev", "dualpipe"}), false)) {
      f.pipeline_schedule = *v == "gpipe"       ? models::PipelineSchedule::gpipe
                            : *v == "zb_h1"     ? models::PipelineSchedule::zb_h1
                            : *v == "dualpipev" ? models::PipelineSchedule::dualpipev
                            : *v == "dualpipe"  ? models::PipelineSchedule::dualpipe
                                                : models::PipelineSchedule::one_f_one_b;
      if (f.pp == 1 || !f.training)
        problems.add_at(w->key_path("pipeline_schedule"), "only used with 'kind: training' and parallelism.pp > 1");
    }
    if (auto v = w->get<std::string>("recompute", one_of({"none", "attention", "full", "selective"}), false)) {
      f.recompute = *v == "full"        ? models::Recompute::full
                    : *v == "attention" ? models::Recompute::attention
                    : *v == "selective" ? models::Recompute::selective
                                        : models::Recompute::none;
      if (f.recompute != models::Recompute::none && !f.training)
        problems.add_at(w->key_path("recompute"), "only used with 'kind: training' (recomputation rebuilds activations for the backward pass)");
      if ((f.recompute == models::Recompute::full || f.recompute == models::Recompute::attention) &&
          (f.pipeline_schedule == models::PipelineSchedule::zb_h1 ||
                                                     f.pipeline_schedule == models::PipelineSchedule::dualpipev ||
                                                     f.pipeline_schedule == models::PipelineSchedule::dualpipe))
        problems.add_at(w->key_path("recompute"),
                        fmt::format("not with pipeline_schedule: {} (its weight passes need activations that recomputation "
                                    "rebuilds for the input-gradient pass only; not modelled)",
                                    models::to_string(f.pipeline_schedule)));
    }
    if (const YAML::Node list = w->find("recompute_modules"); list.IsDefined()) {
      // Megatron-Core's --recompute-modules, of those this model keeps apart.
      const std::string path = w->key_path("recompute_modules");
      const std::vector<std::string> known{"layernorm", "mla_up_proj", "moe_act"};
      if (!list.IsSequence() || list.size() == 0) {
        problems.add(list.Mark(), path,
                     fmt::format("expected a list of modules from layernorm, mla_up_proj and moe_act (e.g. [layernorm, mla_up_proj]), "
                                 "got {}", list.IsSequence() ? std::string("an empty list") : kind_of(list)));
      } else {
        for (const auto& item : list) {
          const std::string name = item.IsScalar() ? item.Scalar() : std::string("?");
          if (name == "layernorm") {
            f.recompute_layernorm = true;
          } else if (name == "mla_up_proj") {
            f.recompute_mla_up_proj = true;
          } else if (name == "moe_act") {
            f.recompute_moe_act = true;
          } else {
            const std::string near = closest(name, known);
            problems.add(item.Mark(), path,
                         fmt::format("unknown module '{}'{}; one of layernorm, mla_up_proj, moe_act (Megatron-Core's core_attn, mlp, "
                                     "moe and shared_experts are not modelled: recompute: attention or full rebuild more)",
                                     name, near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near)));
          }
        }
      }
      if (f.recompute != models::Recompute::selective)
        problems.add_at(path, "only used with recompute: selective (the modules it rebuilds)");
    } else if (f.recompute == models::Recompute::selective) {
      problems.add_at(w->key_path("recompute"), "selective needs workload.recompute_modules (e.g. [layernorm, mla_up_proj, moe_act])");
    }
    if (auto v = w->get<std::string>("gradient_dtype", one_of({"bf16", "fp16", "fp32"}), false)) {
      f.gradient_bytes = dtype_bytes(*v);
      if (!f.training) problems.add_at(w->key_path("gradient_dtype"), "only used with 'kind: training'");
    }
    if (auto v = w->get<std::string>("adam_moments_dtype", one_of({"fp32", "bf16"}), false)) {
      f.moment_bytes = dtype_bytes(*v);
      if (!f.training) problems.add_at(w->key_path("adam_moments_dtype"), "only used with 'kind: training'");
    }
    if (auto v = w->get<std::string>("param_gather_dtype", one_of({"bf16", "fp8"}), false)) {
      // Checked with the sharding and the GEMMs' dtype below.
      f.fp8_param_gather = *v == "fp8";
    }
    if (auto v = w->get<std::string>("activation_dtype", one_of({"bf16", "fp8"}), false)) {
      f.activations_fp8 = *v == "fp8";
      if (f.activations_fp8 && !f.training)
        problems.add_at(w->key_path("activation_dtype"), "only used with 'kind: training' (the activations kept for the backward pass)");
    }
    if (auto v = w->get<std::int64_t>("recompute_layers", count_at_least(1), false)) {
      f.recompute_layers = as_int(*v);
      if (f.recompute != models::Recompute::full)
        problems.add_at(w->key_path("recompute_layers"), "only used with recompute: full (the layers of each model chunk it rebuilds)");
    }
    if (auto v = w->get<std::string>("overlap", one_of({"none", "two_batch", "two_batch_staggered", "forward_backward"}), false)) {
      f.two_batch_overlap = *v == "two_batch" || *v == "two_batch_staggered";
      f.two_batch_staggered = *v == "two_batch_staggered";
      if (f.two_batch_staggered && f.training)
        problems.add_at(w->key_path("overlap"), "two_batch_staggered runs forward passes only (decode, prefill, forward); "
                                                "training has two_batch and forward_backward");
      else if (f.two_batch_staggered && f.pp > 1)
        problems.add_at(w->key_path("overlap"), "two_batch_staggered with parallelism.pp > 1 is not modelled (its halves would "
                                                "leave a stage half a layer apart); two_batch works with pipeline stages");
      f.forward_backward_overlap = *v == "forward_backward";
      // DeepSeek-V3 (technical report, section 3.2.2): 20 of the H800's 132 SMs suffice for its
      // all-to-all kernels; 20 of another GPU's SMs (of 132 where a custom GPU does not say).
      const int sms = sc.cluster.gpu.sm_count > 0 ? sc.cluster.gpu.sm_count : 132;
      if (*v != "none") f.comm_sm_fraction = 20.0 / sms;
      if (f.two_batch_overlap && f.tokens_per_gpu % 2 != 0)
        problems.add_at(w->key_path("overlap"),
                        f.prefill_chunk > 0
                            ? fmt::format("{} needs an even count of tokens a GPU (got tokens_per_gpu {} and prefill_chunk {})", *v,
                                          f.decode_tokens(), f.prefill_chunk)
                            : fmt::format("{} needs an even tokens_per_gpu (got {})", *v, f.tokens_per_gpu));
      if (f.forward_backward_overlap) {
        const auto refuse = [&](const std::string& why) { problems.add_at(w->key_path("overlap"), "forward_backward " + why); };
        if (!f.training)
          refuse("is only used with 'kind: training' (it runs one micro-batch's backward together with another's forward)");
        else if (f.micro_batches < 2)
          refuse(fmt::format("needs micro_batches >= 2{}: it runs one micro-batch's backward together with the next one's forward",
                             sc.global_batch > 0 ? fmt::format(" (the global batch of {} sequences makes {})", sc.global_batch, f.micro_batches)
                                                 : std::string()));
        if (f.pipeline_schedule == models::PipelineSchedule::gpipe || f.pipeline_schedule == models::PipelineSchedule::zb_h1)
          refuse(fmt::format("runs the 1F1B, DualPipeV or DualPipe schedule, not pipeline_schedule: {}",
                             models::to_string(f.pipeline_schedule)));
        if (f.recompute == models::Recompute::full)
          refuse("with recompute: full is not modelled (Megatron-LM refuses it too; recompute: attention works)");
      }
    }
    if (auto v = w->get<double>("comm_sm_fraction", [](const std::string& t) {
          const double x = sim::parse_number(t);
          if (!(x >= 0 && x < 1)) throw UnitError(fmt::format("must be in [0, 1), got {}", t));
          return x;
        }, false)) {
      f.comm_sm_fraction = *v;
      if (!f.two_batch_overlap && !f.forward_backward_overlap)
        problems.add_at(w->key_path("comm_sm_fraction"),
                        "only used with 'overlap: two_batch', 'two_batch_staggered' or 'forward_backward'");
    }
    if (auto v = w->get<std::string>("parameter_sharding", one_of({"true", "false"}), false)) {
      // ZeRO-3 / FSDP: the weights sharded as well as the optimizer (ForwardSpec::parameter_sharding).
      f.parameter_sharding = *v == "true";
      const auto refuse = [&](const std::string& why) { problems.add_at(w->key_path("parameter_sharding"), why); };
      if (f.parameter_sharding) {
        if (!f.training)
          refuse("only used with 'kind: training' (serving keeps its weights whole)");
        else if (!f.gradient_sync)
          refuse("needs a gradient_sync algorithm (each layer's gradients are reduce-scattered to their shards)");
        else if (optimizer_unsharded)
          refuse("shards the optimizer too: leave out optimizer_sharding: false");
        // PyTorch's pipelining runs FSDP without resharding or reduce-scattering until a stage's
        // last backward (torch.distributed.pipelining's PipelineStage; torchtitan gathers once a
        // step with stages): whole weights and gradients through the step, one reduce-scatter,
        // a sharded optimizer. That is optimizer_sharding's step, gathering before it, not after.
        if (f.pp > 1)
          refuse("with parallelism.pp > 1: with pipeline stages FSDP keeps each layer's gathered weights and gradients "
                 "through the step and reduce-scatters once, after the stage's last backward; use optimizer_sharding: "
                 "true (ZeRO-1), which models that step");
        if (f.two_batch_overlap || f.forward_backward_overlap)
          refuse("with an overlap is not modelled (its passes would gather weights out of order)");
        if (buckets_given)
          problems.add_at(w->key_path("gradient_sync_buckets"),
                          "not used with parameter_sharding: each layer's gradients are reduce-scattered after its backward");
        f.optimizer_sharding = true;
      }
    }
    if (auto v = w->get<std::int64_t>("shard_group", count_at_least(1), false)) {
      // Hybrid sharding (ForwardSpec::shard_group): whole EP groups of a stage in each group.
      f.shard_group = as_int(*v);
      const auto bad = [&](const std::string& why) { problems.add_at(w->key_path("shard_group"), why); };
      const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node, stage = gpus / std::max(1, f.pp);
      const int block = std::max(1, f.ep) * std::max(1, f.etp);
      if (!f.optimizer_sharding)
        bad("only used with optimizer_sharding or parameter_sharding: it groups the GPUs that share a sharded copy");
      else if (f.pipeline_schedule == models::PipelineSchedule::dualpipe)
        bad("with pipeline_schedule: dualpipe is not modelled (two stages share the shards)");
      else if (stage % f.shard_group != 0 || f.shard_group % block != 0)
        bad(fmt::format("{} GPUs: a group must divide the {} GPUs of {} and hold whole blocks of ep x etp = {} GPUs "
                        "(a multiple of {})",
                        f.shard_group, stage, f.pp > 1 ? "a pipeline stage" : "the cluster", block, block));
      else if (f.shard_group % std::max(1, f.model.tp) != 0)
        bad(fmt::format("{} GPUs: a group must hold whole tensor-parallel groups (a multiple of tp = {})", f.shard_group, f.model.tp));
    }
    w->finish();
  }
  if (auto r = top.child("routing", false)) {
    using routing::Distribution;
    auto& rt = f.routing;
    if (auto v = r->get<std::string>("distribution",
                                     one_of({"uniform", "zipf", "hot_experts", "lognormal", "hot_ranks", "trace"}), false))
      rt.distribution = *v == "zipf"          ? Distribution::zipf
                        : *v == "hot_experts" ? Distribution::hot_experts
                        : *v == "lognormal"   ? Distribution::lognormal
                        : *v == "hot_ranks"   ? Distribution::hot_ranks
                        : *v == "trace"       ? Distribution::trace
                                              : Distribution::uniform;
    const auto is = [&](Distribution d) { return rt.distribution == d; };
    // A key that belongs to some distributions: reported when used with another, and when one of
    // them needs it and it is missing.
    const auto param = [&](std::string_view key, bool used, bool required, std::string_view owner,
                           std::string_view what, auto&& parse) {
      auto v = r->get<typename std::invoke_result_t<decltype(parse), const std::string&>>(key, parse, false);
      if (v && !used) problems.add_at(r->key_path(key), fmt::format("only used with 'distribution: {}'", owner));
      if (!v && used && required && r->valid())
        problems.add_at(r->key_path("distribution"), fmt::format("{} needs routing.{} ({})", owner, key, what));
      return v;
    };
    const auto positive = positive_number();
    const auto probability = [](const std::string& t) {
      const double v = sim::parse_number(t);
      if (!(v >= 0 && v <= 1)) throw UnitError(fmt::format("must be in [0, 1], got {}", t));
      return v;
    };
    const bool hot = is(Distribution::hot_experts) || is(Distribution::hot_ranks);
    if (auto v = param("zipf_s", is(Distribution::zipf), true, "zipf", "the exponent, e.g. 1.2",
                       positive))
      rt.zipf_s = *v;
    if (auto v = param("hot_experts", is(Distribution::hot_experts), true, "hot_experts",
                       "how many experts are hot", count_at_least(1)))
      rt.hot_experts = as_int(*v);
    if (auto v = param("hot_ranks", is(Distribution::hot_ranks), true, "hot_ranks",
                       "how many EP ranks' experts are hot", count_at_least(1)))
      rt.hot_ranks = as_int(*v);
    if (auto v = param("hot_fraction", hot, true,
                       is(Distribution::hot_ranks) ? "hot_ranks" : "hot_experts",
                       "their share of the routing, e.g. 0.5", fraction()))
      rt.hot_fraction = *v;
    if (auto v = param("sigma", is(Distribution::lognormal), true, "lognormal",
                       "the standard deviation of log expert weight, e.g. 0.8",
                       positive))
      rt.lognormal_sigma = *v;
    if (auto v = param("trace", is(Distribution::trace), true, "trace",
                       "a count-level or token-level trace file", any_text()))
      sc.routing_trace = *v;
    if (auto v = r->get<std::int64_t>("step", count_at_least(0), false)) rt.step = as_int(*v);
    if (auto v = r->get<std::int64_t>("rotate", count_at_least(0), false)) rt.rotate = as_int(*v);
    if (auto v = r->get<double>("dirichlet_concentration", positive, false)) rt.dirichlet_concentration = *v;
    const auto bp = r->get<double>("burst_probability", probability, false);
    const auto bf = r->get<double>("burst_fraction", fraction(), false);
    if (bp.has_value() != bf.has_value())
      problems.add_at(r->key_path(bp ? "burst_probability" : "burst_fraction"),
                      "bursts need both routing.burst_probability and routing.burst_fraction");
    if (bp && bf) {
      rt.burst_probability = *bp;
      rt.burst_fraction = *bf;
    }
    if (auto v = r->get<double>("layer_correlation", probability, false)) {
      rt.layer_correlation = *v;
      if (is(Distribution::trace))
        problems.add_at(r->key_path("layer_correlation"), "not used with 'distribution: trace' (a trace fixes each layer's routing)");
    }
    const auto groups = r->get<std::int64_t>("groups", count_at_least(1), false);
    const auto max_groups = r->get<std::int64_t>("max_groups", count_at_least(1), false);
    if (groups) rt.groups = as_int(*groups);
    if (max_groups) {
      rt.max_groups = as_int(*max_groups);
      if (!groups) problems.add_at(r->key_path("max_groups"), "needs routing.groups (how many expert groups there are)");
      if (is(Distribution::trace))
        problems.add_at(r->key_path("max_groups"), "not used with 'distribution: trace' (a trace fixes each layer's routing)");
    } else if (groups) {
      problems.add_at(r->key_path("groups"), "only used with routing.max_groups");
    }
    if (groups && *groups > 64) problems.add_at(r->key_path("groups"), fmt::format("at most 64 groups, got {}", *groups));
    if (auto v = r->get<std::string>("group_choice", one_of({"draw", "best_expert", "best_two"}), false)) {
      rt.group_choice = *v == "best_expert" ? routing::GroupChoice::best_expert
                        : *v == "best_two"  ? routing::GroupChoice::best_two
                                            : routing::GroupChoice::draw;
      if (!max_groups) problems.add_at(r->key_path("group_choice"), "only used with routing.max_groups");
      if (rt.group_choice != routing::GroupChoice::draw && rt.layer_correlation > 0)
        problems.add_at(r->key_path("group_choice"), "only 'draw' is used with routing.layer_correlation");
    }
    if (auto v = r->get<std::string>("capacity_factor", [](const std::string& t) {
          if (t == "dropless") return t;
          const double c = sim::parse_number(t);  // throws "expected a number like '1.25'"
          if (!(c > 0)) throw UnitError(fmt::format("must be greater than 0 (or 'dropless'), got {}", t));
          return t;
        }, false)) {
      if (*v == "dropless") rt.capacity_factor.reset();
      else rt.capacity_factor = sim::parse_number(*v);
    }
    if (auto v = r->get<std::string>("drop_policy", one_of({"position", "gate", "pad"}), false)) {
      rt.drop_policy = *v == "gate" ? routing::DropPolicy::gate : *v == "pad" ? routing::DropPolicy::pad
                                                                              : routing::DropPolicy::position;
      if (!rt.capacity_factor)
        problems.add_at(r->key_path("drop_policy"), "needs a routing.capacity_factor (dropless routing drops nothing)");
    }
    r->finish();
  }
  if (auto p = top.child("placement", false)) {
    auto& pl = sc.forward.placement;
    if (auto v = p->get<std::string>("policy", one_of({"contiguous", "round_robin", "greedy", "eplb"}), false))
      pl.policy = *v == "eplb"          ? routing::PlacementPolicy::eplb
                  : *v == "greedy"      ? routing::PlacementPolicy::greedy
                  : *v == "round_robin" ? routing::PlacementPolicy::round_robin
                                        : routing::PlacementPolicy::contiguous;
    if (auto v = p->get<std::int64_t>("redundant_experts", count_at_least(0), false)) {
      pl.redundant_experts = as_int(*v);
      if (pl.redundant_experts > 0 && pl.policy != routing::PlacementPolicy::eplb)
        problems.add_at(p->key_path("redundant_experts"), "only used with 'policy: eplb'");
    }
    if (auto v = p->get<std::string>("load", one_of({"expected", "trace", "observed"}), false)) {
      sc.placement_load = *v;
      if (*v != "expected" && pl.policy != routing::PlacementPolicy::eplb && pl.policy != routing::PlacementPolicy::greedy)
        problems.add_at(p->key_path("load"), "only used with 'policy: greedy' or 'policy: eplb'");
    }
    if (auto v = p->get<std::string>("trace", any_text(), false)) {
      sc.placement_trace = *v;
      if (sc.placement_load != "trace") problems.add_at(p->key_path("trace"), "only used with 'load: trace'");
    } else if (sc.placement_load == "trace" && p->valid()) {
      problems.add_at(p->key_path("load"), "'load: trace' needs placement.trace (a count-level trace file)");
    }
    if (auto v = p->get<std::pair<int, int>>("trace_steps", [](const std::string& t) {
          // "5" or "0-9": an inclusive range of steps.
          const auto dash = t.find('-', 1);
          const auto first = sim::parse_count(t.substr(0, dash));
          const auto last = dash == std::string::npos ? first : sim::parse_count(t.substr(dash + 1));
          if (first < 0 || last < first) throw UnitError(fmt::format("expected a step or a range like '0-9', got '{}'", t));
          return std::pair<int, int>(as_int(first), as_int(last));
        }, false)) {
      sc.placement_trace_steps = *v;
      if (sc.placement_load != "trace") problems.add_at(p->key_path("trace_steps"), "only used with 'load: trace'");
    }
    if (auto v = p->get<std::int64_t>("refresh_every", count_at_least(1), false)) {
      sc.refresh_every = as_int(*v);
      if (pl.policy != routing::PlacementPolicy::eplb && pl.policy != routing::PlacementPolicy::greedy)
        problems.add_at(p->key_path("refresh_every"), "only used with 'policy: greedy' or 'policy: eplb'");
    }
    if (auto v = p->get<std::int64_t>("history", count_at_least(1), false)) {
      sc.forward.placement_history = as_int(*v);
      if (sc.placement_load != "observed") problems.add_at(p->key_path("history"), "only used with 'load: observed'");
    } else if (sc.placement_load == "observed") {
      sc.forward.placement_history = 1;
    }
    if (auto v = p->get<std::string>("replica_choice", one_of({"round_robin", "least_loaded"}), false)) {
      pl.replica_choice = *v == "least_loaded" ? routing::ReplicaChoice::least_loaded : routing::ReplicaChoice::round_robin;
      if (pl.policy != routing::PlacementPolicy::eplb)
        problems.add_at(p->key_path("replica_choice"), "only used with 'policy: eplb' (the only policy with replicas)");
    }
    if (auto v = p->get<std::string>("replica_locality", one_of({"node", "none"}), false)) {
      pl.replica_locality = *v == "node";
      if (pl.policy != routing::PlacementPolicy::eplb)
        problems.add_at(p->key_path("replica_locality"), "only used with 'policy: eplb' (the only policy with replicas)");
    }
    if (auto v = p->get<std::int64_t>("expert_groups", count_at_least(1), false)) {
      pl.expert_groups = as_int(*v);
      if (pl.policy != routing::PlacementPolicy::eplb)
        problems.add_at(p->key_path("expert_groups"), "only used with 'policy: eplb'");
    }
    p->finish();
  }
  if (auto n = top.child("network", false)) {
    if (auto v = n->get<std::string>("model", one_of({"maxmin", "analytical"}), false)) sc.network_model = *v;
    // Not an error with the analytical model (which has no rates to re-solve), so that a scenario
    // that sets it can still be run with --set network.model=analytical.
    if (auto v = n->get<sim::Time>("resolve_interval", time_value(), false)) sc.resolve_interval = *v;
    auto& comm = sc.forward.all_to_all;
    if (auto v = n->get<std::string>("all_to_all", one_of({"direct", "hierarchical", "low_latency"}), false))
      comm.algorithm = *v == "hierarchical"  ? models::AllToAllAlgorithm::hierarchical
                       : *v == "low_latency" ? models::AllToAllAlgorithm::low_latency
                                             : models::AllToAllAlgorithm::direct;
    if (auto v = n->get<std::string>("tp_collectives", one_of({"ring", "nvls"}), false)) {
      sc.forward.tp_algorithm = *v == "nvls" ? models::CollectiveAlgorithm::nvls : models::CollectiveAlgorithm::ring;
      if (sc.forward.model.tp == 1) problems.add_at(n->key_path("tp_collectives"), "only used with parallelism.tp > 1");
      if (*v == "nvls")
        if (const std::string why = nvls_unavailable(sc.cluster); !why.empty())
          problems.add_at(n->key_path("tp_collectives"), why + "; use ring");
    }
    if (auto v = n->get<double>("nvls_efficiency", fraction(), false)) {
      sc.forward.nvls_efficiency = *v;
      if (sc.forward.gradient_sync_algorithm != models::CollectiveAlgorithm::nvls &&
          sc.forward.tp_algorithm != models::CollectiveAlgorithm::nvls)
        problems.add_at(n->key_path("nvls_efficiency"), "only used with 'workload.gradient_sync: nvls' or 'tp_collectives: nvls'");
    }
    if (auto v = n->get<sim::Time>("message_overhead", time_value(), false)) {
      comm.message_overhead = *v;
      if (comm.algorithm != models::AllToAllAlgorithm::low_latency)
        problems.add_at(n->key_path("message_overhead"), "only used with 'all_to_all: low_latency'");
    }
    if (auto v = n->get<std::int64_t>("forward_chunks", count_at_least(1), false)) {
      if (*v > 64) problems.add_at(n->key_path("forward_chunks"), fmt::format("must be at most 64, got {}", *v));
      else comm.forward_chunks = static_cast<std::uint32_t>(*v);
      if (comm.algorithm != models::AllToAllAlgorithm::hierarchical)
        problems.add_at(n->key_path("forward_chunks"), "only used with 'all_to_all: hierarchical'");
    }
    if (auto v = n->get<std::string>("dispatch_dtype", one_of({"bf16", "fp16", "fp8", "fp32"}), false))
      comm.dispatch_row_bytes = models::row_bytes(f.model.hidden, dtype_bytes(*v));
    if (auto v = n->get<std::string>("combine_dtype", one_of({"bf16", "fp16", "fp8", "fp32"}), false))
      comm.combine_row_bytes = models::row_bytes(f.model.hidden, dtype_bytes(*v));
    if (auto v = n->get<std::string>("gradient_dispatch_dtype", one_of({"bf16", "fp16", "fp8", "fp32"}), false)) {
      comm.gradient_dispatch_row_bytes = models::row_bytes(f.model.hidden, dtype_bytes(*v));
      if (!f.training)
        problems.add_at(n->key_path("gradient_dispatch_dtype"),
                        "only used with 'workload.kind: training' (the backward pass's all-to-all to the experts)");
    }
    n->finish();
  }
  if (auto c = top.child("compute", false)) {
    if (auto v = c->get<std::string>("model", one_of({"auto", "roofline", "profile"}), false)) sc.compute_model = *v;
    if (auto v = c->get<std::string>("profile", any_text(), false)) {
      sc.compute_profile = *v;
      if (sc.compute_model == "roofline") problems.add_at(c->key_path("profile"), "not used with 'model: roofline'");
    }
    if (auto v = c->get<double>("flops_efficiency", fraction(), false)) sc.roofline.flops_efficiency = *v;
    if (auto v = c->get<double>("memory_efficiency", fraction(), false)) sc.roofline.memory_efficiency = *v;
    if (auto v = c->get<double>("attention_efficiency", fraction(), false)) sc.roofline.attention_efficiency = *v;
    if (auto v = c->get<sim::Time>("kernel_overhead", time_value(), false)) sc.roofline.kernel_overhead = *v;
    if (auto v = c->get<std::string>("elementwise_kernels", one_of({"true", "false"}), false))
      sc.roofline.elementwise_kernels = *v == "true";
    if (auto v = c->get<std::string>("gemm_dtype", one_of({"bf16", "fp8", "fp4"}), false)) {
      using models::GemmDtype;
      sc.roofline.gemm_dtype = *v == "fp8" ? GemmDtype::fp8 : *v == "fp4" ? GemmDtype::fp4 : GemmDtype::bf16;
      // The measured profile's GEMMs are BF16; FP8 and FP4 GEMMs come from the roofline.
      if (sc.roofline.gemm_dtype != GemmDtype::bf16) {
        const bool fp4 = sc.roofline.gemm_dtype == GemmDtype::fp4;
        if ((fp4 ? sc.cluster.gpu.peak_fp4 : sc.cluster.gpu.peak_fp8).flop_per_s() == 0)
          problems.add_at(c->key_path("gemm_dtype"), fmt::format("the {} has no {} tensor cores (set cluster.gpu.peak_{} for a custom GPU)",
                                                                  sc.cluster.gpu.name, fp4 ? "FP4" : "FP8", *v));
        if (sc.compute_model == "profile")
          problems.add_at(c->key_path("gemm_dtype"), fmt::format("{} is not used with 'model: profile' (the measured profile's GEMMs are "
                                                                 "BF16): use 'model: auto' or 'roofline'", *v));
        if (!sc.compute_profile.empty())
          problems.add_at(c->key_path("gemm_dtype"), fmt::format("{} is not used with compute.profile (the measured profile's GEMMs are BF16)", *v));
      }
    }
    const auto positive = positive_number();
    if (auto speeds = read_gpu_factors(*c, "gpu_speed", sc.cluster.nodes * sc.cluster.gpus_per_node, problems); !speeds.empty())
      f.gpu_speed = std::move(speeds);
    const auto sp = c->get<double>("straggler_probability", fraction(), false);
    const auto ss = c->get<double>("straggler_speed", positive, false);
    if (sp.has_value() != ss.has_value())
      problems.add_at(c->key_path(sp ? "straggler_probability" : "straggler_speed"),
                      "stragglers need both compute.straggler_probability and compute.straggler_speed");
    if (sp && ss) {
      f.straggler_probability = *sp;
      f.straggler_speed = *ss;
    }
    if (auto v = c->get<double>("jitter", positive, false)) f.jitter = *v;
    c->finish();
  }
  if (auto rel = top.child("reliability", false)) {
    // Failures and checkpoints over a long training run (models/reliability.hpp).
    auto& r = sc.reliability;
    if (auto v = rel->get<double>("gpu_mtbf_hours", positive_number(), true)) r.gpu_mtbf_hours = *v;
    if (auto v = rel->get<sim::Time>("restart", time_value(), true)) r.restart_s = v->to_seconds();
    if (auto v = rel->get<std::string>("checkpoint", one_of({"sync", "async"}), false)) r.async = *v == "async";
    const auto rate = rel->get<sim::Bandwidth>("checkpoint_bandwidth", positive_bandwidth(), false);
    const auto stall = rel->get<sim::Time>("checkpoint_time", time_value(), false);
    if (r.async) {
      // Written behind the steps: the storage's rate is needed; the stall is the copy to host
      // memory over the GPU's PCIe link unless given.
      r.host_bytes_per_s = static_cast<double>(sc.cluster.node.pcie_bandwidth.bytes_per_s());
      if (!rate && rel->valid())
        problems.add_at(rel->path(), "missing checkpoint_bandwidth (the storage's aggregate write rate, e.g. 2TB/s): "
                                     "'checkpoint: async' writes behind the steps at it");
    } else if (rate && stall) {
      problems.add_at(rel->key_path("checkpoint_time"), "give checkpoint_bandwidth or checkpoint_time, not both "
                                                        "(both only with 'checkpoint: async': the write's rate and the stall)");
    } else if (!rate && !stall && rel->valid()) {
      problems.add_at(rel->path(), "missing checkpoint_bandwidth (the storage's aggregate write rate, e.g. 2TB/s) or "
                                   "checkpoint_time (the stall one checkpoint causes, e.g. 30s)");
    }
    if (rate) r.checkpoint_bytes_per_s = static_cast<double>(rate->bytes_per_s());
    if (stall) r.checkpoint_s = stall->to_seconds();
    if (stall && *stall == sim::Time::zero())
      problems.add_at(rel->key_path("checkpoint_time"), "must be greater than 0");
    if (auto v = rel->get<std::int64_t>("checkpoint_every_steps", count_at_least(1), false)) r.checkpoint_every_steps = as_int(*v);
    const auto spares = rel->get<std::int64_t>("spare_nodes", count_at_least(0), false);
    const auto repair = rel->get<sim::Time>("repair_time", time_value(), false);
    if (spares) r.spare_nodes = as_int(*spares);
    if (repair) r.repair_s = repair->to_seconds();
    if (spares && !repair)
      problems.add_at(rel->key_path("spare_nodes"), "needs repair_time (how long a failed node is out, e.g. 24h)");
    if (repair && !spares)
      problems.add_at(rel->key_path("repair_time"), "only used with spare_nodes (0: no spares, each failure waits for its repair)");
    if (repair && *repair == sim::Time::zero()) problems.add_at(rel->key_path("repair_time"), "must be greater than 0");
    rel->finish();
  }
  if (auto o = top.child("output", false)) {
    if (auto v = o->get<std::string>("dir", any_text(), false)) sc.output_dir = *v;
    if (auto v = o->get<std::string>("timeline", one_of({"auto", "on", "off"}), false)) sc.timeline = *v;
    o->finish();
  }
}

// Relations between keys, checked once every key parsed.
void cross_check(const Scenario& sc, Problems& problems) {
  const auto& m = sc.forward.model;
  if (sc.train_tokens > 0 && !sc.forward.training)
    problems.add_at("workload.train_tokens", "only used with 'workload.kind: training' (the tokens a training run is to see)");
  if (sc.reliability.enabled() && !sc.forward.training)
    problems.add_at("reliability", "only used with 'workload.kind: training' (failures and checkpoints over a training run)");
  if (m.top_k > m.experts)
    problems.add_at("model.top_k", fmt::format("top_k {} is larger than experts {}", m.top_k, m.experts));
  if (sc.forward.routing.distribution == routing::Distribution::hot_experts && sc.forward.routing.hot_experts >= m.experts)
    problems.add_at("routing.hot_experts", fmt::format("hot_experts {} must be fewer than the {} experts",
                                                       sc.forward.routing.hot_experts, m.experts));
  if (m.head_dim <= 0)
    problems.add_at("model.attention_heads",
                    fmt::format("hidden {} does not divide into {} heads; set model.head_dim",
                                m.hidden, m.attention_heads));
  // Which key set the weights apart from model.dtype (model.weight_dtype first).
  const std::string weight_key = m.weight_bytes32 != 32 * m.dtype_bytes ? "model.weight_dtype" : "model.expert_weight_dtype";
  if (sc.forward.training && !routing::weights_at_dtype(m))
    problems.add_at(weight_key, "only used in inference (forward, prefill, decode): training keeps its weights in "
                                "model.dtype (FP8 training's GEMMs: compute.gemm_dtype: fp8)");
  // The measured profile's layers read BF16 weights: other weights come from the roofline.
  if (!routing::weights_at_dtype(m) && (sc.compute_model == "profile" || !sc.compute_profile.empty()))
    problems.add_at(weight_key, fmt::format("weights in another dtype than model.dtype take the roofline, not {} (the "
                                            "measured profile's kernels read BF16 weights): use compute.model: auto or roofline",
                                            sc.compute_profile.empty() ? "compute.model: profile" : "compute.profile"));
  if (sc.forward.training && sc.roofline.gemm_dtype == models::GemmDtype::fp4)
    problems.add_at("compute.gemm_dtype", "fp4 is modelled for inference (forward, prefill, decode); FP8 training: fp8");
  if (sc.forward.fp8_param_gather) {
    if (!(sc.forward.training && sc.forward.gradient_sync && sc.forward.optimizer_sharding))
      problems.add_at("workload.param_gather_dtype", "only used with a sharded optimizer or sharded weights (training with a gradient_sync "
                                                     "and optimizer_sharding or parameter_sharding), whose weights are all-gathered");
    else if (sc.roofline.gemm_dtype != models::GemmDtype::fp8)
      problems.add_at("workload.param_gather_dtype", "fp8 gathers the weights the FP8 GEMMs read: set compute.gemm_dtype: fp8");
  }
  if (sc.forward.activations_fp8 && sc.roofline.gemm_dtype != models::GemmDtype::fp8)
    problems.add_at("workload.activation_dtype", "fp8 keeps the FP8 GEMMs' inputs for their backward: set compute.gemm_dtype: fp8");
  if (sc.forward.activations_fp8 && m.dtype_bytes != 2)
    problems.add_at("workload.activation_dtype", "fp8 is modelled for a bf16 or fp16 model.dtype (the tensors it leaves at 2 bytes)");
  if (sc.forward.recompute_mla_up_proj && !routing::is_mla(m))
    problems.add_at("workload.recompute_modules", "mla_up_proj recomputes multi-head latent attention's up projections: set model.mla");
  if (sc.forward.recompute_mla_up_proj && routing::is_sparse_mla(m))
    problems.add_at("workload.recompute_modules", "mla_up_proj: not modelled with sparse attention (model.mla.index_topk), whose sparse "
                                                  "mode runs MLA absorbed and keeps no up-projected keys and values");
  if (sc.workload_kind != "decode" && sc.workload_kind != "prefill" && m.kv_cache_bytes != m.dtype_bytes)
    problems.add_at("model.kv_cache_dtype", "only used in prefill and decode (workload.kind), whose steps write, read and hold the KV cache");
  if (m.kv_heads > m.attention_heads)
    problems.add_at("model.kv_heads", fmt::format("kv_heads {} is more than attention_heads {}",
                                                  m.kv_heads, m.attention_heads));
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const int ep = sc.forward.ep;
  const auto& pl = sc.forward.placement;
  // Redundant experts can fill the slots up to a multiple of the EP size (EP72 on a GB200 NVL72
  // rack for DeepSeek-V3's 256 experts: 32 more, 4 slots per GPU).
  if (pl.redundant_experts == 0 && m.experts % ep != 0)
    problems.add_at("parallelism.ep",
                    fmt::format("experts ({}) are not divisible by the EP size {} (or fill the slots with redundant experts: "
                                "placement: {{policy: eplb, redundant_experts: {}}} gives {} per GPU)",
                                m.experts, ep, ep - m.experts % ep, (m.experts + ep - 1) / ep));
  if (pl.redundant_experts > 0 && (m.experts + pl.redundant_experts) % ep != 0)
    problems.add_at("placement.redundant_experts",
                    fmt::format("experts + redundant experts ({} + {}) are not divisible by the EP size {}",
                                m.experts, pl.redundant_experts, ep));
  if (m.experts % pl.expert_groups != 0)
    problems.add_at("placement.expert_groups",
                    fmt::format("experts ({}) do not divide into {} groups", m.experts, pl.expert_groups));
  if (gpus % ep != 0)
    problems.add_at("parallelism.ep",
                    fmt::format("the cluster's {} GPUs do not divide into EP groups of {}", gpus, ep));
  if (const int etp = sc.forward.etp; etp > 1) {
    // Expert tensor parallelism: each expert's FFN split over etp GPUs of a node; blocks of
    // ep x etp GPUs, each holding the experts once.
    const auto refuse = [&](const std::string& why) { problems.add_at("parallelism.etp", why); };
    if (sc.cluster.gpus_per_node % etp != 0)
      refuse(fmt::format("{} does not divide the {} GPUs of a node: an expert tensor-parallel group stays inside a node", etp,
                         sc.cluster.gpus_per_node));
    else if ((gpus / sc.forward.pp) % (ep * etp) != 0)
      refuse(fmt::format("the {} GPUs{} do not divide into blocks of ep x etp = {} x {} (each block holds every expert once)",
                         gpus / sc.forward.pp, sc.forward.pp > 1 ? " of a pipeline stage" : "", ep, etp));
    if (m.expert_ffn % etp != 0)
      refuse(fmt::format("{} does not divide model.expert_ffn ({}): each GPU holds whole columns of every expert", etp,
                         m.expert_ffn));
  }
  if (const int tp = m.tp; tp > 1) {
    // Tensor parallelism: whole heads, FFN columns and tokens per GPU, inside a node.
    const auto refuse = [&](const std::string& why) { problems.add_at("parallelism.tp", why); };
    if (sc.cluster.gpus_per_node % tp != 0)
      refuse(fmt::format("{} does not divide the {} GPUs of a node: a tensor-parallel group stays inside a node", tp,
                         sc.cluster.gpus_per_node));
    else if ((gpus / sc.forward.pp) % tp != 0)
      refuse(fmt::format("{} does not divide the {} GPUs of a pipeline stage", tp, gpus / sc.forward.pp));
    if (m.attention_heads % tp != 0)
      refuse(fmt::format("{} does not divide model.attention_heads ({}): each GPU holds whole heads", tp, m.attention_heads));
    if (m.kv_heads % tp != 0 && tp % m.kv_heads != 0)
      refuse(fmt::format("{} and model.kv_heads ({}) must divide one another (kv heads split, or each replicated on tp / "
                         "kv_heads GPUs)",
                         tp, m.kv_heads));
    if (routing::has_linear_attention(m) && m.linear.key_heads % tp != 0)
      refuse(fmt::format("{} does not divide model.linear_attention.key_heads ({}): each GPU holds whole heads of the linear layers",
                         tp, m.linear.key_heads));
    if (m.dense_layers > 0 && m.dense_ffn % tp != 0)
      refuse(fmt::format("{} does not divide model.dense_ffn ({})", tp, m.dense_ffn));
    if (m.shared_experts > 0 && !m.shared_replicated && m.expert_ffn % tp != 0)
      refuse(fmt::format("{} does not divide model.expert_ffn ({}), the shared experts' width it splits (or hold them whole on "
                         "every GPU: parallelism.shared_experts: replicated)",
                         tp, m.expert_ffn));
  }
  if (const int cp = sc.forward.cp; cp > 1) {
    // Context parallelism: each sequence spread evenly over the cp GPUs of a group, whole tokens.
    const auto refuse = [&](const std::string& why) { problems.add_at("parallelism.cp", why); };
    const auto& f = sc.forward;
    if (sc.workload_kind == "decode")
      refuse("not used with 'kind: decode' (a decode step's sequences each read their own KV cache); context parallelism splits "
             "a training sequence or a prompt");
    else if (routing::has_linear_attention(m))
      refuse("not modelled with model.linear_attention: a linear layer's chunks pass their state along the sequence, which "
             "moesim's context-parallel exchanges (keys and values) do not describe");
    else if (f.sequence_length % cp != 0)
      refuse(fmt::format("{} does not divide workload.sequence_length ({}): each GPU holds sequence_length / cp tokens of a sequence",
                         cp, f.sequence_length));
    else if (m.tp * f.tokens_per_gpu % (f.sequence_length / cp) != 0)
      refuse(fmt::format("workload.tokens_per_gpu ({}){} is not a whole number of sequences' shares (sequence_length / cp = {} "
                         "tokens each)",
                         f.tokens_per_gpu, m.tp > 1 ? fmt::format(" x tp ({}), the tokens of a tensor-parallel group,", m.tp) : "",
                         f.sequence_length / cp));
    if ((gpus / f.pp) % (m.tp * cp) != 0)
      refuse(fmt::format("tp x cp ({} x {}) does not divide the {} GPUs of a pipeline stage", m.tp, cp, gpus / f.pp));
    if (f.cached_prefix > 0) refuse("not modelled with workload.cached_prefix (a prefix cache split over the GPUs of a prompt)");
    if (routing::is_sparse_mla(m)) refuse("not modelled with sparse attention (model.mla.index_topk)");
    if (f.cp_latent && !routing::is_mla(m))
      problems.add_at("parallelism.cp_gather", "latent gathers multi-head latent attention's kv latent: set model.mla");
  }
  if (sc.forward.pp == 1 && !sc.forward.pipeline_layers.empty())
    problems.add_at("parallelism.pipeline_layers", "only used with parallelism.pp > 1");
  if (sc.forward.pp == 1 && sc.forward.virtual_stages > 1)
    problems.add_at("parallelism.virtual_stages", "only used with parallelism.pp > 1");
  if (const int pp = sc.forward.pp; pp > 1) {
    if (gpus % pp != 0 || (gpus / pp) % ep != 0)
      problems.add_at("parallelism.pp", fmt::format("the cluster's {} GPUs do not divide into {} pipeline stages of whole EP "
                                                    "groups of {}",
                                                    gpus, pp, ep));
    const int v = sc.forward.virtual_stages, chunks = pp * v;
    const auto& split = sc.forward.pipeline_layers;
    if (split.empty() && m.moe_layers < chunks)
      problems.add_at(v > 1 ? "parallelism.virtual_stages" : "parallelism.pp",
                      v > 1 ? fmt::format("{} MoE layers for {} model chunks ({} stages x {}): every chunk needs at least one",
                                          m.moe_layers, chunks, pp, v)
                            : fmt::format("{} MoE layers for {} pipeline stages: every stage needs at least one", m.moe_layers, pp));
    if (!split.empty() && split.size() != static_cast<std::size_t>(chunks))
      problems.add_at("parallelism.pipeline_layers",
                      v > 1 ? fmt::format("{} layer counts for {} model chunks (parallelism.pp x virtual_stages: {} x {})",
                                          split.size(), chunks, pp, v)
                            : fmt::format("{} stages' layer counts for {} pipeline stages (parallelism.pp)", split.size(), pp));
    else if (const int sum = std::accumulate(split.begin(), split.end(), 0); !split.empty() && sum != m.moe_layers)
      problems.add_at("parallelism.pipeline_layers",
                      fmt::format("the {} layer counts add up to {}, but the model has {} MoE layers{}", v > 1 ? "chunks'" : "stages'",
                                  sum, m.moe_layers,
                                  m.mtp_layers > 0 ? fmt::format(" ({} and {} MTP, the last chunk's last)", m.moe_layers - m.mtp_layers,
                                                                 m.mtp_layers)
                                                   : ""));
    const bool dualpipev = sc.forward.training && sc.forward.pipeline_schedule == models::PipelineSchedule::dualpipev;
    const bool dualpipe = sc.forward.training && sc.forward.pipeline_schedule == models::PipelineSchedule::dualpipe;
    // Where the micro-batches came from a global batch, the problem is the global batch's.
    const std::string mb_key = sc.global_batch > 0 ? "workload.global_batch" : "workload.micro_batches";
    const std::string mb_from =
        sc.global_batch > 0 ? fmt::format(" (the global batch of {} sequences)", sc.global_batch) : std::string();
    if (dualpipe) {
      // DualPipe (DeepSeek-V3): half the micro-batches enter at each end; stage s holds chunks s
      // and pp - 1 - s, two copies of every chunk in all.
      if (pp % 2 != 0)
        problems.add_at("parallelism.pp", fmt::format("pipeline_schedule: dualpipe pairs stage s with stage pp - 1 - s: it needs an "
                                                      "even number of stages (got {})",
                                                      pp));
      if (v != 1)
        problems.add_at("parallelism.virtual_stages",
                        fmt::format("pipeline_schedule: dualpipe holds two chunks on each stage by itself (chunk s and pp - 1 - s, "
                                    "one per direction): leave virtual_stages at 1 (got {}); dualpipev is the one with "
                                    "virtual_stages: 2",
                                    v));
      if (sc.forward.micro_batches < 2 * pp || sc.forward.micro_batches % 2 != 0)
        problems.add_at(mb_key,
                        fmt::format("{} micro-batches{} for pipeline_schedule: dualpipe with {} stages: it needs an even number, at "
                                    "least 2 x parallelism.pp ({}), half entering at each end, as DualPipe does",
                                    sc.forward.micro_batches, mb_from, pp, 2 * pp));
      if (!sc.forward.gradient_sync)
        problems.add_at("workload.pipeline_schedule",
                        "dualpipe keeps two copies of every chunk's weights (stages s and pp - 1 - s hold the same two), whose "
                        "gradients are summed: set workload.gradient_sync");
    } else if (dualpipev) {
      // DualPipeV (deepseek-ai/DualPipe) runs each stage's two chunks as the arms of a V.
      if (v != 2)
        problems.add_at("parallelism.virtual_stages",
                        fmt::format("pipeline_schedule: dualpipev places two model chunks on each stage, chunk c on stage c and "
                                    "chunk 2 pp - 1 - c on stage c (a V): set virtual_stages: 2 (got {})",
                                    v));
      if (sc.forward.micro_batches < 2 * pp)
        problems.add_at(mb_key,
                        fmt::format("{} micro-batches{} for pipeline_schedule: dualpipev with {} stages: it needs at least "
                                    "2 x parallelism.pp ({}), as DualPipe does",
                                    sc.forward.micro_batches, mb_from, pp, 2 * pp));
    } else {
      if (v > 1 && sc.forward.micro_batches % pp != 0)
        problems.add_at(mb_key,
                        fmt::format("{} micro-batches{} with virtual_stages: the interleaved schedule runs them in groups of "
                                    "parallelism.pp ({}); use a multiple of it",
                                    sc.forward.micro_batches, mb_from, pp));
      if (v > 1 && sc.forward.pipeline_schedule != models::PipelineSchedule::one_f_one_b)
        problems.add_at("workload.pipeline_schedule",
                        fmt::format("{} with parallelism.virtual_stages > 1: the interleaved schedule is 1F1B's",
                                    models::to_string(sc.forward.pipeline_schedule)));
    }
    if (sc.forward.two_batch_overlap && sc.forward.training &&
        (sc.forward.pipeline_schedule == models::PipelineSchedule::zb_h1 || dualpipev || dualpipe))
      problems.add_at("workload.overlap", fmt::format("two_batch with pipeline_schedule: {} is not modelled (its weight passes are "
                                                      "not split in halves)",
                                                      models::to_string(sc.forward.pipeline_schedule)));
    if (sc.forward.forward_backward_overlap && v == 1 && !dualpipe)
      problems.add_at("workload.overlap",
                      "forward_backward with pipeline stages needs parallelism.virtual_stages > 1 (Megatron-LM requires it "
                      "too): without model chunks the last stage's backward needs the very forward it would run with");
  }
  // Every stage has as many gradient buckets: at most its fewest layers (over its model chunks),
  // checked once the layers divide into them.
  if (const auto& f = sc.forward; f.gradient_sync_buckets > 1) {
    const int pp = f.pp, chunks = pp * f.virtual_stages;
    const auto& split = f.pipeline_layers;
    if (split.empty() ? m.moe_layers >= chunks
                      : split.size() == static_cast<std::size_t>(chunks) &&
                            std::accumulate(split.begin(), split.end(), 0) == m.moe_layers) {
      int fewest = m.moe_layers;
      for (int st = 0; st < pp; ++st) fewest = std::min(fewest, static_cast<int>(models::stage_layers(f, st).size()));
      if (f.gradient_sync_buckets > fewest)
        problems.add_at("workload.gradient_sync_buckets",
                        pp > 1 ? fmt::format("{} buckets, but a pipeline stage has only {} MoE layers: at most one bucket per layer "
                                             "of the stage with the fewest",
                                             f.gradient_sync_buckets, fewest)
                               : fmt::format("{} buckets for {} MoE layers: at most one bucket per layer", f.gradient_sync_buckets,
                                             m.moe_layers));
    }
  }
  const int gpn = sc.cluster.gpus_per_node;
  // With expert tensor parallelism a node holds gpn / etp ranks of an EP group.
  if (const int rpn = std::max(1, gpn / sc.forward.etp); sc.forward.all_to_all.algorithm == models::AllToAllAlgorithm::hierarchical &&
                                                          gpn % sc.forward.etp == 0 && !(ep <= rpn ? rpn % ep == 0 : ep % rpn == 0))
    problems.add_at("network.all_to_all",
                    sc.forward.etp > 1
                        ? fmt::format("hierarchical needs EP groups of whole nodes or inside one node; EP {} with {} of its ranks "
                                      "per node ({} GPUs, etp {}) is neither", ep, rpn, gpn, sc.forward.etp)
                        : fmt::format("hierarchical needs EP groups of whole nodes or inside one node; EP {} with {} GPUs per node "
                                      "is neither", ep, gpn));
  if (sc.forward.all_to_all.forward_chunks > 1 && gpn > 255)
    problems.add_at("network.forward_chunks", fmt::format("needs at most 255 GPUs per node, got {}", gpn));
  const auto& rt = sc.forward.routing;
  if (rt.distribution == routing::Distribution::hot_ranks) {
    if (m.experts % ep != 0)
      problems.add_at("routing.distribution",
                      fmt::format("hot_ranks needs the experts ({}) to divide over the EP size {}", m.experts, ep));
    if (rt.hot_ranks >= ep)
      problems.add_at("routing.hot_ranks", fmt::format("hot_ranks {} must be fewer than the EP size {}", rt.hot_ranks, ep));
  }
  if (rt.max_groups > 0) {
    if (m.experts % rt.groups != 0)
      problems.add_at("routing.groups", fmt::format("experts ({}) do not divide into {} groups", m.experts, rt.groups));
    else if (rt.max_groups > rt.groups)
      problems.add_at("routing.max_groups", fmt::format("max_groups {} is more than the {} groups", rt.max_groups, rt.groups));
    else if (static_cast<std::int64_t>(rt.max_groups) * (m.experts / rt.groups) < m.top_k)
      problems.add_at("routing.max_groups",
                      fmt::format("{} groups of {} experts hold fewer than top_k = {} experts", rt.max_groups,
                                  m.experts / rt.groups, m.top_k));
  }
  if (sc.placement_load == "observed") {
    if (rt.distribution == routing::Distribution::trace)
      problems.add_at("placement.load", "'load: observed' routes earlier steps, which a trace does not have; use "
                                        "'load: trace' with placement.trace_steps");
    else if (rt.step < sc.forward.placement_history)
      problems.add_at("placement.history",
                      fmt::format("{} earlier step(s) need routing.step >= {} (it is {})", sc.forward.placement_history,
                                  sc.forward.placement_history, rt.step));
  }
}

std::string beside_scenario(const Scenario& sc, const std::string& file) {
  std::filesystem::path path(file);
  if (path.is_relative()) path = std::filesystem::path(sc.source).parent_path() / path;
  return path.string();
}

// For a trace that lacks layers: the MTP layers run as the model's last MoE layers.
std::string mtp_hint(const routing::MoeModelSpec& m) {
  if (m.mtp_layers == 0) return "";
  return fmt::format(" (the MTP module runs as MoE layer{} {}{}: the trace needs {} layers)", m.mtp_layers > 1 ? "s" : "",
                     m.moe_layers - m.mtp_layers, m.mtp_layers > 1 ? fmt::format(" to {}", m.moe_layers - 1) : "", m.moe_layers);
}

// Reads the traces the scenario names (relative to the scenario file's folder): placement.trace's
// counts become one load vector per MoE layer (the mean over placement.trace_steps), and
// routing.trace is loaded for replay. Every MoE layer must be in a trace.
void read_traces(Scenario& sc, Problems& problems) {
  const auto& m = sc.forward.model;
  if (!sc.compute_profile.empty()) {
    try {
      auto profile = std::make_shared<models::KernelProfile>(models::KernelProfile::read(beside_scenario(sc, sc.compute_profile)));
      if (profile->rows.empty()) problems.add_at("compute.profile", fmt::format("{} has no rows", profile->source));
      sc.forward.profile = std::move(profile);
    } catch (const models::ProfileError& e) {
      problems.add_at("compute.profile", e.what());
    }
  } else if (sc.compute_model != "roofline" && sc.roofline.gemm_dtype == models::GemmDtype::bf16 && routing::weights_at_dtype(m)) {
    // The profile measured on this GPU and built in (kernels/profiles/), where there is one.
    sc.forward.profile = models::KernelProfile::bundled(sc.cluster.gpu.name);
    if (!sc.forward.profile && sc.compute_model == "profile")
      problems.add_at("compute.model", fmt::format("no measured kernel profile is built in for GPU '{}' (H100-SXM has one): "
                                                   "give compute.profile (a kernels/profiles/<gpu>.csv file) or use 'model: roofline'",
                                                   sc.cluster.gpu.name));
  }
  if (sc.placement_load == "trace" && !sc.placement_trace.empty()) {
    const std::string path = beside_scenario(sc, sc.placement_trace);
    try {
      const auto trace = routing::read_count_trace(path, m.experts);
      if (!trace.stepped && sc.placement_trace_steps) {
        problems.add_at("placement.trace_steps", fmt::format("{} has no step column", path));
      } else if (trace.steps.empty()) {
        problems.add_at("placement.trace", fmt::format("{} has no counts", path));
      } else {
        const auto [first, last] = sc.placement_trace_steps.value_or(
            std::pair<int, int>(trace.steps.begin()->first, trace.steps.rbegin()->first));
        sc.forward.placement.layer_load = routing::mean_counts(trace, path, first, last, m.moe_layers);
      }
    } catch (const routing::TraceError& e) {
      problems.add_at("placement.trace", std::string(e.what()) + mtp_hint(m));
    }
  }
  auto& rt = sc.forward.routing;
  if (rt.distribution == routing::Distribution::trace && !sc.routing_trace.empty()) {
    auto trace = std::make_shared<routing::RoutingTrace>();
    trace->path = beside_scenario(sc, sc.routing_trace);
    try {
      if (routing::trace_kind(trace->path) == routing::TraceKind::tokens) {
        trace->layer_tokens = routing::read_token_trace(trace->path, m.experts, m.top_k, m.moe_layers, sc.forward.ep,
                                                        sc.forward.tokens_per_gpu);
        if (rt.dirichlet_concentration > 0 || rt.burst_probability > 0 || rt.rotate > 0)
          problems.add_at("routing.trace", "a token-level trace is replayed as is: dirichlet_concentration, bursts and "
                                           "rotate apply to laws and count-level traces only");
      } else {
        const auto counts = routing::read_count_trace(trace->path, m.experts);
        const int step = counts.stepped ? rt.step : 0;
        trace->layer_counts = routing::mean_counts(counts, trace->path, step, step, m.moe_layers);
        for (int l = 0; l < m.moe_layers; ++l) {
          const auto& c = trace->layer_counts[static_cast<std::size_t>(l)];
          const auto used = std::count_if(c.begin(), c.end(), [](double x) { return x > 0; });
          if (used < m.top_k)
            problems.add_at("routing.trace", fmt::format("{}: layer {} has tokens for {} expert(s); top_k = {} needs at least {}",
                                                         trace->path, l, used, m.top_k, m.top_k));
        }
      }
      rt.trace = std::move(trace);
    } catch (const routing::TraceError& e) {
      problems.add_at("routing.trace", std::string(e.what()) + mtp_hint(m));
    }
  }
}

// model.hf_config: the model's keys (and a group-limited router's) from its Hugging Face
// config.json, under those the scenario gives itself, which win. False where the file could not
// be read (reported): the model section is not read then.
bool apply_hf_config(const YAML::Node& root, Scenario& sc, Problems& problems) {
  YAML::Node model = root["model"];
  if (!model.IsDefined() || !model.IsMap()) return true;
  const YAML::Node file = model["hf_config"];
  if (!file.IsDefined()) return true;
  problems.remember("model.hf_config", file.Mark());
  if (!file.IsScalar() || file.Scalar().empty()) {
    problems.add(file.Mark(), "model.hf_config", fmt::format("expected the path of a model's config.json, got {}", kind_of(file)));
    return false;
  }
  const YAML::Node workload = root["workload"];
  const std::string kind = workload.IsDefined() && workload.IsMap() && workload["kind"].IsDefined() && workload["kind"].IsScalar() ? workload["kind"].Scalar() : sc.workload_kind;
  const std::string path = beside_scenario(sc, file.Scalar());
  HfModel hf;
  try {
    hf = read_hf_model(path, kind);
  } catch (const HfConfigError& e) {
    problems.add(file.Mark(), "model.hf_config", e.what());
    return false;
  }
  const auto origin = [&](const std::string& key_path) {
    for (const auto& [p, src] : hf.sources)
      if (p == key_path) return fmt::format("{}: {}", std::filesystem::path(path).filename().string(), src);
    return std::filesystem::path(path).filename().string();
  };
  // Copies the keys of `from` that `into` lacks (a nested section key by key; a section the
  // scenario sets to null stays out).
  std::function<void(YAML::Node, const YAML::Node&, const std::string&)> merge = [&](YAML::Node into, const YAML::Node& from,
                                                                                      const std::string& prefix) {
    for (const auto& kv : from) {
      const std::string key = kv.first.Scalar();
      const std::string key_path = prefix + "." + key;
      if (problems.is_removed(key_path)) continue;  // --set KEY=~: without the config's value
      const YAML::Node mine = into[key];
      if (kv.second.IsMap()) {
        if (mine.IsDefined() && mine.IsNull()) continue;  // the scenario's `~`: without the section
        if (!mine.IsDefined()) into[key] = YAML::Node(YAML::NodeType::Map);
        if (into[key].IsMap()) merge(into[key], kv.second, key_path);
      } else if (!mine.IsDefined()) {
        into[key] = kv.second;
        problems.derive(key_path, file.Mark(), origin(key_path));
      }
    }
  };
  model.remove("hf_config");
  merge(model, hf.model, "model");
  // Group limits are the router's: applied unless the routing section sets its own groups.
  if (hf.routing.IsMap()) {
    YAML::Node top = root;
    if (!top["routing"].IsDefined() || top["routing"].IsNull()) top["routing"] = YAML::Node(YAML::NodeType::Map);
    const YAML::Node routing = top["routing"];
    // A trace fixes the routing, group limits and all.
    const bool trace = routing.IsMap() && routing["distribution"].IsDefined() && routing["distribution"].IsScalar() &&
                       routing["distribution"].Scalar() == "trace";
    if (routing.IsMap() && !trace && !routing["groups"].IsDefined() && !routing["max_groups"].IsDefined())
      merge(routing, hf.routing, "routing");
  }
  sc.model_config = path;
  sc.model_type = hf.model_type;
  sc.model_notes = hf.notes;
  sc.model_max_positions = hf.max_positions;
  return true;
}

Scenario load(const YAML::Node& root, Problems& problems) {
  Scenario sc;
  sc.source = problems.file();
  if (!root.IsMap()) {
    problems.add(root.Mark(), "",
                 root.IsNull() ? "the file is empty; a scenario needs the sections cluster, model, "
                                 "parallelism and workload"
                               : fmt::format("expected a scenario (a mapping of sections such as "
                                             "'cluster:' and 'model:'), got {}",
                                             root.IsScalar() ? "a plain text" : kind_of(root)));
    return sc;
  }
  Section top(root, "", problems);
  if (auto v = top.get<std::string>("description", any_text(), false)) sc.description = *v;
  read_cluster(top, sc, problems);
  if (apply_hf_config(root, sc, problems))
    read_model(top, sc, problems);
  else
    top.find("model");
  read_rest(top, sc, problems);
  top.finish();
  // The MTP modules run as the model's last MoE layers in training, and the first of them drafts
  // in decode with draft tokens; otherwise the main model runs without them.
  auto& f = sc.forward;
  f.model.mtp_layers = sc.workload_kind == "training" ? f.model.mtp_modules : f.draft_tokens > 0 && f.model.mtp_modules > 0 ? 1 : 0;
  f.model.moe_layers += f.model.mtp_layers;
  f.tokens_per_gpu = f.decode_tokens() * (1 + f.draft_tokens) + f.prefill_chunk;  // the chunk's prompt tokens are not drafted
  if (!problems.any()) cross_check(sc, problems);
  if (!problems.any()) read_traces(sc, problems);
  return sc;
}

}  // namespace

ScenarioError::ScenarioError(std::vector<std::string> problems)
    : std::runtime_error(join_problems(problems)), problems_(std::move(problems)) {}

std::string in_switch_unavailable(const topology::ClusterSpec& cluster) { return nvls_unavailable(cluster); }

Scenario load_scenario_text(std::string_view yaml, const std::string& name, const std::vector<std::string>& overrides) {
  Problems problems(name);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    problems.add(e.mark, "", fmt::format("not valid YAML: {}", e.msg));
    throw ScenarioError(problems.list());
  }
  // --set key.path=value: replace (or add) the value at key.path, creating sections as needed;
  // a null value (~ or null) removes the key (e.g. a law's parameter when --set changes the law).
  std::vector<std::string> paths, removed;
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    const std::string path = eq == std::string::npos ? std::string() : o.substr(0, eq);
    if (path.empty() || path.front() == '.' || path.back() == '.' || path.find("..") != std::string::npos)
      throw ScenarioError({fmt::format("--set '{}': expected key.path=value, e.g. routing.zipf_s=1.2", o)});
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw ScenarioError({fmt::format("--set {}: not a valid value: {}", path, e.msg)});
    }
    if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
    std::vector<YAML::Node> chain{root};
    std::size_t start = 0;
    for (;;) {
      const auto dot = path.find('.', start);
      const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (dot == std::string::npos) {
        if (value.IsNull()) {
          chain.back().remove(key);
          removed.push_back(path);
        } else {
          chain.back()[key] = value;
          // A later value inside a removed section brings the section back (model=~ then
          // model.hf_config=FILE: the config's model).
          std::erase_if(removed, [&](const std::string& r) { return path == r || path.starts_with(r + "."); });
        }
        break;
      }
      YAML::Node next = chain.back()[key];
      if (!next.IsMap()) {
        chain.back()[key] = YAML::Node(YAML::NodeType::Map);
        next = chain.back()[key];
      }
      chain.push_back(next);
      start = dot + 1;
    }
    paths.push_back(path);
  }
  problems.overridden(paths);
  problems.removed(removed);
  Scenario sc = load(root, problems);
  if (problems.any()) throw ScenarioError(problems.list());
  return sc;
}

Scenario load_scenario_file(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ScenarioError({fmt::format("{}: cannot open the scenario file: {}", path, std::strerror(errno))});
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ScenarioError({fmt::format("{}: cannot read the scenario file", path)});
  const std::string s = text.str();
  if (s.find('\0') != std::string::npos)
    throw ScenarioError({fmt::format("{}:1:1: not a YAML text file (it contains NUL bytes)", path)});
  return load_scenario_text(s, path, overrides);
}

}  // namespace moesim::scenarios
