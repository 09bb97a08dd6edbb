// jaxsae's CPU kernels, called from jitted JAX code through the XLA FFI
// (jaxsae/cpu_kernels.py compiles this file on first use and registers the handlers).
//
// XLA's CPU backend runs the dictionary TopK step's selection and sparse products on
// one thread, and its top-k keeps a per-row heap of (value, index) pairs: on
// [4096, 3072] with k = 32 it takes 0.055 s, a fifth of the whole training step. Its
// convolution op is slow, and 20-40x slower inside a loop. These kernels do the same
// work on every core:
//
//   jaxsae_top_k      values, indices of the k largest entries of each row, exactly as
//                     XLA's top-k orders them: larger first, a total order in which
//                     -0.0 < 0.0 (NaN above +inf, -NaN below -inf), equal values by
//                     lower index first.
//   jaxsae_relu_top_k the same of relu(x + bias) (bias [n]), as jax.nn.relu gives it,
//                     without writing relu(x + bias) out first
//   jaxsae_first_k_mask  bool, per row: x > t, or x == t among the first `need` such
//                     entries (lower index first), where t is the row's k-th value in
//                     top-k order and need = k - #(x > t), compared as floats
//                     (jaxsae.sparsity._first_k_mask's rule; one row can be a
//                     whole flattened batch, BatchTopK's)
//   jaxsae_weighted_rows  out[t] = sum_j w[t, j] * table[idx[t, j]]       [T, d]
//   jaxsae_row_dots       out[t, j] = g[t] . table[idx[t, j]]              [T, m]
//   jaxsae_scatter_outer  out[l] = sum over idx[t, j] = l of w[t, j] * rows[t]  [n, d]
//
//   jaxsae_conv_gather, jaxsae_conv_scatter, jaxsae_conv_weights: the three sums of a
//                     convolution layer and its transpose, forward and backward
//                     (stated at their section below)
//
// Every sum runs in a fixed order (j ascending for a token; (t, j) ascending for a
// latent), whatever the number of threads, so results are deterministic. Indices
// outside [0, n) contribute nothing (they never occur: they come from top-k).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ------------------------------------------------------------------ threads

// At most JAXSAE_KERNEL_THREADS threads, if set.
int64_t thread_cap() {
  static const int64_t cap = [] {
    const char* text = std::getenv("JAXSAE_KERNEL_THREADS");
    int64_t n = text ? std::atoll(text) : 0;
    return n > 0 ? n : std::numeric_limits<int64_t>::max();
  }();
  return cap;
}

// Run body(lo, hi) over [0, count) in contiguous parts, one per thread of XLA's
// intra-op pool (whose threads would otherwise spin beside ours), the calling thread
// taking parts too. `work` is the rough cost of the whole range in element
// operations: small jobs stay on the calling thread. A pool task that starts after
// every part is taken returns at once, touching only the shared counters (kept
// alive by the task itself), so the caller waits for no task to start.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t count, int64_t work, Body body) {
  int64_t parts = std::max<int64_t>(1, pool.num_threads());
  parts = std::min({parts, thread_cap(), count, std::max<int64_t>(1, work >> 16)});
  if (parts <= 1) {
    body(int64_t{0}, count);
    return;
  }
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto counters = std::make_shared<Counters>();
  auto run = [counters, parts, count, &body] {
    for (int64_t p; (p = counters->next.fetch_add(1)) < parts;) {
      body(count * p / parts, count * (p + 1) / parts);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t p = 1; p < parts; ++p) pool.Schedule([run] { run(); });
  run();
  while (counters->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// ------------------------------------------------------------------ top-k

// A signed integer that orders floats as XLA's top-k does (-0.0 < 0.0).
inline int32_t order_key(float v) {
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return i ^ ((i >> 31) & 0x7fffffff);
}
inline int64_t order_key(double v) {
  int64_t i;
  std::memcpy(&i, &v, sizeof i);
  return i ^ ((i >> 63) & 0x7fffffffffffffffLL);
}

template <typename T>
using Key = decltype(order_key(T{}));

template <typename T>
struct Entry {
  Key<T> key;
  int32_t index;
};

// (key, index) before (key', index') in the output order.
template <typename T>
inline bool before(const Entry<T>& a, const Entry<T>& b) {
  return a.key != b.key ? a.key > b.key : a.index < b.index;
}

// The entries of one row: x[i], or relu(x[i] + bias[i]) computed as jax.nn.relu
// computes it (positive values and NaNs kept, -0.0 and the rest to +0.0). The sign
// of a NaN sum of two NaNs of opposite signs is the hardware's (and XLA's) choice.
template <typename T>
struct Plain {
  const T* x;
  T value(int64_t i) const { return x[i]; }
  Key<T> key(int64_t i) const { return order_key(x[i]); }
};

template <typename T>
struct ReluBias {
  const T* x;
  const T* bias;
  T value(int64_t i) const {
    T v = x[i] + bias[i];
    return v > 0 || v != v ? v : T(0);
  }
  // order_key(value(i)) without a branch: keys below -inf's are -NaNs, which relu
  // keeps; every other key at or below 0.0's (0) becomes 0.
  Key<T> key(int64_t i) const {
    Key<T> k = order_key(T(x[i] + bias[i]));
    return k < kNegInf ? k : std::max(k, Key<T>(0));
  }
  static inline const Key<T> kNegInf = order_key(-std::numeric_limits<T>::infinity());
};

// The k first entries of one row in output order, by selection: O(n + k log k).
template <typename T, typename Row>
void select_row(const Row& row, int64_t n, int64_t k, std::vector<Entry<T>>& all,
                Entry<T>* out) {
  all.resize(n);
  for (int64_t i = 0; i < n; ++i) all[i] = {row.key(i), int32_t(i)};
  if (k < n) std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), before<T>);
  std::sort(all.begin(), all.begin() + k, before<T>);
  std::copy(all.begin(), all.begin() + k, out);
}

