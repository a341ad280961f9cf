// `mpirun -np N moesim sweep GRID.yaml`: the sweep's points dealt over MPI ranks.
//
// Rank 0 reads the output (rows of an earlier run) and broadcasts which points are missing;
// they are dealt round-robin. Every rank runs its share on its own threads (only the main
// thread calls MPI: MPI_THREAD_FUNNELED). A worker rank's main thread sends each finished row
// to rank 0 as it comes (tag kRow: point, header, row) and a last message when it is done
// (kDone) or failed (kFailed, with the error); rank 0's main thread receives them while its
// threads run its own points, and appends every row to the output as it arrives, so a killed
// run loses at most the points in flight.
#include <mpi.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <thread>

#include "tools/sweep.hpp"

namespace moesim::tools {
namespace {

constexpr int kRow = 1, kDone = 2, kFailed = 3;

class MpiRuntime {
 public:
  MpiRuntime() {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  ~MpiRuntime() { MPI_Finalize(); }
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  int rank = 0, size = 1;
};

void send_text(const std::string& s, int tag) {
  MPI_Send(s.data(), static_cast<int>(s.size()), MPI_CHAR, 0, tag, MPI_COMM_WORLD);
}

// A message's text: "point\nheader\nrow" for kRow, the error for kFailed.
std::string receive_text(const MPI_Status& probe) {
  int n = 0;
  MPI_Get_count(&probe, MPI_CHAR, &n);
  std::string s(static_cast<std::size_t>(n), '\0');
  MPI_Recv(s.data(), n, MPI_CHAR, probe.MPI_SOURCE, probe.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  return s;
}

// Rows from the worker threads, for the main thread to send.
struct Outbox {
  std::mutex lock;
  std::condition_variable ready;
  std::deque<std::string> rows;
  bool finished = false;
  std::string error;
};

}  // namespace

SweepResult run_sweep_mpi(const scenarios::Grid& grid, const std::string& out, const SweepOptions& opts, int* rank_out) {
  const MpiRuntime mpi;
  *rank_out = mpi.rank;
  // Every rank checks every point (it runs some of them); a bad grid fails on all alike.
  const detail::Sweep sweep(grid, opts);
  SweepResult result;
  result.points = sweep.points.size();
  result.ranks = mpi.size;

  // Which points are missing: rank 0's file decides.
  std::unique_ptr<detail::SweepFile> file;
  std::vector<unsigned long long> todo;
  constexpr unsigned long long kUnreadable = ~0ULL;
  std::string unreadable;
  if (mpi.rank == 0) {
    try {
      file = std::make_unique<detail::SweepFile>(out, sweep.configs);
      result.already = file->already();
      result.stale = file->stale();
      for (const auto p : file->missing()) todo.push_back(p);
    } catch (const SweepError& e) {
      unreadable = e.what();
    }
  }
  unsigned long long n = unreadable.empty() ? todo.size() : kUnreadable;
  MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
  if (n == kUnreadable) throw SweepError(mpi.rank == 0 ? unreadable : "the output cannot be used (rank 0 says why)");
  todo.resize(n);
  MPI_Bcast(todo.data(), static_cast<int>(n), MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
  // The groups of points one simulation serves, dealt round-robin (every rank forms the same);
  // the rows of skipped points, which run nothing, are rank 0's.
  const auto groups = sweep.groups(std::vector<std::size_t>(todo.begin(), todo.end()));
  std::vector<std::size_t> mine;
  std::size_t simulating = 0;
  for (std::size_t k = 0; k < groups.size(); ++k) {
    if (!sweep.simulates(groups[k])) {
      if (mpi.rank == 0) mine.push_back(k);
      continue;
    }
    if (simulating++ % static_cast<std::size_t>(mpi.size) == static_cast<std::size_t>(mpi.rank)) mine.push_back(k);
  }
  std::stable_partition(mine.begin(), mine.end(), [&](std::size_t k) { return !sweep.simulates(groups[k]); });  // instant rows first
  std::size_t my_points = 0;
  for (const std::size_t g : mine) my_points += groups[g].size();

  if (mpi.rank != 0) {
    Outbox box;
    std::jthread workers([&] {
      try {
        detail::parallel_for(mine, opts.jobs, [&](std::size_t k) {
          const auto rows = sweep.run_group(groups[k]);
          const std::lock_guard<std::mutex> g(box.lock);
          for (std::size_t i = 0; i < rows.size(); ++i)
            box.rows.push_back(fmt::format("{}\n{}\n{}", groups[k][i], rows[i].first, rows[i].second));
          box.ready.notify_one();
        });
      } catch (const std::exception& e) {
        const std::lock_guard<std::mutex> g(box.lock);
        box.error = e.what();
      }
      const std::lock_guard<std::mutex> g(box.lock);
      box.finished = true;
      box.ready.notify_one();
    });
    for (;;) {
      std::unique_lock<std::mutex> g(box.lock);
      box.ready.wait(g, [&] { return !box.rows.empty() || box.finished; });
      if (!box.rows.empty()) {
        const std::string msg = std::move(box.rows.front());
        box.rows.pop_front();
        g.unlock();
        send_text(msg, kRow);
        continue;
      }
      const std::string error = box.error;
      g.unlock();
      if (error.empty()) send_text("", kDone);
      else send_text(fmt::format("rank {}: {}", mpi.rank, error), kFailed);
      break;
    }
    result.ran = my_points;
    result.simulations = static_cast<std::size_t>(
        std::count_if(mine.begin(), mine.end(), [&](std::size_t k) { return sweep.simulates(groups[k]); }));
    return result;
  }

  // Rank 0: its own points on threads, the others' rows received here.
  std::atomic<std::size_t> ran{0}, simulated{0};  // rows, and of them simulated ones (the progress's estimate)
  std::atomic<bool> local_done{false};
  std::exception_ptr local_failure;
  std::jthread workers([&] {
    try {
      detail::parallel_for(mine, opts.jobs, [&](std::size_t k) {
        const auto rows = sweep.run_group(groups[k]);
        for (std::size_t i = 0; i < rows.size(); ++i) file->add(groups[k][i], rows[i].first, rows[i].second);
        ran += rows.size();
        if (sweep.simulates(groups[k])) simulated += rows.size();
        if (opts.progress) opts.progress(file->rows(), result.points, simulated);
      });
    } catch (...) {
      local_failure = std::current_exception();
    }
    local_done = true;
  });
  int open = mpi.size - 1;
  std::string remote_failure;
  while (open > 0) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
    if (flag == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    const std::string msg = receive_text(st);
    if (st.MPI_TAG == kRow) {
      // Keep receiving after a failure, so that no rank is left blocked in a send.
      if (!remote_failure.empty()) continue;
      try {
        const auto a = msg.find('\n'), b = msg.find('\n', a + 1);
        file->add(std::stoul(msg.substr(0, a)), msg.substr(a + 1, b - a - 1), msg.substr(b + 1));
        ++ran;
        ++simulated;  // other ranks run no skipped points
        if (opts.progress) opts.progress(file->rows(), result.points, simulated);
      } catch (const std::exception& e) {
        remote_failure = e.what();
      }
    } else {
      if (st.MPI_TAG == kFailed && remote_failure.empty()) remote_failure = msg;
      --open;
    }
  }
  workers.join();
  result.ran = ran;
  result.simulations = simulating;
  result.skipped = groups.size() - simulating;  // one point each
  file->finish();
  result.infeasible = file->infeasible();
  result.invalid = file->invalid();
  result.unfit = file->unfit();
  if (local_failure) std::rethrow_exception(local_failure);
  if (!remote_failure.empty()) throw SweepError(remote_failure);
  return result;
}

}  // namespace moesim::tools
