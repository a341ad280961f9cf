// moesim: the command-line front end. Only this file decides exit codes:
// 0 success, 2 bad input (scenario, arguments, output directory), 1 internal failure.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "models/kernel_profile.hpp"
#include "models/moe_costs.hpp"
#include "routing/traces.hpp"
#include "scenarios/experiment.hpp"
#include "scenarios/scenario.hpp"
#include "sim/assert.hpp"
#include "sim/units.hpp"
#include "tools/calibrate.hpp"
#include "tools/diff.hpp"
#include "tools/flows_replay.hpp"
#include "topology/gpu_spec.hpp"
#include "scenarios/grid.hpp"
#include "scenarios/hf_config.hpp"
#include "tools/report.hpp"
#include "tools/plan.hpp"
#include "tools/search.hpp"
#include "tools/serve.hpp"
#include "tools/sweep.hpp"

namespace po = boost::program_options;
using namespace moesim;

namespace moesim::tools {
extern const char* const kQuickstartYaml;  // scenarios/quickstart.yaml, embedded at build time
}

namespace {

constexpr const char* kUsage = R"(usage: moesim <command> [options]

commands:
  run [SCENARIO.yaml] [--out DIR] [--seed N] [--set KEY.PATH=VALUE ...]
        simulate a scenario and write its reports (summary.csv, layers.csv, ...)
        (no scenario: the built-in quickstart, scenarios/quickstart.yaml)
        --set changes one scenario key for this run (repeatable; also for place,
        trace and validate), e.g. --set routing.zipf_s=1.2 --set parallelism.ep=16
  flows --scenario SCENARIO.yaml --flows FLOWS.csv --out RESULT.csv
        replay flows (src,dst,bytes,start_us) on the scenario's cluster and network
        model; writes flow,src,dst,bytes,start_us,end_us
  place [SCENARIO.yaml] [--out DIR]
        compute the expert placement of every layer without simulating; prints the
        expected GPU load balance and writes placement.csv
  trace [SCENARIO.yaml] --out FILE [--group G [--binary] | --counts]
        write the routing the scenario produces, without simulating: a token-level
        trace of EP group G (default 0: layer,token,experts,gates,rank; --binary:
        its binary form, a third of the bytes), or with --counts a count-level
        trace of all groups (layer,expert,count); either can be replayed with
        routing.distribution: trace (docs/traces.md)
  trace --convert TRACE --out FILE
        rewrite a token-level trace in the other form: CSV to binary, binary to CSV
  sweep GRID.yaml [--out CSV] [--jobs N] [--reports DIR] [--set KEY.PATH=VALUE ...]
        run every point of a grid (a base scenario and axes of key paths, see
        docs/sweeps.md) and write one row per point; resumes where an earlier run
        stopped; `mpirun -np N moesim sweep ...` shares the points over MPI ranks
  plan GRID.yaml [--target METRIC=VALUE ...] (--minimize | --maximize) METRIC [--top N]
        run (or resume) the grid's sweep, then pick the best point that fits the
        GPUs' memory and meets every target, and say why, e.g.
        --target tokens/s=2e6 --minimize cost   (exit code 3: no point qualifies);
        --top N ranks the N best in a table
  search SCENARIO.yaml [--vary DIMENSIONS] [--global-batch N] [--target ...]
        [--maximize METRIC | --minimize METRIC] [--top N] [--out CSV] [--jobs N]
        a layout search without a grid: the tensor-parallel sizes, pipeline stages
        (and virtual stages), EP sizes and ZeRO stage (none, optimizer, FSDP) the
        cluster and model allow (tp,pp,vp,ep,zero; on request also cp, batch, sched,
        recompute, etp, shard, the collectives' algorithms: sync, a2a, the
        cluster's size: nodes, its GPU: gpu, its NICs: nic, and its scale-out
        topology: fabric), at the scenario's global batch; writes the grid beside
        the CSV, skips what cannot run or fit, and plans the rest (default: the
        most tokens/s, the 10 best ranked)
  calibrate SCENARIO.yaml --key KEY.PATH --target METRIC=VALUE [--range LO,HI]
        [--tolerance 0.5%] [--runs N] [--unit U] [--out DIR] [--set KEY.PATH=VALUE ...]
        the value of one numeric key (default range 0.05 to 1, for the
        efficiencies) at which a run's summary.csv METRIC meets a figure measured
        on a real system, by bisection (exit code 3: not reached)
  validate SCENARIO.yaml | GRID.yaml [--set KEY.PATH=VALUE ...]
        check a scenario file without running it; a sweep grid: every point
  serve --colocated SCENARIO.yaml --input-tokens-per-s I --output-tokens-per-s O
        [--cache-hit-rate H] [--ttft TIME [--ttft-percentile P]] [--tpot TIME]
        [--prompt-length-sigma S | --prompt-lengths FILE] [--prefill-router round_robin|least_work]
        [--gpu-mtbf-hours H --repair-time TIME [--availability A]] [--set KEY.PATH=VALUE ...]
        colocated serving with chunked prefill: one decode scenario whose steps
        prefill prompts too (workload.prefill_chunk), or a grid of them: the units
        the output and the prompts take, the prompts' queue and time to first
        token (simulated; --ttft: units added until it is met), cost
  serve PREFILL.yaml DECODE.yaml --input-tokens-per-s I --output-tokens-per-s O
        [--cache-hit-rate H] [--ttft TIME [--ttft-percentile 50|90|99]] [--tpot TIME]
        [--prompt-length-sigma S | --prompt-lengths FILE] [--prefill-router round_robin|least_work]
        [--gpu-mtbf-hours H --repair-time TIME [--availability A]]
        [--prefill-set KEY=VALUE ...] [--decode-set ...] [--jobs N] [--out DIR]
        how many GPUs disaggregated serving needs for a traffic: simulates each
        scenario once (a unit of prefill, a unit of decode; prefill again at one
        prompt per GPU), then the units each load takes, GPUs, the prompts' queue
        and time to first token (simulated; --ttft: prefill units added until it
        is met), sequences decoding at once, KV-cache rates and cost; rates are
        tokens a second, or e.g. 608e9/day; either file may be a grid: its point
        that serves the load on the fewest GPUs, fits memory and meets --tpot
        (time per token) or --ttft (each prefill point sized by its own queue)
        is used (exit code 3: none); with --gpu-mtbf-hours, the spare units
        that keep the load's up A of the time; writes serve.csv and the runs
  model CONFIG.json [--workload KIND]
        the model section a Hugging Face config.json gives (model.hf_config reads
        it in a scenario): each key with the config key it came from, what moesim
        leaves out or approximates, the parameter counts
  gpus
        the GPU presets (cluster.gpu): dense peaks, HBM, memory, how a node joins
        them (NVSwitch or a mesh of links) and rated power
  diff A B [--all]
        compare two runs (output directories or summary.csv files): the settings
        that differ, then the step time, its stages, throughput, waits, imbalance,
        bytes and memory of each, with B - A and B / A; --all: every other column
        that differs too
  check-profile MEASURED.csv [--profile PROFILE.csv] [--gpu MODEL] [--median PCT] [--worst PCT]
                [--median-of-repeats]
        predict each whole-layer time in MEASURED.csv (e.g. held-out timings from
        kernels/profile.cu --heldout) from the profile (default: the one built in for
        --gpu, H100-SXM) and print the errors; exit code 1 past the bounds
        (default: median 5 %, worst 10 %); expert-stage rows (--heldout-experts)
        are predicted as the stage alone and reported apart, without bounds;
        --median-of-repeats: a case timed more than once (--passes) counts once, at
        the median of its timings
  check-profile --coverage [--profile PROFILE.csv] [--gpu MODEL]
        what the profile measures: per shape and kernel the experts, token (or row)
        range, rows and distributions, and whether it has the backward pass
  check-profile --roofline [--profile PROFILE.csv] [--gpu MODEL] [--from-tokens N] [-q]
        the roofline's forward MoE stages (router with permutation, experts,
        combine) against the profile's measured ones, with the kernels between the
        GEMMs (compute.elementwise_kernels) apart and not: measured over predicted
  check-profile --leave-one-out [--profile PROFILE.csv] [--gpu MODEL] [-q]
        judge the profile's interpolation on itself: each row with measured counts
        on both sides predicted without it; the error per kernel and the worst rows
  check-profile --leave-one-distribution-out [--profile PROFILE.csv] [--gpu MODEL] [-q]
        judge the expert stage across routings: each experts row predicted from the
        profile's other distributions alone; the error per shape and the worst rows
  check-profile --leave-one-expert-count-out [--profile PROFILE.csv] [--gpu MODEL] [-q]
        judge the expert stage across local-expert counts (e.g. EP slots with
        redundant experts): each experts row predicted from the counts either side
  help  show this text

exit codes: 0 success, 2 bad input, 1 internal error, 3 no plan meets the targets
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

po::variables_map parse_command(const std::vector<std::string>& args, po::options_description& opts,
                                const std::string& positional_name, int max_positional) {
  po::positional_options_description pos;
  pos.add(positional_name.c_str(), max_positional);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(opts).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  return vm;
}

// Seconds between progress lines into a log or a pipe: MOESIM_PROGRESS_EVERY, else 60.
double progress_every() {
  const char* v = std::getenv("MOESIM_PROGRESS_EVERY");
  if (!v || !*v) return 60;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  if (*end != '\0' || !(s >= 0)) throw UsageError(fmt::format("MOESIM_PROGRESS_EVERY: '{}' is not a number of seconds >= 0", v));
  return s;
}

scenarios::Scenario load(const po::variables_map& vm) {
  const auto sets = vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (vm.count("scenario")) return scenarios::load_scenario_file(vm["scenario"].as<std::string>(), sets);
  return scenarios::load_scenario_text(tools::kQuickstartYaml, "quickstart.yaml", sets);
}

// --set key.path=value, repeatable: a scenario key changed for this run only.
void add_set_option(po::options_description& opts) {
  opts.add_options()("set", po::value<std::vector<std::string>>()->composing(),
                     "KEY.PATH=VALUE: override a scenario key (repeatable), e.g. --set routing.zipf_s=1.2");
}

scenarios::RunResult simulate(const scenarios::Scenario& sc, bool quiet);

int cmd_run(const std::vector<std::string>& args) {
  po::options_description opts("run options");
  opts.add_options()("scenario", po::value<std::string>(), "scenario file")(
      "out,o", po::value<std::string>(), "output directory (default: the scenario's output.dir)")(
      "seed", po::value<std::uint64_t>(), "override workload.seed")("quiet,q", "print nothing on success");
  add_set_option(opts);
  const auto vm = parse_command(args, opts, "scenario", 1);
  scenarios::Scenario sc = load(vm);
  if (vm.count("seed")) sc.forward.seed = vm["seed"].as<std::uint64_t>();
  const std::string dir = vm.count("out") ? vm["out"].as<std::string>() : sc.output_dir;
  const auto t0 = std::chrono::steady_clock::now();
  const scenarios::RunResult result = simulate(sc, vm.count("quiet") > 0);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto written = tools::write_reports(dir, sc, result);
  if (!vm.count("quiet")) {
    tools::print_human_summary(std::cout, sc, result, written);
    fmt::print("  simulated   {} events in {:.3f} s\n", result.events, wall);
  }
  return 0;
}

// Runs a scenario, showing progress unless quiet.
scenarios::RunResult simulate(const scenarios::Scenario& sc, bool quiet) {
  const auto t0 = std::chrono::steady_clock::now();
  // A progress bar on a terminal, at most five updates a second; into a log or a pipe a line at
  // most once a minute, so that a long run in the background says how far it is.
  const bool bar = !quiet && ::isatty(STDERR_FILENO) != 0;
  const auto every = std::chrono::duration<double>(bar ? 0.2 : progress_every());
  auto last = t0;
  bool drawn = false;
  // The time left is estimated from the pace since the first report, once the simulation runs:
  // the routing and dispatch plans built before it (minutes at thousands of GPUs) would make the
  // early estimates many times too long.
  std::optional<std::pair<std::chrono::steady_clock::time_point, double>> first;
  const scenarios::Progress progress = [&](double done) {
    const auto now = std::chrono::steady_clock::now();
    if (!first) first.emplace(now, done);
    if (now - last < every) return;
    last = now;
    const double elapsed = std::chrono::duration<double>(now - t0).count();
    const double ran = std::chrono::duration<double>(now - first->first).count(), gained = done - first->second;
    const std::string left = gained > 0.02 ? fmt::format(", about {:.0f} s left", ran * (1 - done) / gained) : std::string();
    if (!bar) {
      fmt::print(stderr, "  running     {:.0f}%, {:.0f} s elapsed{}\n", 100 * done, elapsed, left);
      std::fflush(stderr);
      return;
    }
    const int width = 30, filled = static_cast<int>(done * width);
    fmt::print(stderr, "\r  running     [{}{}] {:3.0f}%  {:.0f} s elapsed{}   ", std::string(static_cast<std::size_t>(filled), '='),
               std::string(static_cast<std::size_t>(width - filled), ' '), 100 * done, elapsed, left);
    std::fflush(stderr);
    drawn = true;
  };
  // Before the simulation, the routing and dispatch plans (minutes at thousands of GPUs).
  const scenarios::Progress preparing = [&](double done) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last < every) return;
    last = now;
    const double elapsed = std::chrono::duration<double>(now - t0).count();
    if (!bar) {
      fmt::print(stderr, "  preparing   {:.0f}% of the routing and dispatch plans, {:.0f} s elapsed\n", 100 * done, elapsed);
      std::fflush(stderr);
      return;
    }
    fmt::print(stderr, "\r  preparing   routing and dispatch plans {:3.0f}%  {:.0f} s elapsed   ", 100 * done, elapsed);
    std::fflush(stderr);
    drawn = true;
  };
  scenarios::RunResult result =
      scenarios::run_experiment(sc, quiet ? scenarios::Progress{} : progress, quiet ? scenarios::Progress{} : preparing);
  if (drawn) fmt::print(stderr, "\r{}\r", std::string(80, ' '));
  return result;
}