// The k first entries of one row in output order, for k <= n / 32: each chunk of
// 16 entries' largest key (one vectorised pass); the k-th largest of those maxima, t,
// is a lower bound of the row's k-th key (k chunks hold an entry >= t), so the
// entries >= t, found in the chunks whose maximum reaches t and in the tail, hold
// the answer; they are few (about k) and are sorted.
constexpr int64_t kChunk = 16;

template <typename T, typename Row>
void chunked_row(const Row& row, int64_t n, int64_t k, std::vector<Key<T>>& maxima,
                 std::vector<Key<T>>& scratch, std::vector<Entry<T>>& found,
                 Entry<T>* out) {
  int64_t chunks = n / kChunk;
  maxima.resize(chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    Key<T> m = std::numeric_limits<Key<T>>::min();
    for (int64_t i = 0; i < kChunk; ++i) m = std::max(m, row.key(c * kChunk + i));
    maxima[c] = m;
  }
  scratch.assign(maxima.begin(), maxima.end());
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                   std::greater<Key<T>>());
  Key<T> t = scratch[k - 1];
  found.clear();
  auto take = [&](int64_t i) {
    Key<T> key = row.key(i);
    if (key >= t) found.push_back({key, int32_t(i)});
  };
  for (int64_t c = 0; c < chunks; ++c)
    if (maxima[c] >= t)
      for (int64_t i = c * kChunk; i < (c + 1) * kChunk; ++i) take(i);
  for (int64_t i = chunks * kChunk; i < n; ++i) take(i);
  // Fewer than k only where the two passes computed an entry differently: the sign
  // of NaN + (-NaN) is the hardware's choice of operand, which vector and scalar
  // code may make differently. One pass then decides.
  if (int64_t(found.size()) < k) return select_row<T>(row, n, k, found, out);
  std::partial_sort(found.begin(), found.begin() + k, found.end(), before<T>);
  std::copy(found.begin(), found.begin() + k, out);
}

// Each row of x [rows, n] (with bias [n]: of relu(x + bias)): its k largest
// entries' values and indices.
template <typename T>
void top_k(ffi::ThreadPool& pool, const T* x, const T* bias, int64_t rows, int64_t n,
           int64_t k, T* values, int32_t* indices) {
  bool chunked = k * 2 * kChunk <= n;
  parallel_for(pool, rows, rows * n, [&](int64_t lo, int64_t hi) {
    std::vector<Entry<T>> best(k), all;
    std::vector<Key<T>> maxima, scratch;
    auto one = [&](int64_t r, const auto& row) {
      if (chunked)
        chunked_row<T>(row, n, k, maxima, scratch, all, best.data());
      else
        select_row<T>(row, n, k, all, best.data());
      for (int64_t j = 0; j < k; ++j) {
        values[r * k + j] = row.value(best[j].index);
        indices[r * k + j] = best[j].index;
      }
    };
    for (int64_t r = lo; r < hi; ++r) {
      if (bias)
        one(r, ReluBias<T>{x + r * n, bias});
      else
        one(r, Plain<T>{x + r * n});
    }
  });
}

// ------------------------------------------------------------------ first-k mask

