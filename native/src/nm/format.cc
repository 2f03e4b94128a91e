// The N:M format's operations: validation, pruning, masks, dense round trips,
// SR-STE gradients, random matrices and the CUTLASS 2:4 interchange.
//
// One portable implementation (no ISA variants): these move, compare and
// repack values; the arithmetic is at most one multiply-add per element and
// compilers vectorise it with the baseline flags. Row-parallel on the pool;
// every row's result depends only on that row, so the thread count never
// changes a result, and failures are reported for the lowest failing row.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#include "sparsekit/nm.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {

namespace {

int64_t rows_per_task(int64_t cols) {
  // ~64K elements per task: enough to amortise scheduling, enough tasks to balance.
  int64_t r = (int64_t(1) << 16) / (cols > 0 ? cols : 1);
  return r < 1 ? 1 : r;
}

template <class F>
void for_rows(int64_t rows, int64_t cols, F&& f) {
  int64_t per = rows_per_task(cols);
  int64_t tasks = (rows + per - 1) / per;
  ThreadPool::instance().parallel_for(tasks, [&](int64_t t, int) {
    int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (int64_t r = r0; r < r1; ++r) f(r);
  });
}

// Runs check(r) (returning false on failure) over all rows; returns the lowest
// failing row or -1.
template <class F>
int64_t first_failing_row(int64_t rows, int64_t cols, F&& check) {
  int64_t per = rows_per_task(cols);
  int64_t tasks = (rows + per - 1) / per;
  std::atomic<int64_t> first{rows};
  ThreadPool::instance().parallel_for(tasks, [&](int64_t t, int) {
    int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (int64_t r = r0; r < r1 && r < first.load(std::memory_order_relaxed); ++r) {
      if (!check(r)) {
        int64_t cur = first.load();
        while (r < cur && !first.compare_exchange_weak(cur, r)) {
        }
        return;
      }
    }
  });
  int64_t f = first.load();
  return f < rows ? f : -1;
}

inline int get_index(const uint8_t* row, int64_t row_bytes, int64_t j, int bits) {
  int64_t p = j * bits;
  int64_t byte = p >> 3;
  unsigned v = row[byte];
  if (byte + 1 < row_bytes) v |= unsigned(row[byte + 1]) << 8;
  return int((v >> (p & 7)) & ((1u << bits) - 1));
}

inline void set_index(uint8_t* row, int64_t j, int bits, int idx) {
  int64_t p = j * bits;
  for (int b = 0; b < bits; ++b, ++p)
    if ((idx >> b) & 1) row[p >> 3] = uint8_t(row[p >> 3] | (1u << (p & 7)));
}

// Total order on |w| with NaN above every number, so "the n largest" is always
// well defined: the bits of |w| compare like the magnitudes they encode.
inline uint32_t magnitude_key(float w) {
  uint32_t u;
  std::memcpy(&u, &w, 4);
  return u & 0x7fffffffu;
}

// The n columns of one group that pruning keeps, increasing; ties go to the
// lower column (a column is outranked by larger keys and by equal keys to its left).
inline void select_group(const float* g, int n, int m, int* keep) {
  uint32_t key[16];
  for (int i = 0; i < m; ++i) key[i] = magnitude_key(g[i]);
  int k = 0;
  for (int i = 0; i < m; ++i) {
    int rank = 0;
    for (int j = 0; j < m; ++j) rank += (key[j] > key[i]) || (key[j] == key[i] && j < i);
    if (rank < n) keep[k++] = i;
  }
}

std::string where(int64_t r, int64_t g, int m) {
  return "row " + std::to_string(r) + ", group " + std::to_string(g) + " (columns " + std::to_string(g * m) + ".." +
         std::to_string(g * m + m - 1) + ")";
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

int nm_index_bits(int m) {
  int b = 1;
  while ((1 << b) < m) ++b;
  return b;
}

Status nm_check_shape(const NmShape& s) {
  if (s.m < 2 || s.m > 16) return Status::Range("m must be an integer in 2..16, got " + std::to_string(s.m));
  if (s.n < 1 || s.n >= s.m)
    return Status::Range("n must be an integer with 1 ≤ n < m = " + std::to_string(s.m) + ", got " + std::to_string(s.n));
  if (s.rows < 1 || s.cols < 1) return Status::Range("rows and cols must be ≥ 1");
  if (s.cols % s.m != 0)
    return Status::Range("cols (" + std::to_string(s.cols) + ") must be a multiple of m = " + std::to_string(s.m) +
                         " (every row splits into groups of m columns)");
  return Status::Ok();
}

Status nm_validate_indices(const NmShape& s, const uint8_t* idx) {
  const int bits = nm_index_bits(s.m);
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s), groups = s.cols / s.m;
  const int64_t used_bits = kept * bits;
  auto row_ok = [&](int64_t r) {
    const uint8_t* row = idx + r * ib;
    for (int64_t g = 0; g < groups; ++g) {
      int prev = -1;
      for (int k = 0; k < s.n; ++k) {
        int v = get_index(row, ib, g * s.n + k, bits);
        if (v >= s.m || v <= prev) return false;
        prev = v;
      }
    }
    if (used_bits % 8 != 0 && (row[ib - 1] >> (used_bits % 8)) != 0) return false;
    return true;
  };
  int64_t bad = first_failing_row(s.rows, s.cols, row_ok);
  if (bad < 0) return Status::Ok();
  // Describe the first problem of that row.
  const uint8_t* row = idx + bad * ib;
  for (int64_t g = 0; g < groups; ++g) {
    int prev = -1;
    for (int k = 0; k < s.n; ++k) {
      int v = get_index(row, ib, g * s.n + k, bits);
      if (v >= s.m)
        return Status::Range("indices: " + where(bad, g, s.m) + " slot " + std::to_string(k) + " has index " +
                             std::to_string(v) + " ≥ m = " + std::to_string(s.m));
      if (v == prev)
        return Status::Range("indices: " + where(bad, g, s.m) + " keeps index " + std::to_string(v) +
                             " twice (two values on one column)");
      if (v < prev)
        return Status::Range("indices: " + where(bad, g, s.m) + " indices must increase within a group, got " +
                             std::to_string(prev) + " then " + std::to_string(v));
      prev = v;
    }
  }
  return Status::Range("indices: row " + std::to_string(bad) + " has nonzero unused bits after its last index (bits " +
                       std::to_string(used_bits % 8) + "..7 of the row's last byte must be 0)");
}

void nm_prune(const float* w, const NmShape& s, float* values, uint8_t* idx) {
  const int bits = nm_index_bits(s.m);
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s), groups = s.cols / s.m;
  for_rows(s.rows, s.cols, [&](int64_t r) {
    const float* wr = w + r * s.cols;
    float* vr = values + r * kept;
    uint8_t* ir = idx + r * ib;
    std::memset(ir, 0, size_t(ib));
    int keep[16];
    for (int64_t g = 0; g < groups; ++g) {
      select_group(wr + g * s.m, s.n, s.m, keep);
      for (int k = 0; k < s.n; ++k) {
        vr[g * s.n + k] = wr[g * s.m + keep[k]];
        set_index(ir, g * s.n + k, bits, keep[k]);
      }
    }
  });
}

