// One persistent pool of worker threads for the whole process.
//
// Work is a count of independent tasks; workers (and the calling thread) take
// them from an atomic counter. Kernels must make each task's result depend only
// on the task index, never on which thread ran it or how many threads there
// are: that is what makes results bitwise identical for any thread count.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace sparsekit {

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, int64_t task, int worker);

  static ThreadPool& instance();

  // Total threads that run tasks, the caller included (>= 1).
  int num_threads() const { return num_threads_.load(); }
  // Resizes the pool; n >= 1. Waits for any running job to finish.
  void set_num_threads(int n);

  // Runs fn(task) for task in [0, n_tasks). Returns when all are done. Calls
  // from several threads at once are serialised; a call from inside a task runs
  // its tasks inline on that thread (no deadlock, same results).
  template <class F>
  void parallel_for(int64_t n_tasks, F&& f) {
    auto tramp = [](void* ctx, int64_t t, int w) { (*static_cast<F*>(ctx))(t, w); };
    run(n_tasks, tramp, &f);
  }

  ~ThreadPool();

 private:
  ThreadPool();
  void run(int64_t n_tasks, TaskFn fn, void* ctx);
  void start_workers(int n_workers);
  void stop_workers();
  void worker_loop(int worker_index, uint64_t seen);
  void drain(int worker_index);

  std::mutex run_mutex_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  std::atomic<int> num_threads_{1};

  // Current job.
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  // Published (release) after the job fields above; workers spin on it for a
  // short while before sleeping, so back-to-back calls don't pay a wake-up.
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> job_{0};  // generation | CLOSED | joined workers (thread_pool.cc)
  std::atomic<bool> stopping_{false};
};

int default_num_threads();

}  // namespace sparsekit
