#include "sparsekit/thread_pool.h"

#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#define SK_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SK_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define SK_CPU_RELAX() ((void)0)
#endif

namespace sparsekit {

namespace {
thread_local bool tl_inside_task = false;
// Spin iterations (~30–50 µs) before a worker sleeps or the caller blocks.
// Kernels on a busy event loop are called back to back; waking a sleeping
// thread costs tens of microseconds, which small ops cannot afford.
constexpr int kSpinIterations = 2000;
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
  stopping_.store(false);
  // Workers start from the generation current now: a job published before a
  // new thread gets to run must still count as new to it.
  uint64_t g = generation_.load(std::memory_order_acquire);
  for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i, g] { worker_loop(i + 1, g); });
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_.store(true);
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

// job_ packs the current job's generation (high 31 bits), a CLOSED flag and
// the number of workers that joined it (low 32 bits). A worker may only run
// tasks of a job it joined while the job was open; the caller closes the job
// once every task is claimed and waits only for the workers that joined. A
// worker the OS has not scheduled yet simply misses the job, instead of
// holding up the caller (which matters on an oversubscribed machine).
namespace {
constexpr uint64_t kClosed = 1ull << 32;
constexpr uint64_t kJoinedMask = kClosed - 1;
inline uint64_t job_gen(uint64_t s) { return s >> 33; }
}  // namespace

void ThreadPool::worker_loop(int worker_index, uint64_t seen) {
  for (;;) {
    for (int i = 0; i < kSpinIterations && generation_.load(std::memory_order_acquire) == seen && !stopping_.load(); ++i)
      SK_CPU_RELAX();
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_work_.wait(lk, [&] { return stopping_.load() || generation_.load(std::memory_order_acquire) != seen; });
    }
    if (stopping_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    uint64_t s = job_.load(std::memory_order_acquire);
    bool joined = false;
    while (job_gen(s) == (seen & 0x7fffffffull) && !(s & kClosed)) {
      if (job_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        joined = true;
        break;
      }
    }
    if (!joined) continue;
    drain(worker_index);
    s = job_.fetch_sub(1, std::memory_order_acq_rel) - 1;
    if ((s & kClosed) && (s & kJoinedMask) == 0) {
      std::lock_guard<std::mutex> lk(mu_);  // pairs with the caller's predicate check
      cv_done_.notify_one();
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
    uint64_t g = generation_.load(std::memory_order_relaxed) + 1;
    job_.store((g & 0x7fffffffull) << 33, std::memory_order_release);
    generation_.store(g, std::memory_order_release);
  }
  cv_work_.notify_all();
  drain(0);
  // Every task is claimed; close the job and wait for the workers that joined.
  uint64_t s = job_.fetch_or(kClosed, std::memory_order_acq_rel) | kClosed;
  for (int i = 0; i < kSpinIterations && (s & kJoinedMask) != 0; ++i) {
    SK_CPU_RELAX();
    s = job_.load(std::memory_order_acquire);
  }
  if ((s & kJoinedMask) != 0) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return (job_.load(std::memory_order_acquire) & kJoinedMask) == 0; });
  }
  fn_ = nullptr;
  ctx_ = nullptr;
}

}  // namespace sparsekit
