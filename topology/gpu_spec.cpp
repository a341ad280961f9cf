#include "topology/gpu_spec.hpp"

#include <algorithm>
#include <array>
#include <cctype>

namespace moesim::topology {
namespace {

using sim::Bandwidth;
using sim::Bytes;
using sim::FlopRate;

constexpr std::int64_t kT = 1'000'000'000'000;
constexpr std::int64_t kG = 1'000'000'000;

// Sources:
// - H100-SXM5 80GB: NVIDIA H100 Tensor Core GPU datasheet and Hopper architecture whitepaper:
//   989.4 dense BF16 TFLOP/s (132 SMs x 4 tensor cores x 1024 FLOP/clk x 1.83 GHz; the
//   datasheet's 1,979 TFLOPS is with sparsity), 1978.8 dense FP8 TFLOP/s (twice BF16: the
//   datasheet's 3,958 is with sparsity), 3.35 TB/s HBM3, 80 GB, NVLink 4 900 GB/s total.
// - H800-SXM5 80GB: NVIDIA H800 product brief: compute and memory as H100-SXM5, NVLink cut to
//   400 GB/s total (the DeepSeek-V3 technical report measures about 160 GB/s achievable).
// - H200-SXM 141GB: NVIDIA H200 datasheet: H100 compute, 4.8 TB/s HBM3e, 141 GB, 900 GB/s NVLink.
// - A100-SXM4 80GB: NVIDIA A100 datasheet: 312 dense BF16 TFLOP/s (no FP8 tensor cores),
//   2,039 GB/s HBM2e, 80 GB, NVLink 3 600 GB/s total, 108 SMs.
// - B200-SXM 180GB (HGX B200, 1,000 W): NVIDIA HGX B200 and DGX B200 datasheets: 2,250 dense
//   BF16 TFLOP/s, 4,500 dense FP8 and 9,000 dense FP4 (the datasheets' 4.5, 9 and 18 PFLOPS
//   per GPU are with sparsity), 1,440 GB HBM3e per 8 GPUs (180 GB each) at 7.7 TB/s each (HGX
//   B200's 62 TB/s per 8; DGX B200 states 64 TB/s), NVLink 5 1.8 TB/s total. 148 SMs (74 on
//   each of its two dies, as the GPU reports them: Chips and Cheese, "Nvidia's B200: Keeping
//   the CUDA Juggernaut Rolling", 2025).
// - GB200 (the Blackwell GPU of a GB200 NVL72 rack, 1,200 W): NVIDIA GB200 NVL72 datasheet, per
//   72 GPUs: 360 PFLOPS FP16/BF16, 720 PFLOPS FP8 and 1,440 PFLOPS FP4 with sparsity (2,500,
//   5,000 and 10,000 dense TFLOP/s per GPU), up to 13.4 TB HBM3e (186 GB per GPU) at 576 TB/s
//   (8 TB/s per GPU), NVLink Switch System 130 TB/s (1.8 TB/s per GPU, every GPU of the rack on
//   one NVLink domain). The SM count is the B200's: NVIDIA does not state it apart.
// - B300-SXM 288GB (HGX B300, Blackwell Ultra, 1,100 W): NVIDIA HGX B300 and DGX B300 datasheets,
//   per 8 GPUs: 36 PFLOPS FP16/BF16 and 72 PFLOPS FP8 with sparsity (2,250 and 4,500 dense
//   TFLOP/s per GPU, the B200's), 108 PFLOPS dense FP4 (13,500 per GPU; 144 with sparsity), up
//   to 2.3 TB HBM3e (288 GB each) at up to 8 TB/s each, NVLink 5 1.8 TB/s total. Board power:
//   NVIDIA states the DGX B300's (14.5 kW against the DGX B200's 14.3 kW with its 1,000 W GPUs),
//   not the GPU's; 1,100 W is Verda's per-GPU table ("NVIDIA GB300 NVL72: GPU Architecture &
//   Performance", 2025). 160 SMs, as NVIDIA's "Inside NVIDIA Blackwell Ultra" (2025) states the
//   chip (20,480 CUDA cores, 640 tensor cores); not read from a GPU.
// - GB300 (the Blackwell Ultra GPU of a GB300 NVL72 rack, 1,400 W): NVIDIA GB300 NVL72
//   datasheet, per 72 GPUs: 360 PFLOPS FP16/BF16 and 720 PFLOPS FP8 with sparsity (2,500 and
//   5,000 dense TFLOP/s per GPU, as the GB200's), 1,080 PFLOPS dense FP4 (15,000 per GPU; 1,440
//   with sparsity), up to 20.7 TB HBM3e (288 GB per GPU) at 576 TB/s (8 TB/s per GPU), NVLink
//   Switch System 130 TB/s (1.8 TB/s per GPU, the rack one NVLink domain), a ConnectX-8 SuperNIC
//   of 800 Gb/s per GPU (`scale_out.nic_bandwidth` sets it). 1,400 W: Verda's table (above). SMs
//   as B300-SXM. What Blackwell Ultra adds that the peaks do not carry (twice the B200's
//   exponentials for attention's softmax, the power to hold its clocks) is not modelled.
// AMD Instinct GPUs come on 8-GPU boards whose GPUs form a full mesh: each GPU has 7 Infinity
// Fabric (xGMI) links, one to each peer, and no switch (NodeFabric::mesh). `sm_count` is their
// compute units (CUs).
// - MI300X 192GB: AMD Instinct MI300X datasheet: 1,307.4 dense BF16 TFLOP/s (304 CUs x 2,048
//   FLOP/clk x 2.1 GHz; 2,614.9 with sparsity), 2,614.9 dense FP8, 5.3 TB/s HBM3, 192 GB; 7
//   links of 128 GB/s peak each (both directions together, 896 GB/s in all): 64 GB/s per link
//   and direction, as AMD's ROCm blog "Understanding RCCL Bandwidth and xGMI Performance on AMD
//   Instinct MI300X" (2025) states it (about 48 GB/s of it usable, by that post).
// - MI325X 256GB: AMD Instinct MI325X datasheet: the MI300X's compute and links, 256 GB HBM3E
//   at 6 TB/s.
// - MI355X 288GB (1,400 W, liquid-cooled): CDNA 4, 256 CUs at up to 2.4 GHz (Hot Chips 2025);
//   dense BF16 2,516.6 TFLOP/s (4,096 FLOP/clk per CU), FP8 5,033.2 (8,192 per CU, AMD at
//   ISSCC 2026) and MXFP4 10,066.3 (AMD's "2.5, 5 and 10 PFLOPS"), 288 GB HBM3E at 8 TB/s; 7
//   links of 153.6 GB/s both ways (76.8 GB/s per direction).
// Rated board power (the datasheets' maximum TDP or TBP, in the order of the presets): H100,
// H800 and H200 SXM up to 700 W, A100 SXM4 400 W, B200 1,000 W, GB200 1,200 W, B300 1,100 W,
// GB300 1,400 W, MI300X 750 W, MI325X 1,000 W, MI355X 1,400 W.
constexpr std::array<double, 11> kBoardPowerW{700, 700, 700, 400, 1000, 1200, 1100, 1400, 750, 1000, 1400};

const std::array<GpuSpec, 11>& presets() {
  constexpr auto mesh = NodeFabric::mesh;
  static const std::array<GpuSpec, 11> p = [] {
    std::array<GpuSpec, 11> a{{
        {"H100-SXM", FlopRate(9894 * kT / 10), FlopRate(19788 * kT / 10), Bandwidth(3350 * kG), Bytes(80 * kG),
         Bandwidth(450 * kG), 132},
        {"H800-SXM", FlopRate(9894 * kT / 10), FlopRate(19788 * kT / 10), Bandwidth(3350 * kG), Bytes(80 * kG),
         Bandwidth(200 * kG), 132},
        {"H200-SXM", FlopRate(9894 * kT / 10), FlopRate(19788 * kT / 10), Bandwidth(4800 * kG), Bytes(141 * kG),
         Bandwidth(450 * kG), 132},
        {"A100-SXM", FlopRate(312 * kT), FlopRate(0), Bandwidth(2039 * kG), Bytes(80 * kG),
         Bandwidth(300 * kG), 108},
        {"B200-SXM", FlopRate(2250 * kT), FlopRate(4500 * kT), Bandwidth(7700 * kG), Bytes(180 * kG),
         Bandwidth(900 * kG), 148, FlopRate(9000 * kT)},
        {"GB200", FlopRate(2500 * kT), FlopRate(5000 * kT), Bandwidth(8000 * kG), Bytes(186 * kG),
         Bandwidth(900 * kG), 148, FlopRate(10000 * kT)},
        {"B300-SXM", FlopRate(2250 * kT), FlopRate(4500 * kT), Bandwidth(8000 * kG), Bytes(288 * kG),
         Bandwidth(900 * kG), 160, FlopRate(13500 * kT)},
        {"GB300", FlopRate(2500 * kT), FlopRate(5000 * kT), Bandwidth(8000 * kG), Bytes(288 * kG),
         Bandwidth(900 * kG), 160, FlopRate(15000 * kT)},
        {"MI300X", FlopRate(13074 * kT / 10), FlopRate(26149 * kT / 10), Bandwidth(5300 * kG), Bytes(192 * kG),
         Bandwidth(7 * 64 * kG), 304, FlopRate(0), mesh, 7, Bandwidth(64 * kG)},
        {"MI325X", FlopRate(13074 * kT / 10), FlopRate(26149 * kT / 10), Bandwidth(6000 * kG), Bytes(256 * kG),
         Bandwidth(7 * 64 * kG), 304, FlopRate(0), mesh, 7, Bandwidth(64 * kG)},
        {"MI355X", FlopRate(25166 * kT / 10), FlopRate(50332 * kT / 10), Bandwidth(8000 * kG), Bytes(288 * kG),
         Bandwidth(7 * 768 * kG / 10), 256, FlopRate(100663 * kT / 10), mesh, 7, Bandwidth(768 * kG / 10)},
    }};
    for (std::size_t i = 0; i < a.size(); ++i) a[i].board_power_w = kBoardPowerW[i];
    return a;
  }();
  return p;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

const GpuSpec* find_gpu_preset(std::string_view name) {
  // "H100" is short for "H100-SXM": the SXM part is the one these clusters are built from.
  for (const auto& g : presets())
    if (iequals(g.name, name) || iequals(g.name, std::string(name) + "-SXM")) return &g;
  return nullptr;
}

std::vector<std::string> gpu_preset_names() {
  std::vector<std::string> names;
  for (const auto& g : presets()) names.push_back(g.name);
  return names;
}

}  // namespace moesim::topology
