// The nearest-code selection of the cpu backend's VQ search (fastvae/cuda/vq_cpu.py).
//
// The host computes each chunk's scores s_nk = |e_k|^2 - 2 x_n.e_k with one BLAS product (PyTorch's
// addmm) and hands them here with the rows, the codes and |e_k|^2, all in the compute dtype. For each
// row this decides the winner exactly, as fastvae/reference/vq.py does (its module docstring derives
// the bound): the candidates are the codes scoring within
//   tau_n = tau_scale * (C + |x_n| sqrt(C)),   C = max_k |e_k|^2,
// of the row's least score; one candidate wins outright, several are recomputed as |x_n - e_k|^2
// (elementwise, summed in one fixed order, so two copies of one code give bitwise equal distances) and the
// lowest index among the least distances wins. The winner's distance is |x_n - e_k|^2 recomputed
// the same way.
//
// Scores that are NaN are never candidates. A row with no candidate (its reach is NaN, e.g. scores
// of -inf and +inf) takes the first code of least score, and a row with no score below +inf code 0.
//
// One vectorised pass over a row of scores finds its least score and where it first occurs, a
// second counts the candidates; a single candidate is that first least score, and only rows with
// near-ties take the recomputation. Large calls split the rows over OpenMP threads
// (for_row_ranges, dtype.h); each row is decided by one thread, so the split changes no result.
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu.h"
#include "dtype.h"

namespace fastvae::cpu {
namespace {

// |a - b|^2 over `dim` elements (|a|^2 when b is null), in a fixed order: two chains of V lanes, then
// the lanes in order, then the tail. Equal inputs give bitwise equal results.
template <typename V>
FASTVAE_INLINE elem_t<V> squared_distance(const elem_t<V>* a, const elem_t<V>* b, std::int64_t dim) {
  using T = elem_t<V>;
  constexpr int L = kLanesOf<V>;
  V first = V{}, second = V{};
  std::int64_t i = 0;
  for (; i + 2 * L <= dim; i += 2 * L) {
    V d = load_vec<V>(a + i), e = load_vec<V>(a + i + L);
    if (b != nullptr) {
      d -= load_vec<V>(b + i);
      e -= load_vec<V>(b + i + L);
    }
    first += d * d;
    second += e * e;
  }
  first += second;
  T sum = 0;
  for (int j = 0; j < L; ++j) sum += first[j];
  for (; i < dim; ++i) {
    const T d = b != nullptr ? a[i] - b[i] : a[i];
    sum += d * d;
  }
  return sum;
}

// The least of s[0 .. n), ignoring NaN, and the index of its first occurrence; (+inf, 0) when no
// score is below +inf. Two chains of V lanes, each lane keeping its least score and where it was
// first seen (strict <, so earlier wins); the lanes are merged by (score, index).
template <typename V>
struct Least {
  elem_t<V> score;
  std::int64_t index;
};

template <typename V>
FASTVAE_INLINE Least<V> least_score(const elem_t<V>* s, std::int64_t n) {
  using T = elem_t<V>;
  using M = mask_t<V>;
  constexpr int L = kLanesOf<V>;
  const V inf = splat<V>(std::numeric_limits<T>::infinity());
  V a = inf, b = inf;
  M where_a = M{} + 0, where_b = M{} + 0, k_a = M{} + 0, step = M{} + 2 * L;
  for (int j = 0; j < L; ++j) k_a[j] = j;
  M k_b = k_a + L;
  std::int64_t k = 0;
  for (; k + 2 * L <= n; k += 2 * L) {
    const V u = load_vec<V>(s + k);
    const V v = load_vec<V>(s + k + L);
    const M take_u = u < a;
    const M take_v = v < b;
    a = take_u ? u : a;
    where_a = take_u ? k_a : where_a;
    b = take_v ? v : b;
    where_b = take_v ? k_b : where_b;
    k_a += step;
    k_b += step;
  }
  Least<V> least{std::numeric_limits<T>::infinity(), 0};
  for (int j = 0; j < L; ++j) {
    for (const auto& [score, index] : {std::pair<T, std::int64_t>{a[j], where_a[j]},
                                       std::pair<T, std::int64_t>{b[j], where_b[j]}}) {
      if (score < least.score || (score == least.score && index < least.index)) least = {score, index};
    }
  }
  for (; k < n; ++k) {
    if (s[k] < least.score) least = {s[k], k};
  }
  return least;
}

// How many of s[0 .. n) are <= reach (NaN never is).
template <typename V>
FASTVAE_INLINE std::int64_t count_within(const elem_t<V>* s, std::int64_t n, elem_t<V> reach) {
  using M = mask_t<V>;
  constexpr int L = kLanesOf<V>;
  const V limit = splat<V>(reach);
  M hits = M{} + 0;  // minus the true masks (-1 each)
  std::int64_t k = 0;
  for (; k + L <= n; k += L) hits -= load_vec<V>(s + k) <= limit;
  std::int64_t count = 0;
  for (int j = 0; j < L; ++j) count += hits[j];
  for (; k < n; ++k) count += s[k] <= reach;
  return count;
}

struct VqSelect {
  template <int W, typename T>
  FASTVAE_INLINE static void rows(const T* x, const T* codebook, const T* code_sq, const T* scores,
                                  std::int64_t* indices, T* distances, std::int64_t begin,
                                  std::int64_t end, std::int64_t num_codes, std::int64_t dim,
                                  double tau_scale) {
    using V = vec_t<W, T>;
    T largest_sq = 0;
    for (std::int64_t k = 0; k < num_codes; ++k) largest_sq = code_sq[k] > largest_sq ? code_sq[k] : largest_sq;
    const T largest_norm = std::sqrt(largest_sq);
    const T scale = static_cast<T>(tau_scale);
    for (std::int64_t n = begin; n < end; ++n) {
      const T* row = x + n * dim;
      const T* s = scores + n * num_codes;
      const Least<V> least = least_score<V>(s, num_codes);
      const T norm_sq = squared_distance<V>(row, nullptr, dim);
      const T reach = least.score + scale * (largest_sq + std::sqrt(norm_sq) * largest_norm);
      // One candidate is the least score itself; none (a NaN reach) leaves the first least score.
      std::int64_t chosen = least.index;
      T distance = 0;  // set on every path below (GCC cannot tell at -O3)
      if (count_within<V>(s, num_codes, reach) <= 1) {
        distance = squared_distance<V>(row, codebook + chosen * dim, dim);
      } else {
        bool found = false;
        for (std::int64_t k = 0; k < num_codes; ++k) {
          if (!(s[k] <= reach)) continue;
          const T d = squared_distance<V>(row, codebook + k * dim, dim);
          if (!found ? d == d : d < distance) {
            distance = d;
            chosen = k;
            found = true;
          }
        }
        // Every candidate's distance NaN (say inf - inf in the row): the first least score's code,
        // with its own (NaN) distance, as the reference gives.
        if (!found) distance = squared_distance<V>(row, codebook + chosen * dim, dim);
      }
      indices[n] = chosen;
      distances[n] = distance;
    }
  }