template <typename T>
inline T from_key(Key<T> key) {  // order_key's flip undoes itself
  Key<T> bits = key ^ ((key >> (8 * sizeof key - 1)) & std::numeric_limits<Key<T>>::max());
  T v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The k-th largest key of one row of n entries, 1 <= k <= n: selected among the
// keys at or above a lower bound (the k-th largest 16-entry chunk maximum, as in
// chunked_row), or among all keys where k is a large part of n. Only the key's
// value is wanted, so the candidates' order does not matter. `over(count, body)`
// runs body(lo, hi) over [0, count) on one thread or many.
template <typename T, typename Over>
Key<T> kth_key(const T* x, int64_t n, int64_t k, Over&& over) {
  std::vector<Key<T>> found;
  int64_t chunks = n / kChunk;
  if (k * 2 * kChunk > n) {
    found.resize(n);
    over(n, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) found[i] = order_key(x[i]);
    });
  } else {
    std::vector<Key<T>> maxima(chunks);
    over(chunks, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        Key<T> m = std::numeric_limits<Key<T>>::min();
        for (int64_t i = 0; i < kChunk; ++i) m = std::max(m, order_key(x[c * kChunk + i]));
        maxima[c] = m;
      }
    });
    std::vector<Key<T>> scratch(maxima);
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                     std::greater<Key<T>>());
    Key<T> t = scratch[k - 1];
    std::mutex lock;
    over(chunks, [&](int64_t lo, int64_t hi) {
      std::vector<Key<T>> mine;
      for (int64_t c = lo; c < hi; ++c)
        if (maxima[c] >= t)
          for (int64_t i = c * kChunk; i < (c + 1) * kChunk; ++i)
            if (order_key(x[i]) >= t) mine.push_back(order_key(x[i]));
      std::lock_guard<std::mutex> hold(lock);
      found.insert(found.end(), mine.begin(), mine.end());
    });
    for (int64_t i = chunks * kChunk; i < n; ++i)
      if (order_key(x[i]) >= t) found.push_back(order_key(x[i]));
  }
  std::nth_element(found.begin(), found.begin() + (k - 1), found.end(),
                   std::greater<Key<T>>());
  return found[k - 1];
}

// One row's mask by the rule above, with t its k-th value. The row is cut into
// `parts` segments: each counts its entries above t and equal to t, then writes its
// mask knowing how many equal entries come before it.
template <typename T, typename Over>
void mask_row(const T* x, int64_t n, int64_t k, int64_t parts, Over&& over, bool* mask) {
  const T t = from_key<T>(kth_key<T>(x, n, k, over));
  std::vector<int64_t> above(parts), tied(parts), before(parts);
  auto start = [&](int64_t p) { return n * p / parts; };
  over(parts, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      int64_t up = 0, eq = 0;
      for (int64_t i = start(p); i < start(p + 1); ++i) {
        up += x[i] > t;
        eq += x[i] == t;
      }
      above[p] = up;
      tied[p] = eq;
    }
  });
  int64_t need = k;
  for (int64_t p = 0; p < parts; ++p) need -= above[p];
  for (int64_t p = 1; p < parts; ++p) before[p] = before[p - 1] + tied[p - 1];
  over(parts, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      int64_t seen = before[p];
      if (seen + tied[p] <= need) {  // every equal entry of the segment is kept
        for (int64_t i = start(p); i < start(p + 1); ++i) mask[i] = x[i] > t || x[i] == t;
        continue;
      }
      for (int64_t i = start(p); i < start(p + 1); ++i) {
        bool eq = x[i] == t;
        seen += eq;
        mask[i] = x[i] > t || (eq && seen <= need);
      }
    }
  });
}

// Each row of x [rows, n]: rows over the threads where there are enough of them,
// else each row's passes over the threads (a fixed number of segments, so the
// result does not depend on the thread count; it does not anyway: counts are exact).
template <typename T>
void first_k_mask(ffi::ThreadPool& pool, const T* x, int64_t rows, int64_t n, int64_t k,
                  bool* mask) {
  auto serial = [](int64_t count, auto&& body) { body(int64_t{0}, count); };
  int64_t threads = std::min(std::max<int64_t>(1, pool.num_threads()), thread_cap());
  if (rows >= threads || n < (int64_t{1} << 16)) {
    parallel_for(pool, rows, rows * n, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) mask_row(x + r * n, n, k, 1, serial, mask + r * n);
    });
    return;
  }
  auto pooled = [&](int64_t count, auto&& body) { parallel_for(pool, count, n, body); };
  int64_t parts = std::clamp<int64_t>(n >> 15, 1, 256);
  for (int64_t r = 0; r < rows; ++r) mask_row(x + r * n, n, k, parts, pooled, mask + r * n);
}

// ------------------------------------------------------------------ sparse products

template <typename T>
void weighted_rows(ffi::ThreadPool& pool, const T* w, const int32_t* idx, const T* table, int64_t tokens,
                   int64_t m, int64_t n, int64_t d, T* out) {
  parallel_for(pool, tokens, tokens * m * d, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      T* __restrict o = out + t * d;
      std::fill(o, o + d, T(0));
      for (int64_t j = 0; j < m; ++j) {
        int64_t l = idx[t * m + j];
        if (l < 0 || l >= n) continue;
        const T* __restrict row = table + l * d;
        T a = w[t * m + j];
        for (int64_t c = 0; c < d; ++c) o[c] += a * row[c];
      }
    }
  });
}

