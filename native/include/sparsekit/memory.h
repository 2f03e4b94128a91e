// 64-byte aligned buffers. Allocation failure is reported, never thrown.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

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
    size_t bytes = ((n * sizeof(T)) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
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
  T* p_ = nullptr;
  size_t n_ = 0;
};

// A grow-only scratch buffer per calling thread (each async call runs on its own
// libuv thread, so concurrent calls never share one).
float* thread_workspace(size_t floats, int slot = 0);

}  // namespace sparsekit