void nm_prune_mask(const float* w, const NmShape& s, float* mask) {
  const int64_t groups = s.cols / s.m;
  for_rows(s.rows, s.cols, [&](int64_t r) {
    const float* wr = w + r * s.cols;
    float* mr = mask + r * s.cols;
    int keep[16];
    for (int64_t g = 0; g < groups; ++g) {
      for (int i = 0; i < s.m; ++i) mr[g * s.m + i] = 0.f;
      select_group(wr + g * s.m, s.n, s.m, keep);
      for (int k = 0; k < s.n; ++k) mr[g * s.m + keep[k]] = 1.f;
    }
  });
}

Status nm_from_mask(const float* w, const float* mask, const NmShape& s, float* values, uint8_t* idx) {
  const int bits = nm_index_bits(s.m);
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s), groups = s.cols / s.m;
  auto row_ok = [&](int64_t r) {
    const float* mr = mask + r * s.cols;
    for (int64_t g = 0; g < groups; ++g) {
      int ones = 0;
      for (int i = 0; i < s.m; ++i) {
        float v = mr[g * s.m + i];
        if (!(v == 0.f || v == 1.f)) return false;
        ones += v == 1.f;
      }
      if (ones > s.n) return false;
    }
    return true;
  };
  int64_t bad = first_failing_row(s.rows, s.cols, row_ok);
  if (bad >= 0) {
    const float* mr = mask + bad * s.cols;
    for (int64_t g = 0; g < groups; ++g) {
      int ones = 0;
      for (int i = 0; i < s.m; ++i) {
        float v = mr[g * s.m + i];
        if (!(v == 0.f || v == 1.f))
          return Status::Range("mask must hold only 0 and 1, got " + std::to_string(v) + " at [" + std::to_string(bad) +
                               ", " + std::to_string(g * s.m + i) + "]");
        ones += v == 1.f;
      }
      if (ones > s.n)
        return Status::Range("mask is not " + std::to_string(s.n) + ":" + std::to_string(s.m) + ": " +
                             where(bad, g, s.m) + " has " + std::to_string(ones) + " ones (at most " +
                             std::to_string(s.n) + " allowed)");
    }
  }
  for_rows(s.rows, s.cols, [&](int64_t r) {
    const float* wr = w + r * s.cols;
    const float* mr = mask + r * s.cols;
    float* vr = values + r * kept;
    uint8_t* ir = idx + r * ib;
    std::memset(ir, 0, size_t(ib));
    for (int64_t g = 0; g < groups; ++g) {
      bool take[16];
      int ones = 0;
      for (int i = 0; i < s.m; ++i) ones += (take[i] = mr[g * s.m + i] == 1.f);
      // Fill the remaining slots with the lowest unmasked columns, holding 0.
      for (int i = 0; i < s.m && ones < s.n; ++i)
        if (!take[i]) take[i] = true, ++ones;
      int k = 0;
      for (int i = 0; i < s.m; ++i) {
        if (!take[i]) continue;
        vr[g * s.n + k] = mr[g * s.m + i] == 1.f ? wr[g * s.m + i] : 0.f;
        set_index(ir, g * s.n + k, bits, i);
        ++k;
      }
    }
  });
  return Status::Ok();
}