// a . b in a fixed order: 16 running partial sums (one vector register for float32),
// then their sum, then the tail.
template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t d) {
  constexpr int64_t kLanes = 16;
  T part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes)
    for (int64_t i = 0; i < kLanes; ++i) part[i] += a[c + i] * b[c + i];
  T s = 0;
  for (int64_t i = 0; i < kLanes; ++i) s += part[i];
  for (; c < d; ++c) s += a[c] * b[c];
  return s;
}

template <typename T>
void row_dots(ffi::ThreadPool& pool, const T* g, const int32_t* idx, const T* table, int64_t tokens,
              int64_t m, int64_t n, int64_t d, T* out) {
  parallel_for(pool, tokens, tokens * m * d, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const T* __restrict gt = g + t * d;
      for (int64_t j = 0; j < m; ++j) {
        int64_t l = idx[t * m + j];
        out[t * m + j] = l >= 0 && l < n ? dot(gt, table + l * d, d) : T(0);
      }
    }
  });
}

// Each thread owns a range of output rows and scans every (t, j): no two threads
// write one row, and each row's sum runs in (t, j) order.
template <typename T>
void scatter_outer(ffi::ThreadPool& pool, const T* w, const int32_t* idx, const T* rows, int64_t tokens,
                   int64_t m, int64_t n, int64_t d, T* out) {
  std::fill(out, out + n * d, T(0));
  parallel_for(pool, n, tokens * m * d, [&](int64_t lo, int64_t hi) {
    for (int64_t t = 0; t < tokens; ++t) {
      const T* __restrict rt = rows + t * d;
      for (int64_t j = 0; j < m; ++j) {
        int64_t l = idx[t * m + j];
        if (l < lo || l >= hi) continue;
        T* __restrict o = out + l * d;
        T a = w[t * m + j];
        for (int64_t c = 0; c < d; ++c) o[c] += a * rt[c];
      }
    }
  });
}

// ------------------------------------------------------------------ convolutions
//
// NHWC images, VALID windows, kernels [k, k, Ci, Co] (HWIO), stride s. Three sums
// make a convolution layer and its transpose, forward and backward:
//
//   gather   y[b, oy, ox, o] = sum_{i, j, c} x[b, oy*s + i, ox*s + j, c] w[i, j, c, o]
//            (a convolution; a transposed convolution's input gradient)
//   scatter  y[b, h*s + i, w*s + j, o] += sum_c x[b, h, w, c] w[i, j, c, o]
//            (a transposed convolution; a convolution's input gradient), into an
//            output of a given size (rows and columns no window reaches stay 0)
//   weights  dw[i, j, c, o] = sum_{b, oy, ox} x[b, oy*s + i, ox*s + j, c] g[b, oy, ox, o]
//            (both layers' kernel gradients)
//
// Samples are split over threads; each output value is summed in a fixed order,
// and the weight gradient adds fixed groups of samples in order, so results do not
// depend on the thread count. Unlike XLA's im2col form nothing k*k times the input's
// size is written: each window is read where it lies.

struct ConvShape {
  int64_t b, h, w, ci, k, co, s, ho, wo;  // ho, wo: the windows' grid
};

// N values of T as one GCC/Clang vector (registers, whatever the instruction set):
// written with plain arrays, the compiler kept some of these sums in memory (16
// output channels ran 15x slower than 32).
template <typename T, int N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int N>
using Vec = typename VecOf<T, N>::type;