int cmd_flows(const std::vector<std::string>& args) {
  po::options_description opts("flows options");
  opts.add_options()("scenario,s", po::value<std::string>(), "scenario file (cluster and network model)")(
      "flows,f", po::value<std::string>(), "input CSV: src,dst,bytes,start_us")(
      "out,o", po::value<std::string>(), "output CSV: flow,src,dst,bytes,start_us,end_us")(
      "quiet,q", "print nothing on success");
  const auto vm = parse_command(args, opts, "scenario", 1);
  if (!vm.count("flows")) throw UsageError("flows needs --flows FILE");
  if (!vm.count("out")) throw UsageError("flows needs --out FILE");
  const scenarios::Scenario sc = load(vm);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = tools::replay_flows(sc, vm["flows"].as<std::string>(), vm["out"].as<std::string>());
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!vm.count("quiet"))
    fmt::print("moesim: {} flows on {} ({} network), last ends at {:.6f} us; wrote {} ({:.3f} s)\n", r.flows,
               sc.source, sc.network_model, r.last_end_us, vm["out"].as<std::string>(), wall);
  return 0;
}

int cmd_place(const std::vector<std::string>& args) {
  po::options_description opts("place options");
  opts.add_options()("scenario", po::value<std::string>(), "scenario file")(
      "out,o", po::value<std::string>(), "output directory (default: the scenario's output.dir)")(
      "quiet,q", "print nothing on success");
  add_set_option(opts);
  const auto vm = parse_command(args, opts, "scenario", 1);
  const scenarios::Scenario sc = load(vm);
  const std::string dir = vm.count("out") ? vm["out"].as<std::string>() : sc.output_dir;
  const auto placements = scenarios::compute_placements(sc);
  const std::string written = tools::write_placement(dir, sc, placements);
  if (!vm.count("quiet")) tools::print_placement_summary(std::cout, sc, placements, written);
  return 0;
}

int cmd_trace(const std::vector<std::string>& args) {
  po::options_description opts("trace options");
  opts.add_options()("scenario", po::value<std::string>(), "scenario file")(
      "out,o", po::value<std::string>(), "output file")("group,g", po::value<int>()->default_value(0), "EP group")(
      "counts", "write per-expert counts of all EP groups instead of tokens")(
      "binary", "write the token-level trace in its binary form (docs/traces.md)")(
      "convert", po::value<std::string>(), "rewrite this token-level trace in the other form (CSV to binary, binary to CSV)")(
      "quiet,q", "print nothing on success");
  add_set_option(opts);
  const auto vm = parse_command(args, opts, "scenario", 1);
  if (!vm.count("out")) throw UsageError("trace needs --out FILE");
  const std::string out = vm["out"].as<std::string>();
  if (vm.count("convert")) {
    for (const char* other : {"scenario", "counts", "binary", "set"})
      if (vm.count(other)) throw UsageError(fmt::format("trace --convert takes only --out (not {})", other));
    if (!vm["group"].defaulted()) throw UsageError("trace --convert takes only --out (not group)");
    const std::string from = vm["convert"].as<std::string>();
    if (std::filesystem::exists(out) && std::filesystem::equivalent(from, out))
      throw UsageError("trace --convert: --out must be another file than the input");
    const tools::ConvertedTrace c = tools::convert_token_trace(from, out);
    if (!vm.count("quiet"))
      fmt::print("moesim: wrote {} ({} tokens of {}, {} to {})\n", out, c.tokens, from, c.from_binary ? "binary" : "CSV",
                 c.from_binary ? "CSV" : "binary");
    return 0;
  }
  const scenarios::Scenario sc = load(vm);
  const int groups = sc.cluster.nodes * sc.cluster.gpus_per_node / sc.forward.pp / sc.forward.ep;  // per pipeline stage
  const int group = vm["group"].as<int>();
  if (group < 0 || group >= groups)
    throw UsageError(fmt::format("--group {} is not an EP group of the scenario (0 to {})", group, groups - 1));
  if (vm.count("counts")) {
    if (!vm["group"].defaulted()) throw UsageError("--counts covers all EP groups; --group does not apply");
    if (vm.count("binary")) throw UsageError("--binary is a form of token-level traces; --counts writes CSV");
    tools::write_count_trace(out, scenarios::routed_counts(sc));
  } else {
    tools::write_token_trace_file(out, scenarios::route_group(sc, group), vm.count("binary") > 0);
  }
  if (!vm.count("quiet"))
    fmt::print("moesim: wrote {} ({} of {}, {} MoE layers)\n", out,
               vm.count("counts") ? fmt::format("expert counts of {} EP groups", groups)
                                  : fmt::format("tokens of EP group {}", group),
               sc.source, sc.forward.model.moe_layers);
  return 0;
}

// Under MPI a failure that every rank sees is reported by rank 0 only: the others exit
// silently with status 0, so that mpirun does not abort rank 0 before it has printed the
// error; mpirun's status is then rank 0's.
struct QuietRank {
  int code;
};

// The options sweep and plan share.
void add_sweep_options(po::options_description& opts) {
  opts.add_options()("grid", po::value<std::string>(), "grid file")("out,o", po::value<std::string>(), "output CSV")(
      "jobs,j", po::value<int>(), "points run at once (default: all cores; under MPI, per rank)")(
      "reports", po::value<std::string>(), "also write each point's reports in DIR/point-NNNN/")(
      "quiet,q", "print nothing on success");
  add_set_option(opts);
}