  template <int W>
  FASTVAE_INLINE static void run(int dtype, const void* x, const void* codebook, const void* code_sq,
                  const void* scores, std::int64_t* indices, void* distances, std::int64_t begin,
                  std::int64_t end, std::int64_t num_codes, std::int64_t dim, double tau_scale) {
    if (dtype == 0) {
      rows<W>(static_cast<const float*>(x), static_cast<const float*>(codebook),
              static_cast<const float*>(code_sq), static_cast<const float*>(scores), indices,
              static_cast<float*>(distances), begin, end, num_codes, dim, tau_scale);
    } else {
      rows<W>(static_cast<const double*>(x), static_cast<const double*>(codebook),
              static_cast<const double*>(code_sq), static_cast<const double*>(scores), indices,
              static_cast<double*>(distances), begin, end, num_codes, dim, tau_scale);
    }
  }
};

}  // namespace

void vq_select(int dtype, const void* x, const void* codebook, const void* code_sq,
               const void* scores, std::int64_t* indices, void* distances, std::int64_t rows,
               std::int64_t codes, std::int64_t dim, double tau_scale) {
  if (dtype != 0 && dtype != 3) {
    throw std::invalid_argument("vq_select computes in float32 (dtype 0) or float64 (dtype 3), got dtype " +
                                std::to_string(dtype));
  }
  if (rows == 0) return;
  // A row's work (for_row_ranges, dtype.h: about a nanosecond a unit): two vector scans of its K
  // scores and, mostly, one or a few distances of D elements.
  for_row_ranges(rows, codes / 4 + 2 * dim, [&](auto begin, auto end) {
    launch<VqSelect>(dtype, x, codebook, code_sq, scores, indices, distances, begin, end, codes,
                     dim, tau_scale);
  });
}

}  // namespace fastvae::cpu