template <typename V>
inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
inline void store(void* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// CO values as NV vectors of W lanes, W at most one 64-byte register's worth.
template <typename T, int CO>
struct Lanes {
  static constexpr int W = CO * sizeof(T) < 64 ? CO : int(64 / sizeof(T));
  static constexpr int NV = CO / W;
  using V = Vec<T, W>;
};

// P adjacent output pixels of the gather, CO output channels each, in registers:
// each kernel vector loaded serves the P pixels.
template <typename T, int CO, int P>
inline void gather_pixels(const ConvShape& d, const T* x_row0, const T* w, T* out,
                          int64_t ox) {
  using L = Lanes<T, CO>;
  typename L::V acc[P][L::NV] = {};
  const int64_t span = d.k * d.ci;  // one window row: k columns of ci channels
  const int64_t step = d.s * d.ci;  // from one pixel's window to the next
  for (int64_t i = 0; i < d.k; ++i) {
    const T* xr = x_row0 + i * d.w * d.ci + ox * step;
    const T* wi = w + i * span * CO;
    for (int64_t q = 0; q < span; ++q) {
      typename L::V wq[L::NV];
      for (int v = 0; v < L::NV; ++v) wq[v] = load<typename L::V>(wi + q * CO + v * L::W);
      for (int p = 0; p < P; ++p) {
        T a = xr[p * step + q];
        for (int v = 0; v < L::NV; ++v) acc[p][v] += a * wq[v];
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < L::NV; ++v) store(out + (ox + p) * CO + v * L::W, acc[p][v]);
}

template <typename T, int CO>
void gather_fixed(ffi::ThreadPool& pool, const ConvShape& d, const T* x, const T* w,
                  T* y) {
  constexpr int P = CO * sizeof(T) > 64 ? 4 : 8;
  parallel_for(pool, d.b, d.b * d.ho * d.wo * d.k * d.k * d.ci * d.co,
               [&](int64_t lo, int64_t hi) {
                 for (int64_t b = lo; b < hi; ++b)
                   for (int64_t oy = 0; oy < d.ho; ++oy) {
                     const T* x0 = x + ((b * d.h + oy * d.s) * d.w) * d.ci;
                     T* out = y + ((b * d.ho + oy) * d.wo) * CO;
                     int64_t ox = 0;
                     for (; ox + P <= d.wo; ox += P)
                       gather_pixels<T, CO, P>(d, x0, w, out, ox);
                     for (; ox < d.wo; ++ox) gather_pixels<T, CO, 1>(d, x0, w, out, ox);
                   }
               });
}

template <typename T>
void gather_any(ffi::ThreadPool& pool, const ConvShape& d, const T* x, const T* w,
                T* y) {
  const int64_t span = d.k * d.ci;
  parallel_for(pool, d.b, d.b * d.ho * d.wo * d.k * span * d.co,
               [&](int64_t lo, int64_t hi) {
                 for (int64_t b = lo; b < hi; ++b)
                   for (int64_t oy = 0; oy < d.ho; ++oy)
                     for (int64_t ox = 0; ox < d.wo; ++ox) {
                       T* out = y + ((b * d.ho + oy) * d.wo + ox) * d.co;
                       std::fill(out, out + d.co, T(0));
                       for (int64_t i = 0; i < d.k; ++i) {
                         const T* xr = x + ((b * d.h + oy * d.s + i) * d.w + ox * d.s) * d.ci;
                         const T* wi = w + i * span * d.co;
                         for (int64_t q = 0; q < span; ++q) {
                           T a = xr[q];
                           const T* wq = wi + q * d.co;
                           for (int64_t o = 0; o < d.co; ++o) out[o] += a * wq[o];
                         }
                       }
                     }
               });
}

template <typename T>
void conv_gather(ffi::ThreadPool& pool, const ConvShape& d, const T* x, const T* w,
                 T* y) {
  switch (d.co) {
    case 8: return gather_fixed<T, 8>(pool, d, x, w, y);
    case 16: return gather_fixed<T, 16>(pool, d, x, w, y);
    case 32: return gather_fixed<T, 32>(pool, d, x, w, y);
    default: return gather_any(pool, d, x, w, y);
  }
}

// y [b, hy, wy, co], hy >= (h - 1) * s + k. Per input pixel: the k*k*co values it
// adds, v = x[b, h, w, :] @ the kernel read as [ci, k*k*co] (wt, transposed once),
// made L lanes at a time in registers for P pixels of a row at once (each kernel
// vector loaded serves the P pixels); then each v's k rows (k*co values each,
// contiguous in y) added in place.
template <typename T, int L, int P>
inline int64_t pixel_lanes(const T* xv, int64_t x_step, const T* wt, int64_t ci,
                           int64_t kkco, int64_t q0, T* v) {
  using V = Vec<T, L>;
  for (; q0 + L <= kkco; q0 += L) {
    V acc[P] = {};
    for (int64_t c = 0; c < ci; ++c) {
      V wc = load<V>(wt + c * kkco + q0);
      for (int p = 0; p < P; ++p) acc[p] += xv[p * x_step + c] * wc;
    }
    for (int p = 0; p < P; ++p) store(v + p * kkco + q0, acc[p]);
  }
  return q0;
}

template <typename T, int P>
inline void scatter_pixels(const ConvShape& d, int64_t wy, const T* xv, const T* wt,
                           T* v, T* y_row0, int64_t c0) {
  const int64_t kkco = d.k * d.k * d.co, kco = d.k * d.co;
  int64_t q = pixel_lanes<T, 16, P>(xv, d.ci, wt, d.ci, kkco, 0, v);
  q = pixel_lanes<T, 8, P>(xv, d.ci, wt, d.ci, kkco, q, v);
  pixel_lanes<T, 1, P>(xv, d.ci, wt, d.ci, kkco, q, v);
  for (int p = 0; p < P; ++p)
    for (int64_t i = 0; i < d.k; ++i) {
      T* __restrict yr = y_row0 + (i * wy + (c0 + p) * d.s) * d.co;
      const T* __restrict vi = v + p * kkco + i * kco;
      for (int64_t e = 0; e < kco; ++e) yr[e] += vi[e];
    }
}

template <typename T>
void conv_scatter(ffi::ThreadPool& pool, const ConvShape& d, int64_t hy, int64_t wy,
                  const T* x, const T* w, T* y) {
  constexpr int P = 4;
  const int64_t kkco = d.k * d.k * d.co;
  std::vector<T> wt(d.ci * kkco);  // [ci, (i, j, o)]
  for (int64_t q = 0; q < d.k * d.k; ++q)
    for (int64_t c = 0; c < d.ci; ++c)
      for (int64_t o = 0; o < d.co; ++o)
        wt[c * kkco + q * d.co + o] = w[(q * d.ci + c) * d.co + o];
  parallel_for(pool, d.b, d.b * d.h * d.w * d.ci * kkco, [&](int64_t lo, int64_t hi) {
    std::vector<T> v(P * kkco);
    for (int64_t b = lo; b < hi; ++b) {
      T* yb = y + b * hy * wy * d.co;
      std::fill(yb, yb + hy * wy * d.co, T(0));
      for (int64_t r = 0; r < d.h; ++r) {
        const T* xr = x + ((b * d.h + r) * d.w) * d.ci;
        T* y_row0 = yb + r * d.s * wy * d.co;
        int64_t c0 = 0;
        for (; c0 + P <= d.w; c0 += P)
          scatter_pixels<T, P>(d, wy, xr + c0 * d.ci, wt.data(), v.data(), y_row0, c0);
        for (; c0 < d.w; ++c0)
          scatter_pixels<T, 1>(d, wy, xr + c0 * d.ci, wt.data(), v.data(), y_row0, c0);
      }
    }
  });
}

// dw [k, k, ci, co] from x [b, h, w, ci] and g [b, ho, wo, co]. Groups of kGroup
// samples each give a partial sum (any thread), added in group order. Within a
// group, for each window row i and Q window entries q at a time, the sums over the
// output row's pixels stay in registers (CO channels each).
constexpr int64_t kGroup = 8;

template <typename T, int CO, int Q>
inline void weights_entries(const ConvShape& d, const T* xrow, const T* grow,
                            int64_t q0, T* out) {
  using L = Lanes<T, CO>;
  typename L::V acc[Q][L::NV] = {};
  const int64_t step = d.s * d.ci;
  for (int64_t ox = 0; ox < d.wo; ++ox) {
    typename L::V gv[L::NV];
    for (int v = 0; v < L::NV; ++v) gv[v] = load<typename L::V>(grow + ox * CO + v * L::W);
    const T* xq = xrow + ox * step + q0;
    for (int q = 0; q < Q; ++q)
      for (int v = 0; v < L::NV; ++v) acc[q][v] += xq[q] * gv[v];
  }
  for (int q = 0; q < Q; ++q)
    for (int v = 0; v < L::NV; ++v) {
      T* o = out + (q0 + q) * CO + v * L::W;
      store(o, load<typename L::V>(o) + acc[q][v]);
    }
}

template <typename T, int CO>
void weights_group(const ConvShape& d, const T* x, const T* g, int64_t b0,
                   int64_t b1, T* part) {
  constexpr int Q = CO * sizeof(T) > 64 ? 4 : 8;
  const int64_t span = d.k * d.ci;
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t oy = 0; oy < d.ho; ++oy) {
      const T* grow = g + ((b * d.ho + oy) * d.wo) * CO;
      for (int64_t i = 0; i < d.k; ++i) {
        const T* xrow = x + ((b * d.h + oy * d.s + i) * d.w) * d.ci;
        T* out = part + i * span * CO;
        int64_t q0 = 0;
        for (; q0 + Q <= span; q0 += Q) weights_entries<T, CO, Q>(d, xrow, grow, q0, out);
        for (; q0 < span; ++q0) weights_entries<T, CO, 1>(d, xrow, grow, q0, out);
      }
    }
}

template <typename T>
void weights_group_any(const ConvShape& d, const T* x, const T* g, int64_t b0,
                       int64_t b1, T* part) {
  const int64_t span = d.k * d.ci;
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t oy = 0; oy < d.ho; ++oy)
      for (int64_t ox = 0; ox < d.wo; ++ox) {
        const T* gv = g + ((b * d.ho + oy) * d.wo + ox) * d.co;
        for (int64_t i = 0; i < d.k; ++i) {
          const T* xq = x + ((b * d.h + oy * d.s + i) * d.w + ox * d.s) * d.ci;
          for (int64_t q = 0; q < span; ++q) {
            T* __restrict out = part + (i * span + q) * d.co;
            for (int64_t o = 0; o < d.co; ++o) out[o] += xq[q] * gv[o];
          }
        }
      }
}

template <typename T>
void conv_weights(ffi::ThreadPool& pool, const ConvShape& d, const T* x, const T* g,
                  T* dw) {
  const int64_t size = d.k * d.k * d.ci * d.co;
  const int64_t groups = (d.b + kGroup - 1) / kGroup;
  std::vector<T> partial(groups * size);
  parallel_for(pool, groups, d.b * d.ho * d.wo * size, [&](int64_t lo, int64_t hi) {
    for (int64_t grp = lo; grp < hi; ++grp) {
      T* part = partial.data() + grp * size;
      std::fill(part, part + size, T(0));
      int64_t b0 = grp * kGroup, b1 = std::min(d.b, b0 + kGroup);
      switch (d.co) {
        case 8: weights_group<T, 8>(d, x, g, b0, b1, part); break;
        case 16: weights_group<T, 16>(d, x, g, b0, b1, part); break;
        case 32: weights_group<T, 32>(d, x, g, b0, b1, part); break;
        default: weights_group_any<T>(d, x, g, b0, b1, part);
      }
    }
  });
  std::fill(dw, dw + size, T(0));
  for (int64_t grp = 0; grp < groups; ++grp)
    for (int64_t e = 0; e < size; ++e) dw[e] += partial[grp * size + e];
}

// ------------------------------------------------------------------ FFI handlers

// [leading..., last] as (rows, last).
std::pair<int64_t, int64_t> rows_last(const ffi::AnyBuffer& b) {
  auto dims = b.dimensions();
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) rows *= dims[i];
  return {rows, dims.size() == 0 ? 1 : dims.back()};
}

