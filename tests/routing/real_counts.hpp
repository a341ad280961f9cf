// The real per-expert routing counts in ../shared/data/routing/real-expert-counts.csv, for tests.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace moesim::testing {

inline std::string real_counts_path() {
  return std::string(MOESIM_SHARED_DATA_DIR) + "/routing/real-expert-counts.csv";
}

// "dataset/layerL" -> counts by expert, for one model and kind (e.g. "olmoe", "expert_counts");
// empty when the file is absent.
inline std::map<std::string, std::vector<double>> real_counts(const std::string& model, const std::string& kind) {
  std::map<std::string, std::vector<double>> sets;
  std::ifstream in(real_counts_path());
  std::string line;
  std::getline(in, line);  // header: model,kind,dataset,layer,expert,count
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    if (f.size() != 6 || f[0] != model || f[1] != kind) continue;
    auto& v = sets[f[2] + "/layer" + f[3]];
    const auto e = static_cast<std::size_t>(std::stoi(f[4]));
    if (v.size() <= e) v.resize(e + 1, 0.0);
    v[e] = std::stod(f[5]);
  }
  return sets;
}

}  // namespace moesim::testing
