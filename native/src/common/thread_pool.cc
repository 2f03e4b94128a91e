#include "sparsekit/thread_pool.h"

#include <cstdlib>

namespace sparsekit {

namespace {
thread_local bool tl_inside_task = false;
}

int default_num_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool& ThreadPool::instance() {
  // Leaked on purpose: joining threads from a static destructor at process exit
  // races with the runtime tearing down; the OS reclaims them.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

ThreadPool::ThreadPool() {
  int n = default_num_threads();
  if (const char* env = std::getenv("SPARSEKIT_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v >= 1 && v <= 1024) n = v;
  }
  num_threads_ = n;
  start_workers(n - 1);
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::start_workers(int n_workers) {
  stopping_ = false;
  for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i] { worker_loop(i + 1); });
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> run_lk(run_mutex_);
  if (n == num_threads_.load()) return;
  stop_workers();
  num_threads_ = n;
  start_workers(n - 1);
}

void ThreadPool::drain(int worker_index) {
  tl_inside_task = true;
  for (;;) {
    int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
    if (t >= n_tasks_) break;
    fn_(ctx_, t, worker_index);
  }
  tl_inside_task = false;
}

void ThreadPool::worker_loop(int worker_index) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_work_.wait(lk, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    drain(worker_index);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_workers_ == 0) cv_done_.notify_one();
    }
  }
}

void ThreadPool::run(int64_t n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks <= 0) return;
  if (tl_inside_task || n_tasks == 1) {
    // Nested or trivial: run inline, in task order.
    bool was = tl_inside_task;
    tl_inside_task = true;
    for (int64_t t = 0; t < n_tasks; ++t) fn(ctx, t, 0);
    tl_inside_task = was;
    return;
  }
  std::lock_guard<std::mutex> run_lk(run_mutex_);
  int n_workers = static_cast<int>(workers_.size());
  if (n_workers == 0) {
    tl_inside_task = true;
    for (int64_t t = 0; t < n_tasks; ++t) fn(ctx, t, 0);
    tl_inside_task = false;
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = fn;
    ctx_ = ctx;
    n_tasks_ = n_tasks;
    next_.store(0, std::memory_order_relaxed);
    active_workers_ = n_workers;
    ++generation_;
  }
  cv_work_.notify_all();
  drain(0);
  std::unique_lock<std::mutex> lk(mu_);
  cv_done_.wait(lk, [&] { return active_workers_ == 0; });
  fn_ = nullptr;
  ctx_ = nullptr;
}

}  // namespace sparsekit