ffi::Error unsupported(ffi::DataType t) {
  return ffi::Error::InvalidArgument("jaxsae CPU kernels: float32 or float64 only, got " +
                                     std::to_string(static_cast<int>(t)));
}

// fn(T{}) with T the C++ type of t (float32 or float64): every handler's dispatch.
template <typename Fn>
ffi::Error by_dtype(ffi::DataType t, Fn fn) {
  switch (t) {
    case ffi::F32: fn(float{}); return ffi::Error::Success();
    case ffi::F64: fn(double{}); return ffi::Error::Success();
    default: return unsupported(t);
  }
}

// top_k over x's rows; with bias (of x's dtype, checked by the caller), of
// relu(x + bias).
ffi::Error top_k_rows(ffi::ThreadPool& pool, ffi::AnyBuffer x, const ffi::AnyBuffer* bias,
                      ffi::AnyBuffer values, int32_t* indices, int64_t k) {
  auto [rows, n] = rows_last(x);
  if (k < 1 || k > n) return ffi::Error::InvalidArgument("top_k: k outside [1, n]");
  return by_dtype(x.element_type(), [&](auto zero) {
    using T = decltype(zero);
    top_k(pool, x.typed_data<T>(), bias ? bias->typed_data<T>() : nullptr, rows, n, k,
          values.typed_data<T>(), indices);
  });
}