void nm_to_dense(const NmShape& s, const float* values, const uint8_t* idx, float* dense) {
  const int bits = nm_index_bits(s.m);
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s);
  for_rows(s.rows, s.cols, [&](int64_t r) {
    float* dr = dense + r * s.cols;
    std::memset(dr, 0, size_t(s.cols) * 4);
    const uint8_t* ir = idx + r * ib;
    for (int64_t j = 0; j < kept; ++j) dr[j / s.n * s.m + get_index(ir, ib, j, bits)] = values[r * kept + j];
  });
}

void nm_mask(const NmShape& s, const uint8_t* idx, float* mask) {
  const int bits = nm_index_bits(s.m);
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s);
  for_rows(s.rows, s.cols, [&](int64_t r) {
    float* mr = mask + r * s.cols;
    for (int64_t c = 0; c < s.cols; ++c) mr[c] = 0.f;
    const uint8_t* ir = idx + r * ib;
    for (int64_t j = 0; j < kept; ++j) mr[j / s.n * s.m + get_index(ir, ib, j, bits)] = 1.f;
  });
}

bool nm_is_nm(const float* a, int64_t rows, int64_t cols, int n, int m) {
  if (m < 1 || cols % m != 0) return false;
  const int64_t groups = cols / m;
  return first_failing_row(rows, cols, [&](int64_t r) {
           const float* ar = a + r * cols;
           for (int64_t g = 0; g < groups; ++g) {
             int nz = 0;
             for (int i = 0; i < m; ++i) nz += ar[g * m + i] != 0.f;  // NaN counts as nonzero
             if (nz > n) return false;
           }
           return true;
         }) < 0;
}

