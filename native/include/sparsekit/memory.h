// 64-byte aligned buffers (2 MiB aligned from 4 MiB up, see allocate).
// Allocation failure is reported, never thrown.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sparsekit {

template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) { release(); p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Returns false when memory is exhausted; contents are not preserved.
  bool resize(size_t n) {
    if (n <= n_) { return true; }
    release();
    if (n > (SIZE_MAX - (size_t(4) << 20)) / sizeof(T)) return false;  // the byte count (and its rounding) would overflow
    size_t bytes = ((n * sizeof(T)) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    p_ = static_cast<T*>(allocate(&bytes));
    if (!p_) return false;
    n_ = n;
    return true;
  }
  bool resize_zeroed(size_t n) {
    if (!resize(n)) return false;
    std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
    return true;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  void release() { std::free(p_); p_ = nullptr; n_ = 0; }
  // Buffers of 4 MiB and more (packed weights, per-call workspaces) are
  // 2 MiB aligned and, on Linux, advised to use transparent huge pages
  // (where THP is in "madvise" mode, the default of many distributions, they
  // get none otherwise): the kernels walk weight panels across thousands of
  // 4 KiB pages, and huge pages measured 1-4 % faster on the dense GEMM
  // (paired calls in one process, 2 threads). SPARSEKIT_HUGEPAGES=0 turns it off.
  static void* allocate(size_t* bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr size_t kHuge = size_t(2) << 20;
    const char* env = std::getenv("SPARSEKIT_HUGEPAGES");
    if (*bytes >= 2 * kHuge && !(env && env[0] == '0')) {
      const size_t rounded = (*bytes + kHuge - 1) / kHuge * kHuge;
      void* p = std::aligned_alloc(kHuge, rounded);
      if (p) {
        madvise(p, rounded, MADV_HUGEPAGE);  // advice only: a refusal changes nothing
        *bytes = rounded;
        return p;
      }
    }
#endif
    return std::aligned_alloc(64, *bytes);
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// A grow-only scratch buffer per calling thread (each async call runs on its own
// libuv thread, so concurrent calls never share one).
float* thread_workspace(size_t floats, int slot = 0);

}  // namespace sparsekit