ffi::Error TopKImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                    ffi::Result<ffi::AnyBuffer> values,
                    ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  return top_k_rows(pool, x, nullptr, *values, indices->typed_data(), k);
}

ffi::Error ReluTopKImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer bias,
                        ffi::Result<ffi::AnyBuffer> values,
                        ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  if (bias.element_type() != x.element_type() ||
      bias.element_count() != size_t(rows_last(x).second))
    return ffi::Error::InvalidArgument("relu_top_k: bias must be [n], x's dtype");
  return top_k_rows(pool, x, &bias, *values, indices->typed_data(), k);
}

ffi::Error FirstKMaskImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                          ffi::Result<ffi::Buffer<ffi::PRED>> mask, int64_t k) {
  auto [rows, n] = rows_last(x);
  if (k < 1 || k > n) return ffi::Error::InvalidArgument("first_k_mask: k outside [1, n]");
  return by_dtype(x.element_type(), [&](auto zero) {
    using T = decltype(zero);
    first_k_mask(pool, x.typed_data<T>(), rows, n, k, mask->typed_data());
  });
}

// kernel(pool, a, idx, b, tokens, m, n, d, out) in a's dtype: (tokens, m) are idx's
// shape, (n, d) the table's (or the result's, for scatter_outer).
template <typename Kernel>
ffi::Error sparse_call(ffi::ThreadPool& pool, ffi::AnyBuffer a,
                       ffi::Buffer<ffi::S32> idx, ffi::AnyBuffer b, int64_t n,
                       int64_t d, ffi::AnyBuffer out, Kernel kernel) {
  auto dims = idx.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("indices: rank 2 only");
  int64_t tokens = dims[0], m = dims[1];
  if (a.element_type() != b.element_type() || a.element_type() != out.element_type())
    return ffi::Error::InvalidArgument("jaxsae CPU kernels: mixed dtypes");
  return by_dtype(a.element_type(), [&](auto zero) {
    using T = decltype(zero);
    kernel(pool, a.typed_data<T>(), idx.typed_data(), b.typed_data<T>(), tokens, m, n,
           d, out.typed_data<T>());
  });
}