void nm_srste_grad(const float* grad, const float* w, const float* mask, int64_t count, float lambda, float* out) {
  const int64_t chunk = int64_t(1) << 16;
  ThreadPool::instance().parallel_for((count + chunk - 1) / chunk, [&](int64_t t, int) {
    int64_t i0 = t * chunk, i1 = std::min(count, i0 + chunk);
    for (int64_t i = i0; i < i1; ++i) out[i] = grad[i] + lambda * ((1.f - mask[i]) * w[i]);
  });
}

void nm_random(const NmShape& s, uint64_t seed, float scale, float* values, uint8_t* idx) {
  const int bits = nm_index_bits(s.m);
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s), groups = s.cols / s.m;
  for_rows(s.rows, s.cols, [&](int64_t r) {
    // Per-row stream: the same matrix for any thread count.
    uint64_t st = seed * 0x2545f4914f6cdd1dull + uint64_t(r) * 0x9e3779b97f4a7c15ull;
    uint8_t* ir = idx + r * ib;
    std::memset(ir, 0, size_t(ib));
    for (int64_t g = 0; g < groups; ++g) {
      int cols[16];
      for (int i = 0; i < s.m; ++i) cols[i] = i;
      for (int k = 0; k < s.n; ++k) {  // partial Fisher–Yates
        int j = k + int(splitmix64(st) % uint64_t(s.m - k));
        std::swap(cols[k], cols[j]);
      }
      std::sort(cols, cols + s.n);
      for (int k = 0; k < s.n; ++k) {
        double u = double(splitmix64(st) >> 40) / double(uint64_t(1) << 24);  // [0, 1), 24 bits
        values[r * kept + g * s.n + k] = float((2.0 * u - 1.0) * scale);
        set_index(ir, g * s.n + k, bits, cols[k]);
      }
    }
  });
}

// ---- half precision ---------------------------------------------------------

uint16_t float_to_half_bits(float f, HalfType t) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (t == HalfType::kBFloat16) {
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40);  // NaN stays NaN (quiet)
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);                // round to nearest even
  }
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0u));
  int exp = int(x >> 23) - 127 + 15;
  if (exp >= 31) return uint16_t(sign | 0x7c00u);  // ≥ 2^16: overflow to infinity
  if (exp <= 0) {
    // Subnormal half: k · 2^-24 with k = value / 2^-24, rounded to nearest even.
    int shift = 14 - exp;
    if (shift > 24) return sign;  // below half the smallest subnormal
    uint32_t mant = (x & 0x7fffffu) | 0x800000u;
    uint32_t k = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (k & 1u))) ++k;
    return uint16_t(sign | k);
  }
  uint32_t k = (uint32_t(exp) << 10) | ((x >> 13) & 0x3ffu), rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (k & 1u))) ++k;  // a carry into the exponent is right, up to infinity
  return uint16_t(sign | k);
}

