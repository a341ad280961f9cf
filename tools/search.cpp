#include "tools/search.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "topology/gpu_spec.hpp"

namespace moesim::tools {

namespace {

std::vector<std::string> texts(const std::vector<int>& v) {
  std::vector<std::string> out;
  for (const int x : v) out.push_back(std::to_string(x));
  return out;
}

}  // namespace

SearchSpace search_space(const scenarios::Scenario& sc, const std::vector<std::string>& vary, std::int64_t global_batch) {
  const auto& f = sc.forward;
  const int gpus = sc.cluster.nodes * sc.cluster.gpus_per_node;
  const bool training = f.training;
  // What applies to this scenario, and why not where it does not.
  const auto why_not = [&](const std::string& d) -> std::string {
    if ((d == "pp" || d == "vp") && !training) return "pipeline stages are searched in training only";
    if (d == "zero" && !training) return "the optimizer is training's";
    if (d == "zero" && !f.gradient_sync) return "a sharded optimizer needs workload.gradient_sync in the scenario";
    if (d == "cp" && !training && !f.prefill) return "context parallelism splits a training sequence or a prompt";
    if (d == "cp" && f.cp > 1) return fmt::format("the scenario has parallelism.cp: {}; search from one without it", f.cp);
    if (d == "sched" && !training) return "pipeline schedules are training's";
    if (d == "recompute" && !training) return "recomputation is training's";
    if (d == "shard" && !training) return "shard groups hold training's sharded state";
    if (d == "shard" && !f.gradient_sync) return "shard groups need workload.gradient_sync in the scenario";
    if (d == "shard" && sc.cluster.nodes < 2) return "one node: no group smaller than the cluster to shard over";
    if (d == "nodes" && !sc.cluster.scale_out.present)
      return "the scenario's cluster has no cluster.scale_out (NICs) to join more nodes: give it one";
    if ((d == "nic" || d == "fabric") && (!sc.cluster.scale_out.present || sc.cluster.nodes < 2))
      return "one node: no scale-out network to vary (search nodes to grow the cluster)";
    if (d == "sync" && !training) return "the gradient sync is training's";
    if (d == "sync" && !f.gradient_sync) return "the scenario has no workload.gradient_sync to vary: set one (ring, say)";
    if (d == "batch" && f.context_length == 0) return "the batch searched is decode's sequences per GPU (training holds its global batch)";
    if (d == "batch" && f.draft_tokens > 0) return "with draft tokens a GPU's tokens are its sequences times the draft: search from a scenario without";
    return {};
  };
  std::vector<std::string> dims;
  for (const auto& d : vary) {
    if (std::find(kSearchDimensions.begin(), kSearchDimensions.end(), d) == kSearchDimensions.end())
      throw SearchError(fmt::format("--vary: unknown dimension '{}' (known: {})", d, fmt::join(kSearchDimensions, ", ")));
    if (const std::string no = why_not(d); !no.empty()) throw SearchError(fmt::format("--vary {}: {}", d, no));
    if (std::find(dims.begin(), dims.end(), d) == dims.end()) dims.push_back(d);
  }
  if (vary.empty())
    for (const auto& d : kSearchDimensions)
      if ((d == "tp" || d == "pp" || d == "ep" || d == "vp" || d == "zero") && why_not(d).empty())
        dims.push_back(d);
  if (std::find(dims.begin(), dims.end(), "sched") != dims.end() && std::find(dims.begin(), dims.end(), "vp") != dims.end())
    throw SearchError("--vary: sched and vp together: each schedule comes with its own virtual stages (sched alone searches both)");
  if (std::find(dims.begin(), dims.end(), "shard") != dims.end() && std::find(dims.begin(), dims.end(), "zero") == dims.end() &&
      !f.optimizer_sharding && !f.parameter_sharding)
    throw SearchError("--vary shard: nothing is sharded: vary zero too, or set workload.optimizer_sharding or parameter_sharding");

  SearchSpace s;
  if (training) {
    // The batch every layout trains: as given, or the scenario's own.
    if (global_batch > 0) {
      s.global_batch = global_batch;
    } else if (sc.global_batch > 0) {
      s.global_batch = sc.global_batch;
    } else {
      const std::int64_t tokens = f.tokens_per_gpu * f.micro_batches * gpus / f.pp;
      if (tokens % f.sequence_length != 0)
        throw SearchError(fmt::format("the scenario's step ({} tokens) is not a whole number of its {}-token sequences: give "
                                      "--global-batch (sequences a step)",
                                      tokens, f.sequence_length));
      s.global_batch = tokens / f.sequence_length;
    }
    s.axes.push_back("workload.global_batch");
    s.values.push_back({std::to_string(s.global_batch)});
    s.axes.push_back("workload.micro_batches");  // set by the global batch at every point
    s.values.push_back({"~"});
  } else if (global_batch > 0) {
    throw SearchError("--global-batch: only used with a training scenario");
  }
  const auto has = [&](const char* d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); };
  // The cluster's size: the scenario's nodes times 1/8, 1/4, ..., 8 (whole numbers of nodes).
  // The other dimensions' candidates then come from the largest cluster (a value that does not
  // divide a smaller one is refused there and skipped as invalid).
  std::vector<int> node_counts{sc.cluster.nodes};
  if (has("nodes")) {
    node_counts.clear();
    for (int k = 8; k > 1; k /= 2)
      if (sc.cluster.nodes % k == 0) node_counts.push_back(sc.cluster.nodes / k);
    for (int k = 1; k <= 8; k *= 2) node_counts.push_back(sc.cluster.nodes * k);
  }
  const int most = node_counts.back() * sc.cluster.gpus_per_node;
  if (has("nodes")) {
    s.axes.push_back("cluster.nodes");
    s.values.push_back(texts(node_counts));
    // Leaves (pods) of fewer nodes than the cluster keep their size, or hold a smaller cluster whole.
    if (const int leaf = sc.cluster.scale_out.nodes_per_leaf; leaf < sc.cluster.nodes) {
      std::vector<int> leaves;
      for (const int n : node_counts) leaves.push_back(std::min(n, leaf));
      s.axes.push_back("cluster.scale_out.nodes_per_leaf");
      s.values.push_back(texts(leaves));
      s.zipped.push_back({"cluster.nodes", "cluster.scale_out.nodes_per_leaf"});
    }
  }
  if (has("tp")) {
    std::vector<int> v;
    for (int t = 1; t <= sc.cluster.gpus_per_node; t *= 2)
      if (sc.cluster.gpus_per_node % t == 0) v.push_back(t);
    s.axes.push_back("parallelism.tp");
    s.values.push_back(texts(v));
  }
  if (has("pp")) {
    std::vector<int> v;
    for (int p = 1; p <= std::min(most, f.model.moe_layers); ++p)
      if (most % p == 0) v.push_back(p);
    s.axes.push_back("parallelism.pp");
    s.values.push_back(texts(v));
    s.axes.push_back("parallelism.pipeline_layers");  // an even split at every stage count
    s.values.push_back({"~"});
  }
  if (has("vp")) {
    s.axes.push_back("parallelism.virtual_stages");
    s.values.push_back({"1", "2"});
  }
  if (has("sched")) {
    // Each schedule with the virtual stages it runs: 1F1B on one or two chunks a stage, ZB-H1,
    // DualPipeV (two chunks in a V), DualPipe (two copies of the weights; needs a gradient sync).
    // The first 1F1B is the default's (the key removed), which a point without stages allows.
    std::vector<std::string> schedules{"~", "1f1b", "zb_h1", "dualpipev"}, stages{"1", "2", "1", "2"};
    if (f.gradient_sync) {
      schedules.emplace_back("dualpipe");
      stages.emplace_back("1");
    }
    s.axes.push_back("workload.pipeline_schedule");
    s.values.push_back(schedules);
    s.axes.push_back("parallelism.virtual_stages");
    s.values.push_back(stages);
    s.zipped.push_back({"workload.pipeline_schedule", "parallelism.virtual_stages"});
  }
  if (has("ep")) {
    std::vector<int> v;
    const int largest = std::gcd(static_cast<int>(f.model.experts), most);
    for (int e = 1; e <= largest; ++e)
      if (largest % e == 0) v.push_back(e);
    s.axes.push_back("parallelism.ep");
    s.values.push_back(texts(v));
  }
  if (has("etp")) {
    // Each expert over 1, 2, 4, ... GPUs of a node, as the node and the experts' FFN divide.
    std::vector<int> v;
    for (int t = 1; t <= sc.cluster.gpus_per_node; t *= 2)
      if (sc.cluster.gpus_per_node % t == 0 && f.model.expert_ffn % t == 0) v.push_back(t);
    s.axes.push_back("parallelism.etp");
    s.values.push_back(texts(v));
    // A measured profile times the expert stage where it has the shard's width: the others'
    // come from the roofline, which may run faster or slower than the measured kernels.
    if (f.profile) {
      std::vector<std::string> missing, measured;
      for (const int t : v) {
        bool has = false;
        for (const auto& row : f.profile->rows)
          has = has || (row.kernel == "experts" && row.hidden == f.model.hidden && row.ffn == f.model.expert_ffn / t);
        (has ? measured : missing).push_back(std::to_string(t));
      }
      if (!missing.empty() && !measured.empty())
        s.caution = fmt::format("the measured profile times the expert stage at etp {} and not at etp {} (the shard's FFN width "
                                "is not in it: the roofline's there), so the points' expert stages come from two sources; "
                                "--set compute.model=roofline compares them like for like",
                                fmt::join(measured, ", "), fmt::join(missing, ", "));
    }
  }
  if (has("zero")) {
    // ZeRO's stages as moesim models them: nothing sharded, the optimizer (ZeRO-1), the weights
    // too (ZeRO-3, FSDP; without pipeline stages or overlaps: the loader refuses it otherwise).
    s.axes.push_back("workload.optimizer_sharding");
    s.values.push_back({"false", "true", "true"});
    s.axes.push_back("workload.parameter_sharding");
    s.values.push_back({"~", "~", "true"});
    s.zipped.push_back({"workload.optimizer_sharding", "workload.parameter_sharding"});
    if (f.gradient_sync_buckets > 1) {
      // FSDP reduce-scatters each layer's gradients on its own (the loader refuses buckets with
      // it): its points leave the scenario's buckets out, the others keep them.
      const std::string b = std::to_string(f.gradient_sync_buckets);
      s.axes.push_back("workload.gradient_sync_buckets");
      s.values.push_back({b, b, "~"});
      s.zipped.back().push_back("workload.gradient_sync_buckets");
    }
  }
  if (has("shard")) {
    // Hybrid sharding: over the whole stage (~), or groups of 1, 2, 4, ... nodes smaller than
    // the cluster (the loader refuses a group that does not divide a point's stage or hold its
    // whole EP and TP groups, and one where nothing is sharded: skipped as invalid).
    std::vector<std::string> v{"~"};
    for (int g = sc.cluster.gpus_per_node; g < most; g *= 2) v.push_back(std::to_string(g));
    s.axes.push_back("workload.shard_group");
    s.values.push_back(v);
  }
  if (has("gpu")) {
    // The presets whose servers hold the scenario's GPUs a node: GB200 and GB300 in their NVL72
    // racks (72 a node), the others not; a mesh of links at most one GPU per link plus one.
    std::vector<std::string> v, unpriced;
    const int gpn = sc.cluster.gpus_per_node;
    for (const auto& name : topology::gpu_preset_names()) {
      const topology::GpuSpec& g = *topology::find_gpu_preset(name);
      if ((name == "GB200" || name == "GB300") != (gpn == 72)) continue;
      if (g.fabric == topology::NodeFabric::mesh && gpn > g.peer_links + 1) continue;
      // With a price per GPU, the GPUs it prices (each costed at its own).
      if (!sc.gpu_prices.empty() && !sc.gpu_prices.contains(name)) {
        unpriced.push_back(name);
        continue;
      }
      v.push_back(name);
    }
    if (v.empty()) throw SearchError("--vary gpu: cluster.gpu_hour_price prices none of the GPUs these nodes can hold");
    s.axes.push_back("cluster.gpu");
    s.values.push_back(v);
    std::vector<std::string> cautions;
    if (f.profile)
      cautions.push_back(fmt::format("the measured profile times the MoE stages on the {} only (the others' come from the "
                                     "roofline, which may run faster or slower than the measured kernels): --set "
                                     "compute.model=roofline compares the GPUs like for like",
                                     sc.cluster.gpu.name));
    if (sc.cluster.node.nvlink_bandwidth != sc.cluster.gpu.nvlink_bandwidth ||
        sc.cluster.node.link_bandwidth != sc.cluster.gpu.link_bandwidth)
      cautions.push_back("the scenario's cluster.node bandwidth applies to every GPU (a mesh GPU refuses an NVLink "
                         "bandwidth): leave it to each GPU's own");
    if (sc.gpu_hour_price > 0 && sc.gpu_prices.empty())
      cautions.push_back("every GPU is priced at the scenario's cluster.gpu_hour_price: compare cost with a price per GPU "
                         "(cluster.gpu_hour_price: {H100: 2.5, H200: 3.5, ...})");
    if (!unpriced.empty())
      cautions.push_back(fmt::format("left out, without a price in cluster.gpu_hour_price: {}", fmt::join(unpriced, ", ")));
    if (!cautions.empty()) s.caution = (s.caution.empty() ? "" : s.caution + "; ") + fmt::format("{}", fmt::join(cautions, "; "));
  }
  if (has("nic")) {
    // The NICs at half, the same and twice the scenario's bandwidth (200, 400, 800 Gb/s for 400).
    std::vector<std::string> v;
    for (const double x : {0.5, 1.0, 2.0}) {
      const double bits = 8.0 * static_cast<double>(sc.cluster.scale_out.nic_bandwidth.bytes_per_s()) * x;
      v.push_back(std::fmod(bits, 1e9) == 0 ? fmt::format("{}Gbps", bits / 1e9) : fmt::format("{}bps", bits));
    }
    s.axes.push_back("cluster.scale_out.nic_bandwidth");
    s.values.push_back(v);
  }
  if (has("fabric")) {
    // How the NICs are joined (docs/topology.md): one switch (no contention above the NICs), two
    // tiers of leaves and spines, rail-optimised, or a plane per NIC index, with the scenario's
    // leaf size, spines and oversubscription; with more than one leaf, two tiers once more at
    // twice the oversubscription (a 2:1 fat-tree for a non-blocking one), zipped.
    const double o = sc.cluster.scale_out.oversubscription;
    s.axes.push_back("cluster.scale_out.topology");
    if (sc.cluster.scale_out.nodes_per_leaf < sc.cluster.nodes) {
      s.values.push_back({"single_switch", "two_tier", "two_tier", "rail", "multi_plane"});
      const std::string same = fmt::format("{}", o), twice = fmt::format("{}", 2 * o);
      s.axes.push_back("cluster.scale_out.oversubscription");
      s.values.push_back({same, same, twice, same, same});
      s.zipped.push_back({"cluster.scale_out.topology", "cluster.scale_out.oversubscription"});
    } else {
      s.values.push_back({"single_switch", "two_tier", "rail", "multi_plane"});
    }
  }
  if (has("sync")) {
    // The gradient sync's algorithm: NCCL's ring, hierarchical, and in the NVSwitch where the
    // nodes have one that reduces. The pipelined algorithms' chunks go with them (the loader
    // refuses chunks for a ring), and so does the in-switch efficiency where only the sync used it.
    std::vector<std::string> algorithms{"ring", "hierarchical"};
    if (scenarios::in_switch_unavailable(sc.cluster).empty()) algorithms.emplace_back("nvls");
    s.axes.push_back("workload.gradient_sync");
    s.values.push_back(algorithms);
    s.zipped.push_back({"workload.gradient_sync"});
    const std::string c = std::to_string(f.gradient_sync_chunks);
    s.axes.push_back("workload.gradient_sync_chunks");
    s.values.push_back(algorithms.size() == 3 ? std::vector<std::string>{"~", c, c} : std::vector<std::string>{"~", c});
    s.zipped.back().push_back("workload.gradient_sync_chunks");
    if (algorithms.size() == 3 && f.tp_algorithm != models::CollectiveAlgorithm::nvls) {
      s.axes.push_back("network.nvls_efficiency");
      s.values.push_back({"~", "~", fmt::format("{}", f.nvls_efficiency)});
      s.zipped.back().push_back("network.nvls_efficiency");
    }
  }
  if (has("a2a")) {
    // How dispatch and combine become flows: a flow per GPU pair, or DeepEP's normal kernels
    // (once per node, forwarded over NVLink; the loader refuses EP groups that are not whole
    // nodes or inside one: skipped as invalid), and in decode DeepEP's low-latency kernels. Each
    // keeps the scenario's settings of its own: the forwarding's chunks, the per-message cost.
    const bool decode = f.context_length > 0;
    std::vector<std::string> algorithms{"direct", "hierarchical"};
    if (decode) algorithms.emplace_back("low_latency");
    s.axes.push_back("network.all_to_all");
    s.values.push_back(algorithms);
    s.zipped.push_back({"network.all_to_all"});
    const std::string chunks = std::to_string(f.all_to_all.forward_chunks);
    s.axes.push_back("network.forward_chunks");
    s.values.push_back(decode ? std::vector<std::string>{"~", chunks, "~"} : std::vector<std::string>{"~", chunks});
    s.zipped.back().push_back("network.forward_chunks");
    if (decode) {
      s.axes.push_back("network.message_overhead");
      s.values.push_back({"~", "~", fmt::format("{}ps", f.all_to_all.message_overhead.count_ps())});
      s.zipped.back().push_back("network.message_overhead");
    }
  }
  if (has("batch")) {
    std::vector<std::string> v;
    for (std::int64_t b = 1; b <= 2 * f.tokens_per_gpu; b *= 2) v.push_back(std::to_string(b));
    s.axes.push_back("workload.tokens_per_gpu");
    s.values.push_back(v);
  }
  if (has("recompute")) {
    // None (the key removed, with any recompute_layers or recompute_modules), of the attention,
    // of whole layers.
    s.axes.push_back("workload.recompute");
    s.values.push_back({"~", "attention", "full"});
    s.axes.push_back("workload.recompute_layers");
    s.values.push_back({"~"});
    s.axes.push_back("workload.recompute_modules");
    s.values.push_back({"~"});
  }
  if (has("cp")) {
    // Each sequence over cp GPUs: a GPU holds 1/cp of the tokens it held, as many sequences' shares.
    std::vector<std::string> cps, tokens;
    for (std::int64_t c = 1; c <= 16 && c <= most; c *= 2)
      if (f.sequence_length % c == 0 && f.tokens_per_gpu % c == 0) {
        cps.push_back(std::to_string(c));
        tokens.push_back(std::to_string(f.tokens_per_gpu / c));
      }
    s.axes.push_back("parallelism.cp");
    s.values.push_back(cps);
    s.axes.push_back("workload.tokens_per_gpu");
    s.values.push_back(tokens);
    s.zipped.push_back({"parallelism.cp", "workload.tokens_per_gpu"});
  }
  std::size_t points = 1;
  std::string varied;
  for (std::size_t a = 0; a < s.axes.size(); ++a) {
    // An axis zipped to an earlier one advances with it.
    const auto group = std::find_if(s.zipped.begin(), s.zipped.end(), [&](const auto& z) {
      return std::find(z.begin() + 1, z.end(), s.axes[a]) != z.end();
    });
    const bool follows = group != s.zipped.end();
    if (!follows) points *= s.values[a].size();
    if (s.values[a].size() > 1)
      varied += fmt::format("{}{} in {{{}}}{}", varied.empty() ? "" : ", ", s.axes[a], fmt::join(s.values[a], ", "),
                            follows ? fmt::format(" (with {})", group->front()) : "");
  }
  if (varied.empty()) throw SearchError("nothing to search: every dimension has one value on this cluster and model");
  s.note = fmt::format("{} points: {}{}", points, varied,
                       s.global_batch > 0 ? fmt::format("; every point trains {} sequences of {} tokens a step", s.global_batch, f.sequence_length)
                                          : std::string());
  return s;
}

std::string search_grid_yaml(const SearchSpace& space, const std::string& base) {
  std::string y = "# A layout search written by `moesim search` (docs/sweeps.md, \"A search over layouts\"): " + space.note +
                  ".\n# Edit the axes and run `moesim plan` on this file to search otherwise.\n";
  std::string quoted;  // YAML's single quotes: a quote doubled
  for (const char c : base) quoted += c == '\'' ? std::string("''") : std::string(1, c);
  y += fmt::format("base: '{}'\naxes:\n", quoted);
  for (std::size_t a = 0; a < space.axes.size(); ++a) y += fmt::format("  {}: [{}]\n", space.axes[a], fmt::join(space.values[a], ", "));
  if (space.zipped.size() == 1) y += fmt::format("zip: [{}]\n", fmt::join(space.zipped.front(), ", "));
  if (space.zipped.size() > 1) {
    std::vector<std::string> groups;
    for (const auto& z : space.zipped) groups.push_back(fmt::format("[{}]", fmt::join(z, ", ")));
    y += fmt::format("zip: [{}]\n", fmt::join(groups, ", "));
  }
  y += "skip: [invalid, unfit]\n";
  return y;
}

}  // namespace moesim::tools