ffi::Error WeightedRowsImpl(ffi::ThreadPool pool, ffi::AnyBuffer w,
                            ffi::Buffer<ffi::S32> idx, ffi::AnyBuffer table,
                            ffi::Result<ffi::AnyBuffer> out) {
  auto td = table.dimensions();
  return sparse_call(pool, w, idx, table, td[0], td[1], *out,
                     [](auto&&... args) { weighted_rows(args...); });
}

ffi::Error RowDotsImpl(ffi::ThreadPool pool, ffi::AnyBuffer g,
                       ffi::Buffer<ffi::S32> idx, ffi::AnyBuffer table,
                       ffi::Result<ffi::AnyBuffer> out) {
  auto td = table.dimensions();
  return sparse_call(pool, g, idx, table, td[0], td[1], *out,
                     [](auto&&... args) { row_dots(args...); });
}

ffi::Error ScatterOuterImpl(ffi::ThreadPool pool, ffi::AnyBuffer w,
                            ffi::Buffer<ffi::S32> idx, ffi::AnyBuffer rows,
                            ffi::Result<ffi::AnyBuffer> out) {
  auto od = out->dimensions();
  return sparse_call(pool, w, idx, rows, od[0], od[1], *out,
                     [](auto&&... args) { scatter_outer(args...); });
}

// x [b, h, w, ci] and w [k, k, ci, co] (or dw's shape) as a ConvShape with stride s.
ConvShape conv_shape(ffi::AnyBuffer x, int64_t k, int64_t ci, int64_t co, int64_t s) {
  auto d = x.dimensions();
  ConvShape shape{d[0], d[1], d[2], ci, k, co, s, 0, 0};
  shape.ho = d[1] >= k ? (d[1] - k) / s + 1 : 0;
  shape.wo = d[2] >= k ? (d[2] - k) / s + 1 : 0;
  return shape;
}

ffi::Error ConvGatherImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                          ffi::Result<ffi::AnyBuffer> y, int64_t stride) {
  auto wd = w.dimensions();
  ConvShape d = conv_shape(x, wd[0], wd[2], wd[3], stride);
  return by_dtype(x.element_type(), [&](auto zero) {
    using T = decltype(zero);
    conv_gather(pool, d, x.typed_data<T>(), w.typed_data<T>(), y->typed_data<T>());
  });
}

ffi::Error ConvScatterImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                           ffi::Result<ffi::AnyBuffer> y, int64_t stride) {
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  ConvShape d = conv_shape(x, wd[0], wd[2], wd[3], stride);
  if (yd[1] < (d.h - 1) * stride + d.k || yd[2] < (d.w - 1) * stride + d.k)
    return ffi::Error::InvalidArgument("conv_scatter: output smaller than the windows");
  return by_dtype(x.element_type(), [&](auto zero) {
    using T = decltype(zero);
    conv_scatter(pool, d, yd[1], yd[2], x.typed_data<T>(), w.typed_data<T>(),
                 y->typed_data<T>());
  });
}

ffi::Error ConvWeightsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer g,
                           ffi::Result<ffi::AnyBuffer> dw, int64_t stride) {
  auto wd = dw->dimensions();
  ConvShape d = conv_shape(x, wd[0], wd[2], wd[3], stride);
  auto gd = g.dimensions();
  if (gd[1] != d.ho || gd[2] != d.wo)
    return ffi::Error::InvalidArgument("conv_weights: gradient of another grid");
  return by_dtype(x.element_type(), [&](auto zero) {
    using T = decltype(zero);
    conv_weights(pool, d, x.typed_data<T>(), g.typed_data<T>(), dw->typed_data<T>());
  });
}

}  // namespace

#define JAXSAE_SPARSE_BINDING                 \
  ffi::Ffi::Bind()                            \
      .Ctx<ffi::ThreadPool>()                 \
      .Arg<ffi::AnyBuffer>()                  \
      .Arg<ffi::Buffer<ffi::S32>>()           \
      .Arg<ffi::AnyBuffer>()                  \
      .Ret<ffi::AnyBuffer>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_top_k, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_relu_top_k, ReluTopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_first_k_mask, FirstKMaskImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::PRED>>()
                                  .Attr<int64_t>("k"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_weighted_rows, WeightedRowsImpl,
                              JAXSAE_SPARSE_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_row_dots, RowDotsImpl, JAXSAE_SPARSE_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_scatter_outer, ScatterOuterImpl,
                              JAXSAE_SPARSE_BINDING);

#define JAXSAE_CONV_BINDING        \
  ffi::Ffi::Bind()                 \
      .Ctx<ffi::ThreadPool>()      \
      .Arg<ffi::AnyBuffer>()       \
      .Arg<ffi::AnyBuffer>()       \
      .Ret<ffi::AnyBuffer>()       \
      .Attr<int64_t>("stride")

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_conv_gather, ConvGatherImpl, JAXSAE_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_conv_scatter, ConvScatterImpl, JAXSAE_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsae_conv_weights, ConvWeightsImpl, JAXSAE_CONV_BINDING);