float half_bits_to_float(uint16_t h, HalfType t) {
  uint32_t x;
  if (t == HalfType::kBFloat16) {
    x = uint32_t(h) << 16;
  } else {
    uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (e == 0) {
      float v = float(mant) * 5.9604644775390625e-8f;  // mant · 2^-24, exact
      std::memcpy(&x, &v, 4);
      x |= sign;
    } else if (e == 31) {
      x = sign | 0x7f800000u | (mant << 13);
    } else {
      x = sign | ((e - 15 + 127) << 23) | (mant << 13);
    }
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// ---- CUTLASS 2:4 ------------------------------------------------------------

int64_t cutlass24_meta_offset(int64_t r, int64_t c, int64_t rows) {
  // Rows are interleaved in bands of 32 (8 × 4 for 16-bit metadata), then the
  // 2×2 blocks are transposed, then stored column-major with pairs of columns
  // interleaved (ColumnMajorInterleaved<2>). Facts from PyTorch's
  // _calculate_meta_reordering_scatter_offsets / CUTLASS reorder_meta().
  int64_t dr = r / 32 * 32 + (r % 8) * 4 + (r % 32) / 8;
  int64_t dc = c;
  if (dr % 2 == 0 && dc % 2 == 1) {
    ++dr;
    --dc;
  } else if (dr % 2 == 1 && dc % 2 == 0) {
    --dr;
    ++dc;
  }
  return (dc / 2) * rows * 2 + dr * 2 + dc % 2;
}

static Status check_cutlass_shape(int64_t rows, int64_t cols) {
  if (rows % 32 != 0 || cols % 32 != 0)
    return Status::Range("the CUTLASS 2:4 layout needs rows % 32 == 0 and cols % 32 == 0, got [" + std::to_string(rows) +
                         ", " + std::to_string(cols) + "]");
  return Status::Ok();
}

Status nm_to_cutlass24(const NmShape& s, const float* values, const uint8_t* idx, HalfType t, uint16_t* values_out,
                       int16_t* meta_out) {
  if (s.n != 2 || s.m != 4)
    return Status::Range("only 2:4 matrices have a CUTLASS layout, this one is " + std::to_string(s.n) + ":" +
                         std::to_string(s.m));
  Status st = check_cutlass_shape(s.rows, s.cols);
  if (!st.ok()) return st;
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s), mcols = s.cols / 16;
  for_rows(s.rows, s.cols, [&](int64_t r) {
    for (int64_t j = 0; j < kept; ++j) values_out[r * kept + j] = float_to_half_bits(values[r * kept + j], t);
    const uint8_t* ir = idx + r * ib;
    for (int64_t c = 0; c < mcols; ++c) {
      uint32_t word = 0;
      for (int q = 0; q < 4; ++q) {
        int64_t g = c * 4 + q;
        uint32_t i0 = uint32_t(get_index(ir, ib, 2 * g, 2)), i1 = uint32_t(get_index(ir, ib, 2 * g + 1, 2));
        word |= (i0 | (i1 << 2)) << (4 * q);
      }
      meta_out[cutlass24_meta_offset(r, c, s.rows)] = int16_t(uint16_t(word));
    }
  });
  return Status::Ok();
}

Status nm_from_cutlass24(int64_t rows, int64_t cols, const uint16_t* values_in, HalfType t, const int16_t* meta_in,
                         float* values, uint8_t* idx) {
  Status st = check_cutlass_shape(rows, cols);
  if (!st.ok()) return st;
  const NmShape s{rows, cols, 2, 4};
  const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s), mcols = cols / 16;
  auto nibble_ok = [](uint32_t nib) { return (nib & 3u) < (nib >> 2); };
  int64_t bad = first_failing_row(rows, cols, [&](int64_t r) {
    for (int64_t c = 0; c < mcols; ++c) {
      uint32_t word = uint16_t(meta_in[cutlass24_meta_offset(r, c, rows)]);
      for (int q = 0; q < 4; ++q)
        if (!nibble_ok((word >> (4 * q)) & 0xfu)) return false;
    }
    return true;
  });
  if (bad >= 0) {
    for (int64_t c = 0; c < mcols; ++c) {
      uint32_t word = uint16_t(meta_in[cutlass24_meta_offset(bad, c, rows)]);
      for (int q = 0; q < 4; ++q) {
        uint32_t nib = (word >> (4 * q)) & 0xfu;
        if (!nibble_ok(nib))
          return Status::Range("meta: " + where(bad, c * 4 + q, 4) + " encodes indices (" + std::to_string(nib & 3u) +
                               ", " + std::to_string(nib >> 2) +
                               "); a 2:4 group's two indices must be distinct and increasing");
      }
    }
  }
  for_rows(rows, cols, [&](int64_t r) {
    for (int64_t j = 0; j < kept; ++j) values[r * kept + j] = half_bits_to_float(values_in[r * kept + j], t);
    uint8_t* ir = idx + r * ib;
    std::memset(ir, 0, size_t(ib));
    for (int64_t c = 0; c < mcols; ++c) {
      uint32_t word = uint16_t(meta_in[cutlass24_meta_offset(r, c, rows)]);
      for (int q = 0; q < 4; ++q) {
        uint32_t nib = (word >> (4 * q)) & 0xfu;
        int64_t g = c * 4 + q;
        set_index(ir, 2 * g, 2, int(nib & 3u));
        set_index(ir, 2 * g + 1, 2, int(nib >> 2));
      }
    }
  });
  return Status::Ok();
}

}  // namespace sparsekit