// Runs (or resumes) the grid's sweep; returns the MPI rank (0 without MPI) and the output path.
std::pair<int, std::string> sweep(const po::variables_map& vm, const scenarios::Grid& grid) {
  const std::string out = vm.count("out") ? vm["out"].as<std::string>() : !grid.out.empty() ? grid.out : "sweep.csv";
  tools::SweepOptions o;
  o.jobs = vm.count("jobs") ? vm["jobs"].as<int>() : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (o.jobs < 1) throw UsageError("--jobs must be at least 1");
  if (vm.count("set")) o.sets = vm["set"].as<std::vector<std::string>>();
  if (vm.count("reports")) o.reports = vm["reports"].as<std::string>();
  const bool bar = !vm.count("quiet") && ::isatty(STDERR_FILENO) != 0;
  const auto t0 = std::chrono::steady_clock::now();
  std::mutex draw;
  // Into a log or a pipe (no terminal): a line at most once a minute, so that a long sweep run
  // in the background says how far it is without filling its log.
  double last_line = 0;
  const double every = progress_every();
  o.progress = [&](std::size_t done, std::size_t total, std::size_t ran) {
    if (vm.count("quiet")) return;
    const std::lock_guard<std::mutex> g(draw);
    // The rate from the points this run has finished (rows of an earlier run are not timed).
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string left =
        done < total && ran > 0 ? fmt::format(", about {:.0f} s left", elapsed / static_cast<double>(ran) * static_cast<double>(total - done))
                                : std::string();
    if (!bar) {
      if (elapsed - last_line < every || done == total) return;
      last_line = elapsed;
      fmt::print(stderr, "  sweeping    {}/{} points, {:.0f} s elapsed{}\n", done, total, elapsed, left);
      std::fflush(stderr);
      return;
    }
    const double share = static_cast<double>(done) / static_cast<double>(total);
    const int width = 30, filled = static_cast<int>(share * width);
    fmt::print(stderr, "\r  sweeping    [{}{}] {}/{} points, {:.0f} s elapsed{}   ",
               std::string(static_cast<std::size_t>(filled), '='), std::string(static_cast<std::size_t>(width - filled), ' '),
               done, total, elapsed, left);
    std::fflush(stderr);
  };
  int rank = 0;
  const bool mpi = tools::launched_under_mpi();
  tools::SweepResult r;
  try {
    r = mpi ? tools::run_sweep_mpi(grid, out, o, &rank) : tools::run_sweep(grid, out, o);
  } catch (...) {
    if (rank != 0) throw QuietRank{0};
    throw;
  }
  if (bar) fmt::print(stderr, "\r{}\r", std::string(100, ' '));
  if (!vm.count("quiet") && rank == 0) {
    fmt::print("moesim: {} points ({} from an earlier run, {} run now{}{}{}) of {}; wrote {} ({:.1f} s)\n", r.points, r.already,
               r.ran, mpi ? fmt::format(" over {} MPI ranks", r.ranks) : "",
               r.skipped > 0 ? fmt::format(", {} of them skipped (the grid's skip)", r.skipped) : "",
               r.simulations > 0 && r.simulations < r.ran - r.skipped
                   ? fmt::format(" in {} simulations: points that differ only in reliability.*, cluster.power, cluster.gpu_hour_price or workload.train_tokens share one", r.simulations)
                   : "",
               grid.source, out,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (r.stale > 0)
      fmt::print("moesim: {} {} of the earlier run {} for other settings (the base scenario, --set, the axes, the grid's skip, "
                 "the kernel profile or traces the points read, or the moesim build changed) and ran again\n",
                 r.stale, r.stale == 1 ? "row" : "rows", r.stale == 1 ? "was" : "were");
    if (r.infeasible > 0)
      fmt::print("moesim: {} of {} points do not fit the GPUs' memory (fits_memory=no; infeasible_reason says why){}\n",
                 r.infeasible, r.points,
                 r.unfit > 0 ? fmt::format("; {} of them not simulated (skip: unfit): too much whatever the routing", r.unfit)
                             : "");
    if (r.invalid > 0)
      fmt::print("moesim: {} of {} points are invalid and were not run (skip: invalid; infeasible_reason says why)\n", r.invalid,
                 r.points);
  }
  return {rank, out};
}

int cmd_sweep(const std::vector<std::string>& args) {
  po::options_description opts("sweep options");
  add_sweep_options(opts);
  const auto vm = parse_command(args, opts, "grid", 1);
  if (!vm.count("grid")) throw UsageError("sweep needs a grid file");
  sweep(vm, scenarios::load_grid(vm["grid"].as<std::string>()));
  return 0;
}

void add_plan_options(po::options_description& opts) {
  opts.add_options()("target,t", po::value<std::vector<std::string>>()->composing(),
                     "METRIC>=VALUE, METRIC<=VALUE or METRIC=VALUE (repeatable)")(
      "minimize", po::value<std::string>(), "the metric to minimize (cost, latency, gpus, memory, a column)")(
      "maximize", po::value<std::string>(), "the metric to maximize (tokens/s, mfu, a column)")(
      "top", po::value<std::size_t>(), "also rank the N best points that qualify, in a table");
}

// plan's and search's choice: the objective (default: the most tokens/s), the targets, the
// ranking's length. Parsed before anything runs, so that a bad one fails first.
struct PlanAsk {
  bool minimize = false;
  tools::Metric objective;
  std::vector<tools::Target> targets;
  std::size_t top = 0;
};
PlanAsk plan_ask(const po::variables_map& vm, std::size_t default_top) {
  PlanAsk a;
  a.minimize = vm.count("minimize") > 0;
  a.objective = tools::parse_metric(a.minimize ? vm["minimize"].as<std::string>()
                                    : vm.count("maximize") ? vm["maximize"].as<std::string>()
                                                           : std::string("tokens/s"));
  if (vm.count("target"))
    for (const auto& t : vm["target"].as<std::vector<std::string>>()) a.targets.push_back(tools::parse_target(t));
  a.top = vm.count("top") ? vm["top"].as<std::size_t>() : default_top;
  return a;
}

// plan's second half, also search's: the sweep of the grid, the choice, the ranking.
int plan_grid(const po::variables_map& vm, const scenarios::Grid& grid, const PlanAsk& ask) {
  const auto [rank, out] = sweep(vm, grid);
  if (rank != 0) return 0;
  std::ifstream in(out, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto choice = tools::choose_point(text, ask.targets, ask.objective, ask.minimize, grid.axes, ask.top);
  fmt::print("\n{}\n", choice.explanation);
  if (!choice.table.empty()) fmt::print("\n{}", choice.table);
  return choice.best ? 0 : 3;
}

int cmd_plan(const std::vector<std::string>& args) {
  po::options_description opts("plan options");
  add_sweep_options(opts);
  add_plan_options(opts);
  const auto vm = parse_command(args, opts, "grid", 1);
  if (!vm.count("grid")) throw UsageError("plan needs a grid file");
  if (vm.count("minimize") == vm.count("maximize")) throw UsageError("plan needs one of --minimize METRIC or --maximize METRIC");
  const PlanAsk ask = plan_ask(vm, 0);  // bad targets and metrics fail before anything runs
  return plan_grid(vm, scenarios::load_grid(vm["grid"].as<std::string>()), ask);
}

int cmd_search(const std::vector<std::string>& args) {
  po::options_description opts("search options");
  add_sweep_options(opts);
  add_plan_options(opts);
  opts.add_options()("scenario", po::value<std::string>(), "scenario file")(
      "vary", po::value<std::string>(), "dimensions to search, comma-separated: tp, pp, ep, vp, zero, cp, batch, sched, recompute, etp, shard, sync, a2a, nodes, gpu, nic, fabric (default: all that apply but the last twelve)")(
      "global-batch", po::value<std::int64_t>(), "training: the sequences a step takes at every point (default: the scenario's)");
  const auto vm = parse_command(args, opts, "scenario", 1);
  if (!vm.count("scenario")) throw UsageError("search needs a scenario file");
  if (vm.count("minimize") && vm.count("maximize")) throw UsageError("search takes one of --minimize METRIC or --maximize METRIC (default: --maximize tokens/s)");
  const PlanAsk ask = plan_ask(vm, 10);  // bad targets and metrics fail before the grid is written
  std::vector<std::string> vary;
  if (vm.count("vary")) {
    std::stringstream list(vm["vary"].as<std::string>());
    for (std::string d; std::getline(list, d, ',');)
      if (!d.empty()) vary.push_back(d);
  }
  const std::int64_t global_batch = vm.count("global-batch") ? vm["global-batch"].as<std::int64_t>() : 0;
  if (vm.count("global-batch") && global_batch < 1) throw UsageError("--global-batch must be at least 1");
  const std::string path = vm["scenario"].as<std::string>();
  const scenarios::Scenario sc = scenarios::load_scenario_file(path, vm.count("set") ? vm["set"].as<std::vector<std::string>>()
                                                                                        : std::vector<std::string>{});
  const tools::SearchSpace space = tools::search_space(sc, vary, global_batch);
  // The grid, beside the output: SEARCH.csv and SEARCH-grid.yaml (base: the scenario's absolute path).
  const std::string out = vm.count("out") ? vm["out"].as<std::string>() : "search.csv";
  const std::string stem = out.size() > 4 && out.ends_with(".csv") ? out.substr(0, out.size() - 4) : out;
  const std::string grid_file = stem + "-grid.yaml";
  if (const auto parent = std::filesystem::path(grid_file).parent_path(); !parent.empty()) std::filesystem::create_directories(parent);
  tools::write_atomically(grid_file, [&](std::ostream& o) { o << tools::search_grid_yaml(space, std::filesystem::absolute(path).string()); });
  if (!vm.count("quiet")) fmt::print("moesim: searching {} ({}; {})\n", path, space.note, grid_file);
  if (!space.caution.empty()) {
    std::fflush(stdout);
    fmt::print(stderr, "moesim: search: note: {}\n", space.caution);
  }
  scenarios::Grid grid = scenarios::load_grid(grid_file);
  grid.out = out;
  return plan_grid(vm, grid, ask);
}
int cmd_gpus(const std::vector<std::string>& args) {
  if (!args.empty()) throw UsageError(fmt::format("gpus takes no arguments, got '{}'", args.front()));
  const auto tflops = [](sim::FlopRate r) {
    return r.flop_per_s() > 0 ? fmt::format("{:g}", static_cast<double>(r.flop_per_s()) / 1e12) : std::string("-");
  };
  const auto gbps = [](sim::Bandwidth b) { return fmt::format("{:g}", static_cast<double>(b.bytes_per_s()) / 1e9); };
  fmt::print("GPU presets for cluster.gpu (dense peaks in TFLOP/s; bandwidths per direction; sources in topology/gpu_spec.cpp)\n");
  fmt::print("{:<9} {:>7} {:>7} {:>8} {:>9} {:>7}  {:<31} {:>7} {:>6}\n", "name", "BF16", "FP8", "FP4", "HBM GB/s", "memory",
             "node fabric", "SMs/CUs", "power");
  for (const auto& name : topology::gpu_preset_names()) {
    const topology::GpuSpec& g = *topology::find_gpu_preset(name);
    const std::string fabric = g.fabric == topology::NodeFabric::mesh
                                   ? fmt::format("mesh, {} links of {} GB/s", g.peer_links, gbps(g.link_bandwidth))
                                   : fmt::format("NVSwitch, {} GB/s a GPU", gbps(g.nvlink_bandwidth));
    fmt::print("{:<9} {:>7} {:>7} {:>8} {:>9} {:>7}  {:<31} {:>7} {:>6}\n", g.name, tflops(g.peak_bf16), tflops(g.peak_fp8),
               tflops(g.peak_fp4), gbps(g.memory_bandwidth), fmt::format("{:g} GB", static_cast<double>(g.memory.count()) / 1e9), fabric, g.sm_count,
               fmt::format("{:g} W", g.board_power_w));
  }
  return 0;
}

// moesim model CONFIG.json: the model section a Hugging Face config.json gives (model.hf_config),
// each key with the config key it came from, what moesim leaves out, and the parameter counts.
int cmd_model(const std::vector<std::string>& args) {
  po::options_description opts("model options");
  opts.add_options()("workload", po::value<std::string>()->default_value("forward"), "the workload kind the keys are for");
  po::options_description all;
  all.add(opts).add_options()("config", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("config", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
  po::notify(vm);
  if (!vm.count("config")) throw UsageError("model needs a model's config.json");
  const std::string file = vm["config"].as<std::string>();
  const std::string kind = vm["workload"].as<std::string>();
  if (kind != "forward" && kind != "prefill" && kind != "training" && kind != "decode")
    throw UsageError(fmt::format("--workload: expected forward, prefill, training or decode, got '{}'", kind));
  scenarios::HfModel hf;
  try {
    hf = scenarios::read_hf_model(file, kind);
  } catch (const scenarios::HfConfigError& e) {
    throw scenarios::ScenarioError({e.what()});
  }
  // The counts come from the scenario loader, as a run would read the file.
  std::string quoted = file;
  for (std::size_t i = 0; (i = quoted.find('\'', i)) != std::string::npos; i += 2) quoted.insert(i, 1, '\'');
  const scenarios::Scenario sc = scenarios::load_scenario_text(
      fmt::format("cluster: {{nodes: 1, gpus_per_node: 1, gpu: H100-SXM}}\nmodel: {{hf_config: '{}'}}\nparallelism: {{ep: 1}}\n"
                  "workload: {{kind: forward, tokens_per_gpu: 1}}\n",
                  quoted),
      "moesim model");
  const auto& m = sc.forward.model;
  const models::ModelParams params = models::model_params(m);
  fmt::print("# {} ({}), for {}: {:.2f} B parameters, {:.2f} B active per token (the embedding aside){}\n", file,
             hf.model_type.empty() ? "no model_type" : hf.model_type, kind, static_cast<double>(params.total) / 1e9,
             static_cast<double>(params.active) / 1e9,
             m.mtp_modules == 0 ? std::string()
                                : fmt::format("; {:.2f} B in {} MTP module{}", static_cast<double>(params.mtp) / 1e9, m.mtp_modules,
                                              m.mtp_modules > 1 ? "s" : ""));
  const int layers = m.dense_layers + m.moe_layers, linear = routing::linear_layers(m, 0, layers);
  fmt::print("# KV cache: {} bytes a token and layer at model.dtype{}\n", routing::kv_cache_token_bytes(m),
             m.sliding_window > 0 ? fmt::format(" (sliding layers keep {} tokens)", m.sliding_window)
             : linear > 0         ? fmt::format(" on its {} full-attention layers; its {} linear layers keep a {} byte state a sequence instead",
                                                layers - linear, linear, routing::linear_state_bytes(m))
                                  : std::string());
  fmt::print("# In a scenario: `model: {{hf_config: {}}}` reads these keys; keys written beside it win.\n", file);
  std::cout << scenarios::hf_model_yaml(hf);
  return 0;
}

int cmd_diff(const std::vector<std::string>& args) {
  po::options_description opts("diff options");
  opts.add_options()("runs", po::value<std::vector<std::string>>(), "two run output directories or summary.csv files")(
      "all", "also every other column that differs");
  const auto vm = parse_command(args, opts, "runs", 2);
  const auto runs = vm.count("runs") ? vm["runs"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (runs.size() != 2) throw UsageError("diff needs two runs: moesim diff A B (output directories or summary.csv files)");
  tools::diff_summaries(runs[0], runs[1], vm.count("all") > 0, std::cout);
  return 0;
}

// A rate as the user wrote it: a number, with an optional /day or /h suffix (608e9/day).
double parse_rate(const std::string& option, const std::string& text) {
  std::string number = text;
  double per = 1;
  for (const auto& [suffix, seconds] : {std::pair{std::string("/day"), 86400.0}, std::pair{std::string("/h"), 3600.0}})
    if (number.size() > suffix.size() && number.ends_with(suffix)) {
      number.resize(number.size() - suffix.size());
      per = seconds;
    }
  std::size_t used = 0;
  double x = 0;
  try {
    x = std::stod(number, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != number.size() || number.empty())
    throw UsageError(fmt::format("--{}: expected a number of tokens a second (or with /h or /day, e.g. 608e9/day), got '{}'", option, text));
  return x / per;
}

// A run's summary.csv (or a sweep's CSV) as rows of column -> value.
std::vector<std::map<std::string, std::string>> read_rows(const std::string& path) {
  std::ifstream in(path);
  std::string header, line;
  std::getline(in, header);
  const auto h = tools::csv_fields(header);
  std::vector<std::map<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto v = tools::csv_fields(line);
    std::map<std::string, std::string> row;
    for (std::size_t i = 0; i < h.size() && i < v.size(); ++i) row[h[i]] = v[i];
    rows.push_back(std::move(row));
  }
  return rows;
}

// The decode at the load: the chosen scenario (or grid point: `base` with `sets`) run again at the
// sequences a GPU the load keeps decoding (sequences decoding at once over the GPUs, rounded up,
// and to an even count with two-batch overlap), where that is fewer than its own: the time per
// token the deployment sees, every unit equally loaded. Into OUT/decode-at-load/. Nothing where
// the load fills the batch, or the smaller batch is not a scenario of its own.
struct DecodeAtLoad {
  std::int64_t sequences = 0;  // 0: not run
  double time_per_token_us = 0;
  std::string note;
};
DecodeAtLoad decode_at_load(const std::string& base, std::vector<std::string> sets, const scenarios::Scenario& chosen,
                            double sequences_per_gpu, const std::string& dir, bool quiet, std::vector<std::string>& written) {
  DecodeAtLoad a;
  auto n = static_cast<std::int64_t>(std::ceil(sequences_per_gpu - 1e-9));
  if (chosen.forward.two_batch_overlap) n += n % 2;
  n = std::max<std::int64_t>(n, chosen.forward.two_batch_overlap ? 2 : 1);
  if (n >= chosen.forward.sequences()) return a;
  sets.push_back(fmt::format("workload.tokens_per_gpu={}", n));
  try {
    const auto sc = scenarios::load_scenario_file(base, sets);
    if (!quiet) fmt::print(stderr, "  simulating  the decode at the load, {} sequences a GPU\n", n);
    const auto result = simulate(sc, quiet);
    const std::string out_dir = dir + "/decode-at-load";
    tools::write_reports(out_dir, sc, result);
    written.push_back(out_dir + "/");
    a.sequences = n;
    a.time_per_token_us = std::stod(read_rows(out_dir + "/summary.csv").at(0).at("time_per_token_us"));
  } catch (const scenarios::ScenarioError& e) {
    a.note = fmt::format("the decode at the load's {} sequences a GPU is not a scenario of its own: {}", n, e.what());
  }
  return a;
}

// moesim serve --colocated: one decode scenario with a prefill chunk, or a grid of them.
int serve_colocated(const std::string& file, const std::vector<std::string>& sets, const tools::ServeTraffic& traffic, double tpot_us,
                    double ttft_us, int percentile, const tools::ServeSpares& spares, int jobs, const std::string& dir, bool quiet) {
  std::vector<std::string> written;
  std::vector<tools::ServeUnit> candidates;
  std::vector<scenarios::Scenario> candidate_scenario;  // each candidate's scenario (a grid's point)
  std::vector<std::size_t> candidate_point;             // a grid's point of each candidate
  std::size_t skipped = 0, unchunked = 0;
  const bool grid = scenarios::is_grid_file(file);
  const std::optional<scenarios::Grid> g = grid ? std::optional<scenarios::Grid>(scenarios::load_grid(file)) : std::nullopt;
  const std::vector<std::vector<std::string>> points = grid ? g->points() : std::vector<std::vector<std::string>>{};
  const std::string base = grid ? g->base : file;
  // A candidate's settings: --set's, then its grid point's.
  const auto point_sets = [&](std::size_t c) {
    auto v = sets;
    if (grid) v.insert(v.end(), points.at(candidate_point[c]).begin(), points.at(candidate_point[c]).end());
    return v;
  };
  if (grid) {
    std::vector<std::optional<scenarios::Scenario>> scenario_of(points.size());
    for (std::size_t i = 0; i < points.size(); ++i) {
      auto v = sets;
      v.insert(v.end(), points[i].begin(), points[i].end());
      try {
        scenario_of[i] = scenarios::load_scenario_file(base, v);
      } catch (const scenarios::ScenarioError&) {
        if (!g->skip_invalid) throw;
      }
      // A point without a chunk (a sweep's baseline) runs, but is no colocated unit.
      if (scenario_of[i] && scenario_of[i]->workload_kind == "decode" && scenario_of[i]->forward.prefill_chunk == 0) continue;
      if (scenario_of[i]) tools::check_colocated_scenario(*scenario_of[i]);
    }
    const std::string csv = dir + "/colocated-sweep.csv";
    if (!quiet) fmt::print(stderr, "  sweeping    the grid {}, {} points\n", file, points.size());
    tools::SweepOptions o;
    o.jobs = jobs;
    o.sets = sets;
    if (!quiet) o.progress = [](std::size_t done, std::size_t total, std::size_t) { fmt::print(stderr, "  points      {} of {}\n", done, total); };
    tools::run_sweep(*g, csv, o);
    // A point's decode alone: the grid's point with the same values but a chunk of 0, where it has one.
    const auto without_chunk = [](const std::vector<std::string>& point) {
      std::vector<std::string> rest;
      for (const auto& v : point)
        if (!v.starts_with("workload.prefill_chunk=") && !v.starts_with("workload.sequence_length=")) rest.push_back(v);
      return rest;
    };
    std::map<std::vector<std::string>, double> decode_alone;
    const auto rows = read_rows(csv);
    for (const auto& row : rows) {
      if (const auto& why = row.at("infeasible_reason"); why.starts_with("invalid: ") || why.starts_with("not simulated: ")) continue;
      const std::size_t i = std::stoul(row.at("point"));
      if (scenario_of.at(i)->forward.prefill_chunk == 0) decode_alone[without_chunk(points.at(i))] = std::stod(row.at("step_time_us"));
    }
    for (const auto& row : rows) {
      if (const auto& why = row.at("infeasible_reason"); why.starts_with("invalid: ") || why.starts_with("not simulated: ")) {
        ++skipped;
        continue;
      }
      const std::size_t i = std::stoul(row.at("point"));
      if (scenario_of.at(i)->forward.prefill_chunk == 0) {
        ++unchunked;
        continue;
      }
      auto unit = tools::serve_unit(*scenario_of.at(i), row, false);
      std::string values;
      for (const auto& v : points.at(i)) values += (values.empty() ? "" : ", ") + v;
      unit.point = fmt::format("point {} of {} ({})", i, file, values);
      if (const auto it = decode_alone.find(without_chunk(points.at(i))); it != decode_alone.end()) unit.decode_only_step_us = it->second;
      candidates.push_back(unit);
      candidate_scenario.push_back(*scenario_of[i]);
      candidate_point.push_back(i);
    }
    written.push_back(csv);
  } else {
    const auto sc = scenarios::load_scenario_file(file, sets);
    tools::check_colocated_scenario(sc);
    if (!quiet) fmt::print(stderr, "  simulating  the scenario, {}\n", sc.source);
    const auto result = simulate(sc, quiet);
    tools::write_reports(dir + "/colocated", sc, result);
    candidates.push_back(tools::serve_unit(sc, read_rows(dir + "/colocated/summary.csv").at(0), false));
    candidate_scenario.push_back(sc);
    candidate_point.push_back(0);
    written.push_back(dir + "/colocated/");
  }
  // Candidate c's scenario with settings more, run into OUT/NAME (a grid point into
  // point-NNNN below it): its summary.csv row. Throws ScenarioError where that is no scenario.
  const auto run_variant = [&](std::size_t c, const std::vector<std::string>& more, const std::string& name, const std::string& what) {
    auto v = point_sets(c);
    v.insert(v.end(), more.begin(), more.end());
    const auto sc = scenarios::load_scenario_file(base, v);
    const std::string out_dir = dir + "/" + name + (grid ? fmt::format("/point-{:04d}", candidate_point[c]) : std::string());
    if (!quiet)
      fmt::print(stderr, "  simulating  {} {}\n", grid ? fmt::format("point {}", candidate_point[c]) : std::string("the scenario"), what);
    const auto result = simulate(sc, quiet);
    tools::write_reports(out_dir, sc, result);
    written.push_back(out_dir + "/");
    return read_rows(out_dir + "/summary.csv").at(0);
  };
  // A later chunk attends to more keys: a candidate's scenario (point) at twice its prompts'
  // length, the chunk kept, gives what each position past the chunk's mean adds to a step
  // (ServeUnit::position_us). Run for the chosen point, and under a TTFT target for every point
  // a grid offers within --tpot (each sized by its own queue), before choosing.
  std::vector<char> position_known(candidates.size(), 0);
  const auto position_of = [&](std::size_t c) {
    position_known[c] = 1;
    const std::int64_t length = candidates[c].prompt_tokens;
    try {
      const double longer = std::stod(
          run_variant(c, {fmt::format("workload.sequence_length={}", 2 * length)}, "prompts-twice-as-long", "at twice its prompts' length")
              .at("step_time_us"));
      const double server_chunk = static_cast<double>(candidates[c].prefill_chunk * std::max(1, candidates[c].tp));
      candidates[c].position_us = std::max(0.0, 2 * (longer - candidates[c].step_us) / (server_chunk * static_cast<double>(length)));
    } catch (const scenarios::ScenarioError& e) {
      if (!quiet) fmt::print(stderr, "  note        twice the prompts' length is not a scenario of its own ({}): a chunk's cost is the "
                                     "scenario's wherever it stands in its prompt\n", e.what());
    }
  };
  // The decode alone, for the steps whose chunks are not full, where the grid has no chunkless
  // twin: the candidate's scenario (point) without the chunk (and without prompts of another
  // length than the context's, which only the chunk uses).
  const auto decode_alone_of = [&](std::size_t c) {
    candidates[c].decode_only_step_us =
        std::stod(run_variant(c, {"workload.prefill_chunk=0", "workload.sequence_length=~"}, "decode-alone", "without its prefill chunk")
                      .at("step_time_us"));
  };
  if (grid && ttft_us > 0)
    for (std::size_t c = 0; c < candidates.size(); ++c)
      if (candidates[c].fits && (tpot_us <= 0 || candidates[c].time_per_token_us <= tpot_us)) {
        if (candidates[c].decode_only_step_us <= 0) decode_alone_of(c);
        position_of(c);
      }
  tools::ServeChoice choice;
  if (grid) {
    std::vector<tools::ColocatedPoint> seen;
    choice = tools::choose_colocated(candidates, traffic, tpot_us, ttft_us, percentile,
                                     candidate_scenario.empty() ? 1 : candidate_scenario.front().forward.seed, &seen);
    const std::string points_csv = dir + "/colocated-points.csv";
    tools::write_atomically(points_csv, [&](std::ostream& out) { tools::write_colocated_points_csv(out, candidates, seen); });
    written.push_back(points_csv);
    if (skipped > 0)
      choice.explanation += fmt::format(" ({} more of the grid's points were skipped without running: its sweep's rows say why)", skipped);
    if (unchunked > 0)
      choice.explanation += fmt::format(" ({} point{} without a prefill chunk ran as the sweep's baseline, not as units)", unchunked,
                                        unchunked == 1 ? "" : "s");
    if (!choice.best) {
      fmt::print("moesim serve: no point of {} can serve the traffic: {}\n", file, choice.explanation);
      return 3;
    }
  } else {
    const auto& u = candidates.front();
    if (!u.fits) {
      fmt::print("moesim serve: {} does not fit the GPUs' memory ({:.1f} GB of {:.0f} GB)\n", u.source, u.memory_gb, u.gpu_memory_gb);
      return 3;
    }
    if (tpot_us > 0 && u.time_per_token_us > tpot_us) {
      fmt::print("moesim serve: {} takes {:.3f} ms a token with its prefill chunk, over the target of {:.3f} ms\n", u.source,
                 u.time_per_token_us / 1e3, tpot_us / 1e3);
      return 3;
    }
    choice.best = 0;
  }
  const std::size_t best = *choice.best;
  if (candidates[best].decode_only_step_us <= 0) decode_alone_of(best);
  if (!position_known[best]) position_of(best);
  tools::ColocatedPlan plan =
      tools::plan_colocated(traffic, candidates[best], ttft_us, percentile, candidate_scenario[best].forward.seed, spares);
  plan.choice = choice.explanation;
  if (!plan.ttft_met) {
    fmt::print("moesim serve: no count of units meets the time to first token: p{} within {:.4g} ms; at {} units ({} for the load) it "
               "is {:.4g} ms, and a prompt alone takes {:.4g} ms of steps\n",
               percentile, ttft_us / 1e3, plan.queue.units, plan.units_for_load, plan.queue.percentile_us(percentile) / 1e3,
               plan.queue.alone_us / 1e3);
    return 3;
  }
  const DecodeAtLoad a = decode_at_load(base, point_sets(best), candidate_scenario[best], plan.sequences_decoding / plan.gpus, dir, quiet,
                                        written);
  plan.at_load_sequences = a.sequences;
  plan.at_load_time_per_token_us = a.time_per_token_us;
  plan.at_load_note = a.note;
  const std::string csv = dir + "/serve.csv";
  tools::write_atomically(csv, [&](std::ostream& out) { tools::write_colocated_csv(out, plan); });
  written.insert(written.begin(), csv);
  if (!quiet) tools::print_colocated(std::cout, plan, written);
  return 0;
}

int cmd_serve(const std::vector<std::string>& args) {
  po::options_description opts("serve options");
  opts.add_options()("scenarios", po::value<std::vector<std::string>>(), "the prefill and the decode scenario (or grid)")(
      "input-tokens-per-s", po::value<std::string>(), "prompt tokens arriving a second, KV-cache hits included")(
      "output-tokens-per-s", po::value<std::string>(), "tokens generated a second")(
      "cache-hit-rate", po::value<double>()->default_value(0), "share of prompt tokens whose KV cache is found")(
      "ttft", po::value<std::string>(), "the time to a prompt's first token within this (e.g. 2s), at --ttft-percentile")(
      "ttft-percentile", po::value<int>()->default_value(99), "the TTFT percentile the target is for: 50, 90 or 99")(
      "prompt-length-sigma", po::value<double>(), "the prompts' lengths log-normal around the prefill scenario's, this spread of their log")(
      "prompt-lengths", po::value<std::string>(), "FILE: the prompts' lengths (tokens to prefill), one a line, drawn at random")(
      "prefill-router", po::value<std::string>()->default_value("round_robin"),
      "how prompts reach the prefill units: round_robin (in turn) or least_work (to the unit with the least work on hand)")(
      "tpot", po::value<std::string>(), "the decode time per output token within this (e.g. 50ms)")(
      "gpu-mtbf-hours", po::value<double>(), "spare units for failures: the hours between a GPU's failures (with --repair-time)")(
      "repair-time", po::value<std::string>(), "how long a failed unit is out (e.g. 4h)")(
      "availability", po::value<double>()->default_value(0.999), "the share of time the load's units must be up (with --gpu-mtbf-hours)")(
      "prefill-set", po::value<std::vector<std::string>>()->composing(), "KEY.PATH=VALUE for the prefill scenario")(
      "decode-set", po::value<std::vector<std::string>>()->composing(), "KEY.PATH=VALUE for the decode scenario")(
      "jobs,j", po::value<int>()->default_value(1), "grid points run at once")(
      "out,o", po::value<std::string>()->default_value("moesim-out/serve"), "output directory")(
      "colocated", "one decode scenario (or grid) whose steps prefill prompts too (workload.prefill_chunk): colocated serving")(
      "set", po::value<std::vector<std::string>>()->composing(), "KEY.PATH=VALUE for the --colocated scenario")(
      "quiet,q", "print nothing on success");
  const auto vm = parse_command(args, opts, "scenarios", 2);
  const auto files = vm.count("scenarios") ? vm["scenarios"].as<std::vector<std::string>>() : std::vector<std::string>{};
  const bool colocated = vm.count("colocated") > 0;
  if (colocated) {
    if (files.size() != 1)
      throw UsageError("serve --colocated needs one scenario: moesim serve --colocated SCENARIO.yaml --input-tokens-per-s I "
                       "--output-tokens-per-s O");
    for (const char* other : {"prefill-set", "decode-set"})
      if (vm.count(other))
        throw UsageError(fmt::format("--{} is for disaggregated serving (two scenarios); with --colocated --set changes the scenario",
                                     other));
  } else if (vm.count("set")) {
    throw UsageError("--set goes with --colocated; with two scenarios use --prefill-set and --decode-set");
  }
  if (!colocated && files.size() != 2)
    throw UsageError("serve needs two scenarios: moesim serve PREFILL.yaml DECODE.yaml --input-tokens-per-s I --output-tokens-per-s O");
  for (const char* need : {"input-tokens-per-s", "output-tokens-per-s"})
    if (!vm.count(need)) throw UsageError(fmt::format("serve needs --{}", need));
  tools::ServeTraffic traffic;
  traffic.input_tokens_per_s = parse_rate("input-tokens-per-s", vm["input-tokens-per-s"].as<std::string>());
  traffic.output_tokens_per_s = parse_rate("output-tokens-per-s", vm["output-tokens-per-s"].as<std::string>());
  traffic.cache_hit_rate = vm["cache-hit-rate"].as<double>();
  if (vm.count("prompt-length-sigma")) traffic.prompt_length_sigma = vm["prompt-length-sigma"].as<double>();
  if (vm.count("prompt-lengths")) {
    traffic.prompt_lengths_source = vm["prompt-lengths"].as<std::string>();
    traffic.prompt_lengths = tools::read_prompt_lengths(traffic.prompt_lengths_source);
  }
  if (const std::string router = vm["prefill-router"].as<std::string>(); router == "least_work")
    traffic.prefill_router = tools::PrefillRouter::least_work;
  else if (router != "round_robin")
    throw UsageError(fmt::format("--prefill-router must be round_robin or least_work, got '{}'", router));
  tools::check_traffic(traffic);
  const auto target = [&](const char* name) {
    if (!vm.count(name)) return 0.0;
    const std::string text = vm[name].as<std::string>();
    try {
      const double us = static_cast<double>(sim::parse_time(text).count_ps()) / 1e6;
      if (us > 0) return us;
    } catch (const std::exception&) {
    }
    throw UsageError(fmt::format("--{}: expected a time > 0 with its unit (e.g. 2s, 50ms), got '{}'", name, text));
  };
  const int jobs = vm["jobs"].as<int>();
  if (jobs < 1) throw UsageError("--jobs must be at least 1");
  const std::string dir = vm["out"].as<std::string>();
  const bool quiet = vm.count("quiet") > 0;
  // Spare units for failures: checked before anything runs.
  tools::ServeSpares spares;
  if (vm.count("gpu-mtbf-hours")) {
    spares.gpu_mtbf_hours = vm["gpu-mtbf-hours"].as<double>();
    if (!(spares.gpu_mtbf_hours > 0)) throw UsageError(fmt::format("--gpu-mtbf-hours must be greater than 0, got {}", spares.gpu_mtbf_hours));
    if (!vm.count("repair-time")) throw UsageError("--gpu-mtbf-hours needs --repair-time (how long a failed unit is out, e.g. 4h)");
    spares.repair_s = target("repair-time") / 1e6;
    spares.availability = vm["availability"].as<double>();
    if (!(spares.availability > 0 && spares.availability < 1))
      throw UsageError(fmt::format("--availability must be between 0 and 1 (e.g. 0.999), got {}", spares.availability));
  } else if (vm.count("repair-time") || !vm["availability"].defaulted()) {
    throw UsageError("--repair-time and --availability go with --gpu-mtbf-hours");
  }

  const int percentile_given = vm["ttft-percentile"].as<int>();
  if (percentile_given != 50 && percentile_given != 90 && percentile_given != 99)
    throw UsageError(fmt::format("--ttft-percentile must be 50, 90 or 99, got {}", percentile_given));
  if (colocated)
    return serve_colocated(files[0], vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{}, traffic,
                           target("tpot"), target("ttft"), percentile_given, spares, jobs, dir, quiet);

  // Each side: a scenario, or a grid whose points are its candidates. Every scenario and point is
  // read, and its kind checked, before anything runs.
  struct Side {
    bool prefill;
    std::string name, file;
    std::vector<std::string> sets;
    double load, target_us;
    std::optional<scenarios::Grid> grid;
    std::vector<scenarios::Scenario> scenarios;  // the scenario, or each point's
  };
  const auto sets = [&](const char* name) {
    return vm.count(name) ? vm[name].as<std::vector<std::string>>() : std::vector<std::string>{};
  };
  std::vector<Side> sides = {
      {true, "prefill", files[0], sets("prefill-set"), traffic.input_tokens_per_s * (1 - traffic.cache_hit_rate), target("ttft"), {}, {}},
      {false, "decode", files[1], sets("decode-set"), traffic.output_tokens_per_s, target("tpot"), {}, {}}};
  for (auto& side : sides) {
    if (scenarios::is_grid_file(side.file)) {
      side.grid = scenarios::load_grid(side.file);
      for (const auto& point : side.grid->points()) {
        auto point_sets = side.sets;
        point_sets.insert(point_sets.end(), point.begin(), point.end());
        try {
          side.scenarios.push_back(scenarios::load_scenario_file(side.grid->base, point_sets));
          tools::check_serve_scenario(side.scenarios.back(), side.prefill);
        } catch (const scenarios::ScenarioError&) {
          if (!side.grid->skip_invalid) throw;
          side.scenarios.emplace_back();  // refused by the rules: the sweep's row says why, not a candidate
        }
      }
    } else {
      side.scenarios.push_back(scenarios::load_scenario_file(side.file, side.sets));
      tools::check_serve_scenario(side.scenarios.back(), side.prefill);
    }
  }

  const int percentile = percentile_given;

  std::vector<std::string> written;
  std::vector<tools::ServeUnit> chosen;
  std::vector<std::string> notes;
  std::string decode_base;  // the chosen decode scenario (a grid's point: its base and sets)
  std::vector<std::string> decode_sets;
  scenarios::Scenario decode_scenario;
  tools::PrefillBatchTime batch;
  std::string batch_note;
  std::uint64_t seed = 1;
  for (auto& side : sides) {
    std::vector<tools::ServeUnit> candidates;
    std::vector<std::size_t> candidate_point;
    std::size_t skipped = 0;  // a grid's points its skip kept from running
    if (side.grid) {
      const std::string csv = dir + "/" + side.name + "-sweep.csv";
      const auto points = side.grid->points();
      if (!quiet) fmt::print(stderr, "  sweeping    the {} grid {}, {} points\n", side.name, side.file, points.size());
      tools::SweepOptions o;
      o.jobs = jobs;
      o.sets = side.sets;
      if (!quiet)
        o.progress = [](std::size_t done, std::size_t total, std::size_t) { fmt::print(stderr, "  points      {} of {}\n", done, total); };
      tools::run_sweep(*side.grid, csv, o);
      for (const auto& row : read_rows(csv)) {
        // Points the grid skipped (skip: invalid, unfit) ran nothing: not candidates.
        if (const auto& why = row.at("infeasible_reason"); why.starts_with("invalid: ") || why.starts_with("not simulated: ")) {
          ++skipped;
          continue;
        }
        const std::size_t i = std::stoul(row.at("point"));
        auto unit = tools::serve_unit(side.scenarios.at(i), row, side.prefill);
        std::string values;
        for (const auto& v : points.at(i)) values += (values.empty() ? "" : ", ") + v;
        unit.point = fmt::format("point {} of {} ({})", i, side.file, values);
        candidates.push_back(unit);
        candidate_point.push_back(i);
      }
      written.push_back(csv);
    } else {
      const auto& sc = side.scenarios.front();
      if (!quiet) fmt::print(stderr, "  simulating  the {} scenario, {}\n", side.name, sc.source);
      const auto result = simulate(sc, quiet);
      tools::write_reports(dir + "/" + side.name, sc, result);
      // The plan reads the run's summary.csv as written, so its figures are the report's.
      candidates.push_back(tools::serve_unit(sc, read_rows(dir + "/" + side.name + "/summary.csv").at(0), side.prefill));
      candidate_point.push_back(0);
      written.push_back(dir + "/" + side.name + "/");
    }
    // Prefill candidate c's scenario (the grid's point) with one setting more, run into
    // DIR/NAME (a point into a directory of its own): its unit. Throws ScenarioError where that
    // is not a scenario.
    const auto run_variant = [&](std::size_t c, const std::string& set, const std::string& name, const std::string& what) {
      auto sets = side.sets;
      if (side.grid) {
        const auto point = side.grid->points().at(candidate_point[c]);
        sets.insert(sets.end(), point.begin(), point.end());
      }
      sets.push_back(set);
      const auto sc = scenarios::load_scenario_file(side.grid ? side.grid->base : side.file, sets);
      const std::string out_dir = dir + "/" + name + (side.grid ? fmt::format("/point-{:04d}", candidate_point[c]) : std::string());
      if (!quiet)
        fmt::print(stderr, "  simulating  the prefill {} {}\n", side.grid ? fmt::format("point {}", candidate_point[c]) : std::string("scenario"),
                   what);
      const auto result = simulate(sc, quiet);
      tools::write_reports(out_dir, sc, result);
      written.push_back(out_dir + "/");
      return tools::serve_unit(sc, read_rows(out_dir + "/summary.csv").at(0), true);
    };
    // A prefill candidate's batch time against its prompts: its own batch and, where that holds
    // more than one prompt a GPU, the same scenario run at one a GPU.
    const auto linear_batch_time_of = [&](std::size_t c, std::string* note) {
      const tools::ServeUnit& pf = candidates[c];
      tools::PrefillBatchTime b;
      b.full_us = b.least_us = pf.step_us;
      b.least_local_us = pf.local_us;
      b.full_prompts = b.least_prompts =
          static_cast<int>(std::max<std::int64_t>(1, pf.gpus * pf.tokens_per_gpu / std::max<std::int64_t>(pf.prompt_tokens, 1)));
      if (const std::int64_t unit_tokens = pf.gpus * pf.tokens_per_gpu; unit_tokens < pf.prompt_tokens) {
        // A prompt longer than a unit's batch: it takes that many batches in a row, alone.
        b.full_us = b.least_us = b.least_local_us =
            pf.step_us * static_cast<double>(pf.prompt_tokens) / static_cast<double>(unit_tokens);
        *note = fmt::format("a {}-token prompt is more than a unit's batch of {} tokens: each prompt takes {:.2f} batches, alone",
                            pf.prompt_tokens, unit_tokens, static_cast<double>(pf.prompt_tokens) / static_cast<double>(unit_tokens));
        return b;
      }
      if (b.full_prompts <= pf.gpus) return b;
      try {
        const auto one_unit =
            run_variant(c, fmt::format("workload.tokens_per_gpu={}", pf.prompt_tokens), "prefill-one-prompt", "at one prompt per GPU");
        b.least_prompts = pf.gpus;
        b.least_us = one_unit.step_us;
        b.least_local_us = one_unit.local_us;
      } catch (const scenarios::ScenarioError& e) {
        *note = fmt::format("one prompt a GPU is not a scenario of its own ({}): every batch is timed as a full one", e.what());
        b.least_local_us = b.full_us;
      }
      return b;
    };
    // With prompts of several lengths, the part of a prompt's time that grows with its length
    // squared (its attention): from the same scenario at half its sequence length, the same
    // tokens a GPU (tools::PrefillBatchTime::square_us).
    const auto batch_time_of = [&](std::size_t c, std::string* note) {
      tools::PrefillBatchTime b = linear_batch_time_of(c, note);
      const tools::ServeUnit& pf = candidates[c];
      if (!tools::prompt_sizes(traffic, pf.prompt_tokens).varied()) return b;
      const auto unscaled = [&](const std::string& why) {
        const std::string text = fmt::format("the prompts' attention is not scaled with the square of their length ({})", why);
        *note = note->empty() ? text : *note + "; " + text;
      };
      if (pf.gpus * pf.tokens_per_gpu < pf.prompt_tokens) return unscaled("a prompt spans more than a batch"), b;
      if (pf.prompt_tokens % 2 != 0) return unscaled(fmt::format("the scenario's {}-token prompts do not halve", pf.prompt_tokens)), b;
      try {
        const double half_us = run_variant(c, fmt::format("workload.sequence_length={}", pf.prompt_tokens / 2), "prefill-half-length",
                                           "at half its prompts' length")
                                   .step_us;
        b.square_us = std::max(0.0, 2 * (pf.step_us - half_us) / b.full_prompts);
      } catch (const scenarios::ScenarioError& e) {
        unscaled(fmt::format("half the length is not a scenario of its own: {}", e.what()));
      }
      return b;
    };
    tools::ServeChoice choice;
    std::vector<tools::PrefillBatchTime> batches(candidates.size());
    std::vector<std::string> batch_notes(candidates.size());
    if (side.prefill && side.grid && side.target_us > 0) {
      // A prefill grid under a TTFT target: each point that fits is sized by its own queue, and
      // the one that meets the target on the fewest GPUs is taken.
      std::vector<std::optional<int>> units(candidates.size());
      for (std::size_t c = 0; c < candidates.size(); ++c) {
        if (!candidates[c].fits) continue;
        batches[c] = batch_time_of(c, &batch_notes[c]);
        const std::uint64_t point_seed = side.scenarios.at(candidate_point[c]).forward.seed;
        if (const auto q = tools::units_for_ttft(candidates[c], side.load, batches[c], percentile, side.target_us, point_seed, nullptr,
                                                 tools::prompt_sizes(traffic, candidates[c].prompt_tokens)))
          units[c] = q->units;
      }
      choice = tools::choose_prefill_for_ttft(candidates, units, side.load,
                                              fmt::format("p{} within {:.4g} ms", percentile, side.target_us / 1e3));
    } else {
      choice = tools::choose_unit(candidates, side.load, side.prefill ? 0 : side.target_us, side.prefill);
    }
    if (skipped > 0)
      choice.explanation += fmt::format(" ({} more of the grid's points were skipped without running: its sweep's rows say why)", skipped);
    if (!choice.best) {
      fmt::print("moesim serve: no {} {} can serve the load: {}\n", side.name, side.grid ? "point" : "scenario",
                 choice.explanation);
      return 3;
    }
    const std::size_t best = *choice.best;
    chosen.push_back(candidates[best]);
    notes.push_back(choice.explanation);
    if (!side.prefill) {
      decode_base = side.grid ? side.grid->base : side.file;
      decode_sets = side.sets;
      if (side.grid) {
        const auto point = side.grid->points().at(candidate_point[best]);
        decode_sets.insert(decode_sets.end(), point.begin(), point.end());
      }
      decode_scenario = side.scenarios.at(candidate_point[best]);
      continue;
    }
    seed = side.scenarios.at(candidate_point[best]).forward.seed;
    batch = side.grid && side.target_us > 0 ? batches[best] : batch_time_of(best, &batch_notes[best]);
    batch_note = batch_notes[best];
    // A time to first token no count of units meets: said before the decode side runs.
    if (side.target_us > 0 && !side.grid) {
      const int from = tools::whole_units(side.load / candidates[best].tokens_per_s);  // for the message
      tools::PrefillQueue closest;
      const tools::PromptSizes sizes = tools::prompt_sizes(traffic, candidates[best].prompt_tokens);
      if (!tools::units_for_ttft(candidates[best], side.load, batch, percentile, side.target_us, seed, &closest, sizes)) {
        const bool one_length = sizes.drawn.empty() && sizes.sigma == 0;
        fmt::print("moesim serve: no count of prefill units meets the time to first token: p{} within {:.4g} ms; at {} unit{} "
                   "({} for the load) it is {:.4g} ms, and no prompt's first token comes sooner than {}, about {:.4g} ms{}\n",
                   percentile, side.target_us / 1e3, closest.units, closest.units == 1 ? "" : "s", from,
                   closest.percentile_us(percentile) / 1e3, one_length ? "a batch of one prompt" : "its batch alone: for a prompt of the scenario's length",
                   batch.us(1) / 1e3, one_length ? "" : ", longer for a longer one");
        return 3;
      }
    }
  }

  tools::ServePlan plan = tools::plan_service(traffic, chosen[0], chosen[1], batch, target("ttft"), percentile, seed, spares);
  plan.prefill_choice = notes[0];
  plan.decode_choice = notes[1];
  plan.batch_note = batch_note;
  if (!plan.ttft_met) throw tools::ServeError("the prefill queue meets the target in one count and not in another");
  const DecodeAtLoad at_load =
      decode_at_load(decode_base, decode_sets, decode_scenario, plan.sequences_decoding / plan.decode_gpus, dir, quiet, written);
  plan.decode_at_load_sequences = at_load.sequences;
  plan.decode_at_load_time_per_token_us = at_load.time_per_token_us;
  plan.decode_at_load_note = at_load.note;
  const std::string csv = dir + "/serve.csv";
  tools::write_atomically(csv, [&](std::ostream& out) { tools::write_service_csv(out, plan); });
  written.insert(written.begin(), csv);
  if (!quiet) tools::print_service(std::cout, plan, written);
  return 0;
}

double parse_number(const std::string& text, const std::string& what) {
  try {
    return sim::parse_number(text);
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("{}: {}", what, e.what()));
  }
}

// A relative figure: "0.5%" or "0.005".
double parse_fraction(const std::string& text, const std::string& what) {
  const bool percent = !text.empty() && text.back() == '%';
  const double v = parse_number(percent ? text.substr(0, text.size() - 1) : text, what);
  return percent ? v / 100 : v;
}

int cmd_calibrate(const std::vector<std::string>& args) {
  po::options_description opts("calibrate options");
  opts.add_options()("scenario", po::value<std::string>(), "scenario file")(
      "key", po::value<std::string>(), "the scenario key to fit, one whose value is a plain number (e.g. compute.flops_efficiency)")(
      "target", po::value<std::string>(), "METRIC=VALUE: a summary.csv column or plan's name, and the figure measured (e.g. tokens/s/gpu=5275, step_time=24.8s)")(
      "range", po::value<std::string>()->default_value("0.05,1"), "LO,HI: the key's values to search between")(
      "tolerance", po::value<std::string>()->default_value("0.5%"), "how near the target is near enough (relative)")(
      "runs", po::value<int>()->default_value(24), "at most this many runs")(
      "unit", po::value<std::string>()->default_value(""), "the unit the key's values take (e.g. us for compute.kernel_overhead)")(
      "out", po::value<std::string>(), "write the reports of a run at the value found here")("quiet,q", "print only the result");
  add_set_option(opts);
  const auto vm = parse_command(args, opts, "scenario", 1);
  if (!vm.count("scenario")) throw UsageError("calibrate needs a scenario file");
  if (!vm.count("key")) throw UsageError("calibrate needs --key KEY.PATH, the scenario key to fit");
  if (!vm.count("target")) throw UsageError("calibrate needs --target METRIC=VALUE, a summary.csv column and the figure measured");
  const std::string path = vm["scenario"].as<std::string>(), key = vm["key"].as<std::string>();
  // The metric and figure as `moesim plan --target` reads them (its names, tokens/s/gpu, step_time
  // with a time unit, ...), but met, not bounded.
  const std::string target_text = vm["target"].as<std::string>();
  if (target_text.find_first_of("<>") != std::string::npos)
    throw UsageError(fmt::format("--target '{}': calibrate meets a figure: METRIC=VALUE", target_text));
  const tools::Target parsed = tools::parse_target(target_text);
  const std::string metric = parsed.metric.column;
  const double target = parsed.value;
  const std::string range = vm["range"].as<std::string>();
  const auto comma = range.find(',');
  if (comma == std::string::npos) throw UsageError(fmt::format("--range '{}': expected LO,HI", range));
  const double lo = parse_number(range.substr(0, comma), "--range"), hi = parse_number(range.substr(comma + 1), "--range");
  const double tolerance = parse_fraction(vm["tolerance"].as<std::string>(), "--tolerance");
  const int runs = vm["runs"].as<int>();
  if (runs < 2) throw UsageError("--runs must be at least 2 (the range's two ends)");
  if (!(lo < hi)) throw UsageError(fmt::format("--range {}: the first value must be below the second", range));
  if (!(target > 0)) throw UsageError(fmt::format("--target {}: the figure must be > 0", target_text));
  if (!(tolerance > 0)) throw UsageError("--tolerance must be > 0");
  const bool quiet = vm.count("quiet") > 0;
  const auto base_sets = vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
  const std::string unit = vm["unit"].as<std::string>();
  const auto scenario_at = [&](double value) {
    auto sets = base_sets;
    sets.push_back(fmt::format("{}={}{}", key, value, unit));
    return scenarios::load_scenario_file(path, sets);
  };
  const auto metric_at = [&](double value) {
    scenarios::Scenario sc = scenario_at(value);
    sc.timeline = "off";
    const scenarios::RunResult r = simulate(sc, true);
    std::ostringstream csv;
    tools::write_summary_csv(csv, sc, r);
    std::istringstream in(csv.str());
    std::string header, row;
    std::getline(in, header);
    std::getline(in, row);
    const auto names = tools::csv_fields(header), values = tools::csv_fields(row);
    const auto at = std::find(names.begin(), names.end(), metric);
    if (at == names.end()) throw UsageError(fmt::format("--target: '{}' is not a summary.csv column (e.g. step_time_us, tokens_per_s, "
                                                        "tokens_per_s_per_gpu, time_per_token_us)", metric));
    const std::string& v = values.at(static_cast<std::size_t>(at - names.begin()));
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') throw UsageError(fmt::format("--target: summary.csv's {} is '{}', not a number", metric, v));
    return x;
  };
  if (!quiet)
    fmt::print("moesim calibrate: {} between {:g}{} and {:g}{} for {} = {:g} (within {:g} %)\n", key, lo, unit, hi, unit, metric, target,
               100 * tolerance);
  const auto on_trial = [&](const tools::CalibrationTrial& t) {
    if (!quiet)
      fmt::print("  {} = {:<10} {} = {:.6g} ({:+.1f} % of the target)\n", key, fmt::format("{:.6g}{}", t.value, unit), metric, t.metric,
                 100 * (t.metric / target - 1));
    std::fflush(stdout);
  };
  tools::Calibration c;
  try {
    c = tools::calibrate(metric_at, lo, hi, target, tolerance, runs, on_trial);
  } catch (const tools::CalibrateError& e) {
    std::cerr << "moesim: calibrate: " << e.what() << '\n';
    return 3;
  }
  fmt::print("{} = {:.6g}{}: {} = {:.6g}, {:+.2f} % of {:g}{} ({} runs)\n", key, c.value, unit, metric, c.metric,
             100 * (c.metric / target - 1), target, c.met ? "" : fmt::format(", not within {:g} %: the nearest", 100 * tolerance),
             c.trials.size());
  if (vm.count("out")) {
    scenarios::Scenario sc = scenario_at(c.value);
    const auto r = simulate(sc, quiet);
    (void)tools::write_reports(vm["out"].as<std::string>(), sc, r);
    if (!quiet) fmt::print("  wrote       the run at {} = {:.6g}{}: {}\n", key, c.value, unit, vm["out"].as<std::string>());
  }
  return c.met ? 0 : 3;
}

int cmd_validate(const std::vector<std::string>& args) {
  po::options_description opts("validate options");
  opts.add_options()("scenario", po::value<std::string>(), "scenario file");
  add_set_option(opts);
  const auto vm = parse_command(args, opts, "scenario", 1);
  if (!vm.count("scenario")) throw UsageError("validate needs a scenario file");
  if (const std::string path = vm["scenario"].as<std::string>(); scenarios::is_grid_file(path)) {
    // A sweep grid: every point checked as `moesim sweep` checks them before running any.
    const scenarios::Grid grid = scenarios::load_grid(path);
    const auto sets = vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
    const auto points = grid.points();
    std::size_t invalid = 0;
    std::string first;
    std::exception_ptr first_error;
    for (const auto& p : points) {
      std::vector<std::string> point = sets;
      point.insert(point.end(), p.begin(), p.end());
      try {
        (void)scenarios::load_scenario_file(grid.base, point);
      } catch (const scenarios::ScenarioError& e) {
        if (!grid.skip_invalid) throw;
        if (invalid++ == 0) {
          first = fmt::format("{}: {}", fmt::join(p, " "), scenarios::invalid_point_reason(grid, e));
          first_error = std::current_exception();
        }
      }
    }
    if (invalid == points.size()) std::rethrow_exception(first_error);  // a skip that leaves nothing: as sweep, refused
    fmt::print("{}: ok (a sweep grid of {} point{} on {}{})\n", path, points.size(), points.size() == 1 ? "" : "s", grid.base,
               invalid > 0 ? fmt::format("; {} invalid, to be skipped, the first {}", invalid, first) : "");
    return 0;
  }
  const scenarios::Scenario sc = load(vm);
  const models::ModelParams params = models::model_params(sc.forward.model);
  const auto& m = sc.forward.model;
  fmt::print("{}: ok ({} x {}, {} experts top-{}, EP{}, {} MoE layers{}; {:.1f} B parameters, {:.1f} B active per token{})\n",
             sc.source, sc.cluster.nodes * sc.cluster.gpus_per_node, sc.cluster.gpu.name, m.experts, m.top_k,
             sc.forward.etp > 1 ? fmt::format("{} ETP{}", sc.forward.ep, sc.forward.etp) : std::to_string(sc.forward.ep),
             m.moe_layers - m.mtp_layers, m.mtp_layers > 0 ? fmt::format(" and {} MTP layer{} run", m.mtp_layers, m.mtp_layers > 1 ? "s" : "") : "",
             static_cast<double>(params.total) / 1e9, static_cast<double>(params.active) / 1e9,
             m.mtp_modules > 0 ? fmt::format(", and {:.1f} B in {} MTP module{}", static_cast<double>(params.mtp) / 1e9, m.mtp_modules,
                                             m.mtp_modules > 1 ? "s" : "")
                               : "");
  if (!sc.model_config.empty()) {
    fmt::print("  model: from {}{}\n", sc.model_config, sc.model_type.empty() ? std::string() : fmt::format(" ({})", sc.model_type));
    for (const auto& n : sc.model_notes) fmt::print("    - {}\n", n);
  }
  // Whether it can fit, before anything runs: what no routing changes.
  const tools::MemoryFloor floor = tools::memory_floor(sc);
  fmt::print("  memory: at least {:.1f} GB on GPU {}{} whatever the routing ({}){}\n", floor.bytes / 1e9, floor.gpu,
             floor.capacity > 0 ? fmt::format(" of the {:.0f} GB of a {}", floor.capacity / 1e9, sc.cluster.gpu.name) : "", floor.parts,
             floor.capacity > 0 && floor.bytes > floor.capacity ? ": DOES NOT FIT" : "");
  return 0;
}

// check-profile --leave-one-out: per kernel, how well the profile's interpolation predicts its
// own rows from their neighbours; --leave-one-distribution-out: per shape, how well the expert
// stage of each distribution is predicted from the others; --leave-one-expert-count-out: per
// shape, each local-expert count from the counts either side (informational: exit 0).
// check-profile --coverage: what a profile measures, per shape and kernel (the experts it was
// measured at, the token or row range, the rows and the distributions), and whether it has the
// backward pass's stages.
int coverage_report(const models::KernelProfile& profile) {
  struct Cover {
    std::set<int> experts, top_k;
    std::set<std::string> distributions;
    std::int64_t lo = 0, hi = 0;
    int rows = 0;
  };
  std::map<std::tuple<std::string, int, int, std::string>, Cover> by;  // shape, hidden, ffn, kernel
  for (const auto& r : profile.rows) {
    Cover& c = by[{r.shape, r.hidden, r.ffn, r.kernel}];
    c.lo = c.rows ? std::min(c.lo, r.tokens) : r.tokens;
    c.hi = c.rows ? std::max(c.hi, r.tokens) : r.tokens;
    ++c.rows;
    c.experts.insert(r.experts);
    c.top_k.insert(r.top_k);
    if (r.distribution != "-") c.distributions.insert(r.distribution);
  }
  const auto join = [](const auto& set) {
    std::string s;
    for (const auto& x : set) {
      if (!s.empty()) s += ',';
      s += fmt::format("{}", x);
    }
    return s.empty() ? std::string("-") : s;
  };
  fmt::print("{}: {} rows, measured on {}\n", profile.source, profile.rows.size(), profile.gpu.empty() ? "an unnamed GPU" : profile.gpu);
  fmt::print("{:<9} {:>6} {:>6} {:<12} {:<22} {:>5} {:>14} {:>5}  {}\n", "shape", "hidden", "ffn", "kernel", "experts", "top_k",
             "tokens", "rows", "distributions");
  for (const auto& [key, c] : by) {
    const auto& [shape, hidden, ffn, kernel] = key;
    fmt::print("{:<9} {:>6} {:>6} {:<12} {:<22} {:>5} {:>14} {:>5}  {}\n", shape, hidden, ffn, kernel, join(c.experts),
               join(c.top_k), fmt::format("{}-{}", c.lo, c.hi), c.rows, join(c.distributions));
  }
  fmt::print("backward pass: {}\n", profile.measures("experts_bwd")
                                       ? "measured (_bwd rows): a training step's backward passes use them"
                                       : "not measured (no _bwd rows): a training step's backward passes use the roofline");
  return 0;
}

// check-profile --roofline: the roofline's forward MoE stages (at its default efficiencies, on
// the GPU's datasheet) against the profile's measured ones, uniform routing, with the kernels
// between the GEMMs (compute.elementwise_kernels) counted apart and not: the router with the
// permutation (router and permute rows; the roofline's permutation only with them apart), the
// expert stage (its rows over its active experts, a kernel each, as the simulator's fallback
// runs them) and the combine (the reduce). Prints each stage's measured over predicted time:
// the median and range over the shapes' token counts from `least` tokens (rows) up.
int roofline_report(const models::KernelProfile& profile, const topology::GpuSpec& gpu, std::int64_t least, bool quiet) {
  models::RooflineSpec off_spec, on_spec;
  on_spec.elementwise_kernels = true;
  const models::Roofline off(gpu, off_spec), on(gpu, on_spec);
  struct Ratios {
    std::vector<double> off, on;
  };
  std::map<std::pair<std::string, std::string>, Ratios> by;  // stage, shape
  const auto find = [&](const std::string& kernel, const models::KernelProfile::Row& like, std::int64_t tokens, int experts) {
    for (const auto& r : profile.rows)
      if (r.kernel == kernel && r.shape == like.shape && r.hidden == like.hidden && r.ffn == like.ffn && r.top_k == like.top_k &&
          r.tokens == tokens && r.experts == experts && (r.distribution == "uniform" || r.distribution == "-"))
        return &r;
    return static_cast<const models::KernelProfile::Row*>(nullptr);
  };
  if (!quiet)
    fmt::print("{:<8} {:<9} {:>8} {:>7} {:>12} {:>12} {:>12} {:>8} {:>8}\n", "stage", "shape", "tokens", "experts", "measured_us",
               "roofline_us", "apart_us", "ratio", "apart");
  const auto add = [&](const std::string& stage, const models::KernelProfile::Row& r, int experts, double measured, sim::Time t_off,
                       sim::Time t_on) {
    const double a = t_off.to_seconds() * 1e6, b = t_on.to_seconds() * 1e6;
    by[{stage, r.shape}].off.push_back(measured / a);
    by[{stage, r.shape}].on.push_back(measured / b);
    if (!quiet)
      fmt::print("{:<8} {:<9} {:>8} {:>7} {:>12.1f} {:>12.1f} {:>12.1f} {:>8.2f} {:>8.2f}\n", stage, r.shape, r.tokens, experts, measured, a,
                 b, measured / a, measured / b);
  };
  for (const auto& r : profile.rows) {
    if (r.tokens < least) continue;
    routing::MoeModelSpec m;  // BF16 weights and activations, as the layer measures them (the defaults)
    m.hidden = r.hidden;
    m.expert_ffn = r.ffn;
    m.top_k = r.top_k;
    if (r.kernel == "router") {
      m.experts = r.experts;
      const auto* permute = find("permute", r, r.tokens, r.experts);
      const auto* combine = find("combine", r, r.tokens, r.experts);
      const models::KernelCost c = models::router_cost(m, r.tokens);
      if (permute) add("router", r, r.experts, r.median_us + permute->median_us, off.time(c), on.time(c));
      if (combine) {
        const models::KernelCost d = models::reduce_cost(m, r.tokens, r.tokens * r.top_k);
        add("combine", *combine, r.experts, combine->median_us, off.time(d), on.time(d));
      }
    } else if (r.kernel == "experts" && r.distribution == "uniform" && r.active_experts > 0) {
      // Its rows over the experts that have any, as evenly as they divide.
      sim::Time t_off, t_on;
      for (int e = 0; e < r.active_experts; ++e) {
        const std::int64_t n = r.tokens / r.active_experts + (e < r.tokens % r.active_experts ? 1 : 0);
        const models::KernelCost c = models::routed_expert_cost(m, n);
        t_off += off.time(c);
        t_on += on.time(c);
      }
      add("experts", r, r.experts, r.median_us, t_off, t_on);
    }
  }
  if (by.empty()) throw UsageError(fmt::format("{}: no router, permute, experts or combine rows from {} tokens", profile.source, least));
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  };
  fmt::print("{}{}: measured over the roofline's time ({} on {}'s datasheet, {} of its BF16 peak, {} of its HBM), uniform routing, "
             "from {} tokens\n",
             quiet ? "" : "\n", profile.source, "compute.model: roofline", gpu.name, off_spec.flops_efficiency, off_spec.memory_efficiency,
             least);
  fmt::print("{:<8} {:<9} {:>5}   {:>22}   {:>22}\n", "stage", "shape", "rows", "kernels between fused", "elementwise_kernels");
  for (const auto& [key, r] : by) {
    const auto range = [&](const std::vector<double>& v) {
      return fmt::format("{:.2f} ({:.2f}-{:.2f})", median(v), *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end()));
    };
    fmt::print("{:<8} {:<9} {:>5}   {:>22}   {:>22}\n", key.first, key.second, r.off.size(), range(r.off), range(r.on));
  }
  return 0;
}

enum class LeaveOut { rows, distributions, expert_counts };

int leave_out_report(const models::KernelProfile& profile, LeaveOut what, bool quiet) {
  const auto all = what == LeaveOut::rows            ? profile.leave_one_out()
                   : what == LeaveOut::distributions ? profile.leave_one_distribution_out()
                                                     : profile.leave_one_expert_count_out();
  if (all.cases.empty())
    throw UsageError(fmt::format("{}: {}", profile.source,
                                 what == LeaveOut::rows            ? "no row has measured counts on both sides"
                                 : what == LeaveOut::distributions ? "no experts row has two other distributions"
                                                                   : "no experts row has measured expert counts on both sides"));
  const bool by_shape = what != LeaveOut::rows;
  std::map<std::string, models::KernelProfile::Check> by_kernel;
  for (const auto& c : all.cases) by_kernel[by_shape ? c.measured.shape : c.measured.kernel].cases.push_back(c);
  if (what == LeaveOut::distributions)
    fmt::print("{}: each experts row predicted from the other distributions alone (its own left out)\n", profile.source);
  else if (what == LeaveOut::expert_counts)
    fmt::print("{}: each experts row predicted from the local-expert counts on either side alone (its own left out)\n",
               profile.source);
  else
    fmt::print("{}: each row predicted from the profile without it (twice the measured spacing)\n", profile.source);
  fmt::print("{:<11} {:>6} {:>8} {:>8} {:>8}\n", by_shape ? "shape" : "kernel", "rows", "median", "p90", "worst");
  const auto line = [&](const std::string& name, const models::KernelProfile::Check& c) {
    fmt::print("{:<11} {:>6} {:>7.1f}% {:>7.1f}% {:>7.1f}%\n", name, c.cases.size(), 100 * c.median_abs_error(),
               100 * c.p90_abs_error(), 100 * c.worst_abs_error());
  };
  for (const auto& [kernel, c] : by_kernel) line(kernel, c);
  line("all", all);
  if (!quiet) {
    auto worst = all.cases;
    std::sort(worst.begin(), worst.end(), [](const auto& a, const auto& b) { return std::abs(a.error) > std::abs(b.error); });
    worst.resize(std::min<std::size_t>(worst.size(), 10));
    fmt::print("\nthe {} worst:\n{:<11} {:<9} {:>7} {:>8} {:<10} {:>12} {:>12} {:>8}\n", worst.size(), "kernel", "shape",
               "experts", "tokens", "routing", "measured_us", "predicted_us", "error");
    for (const auto& c : worst)
      fmt::print("{:<11} {:<9} {:>7} {:>8} {:<10} {:>12.1f} {:>12.1f} {:>+7.1f}%\n", c.measured.kernel, c.measured.shape,
                 c.measured.experts, c.measured.tokens, c.measured.distribution, c.measured.median_us, c.predicted_us,
                 100 * c.error);
  }
  return 0;
}

// Rows timing the same case more than once (the same kernel, shape, dimensions, tokens and
// distribution) become one, at the median of their timings (the mean of the middle two for an
// even count), where the case first appears. Returns the most timings any case had.
int median_of_repeats(std::vector<models::KernelProfile::Row>& rows) {
  std::map<std::tuple<std::string, std::string, int, int, int, int, std::int64_t, std::string>, std::vector<std::size_t>> cases;
  std::vector<std::size_t> first;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    auto& at = cases[{r.kernel, r.shape, r.hidden, r.ffn, r.experts, r.top_k, r.tokens, r.distribution}];
    if (at.empty()) first.push_back(i);
    at.push_back(i);
  }
  int most = 1;
  std::vector<models::KernelProfile::Row> out;
  for (const std::size_t i : first) {
    const auto& r = rows[i];
    const auto& at = cases.at({r.kernel, r.shape, r.hidden, r.ffn, r.experts, r.top_k, r.tokens, r.distribution});
    std::vector<double> us;
    for (const std::size_t j : at) us.push_back(rows[j].median_us);
    std::sort(us.begin(), us.end());
    const std::size_t n = us.size();
    out.push_back(r);
    out.back().median_us = n % 2 ? us[n / 2] : (us[n / 2 - 1] + us[n / 2]) / 2;
    most = std::max(most, static_cast<int>(n));
  }
  rows = std::move(out);
  return most;
}

int cmd_check_profile(const std::vector<std::string>& args) {
  po::options_description opts("check-profile options");
  opts.add_options()("measured", po::value<std::string>(), "measured whole-layer timings (profile format)")(
      "profile", po::value<std::string>(), "the kernel profile (default: the built-in one for --gpu)")(
      "gpu", po::value<std::string>()->default_value("H100-SXM"), "GPU model of the built-in profile")(
      "median", po::value<double>()->default_value(5.0), "bound on the median absolute error, percent")(
      "worst", po::value<double>()->default_value(10.0), "bound on the worst absolute error, percent")(
      "quiet,q", "print only the summary")(
      "median-of-repeats", "a case timed more than once (moe-profile --passes) counts once, at the median of its timings")(
      "coverage", "what the profile measures: per shape and kernel, the experts, tokens, rows and distributions")(
      "leave-one-out", "judge the profile's interpolation on itself: each row predicted without it")(
      "leave-one-distribution-out", "judge the expert stage across distributions: each predicted from the others")(
      "leave-one-expert-count-out", "judge the expert stage across local-expert counts: each from the counts either side")(
      "roofline", "the roofline's forward MoE stages against the profile's, with the kernels between the GEMMs apart and not")(
      "from-tokens", po::value<std::int64_t>()->default_value(1024), "with --roofline: the rows from this many tokens up");
  const auto vm = parse_command(args, opts, "measured", 1);
  const int leave_outs = static_cast<int>(vm.count("leave-one-out") + vm.count("leave-one-distribution-out") +
                                          vm.count("leave-one-expert-count-out"));
  if (leave_outs > 1)
    throw UsageError("check-profile takes one of --leave-one-out, --leave-one-distribution-out and --leave-one-expert-count-out");
  if (!vm.count("measured") && leave_outs == 0 && !vm.count("coverage") && !vm.count("roofline"))
    throw UsageError("check-profile needs the measured timings file (or one of the --leave-one-... options)");
  std::shared_ptr<const models::KernelProfile> profile;
  if (vm.count("profile")) {
    profile = std::make_shared<const models::KernelProfile>(models::KernelProfile::read(vm["profile"].as<std::string>()));
  } else {
    profile = models::KernelProfile::bundled(vm["gpu"].as<std::string>());
    if (!profile) throw UsageError(fmt::format("no built-in kernel profile for '{}' (H100-SXM has one); give --profile", vm["gpu"].as<std::string>()));
  }
  if (vm.count("coverage")) {
    if (vm.count("measured") || leave_outs > 0) throw UsageError("check-profile --coverage takes no measured timings file or --leave-one-...");
    return coverage_report(*profile);
  }
  if (vm.count("roofline")) {
    if (vm.count("measured") || leave_outs > 0) throw UsageError("check-profile --roofline takes no measured timings file or --leave-one-...");
    const topology::GpuSpec* gpu = topology::find_gpu_preset(vm["gpu"].as<std::string>());
    if (!gpu) throw UsageError(fmt::format("--gpu {}: not a GPU moesim knows", vm["gpu"].as<std::string>()));
    return roofline_report(*profile, *gpu, vm["from-tokens"].as<std::int64_t>(), vm.count("quiet") > 0);
  }
  if (leave_outs > 0) {
    const LeaveOut what = vm.count("leave-one-distribution-out") ? LeaveOut::distributions
                          : vm.count("leave-one-expert-count-out") ? LeaveOut::expert_counts
                                                                   : LeaveOut::rows;
    if (vm.count("measured")) throw UsageError("check-profile --leave-one-... takes no measured timings file");
    return leave_out_report(*profile, what, vm.count("quiet") > 0);
  }
  auto measured = models::KernelProfile::read(vm["measured"].as<std::string>(), models::KernelProfile::Repeats::allow);
  int most_repeats = 1;
  if (vm.count("median-of-repeats")) most_repeats = median_of_repeats(measured.rows);
  const auto all = profile->check(measured);
  if (all.cases.empty()) throw UsageError(fmt::format("{}: no layer or experts rows inside the profile's range", measured.source));
  const bool quiet = vm.count("quiet") > 0;
  // "median error M % (bound), 90th percentile P %, worst W % (bound); N within 5 %, N within 10 %"
  const auto summary = [](const models::KernelProfile::Check& c, const std::string& median_bound, const std::string& worst_bound) {
    const auto within = [&](double bound) {
      return std::count_if(c.cases.begin(), c.cases.end(), [&](const auto& x) { return std::abs(x.error) <= bound; });
    };
    return fmt::format("median error {:.1f} %{}, 90th percentile {:.1f} %, worst {:.1f} %{}; {} within 5 %, {} within 10 %",
                       100 * c.median_abs_error(), median_bound, 100 * c.p90_abs_error(), 100 * c.worst_abs_error(),
                       worst_bound, within(0.05), within(0.10));
  };
  const std::string uncovered =
      (all.uncovered ? fmt::format(" ({} outside the profile's range, not counted)", all.uncovered) : std::string()) +
      (most_repeats > 1 ? fmt::format(" (each the median of its timings, up to {} a case)", most_repeats) : std::string());
  // Whole layers, against the bounds.
  const auto check = all.only("layer");
  bool ok = true;
  if (!check.cases.empty()) {
    if (!quiet) {
      fmt::print("{:<9} {:>7} {:<10} {:>9} {:>12} {:>12} {:>8}\n", "shape", "tokens", "routing", "imbalance", "measured_us",
                 "predicted_us", "error");
      for (const auto& c : check.cases)
        fmt::print("{:<9} {:>7} {:<10} {:>9.2f} {:>12.1f} {:>12.1f} {:>+7.1f}%\n", c.measured.shape, c.measured.tokens,
                   c.measured.distribution, c.imbalance, c.measured.median_us, c.predicted_us, 100 * c.error);
    }
    const double median = 100 * check.median_abs_error(), worst = 100 * check.worst_abs_error();
    ok = median <= vm["median"].as<double>() && worst <= vm["worst"].as<double>();
    fmt::print("{} cases{}: {}: {}\n", check.cases.size(), uncovered,
               summary(check, fmt::format(" (bound {:g})", vm["median"].as<double>()),
                       fmt::format(" (bound {:g})", vm["worst"].as<double>())),
               ok ? "ok" : "FAILED");
  }
  // Expert-stage rows (e.g. moe-profile --heldout-experts): the stage alone, informational.
  const auto experts = all.only("experts");
  if (!experts.cases.empty()) {
    if (!quiet) {
      fmt::print("{}{:<9} {:>7} {:>7} {:<10} {:>6} {:>12} {:>12} {:>8}\n", check.cases.empty() ? "" : "\n", "shape", "experts",
                 "rows", "routing", "tiles", "measured_us", "predicted_us", "error");
      for (const auto& c : experts.cases)
        fmt::print("{:<9} {:>7} {:>7} {:<10} {:>6} {:>12.1f} {:>12.1f} {:>+7.1f}%\n", c.measured.shape, c.measured.experts,
                   c.measured.tokens, c.measured.distribution, c.measured.row_tiles, c.measured.median_us, c.predicted_us,
                   100 * c.error);
    }
    fmt::print("{} expert-stage cases (the stage alone; no bounds){}: {}\n", experts.cases.size(),
               check.cases.empty() ? uncovered : "", summary(experts, "", ""));
  }
  // The backward pass (moe-profile --backward): whole layers as the simulator composes their
  // _bwd stages, and expert stages alone; informational.
  for (const auto& [kernel, what] : {std::pair{"layer_bwd", "backward whole-layer cases (the _bwd stages composed; no bounds)"},
                                     std::pair{"experts_bwd", "backward expert-stage cases (no bounds)"}}) {
    const auto b = all.only(kernel);
    if (b.cases.empty()) continue;
    if (!quiet)
      for (const auto& c : b.cases)
        fmt::print("{:<11} {:<9} {:>7} {:>7} {:<10} {:>12.1f} {:>12.1f} {:>+7.1f}%\n", kernel, c.measured.shape,
                   c.measured.experts, c.measured.tokens, c.measured.distribution, c.measured.median_us, c.predicted_us,
                   100 * c.error);
    fmt::print("{} {}: {}\n", b.cases.size(), what, summary(b, "", ""));
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    const std::string cmd = args.empty() ? "help" : args.front();
    if (!args.empty()) args.erase(args.begin());
    if (cmd == "help" || cmd == "--help" || cmd == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (cmd == "--version") {
      fmt::print("moesim {}\n", MOESIM_VERSION);
      return 0;
    }
    if (cmd == "run") return cmd_run(args);
    if (cmd == "validate") return cmd_validate(args);
    if (cmd == "flows") return cmd_flows(args);
    if (cmd == "place") return cmd_place(args);
    if (cmd == "trace") return cmd_trace(args);
    if (cmd == "sweep") return cmd_sweep(args);
    if (cmd == "plan") return cmd_plan(args);
    if (cmd == "search") return cmd_search(args);
    if (cmd == "check-profile") return cmd_check_profile(args);
    if (cmd == "diff") return cmd_diff(args);
    if (cmd == "gpus") return cmd_gpus(args);
    if (cmd == "model") return cmd_model(args);
    if (cmd == "serve") return cmd_serve(args);
    if (cmd == "calibrate") return cmd_calibrate(args);
    throw UsageError(fmt::format("unknown command '{}'", cmd));
  } catch (const QuietRank& q) {
    return q.code;
  } catch (const UsageError& e) {
    std::cerr << "moesim: " << e.what() << "\n\n" << kUsage;
    return 2;
  } catch (const scenarios::ScenarioError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  } catch (const tools::FlowsInputError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  } catch (const tools::DiffInputError& e) {
    std::cerr << "moesim: diff: " << e.what() << '\n';
    return 2;
  } catch (const scenarios::GridError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  } catch (const tools::SweepError& e) {
    std::cerr << "moesim: " << e.what() << '\n';
    return 2;
  } catch (const tools::PlanError& e) {
    std::cerr << "moesim: " << e.what() << '\n';
    return 2;
  } catch (const tools::SearchError& e) {
    std::cerr << "moesim: search: " << e.what() << '\n';
    return 2;
  } catch (const models::ProfileError& e) {
    std::cerr << "moesim: " << e.what() << '\n';
    return 2;
  } catch (const tools::ServeError& e) {
    std::cerr << "moesim: " << e.what() << '\n';
    return 2;
  } catch (const routing::TraceError& e) {  // trace --convert's input (a scenario's traces are ScenarioErrors)
    std::cerr << "moesim: " << e.what() << '\n';
    return 2;
  } catch (const tools::ReportError& e) {
    std::cerr << "moesim: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "moesim: internal error: " << e.what() << '\n';
    return 1;
  }
}
